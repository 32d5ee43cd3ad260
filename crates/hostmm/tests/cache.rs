//! The registration cache: protocol, limits, errors, and a real-thread stress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hostmm::{
    CacheConfig, Error, Event, HostMm, Mapping, MlockRegistrar, NoopRegistrar, PagemapRegistrar,
    RegCache, Registrar, RegistrarError, VaRange,
};

fn page() -> u64 {
    hostmm::page_size()
}

#[test]
fn miss_then_hit_and_stats() {
    let host = HostMm::new();
    let cache = RegCache::new(&host, NoopRegistrar, CacheConfig::default()).unwrap();
    let m = Mapping::anonymous(4 * page()).unwrap();
    let a = cache.get(m.addr(), 2 * page()).unwrap();
    let b = cache.get(m.addr() + 16, 100).unwrap(); // covered by the first entry
    assert!(a.is_valid() && b.is_valid());
    assert_eq!(b.range(), a.range());
    let s = cache.stats();
    assert_eq!(
        (s.hits, s.misses, s.entries, s.bytes),
        (1, 1, 1, 2 * page())
    );
    assert!(cache
        .lookup(m.addr() + 2 * page(), page())
        .unwrap()
        .is_none());
}

#[test]
fn bad_ranges_are_typed_errors() {
    let host = HostMm::new();
    let cache = RegCache::new(&host, NoopRegistrar, CacheConfig::default()).unwrap();
    assert!(matches!(cache.get(0x1000, 0), Err(Error::BadRange { .. })));
    assert!(matches!(
        cache.get(u64::MAX - 10, 100),
        Err(Error::BadRange { .. })
    ));
    assert!(matches!(cache.lookup(1, 0), Err(Error::BadRange { .. })));
    assert!(matches!(cache.is_free(1, 0), Err(Error::BadRange { .. })));
}

#[test]
fn bad_configs_are_typed_errors() {
    let host = HostMm::new();
    assert!(matches!(
        RegCache::new(
            &host,
            NoopRegistrar,
            CacheConfig {
                max_entries: 0,
                ..Default::default()
            }
        ),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        RegCache::new(
            &host,
            NoopRegistrar,
            CacheConfig {
                max_bytes: 1,
                ..Default::default()
            }
        ),
        Err(Error::Config(_))
    ));
}

#[test]
fn bracketed_munmap_invalidates_and_deregisters_before_reporting_free() {
    let host = HostMm::new();
    let cache = RegCache::new(&host, MlockRegistrar::new(), CacheConfig::default()).unwrap();
    let m = Mapping::anonymous(2 * page()).unwrap();
    m.write_u64(0, 1);
    let h = cache.get(m.addr(), 2 * page()).unwrap();
    assert_eq!(cache.registrar().pinned_bytes(), 2 * page());
    let (addr, len) = (m.addr(), m.len());
    m.unmap_via(&host).unwrap();
    assert!(!h.is_valid());
    assert!(cache.lookup(addr, len).unwrap().is_none());
    assert_eq!(cache.stats().invalidations, 1);
    assert!(cache.is_free(addr, len).unwrap());
    assert_eq!(
        cache.registrar().pinned_bytes(),
        0,
        "deregistered before the range was reported free"
    );
    assert_eq!(cache.stats().registered, 0);
}

#[test]
fn unmapped_memory_fails_to_register_with_a_typed_error() {
    let host = HostMm::new();
    let cache = RegCache::new(&host, MlockRegistrar::new(), CacheConfig::default()).unwrap();
    let m = Mapping::anonymous(page()).unwrap();
    let addr = m.addr();
    drop(m);
    match cache.get(addr, page()) {
        Err(Error::Register {
            source: RegistrarError::Sys { call: "mlock", .. },
            ..
        }) => {}
        other => panic!("expected a registration error, got {other:?}"),
    }
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn importer_notifications_invalidate() {
    let host = HostMm::new();
    let cache = RegCache::new(&host, NoopRegistrar, CacheConfig::default()).unwrap();
    let m = Mapping::anonymous(4 * page()).unwrap();
    let h = cache.get(m.addr(), 4 * page()).unwrap();
    let imp = host.importer().unwrap();
    imp.notify(m.addr() + 3 * page() + 5, 1, Event::Clear)
        .unwrap();
    assert!(!h.is_valid());
    let h2 = cache.get(m.addr(), 4 * page()).unwrap();
    {
        let _g = imp.begin(m.addr(), page(), Event::Unmap).unwrap();
        assert!(!h2.is_valid(), "invalid from start(), before the change");
    }
    assert!(matches!(
        imp.notify(0, 0, Event::Unmap),
        Err(Error::BadRange { .. })
    ));
}

#[test]
fn importer_pending_window_makes_lookups_wait() {
    let host = HostMm::new();
    let cache = Arc::new(RegCache::new(&host, NoopRegistrar, CacheConfig::default()).unwrap());
    let m = Mapping::anonymous(page()).unwrap();
    let addr = m.addr();
    cache.get(addr, page()).unwrap();
    let imp = host.importer().unwrap();
    let w = imp.pending_window();
    let c2 = cache.clone();
    let t = std::thread::spawn(move || c2.lookup(addr, 4096).unwrap().is_some());
    std::thread::sleep(std::time::Duration::from_millis(20));
    imp.notify(addr, page(), Event::Unmap).unwrap();
    drop(w);
    assert!(
        !t.join().unwrap(),
        "the lookup waited for the window and saw the invalidation"
    );
}

#[test]
fn protection_changes_do_not_drop_pinned_registrations_unless_asked() {
    let host = HostMm::new();
    let m = Mapping::anonymous(page()).unwrap();
    let lenient = RegCache::new(&host, NoopRegistrar, CacheConfig::default()).unwrap();
    let strict = RegCache::new(
        &host,
        NoopRegistrar,
        CacheConfig {
            invalidate_on_protection: true,
            ..Default::default()
        },
    )
    .unwrap();
    let a = lenient.get(m.addr(), page()).unwrap();
    let b = strict.get(m.addr(), page()).unwrap();
    // SAFETY: nothing references the mapping while it is read-only.
    unsafe { host.mprotect(m.addr(), page(), rustix::mm::MprotectFlags::READ) }.unwrap();
    assert!(a.is_valid());
    assert!(!b.is_valid());
}

#[test]
fn madvise_wrapper_invalidates_only_for_page_dropping_advice() {
    let host = HostMm::new();
    let cache = RegCache::new(&host, NoopRegistrar, CacheConfig::default()).unwrap();
    let m = Mapping::anonymous(page()).unwrap();
    let h = cache.get(m.addr(), page()).unwrap();
    // SAFETY: advisory only.
    unsafe { host.madvise(m.addr(), page(), rustix::mm::Advice::WillNeed) }.unwrap();
    assert!(h.is_valid());
    // SAFETY: nothing relies on the page's contents.
    unsafe { host.madvise(m.addr(), page(), rustix::mm::Advice::LinuxDontNeed) }.unwrap();
    assert!(!h.is_valid());
    // SAFETY: bad ranges never reach the kernel.
    assert!(matches!(
        unsafe { host.madvise(m.addr() + 1, page(), rustix::mm::Advice::LinuxDontNeed) },
        Err(Error::BadRange { .. })
    ));
}

#[test]
fn mremap_wrapper_invalidates_source_and_destination() {
    let host = HostMm::new();
    let cache = RegCache::new(&host, NoopRegistrar, CacheConfig::default()).unwrap();
    let a = Mapping::anonymous(page()).unwrap();
    let b = Mapping::anonymous(page()).unwrap();
    let ha = cache.get(a.addr(), page()).unwrap();
    let hb = cache.get(b.addr(), page()).unwrap();
    let (ra, rb) = (a.into_raw(), b.into_raw());
    // SAFETY: both mappings are ours; b's old contents are replaced.
    unsafe {
        host.mremap(
            ra.start(),
            page(),
            page(),
            rustix::mm::MremapFlags::MAYMOVE,
            Some(rb.start()),
        )
    }
    .unwrap();
    assert!(!ha.is_valid() && !hb.is_valid());
    // SAFETY: the moved mapping is ours.
    drop(unsafe { Mapping::from_raw(rb) });
}

#[test]
fn eviction_by_count_and_bytes_is_lru() {
    let host = HostMm::new();
    let cache = RegCache::new(
        &host,
        MlockRegistrar::new(),
        CacheConfig {
            max_entries: 4,
            max_bytes: 1 << 30,
            ..Default::default()
        },
    )
    .unwrap();
    let m = Mapping::anonymous(8 * page()).unwrap();
    let at = |i: u64| m.addr() + i * page();
    for i in 0..4 {
        cache.get(at(i), page()).unwrap();
    }
    cache.get(at(0), page()).unwrap(); // 0 is now recent
    cache.get(at(4), page()).unwrap(); // evicts the least recent: 1
    let s = cache.stats();
    assert_eq!((s.entries, s.evictions), (4, 1));
    assert!(cache.lookup(at(1), page()).unwrap().is_none());
    assert!(cache.lookup(at(0), page()).unwrap().is_some());
    assert_eq!(
        cache.registrar().pinned_bytes(),
        4 * page(),
        "evicted entries are deregistered"
    );

    let by_bytes = RegCache::new(
        &host,
        NoopRegistrar,
        CacheConfig {
            max_bytes: 2 * page(),
            ..Default::default()
        },
    )
    .unwrap();
    by_bytes.get(at(0), page()).unwrap();
    by_bytes.get(at(1), page()).unwrap();
    by_bytes.get(at(2), 2 * page()).unwrap();
    let s = by_bytes.stats();
    assert_eq!((s.entries, s.bytes), (1, 2 * page()));
}

/// A registrar that makes the range change while it registers, every time.
struct AlwaysCollides(HostMm);
impl Registrar for AlwaysCollides {
    type Registration = ();
    fn register(&self, r: VaRange) -> Result<(), RegistrarError> {
        self.0
            .importer()
            .map_err(|e| RegistrarError::Other(e.to_string()))?
            .notify(r.start(), r.len(), Event::Unmap)
            .unwrap();
        Ok(())
    }
    fn deregister(&self, _r: VaRange, _reg: &()) {}
    fn needs_pin(&self) -> bool {
        false // records no pages
    }
}

#[test]
fn a_miss_that_always_collides_gives_up_with_a_typed_error() {
    let host = HostMm::new();
    let cache = RegCache::new(
        &host,
        AlwaysCollides(host.clone()),
        CacheConfig {
            max_retries: 5,
            ..Default::default()
        },
    )
    .unwrap();
    let m = Mapping::anonymous(page()).unwrap();
    assert!(matches!(
        cache.get(m.addr(), page()),
        Err(Error::TooManyRetries { retries: 5, .. })
    ));
    assert_eq!(cache.stats().retries, 5);
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn pagemap_registrar_records_physical_frames_or_says_why_not() {
    match PagemapRegistrar::new() {
        Ok(p) => {
            let m = Mapping::anonymous(2 * page()).unwrap();
            let reg = p.register(m.range()).unwrap();
            assert_eq!(reg.frames.len(), 2);
            assert!(reg.frames.iter().all(|&f| f != 0));
            assert_eq!(p.frames(m.range()).unwrap(), reg.frames);
            p.deregister(m.range(), &reg);
        }
        Err(RegistrarError::NoFramePrivilege) => {
            eprintln!("skipping: frame numbers hidden (not root)")
        }
        Err(e) => panic!("unexpected {e}"),
    }
}

/// Records, per registration, how many invalidations had completed when it was made.
struct Versioned(Arc<AtomicU64>);
impl Registrar for Versioned {
    type Registration = u64;
    fn register(&self, _r: VaRange) -> Result<u64, RegistrarError> {
        Ok(self.0.load(Ordering::SeqCst))
    }
    fn deregister(&self, _r: VaRange, _reg: &u64) {}
    fn needs_pin(&self) -> bool {
        false // records no pages
    }
}

#[test]
fn stress_no_hit_predates_a_completed_invalidation() {
    // Two lookers and one invalidator (through an importer). After invalidation k completed,
    // no lookup that starts later may return a registration made before invalidation k began.
    let host = HostMm::new();
    let version = Arc::new(AtomicU64::new(0));
    let cache =
        Arc::new(RegCache::new(&host, Versioned(version.clone()), CacheConfig::default()).unwrap());
    let m = Mapping::anonymous(4 * page()).unwrap();
    let (addr, len) = (m.addr(), m.len());
    let completed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for t in 0..2u64 {
        let (cache, completed, stop, bad) =
            (cache.clone(), completed.clone(), stop.clone(), bad.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let before = completed.load(Ordering::SeqCst);
                let off = (t * page()) % len;
                if let Ok(h) = cache.get(addr + off, page()) {
                    if *h.registration() < before {
                        bad.lock().unwrap().push((before, *h.registration()));
                    }
                }
            }
        }));
    }
    let imp = host.importer().unwrap();
    // On a loaded machine the lookers may not have run yet: start once they have.
    while cache.stats().misses == 0 {
        std::thread::yield_now();
    }
    // At least 3000 invalidations, and on until the lookers have also hit between them (a
    // loaded machine may not schedule them for a while), within 20 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut k = 0;
    while k < 3000 || (cache.stats().hits == 0 && std::time::Instant::now() < deadline) {
        k += 1;
        // Registrations made from now on record k; invalidation k then runs and completes.
        version.store(k, Ordering::SeqCst);
        imp.notify(addr, len, Event::Unmap).unwrap();
        completed.store(k, Ordering::SeqCst);
        if k % 64 == 0 {
            std::thread::yield_now(); // let the lookers in between invalidations
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        bad.lock().unwrap().is_empty(),
        "stale hits: {:?}",
        &bad.lock().unwrap()[..]
    );
    let s = cache.stats();
    assert!(s.invalidations > 0 && s.hits > 0, "{s:?}");
}

/// Records the pages (here: only counts) with or without hostmm's pin first.
struct Recording {
    pin: Option<MlockRegistrar>,
    live: Arc<AtomicU64>,
}

impl Registrar for Recording {
    type Registration = ();
    fn register(&self, r: VaRange) -> Result<(), RegistrarError> {
        if let Some(p) = &self.pin {
            p.register(r)?;
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn deregister(&self, r: VaRange, _reg: &()) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        if let Some(p) = &self.pin {
            p.deregister(r, &());
        }
    }
}

#[test]
fn a_registrar_that_records_pages_without_the_pin_is_refused_and_released() {
    let host = HostMm::new();
    let live = Arc::new(AtomicU64::new(0));
    let unpinned = RegCache::new(
        &host,
        Recording {
            pin: None,
            live: live.clone(),
        },
        CacheConfig::default(),
    )
    .unwrap();
    let m = Mapping::anonymous(2 * page()).unwrap();
    match unpinned.get(m.addr(), m.len()) {
        Err(Error::Unpinned {
            start,
            len,
            unpinned,
        }) => {
            assert_eq!((start, len, unpinned), (m.addr(), m.len(), m.len()));
        }
        other => panic!("expected Unpinned, got {:?}", other.map(|h| h.range())),
    }
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "the refused registration is released"
    );
    assert_eq!(unpinned.stats().registered, 0);

    // The same registrar with the pin taken first is accepted.
    let pinned = RegCache::new(
        &host,
        Recording {
            pin: Some(MlockRegistrar::new()),
            live: live.clone(),
        },
        CacheConfig::default(),
    )
    .unwrap();
    let h = pinned.get(m.addr(), m.len()).unwrap();
    assert!(h.is_valid());
    assert_eq!(live.load(Ordering::SeqCst), 1);
}
