//! The deterministic mode: a whole simulated machine under shuttle's scheduler. One execution is
//! one interleaving of a faulting thread, an unmapping thread and a reclaiming thread; a seed
//! replays it exactly (same notifier events, same order), different seeds explore different
//! interleavings, and every one ends with the machine's invariants intact.
//!
//! `RUSTFLAGS="--cfg shuttle" CARGO_TARGET_DIR=target/shuttle cargo test --release -p vmsim --test shuttle_replay`
#![cfg(shuttle)]

mod common;

use std::sync::Mutex as StdMutex;

use common::{recording, List, Recorder, Seen};
use vmsim::{Config, Machine, MapRequest};

const P: u64 = 4096;

static TRACE: StdMutex<Vec<String>> = StdMutex::new(Vec::new());
static SERIAL: StdMutex<()> = StdMutex::new(());

fn model() {
    let _ctx = lockdep::Context::new().enter();
    let m = Machine::new(Config::new(32).swap(32).watermarks(1, 1, 2)).unwrap();
    let p = m.spawn();
    let rec = Recorder::new();
    let sub = p.mm().register(List(rec.clone(), recording())).unwrap();
    let a = p.mmap(MapRequest::anon(4 * P)).unwrap();
    p.touch(a, 4 * P, true).unwrap();
    let writer = {
        let q = p.mmget().unwrap();
        shuttle::thread::spawn(move || {
            for i in 0..4 {
                let _ = q.write(a + i * P, 10 + i);
            }
            q.exit().unwrap();
        })
    };
    let unmapper = {
        let q = p.mmget().unwrap();
        shuttle::thread::spawn(move || {
            q.munmap(a + P, 2 * P).unwrap();
            q.mmap(MapRequest::anon(2 * P).fixed(a + P)).unwrap();
            q.exit().unwrap();
        })
    };
    let reclaimer = {
        let m = m.clone();
        shuttle::thread::spawn(move || {
            m.reclaim(2);
        })
    };
    writer.join().unwrap();
    unmapper.join().unwrap();
    reclaimer.join().unwrap();
    let log: Vec<String> = rec
        .take()
        .into_iter()
        .map(|s| match s {
            Seen::Start(e, x, y, _) => format!("start {e:?} {:x}-{:x}", x - a, y - a),
            Seen::End(e, x, y, _) => format!("end {e:?} {:x}-{:x}", x - a, y - a),
            other => format!("{other:?}"),
        })
        .collect();
    TRACE.lock().unwrap().extend(log);
    drop(sub);
    p.exit().unwrap();
    let c = m.check().expect("invariants hold in every interleaving");
    assert_eq!(c.used, 0, "every frame back");
}

fn trace_of(seed: u64) -> Vec<String> {
    TRACE.lock().unwrap().clear();
    shuttle::check_random_with_seed(model, seed, 1);
    std::mem::take(&mut *TRACE.lock().unwrap())
}

#[test]
fn every_interleaving_keeps_the_invariants() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = std::env::var("VMSIM_SHUTTLE_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    shuttle::check_random(model, n);
}

#[test]
fn a_seed_replays_one_interleaving_and_seeds_differ() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seeds: Vec<u64> = (1..=12).collect();
    let traces: Vec<Vec<String>> = seeds.iter().map(|&s| trace_of(s)).collect();
    for (s, t) in seeds.iter().zip(&traces) {
        assert_eq!(&trace_of(*s), t, "seed {s} replays the same interleaving");
        assert!(!t.is_empty(), "the munmap always notifies");
    }
    let distinct: std::collections::HashSet<_> = traces.iter().collect();
    assert!(
        distinct.len() > 1,
        "different seeds choose different interleavings: {traces:#?}"
    );
}
