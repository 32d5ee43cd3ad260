//! Model tests of the validator's concurrency: the chain-cache protocol (lock-free lookup,
//! validate under the graph lock, publish after validation) and graph updates from several
//! threads. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p lockdep --release --test loom_chain_cache -- --nocapture`;
//! each test prints how many executions loom explored.
//!
//! Each model can fail: built with `--cfg lockdep_broken="no_recheck"` (a thread that missed
//! does not look again under the graph lock) the first model validates a chain twice; with
//! `--cfg lockdep_broken="publish_early"` (the key is published before its validation) a
//! hit can come before the validation's effects. Both are checked in `.ci/run`'s comments'
//! command and were seen to fail (see the crate README).
#![cfg(loom)]

use std::sync::atomic::AtomicUsize as StdAtomicUsize;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use lockdep::loom_model::ChainModel;

/// Runs `f` under loom and prints the number of executions explored.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    static RUNS: StdAtomicUsize = StdAtomicUsize::new(0);
    RUNS.store(0, std::sync::atomic::Ordering::SeqCst);
    loom::model(move || {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        f();
    });
    println!(
        "loom: {name}: {} executions",
        RUNS.load(std::sync::atomic::Ordering::SeqCst)
    );
}

#[test]
fn a_chain_is_validated_exactly_once_and_hits_see_its_validation() {
    model("validated once, hits see the validation", || {
        let model = Arc::new(ChainModel::new(4));
        let validations = Arc::new(AtomicUsize::new(0));
        let effects = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (model, validations, effects) =
                    (model.clone(), validations.clone(), effects.clone());
                thread::spawn(move || {
                    let ran = model.lookup_or_validate(5, || {
                        validations.fetch_add(1, Ordering::Relaxed);
                        // A graph edge written during validation.
                        effects.store(1, Ordering::Relaxed);
                    });
                    if !ran {
                        // A hit (or a lost race) must see the validation's effects.
                        assert_eq!(effects.load(Ordering::Relaxed), 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(validations.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn colliding_chains_are_each_validated_once_and_never_falsely_hit() {
    model("colliding chains", || {
        // Keys 1, 5 and 9 start probing at the same slot of a 4-slot table (the table takes
        // three keys before it is three-quarters full).
        let model = Arc::new(ChainModel::new(4));
        let counts = Arc::new([
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        ]);
        let handles: Vec<_> = [1u64, 5, 9]
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let (model, counts) = (model.clone(), counts.clone());
                thread::spawn(move || {
                    model.lookup_or_validate(key, || {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                    // Looking up again is now always a hit.
                    assert!(!model.lookup_or_validate(key, || panic!("validated twice")));
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for c in counts.iter() {
            assert_eq!(c.load(Ordering::Relaxed), 1);
        }
    });
}

#[test]
fn concurrent_opposite_orders_are_reported_exactly_once() {
    use lockdep::{scope::Scope, static_lock_class, Mutex, ReportKind};
    model("ABBA from concurrent threads", || {
        let scope = Scope::new();
        // Three threads on disjoint lock instances of the same two classes, all running at
        // once: two record A -> B (one validates the chain, the other races it through the
        // chain cache), one records B -> A. No execution can deadlock (no instance is
        // shared); in every one the graph must end with exactly one report.
        let handles: Vec<_> = [true, false, true]
            .into_iter()
            .map(|a_first| {
                let h = scope.handle();
                thread::spawn(move || {
                    h.attach();
                    let a = Mutex::new((), static_lock_class!("loom-A"));
                    let b = Mutex::new((), static_lock_class!("loom-B"));
                    let (x, y) = if a_first { (&a, &b) } else { (&b, &a) };
                    let _x = x.lock();
                    let _y = y.lock();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let cycles = scope.of_kind(ReportKind::PossibleCircularLockingDependency);
        assert_eq!(cycles.len(), 1, "{cycles:#?}");
    });
}
