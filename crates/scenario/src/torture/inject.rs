//! Fault injection through the notifier: a list subscriber on every torture process that
//! counts invalidations, refuses some non-blockable starts (as a driver whose lock is
//! contended does) and is slow in some blockable ones (a driver waiting for its hardware).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mmu_notifier::{Capabilities, MmuNotifierOps, Range, WouldBlock};

/// Shared counters of the injector.
#[derive(Default, Debug)]
pub struct InjectStats {
    /// `invalidate_range_start` calls seen (over every torture process).
    pub invalidations: AtomicU64,
    /// Non-blockable starts refused on purpose.
    pub refused: AtomicU64,
    /// Blockable starts made slow on purpose.
    pub slowed: AtomicU64,
}

/// The injecting subscriber. Its choices come from a counter mixed with the run's seed, so
/// they do not depend on which thread calls.
pub(crate) struct Injector {
    pub(crate) stats: Arc<InjectStats>,
    pub(crate) seed: u64,
    /// Refuse one non-blockable start in `refuse_one_in` (0: never).
    pub(crate) refuse_one_in: u64,
    /// Sleep in one blockable start in `slow_one_in` (0: never).
    pub(crate) slow_one_in: u64,
    pub(crate) slow: Duration,
}

impl MmuNotifierOps for Injector {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::START_CAN_FAIL
    }

    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        let n = self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        let mut r = crate::rng::Rng::new(self.seed ^ n);
        if !range.is_blockable() {
            if self.refuse_one_in != 0 && r.below(self.refuse_one_in) == 0 {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(WouldBlock);
            }
        } else if self.slow_one_in != 0 && r.below(self.slow_one_in) == 0 {
            self.stats.slowed.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(self.slow);
        }
        Ok(())
    }
}
