//! The contract under shuttle's scheduler: the deterministic mode a simulation built on this
//! crate runs in.
//!
//! `RUSTFLAGS="--cfg shuttle" cargo test -p mmu-notifier --release --test shuttle_model`.
//!
//! Under `--cfg shuttle` the crate's locks, condition variables and atomics are shuttle's
//! (`src/primitive.rs`), so one execution is one interleaving chosen by shuttle's scheduler,
//! and a seed replays it exactly. Built with `--cfg mmn_broken="skip_grace_period"` (the first
//! registration no longer waits for open invalidations) the model must fail, and does (CI runs
//! both). The model: an invalidation begun while nothing is subscribed,
//! against the first interval insert and a device fault on it (issue 8's hole), plus a second
//! invalidation once the interval exists; the device must never be left holding a stale
//! translation.
#![cfg(all(shuttle, not(loom)))]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex as StdMutex};

use mmu_notifier::{Event, Interval, IntervalNotifierOps, Mm, Range};
use shuttle::sync::Mutex;

/// What one execution did, in order.
static TRACE: StdMutex<Vec<String>> = StdMutex::new(Vec::new());

fn note(s: String) {
    TRACE.lock().unwrap().push(s);
}

/// A one-page device page table holding the generation it was filled from.
struct Dev(Mutex<Option<u64>>);

impl IntervalNotifierOps for Dev {
    fn invalidate(&self, iv: &Interval, _range: &Range, cur_seq: u64) -> bool {
        let mut pt = self.0.lock().unwrap();
        iv.set_seq(cur_seq);
        *pt = None;
        note(format!("invalidate seq {cur_seq}"));
        true
    }
}

fn invalidate(mm: &Mm, gen: &AtomicU64) {
    let g = mm.invalidate_range_start(Range::new(0x1000, 0x2000, Event::Unmap).unwrap());
    note("start".into());
    gen.fetch_add(1, SeqCst);
    drop(g);
    note("end".into());
}

/// One execution (its trace replaces the previous one's).
fn model() {
    TRACE.lock().unwrap().clear();
    let mm = Mm::new();
    let gen = Arc::new(AtomicU64::new(0));
    let inv = {
        let (mm, gen) = (mm.clone(), gen.clone());
        shuttle::thread::spawn(move || {
            invalidate(&mm, &gen);
            invalidate(&mm, &gen);
        })
    };
    let dev = Arc::new(Dev(Mutex::new(None)));
    let iv = mm
        .interval_notifier_insert(0x1000, 0x1000, dev.clone())
        .unwrap();
    note("inserted".into());
    loop {
        let seq = iv.read_begin();
        let g = gen.load(SeqCst);
        let mut pt = dev.0.lock().unwrap();
        if iv.read_retry(seq) {
            note("retry".into());
            continue;
        }
        *pt = Some(g);
        note(format!("mapped generation {g}"));
        break;
    }
    inv.join().unwrap();
    let pt = *dev.0.lock().unwrap();
    assert!(
        pt.is_none() || pt == Some(gen.load(SeqCst)),
        "stale translation {pt:?}, generation {}",
        gen.load(SeqCst)
    );
    iv.remove().unwrap();
}

/// Executions explored by the random check (CI's bound).
const ITERATIONS: usize = 300;

/// Executions explored when the protocol is deliberately broken and must be caught.
const BROKEN_ITERATIONS: usize = 20_000;

/// Runs `model` under shuttle's PCT scheduler (random thread priorities with `DEPTH - 1`
/// random priority changes per execution: a plain random walk almost never lets the inserting
/// thread, which has far more steps, get ahead of the invalidating one): `iterations`
/// executions, from `seed` if given. Shuttle's default 32 KiB thread stacks are too small for
/// the dispatch.
fn run(seed: Option<u64>, iterations: usize) {
    use shuttle::scheduler::PctScheduler;
    const DEPTH: usize = 3;
    let mut config = shuttle::Config::new();
    config.stack_size = 1 << 20;
    let scheduler = match seed {
        Some(seed) => PctScheduler::new_from_seed(seed, DEPTH, iterations),
        None => PctScheduler::new(DEPTH, iterations),
    };
    shuttle::Runner::new(scheduler, config).run(model);
}

#[test]
#[cfg_attr(
    mmn_broken = "skip_grace_period",
    should_panic(expected = "stale translation")
)]
fn no_interleaving_leaves_a_stale_translation() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // The broken variant must be caught every time CI builds it: PCT finds the stale
    // translation in a few hundred executions on average, so 300 missed it now and then; the
    // broken build explores far more (the model is cheap) to make a miss negligible.
    let iterations = if cfg!(mmn_broken = "skip_grace_period") {
        BROKEN_ITERATIONS
    } else {
        ITERATIONS
    };
    run(None, iterations);
    eprintln!("shuttle: {iterations} PCT interleavings, none stale");
}

/// The trace of the execution `seed` chooses (PCT's first execution is always oldest-task-first,
/// so the seed decides the second).
fn trace_of(seed: u64) -> Vec<String> {
    run(Some(seed), 2);
    std::mem::take(&mut *TRACE.lock().unwrap())
}

#[test]
#[cfg_attr(
    mmn_broken = "skip_grace_period",
    ignore = "the broken protocol fails every seed"
)]
fn a_seed_replays_one_interleaving() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let seeds: Vec<u64> = (1..=16).collect();
    let traces: Vec<Vec<String>> = seeds.iter().map(|&s| trace_of(s)).collect();
    for (s, t) in seeds.iter().zip(&traces) {
        assert_eq!(&trace_of(*s), t, "seed {s} replays the same interleaving");
        assert!(t.iter().any(|e| e.starts_with("mapped")), "{t:?}");
    }
    let distinct: std::collections::HashSet<_> = traces.iter().collect();
    assert!(
        distinct.len() > 1,
        "different seeds choose different interleavings: {traces:?}"
    );
}

/// The trace is process-wide: the two tests must not interleave their executions.
static SERIAL: StdMutex<()> = StdMutex::new(());
