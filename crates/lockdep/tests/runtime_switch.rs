//! The runtime switch: `set_enabled(false)` silences every check. Alone in its binary because
//! the switch is process-wide.
#![cfg(feature = "enabled")]

use lockdep::scope::Scope;
use lockdep::{might_sleep, non_block_end, set_enabled, static_lock_class, Mutex, SpinLock};

#[test]
fn disabled_switch_silences_cycles_and_contexts_and_reenables_cleanly() {
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("switch-A"));
    let b = Mutex::new((), static_lock_class!("switch-B"));
    let s = SpinLock::new((), static_lock_class!("switch-spin"));

    set_enabled(false);
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
        might_sleep();
    }
    non_block_end();
    assert_eq!(lockdep::held_lock_count(), 0);
    assert!(scope.is_clean(), "{:#?}", scope.reports());

    // A lock taken while enabled and released after disabling is still released.
    set_enabled(true);
    let g = a.lock();
    set_enabled(false);
    drop(g);
    set_enabled(true);
    assert_eq!(lockdep::held_lock_count(), 0);
    assert!(scope.is_clean(), "{:#?}", scope.reports());

    // Back on, the checks work.
    {
        let _s = s.lock();
        might_sleep();
    }
    assert_eq!(scope.reports().len(), 1);
}
