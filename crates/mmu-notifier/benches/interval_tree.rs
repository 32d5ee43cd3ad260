//! Benchmarks of `mmu_notifier::interval_tree::IntervalTree`.
//!
//! Trees of n = 1k, 100k and 1M random intervals: 4 KiB-aligned ranges of
//! 1–16 pages placed uniformly in a space of 9·n pages, so a one-page query
//! overlaps about one interval on average (mean length 8.5 pages, plus one
//! page for the query itself). Each tree is built once per group.
//!
//! * `stab/*`: `first_overlap` followed by iterating all overlaps, per query.
//! * `first_overlap/*`: `first_overlap` alone.
//! * `stab_for_each/*`: the same query through `for_each_overlap`.
//! * `insert_remove/*`: one `insert` of a new random interval plus one
//!   `remove` of the oldest one (FIFO churn, so removals hit random
//!   positions, internal nodes included), tree size held at n.

use std::collections::VecDeque;
use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mmu_notifier::interval_tree::{IntervalTree, NodeId};

const PAGE: u64 = 4096;
const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
/// Pre-generated queries per size, cycled through (power of two).
const QUERIES: usize = 1 << 16;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

/// A random range of 1–16 pages starting on a page in `[0, space_pages)`.
fn random_range(rng: &mut Rng, space_pages: u64) -> (u64, u64) {
    let start = rng.below(space_pages) * PAGE;
    let pages = 1 + rng.below(16);
    (start, start + pages * PAGE - 1)
}

fn build(n: usize, rng: &mut Rng) -> (IntervalTree<u64>, VecDeque<NodeId>, u64) {
    let space_pages = 9 * n as u64;
    let mut tree = IntervalTree::with_capacity(n + 1);
    let mut ids = VecDeque::with_capacity(n + 1);
    for i in 0..n as u64 {
        let (s, l) = random_range(rng, space_pages);
        ids.push_back(tree.insert(s, l, i));
    }
    (tree, ids, space_pages)
}

fn queries(rng: &mut Rng, space_pages: u64) -> Vec<(u64, u64)> {
    (0..QUERIES)
        .map(|_| {
            let s = rng.below(space_pages) * PAGE;
            (s, s + PAGE - 1)
        })
        .collect()
}

fn bench_stab(c: &mut Criterion) {
    for n in SIZES {
        let mut rng = Rng(n as u64);
        let (tree, _, space_pages) = build(n, &mut rng);
        let qs = queries(&mut rng, space_pages);
        let hits: usize = qs.iter().map(|&(s, l)| tree.overlaps(s, l).count()).sum();
        eprintln!(
            "n = {n}: {:.2} hits per query on average",
            hits as f64 / qs.len() as f64
        );

        let mut group = c.benchmark_group("interval_tree");
        group.bench_with_input(BenchmarkId::new("stab", n), &n, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                let (s, l) = qs[i & (QUERIES - 1)];
                i = i.wrapping_add(1);
                let first = tree.first_overlap(black_box(s), black_box(l));
                let mut sum = 0u64;
                if first.is_some() {
                    for (_, _, _, v) in tree.overlaps(s, l) {
                        sum = sum.wrapping_add(*v);
                    }
                }
                black_box((first, sum))
            });
        });
        group.bench_with_input(BenchmarkId::new("first_overlap", n), &n, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                let (s, l) = qs[i & (QUERIES - 1)];
                i = i.wrapping_add(1);
                black_box(tree.first_overlap(black_box(s), black_box(l)))
            });
        });
        group.bench_with_input(BenchmarkId::new("stab_for_each", n), &n, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                let (s, l) = qs[i & (QUERIES - 1)];
                i = i.wrapping_add(1);
                let mut sum = 0u64;
                tree.for_each_overlap(black_box(s), black_box(l), |_, _, _, v| {
                    sum = sum.wrapping_add(*v);
                    ControlFlow::Continue(())
                });
                black_box(sum)
            });
        });
        group.finish();
    }
}

fn bench_insert_remove(c: &mut Criterion) {
    for n in SIZES {
        let mut rng = Rng(!(n as u64));
        let (mut tree, mut ids, space_pages) = build(n, &mut rng);
        let ranges: Vec<(u64, u64)> = (0..QUERIES)
            .map(|_| random_range(&mut rng, space_pages))
            .collect();

        let mut group = c.benchmark_group("interval_tree");
        group.bench_with_input(BenchmarkId::new("insert_remove", n), &n, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                let (s, l) = ranges[i & (QUERIES - 1)];
                i = i.wrapping_add(1);
                ids.push_back(tree.insert(black_box(s), black_box(l), 0));
                let oldest = ids.pop_front();
                black_box(oldest.and_then(|id| tree.remove(id)))
            });
        });
        group.finish();
        debug_assert_eq!(tree.len(), n);
    }
}

criterion_group!(benches, bench_stab, bench_insert_remove);
criterion_main!(benches);
