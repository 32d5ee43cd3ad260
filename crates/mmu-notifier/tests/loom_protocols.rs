//! Model tests (loom) of the contract's concurrency protocols, over the crate's real code.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p mmu-notifier --release
//! --test loom_protocols -- --nocapture` (each model prints how many executions it explored).
//!
//! # Models that can fail
//!
//! Each model is shown to catch the bug its name is about: built with
//! `--cfg mmn_broken="…"` (or `MMN_BROKEN=…` in the environment, see build.rs), the crate
//! (or, for `skip_set_seq`, the model's driver) runs a deliberately broken protocol, and the
//! models that must catch it are then expected to fail (`should_panic`):
//!
//! | `mmn_broken` | what is broken | models that must fail |
//! |---|---|---|
//! | `skip_set_seq` | the driver's callback does not record the sequence | every model with a reader: sequence protocol, several invalidators, deferred insert, insert/remove racing, first subscription, lock-free search |
//! | `end_before_start` | the interval epoch ends as soon as the callbacks ran, before the primary's change | the same six |
//! | `skip_grace_period` | unregister and registration do not wait for readers | unregister, release racing unregister and a callback, first subscription |
//! | `skip_pairing` | a refused non-blockable start ends nobody (the pre-5.12 bug) | pairing on refusal |
//! | `read_begin_relaxed` | `read_begin`'s lock-free check loads the published sequence `Relaxed` (src/itree.rs) | closed by another thread (since lazy closing, an epoch is mostly closed by its own reader under the lock, so the five reader models that caught this before no longer reach it at bound 3; this model has a second reader close it) |
//! | `no_reader_barrier` | a read section's entry skips its barrier (the half of the store-load pair that `membarrier` stands in for, src/srcu.rs) | unregister, release racing unregister and a callback, first subscription (and the bare protocol's models, `srcu::model` in the library) |
//! | `lazy_no_close` | an invalidation's end never closes the epoch, even when a reader, a remove or a queued tree change asked for it (src/itree.rs, "Lazy closing") | every model with a reader or a remove: sequence protocol, several invalidators, deferred insert, insert/remove racing, remove after the last callback, first subscription, lock-free search (a waiter sleeps forever: loom reports the deadlock) |
//! | `skip_gate` | an invalidation searches the interval tree without looking at the gate (a tree change or an epoch close may run under its search) | lock-free search vs tree changes, several invalidators, deferred insert, insert/remove racing, remove after the last callback, first subscription |
//!
//! `.ci/run` builds each variant and runs exactly those models.
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

/// Explores every execution of `f` (within the preemption bound) and prints how many there
/// were.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    model_capped(name, usize::MAX, f);
}

/// [`model`] with the preemption bound capped at `cap`: for the models whose executions grow
/// past millions at the bound CI runs the others at (their counts per bound are in the
/// crate's README).
fn model_capped(name: &str, cap: usize, f: impl Fn() + Sync + Send + 'static) {
    let f = std::sync::Arc::new(f);
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    // `Builder::new` reads `LOOM_MAX_PREEMPTIONS`.
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.map_or(cap, |b| b.min(cap)));
    let bound = builder.preemption_bound;
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = f.clone();
        big(move || f()).join().unwrap();
    });
    eprintln!(
        "loom model {name}: {} executions (preemption bound {})",
        runs.load(std::sync::atomic::Ordering::Relaxed),
        bound
            .filter(|&b| b != usize::MAX)
            .map_or("unbounded".into(), |b| b.to_string())
    );
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
        #[cfg(not(mmn_broken = "skip_set_seq"))]
        iv.set_seq(cur_seq);
        #[cfg(mmn_broken = "skip_set_seq")]
        let _ = (iv, cur_seq);
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

/// Whether the device's translation is stale: it holds a generation older than the current
/// one (it may be empty, or current).
fn assert_fresh(d: &Dev, gen: &AtomicU64) {
    let pt = *d.pt.lock().unwrap();
    assert!(
        pt.is_none() || pt == Some(gen.load(SeqCst)),
        "stale translation: {pt:?}, generation {}",
        gen.load(SeqCst)
    );
}

/// One invalidation of `[start, end)`: start, change the primary (a new generation), end.
fn invalidate(mm: &Mm, gen: &AtomicU64, start: u64, end: u64) {
    let g = mm.invalidate_range_start(range(start, end));
    gen.fetch_add(1, SeqCst);
    drop(g);
}

#[test]
#[cfg_attr(
    any(
        mmn_broken = "lazy_no_close",
        mmn_broken = "skip_set_seq",
        mmn_broken = "end_before_start"
    ),
    should_panic
)]
fn sequence_protocol_never_leaves_a_stale_translation() {
    stale_model("sequence_protocol", &[(0x1000, 0x2000)], 1, usize::MAX);
}

/// One interval, `faults` device faults on the main thread, and one invalidating thread per
/// range of `invalidators`: no stale translation, and the epoch closed at the end.
fn stale_model(name: &str, invalidators: &'static [(u64, u64)], faults: usize, cap: usize) {
    model_capped(name, cap, move || {
        let mm = Mm::new();
        let gen = Arc::new(AtomicU64::new(0));
        let d = dev();
        let iv = mm
            .interval_notifier_insert(0x1000, 0x1000, DevRef(d.clone()))
            .unwrap();
        let threads: Vec<_> = invalidators
            .iter()
            .map(|&(start, end)| {
                let (mm, gen) = (mm.clone(), gen.clone());
                big(move || invalidate(&mm, &gen, start, end))
            })
            .collect();
        for _ in 0..faults {
            fault(&iv, &d, &gen);
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_fresh(&d, &gen);
        let st = mm.interval_state().unwrap();
        assert_eq!((st.active, st.seq % 2, st.deferred), (0, 0, 0));
    });
}

/// Lazy closing lets another thread close the epoch (a reader that asked for the close and
/// was woken, or the ender that honoured its request), after which a second reader takes the
/// fast path: `read_begin` must then see the primary's change made before that close (its
/// load of the sequence word is `Acquire`, the closing store a release). A reader thread and
/// a faulting main thread against one invalidator.
///
/// Under `lazy_no_close` the never-woken reader makes loom abort the process (a panic while
/// unwinding the deadlocked threads) instead of reporting, so the model is skipped there; the
/// seven models above catch that variant.
#[test]
#[cfg_attr(
    any(
        mmn_broken = "skip_set_seq",
        mmn_broken = "end_before_start",
        mmn_broken = "read_begin_relaxed"
    ),
    should_panic
)]
#[cfg_attr(mmn_broken = "lazy_no_close", ignore)]
fn a_reader_after_an_epoch_closed_by_another_thread_sees_the_change() {
    model_capped("closed_by_another", 3, || {
        let mm = Mm::new();
        let gen = Arc::new(AtomicU64::new(0));
        let d = dev();
        let iv = Arc::new(
            mm.interval_notifier_insert(0x1000, 0x1000, DevRef(d.clone()))
                .unwrap(),
        );
        let inv = {
            let (mm, gen) = (mm.clone(), gen.clone());
            big(move || invalidate(&mm, &gen, 0x1000, 0x2000))
        };
        let other = {
            let (iv, d, gen) = (iv.clone(), d.clone(), gen.clone());
            big(move || {
                fault(&iv, &d, &gen);
            })
        };
        fault(&iv, &d, &gen);
        inv.join().unwrap();
        other.join().unwrap();
        assert_fresh(&d, &gen);
    });
}

#[test]
#[cfg_attr(
    any(
        mmn_broken = "lazy_no_close",
        mmn_broken = "skip_gate",
        mmn_broken = "skip_set_seq",
        mmn_broken = "end_before_start"
    ),
    should_panic
)]
fn several_invalidators_and_two_faults_never_leave_a_stale_translation() {
    // Two primaries invalidating overlapping ranges, each with its own epoch share, against a
    // device faulting twice: the epoch must stay odd until the last of them ends.
    stale_model(
        "several_invalidators",
        &[(0x1000, 0x2000), (0x0, 0x3000)],
        2,
        3,
    );
}

#[test]
#[cfg_attr(
    any(
        mmn_broken = "lazy_no_close",
        mmn_broken = "skip_gate",
        mmn_broken = "skip_set_seq",
        mmn_broken = "end_before_start"
    ),
    should_panic
)]
fn insert_during_an_epoch_is_deferred_and_its_first_reader_is_safe() {
    model("deferred_insert", || {
        let mm = Mm::new();
        let gen = Arc::new(AtomicU64::new(0));
        let _x = mm
            .interval_notifier_insert(0x1000, 0x1000, DevRef(dev()))
            .unwrap();
        let (mm2, gen2) = (mm.clone(), gen.clone());
        let inv = big(move || invalidate(&mm2, &gen2, 0x1000, 0x3000));
        let d = dev();
        let y = mm
            .interval_notifier_insert(0x2000, 0x1000, DevRef(d.clone()))
            .unwrap();
        fault(&y, &d, &gen);
        inv.join().unwrap();
        assert_fresh(&d, &gen);
        let st = mm.interval_state().unwrap();
        assert_eq!((st.active, st.deferred, st.intervals), (0, 0, 2));
    });
}

#[test]
#[cfg_attr(
    any(mmn_broken = "skip_gate", mmn_broken = "lazy_no_close"),
    should_panic
)]
fn remove_returns_only_after_the_last_callback() {
    // Two invalidations in flight: remove must outwait both.
    model_capped("remove_after_last_callback", 3, || {
        let mm = Mm::new();
        let d = dev();
        let x = mm
            .interval_notifier_insert(0x1000, 0x1000, DevRef(d.clone()))
            .unwrap();
        let spawn = |start: u64| {
            let mm = mm.clone();
            big(move || drop(mm.invalidate_range_start(range(start, start + 0x1000))))
        };
        let a = spawn(0x1000);
        let b = spawn(0x1000);
        x.remove().unwrap();
        d.removed.store(true, SeqCst);
        a.join().unwrap();
        b.join().unwrap();
        let st = mm.interval_state().unwrap();
        assert_eq!((st.active, st.deferred, st.intervals), (0, 0, 0));
    });
}

#[test]
#[cfg_attr(
    any(
        mmn_broken = "lazy_no_close",
        mmn_broken = "skip_gate",
        mmn_broken = "skip_set_seq",
        mmn_broken = "end_before_start"
    ),
    should_panic
)]
fn insert_and_remove_racing_an_invalidation_keep_the_tree_and_readers_right() {
    // One thread inserts a new interval and then removes another, while an invalidation
    // covering all of them runs: the insert may be deferred, the remove may have to wait, and
    // the new interval's first reader must not publish a stale translation.
    model("insert_remove_vs_invalidation", || {
        let mm = Mm::new();
        let gen = Arc::new(AtomicU64::new(0));
        let old = dev();
        let x = mm
            .interval_notifier_insert(0x1000, 0x1000, DevRef(old.clone()))
            .unwrap();
        let (mm2, gen2) = (mm.clone(), gen.clone());
        let inv = big(move || invalidate(&mm2, &gen2, 0x0, 0x4000));
        let d = dev();
        let y = mm
            .interval_notifier_insert(0x2000, 0x1000, DevRef(d.clone()))
            .unwrap();
        x.remove().unwrap();
        old.removed.store(true, SeqCst);
        fault(&y, &d, &gen);
        inv.join().unwrap();
        assert_fresh(&d, &gen);
        let st = mm.interval_state().unwrap();
        assert_eq!((st.active, st.deferred, st.intervals), (0, 0, 1));
    });
}

#[test]
#[cfg_attr(
    any(
        mmn_broken = "lazy_no_close",
        mmn_broken = "skip_gate",
        mmn_broken = "skip_grace_period",
        mmn_broken = "no_reader_barrier",
        mmn_broken = "skip_set_seq",
        mmn_broken = "end_before_start"
    ),
    should_panic
)]
fn the_first_subscription_waits_for_an_invalidation_begun_unsubscribed() {
    // The hole of issue 8: an invalidation begun while nothing was subscribed, against the
    // first insert and its reader.
    model("first_subscription", || {
        let mm = Mm::new();
        let gen = Arc::new(AtomicU64::new(0));
        let (mm2, gen2) = (mm.clone(), gen.clone());
        let inv = big(move || invalidate(&mm2, &gen2, 0x1000, 0x2000));
        let d = dev();
        let y = mm
            .interval_notifier_insert(0x1000, 0x1000, DevRef(d.clone()))
            .unwrap();
        fault(&y, &d, &gen);
        inv.join().unwrap();
        assert_fresh(&d, &gen);
    });
}

#[test]
#[cfg_attr(
    any(
        mmn_broken = "lazy_no_close",
        mmn_broken = "skip_gate",
        mmn_broken = "skip_set_seq",
        mmn_broken = "end_before_start"
    ),
    should_panic
)]
fn lock_free_searches_never_race_a_tree_change() {
    // Two invalidations search the tree without its lock, one hitting an interval and one
    // hitting none (the partially excluded state), while the main thread inserts an interval
    // and removes another under the lock and then faults on the new one: the tree is never
    // changed under a search (loom's cell reports it), the new interval's first reader
    // publishes nothing stale, and the epoch ends closed with nothing left deferred.
    model_capped("lock_free_search_vs_tree_change", 3, || {
        let mm = Mm::new();
        let gen = Arc::new(AtomicU64::new(0));
        let _x = mm
            .interval_notifier_insert(0x1000, 0x1000, DevRef(dev()))
            .unwrap();
        let z = mm
            .interval_notifier_insert(0x5000, 0x1000, DevRef(dev()))
            .unwrap();
        // Each primary change bumps the generation of the pages it covers: the miss covers
        // none of `y`'s, so it has its own.
        let spawn = |start: u64, gen: Arc<AtomicU64>| {
            let mm = mm.clone();
            big(move || invalidate(&mm, &gen, start, start + 0x3000))
        };
        let hit = spawn(0x1000, gen.clone());
        let miss = spawn(0x9000, Arc::new(AtomicU64::new(0)));
        let d = dev();
        let y = mm
            .interval_notifier_insert(0x2000, 0x1000, DevRef(d.clone()))
            .unwrap();
        z.remove().unwrap();
        fault(&y, &d, &gen);
        hit.join().unwrap();
        miss.join().unwrap();
        assert_fresh(&d, &gen);
        let st = mm.interval_state().unwrap();
        assert_eq!(
            (st.active, st.seq % 2, st.deferred, st.intervals),
            (0, 0, 0, 2)
        );
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
#[cfg_attr(
    any(mmn_broken = "skip_grace_period", mmn_broken = "no_reader_barrier"),
    should_panic
)]
fn unregister_waits_for_in_flight_callbacks() {
    // Two invalidators, one of them invalidating twice.
    model("unregister", || {
        let mm = Mm::new();
        let w = watch();
        let s = mm.register(WatchRef(w.clone())).unwrap();
        let spawn = |n: usize| {
            let mm = mm.clone();
            big(move || {
                for _ in 0..n {
                    drop(mm.invalidate_range_start(range(0, 0x1000)));
                }
            })
        };
        let a = spawn(2);
        let b = spawn(1);
        s.unregister().unwrap();
        w.gone.store(true, SeqCst);
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(w.in_progress.load(SeqCst), 0, "start and end stayed paired");
        assert_eq!(w.releases.load(SeqCst), 1);
    });
}

#[test]
#[cfg_attr(
    any(mmn_broken = "skip_grace_period", mmn_broken = "no_reader_barrier"),
    should_panic
)]
fn release_racing_unregister_and_a_callback_calls_release_exactly_once() {
    // exit_mmap, unregister and an invalidation at once: release runs exactly once, every
    // start the subscriber saw is ended, and no callback runs after unregister returned.
    model("release_vs_unregister_vs_callback", || {
        let mm = Mm::new();
        let w = watch();
        let s = mm.register(WatchRef(w.clone())).unwrap();
        let mm2 = mm.clone();
        let exit = big(move || mm2.release());
        let mm3 = mm.clone();
        let inv = big(move || drop(mm3.invalidate_range_start(range(0, 0x1000))));
        s.unregister().unwrap();
        w.gone.store(true, SeqCst);
        exit.join().unwrap();
        inv.join().unwrap();
        assert_eq!(w.releases.load(SeqCst), 1);
        assert_eq!(w.in_progress.load(SeqCst), 0, "start and end stayed paired");
    });
}

/// A subscriber whose non-blockable start refuses while its lock is busy (the `try_lock`
/// of seed 004's "B", reduced to the lock's state: loom does not explore a `try_lock` against
/// another thread's lock-unlock, but it does explore these atomics).
struct Try(Arc<AtomicBool>);
impl MmuNotifierOps for Try {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::START_CAN_FAIL
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        if !r.is_blockable() && self.0.load(SeqCst) {
            return Err(WouldBlock);
        }
        Ok(())
    }
}

#[test]
#[cfg_attr(mmn_broken = "skip_pairing", should_panic)]
fn a_refused_nonblocking_start_ends_every_successful_start() {
    model("pairing_on_refusal", || {
        let mm = Mm::new();
        let w = watch();
        let busy = Arc::new(AtomicBool::new(false));
        let _a = mm.register(WatchRef(w.clone())).unwrap();
        let _b = mm.register(Try(busy.clone())).unwrap();
        let b2 = busy.clone();
        // Another thread holds the subscriber's lock for a while.
        let holder = big(move || {
            b2.store(true, SeqCst);
            b2.store(false, SeqCst);
        });
        // The OOM reaper: a non-blockable attempt, then a retry.
        for _ in 0..2 {
            match mm.invalidate_range_start_nonblock(range(0, 0x1000)) {
                Ok(g) => {
                    assert_eq!(w.in_progress.load(SeqCst), 1);
                    drop(g);
                }
                Err(WouldBlock) => {
                    REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        holder.join().unwrap();
        assert_eq!(w.in_progress.load(SeqCst), 0, "unpaired start");
    });
    // The model must have explored a refusal, or it proved nothing about pairing.
    assert!(REFUSED.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

/// Refused starts seen over all executions of the pairing model.
static REFUSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
