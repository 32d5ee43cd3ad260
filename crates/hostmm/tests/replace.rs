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

use hostmm::{
    CacheConfig, Event, HostMm, Mapping, RegCache, Registrar, RegistrarError,
    VaRange,
};

fn page() -> u64 {
    hostmm::page_size()
}

type Hook = Box<dyn Fn(u64, VaRange) + Send + Sync>;

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
        *self.hook.lock().unwrap() = Some(Box::new(h));
    }
}

struct ScriptedRef(Arc<Scripted>);

impl Registrar for ScriptedRef {
    type Registration = ();
    fn register(&self, r: VaRange) -> Result<(), RegistrarError> {
        let n = self.0.registers.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(h) = &*self.0.hook.lock().unwrap() {
            h(n, r);
        }
        Ok(())
    }
    fn deregister(&self, _r: VaRange, _reg: &()) {
        self.0.deregisters.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_replaced_dead_entry_is_deregistered_not_leaked() {
    let host = HostMm::new();
    let reg = Scripted::new();
    let cache = RegCache::new(&host, ScriptedRef(reg.clone()), CacheConfig::default()).unwrap();
    let m = Mapping::anonymous(2 * page()).unwrap();
    drop(cache.get(m.addr(), m.len()).unwrap()); // entry A, registration 1
    // Evict nothing; invalidate A and make this miss's notifier collide, after the miss's flush:
    // inside registration 2. Registration 3 then publishes over dead A.
    let imp = Mutex::new(host.importer().unwrap());
    reg.set_hook(move |n, r| {
        if n == 2 {
            imp.lock()
                .unwrap()
                .notify(r.start(), r.len(), Event::Unmap)
                .unwrap();
        }
    });
    assert!(cache.lookup(m.addr(), m.len()).unwrap().is_some());
    let h = cache.get(m.addr(), m.len()).unwrap();
    assert!(h.is_valid());
    let s = cache.stats();
    assert_eq!(s.retries, 1, "{s:?}");
    assert_eq!(reg.registers.load(Ordering::SeqCst), 3);
    // Registration 1 (A) and registration 2 (collided) are released; 3 is live.
    assert_eq!(reg.deregisters.load(Ordering::SeqCst), 2, "{s:?}");
    assert_eq!(s.registered, 1, "{s:?}");
    drop(h);
    drop(cache);
    assert_eq!(
        reg.registers.load(Ordering::SeqCst),
        reg.deregisters.load(Ordering::SeqCst),
        "every registration is deregistered once the cache is gone"
    );
}

#[test]
fn publishing_over_a_dead_entry_waits_for_nothing_under_the_cache_lock() {
    let host = HostMm::new();
    let reg = Scripted::new();
    let cache = Arc::new(RegCache::new(&host, ScriptedRef(reg.clone()), CacheConfig::default()).unwrap());
    let m = Mapping::anonymous(2 * page()).unwrap();
    let other = Mapping::anonymous(page()).unwrap();
    drop(cache.get(m.addr(), m.len()).unwrap()); // entry A
    drop(cache.get(other.addr(), other.len()).unwrap()); // an unrelated entry B

    // Thread H holds an invalidation of an unrelated range open (an epoch of the address space),
    // as a callback stuck behind the cache lock would.
    let (open_tx, open_rx) = mpsc::channel::<()>();
    let (opened_tx, opened_rx) = mpsc::channel::<()>();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let holder = {
        let host = host.clone();
        std::thread::spawn(move || {
            let imp = host.importer().unwrap();
            open_rx.recv().unwrap();
            let scratch = Mapping::anonymous(page()).unwrap();
            let g = imp.begin(scratch.addr(), page(), Event::Unmap).unwrap();
            opened_tx.send(()).unwrap();
            close_rx.recv().unwrap();
            drop(g);
        })
    };
    let imp = Mutex::new(host.importer().unwrap());
    let open_tx = Mutex::new(Some(open_tx));
    let opened_rx = Mutex::new(opened_rx);
    reg.set_hook(move |n, r| match n {
        // Registration 3 (the miss's first try): A dies and the miss collides.
        3 => imp
            .lock()
            .unwrap()
            .notify(r.start(), r.len(), Event::Unmap)
            .unwrap(),
        // Registration 4 (its retry): the unrelated invalidation opens before it publishes.
        4 => {
            if let Some(tx) = open_tx.lock().unwrap().take() {
                tx.send(()).unwrap();
                opened_rx.lock().unwrap().recv().unwrap();
            }
        }
        _ => {}
    });
    let publisher = {
        let (cache, addr, len) = (cache.clone(), m.addr(), m.len());
        std::thread::spawn(move || {
            cache.get(addr, len).unwrap();
        })
    };
    // Give the publisher time to reach the replacement.
    std::thread::sleep(Duration::from_millis(200));
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
    close_tx.send(()).unwrap();
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
