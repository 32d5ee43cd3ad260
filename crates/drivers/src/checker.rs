//! The coherence checker: a sanitizer for secondary MMUs.
//!
//! KASAN sees CPU accesses; nothing in Linux sees a device's. Here every device access a
//! driver makes (a read, a write, a DMA) goes through [`Tracker::access`] with the translation
//! the device used: the frame and the frame's generation it recorded when it looked the page
//! up (`hmm_range_fault`, `pin_user_pages`, a page-table walk). At that instant the checker
//! compares it with
//!
//! * the frame: a generation that moved means the frame was freed (and maybe reused) under
//!   the device: a use-after-free by DMA;
//! * the primary's page table ([`vmsim::Space::lookup`], under the page-table lock): no entry,
//!   another frame, or a write through an entry the primary has write-protected (fork, COW,
//!   mprotect) means the device used a translation the primary no longer has.
//!
//! A violation names the driver, the address space, the address, the frame, and the
//! invalidation that should have stopped it: the driver reports every callback it receives
//! ([`Tracker::start`], [`Tracker::end`], [`Tracker::interval`], [`Tracker::tlb`],
//! [`Tracker::release`]) and the checker keeps the last [`HISTORY`] of each driver.
//! Violations are never dropped: each is printed to stderr when found and kept until
//! [`Checker::take_violations`].
//!
//! List subscribers also report their starts and ends, so the checker keeps a pairing count
//! per subscriber (starts that succeeded minus ends): [`Checker::check_quiescent`] fails when a
//! count is not back to zero once nothing runs (the seed-004 imbalance) or when any violation
//! was found.
//!
//! A driver calls [`Tracker::access`] where its device would access memory: under the lock its
//! invalidation takes (the device-side exclusion that makes the invalidation wait for the
//! access), so the comparison is exact. A hardware TLB flushed from
//! `arch_invalidate_secondary_tlbs` may lawfully use a translation until the flush, which comes
//! after the primary changed its entry; its accesses go through [`Tracker::access_tlb`], which
//! checks the frame only (a TLB never flushed is caught when the frame is freed).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mmu_notifier::{Event, Range};
use sync_prims::lock;
use vmsim::{HmmPfn, Pfn, Space};

/// Invalidations kept per driver for violation reports.
pub const HISTORY: usize = 16;

/// What kind of device access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A device (or guest) load.
    Read,
    /// A device (or guest) store.
    Write,
    /// A DMA transfer out of the page (the device reads memory).
    DmaRead,
    /// A DMA transfer into the page (the device writes memory).
    DmaWrite,
}

impl Access {
    /// Whether the access stores into the page.
    pub fn is_write(self) -> bool {
        matches!(self, Access::Write | Access::DmaWrite)
    }
}

/// The translation a device used: what it recorded when it looked the page up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The frame.
    pub pfn: Pfn,
    /// The frame's generation at lookup time ([`vmsim::Frame::generation`]).
    pub generation: u32,
    /// Whether the device may write through it.
    pub write: bool,
}

impl From<HmmPfn> for Translation {
    fn from(p: HmmPfn) -> Translation {
        Translation {
            pfn: p.pfn,
            generation: p.generation,
            write: p.write,
        }
    }
}

/// Which callback an [`InvalidationRecord`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callback {
    /// A list subscriber's `invalidate_range_start` that succeeded.
    Start,
    /// A list subscriber's start that refused (`WouldBlock`).
    Refused,
    /// A list subscriber's `invalidate_range_end`.
    End,
    /// An interval notifier's `invalidate` (accepted).
    Interval,
    /// An interval notifier's `invalidate` that refused (returned false).
    IntervalRefused,
    /// `arch_invalidate_secondary_tlbs`.
    Tlb,
    /// `release`: the address space goes away; every mapping must go.
    Release,
}

/// One callback a driver received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidationRecord {
    /// The callback.
    pub callback: Callback,
    /// The event (`Release` for release, `Clear` for a TLB flush).
    pub event: Event,
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Whether the range was blockable.
    pub blockable: bool,
    /// Global order of the record (all drivers of one checker).
    pub stamp: u64,
}

impl fmt::Display for InvalidationRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {:?} {} [{:#x}, {:#x}){}",
            self.stamp,
            self.callback,
            self.event.kernel_name(),
            self.start,
            self.end,
            if self.blockable { "" } else { " non-blockable" }
        )
    }
}

/// How the translation was stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// The frame was freed since the lookup (its generation moved to `now`): a
    /// use-after-free by the device.
    FrameFreed {
        /// The generation now.
        now: u32,
    },
    /// The primary has no translation at the address (unmapped, swapped, migrating).
    NotMapped,
    /// The primary maps another frame there.
    Remapped {
        /// The primary's frame.
        primary: Pfn,
    },
    /// A store through a translation the primary has made read-only (fork, mprotect, COW).
    ReadOnly,
    /// The frame number is outside the machine.
    BadFrame,
}

/// A device access through a translation the primary no longer has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The driver that made the access.
    pub driver: String,
    /// The address space.
    pub mm: u64,
    /// The (page) address accessed.
    pub addr: u64,
    /// The access.
    pub access: Access,
    /// The translation the device used.
    pub translation: Translation,
    /// What was wrong with it.
    pub stale: Stale,
    /// The driver's latest invalidation overlapping the address: the one that should have
    /// stopped the access (`None`: the driver was never told, e.g. after its release).
    pub should_have_stopped_it: Option<InvalidationRecord>,
    /// The driver's last invalidations, oldest first.
    pub recent: Vec<InvalidationRecord>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "BUG: stale secondary translation: driver {} {:?} at {:#x} in mm {} through {} (generation {}{})",
            self.driver,
            self.access,
            self.addr,
            self.mm,
            self.translation.pfn,
            self.translation.generation,
            if self.translation.write { ", writable" } else { "" }
        )?;
        match self.stale {
            Stale::FrameFreed { now } => writeln!(
                f,
                "  the frame was freed since the device looked it up (generation now {now})"
            )?,
            Stale::NotMapped => writeln!(f, "  the primary has no translation there any more")?,
            Stale::Remapped { primary } => writeln!(f, "  the primary maps {primary} there now")?,
            Stale::ReadOnly => writeln!(f, "  the primary's entry is read-only")?,
            Stale::BadFrame => writeln!(f, "  the frame is outside the machine")?,
        }
        match &self.should_have_stopped_it {
            Some(r) => writeln!(f, "  the invalidation that should have stopped it: {r}")?,
            None => writeln!(
                f,
                "  no invalidation of this address reached the driver (released, or never subscribed)"
            )?,
        }
        write!(f, "  last invalidations of {}:", self.driver)?;
        for r in &self.recent {
            write!(f, "\n    {r}")?;
        }
        Ok(())
    }
}

/// A list subscriber whose starts and ends do not pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unbalanced {
    /// The driver.
    pub driver: String,
    /// Starts that succeeded minus ends (positive: ends missing).
    pub outstanding: i64,
}

impl fmt::Display for Unbalanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "driver {}: {} invalidate_range_start(s) without an end at quiescence",
            self.driver, self.outstanding
        )
    }
}

/// What [`Checker::check_quiescent`] found wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} violation(s), {} unbalanced subscriber(s){}", violations.len(), unbalanced.len(), render(violations, unbalanced))]
pub struct CheckFailure {
    /// Every violation not yet taken.
    pub violations: Vec<Violation>,
    /// Subscribers whose pairing count is not zero.
    pub unbalanced: Vec<Unbalanced>,
}

fn render(v: &[Violation], u: &[Unbalanced]) -> String {
    let mut s = String::new();
    for x in v {
        s.push_str(&format!("\n{x}"));
    }
    for x in u {
        s.push_str(&format!("\n{x}"));
    }
    s
}

/// What a clean [`Checker::check_quiescent`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Device accesses checked.
    pub accesses: u64,
    /// Invalidation callbacks recorded.
    pub invalidations: u64,
    /// Drivers tracked.
    pub drivers: usize,
}

struct DriverState {
    name: String,
    outstanding: AtomicI64,
    invalidations: AtomicU64,
    accesses: AtomicU64,
    history: Mutex<VecDeque<InvalidationRecord>>,
}

#[derive(Default)]
struct Shared {
    drivers: Mutex<Vec<Arc<DriverState>>>,
    violations: Mutex<Vec<Violation>>,
    stamp: AtomicU64,
}

// The checker's own locks are std locks (taken ignoring poisoning with `lock`), outside the
// validator: it is instrumentation, not part of the modelled kernel, and must add no dependency
// to what the validator sees.

/// The checker: one per test or scenario, shared by every driver in it. Cloning gives another
/// handle to the same checker.
#[derive(Clone, Default)]
pub struct Checker(Arc<Shared>);

impl fmt::Debug for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checker")
            .field("drivers", &lock(&self.0.drivers).len())
            .field("violations", &lock(&self.0.violations).len())
            .finish()
    }
}

impl Checker {
    /// A checker with no driver.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// The tracker a driver named `name` reports through.
    pub fn driver(&self, name: impl Into<String>) -> Tracker {
        let state = Arc::new(DriverState {
            name: name.into(),
            outstanding: AtomicI64::new(0),
            invalidations: AtomicU64::new(0),
            accesses: AtomicU64::new(0),
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        });
        lock(&self.0.drivers).push(state.clone());
        Tracker {
            shared: self.0.clone(),
            state,
        }
    }

    /// The violations found so far (kept).
    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.0.violations).clone()
    }

    /// The violations found so far, taken out of the checker.
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut *lock(&self.0.violations))
    }

    /// Subscribers whose pairing count is not zero now.
    pub fn unbalanced(&self) -> Vec<Unbalanced> {
        lock(&self.0.drivers)
            .iter()
            .filter_map(|d| {
                let n = d.outstanding.load(Ordering::Acquire);
                (n != 0).then(|| Unbalanced {
                    driver: d.name.clone(),
                    outstanding: n,
                })
            })
            .collect()
    }

    /// Device accesses checked so far, all drivers.
    pub fn accesses(&self) -> u64 {
        lock(&self.0.drivers)
            .iter()
            .map(|d| d.accesses.load(Ordering::Relaxed))
            .sum()
    }

    /// At quiescence (no invalidation or device access running): no violation was found and
    /// every list subscriber's starts and ends pair.
    pub fn check_quiescent(&self) -> Result<Summary, CheckFailure> {
        let violations = self.violations();
        let unbalanced = self.unbalanced();
        if !violations.is_empty() || !unbalanced.is_empty() {
            return Err(CheckFailure {
                violations,
                unbalanced,
            });
        }
        let drivers = lock(&self.0.drivers);
        Ok(Summary {
            accesses: drivers
                .iter()
                .map(|d| d.accesses.load(Ordering::Relaxed))
                .sum(),
            invalidations: drivers
                .iter()
                .map(|d| d.invalidations.load(Ordering::Relaxed))
                .sum(),
            drivers: drivers.len(),
        })
    }
}

/// One driver's handle on the checker. Cloning gives another handle for the same driver.
#[derive(Clone)]
pub struct Tracker {
    shared: Arc<Shared>,
    state: Arc<DriverState>,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("driver", &self.state.name)
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

impl Tracker {
    /// The driver's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Starts that succeeded minus ends, now.
    pub fn outstanding(&self) -> i64 {
        self.state.outstanding.load(Ordering::Acquire)
    }

    /// Device accesses checked for this driver.
    pub fn accesses(&self) -> u64 {
        self.state.accesses.load(Ordering::Relaxed)
    }

    fn record(&self, callback: Callback, event: Event, start: u64, end: u64, blockable: bool) {
        let stamp = self.shared.stamp.fetch_add(1, Ordering::AcqRel);
        let mut h = lock(&self.state.history);
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(InvalidationRecord {
            callback,
            event,
            start,
            end,
            blockable,
            stamp,
        });
        self.state.invalidations.fetch_add(1, Ordering::AcqRel);
    }

    fn record_range(&self, callback: Callback, r: &Range) {
        self.record(callback, r.event(), r.start(), r.end(), r.is_blockable());
    }

    /// A list subscriber's start succeeded (the pairing count goes up).
    pub fn start(&self, range: &Range) {
        self.state.outstanding.fetch_add(1, Ordering::AcqRel);
        self.record_range(Callback::Start, range);
    }

    /// A list subscriber refused a non-blockable start (no end is due for it).
    pub fn refused(&self, range: &Range) {
        self.record_range(Callback::Refused, range);
    }

    /// A list subscriber's end (the pairing count goes down).
    pub fn end(&self, range: &Range) {
        self.state.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.record_range(Callback::End, range);
    }

    /// An interval notifier's callback; `accepted` is what it returned.
    pub fn interval(&self, range: &Range, accepted: bool) {
        let cb = if accepted {
            Callback::Interval
        } else {
            Callback::IntervalRefused
        };
        self.record_range(cb, range);
    }

    /// `arch_invalidate_secondary_tlbs` over `[start, end)`.
    pub fn tlb(&self, start: u64, end: u64) {
        self.record(Callback::Tlb, Event::Clear, start, end, false);
    }

    /// `release`.
    pub fn release(&self) {
        self.record(Callback::Release, Event::Release, 0, u64::MAX, true);
    }

    /// Checks one device access at `addr` through `t`, with the primary's page table read now
    /// under its page-table lock. Returns whether it was coherent; a violation is printed and
    /// kept. Call it where the device accesses memory, under the lock the driver's
    /// invalidation takes.
    ///
    /// # Context
    /// Takes the page-table lock of `addr` (a spinlock): the caller may hold its own sleeping
    /// or spinning locks, but not a lock that is taken under a page-table lock.
    pub fn access(&self, space: &Space, addr: u64, t: Translation, access: Access) -> bool {
        self.state.accesses.fetch_add(1, Ordering::Relaxed);
        if let Some(stale) = freed(space, t) {
            return self.violation(space, addr, t, access, stale);
        }
        match compare(space.lookup(addr), t, access) {
            None => true,
            Some(stale) => self.violation(space, addr, t, access, stale),
        }
    }

    /// Checks one access of a hardware TLB (an IOTLB flushed from
    /// `arch_invalidate_secondary_tlbs`): only that the frame is still the one the walker
    /// found. A TLB may use a translation between the primary's change of the entry and the
    /// flush (the primary frees the frame only after the flush, `tlb_finish_mmu`), so the
    /// page table is not compared; a TLB that is never flushed is caught when the frame is
    /// freed. Takes no lock of the primary: callable under the lock the flush takes, which
    /// runs under the page-table lock.
    pub fn access_tlb(&self, space: &Space, addr: u64, t: Translation, access: Access) -> bool {
        self.state.accesses.fetch_add(1, Ordering::Relaxed);
        match freed(space, t) {
            None => true,
            Some(stale) => self.violation(space, addr, t, access, stale),
        }
    }

    fn violation(
        &self,
        space: &Space,
        addr: u64,
        t: Translation,
        access: Access,
        stale: Stale,
    ) -> bool {
        let recent: Vec<InvalidationRecord> = lock(&self.state.history).iter().copied().collect();
        let should = recent
            .iter()
            .rev()
            .find(|r| r.start <= addr && addr < r.end && r.callback != Callback::End)
            .copied();
        let v = Violation {
            driver: self.state.name.clone(),
            mm: space.id(),
            addr,
            access,
            translation: t,
            stale,
            should_have_stopped_it: should,
            recent,
        };
        eprintln!("{v}");
        lock(&self.shared.violations).push(v);
        false
    }
}

fn freed(space: &Space, t: Translation) -> Option<Stale> {
    match space.machine().frames().frame(t.pfn) {
        Err(_) => Some(Stale::BadFrame),
        Ok(f) if f.generation() != t.generation => Some(Stale::FrameFreed {
            now: f.generation(),
        }),
        Ok(_) => None,
    }
}

fn compare(primary: Option<(Pfn, bool)>, t: Translation, access: Access) -> Option<Stale> {
    match primary {
        None => Some(Stale::NotMapped),
        Some((pfn, _)) if pfn != t.pfn => Some(Stale::Remapped { primary: pfn }),
        Some((_, false)) if access.is_write() => Some(Stale::ReadOnly),
        Some(_) => None,
    }
}
