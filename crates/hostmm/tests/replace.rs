//! Issue 9, class 2: a miss that publishes over a dead, not yet flushed entry of the same range.
//!
//! The replaced entry used to be dropped while the cache's write lock was held (its interval
//! notifier's removal waits for any invalidation in flight, whose callback waits for that lock:
//! a deadlock under 4 x 4 threads), and its registration was never deregistered (a leak). Both
//! tests fail on that variant: the first counts a registration with no deregistration, the
//! second sees a lookup blocked for as long as an unrelated invalidation stays open.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostmm::{CacheConfig, Event, HostMm, Mapping, RegCache, Registrar, RegistrarError, VaRange};

fn page() -> u64 {
    hostmm::page_size()
}

type Hook = Arc<dyn Fn(u64, VaRange) + Send + Sync>;

/// Counts registrations and deregistrations, and runs a hook inside the n-th `register`.
struct Scripted {
    registers: AtomicU64,
    deregisters: AtomicU64,
    hook: Mutex<Option<Hook>>,
}

impl Scripted {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            registers: AtomicU64::new(0),
            deregisters: AtomicU64::new(0),
            hook: Mutex::new(None),
        })
    }
    fn set_hook(&self, h: impl Fn(u64, VaRange) + Send + Sync + 'static) {
        *self.hook.lock().unwrap() = Some(Arc::new(h));
    }
}

struct ScriptedRef(Arc<Scripted>);

impl Registrar for ScriptedRef {
    type Registration = ();
    fn register(&self, r: VaRange) -> Result<(), RegistrarError> {
        let n = self.0.registers.fetch_add(1, Ordering::SeqCst) + 1;
        // Called with the hook's lock released: hooks run registrations of their own.
        let hook = self.0.hook.lock().unwrap().clone();
        if let Some(h) = hook {
            h(n, r);
        }
        Ok(())
    }
    fn deregister(&self, _r: VaRange, _reg: &()) {
        self.0.deregisters.fetch_add(1, Ordering::SeqCst);
    }
    fn needs_pin(&self) -> bool {
        false // records no pages
    }
}

type Cache = RegCache<ScriptedRef>;

/// Sets up the race of issue 9 deterministically: a miss M of `range` (the caller's `get`)
/// registers (the range's registration 1); inside that registration another thread misses the same range, registers (2)
/// and publishes entry A; then an invalidation kills A and makes M collide. M registers again
/// (3) — `on_retry` runs there — and publishes over dead A, which no flush has removed yet.
fn scenario(
    host: &HostMm,
    range: VaRange,
    on_retry: impl Fn() + Send + Sync + 'static,
) -> (Arc<Cache>, Arc<Scripted>) {
    let reg = Scripted::new();
    let cache =
        Arc::new(RegCache::new(host, ScriptedRef(reg.clone()), CacheConfig::default()).unwrap());
    let weak = Arc::downgrade(&cache);
    let imp = Mutex::new(host.importer().unwrap());
    let of_range = AtomicU64::new(0);
    reg.set_hook(move |_, r| {
        if r != range {
            return;
        }
        match of_range.fetch_add(1, Ordering::SeqCst) + 1 {
            1 => {
                let other = weak.upgrade().expect("cache alive");
                std::thread::spawn(move || {
                    other.get(range.start(), range.len()).unwrap();
                })
                .join()
                .unwrap();
                imp.lock()
                    .unwrap()
                    .notify(r.start(), r.len(), Event::Unmap)
                    .unwrap();
            }
            3 => on_retry(),
            _ => {}
        }
    });
    (cache, reg)
}

#[test]
fn a_replaced_dead_entry_is_deregistered_not_leaked() {
    let host = HostMm::new();
    let m = Mapping::anonymous(2 * page()).unwrap();
    let (cache, reg) = scenario(&host, m.range(), || {});
    let h = cache.get(m.addr(), m.len()).unwrap();
    assert!(h.is_valid());
    let s = cache.stats();
    assert_eq!(s.retries, 1, "{s:?}");
    assert_eq!(s.invalidations, 1, "{s:?}");
    assert_eq!(reg.registers.load(Ordering::SeqCst), 3);
    // Registration 1 (collided) and 2 (A, replaced) are released; 3 is live.
    assert_eq!(reg.deregisters.load(Ordering::SeqCst), 2, "{s:?}");
    assert_eq!(s.registered, 1, "{s:?}");
    drop(h);
    drop(Arc::try_unwrap(cache).ok().expect("no other clone"));
    assert_eq!(
        reg.registers.load(Ordering::SeqCst),
        reg.deregisters.load(Ordering::SeqCst),
        "every registration is deregistered once the cache is gone"
    );
}

#[test]
fn publishing_over_a_dead_entry_waits_for_nothing_under_the_cache_lock() {
    let host = HostMm::new();
    let m = Mapping::anonymous(2 * page()).unwrap();
    let other = Mapping::anonymous(page()).unwrap();

    let third = Mapping::anonymous(page()).unwrap();
    // Thread H holds an invalidation of an unrelated cached range (entry C) open — an epoch of
    // the address space, as a callback stuck behind the cache lock would.
    let (open_tx, open_rx) = mpsc::channel::<()>();
    let (opened_tx, opened_rx) = mpsc::channel::<()>();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let third_addr = third.addr();
    let holder = {
        let host = host.clone();
        std::thread::spawn(move || {
            let imp = host.importer().unwrap();
            if open_rx.recv().is_err() {
                return;
            }
            let g = imp.begin(third_addr, page(), Event::Unmap).unwrap();
            opened_tx.send(()).unwrap();
            let _ = close_rx.recv();
            drop(g);
        })
    };
    let open_tx = Mutex::new(Some(open_tx));
    let opened_rx = Mutex::new(opened_rx);
    // In the miss's retry, the unrelated invalidation opens before it publishes.
    let (cache, reg) = scenario(&host, m.range(), move || {
        if let Some(tx) = open_tx.lock().unwrap().take() {
            tx.send(()).unwrap();
            opened_rx.lock().unwrap().recv().unwrap();
        }
    });
    drop(cache.get(other.addr(), other.len()).unwrap()); // an unrelated entry B
    drop(cache.get(third.addr(), third.len()).unwrap()); // entry C
    let publisher = {
        let (cache, addr, len) = (cache.clone(), m.addr(), m.len());
        std::thread::spawn(move || {
            cache.get(addr, len).unwrap();
        })
    };
    // Give the publisher time to reach the replacement.
    std::thread::sleep(Duration::from_millis(300));
    // A lookup of B must not wait for the open invalidation of an unrelated range.
    let done = Arc::new(AtomicBool::new(false));
    let looker = {
        let (cache, done, addr) = (cache.clone(), done.clone(), other.addr());
        std::thread::spawn(move || {
            assert!(cache.lookup(addr, page()).unwrap().is_some());
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut waited = Duration::ZERO;
    while !done.load(Ordering::SeqCst) && waited < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
        waited += Duration::from_millis(10);
    }
    let finished_while_open = done.load(Ordering::SeqCst);
    let _ = close_tx.send(());
    holder.join().unwrap();
    publisher.join().unwrap();
    looker.join().unwrap();
    assert!(
        finished_while_open,
        "a lookup waited for an unrelated invalidation: the miss held the cache lock while \
         dropping the replaced entry"
    );
    assert_eq!(cache.stats().retries, 1);
    drop(Arc::try_unwrap(cache).ok().expect("all clones joined"));
    assert_eq!(
        reg.registers.load(Ordering::SeqCst),
        reg.deregisters.load(Ordering::SeqCst)
    );
}
