//! The validator under shuttle's scheduler: a deterministic mode for simulations built on it.
//!
//! `RUSTFLAGS="--cfg shuttle" cargo test -p lockdep --release --test shuttle_model`.
//!
//! Under `--cfg shuttle` the validator's locks, atomics and task state are shuttle's, so one
//! execution is one interleaving chosen by shuttle's scheduler, and a seed replays it exactly.
//! The model: two threads record opposite orders of the same two classes on disjoint lock
//! instances (no real deadlock can happen, the class-level cycle is there), racing on the
//! graph lock and the chain cache of one validator context.
#![cfg(all(shuttle, feature = "enabled"))]

use std::sync::Mutex as StdMutex;

use lockdep::scope::{self, Scope};
use lockdep::{static_lock_class, Context, Mutex, ReportKind};

/// What one execution did, in order: each step and each report, by thread.
static TRACE: StdMutex<Vec<String>> = StdMutex::new(Vec::new());

fn note(s: String) {
    TRACE.lock().unwrap().push(s);
}

/// One execution: returns the number of cycle reports.
fn model() -> usize {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let mut threads = Vec::new();
    for t in 0..2 {
        let from = scope::inherited();
        threads.push(shuttle::thread::spawn(move || {
            from.apply();
            let a = Mutex::new((), static_lock_class!("shuttle-A"));
            let b = Mutex::new((), static_lock_class!("shuttle-B"));
            let (first, second, names) = if t == 0 {
                (&a, &b, ("A", "B"))
            } else {
                (&b, &a, ("B", "A"))
            };
            let _f = first.lock();
            note(format!("t{t} {}", names.0));
            let _s = second.lock();
            note(format!("t{t} {}", names.1));
        }));
    }
    for h in threads {
        h.join().unwrap();
    }
    let cycles = scope.of_kind(ReportKind::PossibleCircularLockingDependency);
    for r in &cycles {
        note(format!("report by {}", r.thread.name));
    }
    cycles.len()
}

#[test]
fn every_interleaving_reports_the_cycle_exactly_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    shuttle::check_random(
        || {
            let n = model();
            assert_eq!(n, 1, "one cycle report in every interleaving");
        },
        200,
    );
}

fn trace_of(seed: u64) -> Vec<String> {
    TRACE.lock().unwrap().clear();
    shuttle::check_random_with_seed(
        || {
            model();
        },
        seed,
        1,
    );
    std::mem::take(&mut *TRACE.lock().unwrap())
}

#[test]
fn a_seed_replays_one_interleaving() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let seeds: Vec<u64> = (1..=16).collect();
    let traces: Vec<Vec<String>> = seeds.iter().map(|&s| trace_of(s)).collect();
    for (s, t) in seeds.iter().zip(&traces) {
        assert_eq!(&trace_of(*s), t, "seed {s} replays the same interleaving");
        assert!(t.iter().any(|e| e.starts_with("report by")), "{t:?}");
    }
    let distinct: std::collections::HashSet<_> = traces.iter().collect();
    assert!(
        distinct.len() > 1,
        "different seeds choose different interleavings: {traces:?}"
    );
}

/// The trace is process-wide: the two tests must not interleave their executions.
static SERIAL: StdMutex<()> = StdMutex::new(());
