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
//! A hit takes no lock and performs no read-modify-write on a shared line: it loads one gate
//! counter, enters a read-side section (a store to its own thread's slot), searches the
//! [published](crate::cache::publish) [index](crate::cache::index) (one hash probe when the lookup
//! starts where a cached range starts), takes a strong reference on the entry (upgrading a weak
//! one: the one read-modify-write left, on the entry's own line, as any `Arc`-returning cache
//! pays for its [`Handle`]), checks the entry's validity flag through it (the flag is read only
//! through a live entry: one an index still points to after its removal may have been
//! dropped), and counts itself in a [per-thread tally](crate::cache::tally).
//!
//! Writers — a miss publishing, an invalidation callback, an eviction, a flush — serialize on
//! one mutex over the authoritative map. Only a change of the *set* of entries (publish, flush)
//! republishes the index: a miss that adds a range appends it in place to the published
//! index's short tail (`O(1)`; the arrays are rebuilt, `O(entries)`, once the tail is full),
//! a removal rebuilds it (see [`index`](crate::cache::index) for why the tail is sound); an
//! invalidation or eviction only clears the entry's validity flag, which every hit checks. A hit may read an index one change
//! old: it then misses an entry just published (and the miss path finds it under the lock) or
//! finds an entry already removed, whose flag is clear. The argument for the promise:
//! an invalidation clears the flag (release) before the invalidating call returns or, under
//! uffd, before the pending window closes; a lookup that starts after that return passes the
//! gate and loads the flag (acquire), so it sees it clear whichever index it searched.
//!
//! The index points at entries through *anchors* (weak references): an anchor leaves the map
//! only in the same critical section that publishes an index without it, and is then
//! [retired](crate::cache::publish::retire) — dropped after every reader pinned at that moment has
//! left — so every pointer a hit reads stays allocated. The entry itself (and its registration)
//! still ends with its last strong reference, never later: a hit upgrades the weak reference and
//! fails on an entry already gone. `tests/loom_publish.rs` model-checks the publication order
//! and the lookup that follows an unmap, and the grace period.
//!
//! Invalid and evicted
//! entries are deregistered later, by [`flush`](RegCache::flush), which every miss runs first —
//! never on the invalidation path, which may be the uffd monitor thread — and always before the
//! cache reports a range free ([`is_free`](RegCache::is_free)) or registers it again.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};

use mmu_notifier::{Event, Interval, IntervalNotifier, IntervalNotifierOps, Range};

use crate::cache::index::{search_back, Index};
use crate::cache::publish::{self, Published};
use crate::cache::registrar::{self, Registrar};
use crate::cache::tally::Tally;
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

/// One weak reference to an entry, held as the raw pointer the [`Index`] stores. It keeps the
/// entry's *allocation* alive — what a hit dereferences — without keeping the entry (and its
/// registration, which some registrars release in `Drop`) alive: the entry still ends with its
/// last [`Handle`] or its removal from the map, exactly when it did before hits went lock-free.
struct Anchor<T>(NonNull<T>);

// SAFETY: an `Anchor<T>` is a `Weak<T>`, which is `Send`/`Sync` when `T: Send + Sync`.
unsafe impl<T: Send + Sync> Send for Anchor<T> {}
// SAFETY: see above.
unsafe impl<T: Send + Sync> Sync for Anchor<T> {}

impl<T> Anchor<T> {
    fn new(of: &Arc<T>) -> Self {
        let p = Weak::into_raw(Arc::downgrade(of));
        // SAFETY: the weak reference of a live `Arc` points at its (non-null) value.
        Self(unsafe { NonNull::new_unchecked(p.cast_mut()) })
    }
}

impl<T> Drop for Anchor<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Weak::into_raw` and this anchor owns that weak count.
        drop(unsafe { Weak::from_raw(self.0.as_ptr()) });
    }
}

/// A strong reference to a *live* entry pointed to by `anchor` (the hit's upgrade).
///
/// # Safety
/// `p` must be the pointer of an [`Anchor`] that is still alive (in the map, or retired after a
/// guard the caller holds was pinned).
unsafe fn upgrade<T>(p: NonNull<T>) -> Option<Arc<T>> {
    // SAFETY: `p` came from `Weak::into_raw` and a weak count is held for it (the anchor); the
    // borrowed `Weak` is never dropped, so that count is not released here.
    let weak = std::mem::ManuallyDrop::new(unsafe { Weak::from_raw(p.as_ptr()) });
    weak.upgrade()
}

/// A map record: the entry, and the anchor the index points to.
struct Rec<R: Registrar> {
    entry: Arc<Entry<R>>,
    anchor: Anchor<Entry<R>>,
}

impl<R: Registrar> Rec<R> {
    fn new(entry: Arc<Entry<R>>) -> Self {
        let anchor = Anchor::new(&entry);
        Self { entry, anchor }
    }
}

/// The authoritative map: records sorted by `(start, end)` in flat arrays, so the index a hit
/// searches is rebuilt from them by copying (a `BTreeMap` walk cost ~8 ns an entry).
struct Map<R: Registrar> {
    starts: Vec<u64>,
    ends: Vec<u64>,
    recs: Vec<Rec<R>>,
    max_len: u64,
    valid_count: usize,
    valid_bytes: u64,
}

impl<R: Registrar> Map<R> {
    fn new() -> Self {
        Self {
            starts: Vec::new(),
            ends: Vec::new(),
            recs: Vec::new(),
            max_len: 0,
            valid_count: 0,
            valid_bytes: 0,
        }
    }

    fn valid(&self, i: usize) -> bool {
        self.recs[i].entry.state.valid.load(Ordering::Acquire)
    }

    /// A valid entry covering `want`, if any.
    fn covering(&self, want: VaRange) -> Option<&Arc<Entry<R>>> {
        let i = search_back(
            &self.starts,
            &self.ends,
            self.max_len,
            want.start(),
            want.end(),
            |i| self.valid(i),
        )?;
        Some(&self.recs[i].entry)
    }

    fn overlaps_valid(&self, want: VaRange) -> bool {
        let upto = self.starts.partition_point(|&s| s < want.end());
        (0..upto)
            .rev()
            .take_while(|&i| self.starts[i].saturating_add(self.max_len) > want.start())
            .any(|i| self.ends[i] > want.start() && self.valid(i))
    }

    /// Inserts `rec` at its place; returns the record of the same range it replaces.
    fn insert(&mut self, rec: Rec<R>) -> Option<Rec<R>> {
        let (s, e) = (rec.entry.range.start(), rec.entry.range.end());
        let mut at = self.starts.partition_point(|&x| x < s);
        while at < self.starts.len() && self.starts[at] == s && self.ends[at] < e {
            at += 1;
        }
        if at < self.starts.len() && self.starts[at] == s && self.ends[at] == e {
            return Some(std::mem::replace(&mut self.recs[at], rec));
        }
        self.starts.insert(at, s);
        self.ends.insert(at, e);
        self.recs.insert(at, rec);
        None
    }

    /// The position of the record of exactly `range`.
    fn position(&self, range: VaRange) -> Option<usize> {
        let (s, e) = (range.start(), range.end());
        let at = self.starts.partition_point(|&x| x < s);
        (at..self.starts.len())
            .take_while(|&i| self.starts[i] == s)
            .find(|&i| self.ends[i] == e)
    }

    /// Takes out the records of invalid entries, keeping the order of the rest.
    fn take_dead(&mut self) -> Vec<Rec<R>> {
        let mut dead = Vec::new();
        let recs = std::mem::take(&mut self.recs);
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        for (i, rec) in recs.into_iter().enumerate() {
            if rec.entry.state.valid.load(Ordering::Acquire) {
                starts.push(self.starts[i]);
                ends.push(self.ends[i]);
                self.recs.push(rec);
            } else {
                dead.push(rec);
            }
        }
        self.starts = starts;
        self.ends = ends;
        dead
    }

    /// Takes out every record.
    fn take_all(&mut self) -> Vec<Rec<R>> {
        self.starts.clear();
        self.ends.clear();
        std::mem::take(&mut self.recs)
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

#[derive(Default)]
struct Counters {
    hits: Tally,
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
    /// The authoritative map; every writer holds this lock.
    map: Mutex<Map<R>>,
    /// What hits search: rebuilt from `map` when a range leaves it or the tail is full; a range
    /// added is appended to its tail in place.
    index: Published<Index<Entry<R>>>,
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
            lock(&sh.map)
        } else {
            match sh.map.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return false,
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
                map: Mutex::new(Map::new()),
                index: Published::new(Index::empty()),
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
        let guard: publish::Guard = publish::pin();
        let mut entry = None;
        sh.index
            .read(&guard)
            .covering(want.start(), want.end(), |p| {
                // Upgrade first, then read the flag through the live entry: the anchor keeps the
                // allocation, not the entry, and an entry an index still points to after its
                // removal may have been dropped (its state with it).
                // SAFETY: every pointer in a published index is an anchor's, kept alive while a
                // guard pinned before the index was replaced lives (see the module documentation).
                let Some(e) = (unsafe { upgrade(p) }) else {
                    return false;
                };
                if !e.state.valid.load(Ordering::Acquire) {
                    return false;
                }
                entry = Some(e);
                true
            })?;
        let me = guard.thread_index();
        drop(guard);
        let entry = entry?;
        // LRU: the clock moves on misses only, so a steady stream of hits writes nothing here.
        let now = sh.clock.load(Ordering::Relaxed);
        if entry.last_used.load(Ordering::Relaxed) != now {
            entry.last_used.store(now, Ordering::Relaxed);
        }
        sh.counters.hits.add_one_at(me);
        Some(Handle { entry })
    }

    /// Appends `added`, just inserted into `map`, to the published index's tail in place;
    /// rebuilds and republishes the index when the tail is full. Called with the map locked.
    fn publish_added(&self, map: &MutexGuard<'_, Map<R>>, added: VaRange) {
        let guard = publish::pin();
        // Every publication holds the map's lock, so this is the index published last: its
        // pointers are anchors still in the map (none was removed without a rebuild since),
        // and no other writer appends to it meanwhile. Reading it before the lock would not be
        // sound (see `index.rs`).
        let cur = self.shared.index.read(&guard);
        let appended = map
            .position(added)
            .is_some_and(|i| cur.push(added.start(), added.end(), map.recs[i].anchor.0));
        drop(guard);
        if !appended {
            self.republish(map, Vec::new());
        }
    }

    /// Rebuilds the index from `map` and publishes it; then retires `removed` (the anchors of
    /// entries just taken out of `map`), which the old index may still point to. Called with the
    /// map locked.
    fn republish(&self, map: &MutexGuard<'_, Map<R>>, removed: Vec<Anchor<Entry<R>>>) {
        let index = Index::build(
            &map.starts,
            &map.ends,
            map.recs.iter().map(|r| r.anchor.0).collect(),
            map.max_len,
        );
        self.shared.index.replace(index);
        if !removed.is_empty() {
            publish::retire(removed);
        }
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
            if sh.registrar.needs_pin() {
                let unpinned = registrar::unpinned_bytes(want);
                if unpinned != 0 {
                    sh.registrar.deregister(want, &reg);
                    return Err(Error::Unpinned {
                        start: want.start(),
                        len: want.len(),
                        unpinned,
                    });
                }
            }
            // An unmap whose event was read before this point has released its thread; wait
            // for its invalidation so that `read_retry` below sees it (see `gate`).
            sh.host.gate().wait();
            let mut map = lock(&sh.map);
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
            let replaced = map.insert(Rec::new(entry.clone()));
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
            let old = match replaced {
                Some(r) => {
                    self.republish(&map, vec![r.anchor]);
                    Some(r.entry)
                }
                None => {
                    self.publish_added(&map, want);
                    None
                }
            };
            drop(map);
            if let Some(old) = old {
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
            .recs
            .iter()
            .map(|r| &r.entry)
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
            let mut map = lock(&sh.map);
            let (dead, anchors): (Vec<_>, Vec<_>) = map
                .take_dead()
                .into_iter()
                .map(|r| (r.entry, r.anchor))
                .unzip();
            sh.dead.fetch_sub(dead.len(), Ordering::AcqRel);
            self.republish(&map, anchors);
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
        Ok(!lock(&self.shared.map).overlaps_valid(want))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let sh = &*self.shared;
        let c = &sh.counters;
        let map = lock(&sh.map);
        CacheStats {
            hits: c.hits.sum(),
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
            let mut map = lock(&self.shared.map);
            let (all, anchors) = map
                .take_all()
                .into_iter()
                .map(|r| (r.entry, r.anchor))
                .unzip();
            self.republish(&map, anchors);
            all
        };
        for e in all {
            self.finish(&e);
        }
    }
}
