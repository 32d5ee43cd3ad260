//! The contract's fast paths (`mmu-notifier`), each next to a baseline built here and measured
//! in the same run: list dispatch against a loop of the same indirect calls, the interval read
//! side against two loads, one invalidation among many intervals against a binary search over
//! the same intervals, interval insertion, and invalidation throughput per thread count.
//!
//! The CLI is built with `mmu-notifier`'s `lockdep` feature (the tour needs the annotations);
//! `mmnotify bench` switches the validator off at run time, so these figures include the
//! switched-off annotations' checks, which `cargo bench -p mmu-notifier` (no feature) does not.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mmu_notifier::{
    Capabilities, Event, Interval, IntervalNotifier, IntervalNotifierOps, Mm, MmuNotifierOps,
    Range, WouldBlock,
};

use super::interleave::{medians, ns_per_op};
use super::{median, throughput_per_thread, BenchConfig, BenchRow};

const PAGE: u64 = 4096;

/// Errors of the contract while building a benchmark's address space.
type Result<T> = std::result::Result<T, mmu_notifier::Error>;

fn page_range(start: u64) -> Result<Range> {
    Range::new(start, start + PAGE, Event::Unmap)
}

/// SplitMix64: the benchmark's random targets, deterministic.
fn splitmix(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ------------------------------------------------------------------- list dispatch

/// The baseline's callback interface: the two calls a list subscriber gets.
trait Callbacks: Send + Sync {
    fn start(&self, range: &Range) -> std::result::Result<(), WouldBlock>;
    fn end(&self, range: &Range);
}

/// A KVM-like list subscriber: bumps its own counter in start and end.
#[derive(Default)]
struct Bump(AtomicU64);

impl MmuNotifierOps for Bump {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, _: &Range) -> std::result::Result<(), WouldBlock> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn invalidate_range_end(&self, _: &Range) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Callbacks for Bump {
    fn start(&self, _: &Range) -> std::result::Result<(), WouldBlock> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn end(&self, _: &Range) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// One blockable start + end with `subscribers` list subscribers, against a loop over a
/// `Vec<Arc<dyn Callbacks>>` making the same indirect calls. ns.
pub fn list_dispatch(cfg: &BenchConfig, subscribers: usize) -> Result<BenchRow> {
    let range = page_range(0x10_0000)?;
    let mm = Mm::new();
    let subs = (0..subscribers)
        .map(|_| mm.register(Bump::default()))
        .collect::<Result<Vec<_>>>()?;
    let baseline: Vec<Arc<dyn Callbacks>> = (0..subscribers)
        .map(|_| Arc::new(Bump::default()) as Arc<dyn Callbacks>)
        .collect();
    let m = medians(cfg, cfg.ops, 2, |v, n| match v {
        0 => ns_per_op(n, |_| drop(mm.invalidate_range_start(black_box(range)))),
        _ => ns_per_op(n, |_| {
            let (subs, range) = (black_box(&baseline), black_box(range));
            for s in subs {
                let _ = s.start(&range);
            }
            for s in subs {
                s.end(&range);
            }
        }),
    });
    for s in subs {
        s.unregister()?;
    }
    Ok(BenchRow {
        name: format!("list dispatch (start+end), {subscribers} subscriber(s)"),
        value: m[0],
        unit: "ns",
        baseline: Some(("loop of the same indirect calls".into(), m[1])),
    })
}

// ------------------------------------------------------------------- read side

/// A driver's interval callback reduced to what it must do: record the sequence.
struct SetSeq;

impl IntervalNotifierOps for SetSeq {
    fn invalidate(&self, interval: &Interval, _range: &Range, cur_seq: u64) -> bool {
        interval.set_seq(cur_seq);
        true
    }
}

/// `read_begin` + `read_retry` on an idle address space, against two `Acquire` loads. ns.
pub fn read_side(cfg: &BenchConfig) -> Result<BenchRow> {
    let mm = Mm::new();
    let iv = mm.interval_notifier_insert(0x10_0000, 16 * PAGE, SetSeq)?;
    // A real past invalidation's sequence, as in steady state.
    drop(mm.invalidate_range_start(page_range(0x10_0000)?));
    let seq = AtomicU64::new(2);
    let m = medians(cfg, cfg.ops, 2, |v, n| match v {
        0 => ns_per_op(n, |_| {
            let iv = black_box(&iv);
            let s = iv.read_begin();
            black_box(iv.read_retry(black_box(s)));
        }),
        _ => ns_per_op(n, |_| {
            let a = black_box(&seq);
            let s = a.load(Ordering::Acquire);
            black_box(a.load(Ordering::Acquire) != black_box(s));
        }),
    });
    iv.remove()?;
    Ok(BenchRow {
        name: "read_begin + read_retry, idle".into(),
        value: m[0],
        unit: "ns",
        baseline: Some(("two Acquire loads".into(), m[1])),
    })
}

// ------------------------------------------------------------------- many intervals

/// `0..n` in a random order (deterministic): the order the intervals are inserted in.
fn shuffled(n: usize) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n as u64).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (splitmix(i as u64) % (i as u64 + 1)) as usize);
    }
    order
}

/// Inserts `starts` into the baseline map of [`ManyIntervals::insert`] under fresh ids, each
/// with an allocation; ns per insert.
fn map_insert(map: &mut BTreeMap<(u64, u64), Arc<u64>>, starts: &[u64]) -> f64 {
    let t = Instant::now();
    for (i, &s) in starts.iter().enumerate() {
        map.insert((black_box(s), u64::MAX - i as u64), Arc::new(s + PAGE - 1));
    }
    t.elapsed().as_nanos() as f64 / starts.len().max(1) as f64
}

/// An address space with `n` disjoint one-page interval notifiers on every other page
/// (inserted in a random order), and the same intervals as a sorted `Vec` of `(start, last)`.
pub struct ManyIntervals {
    n: usize,
    mm: Mm,
    ivs: Vec<IntervalNotifier>,
    sorted: Vec<(u64, u64)>,
}

impl ManyIntervals {
    /// Builds it (seconds at a million intervals).
    pub fn new(n: usize) -> Result<ManyIntervals> {
        let mm = Mm::new();
        let ivs = shuffled(n)
            .iter()
            .map(|&k| mm.interval_notifier_insert(2 * k * PAGE, PAGE, SetSeq))
            .collect::<Result<Vec<_>>>()?;
        let sorted = (0..n as u64)
            .map(|k| (2 * k * PAGE, 2 * k * PAGE + PAGE - 1))
            .collect();
        Ok(ManyIntervals { n, mm, ivs, sorted })
    }

    /// The baseline's stab: the last interval starting at or before `last`, and those before
    /// it that still reach `start` (one, for disjoint intervals). Returns the sum of the
    /// starts hit, so the work cannot be skipped.
    fn vec_stab(&self, start: u64, last: u64) -> u64 {
        let mut i = self.sorted.partition_point(|&(s, _)| s <= last);
        let mut sum = 0;
        while i > 0 && self.sorted[i - 1].1 >= start {
            sum += self.sorted[i - 1].0;
            i -= 1;
        }
        sum
    }

    /// One blockable invalidation (start + end) of a random one of the intervals, against
    /// the binary-search stab of the same target. ns.
    pub fn invalidate_one(&self, cfg: &BenchConfig) -> Result<BenchRow> {
        let ops = cfg.ops.min(50_000);
        let targets: Vec<u64> = (0..ops as u64)
            .map(|i| 2 * (splitmix(i ^ 0x5eed) % self.n as u64) * PAGE)
            .collect();
        let ranges = targets
            .iter()
            .map(|&s| page_range(s))
            .collect::<Result<Vec<_>>>()?;
        // Each round takes the next slice of the targets, the same slice for both.
        let mut next = [0usize; 2];
        let m = medians(cfg, ops, 2, |v, n| {
            let from = next[v];
            next[v] = (from + n) % (ops - n + 1);
            match v {
                0 => ns_per_op(n, |i| {
                    drop(self.mm.invalidate_range_start(black_box(ranges[from + i])))
                }),
                _ => ns_per_op(n, |i| {
                    let s = black_box(targets[from + i]);
                    black_box(self.vec_stab(s, s + PAGE - 1));
                }),
            }
        });
        Ok(BenchRow {
            name: format!(
                "one invalidation (start+end), 1 of {} intervals, random target",
                self.n
            ),
            value: m[0],
            unit: "ns",
            baseline: Some((
                "binary-search stab of a sorted Vec of the same intervals".into(),
                m[1],
            )),
        })
    }

    /// `interval_notifier_insert` of one-page intervals into the free pages between the `n`
    /// (random order), timed per insert; removed again untimed. The baseline inserts the same
    /// intervals, in the same batch and in alternating order, into a `BTreeMap` holding the
    /// `n` under the index's own key, `(start, id)`, inserted in the same order: an index
    /// insert plus one allocation, without a lock. ns.
    pub fn insert(&self, cfg: &BenchConfig) -> Result<BenchRow> {
        let ops = cfg.slow_ops.max(1);
        let mut map = BTreeMap::new();
        for (id, k) in shuffled(self.n).into_iter().enumerate() {
            map.insert((2 * k * PAGE, id as u64), Arc::new(2 * k * PAGE + PAGE - 1));
        }
        let mut per_batch = Vec::with_capacity(cfg.batches);
        let mut map_batch = Vec::with_capacity(cfg.batches);
        for b in 0..cfg.batches {
            let starts: Vec<u64> = (0..ops as u64)
                .map(|i| {
                    let k = splitmix((b as u64) << 32 | i) % self.n as u64;
                    (2 * k + 1) * PAGE
                })
                .collect();
            let mut added = Vec::with_capacity(ops);
            let mut map_ns = 0.0;
            if b % 2 == 1 {
                map_ns = map_insert(&mut map, &starts);
            }
            let t = Instant::now();
            for &s in &starts {
                added.push(
                    self.mm
                        .interval_notifier_insert(black_box(s), PAGE, SetSeq)?,
                );
            }
            per_batch.push(t.elapsed().as_nanos() as f64 / ops as f64);
            if b % 2 == 0 {
                map_ns = map_insert(&mut map, &starts);
            }
            map_batch.push(map_ns);
            for iv in added {
                iv.remove()?;
            }
            for (i, &s) in starts.iter().enumerate() {
                map.remove(&(s, u64::MAX - i as u64));
            }
        }
        Ok(BenchRow {
            name: format!("interval_notifier_insert into {} intervals", self.n),
            value: median(per_batch),
            unit: "ns",
            baseline: Some((
                "BTreeMap<(start, id), Arc<_>> insert of the same intervals".into(),
                median(map_batch),
            )),
        })
    }

    /// Removes every interval (checks the address space is idle first).
    pub fn teardown(self) -> Result<()> {
        for iv in self.ivs {
            iv.remove()?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------- scaling

/// Interval notifiers in the address space of the scaling benchmark.
const SCALING_INTERVALS: u64 = 1_000;

/// Invalidation throughput of `threads` threads, each invalidating its own interval (disjoint,
/// spread over 1,000 intervals of one address space), for each count in `counts`. Each row's
/// baseline is one thread's throughput from the same run. Mops/s in total.
pub fn interval_scaling(cfg: &BenchConfig, counts: &[usize]) -> Result<Vec<BenchRow>> {
    let mm = Mm::new();
    let ivs = (0..SCALING_INTERVALS)
        .map(|i| mm.interval_notifier_insert(2 * i * PAGE, PAGE, SetSeq))
        .collect::<Result<Vec<_>>>()?;
    let most = counts.iter().copied().max().unwrap_or(1);
    let ranges = (0..most as u64)
        .map(|t| page_range(2 * ((t + 1) * SCALING_INTERVALS / (most as u64 + 1)) * PAGE))
        .collect::<Result<Vec<_>>>()?;
    let op = |t: usize, _i: usize| drop(mm.invalidate_range_start(black_box(ranges[t])));
    let one = throughput_per_thread(1, cfg, &op);
    let rows = counts
        .iter()
        .map(|&threads| BenchRow {
            name: format!("interval invalidations, {threads} thread(s) on disjoint intervals"),
            value: if threads == 1 {
                one
            } else {
                throughput_per_thread(threads, cfg, &op)
            },
            unit: "Mops/s",
            baseline: Some(("1 thread".into(), one)),
        })
        .collect();
    for iv in ivs {
        iv.remove()?;
    }
    Ok(rows)
}
