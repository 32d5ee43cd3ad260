//! Model tests (loom) of the contract's concurrency protocols, over the crate's real code.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p mmu-notifier --release --test loom_protocols`
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use loom::sync::{Arc, Mutex};
use loom::thread;

use mmu_notifier::{
    Capabilities, Event, Interval, IntervalNotifierOps, Mm, MmuNotifierOps, Range, WouldBlock,
};

/// Loom runs model threads on 32 KiB stacks; the contract's dispatch plus loom's own
/// bookkeeping needs more, so every model thread (the body included) gets this much.
const STACK: usize = 1 << 20;

fn big<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new().stack_size(STACK).spawn(f).unwrap()
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let f = std::sync::Arc::new(f);
    loom::model(move || {
        let f = f.clone();
        big(move || f()).join().unwrap();
    });
}

fn range(start: u64, end: u64) -> Range {
    Range::new(start, end, Event::Unmap).unwrap()
}

/// A one-page device page table holding the generation it was filled from.
struct Dev {
    pt: Mutex<Option<u64>>,
    removed: AtomicBool,
}
struct DevRef(Arc<Dev>);
impl IntervalNotifierOps for DevRef {
    fn invalidate(&self, iv: &Interval, _r: &Range, cur_seq: u64) -> bool {
        assert!(
            !self.0.removed.load(SeqCst),
            "callback after remove returned"
        );
        let mut pt = self.0.pt.lock().unwrap();
        iv.set_seq(cur_seq);
        *pt = None;
        true
    }
}

fn dev() -> Arc<Dev> {
    Arc::new(Dev {
        pt: Mutex::new(None),
        removed: AtomicBool::new(false),
    })
}

/// The read side of the collision-retry protocol: publish only if nothing changed.
fn fault(iv: &Interval, dev: &Dev, gen: &AtomicU64) -> bool {
    let seq = iv.read_begin();
    let g = gen.load(SeqCst);
    let mut pt = dev.pt.lock().unwrap();
    if iv.read_retry(seq) {
        return false;
    }
    *pt = Some(g);
    true
}

#[test]
fn sequence_protocol_never_leaves_a_stale_translation() {
    model(|| {
        let mm = Mm::new();
        let gen = Arc::new(AtomicU64::new(0));
        let d = dev();
        let iv = Arc::new(
            mm.interval_notifier_insert(0x1000, 0x1000, DevRef(d.clone()))
                .unwrap(),
        );
        let (mm2, gen2) = (mm.clone(), gen.clone());
        let inv = big(move || {
            let g = mm2.invalidate_range_start(range(0x1000, 0x2000));
            gen2.fetch_add(1, SeqCst);
            drop(g);
        });
        fault(&iv, &d, &gen);
        inv.join().unwrap();
        let pt = *d.pt.lock().unwrap();
        assert!(
            pt.is_none() || pt == Some(gen.load(SeqCst)),
            "stale: {pt:?}"
        );
        let st = mm.interval_state().unwrap();
        assert_eq!((st.active, st.seq % 2, st.deferred), (0, 0, 0));
    });
}

#[test]
fn insert_during_an_epoch_is_deferred_and_its_first_reader_is_safe() {
    model(|| {
        let mm = Mm::new();
        let gen = Arc::new(AtomicU64::new(0));
        let _x = mm
            .interval_notifier_insert(0x1000, 0x1000, DevRef(dev()))
            .unwrap();
        let (mm2, gen2) = (mm.clone(), gen.clone());
        let inv = big(move || {
            let g = mm2.invalidate_range_start(range(0x1000, 0x3000));
            gen2.fetch_add(1, SeqCst);
            drop(g);
        });
        let d = dev();
        let y = mm
            .interval_notifier_insert(0x2000, 0x1000, DevRef(d.clone()))
            .unwrap();
        fault(&y, &d, &gen);
        inv.join().unwrap();
        let pt = *d.pt.lock().unwrap();
        assert!(
            pt.is_none() || pt == Some(gen.load(SeqCst)),
            "stale: {pt:?}"
        );
        let st = mm.interval_state().unwrap();
        assert_eq!((st.active, st.deferred, st.intervals), (0, 0, 2));
    });
}

#[test]
fn remove_returns_only_after_the_last_callback() {
    model(|| {
        let mm = Mm::new();
        let d = dev();
        let x = mm
            .interval_notifier_insert(0x1000, 0x1000, DevRef(d.clone()))
            .unwrap();
        let mm2 = mm.clone();
        let inv = big(move || {
            drop(mm2.invalidate_range_start(range(0x1000, 0x2000)));
        });
        x.remove().unwrap();
        d.removed.store(true, SeqCst);
        inv.join().unwrap();
        let st = mm.interval_state().unwrap();
        assert_eq!((st.active, st.deferred, st.intervals), (0, 0, 0));
    });
}

struct Watch {
    gone: AtomicBool,
    in_progress: AtomicUsize,
    releases: AtomicUsize,
}
struct WatchRef(Arc<Watch>);
impl MmuNotifierOps for WatchRef {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
            | Capabilities::INVALIDATE_RANGE_END
            | Capabilities::RELEASE
    }
    fn release(&self, _mm: &Mm) {
        self.0.releases.fetch_add(1, SeqCst);
    }
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        assert!(!self.0.gone.load(SeqCst), "start after unregister returned");
        self.0.in_progress.fetch_add(1, SeqCst);
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {
        assert!(!self.0.gone.load(SeqCst), "end after unregister returned");
        self.0.in_progress.fetch_sub(1, SeqCst);
    }
}

fn watch() -> Arc<Watch> {
    Arc::new(Watch {
        gone: AtomicBool::new(false),
        in_progress: AtomicUsize::new(0),
        releases: AtomicUsize::new(0),
    })
}

#[test]
fn unregister_waits_for_in_flight_callbacks() {
    model(|| {
        let mm = Mm::new();
        let w = watch();
        let s = mm.register(WatchRef(w.clone())).unwrap();
        let mm2 = mm.clone();
        let inv = big(move || {
            drop(mm2.invalidate_range_start(range(0, 0x1000)));
        });
        s.unregister().unwrap();
        w.gone.store(true, SeqCst);
        inv.join().unwrap();
        assert_eq!(w.in_progress.load(SeqCst), 0, "start and end stayed paired");
        assert_eq!(w.releases.load(SeqCst), 1);
    });
}

#[test]
fn release_and_unregister_call_release_exactly_once() {
    model(|| {
        let mm = Mm::new();
        let w = watch();
        let s = mm.register(WatchRef(w.clone())).unwrap();
        let mm2 = mm.clone();
        let exit = big(move || mm2.release());
        s.unregister().unwrap();
        exit.join().unwrap();
        assert_eq!(w.releases.load(SeqCst), 1);
    });
}

struct Try(Arc<Mutex<()>>);
impl MmuNotifierOps for Try {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::START_CAN_FAIL
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        if r.is_blockable() {
            drop(self.0.lock().unwrap());
            return Ok(());
        }
        self.0.try_lock().map(drop).map_err(|_| WouldBlock)
    }
}

#[test]
fn a_refused_nonblocking_start_ends_every_successful_start() {
    model(|| {
        let mm = Mm::new();
        let w = watch();
        let lock = Arc::new(Mutex::new(()));
        let _a = mm.register(WatchRef(w.clone())).unwrap();
        let _b = mm.register(Try(lock.clone())).unwrap();
        let l2 = lock.clone();
        let holder = big(move || drop(l2.lock().unwrap()));
        let ok = match mm.invalidate_range_start_nonblock(range(0, 0x1000)) {
            Ok(g) => {
                assert_eq!(w.in_progress.load(SeqCst), 1);
                drop(g);
                true
            }
            Err(WouldBlock) => false,
        };
        holder.join().unwrap();
        let _ = ok;
        assert_eq!(w.in_progress.load(SeqCst), 0, "unpaired start");
    });
}
