//! Cost of validation on an uncontended nested lock pair, against baselines measured in the
//! same run: the same lock type with validation switched off at run time, the raw
//! `parking_lot` mutex the type compiles to without the `enabled` feature, `std::sync::Mutex`,
//! and `tracing-mutex` 0.3. Plus two threads on disjoint pairs versus one thread.
//!
//! `cargo bench -p lockdep --bench nested_pair` (and with `--no-default-features` for the
//! compiled-out build of the `lockdep` rows).

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use lockdep::{static_lock_class, Mutex};

fn nested_pair(c: &mut Criterion) {
    let mut g = c.benchmark_group("nested_pair");

    let a = Mutex::new(0u64, static_lock_class!("bench-A"));
    let b = Mutex::new(0u64, static_lock_class!("bench-B"));
    g.bench_function("lockdep_validated", |bench| {
        lockdep::set_enabled(true);
        bench.iter(|| {
            let ga = a.lock();
            let mut gb = b.lock();
            *gb += black_box(*ga);
        })
    });
    g.bench_function("lockdep_runtime_disabled", |bench| {
        lockdep::set_enabled(false);
        bench.iter(|| {
            let ga = a.lock();
            let mut gb = b.lock();
            *gb += black_box(*ga);
        });
        lockdep::set_enabled(true);
    });

    let pa = parking_lot::Mutex::new(0u64);
    let pb = parking_lot::Mutex::new(0u64);
    g.bench_function("parking_lot_raw", |bench| {
        bench.iter(|| {
            let ga = pa.lock();
            let mut gb = pb.lock();
            *gb += black_box(*ga);
        })
    });

    let sa = std::sync::Mutex::new(0u64);
    let sb = std::sync::Mutex::new(0u64);
    g.bench_function("std_mutex", |bench| {
        bench.iter(|| {
            let ga = sa.lock().unwrap();
            let mut gb = sb.lock().unwrap();
            *gb += black_box(*ga);
        })
    });

    let ta = tracing_mutex::stdsync::tracing::Mutex::new(0u64);
    let tb = tracing_mutex::stdsync::tracing::Mutex::new(0u64);
    g.bench_function("tracing_mutex", |bench| {
        bench.iter(|| {
            let ga = ta.lock().unwrap();
            let mut gb = tb.lock().unwrap();
            *gb += black_box(*ga);
        })
    });
    g.finish();
}

/// One thread's locks, on cache lines of their own (no false sharing between threads).
#[repr(align(128))]
struct Pair(Mutex<u64>, Mutex<u64>);

/// The slowest thread's time for `iters` pairs when `threads` threads each take their own
/// pair of locks (of the same two classes, so they share chain-cache entries).
fn disjoint(threads: usize, iters: u64) -> Duration {
    let pairs: Vec<Pair> = (0..threads)
        .map(|_| {
            Pair(
                Mutex::new(0, static_lock_class!("bench-disjoint-A")),
                Mutex::new(0, static_lock_class!("bench-disjoint-B")),
            )
        })
        .collect();
    let barrier = Barrier::new(threads);
    let times: Vec<Duration> = thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|Pair(a, b)| {
                let barrier = &barrier;
                s.spawn(move || {
                    // Warm the thread's state and the chain cache.
                    drop((a.lock(), b.lock()));
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        let ga = a.lock();
                        let mut gb = b.lock();
                        *gb += black_box(*ga);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    times.into_iter().max().unwrap_or_default()
}

fn disjoint_pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("disjoint_pairs");
    for threads in [1usize, 2] {
        g.bench_function(format!("lockdep_{threads}_threads"), |bench| {
            bench.iter_custom(|iters| disjoint(threads, iters))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = nested_pair, disjoint_pairs
}
criterion_main!(benches);
