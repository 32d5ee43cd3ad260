//! The registration cache: device registrations of virtual ranges that never go stale.
//!
//! # The race it closes
//!
//! A registration (pinning pages for a NIC or a GPU) is made *outside* the cache lock, because
//! it is slow. If the range is unmapped while it is being made, the registration describes
//! memory that is gone; a cache that then inserts it (libfabric) hands it out to every later
//! lookup — measured at 1–20 % of rounds under a concurrent unmap/remap.
//!
//! # The protocol (the kernel's `mmu_interval_read_begin`/`read_retry`)
//!
//! Each entry owns an [`IntervalNotifier`] over its range. A miss:
//!
//! 1. inserts the interval notifier, then takes `seq = read_begin()`;
//! 2. makes sure the uffd monitor (if any) watches the range — *after* `read_begin`, so a
//!    watch that trusted a registration the kernel had already dropped collides below;
//! 3. registers, with no lock held;
//! 4. takes the cache lock and publishes only if `read_retry(seq)` says no invalidation hit
//!    the range since step 1; otherwise it releases the registration and starts over.
//!
//! The notifier callback takes the same lock, calls `set_seq`, and marks a published entry
//! invalid. Lookups ignore invalid entries, and pass the [pending gate](crate::primary::gate) first, so
//! a hit never returns a registration whose range was invalidated before the lookup began —
//! including the uffd case where `munmap` returns before the monitor has processed its event.
//!
//! # Costs
//!
//! Hits take a per-thread reader slot of a [big-reader lock](crate::cache::brlock) (no shared cache
//! line written), check one gate counter and bump a per-slot counter. Invalid and evicted
//! entries are deregistered later, by [`flush`](RegCache::flush), which every miss runs first —
//! never on the invalidation path, which may be the uffd monitor thread — and always before the
//! cache reports a range free ([`is_free`](RegCache::is_free)) or registers it again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use mmu_notifier::{Event, Interval, IntervalNotifier, IntervalNotifierOps, Range};

use crate::cache::brlock::{BrLock, SLOTS};
use crate::cache::registrar::Registrar;
use crate::error::{Error, Result};
use crate::primary::host::HostMm;
use crate::primary::monitor::{UffdMonitor, Watch};
use crate::primitive::lock;
use crate::sys::va::VaRange;

/// Limits and behaviour of a [`RegCache`].
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Most entries kept; least recently used ones are evicted beyond it. At least 1.
    pub max_entries: usize,
    /// Most registered bytes kept. At least one page.
    pub max_bytes: u64,
    /// How many collisions with concurrent invalidations a miss tolerates before failing with
    /// [`Error::TooManyRetries`].
    pub max_retries: u32,
    /// Drop registrations on `ProtectionVma`/`ProtectionPage`/`SoftDirty` too. Off by default:
    /// those cannot move a pinned page.
    pub invalidate_on_protection: bool,
    /// The uffd monitor that must watch every cached range; `None` when invalidations come
    /// from bracketed calls or an importer.
    pub monitor: Option<UffdMonitor>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 1024,
            max_bytes: 1 << 32,
            max_retries: 10_000,
            invalidate_on_protection: false,
            monitor: None,
        }
    }
}

/// Counters of a cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to register.
    pub misses: u64,
    /// Published entries invalidated by a notifier callback.
    pub invalidations: u64,
    /// Misses that collided with an invalidation and registered again.
    pub retries: u64,
    /// Entries evicted by the count or byte limit.
    pub evictions: u64,
    /// Deregistrations completed.
    pub deregistrations: u64,
    /// Valid entries now.
    pub entries: usize,
    /// Bytes of valid entries now.
    pub bytes: u64,
    /// Registrations not yet deregistered (valid, or invalid and awaiting a flush).
    pub registered: usize,
}

struct EntryState {
    valid: AtomicBool,
    published: AtomicBool,
}

/// One cached registration.
struct Entry<R: Registrar> {
    range: VaRange,
    reg: R::Registration,
    state: Arc<EntryState>,
    last_used: AtomicU64,
    notifier: Mutex<Option<IntervalNotifier>>,
    watch: Mutex<Option<Watch>>,
    deregistered: AtomicBool,
}

/// A registration handed out by the cache. Valid until the range is invalidated or evicted;
/// check [`is_valid`](Self::is_valid) before handing it to a device again.
pub struct Handle<R: Registrar> {
    entry: Arc<Entry<R>>,
}

impl<R: Registrar> Clone for Handle<R> {
    fn clone(&self) -> Self {
        Self {
            entry: self.entry.clone(),
        }
    }
}

impl<R: Registrar> Handle<R> {
    /// The registered (page-aligned) range.
    pub fn range(&self) -> VaRange {
        self.entry.range
    }
    /// What the registrar returned.
    pub fn registration(&self) -> &R::Registration {
        &self.entry.reg
    }
    /// Whether no invalidation, eviction or deregistration has hit it yet.
    pub fn is_valid(&self) -> bool {
        self.entry.state.valid.load(Ordering::Acquire)
            && !self.entry.deregistered.load(Ordering::Acquire)
    }
}

impl<R: Registrar> std::fmt::Debug for Handle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("range", &self.entry.range)
            .field("valid", &self.is_valid())
            .finish()
    }
}

struct Map<R: Registrar> {
    entries: BTreeMap<(u64, u64), Arc<Entry<R>>>,
    max_len: u64,
    valid_count: usize,
    valid_bytes: u64,
}

impl<R: Registrar> Map<R> {
    /// A valid entry covering `want`, if any.
    fn covering(&self, want: VaRange) -> Option<&Arc<Entry<R>>> {
        for (&(s, e), entry) in self.entries.range(..=(want.start(), u64::MAX)).rev() {
            if s.saturating_add(self.max_len) < want.end() {
                break;
            }
            if e >= want.end() && entry.state.valid.load(Ordering::Acquire) {
                return Some(entry);
            }
        }
        None
    }

    fn overlaps_valid(&self, want: VaRange) -> bool {
        self.entries
            .range(..(want.end(), 0))
            .rev()
            .take_while(|(&(s, _), _)| s.saturating_add(self.max_len) > want.start())
            .any(|(&(s, e), en)| {
                s < want.end() && e > want.start() && en.state.valid.load(Ordering::Acquire)
            })
    }

    /// Marks a valid entry invalid; the caller counts it as dead.
    fn kill(&mut self, entry: &Entry<R>) -> bool {
        if entry.state.valid.swap(false, Ordering::AcqRel) {
            self.valid_count -= 1;
            self.valid_bytes -= entry.range.len();
            true
        } else {
            false
        }
    }
}

#[repr(align(128))]
#[derive(Default)]
struct SlotCounter(AtomicU64);

#[derive(Default)]
struct Counters {
    hits: [SlotCounter; SLOTS],
    misses: AtomicU64,
    invalidations: AtomicU64,
    retries: AtomicU64,
    evictions: AtomicU64,
    deregistrations: AtomicU64,
    registered: AtomicUsize,
}

struct Shared<R: Registrar> {
    host: HostMm,
    registrar: R,
    config: CacheConfig,
    map: BrLock<Map<R>>,
    /// LRU clock, advanced by misses only (hits never write a shared line for it).
    clock: AtomicU64,
    /// Entries marked invalid but still in the map.
    dead: AtomicUsize,
    /// Serializes flushes, so a range is reported free only after its deregistration ended.
    flush_lock: Mutex<()>,
    counters: Counters,
}

/// The interval-notifier callback of one entry.
struct EntryOps<R: Registrar> {
    cache: Weak<Shared<R>>,
    state: Arc<EntryState>,
}

fn invalidates(event: Event, on_protection: bool) -> bool {
    match event {
        Event::ProtectionVma | Event::ProtectionPage | Event::SoftDirty => on_protection,
        _ => true,
    }
}

impl<R: Registrar> IntervalNotifierOps for EntryOps<R> {
    /// Runs on the invalidating thread (a bracketed caller, an importer, the uffd monitor):
    /// takes the cache lock briefly, never allocates, never deregisters.
    fn invalidate(&self, interval: &Interval, range: &Range, cur_seq: u64) -> bool {
        let Some(sh) = self.cache.upgrade() else {
            interval.set_seq(cur_seq);
            return true;
        };
        let mut map = if range.is_blockable() {
            sh.map.write()
        } else {
            match sh.map.try_write() {
                Some(g) => g,
                None => return false,
            }
        };
        interval.set_seq(cur_seq);
        if self.state.published.load(Ordering::Acquire)
            && invalidates(range.event(), sh.config.invalidate_on_protection)
            && self.state.valid.swap(false, Ordering::AcqRel)
        {
            map.valid_count -= 1;
            // The entry's length is the interval's.
            map.valid_bytes -= interval.last() - interval.start() + 1;
            sh.dead.fetch_add(1, Ordering::AcqRel);
            sh.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        }
        drop(map);
        true
    }
}

/// A cache of registrations keyed by virtual range, coherent with this process's address space.
pub struct RegCache<R: Registrar> {
    shared: Arc<Shared<R>>,
}

impl<R: Registrar> RegCache<R> {
    /// A cache over `registrar`, invalidated through `host`.
    pub fn new(host: &HostMm, registrar: R, config: CacheConfig) -> Result<Self> {
        if config.max_entries == 0 {
            return Err(Error::Config("CacheConfig::max_entries must be at least 1"));
        }
        if config.max_bytes < crate::sys::va::page_size() {
            return Err(Error::Config(
                "CacheConfig::max_bytes must be at least one page",
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                host: host.clone(),
                registrar,
                config,
                map: BrLock::new(Map {
                    entries: BTreeMap::new(),
                    max_len: 0,
                    valid_count: 0,
                    valid_bytes: 0,
                }),
                clock: AtomicU64::new(1),
                dead: AtomicUsize::new(0),
                flush_lock: Mutex::new(()),
                counters: Counters::default(),
            }),
        })
    }

    /// The registrar.
    pub fn registrar(&self) -> &R {
        &self.shared.registrar
    }

    /// A hit only: the valid registration covering `[start, start + len)`, if cached.
    /// Never returns a registration whose range was invalidated before this call began.
    pub fn lookup(&self, start: u64, len: u64) -> Result<Option<Handle<R>>> {
        let want = VaRange::covering(start, len)?;
        Ok(self.hit(want))
    }

    fn hit(&self, want: VaRange) -> Option<Handle<R>> {
        let sh = &*self.shared;
        sh.host.gate().wait();
        let map = sh.map.read();
        let entry = map.covering(want)?;
        let now = sh.clock.load(Ordering::Relaxed);
        if entry.last_used.load(Ordering::Relaxed) != now {
            entry.last_used.store(now, Ordering::Relaxed);
        }
        sh.counters.hits[map.slot()]
            .0
            .fetch_add(1, Ordering::Relaxed);
        Some(Handle {
            entry: entry.clone(),
        })
    }

    /// The registration covering `[start, start + len)`: from the cache, or made now.
    ///
    /// Errors: [`Error::BadRange`]; [`Error::Register`] when the registrar fails (e.g. the range
    /// is not mapped); [`Error::TooManyRetries`]; monitor errors ([`Error::UffdBusy`], ...) when
    /// a uffd monitor cannot watch the range.
    ///
    /// Must not be called while this thread holds an invalidation open ([`Importer::begin`]
    /// guard), since a miss may wait for invalidations to end.
    ///
    /// [`Importer::begin`]: crate::Importer::begin
    pub fn get(&self, start: u64, len: u64) -> Result<Handle<R>> {
        let want = VaRange::covering(start, len)?;
        if let Some(h) = self.hit(want) {
            return Ok(h);
        }
        self.miss(want)
    }

    fn miss(&self, want: VaRange) -> Result<Handle<R>> {
        let sh = &*self.shared;
        sh.counters.misses.fetch_add(1, Ordering::Relaxed);
        // Deregister what died first: the registrar must never see a new registration of
        // bytes whose old one is still alive (munlock of the old would unpin the new).
        self.flush();
        let state = Arc::new(EntryState {
            valid: AtomicBool::new(false),
            published: AtomicBool::new(false),
        });
        let ops = EntryOps {
            cache: Arc::downgrade(&self.shared),
            state: state.clone(),
        };
        let notifier = sh
            .host
            .mm()
            .interval_notifier_insert(want.start(), want.len(), ops)?;
        let mut retries = 0u32;
        loop {
            let seq = notifier.read_begin();
            let watch = match &sh.config.monitor {
                Some(m) => Some(m.watch_range(want)?),
                None => None,
            };
            let reg = sh
                .registrar
                .register(want)
                .map_err(|source| Error::Register {
                    start: want.start(),
                    len: want.len(),
                    source,
                })?;
            // An unmap whose event was read before this point has released its thread; wait
            // for its invalidation so that `read_retry` below sees it (see `gate`).
            sh.host.gate().wait();
            let mut map = sh.map.write();
            if notifier.read_retry(seq) {
                drop(map);
                sh.registrar.deregister(want, &reg);
                drop(watch);
                retries += 1;
                sh.counters.retries.fetch_add(1, Ordering::Relaxed);
                if retries >= sh.config.max_retries {
                    return Err(Error::TooManyRetries {
                        start: want.start(),
                        len: want.len(),
                        retries,
                    });
                }
                continue;
            }
            if let Some(existing) = map.covering(want).cloned() {
                // Another thread published first; use its registration.
                drop(map);
                sh.registrar.deregister(want, &reg);
                return Ok(Handle { entry: existing });
            }
            let now = sh.clock.fetch_add(1, Ordering::Relaxed) + 1;
            state.valid.store(true, Ordering::Release);
            state.published.store(true, Ordering::Release);
            let entry = Arc::new(Entry {
                range: want,
                reg,
                state: state.clone(),
                last_used: AtomicU64::new(now),
                notifier: Mutex::new(Some(notifier)),
                watch: Mutex::new(watch),
                deregistered: AtomicBool::new(false),
            });
            // An entry of the same range that died since this miss's flush is replaced here. It
            // must not be dropped under the lock: dropping removes its interval notifier, which
            // waits for an invalidation in flight, whose callback waits for this lock. It is
            // finished (deregistered) below, after the lock is released.
            let replaced = map
                .entries
                .insert((want.start(), want.end()), entry.clone());
            if replaced.is_some() {
                // Only dead entries can be replaced (a valid one would have been `covering`),
                // and every dead entry in the map is counted in `dead`.
                sh.dead.fetch_sub(1, Ordering::AcqRel);
            }
            map.max_len = map.max_len.max(want.len());
            map.valid_count += 1;
            map.valid_bytes += want.len();
            sh.counters.registered.fetch_add(1, Ordering::Relaxed);
            let evicted = self.evict(&mut map, &entry);
            drop(map);
            if let Some(old) = replaced {
                self.finish(&old);
            }
            if evicted {
                self.flush();
            }
            return Ok(Handle { entry });
        }
    }

    /// Marks least-recently-used entries invalid until the limits hold (plus a little slack,
    /// so a full cache does not sort on every miss). Returns whether any was evicted.
    fn evict(&self, map: &mut Map<R>, keep: &Arc<Entry<R>>) -> bool {
        let sh = &*self.shared;
        let (max_n, max_b) = (sh.config.max_entries, sh.config.max_bytes);
        if map.valid_count <= max_n && map.valid_bytes <= max_b {
            return false;
        }
        let mut victims: Vec<(u64, Arc<Entry<R>>)> = map
            .entries
            .values()
            .filter(|e| e.state.valid.load(Ordering::Acquire) && !Arc::ptr_eq(e, keep))
            .map(|e| (e.last_used.load(Ordering::Relaxed), e.clone()))
            .collect();
        victims.sort_by_key(|(t, _)| *t);
        let slack = max_n / 32;
        let mut any = false;
        for (_, v) in victims {
            let over_n = map.valid_count > max_n.saturating_sub(slack).max(1);
            let over_b = map.valid_bytes > max_b;
            if !over_n && !over_b {
                break;
            }
            if map.kill(&v) {
                sh.dead.fetch_add(1, Ordering::AcqRel);
                sh.counters.evictions.fetch_add(1, Ordering::Relaxed);
                any = true;
            }
        }
        any
    }

    /// Deregisters every invalidated or evicted entry, now, on this thread. Misses call it;
    /// call it to release registrations promptly after unmapping.
    pub fn flush(&self) {
        let sh = &*self.shared;
        if sh.dead.load(Ordering::Acquire) == 0 {
            return;
        }
        let _serial = lock(&sh.flush_lock);
        let dead: Vec<Arc<Entry<R>>> = {
            let mut map = sh.map.write();
            let dead: Vec<_> = map
                .entries
                .values()
                .filter(|e| !e.state.valid.load(Ordering::Acquire))
                .cloned()
                .collect();
            for e in &dead {
                map.entries.remove(&(e.range.start(), e.range.end()));
            }
            sh.dead.fetch_sub(dead.len(), Ordering::AcqRel);
            dead
        };
        for e in dead {
            self.finish(&e);
        }
    }

    /// Ends an entry that is out of the map: stop watching, then deregister.
    fn finish(&self, e: &Entry<R>) {
        let sh = &*self.shared;
        // Dropping the notifier waits for an invalidation in flight on it; we hold no lock a
        // callback takes.
        drop(lock(&e.notifier).take());
        drop(lock(&e.watch).take());
        if !e.deregistered.swap(true, Ordering::AcqRel) {
            sh.registrar.deregister(e.range, &e.reg);
            sh.counters.deregistrations.fetch_add(1, Ordering::Relaxed);
            sh.counters.registered.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether no registration of this cache covers any byte of the range any more — reported
    /// only after every deregistration of it has completed.
    pub fn is_free(&self, start: u64, len: u64) -> Result<bool> {
        let want = VaRange::covering(start, len)?;
        self.flush();
        let _serial = lock(&self.shared.flush_lock);
        Ok(!self.shared.map.read().overlaps_valid(want))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let sh = &*self.shared;
        let c = &sh.counters;
        let map = sh.map.read();
        CacheStats {
            hits: c.hits.iter().map(|h| h.0.load(Ordering::Relaxed)).sum(),
            misses: c.misses.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            deregistrations: c.deregistrations.load(Ordering::Relaxed),
            entries: map.valid_count,
            bytes: map.valid_bytes,
            registered: c.registered.load(Ordering::Relaxed),
        }
    }
}

impl<R: Registrar> Drop for RegCache<R> {
    /// Deregisters everything. Removing each interval notifier waits for a callback in flight,
    /// so no callback outlives the cache.
    fn drop(&mut self) {
        let all: Vec<Arc<Entry<R>>> = {
            let mut map = self.shared.map.write();
            let all = map.entries.values().cloned().collect();
            map.entries.clear();
            all
        };
        for e in all {
            self.finish(&e);
        }
    }
}
