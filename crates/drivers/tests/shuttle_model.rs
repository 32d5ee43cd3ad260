//! The drivers under vmsim's deterministic mode: a device fault racing a `MADV_DONTNEED` of
//! the page it is looking up, each execution one interleaving chosen by shuttle's scheduler.
//! The reference protocol stays coherent in every interleaving explored; a mirror without the
//! retry, or one that forgets `set_seq`, is caught by the checker in some interleaving.
//!
//! `RUSTFLAGS="--cfg shuttle" CARGO_TARGET_DIR=target/shuttle cargo test --release -p drivers --test shuttle_model`
#![cfg(shuttle)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use drivers::buggy::{BuggyMirror, IntervalBug};
use drivers::dmirror::Dmirror;
use drivers::Checker;
use vmsim::{Advice, Config, Machine, MapRequest};

const P: u64 = 4096;

static SERIAL: StdMutex<()> = StdMutex::new(());
/// Set when an execution's checker found a violation.
static CAUGHT: AtomicBool = AtomicBool::new(false);
/// Executions in which the device read the page the CPU had dropped (a fresh zero page).
static FRESH: AtomicUsize = AtomicUsize::new(0);

fn mirror_model(bug: IntervalBug) {
    let _ctx = lockdep::Context::new().enter();
    let m = Machine::new(Config::new(32).swap(32).watermarks(1, 1, 2)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(2 * P)).unwrap();
    p.write(a, 41).unwrap();
    let c = Checker::new();
    let d = Arc::new(BuggyMirror::open(&p, &c, bug).unwrap());
    let device = {
        let (d, q) = (d.clone(), p.mmget().unwrap());
        shuttle::thread::spawn(move || {
            let _ = d.fault_with(&q, a, false, || {});
            let seen = d.try_read(a).unwrap();
            q.exit().unwrap();
            seen
        })
    };
    let cpu = {
        let q = p.mmget().unwrap();
        shuttle::thread::spawn(move || {
            q.madvise(a, P, Advice::DontNeed).unwrap();
            q.exit().unwrap();
        })
    };
    let seen = device.join().unwrap();
    cpu.join().unwrap();
    if seen == Some(0) {
        FRESH.fetch_add(1, Ordering::Relaxed);
    }
    let v = c.violations();
    drop(d);
    p.exit().unwrap();
    m.check().unwrap();
    if !v.is_empty() {
        CAUGHT.store(true, Ordering::Relaxed);
    }
    assert!(v.is_empty(), "{}", v[0]);
}

#[test]
fn the_reference_protocol_is_coherent_in_every_interleaving() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    FRESH.store(0, Ordering::Relaxed);
    shuttle::check_random(|| mirror_model(IntervalBug::None), 300);
    shuttle::check_pct(|| mirror_model(IntervalBug::None), 300, 3);
    assert!(
        FRESH.load(Ordering::Relaxed) > 0,
        "no interleaving put the DONTNEED before the device's lookup: the model tests nothing"
    );
}

fn caught(bug: IntervalBug) {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    CAUGHT.store(false, Ordering::Relaxed);
    let r = std::panic::catch_unwind(|| shuttle::check_pct(move || mirror_model(bug), 20_000, 3));
    assert!(r.is_err(), "{bug:?} passed 20,000 executions");
    assert!(
        CAUGHT.load(Ordering::Relaxed),
        "{bug:?}: the model failed, but not on a violation"
    );
}

#[test]
fn the_model_catches_a_mirror_without_retry() {
    caught(IntervalBug::NoRetry);
}

#[test]
fn the_model_catches_a_mirror_that_forgets_set_seq() {
    caught(IntervalBug::SetSeqForgotten);
}

/// dmirror reading two pages while the CPU drops one and writes the other and reclaim runs.
fn dmirror_model() {
    let _ctx = lockdep::Context::new().enter();
    let m = Machine::new(Config::new(32).swap(32).watermarks(1, 1, 2)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(2 * P)).unwrap();
    p.write(a, 1).unwrap();
    p.write(a + P, 2).unwrap();
    p.madvise(a, 2 * P, Advice::Cold).unwrap();
    let c = Checker::new();
    let d = Arc::new(Dmirror::open(&p, &c, "dmirror").unwrap());
    let device = {
        let (d, q) = (d.clone(), p.mmget().unwrap());
        shuttle::thread::spawn(move || {
            let v = d.read(a, 2).unwrap();
            q.exit().unwrap();
            v
        })
    };
    let cpu = {
        let q = p.mmget().unwrap();
        shuttle::thread::spawn(move || {
            q.madvise(a, P, Advice::DontNeed).unwrap();
            q.write(a + P, 3).unwrap();
            q.exit().unwrap();
        })
    };
    let m2 = m.clone();
    let reclaimer = shuttle::thread::spawn(move || {
        m2.reclaim(2);
    });
    let v = device.join().unwrap();
    cpu.join().unwrap();
    reclaimer.join().unwrap();
    assert!(v[0] == 1 || v[0] == 0, "{v:?}");
    assert!(v[1] == 2 || v[1] == 3, "{v:?}");
    let c2 = c.clone();
    Arc::into_inner(d).unwrap().close().unwrap();
    p.exit().unwrap();
    m.check().unwrap();
    c2.check_quiescent().unwrap();
}

#[test]
fn dmirror_is_coherent_against_dontneed_writes_and_reclaim() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    shuttle::check_random(dmirror_model, 200);
    shuttle::check_pct(dmirror_model, 200, 3);
}
