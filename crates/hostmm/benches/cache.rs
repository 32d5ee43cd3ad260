//! Criterion benchmarks: cache hit vs a `Mutex<BTreeMap>` cache, and a miss with a no-op
//! registrar. `mmnotify bench` prints the full table (munmap costs, scaling) with ratios.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use criterion::{criterion_group, criterion_main, Criterion};
use hostmm::{CacheConfig, Event, HostMm, Mapping, NoopRegistrar, RegCache};

/// The baseline: one mutex around a `BTreeMap` keyed by `(start, end)`, as simple caches do.
#[derive(Default)]
struct MutexCache(Mutex<BTreeMap<(u64, u64), u64>>);

impl MutexCache {
    fn insert(&self, start: u64, end: u64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert((start, end), start);
    }

    /// The entry covering `[start, end)`.
    fn lookup(&self, start: u64, end: u64) -> Option<u64> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.range(..=(start, u64::MAX))
            .next_back()
            .filter(|((_, e), _)| *e >= end)
            .map(|(_, v)| *v)
    }
}

fn hits(c: &mut Criterion) {
    let page = hostmm::page_size();
    let n = 512u64;
    let mem = Mapping::anonymous(n * page).unwrap();
    let host = HostMm::new();
    let cache = RegCache::new(&host, NoopRegistrar, CacheConfig::default()).unwrap();
    let base = MutexCache::default();
    for i in 0..n {
        cache.get(mem.addr() + i * page, page).unwrap();
        base.insert(mem.addr() + i * page, mem.addr() + (i + 1) * page);
    }
    let mut g = c.benchmark_group("hit_512_entries");
    let mut i = 0u64;
    g.bench_function("regcache", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            cache.lookup(mem.addr() + i * page, page).unwrap()
        })
    });
    g.bench_function("mutex_btreemap", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            let k = mem.addr() + i * page;
            base.lookup(k, k + page)
        })
    });
    g.finish();
}

fn miss(c: &mut Criterion) {
    let page = hostmm::page_size();
    let mem = Mapping::anonymous(page).unwrap();
    let host = HostMm::new();
    let imp = host.importer().unwrap();
    let cache = RegCache::new(&host, NoopRegistrar, CacheConfig::default()).unwrap();
    c.bench_function("miss_noop_register_then_invalidate", |b| {
        b.iter(|| {
            cache.get(mem.addr(), page).unwrap();
            imp.notify(mem.addr(), page, Event::Unmap).unwrap();
        })
    });
}

criterion_group!(benches, hits, miss);
criterion_main!(benches);
