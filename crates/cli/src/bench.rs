//! The benchmarks behind `mmnotify bench` and the README table: each figure is a median over
//! repeated batches, and each is put next to its baseline measured in the same run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostmm::{
    page_size, CacheConfig, HostMm, Mapping, MonitorConfig, NoopRegistrar, RegCache, Registrar,
    Result, UffdMonitor, VaRange,
};

use crate::sys::{as_ptr, lock, sys};

pub mod all;
mod interleave;

use interleave::{medians, ns_per_op};
mod notifier;
mod validator;
mod wake;

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    /// What was measured.
    pub name: String,
    /// The median.
    pub value: f64,
    /// Its unit (`"ns"`, `"us"`, `"Mops/s"`).
    pub unit: &'static str,
    /// What it is compared with, and that baseline's median.
    pub baseline: Option<(String, f64)>,
}

impl BenchRow {
    /// `value / baseline`.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, b)| self.value / b)
    }
}

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Batches per figure (the median is over them).
    pub batches: usize,
    /// Operations per batch for the nanosecond-scale figures.
    pub ops: usize,
    /// Operations per batch for the microsecond-scale figures (munmap, miss).
    pub slow_ops: usize,
    /// Entries in the cache for the hit benchmarks.
    pub entries: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            batches: 11,
            ops: 200_000,
            slow_ops: 400,
            entries: 512,
        }
    }
}

impl BenchConfig {
    /// A quick run for tests and CI.
    pub fn quick() -> Self {
        Self {
            batches: 3,
            ops: 5_000,
            slow_ops: 40,
            entries: 64,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The baseline cache: one mutex around a `BTreeMap`, as libfabric and simple caches do.
#[derive(Default)]
pub struct MutexCache {
    map: Mutex<BTreeMap<(u64, u64), Arc<u64>>>,
}

impl MutexCache {
    /// Inserts a registration.
    pub fn insert(&self, start: u64, end: u64) {
        lock(&self.map).insert((start, end), Arc::new(start));
    }
    /// Removes the registration of exactly `[start, end)` (an invalidation).
    pub fn remove(&self, start: u64, end: u64) {
        lock(&self.map).remove(&(start, end));
    }
    /// The registration covering `[start, end)`.
    pub fn lookup(&self, start: u64, end: u64) -> Option<Arc<u64>> {
        let map = lock(&self.map);
        map.range(..=(start, u64::MAX))
            .next_back()
            .filter(|((_, e), _)| *e >= end)
            .map(|(_, v)| v.clone())
    }
}

/// `munmap` of a touched 4 KiB page: bare, then monitored by uffd (a cached registration on
/// it), then through the bracketed wrapper (with a cached registration). Medians in µs.
pub fn munmap_costs(cfg: &BenchConfig) -> Result<Vec<BenchRow>> {
    let page = page_size();
    let time_batch = |unmap: &mut dyn FnMut(&Mapping) -> Result<()>,
                      prep: &mut dyn FnMut(&Mapping) -> Result<()>|
     -> Result<f64> {
        let mut per_batch = Vec::new();
        for _ in 0..cfg.batches {
            let mut total = Duration::ZERO;
            for _ in 0..cfg.slow_ops {
                let m = Mapping::anonymous(page)?;
                m.write_u64(0, 1);
                prep(&m)?;
                let t = Instant::now();
                unmap(&m)?;
                total += t.elapsed();
                m.into_raw();
            }
            per_batch.push(total.as_secs_f64() * 1e6 / cfg.slow_ops as f64);
        }
        Ok(median(per_batch))
    };
    let raw_unmap = |m: &Mapping| -> Result<()> {
        // SAFETY: the mapping is ours and no reference into it survives.
        unsafe { rustix::mm::munmap(as_ptr(&m.range()), m.len() as usize) }.map_err(sys("munmap"))
    };
    let bare = time_batch(&mut |m| raw_unmap(m), &mut |_| Ok(()))?;

    let mut rows = Vec::new();
    let host = HostMm::new();
    match UffdMonitor::start(&host, MonitorConfig::default()) {
        Ok(mon) => {
            let cache = RegCache::new(
                &host,
                NoopRegistrar,
                CacheConfig {
                    monitor: Some(mon),
                    max_entries: 1 << 20,
                    ..Default::default()
                },
            )?;
            let uffd = time_batch(&mut |m| raw_unmap(m), &mut |m| {
                cache.get(m.addr(), page).map(|_| ())
            })?;
            rows.push(BenchRow {
                name: "munmap 4 KiB, uffd-monitored, 1 cached registration".into(),
                value: uffd,
                unit: "us",
                baseline: Some(("bare munmap".into(), bare)),
            });
        }
        Err(e) => rows.push(BenchRow {
            name: format!("munmap 4 KiB, uffd-monitored: skipped ({e})"),
            value: f64::NAN,
            unit: "us",
            baseline: None,
        }),
    }
    let host2 = HostMm::new();
    let cache = RegCache::new(
        &host2,
        NoopRegistrar,
        CacheConfig {
            max_entries: 1 << 20,
            ..Default::default()
        },
    )?;
    let bracketed = time_batch(
        // SAFETY: as above.
        &mut |m| unsafe { host2.munmap(m.addr(), m.len()) },
        &mut |m| cache.get(m.addr(), page).map(|_| ()),
    )?;
    rows.push(BenchRow {
        name: "munmap 4 KiB, bracketed, 1 cached registration".into(),
        value: bracketed,
        unit: "us",
        baseline: Some(("bare munmap".into(), bare)),
    });
    Ok(rows)
}

/// How long the monitor spins in the burst benchmark's "spin on" rows.
pub const BURST_SPIN: Duration = Duration::from_micros(50);

/// One burst figure: µs per munmap, and the uffd monitor's CPU per munmap (µs; `NAN` for the
/// bare baseline, which has no monitor).
#[derive(Clone, Copy, Debug)]
pub struct Burst {
    /// Median wall time per munmap, µs.
    pub per_munmap: f64,
    /// Median monitor CPU time per munmap, µs.
    pub monitor_cpu: f64,
}

/// A burst: `cfg.slow_ops` touched 4 KiB pages, each with a cached registration, unmapped back
/// to back. `spin`: `None` for bare munmaps (no monitor, no cache), `Some(d)` for a uffd
/// monitor with [`MonitorConfig::spin`] `d`. Medians over `cfg.batches` bursts.
pub fn munmap_burst(cfg: &BenchConfig, spin: Option<Duration>) -> Result<Burst> {
    let page = page_size();
    let host = HostMm::new();
    let (mon, cache) = match spin {
        Some(spin) => {
            let mon = UffdMonitor::start(
                &host,
                MonitorConfig {
                    spin,
                    ..Default::default()
                },
            )?;
            let cache = RegCache::new(
                &host,
                NoopRegistrar,
                CacheConfig {
                    monitor: Some(mon.clone()),
                    max_entries: 1 << 20,
                    ..Default::default()
                },
            )?;
            (Some(mon), Some(cache))
        }
        None => (None, None),
    };
    // Lets the monitor finish its spin and publish its CPU time.
    let settle = || std::thread::sleep(spin.unwrap_or_default() + Duration::from_millis(2));
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..cfg.batches {
        let mut maps = Vec::with_capacity(cfg.slow_ops);
        for _ in 0..cfg.slow_ops {
            let m = Mapping::anonymous(page)?;
            m.write_u64(0, 1);
            if let Some(c) = &cache {
                c.get(m.addr(), page)?;
            }
            maps.push(m.into_raw());
        }
        settle();
        let cpu0 = mon.as_ref().map(|m| m.stats().cpu_ns);
        let t = Instant::now();
        for r in &maps {
            // SAFETY: each mapping is ours (taken out of its `Mapping`) and nothing refers to it.
            unsafe { rustix::mm::munmap(as_ptr(r), r.len() as usize) }.map_err(sys("munmap"))?;
        }
        wall.push(t.elapsed().as_secs_f64() * 1e6 / cfg.slow_ops as f64);
        settle();
        if let (Some(m), Some(c0)) = (&mon, cpu0) {
            let ns = m.stats().cpu_ns.saturating_sub(c0);
            cpu.push(ns as f64 / 1e3 / cfg.slow_ops as f64);
        }
        if let Some(c) = &cache {
            c.flush();
        }
    }
    Ok(Burst {
        per_munmap: median(wall),
        monitor_cpu: if cpu.is_empty() {
            f64::NAN
        } else {
            median(cpu)
        },
    })
}

/// `cfg.entries` one-page ranges cached in both a [`RegCache`] and a [`MutexCache`].
struct HitFixture {
    mem: Mapping,
    host: HostMm,
    cache: RegCache<NoopRegistrar>,
    base: MutexCache,
}

impl HitFixture {
    /// `cfg.entries` ranges of `pages` pages each, back to back.
    fn new(cfg: &BenchConfig, pages: u64) -> Result<HitFixture> {
        let span = pages * page_size();
        let n = cfg.entries as u64;
        let mem = Mapping::anonymous(n * span)?;
        let host = HostMm::new();
        let cache = RegCache::new(
            &host,
            NoopRegistrar,
            CacheConfig {
                max_entries: cfg.entries * 2,
                ..Default::default()
            },
        )?;
        let base = MutexCache::default();
        for i in 0..n {
            let s = mem.addr() + i * span;
            cache.get(s, span)?;
            base.insert(s, s + span);
        }
        Ok(HitFixture {
            mem,
            host,
            cache,
            base,
        })
    }
}

/// Hit latency of [`RegCache`] vs [`MutexCache`], one thread, `entries` cached one-page ranges
/// looked up at their start in a scrambled order. Medians in ns per lookup.
pub fn hit_latency(cfg: &BenchConfig) -> Result<BenchRow> {
    hit_latency_of(cfg, 1, 0)
}

/// The same with two-page ranges looked up by their second page: no range starts where the
/// lookup does, so the index's hash probe fails and the sorted search finds the range.
pub fn hit_latency_interior(cfg: &BenchConfig) -> Result<BenchRow> {
    hit_latency_of(cfg, 2, 1)
}

/// `entries` ranges of `pages` pages each, looked up one page long at page `at` of each.
/// Ours and the baseline alternate in short batches (many more than `cfg.batches`, each
/// `cfg.ops / 10` lookups), so a preemption spoils few of them and the medians compare the two
/// under the same conditions.
fn hit_latency_of(cfg: &BenchConfig, pages: u64, at: u64) -> Result<BenchRow> {
    let page = page_size();
    let n = cfg.entries as u64;
    let span = pages * page;
    let HitFixture {
        mem,
        host: _host,
        cache,
        base,
    } = HitFixture::new(cfg, pages)?;
    let key = |i: usize| mem.addr() + ((i as u64).wrapping_mul(7919) % n) * span + at * page;
    let ops = (cfg.ops / 10).max(100);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for b in 0..cfg.batches * 9 {
        let first = b * ops;
        let t = Instant::now();
        for i in first..first + ops {
            let h = cache.lookup(key(i), page)?;
            std::hint::black_box(h);
        }
        ours.push(t.elapsed().as_nanos() as f64 / ops as f64);
        let t = Instant::now();
        for i in first..first + ops {
            let k = key(i);
            std::hint::black_box(base.lookup(k, k + page));
        }
        theirs.push(t.elapsed().as_nanos() as f64 / ops as f64);
    }
    if cache.stats().hits < (cfg.batches * 9 * ops) as u64 {
        return Err(hostmm::Error::Config("the hit benchmark missed"));
    }
    let what = if at == 0 {
        format!("cache hit, 1 thread, {} entries", cfg.entries)
    } else {
        format!(
            "cache hit inside a range, 1 thread, {} entries",
            cfg.entries
        )
    };
    Ok(BenchRow {
        name: what,
        value: median(ours),
        unit: "ns",
        baseline: Some(("Mutex<BTreeMap> hit".into(), median(theirs))),
    })
}

fn throughput(threads: usize, cfg: &BenchConfig, op: &(dyn Fn(usize) + Sync)) -> f64 {
    throughput_per_thread(threads, cfg, &|t, i| op(i * 31 + t * 17))
}

/// Total Mops/s of `threads` threads each calling `op(thread, i)` for `i` in `0..cfg.ops`,
/// released together; median over `cfg.batches`.
fn throughput_per_thread(
    threads: usize,
    cfg: &BenchConfig,
    op: &(dyn Fn(usize, usize) + Sync),
) -> f64 {
    let mut per_batch = Vec::new();
    for _ in 0..cfg.batches {
        let go = AtomicBool::new(false);
        let done = AtomicU64::new(0);
        let t0 = std::thread::scope(|s| {
            for t in 0..threads {
                let (go, done) = (&go, &done);
                s.spawn(move || {
                    while !go.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    for i in 0..cfg.ops {
                        op(t, i);
                    }
                    done.fetch_add(1, Ordering::AcqRel);
                });
            }
            let t0 = Instant::now();
            go.store(true, Ordering::Release);
            t0
        });
        let secs = t0.elapsed().as_secs_f64();
        per_batch.push((threads * cfg.ops) as f64 / secs / 1e6);
    }
    median(per_batch)
}

/// Hit throughput with 1 and 2 threads, ours and the baseline's. Mops/s.
pub fn hit_scaling(cfg: &BenchConfig) -> Result<Vec<BenchRow>> {
    let page = page_size();
    let n = cfg.entries as u64;
    let HitFixture {
        mem,
        host: _host,
        cache,
        base,
    } = HitFixture::new(cfg, 1)?;
    let addr = mem.addr();
    let ours = |i: usize| {
        let k = addr + (i as u64 % n) * page;
        std::hint::black_box(cache.lookup(k, page).ok());
    };
    let theirs = |i: usize| {
        let k = addr + (i as u64 % n) * page;
        std::hint::black_box(base.lookup(k, k + page));
    };
    let o1 = throughput(1, cfg, &ours);
    let o2 = throughput(2, cfg, &ours);
    let b1 = throughput(1, cfg, &theirs);
    let b2 = throughput(2, cfg, &theirs);
    Ok(vec![
        BenchRow {
            name: "hit throughput, 1 thread".into(),
            value: o1,
            unit: "Mops/s",
            baseline: Some(("Mutex<BTreeMap>, 1 thread".into(), b1)),
        },
        BenchRow {
            name: "hit throughput, 2 threads".into(),
            value: o2,
            unit: "Mops/s",
            baseline: Some(("Mutex<BTreeMap>, 2 threads".into(), b2)),
        },
        BenchRow {
            name: "hit scaling, 2 threads / 1 thread".into(),
            value: o2 / o1,
            unit: "x",
            baseline: Some(("Mutex<BTreeMap> scaling".into(), b2 / b1)),
        },
    ])
}

/// Miss + register with a no-op registrar (interval insert, collision check, publish), for the
/// bracketed source and with uffd watching; against the same miss in the baseline cache (a lookup
/// that misses, the same no-op registrar's `register`, the insert). Each batch fills a fresh
/// cache with `cfg.slow_ops` one-page ranges; the variants alternate batch by batch, so load
/// that comes and goes falls on all of them alike. Medians in µs per miss.
pub fn miss_cost(cfg: &BenchConfig) -> Result<Vec<BenchRow>> {
    let page = page_size();
    let n = cfg.slow_ops as u64;
    let host = HostMm::new();
    let uffd_host = HostMm::new();
    let monitor = UffdMonitor::start(&uffd_host, MonitorConfig::default()).ok();
    let ours = |monitor: Option<UffdMonitor>, host: &HostMm| -> Result<f64> {
        let mem = Mapping::anonymous(n * page)?;
        let cache = RegCache::new(
            host,
            NoopRegistrar,
            CacheConfig {
                monitor,
                max_entries: cfg.slow_ops * 2,
                ..Default::default()
            },
        )?;
        let t = Instant::now();
        for i in 0..n {
            cache.get(mem.addr() + i * page, page)?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
    };
    let theirs = || -> Result<f64> {
        let base = MutexCache::default();
        let t = Instant::now();
        for i in 0..n {
            let (s, e) = ((i + 1) * page, (i + 2) * page);
            if base.lookup(s, e).is_none() {
                let reg = NoopRegistrar.register(VaRange::covering(s, page)?);
                std::hint::black_box(reg.map_err(|_| hostmm::Error::Config("no-op register"))?);
                base.insert(s, e);
            }
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
    };
    let (mut br, mut uf, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.batches * 3 {
        br.push(ours(None, &host)?);
        base.push(theirs()?);
        if let Some(m) = &monitor {
            uf.push(ours(Some(m.clone()), &uffd_host)?);
        }
    }
    let baseline = (
        "Mutex<BTreeMap> miss + no-op register + insert".to_string(),
        median(base),
    );
    let mut rows = vec![BenchRow {
        name: "miss + no-op register, bracketed source".into(),
        value: median(br),
        unit: "us",
        baseline: Some(baseline.clone()),
    }];
    if !uf.is_empty() {
        rows.push(BenchRow {
            name: "miss + no-op register, uffd source (coarse watch)".into(),
            value: median(uf),
            unit: "us",
            baseline: Some(baseline),
        });
    }
    rows.push(churn_cost(cfg)?);
    Ok(rows)
}

/// Churn in a full cache: one of `cfg.entries` cached one-page ranges is invalidated (an
/// importer's notification) and looked up again (a miss: flush, register, publish), against
/// the same in the baseline cache (remove, then the miss: lookup, the no-op registrar, insert).
/// The two alternate in short batches. µs per invalidation + miss.
pub fn churn_cost(cfg: &BenchConfig) -> Result<BenchRow> {
    let page = page_size();
    let n = cfg.entries as u64;
    let fx = HitFixture::new(cfg, 1)?;
    let imp = fx.host.importer()?;
    let key = |i: usize| fx.mem.addr() + ((i as u64).wrapping_mul(7919) % n) * page;
    let mut failed = None;
    let us = medians(cfg, cfg.slow_ops * 4, 2, |v, ops| {
        ns_per_op(ops, |i| {
            let k = key(i);
            if v == 0 {
                let r = imp
                    .notify(k, page, hostmm::Event::Unmap)
                    .and_then(|()| fx.cache.get(k, page).map(drop));
                if let Err(e) = r {
                    failed.get_or_insert(e);
                }
            } else {
                fx.base.remove(k, k + page);
                if fx.base.lookup(k, k + page).is_none() {
                    let reg = VaRange::covering(k, page).and_then(|r| {
                        NoopRegistrar
                            .register(r)
                            .map_err(|_| hostmm::Error::Config("no-op register"))
                    });
                    if let Err(e) = reg {
                        failed.get_or_insert(e);
                    }
                    fx.base.insert(k, k + page);
                }
            }
        }) / 1e3
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(BenchRow {
        name: format!(
            "invalidate + miss + no-op register, {} cached entries",
            cfg.entries
        ),
        value: us[0],
        unit: "us",
        baseline: Some((
            "Mutex<BTreeMap> remove + miss + no-op register + insert".into(),
            us[1],
        )),
    })
}

/// Every benchmark, in table order.
pub fn all(cfg: &BenchConfig) -> Result<Vec<BenchRow>> {
    let mut rows = munmap_costs(cfg)?;
    rows.push(hit_latency(cfg)?);
    rows.push(hit_latency_interior(cfg)?);
    rows.extend(hit_scaling(cfg)?);
    rows.extend(miss_cost(cfg)?);
    rows.extend(burst_rows(cfg)?);
    Ok(rows)
}

/// The burst figures as rows: bare, uffd with the monitor sleeping, uffd with it spinning
/// [`BURST_SPIN`], and the monitor's CPU per munmap in the two uffd runs.
pub fn burst_rows(cfg: &BenchConfig) -> Result<Vec<BenchRow>> {
    let n = cfg.slow_ops;
    let bare = munmap_burst(cfg, None)?.per_munmap;
    let spin = std::env::var("MMNOTIFY_BENCH_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(BURST_SPIN, Duration::from_micros);
    let mut rows = vec![BenchRow {
        name: format!("munmap 4 KiB in a burst of {n}, bare"),
        value: bare,
        unit: "us",
        baseline: None,
    }];
    for (what, d) in [
        ("monitor sleeps".to_string(), Duration::ZERO),
        (format!("monitor spins {} us", spin.as_micros()), spin),
    ] {
        let b = munmap_burst(cfg, Some(d))?;
        rows.push(BenchRow {
            name: format!("munmap 4 KiB in a burst of {n}, uffd, {what}"),
            value: b.per_munmap,
            unit: "us",
            baseline: Some(("bare munmap in a burst".into(), bare)),
        });
        rows.push(BenchRow {
            name: format!("uffd monitor CPU per munmap in the burst, {what}"),
            value: b.monitor_cpu,
            unit: "us",
            baseline: Some(("wall time per munmap".into(), b.per_munmap)),
        });
    }
    Ok(rows)
}
