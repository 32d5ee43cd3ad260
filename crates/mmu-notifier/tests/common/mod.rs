//! Subscribers that record what they see, shared by the behaviour tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use mmu_notifier::{
    Capabilities, Diagnostics, Event, Interval, IntervalNotifier, IntervalNotifierOps, Mm,
    MmuNotifierOps, Profile, Range, WouldBlock,
};

/// A shared event log: "name:what".
#[derive(Clone, Default)]
pub struct Log(pub Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// An address space with a collecting diagnostics sink.
pub fn mm_with(profile: Profile) -> (Mm, Arc<Diagnostics>) {
    let d = Diagnostics::collect();
    (
        Mm::builder()
            .profile(profile)
            .diagnostics(d.clone())
            .build(),
        d,
    )
}

pub fn mm() -> (Mm, Arc<Diagnostics>) {
    mm_with(Profile::Current)
}

pub fn range(start: u64, end: u64) -> Range {
    Range::new(start, end, Event::Unmap).unwrap()
}

/// A KVM-like list subscriber: a counter bumped in start and dropped in end (seed 004's "A").
pub struct Counter {
    pub name: &'static str,
    pub log: Log,
    pub in_progress: AtomicI64,
    pub starts: AtomicUsize,
    pub ends: AtomicUsize,
    pub releases: AtomicUsize,
    pub young: AtomicBool,
    pub young_calls: AtomicUsize,
    pub blockable_seen: Mutex<Vec<bool>>,
}

impl Counter {
    pub fn new(name: &'static str, log: &Log) -> Counter {
        Counter {
            name,
            log: log.clone(),
            in_progress: AtomicI64::new(0),
            starts: AtomicUsize::new(0),
            ends: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
            young: AtomicBool::new(false),
            young_calls: AtomicUsize::new(0),
            blockable_seen: Mutex::new(Vec::new()),
        }
    }
}

impl MmuNotifierOps for Counter {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
            | Capabilities::INVALIDATE_RANGE_END
            | Capabilities::RELEASE
            | Capabilities::YOUNG
    }
    fn release(&self, _mm: &Mm) {
        self.releases.fetch_add(1, SeqCst);
        self.log.push(format!("{}:release", self.name));
    }
    fn clear_flush_young(&self, _mm: &Mm, _s: u64, _e: u64) -> bool {
        self.young_calls.fetch_add(1, SeqCst);
        self.young.swap(false, SeqCst)
    }
    fn clear_young(&self, _mm: &Mm, _s: u64, _e: u64) -> bool {
        self.young_calls.fetch_add(1, SeqCst);
        self.young.swap(false, SeqCst)
    }
    fn test_young(&self, _mm: &Mm, _a: u64) -> bool {
        self.young_calls.fetch_add(1, SeqCst);
        self.young.load(SeqCst)
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        self.in_progress.fetch_add(1, SeqCst);
        self.starts.fetch_add(1, SeqCst);
        self.blockable_seen.lock().unwrap().push(r.is_blockable());
        self.log.push(format!("{}:start", self.name));
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        self.in_progress.fetch_sub(1, SeqCst);
        self.ends.fetch_add(1, SeqCst);
        self.log.push(format!("{}:end", self.name));
    }
}

/// Seed 004's "B": a start that try-locks and refuses when the lock is busy; no end.
pub struct Trylock {
    pub name: &'static str,
    pub log: Log,
    pub lock: Arc<Mutex<()>>,
    pub starts: AtomicUsize,
}

impl Trylock {
    /// A subscriber `name` logging to `log` whose starts take `lock` (try-lock when
    /// non-blockable).
    pub fn new(name: &'static str, log: &Log, lock: &Arc<Mutex<()>>) -> Trylock {
        Trylock {
            name,
            log: log.clone(),
            lock: lock.clone(),
            starts: AtomicUsize::new(0),
        }
    }
}

impl MmuNotifierOps for Trylock {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::START_CAN_FAIL
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        self.starts.fetch_add(1, SeqCst);
        self.log.push(format!("{}:start", self.name));
        let _g = r
            .lock_or_refuse(|| self.lock.lock().unwrap(), || self.lock.try_lock().ok())
            .ok_or(WouldBlock)?;
        Ok(())
    }
}

/// An interval subscriber: a device page table behind a user lock (hmm's dmirror).
pub struct Mirror {
    pub name: &'static str,
    pub log: Log,
    pub lock: Mutex<Vec<u64>>,
    pub calls: AtomicUsize,
    pub refuse: AtomicBool,
    pub events: Mutex<Vec<(Event, bool, u64, u64)>>,
}

impl Mirror {
    pub fn new(name: &'static str, log: &Log) -> Arc<Mirror> {
        Arc::new(Mirror {
            name,
            log: log.clone(),
            lock: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            refuse: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
        })
    }
}

/// Lets a test keep an `Arc` to the mirror it inserted.
pub struct MirrorRef(pub Arc<Mirror>);

impl IntervalNotifierOps for MirrorRef {
    fn invalidate(&self, iv: &Interval, r: &Range, cur_seq: u64) -> bool {
        let m = &self.0;
        m.calls.fetch_add(1, SeqCst);
        m.events
            .lock()
            .unwrap()
            .push((r.event(), r.is_blockable(), r.start(), r.end()));
        m.log.push(format!("{}:invalidate", m.name));
        if m.refuse.load(SeqCst) && !r.is_blockable() {
            return false;
        }
        let Some(mut pt) = r.lock_or_refuse(|| m.lock.lock().unwrap(), || m.lock.try_lock().ok())
        else {
            return false;
        };
        iv.set_seq(cur_seq);
        pt.clear();
        true
    }
}

/// Runs `f` on a new thread and checks that it has not returned 50 ms later (it must be blocked
/// on something the caller holds; `what` says what returning early would mean). Returns the
/// thread, for the caller to join once it lets go.
pub fn spawn_blocked<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let h = std::thread::spawn(move || {
        let t = f();
        d.store(true, SeqCst);
        t
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!done.load(SeqCst), "{what}");
    h
}

/// Inserts a recording [`Mirror`] named `name` over `len` bytes from `start` of `mm` (a test's
/// setup: panics if the insert fails).
pub fn insert_mirror(
    mm: &Mm,
    start: u64,
    len: u64,
    name: &'static str,
    log: &Log,
) -> IntervalNotifier {
    mm.interval_notifier_insert(start, len, MirrorRef(Mirror::new(name, log)))
        .unwrap()
}
