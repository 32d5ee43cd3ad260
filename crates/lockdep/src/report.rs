//! Reports: what was found, in the kernel's words, and the one sink they go through.
//!
//! Every problem becomes a [`Report`]: a [`ReportKind`], the thread, the source location of
//! the offending call, the locks held, and for dependency cycles every edge of the cycle with
//! where it was first recorded and by which thread. A report prints in the kernel's format
//! (`Display`), serializes to JSON ([`Report::to_json`]) and draws its cycle as DOT or SVG
//! ([`Report::to_dot`], [`Report::to_svg`]).
//!
//! The sink: by default each report is printed to stderr once per unique problem (the same
//! cycle found again from another chain, or the same bad `might_sleep` site hit again, is
//! not printed twice). Every report is also kept in a bounded log ([`take_reports`]) and
//! handed to the [`testing::Scope`](crate::testing::Scope)s the reporting thread is attached
//! to, which swallow it instead of printing. [`ReportMode::Strict`] panics on every report
//! (the caller chose to make problems fatal). Nothing else in the library panics.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::panic::Location;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;

use crate::testing::ScopeInner;

/// What kind of problem a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ReportKind {
    /// A cycle in the lock-dependency graph: two or more code paths take the same locks in
    /// orders that can deadlock.
    PossibleCircularLockingDependency,
    /// A cycle through `fs_reclaim` or `mmu_notifier_invalidate_range_start`: a lock held
    /// across an allocation that may enter direct reclaim is also taken inside reclaim or an
    /// MMU-notifier callback.
    ReclaimInversion,
    /// A lock taken while a lock of the same class is already held (AA), without a subclass
    /// annotation, or a non-recursive read of a class already held.
    RecursiveLocking,
    /// The in-reclaim variant: an allocation that may enter reclaim made from inside reclaim
    /// (`fs_reclaim` or the notifier map already held).
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
                 the cycle goes through fs_reclaim / mmu_notifier_invalidate_range_start)"
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

#[cfg(feature = "enabled")]
pub(crate) fn class_ref(c: &crate::class::ClassInfo) -> ClassRef {
    ClassRef {
        id: c.id,
        name: c.name.clone(),
    }
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
        crate::render::dot(self)
    }

    /// The cycle drawn as a standalone SVG picture (no Graphviz needed).
    pub fn to_svg(&self) -> String {
        crate::render::svg(self)
    }

    /// What identifies "the same problem" for printing once.
    fn dedup_key(&self) -> u64 {
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

/// What the sink does with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportMode {
    /// Print each unique problem once to stderr (the default), and keep it in the log.
    Print,
    /// Keep reports in the log and hand them to scopes; print nothing.
    Quiet,
    /// Print, then panic: every report is fatal (tests, CI). A report found while a thread
    /// is ending is printed only, since a panic there would abort the process.
    Strict,
}

static MODE: AtomicU8 = AtomicU8::new(0);
const LOG_CAPACITY: usize = 1024;
static LOG: Mutex<VecDeque<Report>> = Mutex::new(VecDeque::new());
static PRINTED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
/// A function that sees every report (see [`set_report_hook`]).
pub type ReportHook = Box<dyn Fn(&Report) + Send + Sync>;
static HOOK: RwLock<Option<ReportHook>> = RwLock::new(None);

/// Chooses what the sink does with reports (process-wide).
pub fn set_report_mode(mode: ReportMode) {
    MODE.store(mode.as_u8(), Ordering::Relaxed);
}

/// The current [`ReportMode`]. The initial mode is `Print`, or `Strict` when the environment
/// variable `LOCKDEP_STRICT` is set to `1` when the first report is made.
pub fn report_mode() -> ReportMode {
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let strict = std::env::var("LOCKDEP_STRICT").is_ok_and(|v| v == "1");
            let m = if strict {
                ReportMode::Strict
            } else {
                ReportMode::Print
            };
            let _ = MODE.compare_exchange(0, m.as_u8(), Ordering::Relaxed, Ordering::Relaxed);
            report_mode()
        }
        2 => ReportMode::Quiet,
        3 => ReportMode::Strict,
        _ => ReportMode::Print,
    }
}

impl ReportMode {
    const fn as_u8(self) -> u8 {
        match self {
            Self::Print => 1,
            Self::Quiet => 2,
            Self::Strict => 3,
        }
    }
}

/// Installs a function called with every report (for forwarding to another diagnostics
/// sink), or removes it with `None`.
pub fn set_report_hook(hook: Option<ReportHook>) {
    *HOOK.write().unwrap_or_else(PoisonError::into_inner) = hook;
}

/// Takes every report from the process-wide log (the last 1024), oldest first.
pub fn take_reports() -> Vec<Report> {
    LOG.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain(..)
        .collect()
}

/// A copy of the process-wide log, oldest first.
pub fn reports() -> Vec<Report> {
    LOG.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect()
}

/// Runs `f` and returns what it returned with the reports made on this thread meanwhile
/// (threads `f` spawns report here only if they attach: see
/// [`testing::Scope`](crate::testing::Scope)). Those reports are not printed.
pub fn collect_reports<R>(f: impl FnOnce() -> R) -> (R, Vec<Report>) {
    let scope = crate::testing::Scope::new();
    let r = f();
    let reports = scope.take();
    (r, reports)
}

fn deliver(r: &Report, scopes: &[Arc<ScopeInner>]) -> bool {
    for s in scopes {
        s.push(r.clone());
    }
    {
        let mut log = LOG.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(r.clone());
    }
    if let Some(h) = HOOK.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
        h(r);
    }
    let first = PRINTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert(r.dedup_key());
    if scopes.is_empty() && first && report_mode() != ReportMode::Quiet {
        eprintln!("{r}");
    }
    scopes.is_empty()
}

/// Hands a report to the sink. Panics only in [`ReportMode::Strict`].
#[cfg_attr(not(feature = "enabled"), allow(dead_code))]
pub(crate) fn emit(r: Report, scopes: &[Arc<ScopeInner>]) {
    deliver(&r, scopes);
    if report_mode() == ReportMode::Strict {
        panic!("lockdep (strict mode): {}\n{r}", r.kind.title());
    }
}

/// Hands a report made while a thread ends to the sink; never panics.
#[cfg_attr(not(feature = "enabled"), allow(dead_code))]
pub(crate) fn emit_from_exit(r: Report, scopes: &[Arc<ScopeInner>]) {
    if !deliver(&r, scopes) || report_mode() != ReportMode::Strict {
        return;
    }
    eprintln!(
        "lockdep (strict mode): {} (not fatal: the thread is ending)",
        r.kind.title()
    );
}

/// The chain cache ran out of room (reported once, from under the graph lock: never panics).
#[cfg(feature = "enabled")]
pub(crate) fn note_chain_table_full() {
    let mut r = Report::new(
        ReportKind::ChainTableFull,
        ThreadInfo {
            name: crate::primitive::current_thread_name(),
            pid: 0,
        },
        None,
    );
    r.message = "the chain cache is full; new lock chains are now validated under the graph \
                 lock every time (correct, but slower)."
        .to_owned();
    deliver(&r, &[]);
}
