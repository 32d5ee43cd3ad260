//! vmsim's figures, each against a baseline from the same run.
//!
//! * minor anonymous faults, one thread and two threads (scaling);
//! * munmap of 512 mapped pages with 0, 1 and 4 list subscribers (ratio to 0);
//! * reclaim throughput: frames reclaimed (swapped out) with 4 subscribers.
//!
//! `cargo bench -p vmsim --bench vmsim`. Host bytes per frame and the 1M-frame machine:
//! `cargo run --release -p vmsim --example footprint`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmu_notifier::{Capabilities, MmuNotifierOps, Range, WouldBlock};
use vmsim::{Advice, Config, Machine, MapRequest};

const P: u64 = 4096;

/// A subscriber that does what a cheap driver does: nothing but be called.
struct Noop;
impl MmuNotifierOps for Noop {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        black_box(r);
        Ok(())
    }
    fn invalidate_range_end(&self, r: &Range) {
        black_box(r);
    }
}

fn faults(c: &mut Criterion) {
    let mut g = c.benchmark_group("minor_fault");
    const PAGES: u64 = 4096;
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(PAGES * threads as u64));
        g.bench_function(
            BenchmarkId::from_parameter(format!("{threads}_threads")),
            |b| {
                b.iter_custom(|iters| {
                    let m = Machine::new(Config::new(PAGES as usize * threads + 1024)).unwrap();
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let procs: Vec<_> = (0..threads).map(|_| m.spawn()).collect();
                        let addrs: Vec<u64> = procs
                            .iter()
                            .map(|p| p.mmap(MapRequest::anon(PAGES * P)).unwrap())
                            .collect();
                        let start = Instant::now();
                        std::thread::scope(|s| {
                            for (p, &a) in procs.iter().zip(&addrs) {
                                s.spawn(move || p.touch(a, PAGES * P, true).unwrap());
                            }
                        });
                        total += start.elapsed();
                        for p in procs {
                            p.exit().unwrap();
                        }
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

fn munmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("munmap_512_pages");
    for subs in [0usize, 1, 4] {
        g.bench_function(
            BenchmarkId::from_parameter(format!("{subs}_subscribers")),
            |b| {
                let m = Machine::new(Config::new(2048)).unwrap();
                let p = m.spawn();
                let _subs: Vec<_> = (0..subs).map(|_| p.mm().register(Noop).unwrap()).collect();
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let a = p.mmap(MapRequest::anon(512 * P)).unwrap();
                        p.touch(a, 512 * P, true).unwrap();
                        let start = Instant::now();
                        p.munmap(a, 512 * P).unwrap();
                        total += start.elapsed();
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

fn reclaim(c: &mut Criterion) {
    let mut g = c.benchmark_group("reclaim");
    const PAGES: u64 = 1024;
    g.throughput(Throughput::Elements(PAGES));
    for subs in [0usize, 4] {
        g.bench_function(
            BenchmarkId::from_parameter(format!("{subs}_subscribers")),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let m = Machine::new(Config::new(PAGES as usize + 512).swap(PAGES as u32))
                            .unwrap();
                        let p = m.spawn();
                        let _subs: Vec<_> =
                            (0..subs).map(|_| p.mm().register(Noop).unwrap()).collect();
                        let a = p.mmap(MapRequest::anon(PAGES * P)).unwrap();
                        p.touch(a, PAGES * P, true).unwrap();
                        p.madvise(a, PAGES * P, Advice::Cold).unwrap();
                        let start = Instant::now();
                        let freed = m.reclaim(PAGES as usize);
                        total += start.elapsed();
                        assert_eq!(
                            freed as u64, PAGES,
                            "the benchmark must reclaim what it counts"
                        );
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, faults, munmap, reclaim);
criterion_main!(benches);
