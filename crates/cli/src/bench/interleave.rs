//! Comparisons on a noisy machine: the variants of one row (the path and its baseline) run in
//! alternating short batches, so load that comes and goes falls on all of them alike, and each
//! figure is the median over its batches.

use std::time::Instant;

use super::{median, BenchConfig};

/// Short batches per configured batch: `cfg.batches × SPLIT` rounds of `ops / SPLIT` each.
const SPLIT: usize = 4;

/// ns per call of `op(i)` over one batch of `ops` calls.
pub fn ns_per_op(ops: usize, mut op: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for i in 0..ops {
        op(i);
    }
    t.elapsed().as_nanos() as f64 / ops.max(1) as f64
}

/// The median ns per operation of each of `variants` variants, over `cfg.batches × 4` rounds;
/// in each round `batch(v, n)` times `n` operations of variant `v` (returns ns per operation),
/// every variant in turn.
pub fn medians(
    cfg: &BenchConfig,
    ops: usize,
    variants: usize,
    mut batch: impl FnMut(usize, usize) -> f64,
) -> Vec<f64> {
    let n = (ops / SPLIT).max(1);
    let mut samples = vec![Vec::with_capacity(cfg.batches * SPLIT); variants];
    for _ in 0..cfg.batches * SPLIT {
        for (v, s) in samples.iter_mut().enumerate() {
            s.push(batch(v, n));
        }
    }
    samples.into_iter().map(median).collect()
}
