//! Lock-order cycles: found from runs that never deadlock; correct orders stay clean.
#![cfg(feature = "enabled")]

use std::thread;

use lockdep::scope::Scope;
use lockdep::{static_lock_class, DynamicKey, Mutex, ReportKind, SpinLock};

const CYCLE: ReportKind = ReportKind::PossibleCircularLockingDependency;

#[test]
fn abba_across_two_threads_that_never_overlap_is_reported() {
    let scope = Scope::new();
    let a = &Mutex::new(0, static_lock_class!("abba-A"));
    let b = &Mutex::new(0, static_lock_class!("abba-B"));
    thread::scope(|s| {
        let h = scope.handle();
        s.spawn(move || {
            h.attach();
            let _a = a.lock();
            let _b = b.lock();
        })
        .join()
        .unwrap();
        let h = scope.handle();
        s.spawn(move || {
            h.attach();
            let _b = b.lock();
            let _a = a.lock();
        })
        .join()
        .unwrap();
    });
    let r = scope.of_kind(CYCLE);
    assert_eq!(r.len(), 1, "{:#?}", scope.reports());
    let r = &r[0];
    assert_eq!(r.cycle.len(), 2);
    assert!(r.cycle[0].new);
    assert_eq!(r.cycle[0].from.name, "abba-B");
    assert_eq!(r.cycle[0].to.name, "abba-A");
    // The old edge A -> B, with where it was first recorded.
    assert_eq!(r.cycle[1].from.name, "abba-A");
    assert!(r.cycle[1].to_acquired_at.file.ends_with("cycles.rs"));
    let text = r.to_string();
    assert!(text.contains("possible circular locking dependency detected"));
    assert!(text.contains("*** DEADLOCK ***"));
}

#[test]
fn same_order_in_every_thread_is_clean() {
    let scope = Scope::new();
    let a = &Mutex::new(0, static_lock_class!("order-A"));
    let b = &Mutex::new(0, static_lock_class!("order-B"));
    thread::scope(|s| {
        for _ in 0..4 {
            let h = scope.handle();
            s.spawn(move || {
                h.attach();
                for _ in 0..100 {
                    let _a = a.lock();
                    let _b = b.lock();
                }
            });
        }
    });
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn three_lock_cycle_lists_every_edge_with_its_origin() {
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("tri-A"));
    let b = Mutex::new((), static_lock_class!("tri-B"));
    let c = Mutex::new((), static_lock_class!("tri-C"));
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    {
        let _b = b.lock();
        let _c = c.lock();
    }
    {
        let _c = c.lock();
        let _a = a.lock();
    }
    let r = scope.of_kind(CYCLE);
    assert_eq!(r.len(), 1);
    let names: Vec<_> = r[0].classes();
    assert_eq!(names, ["tri-C", "tri-A", "tri-B"]);
    assert!(r[0].cycle.iter().all(|d| d.kinds == "EN"));
}

#[test]
fn per_class_tracking_finds_abba_between_different_objects() {
    // Two objects of each kind: the orders only ever conflict across different instances.
    let scope = Scope::new();
    let inode = |_: u32| Mutex::new((), static_lock_class!("inode"));
    let page = |_: u32| Mutex::new((), static_lock_class!("page"));
    let (i1, i2, p1, p2) = (inode(1), inode(2), page(1), page(2));
    {
        let _i = i1.lock();
        let _p = p1.lock();
    }
    {
        let _p = p2.lock();
        let _i = i2.lock();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1);
}

#[test]
fn dynamic_keys_make_separate_classes_and_find_their_cycles() {
    let scope = Scope::new();
    let ka = DynamicKey::new("dyn-a");
    let kb = DynamicKey::new("dyn-b");
    let a = Mutex::new((), &ka);
    let b = Mutex::new((), &kb);
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    assert!(scope.is_clean());
    {
        let _b = b.lock();
        let _a = a.lock();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1);
    assert!(scope.of_kind(CYCLE)[0].involves("dyn-a"));
}

#[test]
fn dropping_a_dynamic_key_forgets_its_dependencies() {
    let scope = Scope::new();
    let fixed = Mutex::new((), static_lock_class!("dyn-forget-fixed"));
    {
        let ka = DynamicKey::new("dyn-forget");
        let a = Mutex::new((), &ka);
        let _a = a.lock();
        let _f = fixed.lock();
    }
    let kb = DynamicKey::new("dyn-forget");
    let b = Mutex::new((), &kb);
    let _f = fixed.lock();
    let _b = b.lock();
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn same_class_twice_is_recursive_locking() {
    let scope = Scope::new();
    let mk = || Mutex::new((), static_lock_class!("aa-node"));
    let (x, y) = (mk(), mk());
    let _x = x.lock();
    let _y = y.lock();
    let r = scope.of_kind(ReportKind::RecursiveLocking);
    assert_eq!(r.len(), 1);
    assert!(r[0]
        .to_string()
        .contains("possible recursive locking detected"));
}

#[test]
fn nesting_subclass_avoids_false_report_and_keeps_checking_order() {
    let scope = Scope::new();
    let mk = || Mutex::new((), static_lock_class!("nest-node"));
    let (parent, child) = (mk(), mk());
    {
        let _p = parent.lock();
        let _c = child.lock_nested(1);
    }
    assert!(scope.is_clean(), "{:#?}", scope.reports());
    // The reverse (child class taken first, then a parent) is still a cycle.
    {
        let _c = child.lock_nested(1);
        let _p = parent.lock();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1);
    assert!(scope.of_kind(CYCLE)[0].involves("nest-node/1"));
}

#[test]
fn trylock_adds_no_edge() {
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("try-A"));
    let b = Mutex::new((), static_lock_class!("try-B"));
    {
        let _a = a.lock();
        let _b = b.try_lock().expect("uncontended");
    }
    {
        let _b = b.lock();
        let _a = a.lock();
    }
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn locks_taken_under_a_trylock_are_ordered_after_it() {
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("undertry-A"));
    let b = Mutex::new((), static_lock_class!("undertry-B"));
    {
        let _a = a.try_lock().unwrap();
        let _b = b.lock();
    }
    {
        let _b = b.lock();
        let _a = a.lock();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1);
}

#[test]
fn spinlocks_take_part_in_cycles() {
    let scope = Scope::new();
    let a = SpinLock::new((), static_lock_class!("spin-A"));
    let b = SpinLock::new((), static_lock_class!("spin-B"));
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    {
        let _b = b.lock();
        let _a = a.lock();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1);
}

#[test]
fn out_of_order_release_keeps_the_stack_consistent() {
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("ooo-A"));
    let b = Mutex::new((), static_lock_class!("ooo-B"));
    let c = Mutex::new((), static_lock_class!("ooo-C"));
    let ga = a.lock();
    let gb = b.lock();
    drop(ga);
    let gc = c.lock();
    assert_eq!(lockdep::held_lock_count(), 2);
    drop(gb);
    drop(gc);
    assert_eq!(lockdep::held_lock_count(), 0);
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn might_lock_records_the_dependency_without_locking() {
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("ml-A"));
    let b = Mutex::new((), static_lock_class!("ml-B"));
    {
        let _a = a.lock();
        b.might_lock();
    }
    assert_eq!(lockdep::held_lock_count(), 0);
    {
        let _b = b.lock();
        let _a = a.lock();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1);
}

#[test]
fn report_renders_as_json_dot_and_svg() {
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("render-A"));
    let b = Mutex::new((), static_lock_class!("render-B<&>"));
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    {
        let _b = b.lock();
        let _a = a.lock();
    }
    let r = &scope.of_kind(CYCLE)[0];
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["kind"], "PossibleCircularLockingDependency");
    assert_eq!(json["cycle"].as_array().unwrap().len(), 2);
    let dot = r.to_dot();
    assert!(dot.starts_with("digraph lockdep {"));
    assert!(dot.contains("\"render-A\""));
    assert!(dot.contains("color=red"));
    let svg = r.to_svg();
    assert!(svg.starts_with("<svg"));
    assert!(svg.contains("render-B&lt;&amp;&gt;"));
    assert!(svg.trim_end().ends_with("</svg>"));
}

#[test]
fn a_cycle_is_reported_once_however_often_its_chain_repeats() {
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("once-A"));
    let b = Mutex::new((), static_lock_class!("once-B"));
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    for _ in 0..10 {
        let _b = b.lock();
        let _a = a.lock();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1);
}

#[test]
fn steady_state_chains_are_cache_hits() {
    let a = Mutex::new((), static_lock_class!("steady-A"));
    let b = Mutex::new((), static_lock_class!("steady-B"));
    let run = || {
        for _ in 0..1000 {
            let _a = a.lock();
            let _b = b.lock();
        }
    };
    run();
    // Other tests run in parallel and validate their own chains, so allow some growth, but
    // far less than one validation per acquisition.
    let before = lockdep::stats().chains_validated;
    run();
    let after = lockdep::stats().chains_validated;
    assert!(after - before < 500, "{before} -> {after}");
}
