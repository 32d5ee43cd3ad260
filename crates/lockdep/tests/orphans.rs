//! Never miss silently: a report made on a thread attached to no scope is not dropped.
//!
//! Before the rule, the report below went to stderr only, and the scope of the test that
//! started the thread stayed clean: the detection was missed while the test passed.
#![cfg(feature = "enabled")]

use lockdep::scope::{self, Scope};
use lockdep::{static_lock_class, Context, Mutex, ReportKind};

/// Serialises the tests that make orphans in the process-wide context (seen by every scope)
/// with the one that needs a strict scope to stay clean.
static GLOBAL_ORPHANS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes `a` then `b`, then `b` then `a`: one cycle report, on the calling thread.
fn abba(a: &Mutex<()>, b: &Mutex<()>) {
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    let _b = b.lock();
    let _a = a.lock();
}

#[test]
fn a_report_on_an_unattached_thread_is_an_orphan_the_scope_sees() {
    let _serial = GLOBAL_ORPHANS.lock().unwrap_or_else(|p| p.into_inner());
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("orphan-A"));
    let b = Mutex::new((), static_lock_class!("orphan-B"));
    // A plain std thread: attached to no scope.
    std::thread::spawn(move || abba(&a, &b)).join().unwrap();
    assert!(scope.reports().is_empty(), "the thread was not attached");
    let orphans: Vec<_> = scope
        .orphans()
        .into_iter()
        .filter(|r| r.involves("orphan-A"))
        .collect();
    assert_eq!(orphans.len(), 1, "the report must not be dropped");
    assert_eq!(
        orphans[0].kind,
        ReportKind::PossibleCircularLockingDependency
    );
    assert!(!scope.is_clean(), "a scope that saw an orphan is not clean");
    // Also in the process-wide log.
    assert!(lockdep::reports().iter().any(|r| r.involves("orphan-A")));
}

#[test]
#[should_panic(expected = "a strict scope ended with reports")]
fn a_strict_scope_fails_on_an_orphan() {
    let ctx = Context::new();
    let _in = ctx.enter();
    let scope = Scope::strict();
    let a = Mutex::new((), static_lock_class!("strict-orphan-A"));
    let b = Mutex::new((), static_lock_class!("strict-orphan-B"));
    // In the test's context, but attached to no scope.
    std::thread::spawn(move || {
        let _in = ctx.enter();
        abba(&a, &b);
    })
    .join()
    .unwrap();
    drop(scope);
}

#[test]
fn threads_started_with_spawn_report_to_the_spawners_scope() {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("spawned-A"));
    let b = Mutex::new((), static_lock_class!("spawned-B"));
    scope::spawn(move || abba(&a, &b)).join().unwrap();
    let r = scope.of_kind(ReportKind::PossibleCircularLockingDependency);
    assert_eq!(r.len(), 1, "{:#?}", scope.reports());
    assert!(r[0].involves("spawned-A"));
    assert!(!scope.orphans().iter().any(|r| r.involves("spawned-A")));
}

#[test]
fn inherited_attaches_threads_of_a_std_scope() {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let a = &Mutex::new((), static_lock_class!("inherited-A"));
    let b = &Mutex::new((), static_lock_class!("inherited-B"));
    let from = scope::inherited();
    std::thread::scope(|s| {
        s.spawn(move || {
            from.apply();
            abba(a, b);
        });
    });
    assert_eq!(scope.reports().len(), 1, "{:#?}", scope.reports());
}

#[test]
fn a_clean_run_leaves_a_strict_scope_clean() {
    let _serial = GLOBAL_ORPHANS.lock().unwrap_or_else(|p| p.into_inner());
    let _ctx = Context::new().enter();
    let scope = Scope::strict();
    let a = Mutex::new((), static_lock_class!("clean-A"));
    let b = Mutex::new((), static_lock_class!("clean-B"));
    scope::spawn(move || {
        let _a = a.lock();
        let _b = b.lock();
    })
    .join()
    .unwrap();
    assert!(scope.reports().is_empty());
}
