//! The one seam where the kernel's validator calls belong.
//!
//! Linux annotates the notifier core with lockdep and scheduler debug calls (reference §1.9,
//! §3): the `__mmu_notifier_invalidate_range_start_map` pseudo-lock held across start and end
//! dispatch and "might-taken" in `read_begin` and interval `remove`; `might_sleep()` at
//! blockable start and end; `non_block_start()/non_block_end()` around list callbacks of a
//! non-blockable range; atomic context around `arch_invalidate_secondary_tlbs`.
//!
//! Every such call in this crate goes through this module and nowhere else. Without a
//! validator they compile to nothing; the `lockdep` crate plugs in here, so the rest of the
//! crate does not change when it does.

/// `might_sleep()`: the caller is about to do something that may sleep.
#[inline(always)]
#[track_caller]
pub(crate) fn might_sleep() {}

/// Held while start or end callbacks are dispatched (`lock_map_acquire(&map)`).
pub(crate) struct InvalidateMapGuard;

/// `lock_map_acquire(&__mmu_notifier_invalidate_range_start_map)`.
#[inline(always)]
#[track_caller]
pub(crate) fn invalidate_map_acquire() -> InvalidateMapGuard {
    InvalidateMapGuard
}

/// `lock_map_acquire(); lock_map_release();`: the caller might wait for invalidations.
#[inline(always)]
#[track_caller]
pub(crate) fn invalidate_map_might_lock() {}

/// Held around a list callback of a non-blockable range (`non_block_start()`/`_end()`).
pub(crate) struct NonBlockGuard;

/// `non_block_start()`; the guard's drop is `non_block_end()`.
#[inline(always)]
pub(crate) fn non_block() -> NonBlockGuard {
    NonBlockGuard
}

/// Held around callbacks that run in atomic context (`arch_invalidate_secondary_tlbs`).
pub(crate) struct AtomicGuard;

/// Enter atomic context until the guard drops.
#[inline(always)]
pub(crate) fn atomic_section() -> AtomicGuard {
    AtomicGuard
}
