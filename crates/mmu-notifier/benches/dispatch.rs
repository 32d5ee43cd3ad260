//! Benchmarks of the invalidation dispatch paths of `mmu_notifier::Mm`, each
//! next to a baseline measured in the same run and the same criterion group,
//! so the ratio can be read off directly.
//!
//! * `list_dispatch/{mmu_notifier,baseline_vec_dyn}/n`: one blockable
//!   `invalidate_range_start` + end (guard drop) with n = 1, 4, 16, 64 list
//!   subscribers, against a plain loop over a `Vec<Arc<dyn Callbacks>>`
//!   making the same indirect calls (all starts, then all ends) with the same
//!   callback body: one relaxed `fetch_add` on the subscriber's own counter,
//!   as KVM bumps its in-progress count.
//! * `no_subscriber/{mmu_notifier,baseline_one_load}`: one blockable start + end
//!   on an address space with no subscription, against one `Acquire` load of a
//!   null pointer (the whole cost before such invalidations were tracked).
//! * `read_side/{read_begin_retry,baseline_two_loads}`: `read_begin` +
//!   `read_retry` on one interval notifier of an idle address space, against
//!   two bare `Acquire` loads of an `AtomicU64`.
//! * `concurrent_invalidate/list_1sub/t`: t = 1 or 2 threads invalidating
//!   disjoint ranges of one address space as fast as they can, with one list
//!   subscriber whose callbacks write nothing shared, so any slowdown is the
//!   library's own shared state; the reported time is wall time per *round*
//!   (one invalidation per thread), and the throughput (criterion's elem/s)
//!   is total invalidations per second.
//!
//! Interval invalidation (one hit among n intervals, and its thread scaling)
//! is measured by `benches/interval_tree.rs` and `benches/interval_scaling.rs`.
//!
//! Every address space is built once per group, outside the timed loops.
//! Measurement is kept short (the
//! benchmark host is small and shared): a full run takes about 1.5 minutes on
//! two cores; pass `--quick` for a faster, coarser one.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmu_notifier::{Capabilities, Mm, MmuNotifierOps, Range, WouldBlock};

const LIST_SIZES: [usize; 4] = [1, 4, 16, 64];

#[path = "common/rng.rs"]
#[allow(dead_code)]
mod rng;
#[path = "common/subscribers.rs"]
mod subscribers;
use subscribers::{baseline_dispatch, Bump, Callbacks, SetSeq};
#[path = "common/intervals.rs"]
#[allow(dead_code)]
mod intervals;
use intervals::{page_range, PAGE};

// ---------------------------------------------------------------- list dispatch

fn bench_list_dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("list_dispatch");
    let range = page_range(0x10_0000);
    for n in LIST_SIZES {
        let mm = Mm::new();
        let subs: Vec<_> = (0..n)
            .map(|_| mm.register(Bump::default()).expect("register"))
            .collect();
        group.bench_with_input(BenchmarkId::new("mmu_notifier", n), &n, |b, _| {
            b.iter(|| drop(mm.invalidate_range_start(black_box(range))));
        });
        for s in subs {
            s.unregister().expect("unregister");
        }

        let baseline: Vec<Arc<dyn Callbacks>> = (0..n)
            .map(|_| Arc::new(Bump::default()) as Arc<dyn Callbacks>)
            .collect();
        group.bench_with_input(BenchmarkId::new("baseline_vec_dyn", n), &n, |b, _| {
            b.iter(|| {
                baseline_dispatch(black_box(&baseline), &black_box(range));
            });
        });
    }
    group.finish();
}

// ---------------------------------------------------------------- no subscriber

/// One blockable start + end on an address space nobody subscribed to, against the one
/// `Acquire` load of a null pointer that was its whole cost before invalidations began to be
/// tracked for the first subscription (`mm_has_notifiers` in Linux).
fn bench_no_subscriber(c: &mut Criterion) {
    let mut group = c.benchmark_group("no_subscriber");
    let range = page_range(0x10_0000);
    let mm = Mm::new();
    group.bench_function("mmu_notifier", |b| {
        b.iter(|| drop(mm.invalidate_range_start(black_box(range))));
    });
    let subs = std::sync::atomic::AtomicPtr::<u8>::new(std::ptr::null_mut());
    group.bench_function("baseline_one_load", |b| {
        b.iter(|| black_box(black_box(&subs).load(Ordering::Acquire).is_null()));
    });
    group.finish();
    assert!(!mm.has_notifiers());
}

// ---------------------------------------------------------------- read side

fn bench_read_side(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_side");
    let mm = Mm::new();
    let iv = mm
        .interval_notifier_insert(0x10_0000, 16 * PAGE, SetSeq)
        .expect("insert");
    // Make the interval's sequence a real (odd, past) invalidation's, as in steady state.
    drop(mm.invalidate_range_start(page_range(0x10_0000)));
    group.bench_function("read_begin_retry", |b| {
        b.iter(|| {
            let iv = black_box(&iv);
            let seq = iv.read_begin();
            black_box(iv.read_retry(black_box(seq)))
        });
    });
    let seq = AtomicU64::new(2);
    group.bench_function("baseline_two_loads", |b| {
        b.iter(|| {
            let a = black_box(&seq);
            let s = a.load(Ordering::Acquire);
            black_box(a.load(Ordering::Acquire) != black_box(s))
        });
    });
    group.finish();
    iv.remove().expect("remove");
}

// ---------------------------------------------------------------- one hit among n

// ---------------------------------------------------------------- concurrency

/// A list subscriber that writes nothing shared.
struct Quiet;

impl MmuNotifierOps for Quiet {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }

    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        black_box(range.start());
        Ok(())
    }

    fn invalidate_range_end(&self, range: &Range) {
        black_box(range.start());
    }
}

/// Runs `threads` threads doing `iters` invalidations each, thread `t` of `ranges[t]`; returns
/// the wall time from the first thread's start to the last one's finish.
fn race(mm: &Mm, ranges: &[Range], threads: usize, iters: u64) -> Duration {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges[..threads]
            .iter()
            .map(|&range| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        drop(mm.invalidate_range_start(black_box(range)));
                    }
                    (t0, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let first = spans.iter().map(|s| s.0).min().expect("a thread");
    let last = spans.iter().map(|s| s.1).max().expect("a thread");
    last - first
}

fn bench_concurrent(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrent_invalidate");

    let mm = Mm::new();
    let sub = mm.register(Quiet).expect("register");
    let ranges = [page_range(0x10_0000), page_range(0x80_0000)];
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_with_input(BenchmarkId::new("list_1sub", threads), &threads, |b, &t| {
            b.iter_custom(|iters| race(&mm, &ranges, t, iters));
        });
    }
    sub.unregister().expect("unregister");
    group.finish();
}

#[path = "common/config.rs"]
mod bench_config;
use bench_config::config;

criterion_group! {
    name = benches;
    config = config();
    targets = bench_no_subscriber, bench_list_dispatch, bench_read_side, bench_concurrent
}
criterion_main!(benches);
