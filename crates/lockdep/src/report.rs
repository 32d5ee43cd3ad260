//! Reports: what was found, in the kernel's words, as plain data.
//!
//! Every problem becomes a [`Report`]: a [`ReportKind`], the thread, the source location of
//! the offending call, the locks held, and for dependency cycles every edge of the cycle with
//! where it was first recorded and by which thread. A report prints in the kernel's format
//! (`Display`, after `print_circular_bug` and friends in `kernel/locking/lockdep.c`),
//! serializes to JSON ([`Report::to_json`]) and draws its cycle as DOT or SVG
//! ([`Report::to_dot`], [`Report::to_svg`]). Where reports go is the sink's business
//! (`sink.rs`); this module knows nothing of threads, graphs or sinks.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::panic::Location;

use serde::Serialize;

use crate::render::Picture;

/// What kind of problem a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ReportKind {
    /// A cycle in the lock-dependency graph: two or more code paths take the same locks in
    /// orders that can deadlock.
    PossibleCircularLockingDependency,
    /// A cycle through `fs_reclaim` or a pseudo-lock that reclaim primes
    /// ([`reclaim_primes!`](crate::reclaim_primes)): a lock held across an allocation that may
    /// enter direct reclaim is also taken inside reclaim or inside that pseudo-lock.
    ReclaimInversion,
    /// A lock taken while a lock of the same class is already held (AA), without a subclass
    /// annotation, or a non-recursive read of a class already held.
    RecursiveLocking,
    /// The in-reclaim variant: an allocation that may enter reclaim made from inside reclaim
    /// (`fs_reclaim` already held).
    ReclaimRecursion,
    /// Something that may sleep was called in atomic context (a spinlock or atomic section)
    /// or inside `non_block_start()` .. `non_block_end()`.
    SleepingInInvalidContext,
    /// A release of a lock the task does not hold.
    BadUnlock,
    /// Locks still held (or a `non_block` section still open) when a task ends.
    HeldAtExit,
    /// `non_block_end()` without a matching `non_block_start()`.
    UnbalancedNonBlockEnd,
    /// The chain cache is full: new chains are now validated under the graph lock each time.
    ChainTableFull,
}

impl ReportKind {
    /// The headline, as the kernel would print it.
    pub fn title(self) -> &'static str {
        match self {
            Self::PossibleCircularLockingDependency => {
                "WARNING: possible circular locking dependency detected"
            }
            Self::ReclaimInversion => {
                "WARNING: possible circular locking dependency detected (reclaim inversion: \
                 the cycle goes through memory reclaim)"
            }
            Self::RecursiveLocking => "WARNING: possible recursive locking detected",
            Self::ReclaimRecursion => {
                "WARNING: possible recursive locking detected (in-reclaim: an allocation that \
                 may enter reclaim made from inside reclaim)"
            }
            Self::SleepingInInvalidContext => "BUG: sleeping function called from invalid context",
            Self::BadUnlock => "WARNING: bad unlock balance detected!",
            Self::HeldAtExit => "WARNING: lock held when returning to user space / task exit!",
            Self::UnbalancedNonBlockEnd => "WARNING: non_block_end() without non_block_start()",
            Self::ChainTableFull => "BUG: MAX_LOCKDEP_CHAINS too low!",
        }
    }

    /// Whether this kind is a dependency cycle (has [`Report::cycle`]).
    pub fn is_cycle(self) -> bool {
        matches!(
            self,
            Self::PossibleCircularLockingDependency | Self::ReclaimInversion
        )
    }
}

impl fmt::Display for ReportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

/// A source location (from `#[track_caller]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SourceLocation {
    /// Source file.
    pub file: String,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

impl From<&Location<'_>> for SourceLocation {
    fn from(l: &Location<'_>) -> Self {
        Self {
            file: l.file().to_owned(),
            line: l.line(),
            column: l.column(),
        }
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A lock class as named in a report.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ClassRef {
    /// The class id.
    pub id: u32,
    /// The class name (`file:line` by default, `name/n` for subclass `n`).
    pub name: String,
}

/// The thread a report is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadInfo {
    /// The thread's name (or its id when unnamed).
    pub name: String,
    /// A small per-thread number, the report's `pid`.
    pub pid: u64,
}

/// One held lock, as listed in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeldLockInfo {
    /// Its class.
    pub class: ClassRef,
    /// How it is held: `exclusive`, `read`, `recursive read`, with `, trylock`.
    pub mode: String,
    /// Where it was acquired.
    pub acquired_at: SourceLocation,
}

impl fmt::Display for HeldLockInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "({}){{{}}}, at: {}",
            self.class.name, self.mode, self.acquired_at
        )
    }
}

/// One edge of a dependency cycle: `to` was acquired while `from` was held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// The lock that was held.
    pub from: ClassRef,
    /// The lock that was acquired.
    pub to: ClassRef,
    /// The dependency kinds recorded (`EN`, `SN`, `ER`, `SR`, joined by `|`).
    pub kinds: String,
    /// Where `from` had been acquired when the edge was first recorded.
    pub from_acquired_at: SourceLocation,
    /// Where `to` was acquired when the edge was first recorded.
    pub to_acquired_at: SourceLocation,
    /// The thread that first recorded the edge.
    pub thread: String,
    /// `true` for the edge being added now, which closes the cycle.
    pub new: bool,
}

/// The task's context counters at the time of a report (the kernel's `__might_resched` line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContextInfo {
    /// `in_atomic()`: 1 when in an atomic section or holding a spinlock.
    pub in_atomic: u32,
    /// Always 0: user space has no interrupts to disable.
    pub irqs_disabled: u32,
    /// The `non_block` nesting count.
    pub non_block: u32,
    /// Atomic sections plus spinlocks held.
    pub preempt_count: u32,
    /// Where the outermost atomic section or spinlock began.
    pub atomic_since: Option<SourceLocation>,
    /// Where the outermost `non_block_start()` was.
    pub non_block_since: Option<SourceLocation>,
}

/// A problem found by the validator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// What kind of problem.
    pub kind: ReportKind,
    /// The thread that hit it.
    pub thread: ThreadInfo,
    /// The offending call (the acquisition, `might_sleep`, the release...), when known.
    pub location: Option<SourceLocation>,
    /// A sentence or two saying what happened and what to do.
    pub message: String,
    /// The lock being acquired or released, when there is one.
    pub lock: Option<HeldLockInfo>,
    /// Locks the thread held.
    pub held: Vec<HeldLockInfo>,
    /// For cycles: the edges around the cycle, starting with the new one.
    pub cycle: Vec<Dependency>,
    /// For context reports: the counters.
    pub context: Option<ContextInfo>,
}

impl Report {
    #[cfg_attr(not(feature = "enabled"), allow(dead_code))]
    pub(crate) fn new(
        kind: ReportKind,
        thread: ThreadInfo,
        location: Option<&'static Location<'static>>,
    ) -> Self {
        Self {
            kind,
            thread,
            location: location.map(Into::into),
            message: String::new(),
            lock: None,
            held: Vec::new(),
            cycle: Vec::new(),
            context: None,
        }
    }

    /// The names of the classes in the cycle (or of the lock concerned), in cycle order.
    pub fn classes(&self) -> Vec<&str> {
        if self.cycle.is_empty() {
            return self.lock.iter().map(|l| l.class.name.as_str()).collect();
        }
        self.cycle.iter().map(|d| d.from.name.as_str()).collect()
    }

    /// Whether the class named `name` is part of the problem (in the cycle, the lock
    /// concerned, or held).
    pub fn involves(&self, name: &str) -> bool {
        self.cycle
            .iter()
            .any(|d| d.from.name == name || d.to.name == name)
            || self.lock.iter().any(|l| l.class.name == name)
            || self.held.iter().any(|l| l.class.name == name)
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The cycle (or the locks concerned) as a Graphviz DOT graph.
    pub fn to_dot(&self) -> String {
        self.picture().dot()
    }

    /// The cycle drawn as a standalone SVG picture (no Graphviz needed).
    pub fn to_svg(&self) -> String {
        self.picture().svg()
    }

    /// The report as a picture: for a cycle, its classes and dependencies (the new one
    /// highlighted), each labelled with its kinds and where it was first recorded; otherwise
    /// the held-lock stack, bottom to top, with the lock concerned highlighted.
    fn picture(&self) -> Picture {
        let mut p = Picture::new(self.kind.title());
        if !self.cycle.is_empty() {
            for d in &self.cycle {
                let a = p.node(&d.from.name);
                let b = p.node(&d.to.name);
                let label = format!(
                    "{} at {}:{} ({})",
                    d.kinds, d.to_acquired_at.file, d.to_acquired_at.line, d.thread
                );
                p.edge(a, b, label, d.new);
            }
            return p;
        }
        let mut prev: Option<usize> = None;
        for h in &self.held {
            let i = p.node(&h.class.name);
            if let Some(before) = prev {
                p.edge(before, i, h.mode.clone(), false);
            }
            prev = Some(i);
        }
        if let Some(l) = &self.lock {
            let i = p.node(&l.class.name);
            p.highlight(i);
            if let Some(before) = prev.filter(|&before| before != i) {
                p.edge(before, i, l.mode.clone(), true);
            }
        }
        p
    }

    /// What identifies "the same problem" for printing once.
    #[cfg_attr(not(feature = "enabled"), allow(dead_code))]
    pub(crate) fn dedup_key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.kind.hash(&mut h);
        if self.kind.is_cycle() {
            let mut ids: Vec<u32> = self.cycle.iter().map(|d| d.from.id).collect();
            ids.sort_unstable();
            ids.hash(&mut h);
        } else {
            self.location.hash(&mut h);
            self.lock.as_ref().map(|l| l.class.id).hash(&mut h);
        }
        h.finish()
    }

    fn write_scenario(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cycle.len() != 2 {
            return Ok(());
        }
        let (a, b) = (&self.cycle[0].from.name, &self.cycle[0].to.name);
        writeln!(f, "\n Possible unsafe locking scenario:\n")?;
        writeln!(f, "       thread 0                thread 1")?;
        writeln!(f, "       --------                --------")?;
        writeln!(f, "  lock({a});")?;
        writeln!(f, "                               lock({b});")?;
        writeln!(f, "                               lock({a});")?;
        writeln!(f, "  lock({b});")?;
        writeln!(f, "\n *** DEADLOCK ***")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.thread;
        let rule = "=".repeat(54);
        match self.kind {
            ReportKind::SleepingInInvalidContext => {
                write!(f, "{}", self.kind.title())?;
                match &self.location {
                    Some(l) => writeln!(f, " at {l}")?,
                    None => writeln!(f)?,
                }
                if let Some(c) = &self.context {
                    writeln!(
                        f,
                        "in_atomic(): {}, irqs_disabled(): {}, non_block: {}, pid: {}, name: {}",
                        c.in_atomic, c.irqs_disabled, c.non_block, t.pid, t.name
                    )?;
                    writeln!(f, "preempt_count: {}, expected: 0", c.preempt_count)?;
                    if let Some(l) = &c.atomic_since {
                        writeln!(f, "Preemption disabled at: {l}")?;
                    }
                    if let Some(l) = &c.non_block_since {
                        writeln!(f, "non_block section entered at: {l}")?;
                    }
                }
                if !self.message.is_empty() {
                    writeln!(f, "{}", self.message)?;
                }
            }
            _ => {
                writeln!(f, "{rule}")?;
                writeln!(f, "{}", self.kind.title())?;
                writeln!(f, "{}", "-".repeat(54))?;
                if !self.message.is_empty() {
                    writeln!(f, "{}", self.message)?;
                }
                if let Some(l) = &self.lock {
                    writeln!(f, "lock concerned:\n  {l}")?;
                }
                if let Some(l) = &self.location {
                    writeln!(f, "at: {l}")?;
                }
                if !self.cycle.is_empty() {
                    writeln!(f, "\nthe dependency cycle:")?;
                    for (i, d) in self.cycle.iter().enumerate() {
                        writeln!(
                            f,
                            "-> #{i} ({}) -[{}]-> ({}){}",
                            d.from.name,
                            d.kinds,
                            d.to.name,
                            if d.new { "   <- new" } else { "" }
                        )?;
                        writeln!(
                            f,
                            "       {} acquired at {} while {} held since {}, by thread '{}'",
                            d.to.name, d.to_acquired_at, d.from.name, d.from_acquired_at, d.thread
                        )?;
                    }
                    self.write_scenario(f)?;
                }
            }
        }
        writeln!(
            f,
            "{} lock{} held by {}/{}:",
            self.held.len(),
            if self.held.len() == 1 { "" } else { "s" },
            t.name,
            t.pid
        )?;
        for (i, h) in self.held.iter().enumerate() {
            writeln!(f, " #{i}: {h}")?;
        }
        Ok(())
    }
}
