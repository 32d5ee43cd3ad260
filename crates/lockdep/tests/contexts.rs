//! Validator contexts: tests in one process neither complete each other's cycles nor skip
//! each other's chains; inside one context the kernel's rules hold unchanged.
#![cfg(feature = "enabled")]

use lockdep::scope::{self, Scope};
use lockdep::{static_lock_class, Context, Mutex, ReportKind};

const CYCLE: ReportKind = ReportKind::PossibleCircularLockingDependency;

fn ab(a: &Mutex<()>, b: &Mutex<()>) {
    let _a = a.lock();
    let _b = b.lock();
}

#[test]
fn orders_recorded_in_another_context_do_not_close_a_cycle() {
    let a = Mutex::new((), static_lock_class!("ctx-A"));
    let b = Mutex::new((), static_lock_class!("ctx-B"));
    {
        let _test1 = Context::new().enter();
        ab(&a, &b);
    }
    let _test2 = Context::new().enter();
    let scope = Scope::new();
    ab(&b, &a);
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn one_context_keeps_the_kernel_rules() {
    // The same two orders inside one context: the cycle is reported, as without contexts.
    let a = Mutex::new((), static_lock_class!("ctx-same-A"));
    let b = Mutex::new((), static_lock_class!("ctx-same-B"));
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    ab(&a, &b);
    ab(&b, &a);
    assert_eq!(scope.of_kind(CYCLE).len(), 1, "{:#?}", scope.reports());
}

#[test]
fn without_contexts_one_tests_order_is_another_tests_false_alarm() {
    // What contexts fix: "test 1" records A -> B in the process-wide graph, and "test 2",
    // which only ever takes B then A, is reported.
    let a = Mutex::new((), static_lock_class!("shared-A"));
    let b = Mutex::new((), static_lock_class!("shared-B"));
    ab(&a, &b);
    let scope = Scope::new();
    ab(&b, &a);
    assert_eq!(scope.of_kind(CYCLE).len(), 1, "{:#?}", scope.reports());
}

#[test]
fn each_context_validates_a_chain_again() {
    let a = Mutex::new((), static_lock_class!("ctx-chain-A"));
    let b = Mutex::new((), static_lock_class!("ctx-chain-B"));
    let first = Context::new();
    {
        let _in = first.enter();
        ab(&a, &b);
        ab(&a, &b);
    }
    assert_eq!(
        first.chains_validated(),
        1,
        "validated once, then a cache hit"
    );
    let second = Context::new();
    {
        let _in = second.enter();
        ab(&a, &b);
    }
    assert_eq!(
        second.chains_validated(),
        1,
        "checked again in a new context"
    );
}

#[test]
fn spawned_threads_work_in_the_spawners_context() {
    let a = Mutex::new((), static_lock_class!("ctx-spawn-A"));
    let b = Mutex::new((), static_lock_class!("ctx-spawn-B"));
    let ctx = Context::new();
    let _in = ctx.enter();
    let scope = Scope::new();
    scope::spawn(move || {
        ab(&a, &b);
        ab(&b, &a);
    })
    .join()
    .unwrap();
    assert_eq!(scope.of_kind(CYCLE).len(), 1, "{:#?}", scope.reports());
    assert!(ctx.chains_validated() >= 2, "the thread validated in `ctx`");
}

#[test]
fn leaving_a_context_returns_to_the_previous_one() {
    let a = Mutex::new((), static_lock_class!("ctx-leave-A"));
    let b = Mutex::new((), static_lock_class!("ctx-leave-B"));
    let outer = Context::new();
    let _outer = outer.enter();
    let scope = Scope::new();
    ab(&a, &b);
    {
        let _inner = Context::new().enter();
        ab(&b, &a); // recorded in the inner context only
    }
    assert!(scope.is_clean(), "{:#?}", scope.reports());
    ab(&b, &a); // back in `outer`, which has A -> B
    assert_eq!(scope.of_kind(CYCLE).len(), 1, "{:#?}", scope.reports());
}

/// A chain the full cache could not publish is validated on every acquisition: the task's
/// memo of validated chains (`chain.rs`) remembers only chains found in the cache.
#[test]
fn a_chain_the_full_cache_refused_is_validated_every_time() {
    let ctx = Context::new();
    let _in = ctx.enter();
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("full-A"));
    // More chains (A, Ki) than three-quarters of a context's 4,096 slots.
    let keys: Vec<lockdep::DynamicKey> = (0..3200)
        .map(|i| lockdep::DynamicKey::new(format!("full-{i}")))
        .collect();
    let locks: Vec<Mutex<()>> = keys.iter().map(|k| Mutex::new((), k)).collect();
    for l in &locks {
        ab(&a, l);
    }
    assert_eq!(
        scope.of_kind(ReportKind::ChainTableFull).len(),
        1,
        "{:#?}",
        scope.reports()
    );
    let last = locks.last().unwrap();
    let before = ctx.chains_validated();
    for _ in 0..3 {
        ab(&a, last);
    }
    assert_eq!(ctx.chains_validated() - before, 3);
}
