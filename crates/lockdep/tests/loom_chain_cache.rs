//! Model test of the chain-cache protocol (lock-free lookup, validate under the graph lock,
//! publish after validation). Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p lockdep --release --test loom_chain_cache`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use lockdep::loom_model::ChainModel;

#[test]
fn a_chain_is_validated_exactly_once_and_hits_see_its_validation() {
    loom::model(|| {
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
    loom::model(|| {
        // Keys 1 and 5 start probing at the same slot of a 4-slot table.
        let model = Arc::new(ChainModel::new(4));
        let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let handles: Vec<_> = [1u64, 5]
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
        assert_eq!(counts[0].load(Ordering::Relaxed), 1);
        assert_eq!(counts[1].load(Ordering::Relaxed), 1);
    });
}

#[test]
fn validated_locks_under_loom_threads_find_abba() {
    use lockdep::{static_lock_class, testing::Scope, Mutex, ReportKind};
    loom::model(|| {
        let scope = Scope::new();
        let a = Arc::new(Mutex::new((), static_lock_class!("loom-A")));
        let b = Arc::new(Mutex::new((), static_lock_class!("loom-B")));
        let (a2, b2, h) = (a.clone(), b.clone(), scope.handle());
        // Thread 1 takes A then B; the main thread later only takes B then might-locks A,
        // so the model never deadlocks but the inversion is found.
        thread::spawn(move || {
            h.attach();
            let _a = a2.lock();
            let _b = b2.lock();
        })
        .join()
        .unwrap();
        {
            let _b = b.lock();
            a.might_lock();
        }
        // The graph is per model execution; the first execution reports, and classes are
        // process-wide so every execution sees the same cycle.
        assert_eq!(
            scope
                .of_kind(ReportKind::PossibleCircularLockingDependency)
                .len(),
            1
        );
    });
}
