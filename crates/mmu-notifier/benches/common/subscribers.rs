//! The subscribers the dispatch benchmarks register, and the baseline's own interface, shared
//! by `dispatch.rs` (criterion) and `dispatch_floor.rs` (minimum of batches).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mmu_notifier::{
    Capabilities, Interval, IntervalNotifierOps, MmuNotifierOps, Range, WouldBlock,
};

/// The baseline's callback interface: the same two calls a list subscriber gets.
pub trait Callbacks: Send + Sync {
    fn start(&self, range: &Range) -> Result<(), WouldBlock>;
    fn end(&self, range: &Range);
}

/// The baseline of a list dispatch: every start, then every end, through `dyn` calls.
#[inline]
pub fn baseline_dispatch(subs: &[Arc<dyn Callbacks>], range: &Range) {
    for s in subs {
        let _ = s.start(range);
    }
    for s in subs {
        s.end(range);
    }
}

/// A KVM-like list subscriber: bumps its own counter in start and end.
#[derive(Default)]
pub struct Bump {
    hits: AtomicU64,
}

impl Bump {
    #[inline]
    fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }
}

impl MmuNotifierOps for Bump {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }

    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        self.hit();
        Ok(())
    }

    fn invalidate_range_end(&self, _range: &Range) {
        self.hit();
    }
}

impl Callbacks for Bump {
    fn start(&self, _range: &Range) -> Result<(), WouldBlock> {
        self.hit();
        Ok(())
    }

    fn end(&self, _range: &Range) {
        self.hit();
    }
}

/// A driver's interval callback reduced to what it must do: record the sequence.
pub struct SetSeq;

impl IntervalNotifierOps for SetSeq {
    fn invalidate(&self, interval: &Interval, _range: &Range, cur_seq: u64) -> bool {
        interval.set_seq(cur_seq);
        true
    }
}
