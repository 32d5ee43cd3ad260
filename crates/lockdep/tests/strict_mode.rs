//! Strict mode panics on a report. Alone in its binary because the mode is process-wide.
#![cfg(feature = "enabled")]

use lockdep::{might_sleep, set_report_mode, static_lock_class, Mutex, ReportMode, SpinLock};

#[test]
fn strict_mode_panics_on_a_report_and_leaves_the_stack_consistent() {
    set_report_mode(ReportMode::Strict);
    let s = SpinLock::new((), static_lock_class!("strict-spin"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _s = s.lock();
        might_sleep();
    }));
    assert!(result.is_err());
    assert_eq!(lockdep::held_lock_count(), 0);
    assert!(!lockdep::in_atomic());

    // A report on an acquisition panics before the lock is recorded or taken.
    let a = Mutex::new((), static_lock_class!("strict-A"));
    let b = Mutex::new((), static_lock_class!("strict-B"));
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _b = b.lock();
        let _a = a.lock();
    }));
    assert!(result.is_err());
    assert_eq!(lockdep::held_lock_count(), 0);
    // Correct code does not panic.
    let _a = a.lock();
    let _b = b.lock();
    set_report_mode(ReportMode::Print);
}
