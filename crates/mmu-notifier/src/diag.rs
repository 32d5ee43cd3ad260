//! One diagnostics sink for every `WARN_ON`/`BUG_ON` of the kernel's notifier code.
//!
//! Run-time contract violations that the kernel reports with a warning (and then carries on)
//! are reported here as a [`Warning`]; the operation carries on the same way the kernel does,
//! so no state is lost. What happens to the report depends on the sink's [`DiagMode`]:
//! printed once per kind and counted (the default, like `WARN_ON_ONCE`), collected for a test to
//! inspect, or turned into a panic in strict mode.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::Event;

/// A run-time violation of the notifier contract: one of the `WARN_ON`s of
/// `mm/mmu_notifier.c` (or a misuse the kernel only forbids in a comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A list subscriber's `invalidate_range_start` failed in a blockable range, where it
    /// must not fail. The failure is ignored, as the kernel ignores it.
    BlockableStartFailed {
        /// Subscriber id.
        subscriber: u64,
        /// The event of the range.
        event: Event,
    },
    /// A list subscriber's start failed although it did not declare
    /// [`Capabilities::START_CAN_FAIL`](crate::Capabilities::START_CAN_FAIL).
    UndeclaredStartFailure {
        /// Subscriber id.
        subscriber: u64,
    },
    /// An interval subscriber's `invalidate` returned false in a blockable range (kernel:
    /// `WARN_ON(mmu_notifier_range_blockable(range))`); dispatch continues.
    BlockableIntervalRefused {
        /// Interval start.
        start: u64,
    },
    /// An interval subscriber refused the teardown invalidation ([`Event::Release`]), which
    /// must succeed (kernel: `WARN_ON(!ret)` in `mn_itree_release`).
    ReleaseInvalidateRefused {
        /// Interval start.
        start: u64,
    },
    /// `put` of a shared subscription that has no users left (kernel: `WARN_ON(!users)`).
    PutWithoutUsers,
    /// An interval notifier was neither in the tree nor pending when removed (kernel:
    /// `WARN_ON(RB_EMPTY_NODE)`).
    RemoveNotInTree {
        /// Interval start.
        start: u64,
    },
    /// The mm was seen invalidating (odd sequence) with no active range (kernel:
    /// `WARN_ON(mn_itree_is_invalidating)` in insert).
    OddSequenceWhileIdle {
        /// The sequence value seen.
        seq: u64,
    },
    /// A blocking call was made from inside a notifier callback (or an open invalidation) of
    /// the same address space; waiting would deadlock, so it did not wait.
    CalledFromCallback {
        /// The API called.
        api: &'static str,
    },
    /// [`Mm::release`](crate::Mm::release) was called more than once.
    DoubleRelease,
    /// A subscriber whose start can fail and that also has an end was registered under
    /// [`Profile::Pre5_12`](crate::Profile::Pre5_12), which accepts it as Linux 4.19–5.11 did:
    /// when its non-blockable start fails it gets no end (the seed-004 imbalance).
    FallibleStartWithEnd {
        /// Subscriber id.
        subscriber: u64,
    },
    /// A `_locked` variant was called without the primary's `mmap_lock` held (kernel:
    /// `mmap_assert_write_locked`).
    MmapLockNotHeld {
        /// The API called.
        api: &'static str,
    },
    /// The primary's [`Teardown`](crate::Teardown) returned without calling
    /// [`Mm::release`](crate::Mm::release) (Linux's `exit_mmap` always calls
    /// `mmu_notifier_release` first); the contract released the address space after it.
    TeardownWithoutRelease,
}

impl Warning {
    /// A short stable name for the kind, used for once-per-kind logging and counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Warning::BlockableStartFailed { .. } => "blockable-start-failed",
            Warning::UndeclaredStartFailure { .. } => "undeclared-start-failure",
            Warning::BlockableIntervalRefused { .. } => "blockable-interval-refused",
            Warning::ReleaseInvalidateRefused { .. } => "release-invalidate-refused",
            Warning::PutWithoutUsers => "put-without-users",
            Warning::RemoveNotInTree { .. } => "remove-not-in-tree",
            Warning::OddSequenceWhileIdle { .. } => "odd-sequence-while-idle",
            Warning::CalledFromCallback { .. } => "called-from-callback",
            Warning::DoubleRelease => "double-release",
            Warning::FallibleStartWithEnd { .. } => "fallible-start-with-end",
            Warning::MmapLockNotHeld { .. } => "mmap-lock-not-held",
            Warning::TeardownWithoutRelease => "teardown-without-release",
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::BlockableStartFailed { subscriber, event } => write!(
                f,
                "subscriber #{subscriber}: invalidate_range_start failed in blockable context \
                 ({}); a blockable start must not fail",
                event.kernel_name()
            ),
            Warning::UndeclaredStartFailure { subscriber } => write!(
                f,
                "subscriber #{subscriber}: invalidate_range_start failed but the subscriber \
                 did not declare START_CAN_FAIL"
            ),
            Warning::BlockableIntervalRefused { start } => write!(
                f,
                "interval notifier at {start:#x} refused a blockable invalidation"
            ),
            Warning::ReleaseInvalidateRefused { start } => write!(
                f,
                "interval notifier at {start:#x} refused the release invalidation"
            ),
            Warning::PutWithoutUsers => write!(f, "put of a shared subscription with no users"),
            Warning::RemoveNotInTree { start } => {
                write!(
                    f,
                    "interval notifier at {start:#x} removed but not registered"
                )
            }
            Warning::OddSequenceWhileIdle { seq } => write!(
                f,
                "invalidate sequence {seq} is odd with no active invalidation"
            ),
            Warning::CalledFromCallback { api } => write!(
                f,
                "{api} called from inside a notifier callback or open invalidation of the same \
                 mm; it would wait for itself, so it did not wait"
            ),
            Warning::DoubleRelease => write!(f, "the address space was released twice"),
            Warning::FallibleStartWithEnd { subscriber } => write!(
                f,
                "subscriber #{subscriber}: invalidate_range_start can fail and the subscriber has \
                 invalidate_range_end; accepted on the pre-5.12 profile, where a refused \
                 non-blockable start leaves it without its end"
            ),
            Warning::MmapLockNotHeld { api } => write!(
                f,
                "{api} called without the primary's mmap_lock held for write"
            ),
            Warning::TeardownWithoutRelease => write!(
                f,
                "the primary's teardown did not release the address space; released after it"
            ),
        }
    }
}

/// What a [`Diagnostics`] sink does with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagMode {
    /// Print the first report of each kind to stderr, count all (like `WARN_ON_ONCE`).
    LogOnce,
    /// Keep every report for [`Diagnostics::take`]; print nothing.
    Collect,
    /// Panic on the first report: for tests that must see no contract violation.
    Strict,
}

/// The sink every [`Warning`] goes to. One is shared by all address spaces unless an
/// [`Mm`](crate::Mm) is built with its own ([`MmBuilder::diagnostics`](crate::MmBuilder::diagnostics)).
#[derive(Debug)]
pub struct Diagnostics {
    mode: DiagMode,
    total: AtomicU64,
    seen: Mutex<HashSet<&'static str>>,
    collected: Mutex<Vec<Warning>>,
}

impl Diagnostics {
    /// A sink with the given mode.
    pub fn new(mode: DiagMode) -> Arc<Diagnostics> {
        Arc::new(Diagnostics {
            mode,
            total: AtomicU64::new(0),
            seen: Mutex::new(HashSet::new()),
            collected: Mutex::new(Vec::new()),
        })
    }

    /// A collecting sink, for tests.
    pub fn collect() -> Arc<Diagnostics> {
        Diagnostics::new(DiagMode::Collect)
    }

    /// The process-wide default sink ([`DiagMode::LogOnce`]).
    pub fn global() -> Arc<Diagnostics> {
        static GLOBAL: OnceLock<Arc<Diagnostics>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Diagnostics::new(DiagMode::LogOnce))
            .clone()
    }

    /// The sink's mode.
    pub fn mode(&self) -> DiagMode {
        self.mode
    }

    /// Reports a violation.
    pub fn report(&self, w: Warning) {
        self.total.fetch_add(1, Ordering::Relaxed);
        match self.mode {
            DiagMode::LogOnce => {
                let first = self
                    .seen
                    .lock()
                    .map(|mut s| s.insert(w.kind()))
                    .unwrap_or(false);
                if first {
                    eprintln!("mmu-notifier: WARNING: {w}");
                }
                let mut c = self.collected.lock().unwrap_or_else(|p| p.into_inner());
                if c.len() < 1024 {
                    c.push(w);
                }
            }
            DiagMode::Collect => self
                .collected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(w),
            DiagMode::Strict => panic!("mmu-notifier contract violation (strict mode): {w}"),
        }
    }

    /// How many reports were made in all.
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// How many reports of `kind` ([`Warning::kind`]) are held.
    pub fn count_kind(&self, kind: &str) -> usize {
        self.collected
            .lock()
            .map(|c| c.iter().filter(|w| w.kind() == kind).count())
            .unwrap_or(0)
    }

    /// Takes the reports held so far (all of them in [`DiagMode::Collect`], the first 1024 in
    /// [`DiagMode::LogOnce`]).
    pub fn take(&self) -> Vec<Warning> {
        std::mem::take(&mut *self.collected.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_mode_keeps_every_report_and_counts_kinds() {
        let d = Diagnostics::collect();
        d.report(Warning::PutWithoutUsers);
        d.report(Warning::PutWithoutUsers);
        d.report(Warning::DoubleRelease);
        assert_eq!(d.count(), 3);
        assert_eq!(d.count_kind("put-without-users"), 2);
        assert_eq!(d.take().len(), 3);
        assert!(d.take().is_empty());
    }

    #[test]
    #[should_panic(expected = "strict mode")]
    fn strict_mode_panics_on_first_report() {
        Diagnostics::new(DiagMode::Strict).report(Warning::DoubleRelease);
    }

    #[test]
    fn log_once_counts_every_report() {
        let d = Diagnostics::new(DiagMode::LogOnce);
        for _ in 0..3 {
            d.report(Warning::DoubleRelease);
        }
        assert_eq!(d.count(), 3);
        assert_eq!(d.count_kind("double-release"), 3);
    }
}
