//! The API a simulated kernel drives (issue 8, section 3): an interval reaches its address
//! space; users and references (`mm_users` / `mm_count`); the driver's own handle without a
//! `Mutex<Option<…>>`; `Arc<T>` subscribers; the lock-or-refuse idiom; the primary's
//! `mmap_lock` checked by the `_locked` variants.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use common::*;
use mmu_notifier::{
    Diagnostics, Error, Event, Interval, IntervalNotifierOps, IntervalRef, Mm, MmUser, MmapLock,
    Range, Warning,
};

/// Records every invalidation it gets, and whether it was the teardown.
#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    released: AtomicUsize,
}

impl IntervalNotifierOps for Seen {
    fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
        self.calls.fetch_add(1, SeqCst);
        if range.event() == Event::Release {
            self.released.fetch_add(1, SeqCst);
        }
        iv.set_seq(cur_seq);
        true
    }
}

#[test]
fn an_interval_and_its_handle_reach_their_address_space() {
    let (mm, _d) = mm();
    let iv = mm
        .interval_notifier_insert(0x1000, 0x1000, Seen::default())
        .unwrap();
    assert_eq!(iv.mm().id(), mm.id());
    /// An `hmm_range_fault`-style helper: the interval alone is enough.
    fn fault(iv: &Interval) -> u64 {
        let seq = iv.read_begin();
        assert!(iv.mm().interval_state().is_some());
        seq
    }
    let seq = fault(&iv);
    assert!(!iv.read_retry(seq));
    iv.remove().unwrap();
}

#[test]
fn the_last_user_gone_releases_exactly_once_and_subscribers_outlive_it_as_references() {
    let d = Diagnostics::collect();
    let user = Mm::builder().diagnostics(d.clone()).build_user();
    assert_eq!(user.users(), 1);
    let log = Log::default();
    let sub = user.register(Counter::new("kvm", &log)).unwrap();
    let seen = Arc::new(Seen::default());
    let iv = user
        .interval_notifier_insert(0x1000, 0x1000, seen.clone())
        .unwrap();
    let second = user.clone();
    assert_eq!(user.users(), 2);
    let reference: Mm = user.mm().clone();
    drop(user);
    assert!(!reference.is_released(), "one user is left");
    drop(second);
    assert!(reference.is_released(), "the last user tears it down");
    assert_eq!(reference.users(), 0);
    assert_eq!(sub.releases.load(SeqCst), 1);
    assert_eq!(seen.released.load(SeqCst), 1, "the teardown invalidation");
    assert!(reference.get_user().is_none(), "mmget_not_zero fails");
    // The handles still work as references, and nothing is released twice.
    sub.unregister().unwrap();
    iv.remove().unwrap();
    assert_eq!(log.take(), vec!["kvm:release".to_string()]);
    assert!(d.take().is_empty(), "no double release");
}

#[test]
fn a_user_taken_from_a_reference_keeps_the_address_space_in_use() {
    let (mm, _d) = mm();
    assert!(mm.get_user().is_none(), "built without a user");
    let user = MmUser::new();
    let log = Log::default();
    let sub = user.register(Counter::new("a", &log)).unwrap();
    let again = sub.mm().get_user().expect("still in use");
    drop(user);
    assert_eq!(sub.releases.load(SeqCst), 0);
    drop(again);
    assert_eq!(sub.releases.load(SeqCst), 1);
    // A subscription made through a user and dropped after the teardown: no second release.
    drop(sub);
    assert_eq!(log.take(), vec!["a:release".to_string()]);
}

/// A driver whose state keeps its own interval: the fault path needs only the driver.
struct Driver {
    me: IntervalRef,
    pages: Mutex<Vec<u64>>,
    hits: AtomicUsize,
}

impl IntervalNotifierOps for Driver {
    fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
        let Some(mut pages) =
            range.lock_or_refuse(|| self.pages.lock().unwrap(), || self.pages.try_lock().ok())
        else {
            return false;
        };
        // The handle the driver holds is the very interval being invalidated.
        let me = self.me.upgrade().expect("alive during a callback");
        assert!(std::ptr::eq(&*me, iv));
        iv.set_seq(cur_seq);
        pages.clear();
        self.hits.fetch_add(1, SeqCst);
        true
    }
}

impl Driver {
    fn fault(&self, frame: u64) -> bool {
        let Some(iv) = self.me.upgrade() else {
            return false;
        };
        loop {
            let seq = iv.read_begin();
            let mut pages = self.pages.lock().unwrap();
            if iv.read_retry(seq) {
                continue;
            }
            pages.push(frame);
            return true;
        }
    }
}

#[test]
fn insert_with_hands_the_driver_its_own_interval_without_a_mutex_option() {
    let (mm, _d) = mm();
    let mut made: Option<Arc<Driver>> = None;
    let iv = mm
        .interval_notifier_insert_with(0x1000, 0x2000, |me| {
            assert!(me.upgrade().is_none(), "not alive while being built");
            let d = Arc::new(Driver {
                me: me.clone(),
                pages: Mutex::new(Vec::new()),
                hits: AtomicUsize::new(0),
            });
            made = Some(d.clone());
            d
        })
        .unwrap();
    let driver = made.unwrap();
    assert!(driver.fault(7));
    assert_eq!(*driver.pages.lock().unwrap(), vec![7]);
    drop(mm.invalidate_range_start(range(0x1000, 0x2000)));
    assert_eq!(driver.hits.load(SeqCst), 1);
    assert!(driver.pages.lock().unwrap().is_empty());
    iv.remove().unwrap();
    assert!(!driver.fault(8), "the interval is gone with its handle");
}

#[test]
fn lock_or_refuse_takes_the_lock_when_blockable_and_refuses_when_busy() {
    let lock = Mutex::new(());
    let blockable = range(0, 0x1000);
    assert!(blockable
        .lock_or_refuse(|| lock.lock().unwrap(), || lock.try_lock().ok())
        .is_some());
    let (mm, _d) = mm();
    let log = Log::default();
    let busy = Arc::new(Mutex::new(()));
    let sub = mm.register(Trylock::new("b", &log, &busy)).unwrap();
    let held = busy.lock().unwrap();
    assert!(mm
        .invalidate_range_start_nonblock(range(0, 0x1000))
        .is_err());
    drop(held);
    assert!(mm.invalidate_range_start_nonblock(range(0, 0x1000)).is_ok());
    sub.unregister().unwrap();
}

/// A primary's mmap lock that knows whether "the current thread" holds it: a flag, enough
/// to exercise the check without the validator.
#[derive(Default)]
struct FlagLock {
    held: AtomicBool,
    might: AtomicUsize,
}

impl MmapLock for FlagLock {
    fn might_lock(&self) {
        self.might.fetch_add(1, SeqCst);
    }
    fn is_held(&self) -> bool {
        self.held.load(SeqCst)
    }
}

#[test]
fn locked_variants_check_the_mmap_lock_and_unlocked_ones_record_might_lock() {
    let d = Diagnostics::collect();
    let lock = Arc::new(FlagLock::default());
    let mm = Mm::builder()
        .diagnostics(d.clone())
        .mmap_lock(lock.clone())
        .build();
    let log = Log::default();

    let a = mm.register(Counter::new("a", &log)).unwrap();
    let iv = mm
        .interval_notifier_insert(0x1000, 0x1000, Seen::default())
        .unwrap();
    assert_eq!(lock.might.load(SeqCst), 2);
    assert!(d.take().is_empty());

    // Not held: each `_locked` variant reports, and goes on as the kernel's WARN does.
    let b = mm.register_locked(Counter::new("b", &log)).unwrap();
    let iv2 = mm
        .interval_notifier_insert_locked(0x3000, 0x1000, Seen::default())
        .unwrap();
    let g = mm.notifier_get_locked(|_| Counter::new("g", &log)).unwrap();
    assert_eq!(
        d.take(),
        vec![
            Warning::MmapLockNotHeld {
                api: "register_locked"
            },
            Warning::MmapLockNotHeld {
                api: "interval_notifier_insert_locked"
            },
            Warning::MmapLockNotHeld {
                api: "notifier_get_locked"
            },
        ]
    );
    // Held: silent, and they record no might_lock (the caller holds it already).
    lock.held.store(true, SeqCst);
    let c = mm.register_locked(Counter::new("c", &log)).unwrap();
    let g2 = mm.notifier_get_locked(|_| Counter::new("g", &log)).unwrap();
    assert!(g2.same_as(&g));
    assert!(d.take().is_empty());
    assert_eq!(lock.might.load(SeqCst), 2);
    for s in [a, b, c] {
        s.unregister().unwrap();
    }
    drop((g, g2));
    iv.remove().unwrap();
    iv2.remove().unwrap();
}

#[test]
fn insert_after_release_is_a_typed_error() {
    let user = MmUser::new();
    let mm = user.mm().clone();
    drop(user);
    assert!(matches!(
        mm.interval_notifier_insert_with(0, 0x1000, |_| Seen::default()),
        Err(Error::Released)
    ));
    assert!(matches!(
        mm.interval_notifier_insert(0, 0, Seen::default()),
        Err(Error::Overflow { .. })
    ));
}
