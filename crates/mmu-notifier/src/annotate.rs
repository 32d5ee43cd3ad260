//! The one seam where the kernel's validator calls belong.
//!
//! Linux annotates the notifier core with lockdep and scheduler debug calls
//! (`include/linux/mmu_notifier.h`, `mm/mmu_notifier.c`): the
//! `__mmu_notifier_invalidate_range_start_map` pseudo-lock held across start and end dispatch
//! and "might-taken" in `mmu_interval_read_begin` and `mmu_interval_notifier_remove`;
//! `might_sleep()` at blockable start and end; `non_block_start()/non_block_end()` around
//! callbacks of a non-blockable range (`mn_hlist_invalidate_range_start`); atomic context
//! around `arch_invalidate_secondary_tlbs`; the SRCU read section as a recursive read of the
//! SRCU map and `synchronize_srcu` as a wait on it. `fs_reclaim_acquire` (`mm/page_alloc.c`)
//! primes the map for every allocation that may enter direct reclaim: here the map is
//! registered with the validator for that ([`lockdep::reclaim_primes!`]), so the validator
//! itself knows nothing of notifiers.
//!
//! # The map's edges, and two choices
//!
//! - **Caller lock → map and map → callback lock are both strong.** The map is taken inside
//!   the SRCU read section, a recursive read. The kernel's lockdep records an edge only from
//!   the lock on top of the held stack, so with SRCU on top a lock held by the caller of
//!   `invalidate_range_start` reached the map only through SRCU (`L -(ER)-> srcu -(SN)-> map`),
//!   a weak path: amdgpu's 2016 reservation/`anon_vma` inversion, reduced to a lock held around
//!   the start and taken in a callback, went unreported (the kernel avoids it by taking the map
//!   in the inline wrapper, before `srcu_read_lock`). The validator here records the direct edge
//!   from every lock under a recursive reader, so both edges are strong whichever is taken
//!   first (tests `caller_lock_*` and `map_then_callback_lock_*` in
//!   `tests/lockdep_contract.rs`).
//! - **The end dispatch waits for nothing.** A lock a callback takes in
//!   `invalidate_range_start` and releases in `invalidate_range_end` (the pre-5.12 ODP design)
//!   is held when the end takes the map again, and kernel lockdep reports that as a cycle with
//!   the map. It cannot deadlock: the map is not a lock, and the end does not wait for any
//!   other invalidation. So the end holds the map with
//!   [`LockMap::acquire_nowait`](lockdep::LockMap::acquire_nowait): what end callbacks take is
//!   still ordered after the map (and after the caller's locks), but holding a lock into the
//!   end records no edge into the map. The start still records caller lock → map.
//! - **`remove` (or `read_begin`) from inside a callback** waits for the map while holding
//!   it: reported as the kernel would, "possible recursive locking" of the map (not as an
//!   allocation inside reclaim).
//!
//! Every such call in this crate goes through this module and nowhere else. With the crate
//! feature `lockdep` they go to the [`lockdep`] validator; without it they compile to nothing
//! and every guard is zero-sized.
//!
//! The contract's own locks are validated too: each internal lock acquisition holds a
//! pseudo-lock of that lock's class for as long as the real lock is held ([`ContractLock`]),
//! so a dependency between them, or between them and a subscriber's locks, is recorded like
//! any other. The interval-tree lock is the kernel's `subscriptions->lock` spinlock: holding it
//! is atomic context, so sleeping under it is reported.

use crate::primitive::{lock, Mutex, MutexGuard};

#[cfg(feature = "lockdep")]
mod findings;

#[cfg(feature = "lockdep")]
pub use findings::{Finding, Findings};

#[cfg(feature = "lockdep")]
mod imp {
    use lockdep::{LockMap, LockMapGuard};

    /// `__mmu_notifier_invalidate_range_start_map`: held while invalidation callbacks run, and
    /// primed by every allocation that may enter direct reclaim (registered below).
    static MAP: LockMap = LockMap::new("mmu_notifier_invalidate_range_start");
    lockdep::reclaim_primes!(MAP);

    /// The SRCU domain's read side, one class for every address space's domain (Linux uses one
    /// `srcu_struct` for all of them, and lockdep sees it as one map).
    static SRCU: LockMap = LockMap::new("mmu_notifier_srcu");
    static LIST_LOCK: LockMap = LockMap::new("mmu_notifier_subscriptions.list_lock");
    static GET_LOCK: LockMap = LockMap::new("mmu_notifier_subscriptions.get_lock");
    static ITREE_ENABLE: LockMap = LockMap::new("mmu_notifier_subscriptions.itree_enable");
    static ITREE: LockMap = LockMap::new("mmu_notifier_subscriptions.lock");

    pub(crate) type MapGuard = LockMapGuard<'static>;
    pub(crate) type NonBlockGuard = lockdep::NonBlockGuard;
    pub(crate) type AtomicGuard = lockdep::AtomicSection;
    pub(crate) type LockGuard = (Option<lockdep::AtomicSection>, LockMapGuard<'static>);

    #[inline]
    #[track_caller]
    pub(crate) fn might_sleep() {
        lockdep::might_sleep();
    }

    #[inline]
    #[track_caller]
    pub(crate) fn invalidate_map_acquire() -> MapGuard {
        MAP.acquire()
    }

    #[inline]
    #[track_caller]
    pub(crate) fn invalidate_map_end() -> MapGuard {
        MAP.acquire_nowait()
    }

    #[inline]
    #[track_caller]
    pub(crate) fn invalidate_map_might_lock() {
        MAP.might_lock();
    }

    #[inline]
    #[track_caller]
    pub(crate) fn non_block() -> NonBlockGuard {
        lockdep::non_block_section()
    }

    #[inline]
    #[track_caller]
    pub(crate) fn atomic_section() -> AtomicGuard {
        lockdep::atomic_section()
    }

    #[inline]
    #[track_caller]
    pub(crate) fn srcu_read() -> MapGuard {
        SRCU.acquire_read()
    }

    #[inline]
    #[track_caller]
    pub(crate) fn srcu_sync() {
        SRCU.sync();
    }

    #[inline]
    #[track_caller]
    pub(crate) fn holding(which: super::ContractLock) -> LockGuard {
        use super::ContractLock::*;
        match which {
            List => (None, LIST_LOCK.acquire()),
            Get => (None, GET_LOCK.acquire()),
            ItreeEnable => (None, ITREE_ENABLE.acquire()),
            // A spinlock: atomic context first, as `spin_lock` disables preemption first.
            Itree => (Some(lockdep::atomic_section()), ITREE.acquire()),
        }
    }
}

/// The primary's `mmap_lock` as a `lockdep` read-write lock: `might_lock` and `is_held` are
/// the validator's.
#[cfg(feature = "lockdep")]
impl<T: Send + Sync + 'static> crate::MmapLock for lockdep::RwLock<T> {
    #[track_caller]
    fn might_lock(&self) {
        lockdep::RwLock::might_lock(self);
    }
    fn is_held(&self) -> bool {
        lockdep::RwLock::is_held(self)
    }
}

#[cfg(not(feature = "lockdep"))]
mod imp {
    /// What every guard is without a validator: nothing.
    #[derive(Debug)]
    pub(crate) struct Off;

    pub(crate) type MapGuard = Off;
    pub(crate) type NonBlockGuard = Off;
    pub(crate) type AtomicGuard = Off;
    pub(crate) type LockGuard = Off;

    #[inline(always)]
    pub(crate) fn might_sleep() {}
    #[inline(always)]
    pub(crate) fn invalidate_map_acquire() -> MapGuard {
        Off
    }
    #[inline(always)]
    pub(crate) fn invalidate_map_end() -> MapGuard {
        Off
    }
    #[inline(always)]
    pub(crate) fn invalidate_map_might_lock() {}
    #[inline(always)]
    pub(crate) fn non_block() -> NonBlockGuard {
        Off
    }
    #[inline(always)]
    pub(crate) fn atomic_section() -> AtomicGuard {
        Off
    }
    #[inline(always)]
    pub(crate) fn srcu_read() -> MapGuard {
        Off
    }
    #[inline(always)]
    pub(crate) fn srcu_sync() {}
    #[inline(always)]
    pub(crate) fn holding(_which: super::ContractLock) -> LockGuard {
        Off
    }
}

/// The contract's internal locks, for [`holding`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum ContractLock {
    /// The list subscribers' writer lock.
    List,
    /// Serialises `notifier_get`.
    Get,
    /// Serialises switching interval mode on.
    ItreeEnable,
    /// The interval tree and its sequence (the kernel's `subscriptions->lock` spinlock).
    Itree,
}

/// Held while start or end callbacks are dispatched (`lock_map_acquire(&map)`).
pub(crate) type InvalidateMapGuard = imp::MapGuard;
/// Held around a list callback of a non-blockable range (`non_block_start()`/`_end()`).
pub(crate) type NonBlockGuard = imp::NonBlockGuard;
/// Held around callbacks that run in atomic context (`arch_invalidate_secondary_tlbs`).
pub(crate) type AtomicGuard = imp::AtomicGuard;
/// An open SRCU read section, as the validator sees it.
pub(crate) type SrcuReadGuard = imp::MapGuard;
/// One of the contract's locks, as the validator sees it; drop it just before the real lock.
pub(crate) type LockGuard = imp::LockGuard;

/// `might_sleep()`: the caller is about to do something that may sleep.
#[inline(always)]
#[track_caller]
pub(crate) fn might_sleep() {
    imp::might_sleep()
}

/// `lock_map_acquire(&__mmu_notifier_invalidate_range_start_map)`.
#[inline(always)]
#[track_caller]
pub(crate) fn invalidate_map_acquire() -> InvalidateMapGuard {
    imp::invalidate_map_acquire()
}

/// `lock_map_acquire(&map)` in `__mmu_notifier_invalidate_range_end`, held as an acquisition
/// that waits for nothing (see the module documentation).
#[inline(always)]
#[track_caller]
pub(crate) fn invalidate_map_end() -> InvalidateMapGuard {
    imp::invalidate_map_end()
}

/// `lock_map_acquire(); lock_map_release();`: the caller might wait for invalidations.
#[inline(always)]
#[track_caller]
pub(crate) fn invalidate_map_might_lock() {
    imp::invalidate_map_might_lock()
}

/// `non_block_start()`; the guard's drop is `non_block_end()`.
#[inline(always)]
#[track_caller]
pub(crate) fn non_block() -> NonBlockGuard {
    imp::non_block()
}

/// Enter atomic context until the guard drops.
#[inline(always)]
#[track_caller]
pub(crate) fn atomic_section() -> AtomicGuard {
    imp::atomic_section()
}

/// `srcu_read_lock()`, as the validator sees it: a recursive read of the SRCU map.
#[inline(always)]
#[track_caller]
pub(crate) fn srcu_read() -> SrcuReadGuard {
    imp::srcu_read()
}

/// `synchronize_srcu()`, as the validator sees it: waits for every reader, so holding a lock
/// that a callback takes while calling it is a cycle.
#[inline(always)]
#[track_caller]
pub(crate) fn srcu_sync() {
    imp::srcu_sync()
}

/// The validator's view of holding one of the contract's locks.
#[inline(always)]
#[track_caller]
pub(crate) fn holding(which: ContractLock) -> LockGuard {
    imp::holding(which)
}

/// One of the contract's own locks, held: the real guard plus the validator's view of it.
pub(crate) struct Held<'a, T> {
    // Declared first, so dropped first: the validator releases just before the real lock.
    _seen: LockGuard,
    guard: MutexGuard<'a, T>,
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// Locks `m`, one of the contract's locks, and tells the validator (see [`lock`]).
#[inline(always)]
#[track_caller]
pub(crate) fn lock_as<T>(m: &Mutex<T>, which: ContractLock) -> Held<'_, T> {
    let guard = lock(m);
    Held {
        _seen: holding(which),
        guard,
    }
}
