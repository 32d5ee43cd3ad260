//! The reclaim model: allocation flags, scoped restrictions, and the `fs_reclaim` annotation.
//!
//! An allocation that may enter *direct reclaim* (`__GFP_DIRECT_RECLAIM`) can, inside the
//! allocator, write back and free pages, shrink caches, and unmap pages from other processes,
//! which invalidates mappings through MMU notifiers. So a lock held across such an allocation
//! is ordered before everything reclaim and notifiers take. The kernel teaches lockdep this
//! in `fs_reclaim_acquire` (`mm/page_alloc.c`) with pseudo-locks:
//!
//! - [`FS_RECLAIM_MAP`] (`fs_reclaim`) is *held* by reclaim-capable allocations that may also
//!   recurse into filesystems (`__GFP_FS`), and by code that runs inside reclaim (shrinkers).
//! - Pseudo-locks of the layers reclaim may enter are *primed* with `might_lock` by every
//!   allocation that may enter direct reclaim, `GFP_NOIO` included. In the kernel that is
//!   `__mmu_notifier_invalidate_range_start_map`: page-table invalidation can happen whenever
//!   direct reclaim is allowed. This crate knows no such layer by name: a crate that has one
//!   registers its map with [`reclaim_primes!`](crate::reclaim_primes), and the map is then
//!   listed in [`RECLAIM_MAPS`] from the start of the program (a link-time list, so no
//!   allocation can happen before the registration).
//!
//! So a lock held across `might_alloc(Gfp::KERNEL)` (or `NOFS`, or `NOIO`) and also taken
//! inside a primed map (a notifier callback) is reported the first time both have happened, in
//! any order, without reclaim ever having invalidated anything (seed 001).
//! `Gfp::ATOMIC`/`NOWAIT` allocations do not reclaim directly and record nothing.
//!
//! Scoped restrictions (`memalloc_nofs_save()` and friends) drop `__GFP_FS`/`__GFP_IO` from
//! every allocation in scope (`current_gfp_context`), and `PF_MEMALLOC`
//! ([`memalloc_noreclaim_save`]) marks a task that is itself reclaiming and never recurses.
//! These scopes are tracked even with validation compiled out: a simulator may use
//! [`current_gfp_context`] to decide what its own reclaim may do.

use std::cell::Cell;
use std::marker::PhantomData;

use crate::map::{LockMap, RECLAIM_MAPS};

bitflags::bitflags! {
    /// Allocation flags (`gfp_t`), with the kernel's bit values.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Gfp: u32 {
        /// `__GFP_HIGH`: may use emergency reserves.
        const HIGH = 0x20;
        /// `__GFP_IO`: may start physical I/O.
        const IO = 0x40;
        /// `__GFP_FS`: may call into filesystems.
        const FS = 0x80;
        /// `__GFP_DIRECT_RECLAIM`: may enter direct reclaim, so may sleep.
        const DIRECT_RECLAIM = 0x400;
        /// `__GFP_KSWAPD_RECLAIM`: may wake kswapd.
        const KSWAPD_RECLAIM = 0x800;
        /// `__GFP_NOLOCKDEP`: do not annotate this allocation.
        const NOLOCKDEP = 0x0800_0000;
        /// `__GFP_RECLAIM`: direct and kswapd reclaim.
        const RECLAIM = Self::DIRECT_RECLAIM.bits() | Self::KSWAPD_RECLAIM.bits();
        /// `GFP_KERNEL`: the normal allocation, may do anything.
        const KERNEL = Self::RECLAIM.bits() | Self::IO.bits() | Self::FS.bits();
        /// `GFP_NOFS`: may reclaim and do I/O, but not recurse into filesystems.
        const NOFS = Self::RECLAIM.bits() | Self::IO.bits();
        /// `GFP_NOIO`: may reclaim, but start no I/O. Still invalidates mappings.
        const NOIO = Self::RECLAIM.bits();
        /// `GFP_ATOMIC`: never sleeps, may use reserves.
        const ATOMIC = Self::HIGH.bits() | Self::KSWAPD_RECLAIM.bits();
        /// `GFP_NOWAIT`: never sleeps.
        const NOWAIT = Self::KSWAPD_RECLAIM.bits();
    }
}

impl Gfp {
    /// Whether an allocation with these flags may block (`gfpflags_allow_blocking`).
    pub const fn allows_blocking(self) -> bool {
        self.contains(Gfp::DIRECT_RECLAIM)
    }
}

/// `fs_reclaim`: held by allocations that may reclaim with `__GFP_FS`, and by reclaim itself.
pub static FS_RECLAIM_MAP: LockMap = LockMap::new_fs_reclaim("fs_reclaim");

/// `might_lock` on every registered map.
#[inline]
#[track_caller]
fn prime_reclaim_maps() {
    for m in RECLAIM_MAPS {
        m.might_lock();
    }
}

const PF_MEMALLOC: u8 = 1;
const PF_MEMALLOC_NOFS: u8 = 2;
const PF_MEMALLOC_NOIO: u8 = 4;

#[cfg(not(any(loom, shuttle)))]
std::thread_local! {
    static MEMALLOC: Cell<u8> = const { Cell::new(0) };
}
#[cfg(all(shuttle, not(loom)))]
shuttle::thread_local! {
    static MEMALLOC: Cell<u8> = Cell::new(0);
}
#[cfg(loom)]
loom::thread_local! {
    static MEMALLOC: Cell<u8> = Cell::new(0);
}

fn memalloc_flags() -> u8 {
    MEMALLOC.try_with(Cell::get).unwrap_or(0)
}

/// A scoped allocation restriction; the previous state returns when it drops.
#[must_use = "the scope ends when the guard is dropped"]
pub struct MemallocGuard {
    flag: u8,
    was_set: bool,
    _task_bound: PhantomData<*const ()>,
}

impl std::fmt::Debug for MemallocGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.flag {
            PF_MEMALLOC => "PF_MEMALLOC",
            PF_MEMALLOC_NOFS => "PF_MEMALLOC_NOFS",
            _ => "PF_MEMALLOC_NOIO",
        };
        f.debug_tuple("MemallocGuard").field(&name).finish()
    }
}

fn memalloc_save(flag: u8) -> MemallocGuard {
    let was_set = MEMALLOC
        .try_with(|m| {
            let old = m.get();
            m.set(old | flag);
            old & flag != 0
        })
        .unwrap_or(true);
    MemallocGuard {
        flag,
        was_set,
        _task_bound: PhantomData,
    }
}

impl Drop for MemallocGuard {
    fn drop(&mut self) {
        if !self.was_set {
            let _ = MEMALLOC.try_with(|m| m.set(m.get() & !self.flag));
        }
    }
}

/// `memalloc_noreclaim_save()`: sets `PF_MEMALLOC`, for code that is itself reclaiming memory
/// and must not recurse into reclaim. Allocations in scope record no reclaim dependencies.
pub fn memalloc_noreclaim_save() -> MemallocGuard {
    memalloc_save(PF_MEMALLOC)
}

/// `memalloc_nofs_save()`: every allocation in scope behaves as if without `__GFP_FS`.
pub fn memalloc_nofs_save() -> MemallocGuard {
    memalloc_save(PF_MEMALLOC_NOFS)
}

/// `memalloc_noio_save()`: every allocation in scope behaves as if without `__GFP_IO` and
/// `__GFP_FS`.
pub fn memalloc_noio_save() -> MemallocGuard {
    memalloc_save(PF_MEMALLOC_NOIO)
}

/// The flags an allocation really has in the current scope (`current_gfp_context`).
pub fn current_gfp_context(gfp: Gfp) -> Gfp {
    let m = memalloc_flags();
    if m & PF_MEMALLOC_NOIO != 0 {
        gfp - (Gfp::IO | Gfp::FS)
    } else if m & PF_MEMALLOC_NOFS != 0 {
        gfp - Gfp::FS
    } else {
        gfp
    }
}

/// Whether an allocation of (already scoped) `gfp` may enter direct reclaim as far as the
/// validator is concerned (`__need_reclaim`).
fn need_reclaim(gfp: Gfp) -> bool {
    gfp.contains(Gfp::DIRECT_RECLAIM)
        && memalloc_flags() & PF_MEMALLOC == 0
        && !gfp.contains(Gfp::NOLOCKDEP)
}

/// Enters "may reclaim" for an allocation of `gfp` (`fs_reclaim_acquire`): applies the scope
/// masks; if the allocation may enter direct reclaim, holds `fs_reclaim` when it has
/// `__GFP_FS` and primes every map of [`RECLAIM_MAPS`] with `might_lock`. Pair with
/// [`fs_reclaim_release`] with the same flags, in the same scope.
#[inline]
#[track_caller]
pub fn fs_reclaim_acquire(gfp: Gfp) {
    let gfp = current_gfp_context(gfp);
    if need_reclaim(gfp) {
        if gfp.contains(Gfp::FS) {
            FS_RECLAIM_MAP.acquire_raw();
        }
        prime_reclaim_maps();
    }
}

/// Leaves "may reclaim" (`fs_reclaim_release`): releases `fs_reclaim` if
/// [`fs_reclaim_acquire`] with the same flags took it.
#[inline]
#[track_caller]
pub fn fs_reclaim_release(gfp: Gfp) {
    let gfp = current_gfp_context(gfp);
    if need_reclaim(gfp) && gfp.contains(Gfp::FS) {
        FS_RECLAIM_MAP.release_raw();
    }
}

/// A reclaim section as a guard: [`fs_reclaim_acquire`] now, the release on drop. Shrinkers
/// and other code that runs inside reclaim hold it (typically with `Gfp::KERNEL`).
#[must_use = "the section ends when the guard is dropped"]
pub struct FsReclaimGuard {
    held: Option<crate::map::LockMapGuard<'static>>,
}

impl std::fmt::Debug for FsReclaimGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsReclaimGuard")
            .field("holds_fs_reclaim", &self.held.is_some())
            .finish()
    }
}

/// Enters reclaim for `gfp` until the guard drops (see [`fs_reclaim_acquire`]).
#[inline]
#[track_caller]
pub fn fs_reclaim_section(gfp: Gfp) -> FsReclaimGuard {
    let gfp = current_gfp_context(gfp);
    let mut held = None;
    if need_reclaim(gfp) {
        if gfp.contains(Gfp::FS) {
            held = Some(FS_RECLAIM_MAP.acquire());
        }
        prime_reclaim_maps();
    }
    FsReclaimGuard { held }
}

/// The caller is about to allocate with `gfp` (`might_alloc`): records the reclaim
/// dependencies ([`fs_reclaim_acquire`] + [`fs_reclaim_release`]), then `might_sleep()` if
/// `gfp` allows blocking. Call it wherever a real allocation of this kind would be.
#[inline]
#[track_caller]
pub fn might_alloc(gfp: Gfp) {
    fs_reclaim_acquire(gfp);
    fs_reclaim_release(gfp);
    crate::context::might_sleep_if(gfp.allows_blocking());
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn scope_masks_apply_and_restore() {
        assert_eq!(current_gfp_context(Gfp::KERNEL), Gfp::KERNEL);
        {
            let _nofs = memalloc_nofs_save();
            assert_eq!(current_gfp_context(Gfp::KERNEL), Gfp::NOFS);
            {
                let _noio = memalloc_noio_save();
                assert_eq!(current_gfp_context(Gfp::KERNEL), Gfp::NOIO);
            }
            assert_eq!(current_gfp_context(Gfp::KERNEL), Gfp::NOFS);
        }
        assert_eq!(current_gfp_context(Gfp::KERNEL), Gfp::KERNEL);
    }

    #[test]
    fn need_reclaim_follows_direct_reclaim_memalloc_and_nolockdep() {
        assert!(need_reclaim(Gfp::KERNEL));
        assert!(need_reclaim(Gfp::NOIO));
        assert!(!need_reclaim(Gfp::ATOMIC));
        assert!(!need_reclaim(Gfp::NOWAIT));
        assert!(!need_reclaim(Gfp::KERNEL | Gfp::NOLOCKDEP));
        let _reclaiming = memalloc_noreclaim_save();
        assert!(!need_reclaim(Gfp::KERNEL));
    }
}
