//! The page allocator's policy (watermarks, kswapd, direct reclaim, the OOM killer).
//!
//! [`Machine::alloc_page`] is `__alloc_pages` in miniature (`mm/page_alloc.c`): every allocation
//! first goes through the validator's allocation hook ([`lockdep::might_alloc`], which primes the
//! reclaim and notifier maps exactly as `fs_reclaim_acquire` does), takes a free frame above the
//! watermark, wakes kswapd when free memory falls below the low watermark, and — if nothing is
//! free and the GFP flags allow it — reclaims in the allocating thread (direct reclaim, where a
//! notifier callback runs inside whatever locks the allocator holds: seed 000), and finally
//! invokes the OOM killer.

use lockdep::Gfp;

use crate::error::VmError;
use crate::frame::Pfn;
use crate::machine::{Inner, Machine};
use crate::primitive::Ordering;

/// `GFP_HIGHUSER_MOVABLE`, as user pages are allocated.
pub(crate) const GFP_USER: Gfp = Gfp::KERNEL;

/// `__alloc_pages`: one frame, reclaiming and OOM-killing as Linux would (see
/// [`Machine::alloc_page`]).
#[track_caller]
pub(crate) fn alloc_page(m: &Inner, gfp: Gfp) -> Result<Pfn, VmError> {
    lockdep::might_alloc(gfp);
    let gfp = lockdep::current_gfp_context(gfp);
    let atomic = !gfp.allows_blocking();
    // `should_fail_alloc_page` (`mm/fail_page_alloc.c`): fail one allocation in N on purpose,
    // never one reclaim itself makes.
    let one_in = m.fail_alloc_one_in.load(Ordering::Relaxed);
    if one_in > 0
        && !crate::reclaim::in_reclaim()
        && m.fail_alloc_seen.fetch_add(1, Ordering::Relaxed) % one_in == one_in - 1
    {
        m.counters
            .injected_alloc_failures
            .fetch_add(1, Ordering::Relaxed);
        m.counters.alloc_failures.fetch_add(1, Ordering::Relaxed);
        return Err(VmError::OutOfMemory);
    }
    // Reclaim itself (PF_MEMALLOC) and atomic callers may use the reserve below `min`.
    let reserve = atomic || crate::reclaim::in_reclaim();
    let floor = if reserve { 0 } else { m.config.wmark_min };
    for attempt in 0..3 {
        if m.pool.nr_free() > floor {
            if let Some(pfn) = m.pool.take() {
                if m.pool.nr_free() < m.config.wmark_low {
                    m.kswapd.wake();
                }
                return Ok(pfn);
            }
        }
        m.kswapd.wake();
        if atomic || crate::reclaim::in_reclaim() {
            break;
        }
        m.counters.direct_reclaim.fetch_add(1, Ordering::Relaxed);
        let want = m.config.reclaim_batch.max(m.config.wmark_min + 1);
        let freed = crate::reclaim::reclaim(m, want, gfp);
        if freed == 0 && attempt >= 1 {
            // No progress: the OOM killer (`out_of_memory`), then one more try.
            if !crate::oom::out_of_memory(m) {
                break;
            }
        }
    }
    if let Some(pfn) = reserve.then(|| m.pool.take()).flatten() {
        return Ok(pfn);
    }
    m.counters.alloc_failures.fetch_add(1, Ordering::Relaxed);
    Err(VmError::OutOfMemory)
}

impl Machine {
    /// Fails one page allocation in `one_in` on purpose (`fail_page_alloc`), 0 to stop: every
    /// path that allocates must then cope with `OutOfMemory` without breaking an invariant.
    /// Allocations made by reclaim itself are never failed.
    pub fn inject_alloc_failures(&self, one_in: u64) {
        self.0.fail_alloc_one_in.store(one_in, Ordering::Relaxed);
    }

    /// Allocates one frame (`alloc_pages(gfp, 0)`), reclaiming and OOM-killing as Linux would.
    ///
    /// # Context
    /// With a blocking `gfp` (`GFP_KERNEL`, `GFP_NOIO`, …) it may sleep and may enter direct
    /// reclaim, which calls MMU notifiers of any address space (the validator records that
    /// possibility on every call, whether or not reclaim runs). `Gfp::ATOMIC` / `Gfp::NOWAIT`
    /// never reclaim and may dip below the min watermark (atomic only). Fails with
    /// [`VmError::OutOfMemory`] when nothing can be freed.
    #[track_caller]
    pub fn alloc_page(&self, gfp: Gfp) -> Result<Pfn, VmError> {
        alloc_page(&self.0, gfp)
    }
}
