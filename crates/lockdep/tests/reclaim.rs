//! The reclaim model: allocations that may enter reclaim, a map reclaim primes (registered
//! here as the notifier crate registers its own) and `fs_reclaim`.
#![cfg(feature = "enabled")]

use lockdep::scope::Scope;
use lockdep::{
    fs_reclaim_section, memalloc_noreclaim_save, might_alloc, reclaim_primes, static_lock_class,
    Gfp, LockMap, Mutex, ReportKind, SpinLock,
};

const INVERSION: ReportKind = ReportKind::ReclaimInversion;

/// Stands for the notifier crate's map: direct reclaim may enter it.
static NOTIFIER_MAP: LockMap = LockMap::new("mmu_notifier_invalidate_range_start");
reclaim_primes!(NOTIFIER_MAP);

/// A map nobody registered: reclaim does not prime it.
static UNREGISTERED_MAP: LockMap = LockMap::new("not-entered-by-reclaim");

#[test]
fn registered_maps_are_listed_and_unregistered_ones_are_not() {
    assert!(lockdep::RECLAIM_MAPS
        .iter()
        .any(|m| std::ptr::eq(*m, &NOTIFIER_MAP)));
    assert!(!lockdep::RECLAIM_MAPS
        .iter()
        .any(|m| std::ptr::eq(*m, &UNREGISTERED_MAP)));
}

#[test]
fn a_map_reclaim_does_not_prime_makes_no_reclaim_inversion() {
    let scope = Scope::new();
    let lock = Mutex::new(0, static_lock_class!("unprimed-lock"));
    {
        let _g = lock.lock();
        might_alloc(Gfp::KERNEL);
    }
    {
        let _map = UNREGISTERED_MAP.acquire();
        *lock.lock() += 1;
    }
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn allocating_inside_a_primed_map_is_recursive_locking_of_the_map() {
    // The kernel's words for it: possible recursive locking (of the notifier map), not the
    // in-reclaim recursion, whose advice (NOFS) would not help.
    let scope = Scope::new();
    {
        let _map = NOTIFIER_MAP.acquire();
        might_alloc(Gfp::NOIO);
    }
    let r = scope.of_kind(ReportKind::RecursiveLocking);
    assert_eq!(r.len(), 1, "{:#?}", scope.reports());
    assert!(r[0].involves("mmu_notifier_invalidate_range_start"));
    assert!(r[0].message.contains("waits for itself"), "{}", r[0]);
    assert!(scope.of_kind(ReportKind::ReclaimRecursion).is_empty());
}

/// A notifier callback that takes `lock`, as the invalidation code runs it.
fn simulated_invalidate_range_start(lock: &Mutex<u32>) {
    let _map = NOTIFIER_MAP.acquire();
    *lock.lock() += 1;
}

#[test]
fn lock_held_across_kernel_alloc_and_taken_in_notifier_is_reclaim_inversion() {
    // Seed 001: reported although no invalidation runs during the allocation.
    let scope = Scope::new();
    let user_lock = Mutex::new(0, static_lock_class!("seed001-kernel"));
    {
        let _g = user_lock.lock();
        might_alloc(Gfp::KERNEL);
    }
    simulated_invalidate_range_start(&user_lock);
    let r = scope.of_kind(INVERSION);
    assert_eq!(r.len(), 1, "{:#?}", scope.reports());
    assert!(r[0].involves("mmu_notifier_invalidate_range_start"));
    assert!(r[0].involves("fs_reclaim"));
    assert!(r[0].to_string().contains("reclaim inversion"));
}

#[test]
fn noio_allocation_still_primes_the_notifier_map() {
    let scope = Scope::new();
    let user_lock = Mutex::new(0, static_lock_class!("seed001-noio"));
    // The other order this time: the callback first, the allocation second.
    simulated_invalidate_range_start(&user_lock);
    {
        let _g = user_lock.lock();
        might_alloc(Gfp::NOIO);
    }
    let r = scope.of_kind(INVERSION);
    assert_eq!(r.len(), 1, "{:#?}", scope.reports());
    assert!(
        !r[0].involves("fs_reclaim"),
        "NOIO does not take fs_reclaim"
    );
}

#[test]
fn nofs_allocation_is_reported_too() {
    let scope = Scope::new();
    let user_lock = Mutex::new(0, static_lock_class!("seed001-nofs"));
    simulated_invalidate_range_start(&user_lock);
    {
        let _g = user_lock.lock();
        might_alloc(Gfp::NOFS);
    }
    assert_eq!(scope.of_kind(INVERSION).len(), 1);
}

#[test]
fn atomic_allocation_under_the_lock_is_clean() {
    let scope = Scope::new();
    let user_lock = Mutex::new(0, static_lock_class!("seed001-atomic"));
    {
        let _g = user_lock.lock();
        might_alloc(Gfp::ATOMIC);
        might_alloc(Gfp::NOWAIT);
    }
    simulated_invalidate_range_start(&user_lock);
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn allocating_before_taking_the_lock_is_clean() {
    let scope = Scope::new();
    let user_lock = Mutex::new(0, static_lock_class!("alloc-first"));
    might_alloc(Gfp::KERNEL);
    drop(user_lock.lock());
    simulated_invalidate_range_start(&user_lock);
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn pf_memalloc_and_nolockdep_allocations_record_nothing() {
    let scope = Scope::new();
    let user_lock = Mutex::new(0, static_lock_class!("memalloc-lock"));
    {
        let _g = user_lock.lock();
        {
            let _reclaimer = memalloc_noreclaim_save();
            might_alloc(Gfp::KERNEL);
        }
        might_alloc(Gfp::KERNEL | Gfp::NOLOCKDEP);
    }
    simulated_invalidate_range_start(&user_lock);
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn lock_taken_in_a_shrinker_and_held_across_kernel_alloc_is_reclaim_inversion() {
    let scope = Scope::new();
    let cache_lock = Mutex::new(0, static_lock_class!("shrinker-cache"));
    {
        // A shrinker runs inside reclaim.
        let _reclaim = fs_reclaim_section(Gfp::KERNEL);
        *cache_lock.lock() += 1;
    }
    {
        let _g = cache_lock.lock();
        might_alloc(Gfp::KERNEL);
    }
    let r = scope.of_kind(INVERSION);
    assert_eq!(r.len(), 1, "{:#?}", scope.reports());
    assert!(r[0].involves("fs_reclaim"));
}

#[test]
fn nofs_allocation_under_a_shrinker_lock_is_clean() {
    let scope = Scope::new();
    let cache_lock = Mutex::new(0, static_lock_class!("shrinker-cache-nofs"));
    {
        let _reclaim = fs_reclaim_section(Gfp::KERNEL);
        *cache_lock.lock() += 1;
    }
    {
        let _g = cache_lock.lock();
        let _nofs = lockdep::memalloc_nofs_save();
        // Not an fs_reclaim dependency; the notifier map is primed, which this lock is not
        // taken under.
        might_alloc(Gfp::KERNEL);
    }
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn allocating_with_fs_inside_reclaim_is_reclaim_recursion() {
    let scope = Scope::new();
    {
        let _reclaim = fs_reclaim_section(Gfp::KERNEL);
        might_alloc(Gfp::KERNEL);
    }
    let r = scope.of_kind(ReportKind::ReclaimRecursion);
    assert_eq!(r.len(), 1, "{:#?}", scope.reports());
}

#[test]
fn blocking_allocation_under_spinlock_is_sleeping_in_atomic() {
    let scope = Scope::new();
    let s = SpinLock::new((), static_lock_class!("alloc-spin"));
    {
        let _s = s.lock();
        might_alloc(Gfp::ATOMIC);
    }
    assert!(scope.is_clean());
    {
        let _s = s.lock();
        might_alloc(Gfp::KERNEL);
    }
    assert_eq!(scope.of_kind(ReportKind::SleepingInInvalidContext).len(), 1);
}
