//! Thread scaling of interval invalidation (issue 13, "Scaling invalidations").
//!
//! `cargo bench -p mmu-notifier --bench interval_scaling`: t = 1, 2, 4, … up to the cores
//! present (`MMN_THREADS=1,2,8` overrides) threads, each invalidating its own one-page
//! interval among 1,000 disjoint interval notifiers of one address space, as fast as it can
//! (one blockable start + end, the callback doing `set_seq`). Prints, per thread count, the
//! total invalidations per second (the median of `MMN_RUNS`, default 5, runs of 200 ms) and
//! the ratio to one thread. Baseline, same run: the same work with one address space per
//! thread, which shares nothing but the machine, so its ratio is the scaling the machine
//! itself allows at that moment (on a shared, loaded host it can be far below t×).
//! Target: 2 threads on one address space ≥ 1.8× one thread.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use mmu_notifier::{IntervalNotifier, Mm};

#[allow(dead_code)]
#[path = "common/intervals.rs"]
mod intervals;
#[path = "common/rng.rs"]
mod rng;
use intervals::{page_range, PAGE};
#[path = "common/subscribers.rs"]
#[allow(dead_code)]
mod subscribers;
use subscribers::SetSeq;

const INTERVALS: u64 = 1_000;

/// Thread counts: `MMN_THREADS` (comma-separated), else 1, 2, 4, … up to the cores present
/// (and that count itself).
fn thread_counts() -> Vec<usize> {
    if let Ok(list) = std::env::var("MMN_THREADS") {
        let counts: Vec<usize> = list
            .split(',')
            .filter_map(|t| t.trim().parse().ok())
            .filter(|&t| t > 0)
            .collect();
        if !counts.is_empty() {
            return counts;
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts: Vec<usize> = std::iter::successors(Some(1usize), |t| Some(t * 2))
        .take_while(|&t| t <= cores)
        .collect();
    if counts.last() != Some(&cores) {
        counts.push(cores);
    }
    counts
}

/// An address space with `INTERVALS` one-page interval notifiers on every other page.
fn populated() -> (Mm, Vec<IntervalNotifier>) {
    let mm = Mm::new();
    let ivs = (0..INTERVALS)
        .map(|i| {
            mm.interval_notifier_insert(2 * i * PAGE, PAGE, SetSeq)
                .expect("insert")
        })
        .collect();
    (mm, ivs)
}

/// `threads` threads invalidating for `span`, thread `t` its own interval of
/// `mms[t % mms.len()]`; returns invalidations per second, all threads together.
fn race(mms: &[Mm], threads: usize, span: Duration) -> f64 {
    let stride = INTERVALS / threads as u64;
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, mm) = (&barrier, &mms[t % mms.len()]);
                let range = page_range(2 * (t as u64 * stride + stride / 2) * PAGE);
                s.spawn(move || {
                    barrier.wait();
                    let t0 = Instant::now();
                    let mut done = 0u64;
                    while t0.elapsed() < span {
                        for _ in 0..256 {
                            drop(mm.invalidate_range_start(black_box(range)));
                        }
                        done += 256;
                    }
                    done as f64 / t0.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .sum()
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter that excludes this binary skips it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "interval_scaling".contains(a.as_str())) {
        return;
    }
    let counts = thread_counts();
    let max = counts.iter().copied().max().unwrap_or(1);
    let runs: usize = std::env::var("MMN_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .max(1);
    let span = Duration::from_millis(200);
    let (shared, shared_ivs) = populated();
    let own: Vec<(Mm, Vec<IntervalNotifier>)> = (0..max).map(|_| populated()).collect();
    let own_mms: Vec<Mm> = own.iter().map(|(mm, _)| mm.clone()).collect();

    println!(
        "interval invalidation, disjoint intervals, {} cores present; Mops/s, median of {runs} × {span:?}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| threads | one shared mm | × 1 thread | baseline: one mm per thread | × 1 thread |");
    println!("|---|---|---|---|---|");
    let (mut one_shared, mut one_own) = (f64::NAN, f64::NAN);
    for &t in &counts {
        // Interleaved, so both see the same machine load.
        let mut sh = Vec::new();
        let mut ow = Vec::new();
        for _ in 0..runs {
            sh.push(race(std::slice::from_ref(&shared), t, span));
            ow.push(race(&own_mms, t, span));
        }
        let (sh, ow) = (median(sh), median(ow));
        if t == 1 {
            (one_shared, one_own) = (sh, ow);
        }
        println!(
            "| {t} | {:.2} | {:.2}× | {:.2} | {:.2}× |",
            sh / 1e6,
            sh / one_shared,
            ow / 1e6,
            ow / one_own
        );
    }
    let state = shared.interval_state().expect("interval mode");
    assert_eq!(
        (state.active, state.deferred, state.intervals),
        (0, 0, INTERVALS as usize)
    );
    drop((shared_ivs, own));
}
