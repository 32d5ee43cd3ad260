//! Contexts: sleeping where blocking is not allowed, unbalanced sections, locks at task exit.
#![cfg(feature = "enabled")]

use std::thread;

use lockdep::scope::Scope;
use lockdep::{
    atomic_section, check_task_exit, might_sleep, non_block_end, non_block_section,
    non_block_start, static_lock_class, Completion, LockMap, Mutex, ReportKind, RwLock, SpinLock,
    WaitQueue,
};

const SLEEP: ReportKind = ReportKind::SleepingInInvalidContext;

#[test]
fn mutex_inside_non_block_section_is_reported_with_non_block_count() {
    // Seed 003: an OOM-reaper-style notifier call that must not block takes a mutex.
    let scope = Scope::new();
    let m = Mutex::new((), static_lock_class!("nb-mutex"));
    non_block_start();
    drop(m.lock());
    non_block_end();
    let r = scope.of_kind(SLEEP);
    assert_eq!(r.len(), 1, "{:#?}", scope.reports());
    let text = r[0].to_string();
    assert!(
        text.contains("BUG: sleeping function called from invalid context at"),
        "{text}"
    );
    assert!(
        text.contains("in_atomic(): 0, irqs_disabled(): 0, non_block: 1, pid: "),
        "{text}"
    );
    assert!(text.contains("name: "), "{text}");
    assert!(r[0].location.as_ref().unwrap().file.ends_with("context.rs"));
    assert_eq!(r[0].context.as_ref().unwrap().non_block, 1);
}

#[test]
fn spinlock_and_trylock_inside_non_block_section_are_clean() {
    let scope = Scope::new();
    let s = SpinLock::new(0, static_lock_class!("nb-spin"));
    let m = Mutex::new((), static_lock_class!("nb-try"));
    let _nb = non_block_section();
    *s.lock() += 1;
    drop(m.try_lock());
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn sleeping_lock_under_spinlock_is_reported() {
    // Seed 000's original bug: a mutex taken where the caller holds a spinlock.
    let scope = Scope::new();
    let ptl = SpinLock::new((), static_lock_class!("ptl"));
    let m = Mutex::new((), static_lock_class!("gntdev-lock"));
    {
        let _ptl = ptl.lock();
        assert!(lockdep::in_atomic());
        drop(m.lock());
    }
    assert!(!lockdep::in_atomic());
    let r = scope.of_kind(SLEEP);
    assert_eq!(r.len(), 1);
    let text = r[0].to_string();
    assert!(
        text.contains("in_atomic(): 1, irqs_disabled(): 0, non_block: 0"),
        "{text}"
    );
    assert!(text.contains("spinlock"), "{text}");
    assert!(text.contains("Preemption disabled at:"), "{text}");
}

#[test]
fn sleeping_calls_inside_atomic_section_are_reported() {
    let scope = Scope::new();
    let rw = RwLock::new((), static_lock_class!("atomic-rw"));
    let done = Completion::new(static_lock_class!("atomic-completion"));
    done.complete();
    {
        let _a = atomic_section();
        might_sleep();
        drop(rw.read());
        done.wait();
    }
    assert_eq!(scope.of_kind(SLEEP).len(), 3, "{:#?}", scope.reports());
}

#[test]
fn sleeping_calls_outside_atomic_context_are_clean() {
    let scope = Scope::new();
    let m = Mutex::new((), static_lock_class!("plain-mutex"));
    {
        let _a = atomic_section();
    }
    {
        let _nb = non_block_section();
    }
    might_sleep();
    drop(m.lock());
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn unbalanced_non_block_end_is_reported() {
    let scope = Scope::new();
    non_block_end();
    let r = scope.of_kind(ReportKind::UnbalancedNonBlockEnd);
    assert_eq!(r.len(), 1);
    assert_eq!(lockdep::non_block_count(), 0);
}

#[test]
fn balanced_non_block_sections_are_clean() {
    let scope = Scope::new();
    non_block_start();
    non_block_start();
    assert_eq!(lockdep::non_block_count(), 2);
    non_block_end();
    non_block_end();
    assert!(scope.is_clean());
}

#[test]
fn releasing_a_map_not_held_is_a_bad_unlock() {
    static MAP: LockMap = LockMap::new("bad-unlock-map");
    let scope = Scope::new();
    MAP.release_raw();
    let r = scope.of_kind(ReportKind::BadUnlock);
    assert_eq!(r.len(), 1);
    assert!(r[0].to_string().contains("bad unlock balance"));
}

#[test]
fn raw_acquire_and_release_in_pairs_are_clean() {
    static MAP: LockMap = LockMap::new("good-unlock-map");
    let scope = Scope::new();
    MAP.acquire_raw();
    assert!(MAP.is_held());
    MAP.release_raw();
    assert!(scope.is_clean());
}

#[test]
fn lock_leaked_by_a_thread_is_reported_when_it_exits() {
    let scope = Scope::new();
    let m = Box::leak(Box::new(Mutex::new((), static_lock_class!("leaked"))));
    let h = scope.handle();
    thread::Builder::new()
        .name("leaker".into())
        .spawn(move || {
            h.attach();
            std::mem::forget(m.lock());
        })
        .unwrap()
        .join()
        .unwrap();
    let r = scope.of_kind(ReportKind::HeldAtExit);
    assert_eq!(r.len(), 1, "{:#?}", scope.reports());
    assert_eq!(r[0].thread.name, "leaker");
    assert_eq!(r[0].held[0].class.name, "leaked");
}

#[test]
fn explicit_task_exit_check_reports_held_locks() {
    static MAP: LockMap = LockMap::new("exit-map");
    let scope = Scope::new();
    MAP.acquire_raw();
    check_task_exit();
    assert_eq!(scope.of_kind(ReportKind::HeldAtExit).len(), 1);
    assert_eq!(lockdep::held_lock_count(), 0);
}

#[test]
fn threads_that_release_everything_exit_clean() {
    let scope = Scope::new();
    let m = Mutex::new((), static_lock_class!("exit-clean"));
    thread::scope(|s| {
        let h = scope.handle();
        s.spawn(move || {
            h.attach();
            drop(m.lock());
            check_task_exit();
        });
    });
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn waiting_on_a_completion_while_holding_a_lock_its_signaller_takes_is_reported() {
    let scope = Scope::new();
    let m = Mutex::new((), static_lock_class!("flush-lock"));
    let done = Completion::new(static_lock_class!("work-done"));
    thread::scope(|s| {
        let h = scope.handle();
        let (m, done) = (&m, &done);
        // The worker: runs the work inside the completion's signal section.
        s.spawn(move || {
            h.attach();
            let _signalling = done.signal_section();
            drop(m.lock());
            done.complete();
        })
        .join()
        .unwrap();
        // The flusher waits while holding the lock the work takes.
        let _g = m.lock();
        done.wait();
    });
    assert_eq!(
        scope
            .of_kind(ReportKind::PossibleCircularLockingDependency)
            .len(),
        1,
        "{:#?}",
        scope.reports()
    );
}

#[test]
fn waiting_without_the_lock_is_clean_and_wakes() {
    let scope = Scope::new();
    let m = Mutex::new(false, static_lock_class!("wq-state"));
    let wq = WaitQueue::new(static_lock_class!("wq"));
    thread::scope(|s| {
        let h = scope.handle();
        let (m, wq) = (&m, &wq);
        s.spawn(move || {
            h.attach();
            let _signalling = wq.signal_section();
            *m.lock() = true;
            wq.wake_up_all();
        });
        wq.wait_event(|| *m.lock());
    });
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn lock_map_wait_while_holding_a_lock_taken_inside_the_map_is_reported() {
    static GRACE: LockMap = LockMap::new("grace-period");
    let scope = Scope::new();
    let m = Mutex::new((), static_lock_class!("gp-user"));
    {
        let _in_gp = GRACE.acquire();
        drop(m.lock());
    }
    {
        let _m = m.lock();
        GRACE.wait();
    }
    assert_eq!(
        scope
            .of_kind(ReportKind::PossibleCircularLockingDependency)
            .len(),
        1
    );
}
