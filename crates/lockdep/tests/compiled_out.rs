//! With validation compiled out (`--no-default-features`) every guard is zero-sized and
//! nothing is reported.
#![cfg(not(feature = "enabled"))]

use std::mem::size_of;

use lockdep::scope::Scope;
use lockdep::{
    atomic_section, might_alloc, might_sleep, non_block_section, static_lock_class, Gfp, LockClass,
    LockMapGuard, Mutex, NonBlockGuard, SpinLock,
};

#[test]
fn annotations_compile_to_nothing() {
    assert_eq!(size_of::<LockClass>(), 0);
    assert_eq!(size_of::<LockMapGuard<'static>>(), 0);
    assert_eq!(size_of::<NonBlockGuard>(), 0);
    assert_eq!(size_of::<lockdep::AtomicSection>(), 0);
    assert_eq!(
        size_of::<Mutex<u64>>(),
        size_of::<parking_lot::Mutex<u64>>()
    );
    assert_eq!(
        size_of::<lockdep::MutexGuard<'static, u64>>(),
        size_of::<parking_lot::MutexGuard<'static, u64>>()
    );

    let scope = Scope::new();
    let s = SpinLock::new((), static_lock_class!());
    let a = Mutex::new((), static_lock_class!());
    let b = Mutex::new((), static_lock_class!());
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    {
        let _b = b.lock();
        let _a = a.lock();
    }
    {
        let _s = s.lock();
        let _x = atomic_section();
        let _nb = non_block_section();
        might_sleep();
        might_alloc(Gfp::KERNEL);
    }
    assert!(scope.is_clean());
    assert!(!lockdep::is_enabled());
}
