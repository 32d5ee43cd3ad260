//! One test (or a few) per row of the feature table F1–F15 and F18 (the feature table in the
//! repository's `docs/contract.md`), plus the
//! seed-004 scenario in miniature.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mmu_notifier::{
    Capabilities, DiagMode, Diagnostics, Error, Event, Interval, IntervalNotifierOps, Mm,
    MmuNotifierOps, Owner, Profile, Range, Warning, WouldBlock,
};

// ---------------------------------------------------------------- F1 lazy per-mm state

#[test]
fn f1_state_is_created_on_first_subscription_only() {
    let (mm, _d) = mm();
    assert!(!mm.has_notifiers());
    drop(mm.invalidate_range_start(range(0, 4096)));
    assert!(
        mm.invalidate_range_start_nonblock(range(0, 4096)).is_ok(),
        "with no subscriber a non-blockable start cannot fail"
    );
    assert!(!mm.has_notifiers(), "an invalidation must not create state");
    assert!(mm.interval_state().is_none());
    let log = Log::default();
    let s = mm.register(Counter::new("a", &log)).unwrap();
    assert!(mm.has_notifiers());
    s.unregister().unwrap();
    assert!(
        mm.has_notifiers(),
        "the state lives until the address space itself is dropped"
    );
}

// ---------------------------------------------------------------- F2 list subscriber ops

#[test]
fn f2_clear_young_ors_every_subscriber_and_test_young_stops_at_first_yes() {
    let (mm, _d) = mm();
    let log = Log::default();
    let old = mm.register(Counter::new("old", &log)).unwrap();
    let new = mm.register(Counter::new("new", &log)).unwrap();
    old.young.store(true, SeqCst);
    assert!(mm.clear_flush_young(0, 4096));
    assert_eq!(old.young_calls.load(SeqCst), 1);
    assert_eq!(
        new.young_calls.load(SeqCst),
        1,
        "clear ops call every subscriber"
    );
    assert!(!mm.clear_young(0, 4096), "the young bit was cleared");

    new.young.store(true, SeqCst);
    old.young.store(true, SeqCst);
    let (o, n) = (old.young_calls.load(SeqCst), new.young_calls.load(SeqCst));
    assert!(mm.test_young(0x1000));
    assert_eq!(new.young_calls.load(SeqCst), n + 1);
    assert_eq!(
        old.young_calls.load(SeqCst),
        o,
        "test_young stops at the first subscriber that says yes (newest first)"
    );
    assert!(new.young.load(SeqCst), "test_young does not clear");
}

struct ArcTlb(AtomicUsize);
impl MmuNotifierOps for ArcTlb {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ARCH_INVALIDATE_SECONDARY_TLBS
    }
    fn arch_invalidate_secondary_tlbs(&self, _mm: &Mm, start: u64, end: u64) {
        assert!(start < end);
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn f2_only_declared_callbacks_are_called() {
    let (mm, _d) = mm();
    let log = Log::default();
    let tlb = mm.register(ArcTlb(AtomicUsize::new(0))).unwrap();
    let kvm = mm.register(Counter::new("kvm", &log)).unwrap();
    mm.arch_invalidate_secondary_tlbs(0, 8192);
    drop(mm.invalidate_range_start(range(0, 8192)));
    assert_eq!(tlb.0.load(SeqCst), 1);
    assert_eq!(kvm.starts.load(SeqCst), 1);
    assert_eq!(log.take(), ["kvm:start", "kvm:end"]);
}

// ---------------------------------------------------------------- F3 exclusivity

struct Declares(Capabilities);
impl MmuNotifierOps for Declares {
    fn capabilities(&self) -> Capabilities {
        self.0
    }
}

#[test]
fn f3_forbidden_callback_combinations_are_typed_errors_at_register() {
    let (mm, _d) = mm();
    use Capabilities as C;
    for bad in [
        C::ARCH_INVALIDATE_SECONDARY_TLBS | C::INVALIDATE_RANGE_START,
        C::ARCH_INVALIDATE_SECONDARY_TLBS | C::INVALIDATE_RANGE_END,
        C::INVALIDATE_RANGE_START | C::START_CAN_FAIL | C::INVALIDATE_RANGE_END,
        C::START_CAN_FAIL,
    ] {
        assert!(
            matches!(mm.register(Declares(bad)), Err(Error::InvalidOps(_))),
            "{bad:?} must be refused"
        );
    }
    assert!(
        !mm.has_notifiers(),
        "a refused registration leaves nothing behind"
    );
    assert!(mm
        .register(Declares(C::ARCH_INVALIDATE_SECONDARY_TLBS))
        .is_ok());
}

// ---------------------------------------------------------------- F4 range

struct SeesRange(Mutex<Vec<Range>>);
impl MmuNotifierOps for SeesRange {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        self.0.lock().unwrap().push(*r);
        Ok(())
    }
}

#[test]
fn f4_range_reaches_subscribers_with_event_owner_and_flags() {
    let (mm, _d) = mm();
    let s = mm.register(SeesRange(Mutex::new(Vec::new()))).unwrap();
    for ev in Event::ALL {
        let r = Range::new(0x1000, 0x2000, ev).unwrap().with_owner(Owner(7));
        drop(mm.invalidate_range_start(r));
    }
    let seen = s.0.lock().unwrap();
    assert_eq!(seen.len(), 8);
    for (r, ev) in seen.iter().zip(Event::ALL) {
        assert_eq!(
            (r.start(), r.end(), r.event(), r.owner()),
            (0x1000, 0x2000, ev, Some(Owner(7)))
        );
    }
    assert!(matches!(
        Range::new(5, 5, Event::Clear),
        Err(Error::EmptyRange { .. })
    ));
    assert!(matches!(
        Range::new(6, 5, Event::Clear),
        Err(Error::EmptyRange { .. })
    ));
}

// ---------------------------------------------------------------- F5 / F6 start variants

#[test]
fn f5_blockable_start_sets_blockable_and_ignores_a_refusal_with_a_report() {
    let (mm, d) = mm();
    let log = Log::default();
    let lock = Arc::new(Mutex::new(()));
    let a = mm.register(Counter::new("a", &log)).unwrap();
    // A subscriber that refuses even in blockable context (a contract violation).
    struct Rude;
    impl MmuNotifierOps for Rude {
        fn capabilities(&self) -> Capabilities {
            Capabilities::INVALIDATE_RANGE_START | Capabilities::START_CAN_FAIL
        }
        fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
            Err(WouldBlock)
        }
    }
    let _rude = mm.register(Rude).unwrap();
    let g = mm.invalidate_range_start(range(0, 4096));
    assert!(g.range().is_blockable());
    assert_eq!(
        a.in_progress.load(SeqCst),
        1,
        "start cannot fail: A is inside"
    );
    drop(g);
    assert_eq!(a.in_progress.load(SeqCst), 0);
    assert_eq!(*a.blockable_seen.lock().unwrap(), [true]);
    assert_eq!(d.count_kind("blockable-start-failed"), 1);
    drop(lock);
}

#[test]
fn f6_nonblock_start_clears_blockable_and_fails_with_would_block() {
    let (mm, _d) = mm();
    let log = Log::default();
    let lock = Arc::new(Mutex::new(()));
    let b = mm.register(Trylock::new("b", &log, &lock)).unwrap();
    let g = mm.invalidate_range_start_nonblock(range(0, 4096)).unwrap();
    assert!(!g.range().is_blockable());
    drop(g);
    let held = lock.lock().unwrap();
    assert_eq!(
        mm.invalidate_range_start_nonblock(range(0, 4096)).err(),
        Some(WouldBlock)
    );
    drop(held);
    assert_eq!(b.starts.load(SeqCst), 2);
}

// ---------------------------------------------------------------- F7 pairing (seed 004)

fn seed004(profile: Profile) -> (i64, usize, Vec<String>) {
    let (mm, _d) = mm_with(profile);
    let log = Log::default();
    let lock = Arc::new(Mutex::new(()));
    let a = mm.register(Counter::new("A", &log)).unwrap();
    let b = mm.register(Trylock::new("B", &log, &lock)).unwrap();
    let c = mm.register(Counter::new("C", &log)).unwrap();
    // Someone holds B's lock while the OOM reaper tries the address space.
    let held = lock.lock().unwrap();
    let r = mm.invalidate_range_start_nonblock(range(0, 1 << 20));
    assert_eq!(r.err(), Some(WouldBlock));
    drop(held);
    assert_eq!(b.starts.load(SeqCst), 1);
    assert_eq!(
        c.starts.load(SeqCst),
        1,
        "a failure does not stop the other starts"
    );
    (a.in_progress.load(SeqCst), a.ends.load(SeqCst), log.take())
}

#[test]
fn f7_nonblock_failure_pairs_every_successful_start() {
    let (a_count, a_ends, log) = seed004(Profile::Current);
    assert_eq!(
        a_count, 0,
        "A's counter is balanced after the refused invalidation"
    );
    assert_eq!(a_ends, 1);
    // Newest first: C, B (refuses), A; then the compensating ends for C and A only.
    assert_eq!(log, ["C:start", "B:start", "A:start", "C:end", "A:end"]);
}

#[test]
fn f7_pre_5_12_profile_reproduces_the_unpaired_start() {
    let (a_count, a_ends, log) = seed004(Profile::Pre5_12);
    assert_eq!(
        a_count, 1,
        "the seed-004 bug: A is left inside an invalidation forever"
    );
    assert_eq!(a_ends, 0);
    assert_eq!(log, ["C:start", "B:start", "A:start"]);
}

// ---------------------------------------------------------------- F8 dispatch order

#[test]
fn f8_intervals_by_ascending_start_then_list_newest_first() {
    let (mm, _d) = mm();
    let log = Log::default();
    let _old = mm.register(Counter::new("old", &log)).unwrap();
    let _new = mm.register(Counter::new("new", &log)).unwrap();
    let hi = insert_mirror(&mm, 0x3000, 0x1000, "hi", &log);
    let lo = insert_mirror(&mm, 0x1000, 0x1000, "lo", &log);
    let _miss = insert_mirror(&mm, 0x9000, 0x1000, "miss", &log);
    drop(mm.invalidate_range_start(range(0, 0x8000)));
    assert_eq!(
        log.take(),
        [
            "lo:invalidate",
            "hi:invalidate",
            "new:start",
            "old:start",
            "new:end",
            "old:end"
        ]
    );
    drop((hi, lo));
}

#[test]
fn f8_an_interval_refusal_stops_dispatch_before_the_list() {
    let (mm, _d) = mm();
    let log = Log::default();
    let a = mm.register(Counter::new("a", &log)).unwrap();
    let m = Mirror::new("m", &log);
    m.refuse.store(true, SeqCst);
    let _iv = mm
        .interval_notifier_insert(0x1000, 0x1000, MirrorRef(m.clone()))
        .unwrap();
    assert!(mm
        .invalidate_range_start_nonblock(range(0, 0x8000))
        .is_err());
    assert_eq!(log.take(), ["m:invalidate"]);
    assert_eq!(a.starts.load(SeqCst), 0);
    let st = mm.interval_state().unwrap();
    assert_eq!(
        (st.active, st.invalidating()),
        (0, false),
        "the epoch is closed"
    );
}

// ---------------------------------------------------------------- F9 interval notifier

#[test]
fn f9_insert_rejects_zero_length_and_overflow() {
    let (mm, _d) = mm();
    let log = Log::default();
    for (s, l) in [(0x1000, 0), (u64::MAX, 2), (2, u64::MAX)] {
        assert_eq!(
            mm.interval_notifier_insert(s, l, MirrorRef(Mirror::new("x", &log)))
                .err(),
            Some(Error::Overflow {
                start: s,
                length: l
            })
        );
    }
    // The largest legal interval ends exactly at u64::MAX.
    let iv = insert_mirror(&mm, 0, u64::MAX, "all", &log);
    assert_eq!((iv.start(), iv.last()), (0, u64::MAX - 1));
    let top = insert_mirror(&mm, u64::MAX, 1, "top", &log);
    assert_eq!(top.last(), u64::MAX);
}

#[test]
fn f9_only_overlapping_intervals_are_invalidated_and_read_retry_sees_it() {
    let (mm, _d) = mm();
    let log = Log::default();
    let hit = Mirror::new("hit", &log);
    let miss = Mirror::new("miss", &log);
    let a = mm
        .interval_notifier_insert(0x1000, 0x2000, MirrorRef(hit.clone()))
        .unwrap();
    let b = mm
        .interval_notifier_insert(0x3000, 0x1000, MirrorRef(miss.clone()))
        .unwrap();
    let (sa, sb) = (a.read_begin(), b.read_begin());
    assert_eq!(sa % 2, 1, "interval sequences are odd");
    assert!(!a.read_retry(sa) && !a.check_retry(sa));
    drop(mm.invalidate_range_start(range(0x2fff, 0x3000)));
    assert_eq!((hit.calls.load(SeqCst), miss.calls.load(SeqCst)), (1, 0));
    assert!(a.read_retry(sa) && a.check_retry(sa));
    assert!(
        !b.read_retry(sb),
        "the half-open end 0x3000 does not touch b"
    );
    let sa2 = a.read_begin();
    assert_ne!(sa2, sa);
    assert!(!a.read_retry(sa2));
}

// ---------------------------------------------------------------- F10 sequence scheme

#[test]
fn f10_sequence_is_odd_only_while_an_interval_is_hit_and_deferred_ops_apply_at_last_end() {
    let (mm, _d) = mm();
    let log = Log::default();
    let a = insert_mirror(&mm, 0x1000, 0x1000, "a", &log);
    let st = mm.interval_state().unwrap();
    assert_eq!(
        (st.seq, st.active, st.intervals),
        (2, 0, 1),
        "starts at 2, idle"
    );

    let g_miss = mm.invalidate_range_start(range(0x8000, 0x9000));
    let st = mm.interval_state().unwrap();
    assert_eq!(
        (st.seq, st.active),
        (2, 1),
        "partially excluded: active, still even"
    );

    let g_hit = mm.invalidate_range_start(range(0x1000, 0x2000));
    let st = mm.interval_state().unwrap();
    assert_eq!((st.seq, st.active), (3, 2), "fully excluded: odd");

    // Inserts and removes are deferred while the tree is frozen.
    let b = insert_mirror(&mm, 0x5000, 0x1000, "b", &log);
    assert_eq!(mm.interval_state().unwrap().deferred, 1);
    assert_eq!(mm.interval_state().unwrap().intervals, 1);

    drop(g_hit);
    let st = mm.interval_state().unwrap();
    assert_eq!(
        (st.seq, st.active, st.deferred),
        (3, 1, 1),
        "not the last end yet"
    );
    drop(g_miss);
    let st = mm.interval_state().unwrap();
    assert_eq!((st.seq, st.active, st.deferred, st.intervals), (4, 0, 0, 2));
    drop((a, b));
    assert_eq!(mm.interval_state().unwrap().intervals, 0);
}

// ---------------------------------------------------------------- F11 read_begin

#[test]
fn f11_read_begin_waits_only_for_an_epoch_that_hit_its_interval() {
    let (mm, _d) = mm();
    let log = Log::default();
    let a = Arc::new(insert_mirror(&mm, 0x1000, 0x1000, "a", &log));
    let b = insert_mirror(&mm, 0x8000, 0x1000, "b", &log);
    let g = mm.invalidate_range_start(range(0x1000, 0x2000));
    // b was not hit: no wait even though the sequence is odd.
    let sb = b.read_begin();
    assert!(!b.read_retry(sb));
    // a was hit: read_begin blocks until the invalidation ends.
    let a2 = a.clone();
    let h = spawn_blocked("read_begin returned inside the hitting epoch", move || {
        a2.read_begin()
    });
    drop(g);
    let s = h.join().unwrap();
    assert!(!a.read_retry(s));
    drop(b);
    Arc::try_unwrap(a).unwrap().remove().unwrap();
}

/// Lazy closing (src/itree.rs): the epoch a hit opened stays open after its invalidation
/// ended, and the first reader of the hit interval closes it itself when nothing is active
/// (no wait: it returns at once with the sequence the hit recorded, and `read_retry` is
/// false); with another invalidation active, even one that hit nothing and began after the
/// hit had ended, the reader waits for it (Linux would not: the difference the module
/// documentation names), and returns at its end.
#[test]
fn lazy_closing_a_reader_closes_an_idle_epoch_and_waits_for_a_later_unrelated_invalidation() {
    let (mm, _d) = mm();
    let log = Log::default();
    let a = Arc::new(insert_mirror(&mm, 0x1000, 0x1000, "a", &log));
    // Hit, ended, nothing active: the reader closes the epoch and does not wait.
    drop(mm.invalidate_range_start(range(0x1000, 0x2000)));
    let s = a.read_begin();
    assert!(!a.read_retry(s));
    let st = mm.interval_state().unwrap();
    assert_eq!((st.active, st.invalidating()), (0, false));
    // Hit, ended, then an unrelated invalidation (hitting nothing) begins and stays active.
    drop(mm.invalidate_range_start(range(0x1000, 0x2000)));
    let unrelated = mm.invalidate_range_start(range(0x9000, 0xa000));
    let a2 = a.clone();
    let h = spawn_blocked(
        "the reader must wait for the active invalidation (lazy closing)",
        move || a2.read_begin(),
    );
    drop(unrelated);
    let s = h.join().unwrap();
    assert!(!a.read_retry(s));
    assert!(!mm.interval_state().unwrap().invalidating());
    Arc::try_unwrap(a).unwrap().remove().unwrap();
}

#[test]
fn insert_during_an_open_epoch_makes_the_first_read_begin_wait() {
    let (mm, _d) = mm();
    let log = Log::default();
    let _a = insert_mirror(&mm, 0x1000, 0x1000, "a", &log);
    for hit_existing in [true, false] {
        // Odd epoch (deferred insert) and even-but-active epoch (immediate insert, forced odd).
        let r = if hit_existing {
            range(0x1000, 0x2000)
        } else {
            range(0x7000, 0x8000)
        };
        let g = mm.invalidate_range_start(r);
        let n = Arc::new(insert_mirror(&mm, 0x7000, 0x1000, "n", &log));
        let n2 = n.clone();
        let h = spawn_blocked(
            &format!("first read_begin must wait (hit_existing={hit_existing})"),
            move || n2.read_begin(),
        );
        drop(g);
        h.join().unwrap();
        Arc::try_unwrap(n).unwrap().remove().unwrap();
    }
}

// ---------------------------------------------------------------- F12 remove

#[test]
fn f12_remove_cancels_a_pending_insert_without_waiting() {
    let (mm, _d) = mm();
    let log = Log::default();
    let _a = insert_mirror(&mm, 0x1000, 0x1000, "a", &log);
    let g = mm.invalidate_range_start(range(0x1000, 0x2000));
    let n = insert_mirror(&mm, 0x9000, 0x1000, "n", &log);
    assert_eq!(mm.interval_state().unwrap().deferred, 1);
    n.remove().unwrap(); // would hang here if it waited for `g`
    assert_eq!(mm.interval_state().unwrap().deferred, 0);
    drop(g);
    assert_eq!(mm.interval_state().unwrap().intervals, 1);
}

#[test]
fn remove_while_an_invalidation_is_in_flight_waits_for_its_end() {
    let (mm, _d) = mm();
    let log = Log::default();
    let m = Mirror::new("a", &log);
    let a = mm
        .interval_notifier_insert(0x1000, 0x1000, MirrorRef(m.clone()))
        .unwrap();
    let g = mm.invalidate_range_start(range(0x1000, 0x2000));
    let h = spawn_blocked("remove returned while the epoch was open", move || {
        a.remove().unwrap()
    });
    assert_eq!(mm.interval_state().unwrap().deferred, 1);
    drop(g);
    h.join().unwrap();
    let st = mm.interval_state().unwrap();
    assert_eq!((st.intervals, st.deferred), (0, 0));
    drop(mm.invalidate_range_start(range(0x1000, 0x2000)));
    assert_eq!(m.calls.load(SeqCst), 1, "no callback after remove returned");
}

struct RemovesItself {
    slot: Mutex<Option<mmu_notifier::IntervalNotifier>>,
    result: Mutex<Option<Result<(), Error>>>,
}
struct RemovesItselfRef(Arc<RemovesItself>);
impl IntervalNotifierOps for RemovesItselfRef {
    fn invalidate(&self, iv: &Interval, _r: &Range, cur_seq: u64) -> bool {
        iv.set_seq(cur_seq);
        if let Some(n) = self.0.slot.lock().unwrap().take() {
            *self.0.result.lock().unwrap() = Some(n.remove());
        }
        true
    }
}

#[test]
fn f12_remove_from_inside_a_callback_is_reported_not_a_deadlock() {
    let (mm, d) = mm();
    let me = Arc::new(RemovesItself {
        slot: Mutex::new(None),
        result: Mutex::new(None),
    });
    let n = mm
        .interval_notifier_insert(0x1000, 0x1000, RemovesItselfRef(me.clone()))
        .unwrap();
    *me.slot.lock().unwrap() = Some(n);
    drop(mm.invalidate_range_start(range(0x1000, 0x2000)));
    assert!(matches!(
        *me.result.lock().unwrap(),
        Some(Err(Error::InCallback(_)))
    ));
    assert_eq!(d.count_kind("called-from-callback"), 1);
    let st = mm.interval_state().unwrap();
    assert_eq!(
        (st.intervals, st.deferred, st.active),
        (0, 0, 0),
        "still removed: no lost state"
    );
}

// ---------------------------------------------------------------- F13 release

#[test]
fn f13_release_invalidates_intervals_and_releases_list_subscribers_once() {
    let (mm, d) = mm();
    let log = Log::default();
    let m = Mirror::new("m", &log);
    let iv = mm
        .interval_notifier_insert(0x1000, 0x1000, MirrorRef(m.clone()))
        .unwrap();
    let a = mm.register(Counter::new("a", &log)).unwrap();
    mm.release();
    assert_eq!(
        *m.events.lock().unwrap(),
        [(Event::Release, true, 0, u64::MAX)]
    );
    assert_eq!(a.releases.load(SeqCst), 1);
    // Unlinked: no further callbacks; unregister does not release again.
    drop(mm.invalidate_range_start(range(0x1000, 0x2000)));
    assert_eq!(a.starts.load(SeqCst), 0);
    a.unregister().unwrap();
    assert_eq!(
        log.take().iter().filter(|s| s.ends_with("release")).count(),
        1
    );
    // A second release and a late subscription are errors, not corruption.
    mm.release();
    assert_eq!(d.count_kind("double-release"), 1);
    assert_eq!(
        mm.register(Counter::new("late", &log)).err(),
        Some(Error::Released)
    );
    assert_eq!(
        mm.interval_notifier_insert(0, 4096, MirrorRef(Mirror::new("late", &log)))
            .err(),
        Some(Error::Released)
    );
    iv.remove().unwrap();
}

#[test]
fn f13_an_interval_refusing_release_is_reported() {
    let (mm, d) = mm();
    struct No;
    impl IntervalNotifierOps for No {
        fn invalidate(&self, _: &Interval, _: &Range, _: u64) -> bool {
            false
        }
    }
    let _iv = mm.interval_notifier_insert(0, 4096, No).unwrap();
    mm.release();
    assert_eq!(d.count_kind("release-invalidate-refused"), 1);
    assert!(!mm.interval_state().unwrap().invalidating());
}

// ---------------------------------------------------------------- F14 unregister

struct Slow {
    entered: AtomicBool,
    gate: Mutex<()>,
    finished: AtomicBool,
}
impl Slow {
    fn new() -> Arc<Slow> {
        Arc::new(Slow {
            entered: AtomicBool::new(false),
            gate: Mutex::new(()),
            finished: AtomicBool::new(false),
        })
    }

    /// Starts an invalidation of `mm` on another thread and returns once it is inside this
    /// subscriber's start, blocked on the gate (which the caller holds).
    fn start_blocked_invalidation(&self, mm: &Mm) -> std::thread::JoinHandle<()> {
        let mm = mm.clone();
        let inv = std::thread::spawn(move || drop(mm.invalidate_range_start(range(0, 4096))));
        while !self.entered.load(SeqCst) {
            std::thread::yield_now();
        }
        inv
    }
}

struct SlowRef(Arc<Slow>);
impl MmuNotifierOps for SlowRef {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        self.0.entered.store(true, SeqCst);
        drop(self.0.gate.lock().unwrap());
        self.0.finished.store(true, SeqCst);
        Ok(())
    }
}

#[test]
fn f14_unregister_waits_for_running_callbacks_and_calls_release() {
    let (mm, _d) = mm();
    let slow = Slow::new();
    let log = Log::default();
    // Newest first: `a` gets its start before the slow subscriber blocks.
    let s = mm.register(SlowRef(slow.clone())).unwrap();
    let a = mm.register(Counter::new("a", &log)).unwrap();
    let gate = slow.gate.lock().unwrap();
    let inv = slow.start_blocked_invalidation(&mm);
    let unreg = spawn_blocked(
        "unregister returned while a callback was running",
        move || a.unregister().unwrap(),
    );
    drop(gate);
    unreg.join().unwrap();
    inv.join().unwrap();
    assert!(slow.finished.load(SeqCst));
    assert_eq!(
        log.take(),
        ["a:start", "a:release", "a:end"],
        "release while in flight, end still paired"
    );
    drop(s);
}

#[test]
fn f14_a_slow_callback_in_one_mm_does_not_delay_unregister_in_another() {
    let (mm1, _d1) = mm();
    let (mm2, _d2) = mm();
    let slow = Slow::new();
    let _s = mm1.register(SlowRef(slow.clone())).unwrap();
    let gate = slow.gate.lock().unwrap();
    let inv = slow.start_blocked_invalidation(&mm1);
    let log = Log::default();
    let other = mm2.register(Counter::new("x", &log)).unwrap();
    other.unregister().unwrap(); // returns although mm1's callback is still blocked
    drop(gate);
    inv.join().unwrap();
}

struct UnregistersItself {
    slot: Mutex<Option<mmu_notifier::Subscription<Declares>>>,
    result: Mutex<Option<Result<(), Error>>>,
}
struct UnregRef(Arc<UnregistersItself>);
impl MmuNotifierOps for UnregRef {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
    }
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        if let Some(s) = self.0.slot.lock().unwrap().take() {
            *self.0.result.lock().unwrap() = Some(s.unregister());
        }
        Ok(())
    }
}

#[test]
fn f14_unregister_from_a_callback_is_reported_not_a_deadlock() {
    let (mm, d) = mm();
    let victim = mm
        .register(Declares(Capabilities::INVALIDATE_RANGE_START))
        .unwrap();
    let u = Arc::new(UnregistersItself {
        slot: Mutex::new(Some(victim)),
        result: Mutex::new(None),
    });
    let _k = mm.register(UnregRef(u.clone())).unwrap();
    drop(mm.invalidate_range_start(range(0, 4096)));
    assert!(matches!(
        *u.result.lock().unwrap(),
        Some(Err(Error::InCallback("unregister")))
    ));
    assert_eq!(d.count_kind("called-from-callback"), 1);
}

// ---------------------------------------------------------------- F15 get/put

struct Dev {
    drops: Arc<AtomicUsize>,
    released: Arc<AtomicUsize>,
}
impl MmuNotifierOps for Dev {
    fn capabilities(&self) -> Capabilities {
        Capabilities::RELEASE | Capabilities::INVALIDATE_RANGE_START
    }
    fn release(&self, _mm: &Mm) {
        self.released.fetch_add(1, SeqCst);
    }
}
impl Drop for Dev {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

#[test]
fn f15_get_is_a_refcounted_singleton_freed_after_a_grace_period_without_release() {
    let (mm, _d) = mm();
    let drops = Arc::new(AtomicUsize::new(0));
    let released = Arc::new(AtomicUsize::new(0));
    let allocs = AtomicUsize::new(0);
    let mk = |_: &Mm| {
        allocs.fetch_add(1, SeqCst);
        Dev {
            drops: drops.clone(),
            released: released.clone(),
        }
    };
    let a = mm.notifier_get(mk).unwrap();
    let b = mm.notifier_get(mk).unwrap();
    assert!(a.same_as(&b));
    assert_eq!((allocs.load(SeqCst), a.users()), (1, 2));
    a.put();
    assert_eq!(b.users(), 1);
    // Keep a read section open (a callback in flight) so the free must wait.
    let slow = Slow::new();
    let _s = mm.register(SlowRef(slow.clone())).unwrap();
    let gate = slow.gate.lock().unwrap();
    let inv = slow.start_blocked_invalidation(&mm);
    b.put();
    assert_eq!(
        drops.load(SeqCst),
        0,
        "freed while a callback could still be running"
    );
    drop(gate);
    inv.join().unwrap();
    mm.synchronize();
    assert_eq!(drops.load(SeqCst), 1, "synchronize waits for pending frees");
    assert_eq!(released.load(SeqCst), 0, "put never calls release");
    // A new get after the last put allocates a new one.
    let c = mm.notifier_get(mk).unwrap();
    assert_eq!(allocs.load(SeqCst), 2);
    drop(c);
}

#[test]
fn f15_get_reports_overflow_of_users() {
    let (mm, _d) = mm();
    let drops = Arc::new(AtomicUsize::new(0));
    let released = Arc::new(AtomicUsize::new(0));
    let mk = |_: &Mm| Dev {
        drops: drops.clone(),
        released: released.clone(),
    };
    let a = mm.notifier_get(mk).unwrap();
    a.__set_users_for_test(u32::MAX);
    assert_eq!(mm.notifier_get(mk).err(), Some(Error::TooManyUsers));
    a.__set_users_for_test(1);
}

// ---------------------------------------------------------------- F18 diagnostics

#[test]
fn f18_undeclared_start_failure_is_reported_and_still_refuses() {
    let (mm, d) = mm();
    struct Sneaky;
    impl MmuNotifierOps for Sneaky {
        fn capabilities(&self) -> Capabilities {
            Capabilities::INVALIDATE_RANGE_START
        }
        fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
            if r.is_blockable() {
                Ok(())
            } else {
                Err(WouldBlock)
            }
        }
    }
    let _s = mm.register(Sneaky).unwrap();
    assert!(mm.invalidate_range_start_nonblock(range(0, 4096)).is_err());
    assert_eq!(
        d.take(),
        [Warning::UndeclaredStartFailure { subscriber: 1 }]
    );
}

#[test]
fn f18_blockable_interval_refusal_is_reported_and_dispatch_continues() {
    let (mm, d) = mm();
    struct No;
    impl IntervalNotifierOps for No {
        fn invalidate(&self, _: &Interval, _: &Range, _: u64) -> bool {
            false
        }
    }
    let log = Log::default();
    let m = Mirror::new("after", &log);
    let _a = mm.interval_notifier_insert(0x1000, 0x1000, No).unwrap();
    let _b = mm
        .interval_notifier_insert(0x1800, 0x1000, MirrorRef(m.clone()))
        .unwrap();
    drop(mm.invalidate_range_start(range(0x1000, 0x3000)));
    assert_eq!(m.calls.load(SeqCst), 1);
    assert_eq!(
        d.take(),
        [Warning::BlockableIntervalRefused { start: 0x1000 }]
    );
}

#[test]
#[should_panic(expected = "strict mode")]
fn f18_strict_mode_turns_a_violation_into_a_panic() {
    let mm = Mm::builder()
        .diagnostics(Diagnostics::new(DiagMode::Strict))
        .build();
    mm.release();
    mm.release();
}

#[test]
fn read_begin_inside_a_callback_while_hit_returns_a_never_matching_sequence() {
    let (mm, d) = mm();
    struct Peek(Mutex<Option<u64>>);
    struct PeekRef(Arc<Peek>);
    impl IntervalNotifierOps for PeekRef {
        fn invalidate(&self, iv: &Interval, _r: &Range, cur_seq: u64) -> bool {
            iv.set_seq(cur_seq);
            *self.0 .0.lock().unwrap() = Some(iv.read_begin());
            true
        }
    }
    let p = Arc::new(Peek(Mutex::new(None)));
    let iv = mm
        .interval_notifier_insert(0, 4096, PeekRef(p.clone()))
        .unwrap();
    drop(mm.invalidate_range_start(range(0, 4096)));
    let seq = p.0.lock().unwrap().unwrap();
    assert!(
        iv.read_retry(seq),
        "a read side begun inside the callback must retry"
    );
    assert_eq!(d.count_kind("called-from-callback"), 1);
}

#[test]
fn register_from_inside_a_callback_is_an_error_and_registers_nothing() {
    let (mm, d) = mm();
    struct Reg(Mutex<Option<Result<(), Error>>>);
    struct RegRef(Arc<Reg>);
    impl MmuNotifierOps for RegRef {
        fn capabilities(&self) -> Capabilities {
            Capabilities::TEST_YOUNG
        }
        fn test_young(&self, mm: &Mm, _a: u64) -> bool {
            *self.0 .0.lock().unwrap() =
                Some(mm.register(Declares(Capabilities::RELEASE)).map(|_| ()));
            false
        }
    }
    let r = Arc::new(Reg(Mutex::new(None)));
    let _s = mm.register(RegRef(r.clone())).unwrap();
    assert!(!mm.test_young(0));
    assert_eq!(
        *r.0.lock().unwrap(),
        Some(Err(Error::InCallback("register")))
    );
    assert_eq!(d.count_kind("called-from-callback"), 1);
}

// ------------------------------------------- the interval epoch after a list refusal

fn interval_then_list_refusal(
    profile: Profile,
) -> (Mm, mmu_notifier::IntervalNotifier, Arc<Mutex<()>>) {
    let (mm, _d) = mm_with(profile);
    let log = Log::default();
    let iv = insert_mirror(&mm, 0x1000, 0x1000, "iv", &log);
    let lock = Arc::new(Mutex::new(()));
    let b = mm.register(Trylock::new("b", &log, &lock)).unwrap();
    let held = lock.lock().unwrap();
    assert!(mm
        .invalidate_range_start_nonblock(range(0, 0x10000))
        .is_err());
    drop(held);
    std::mem::forget(b); // keep it registered for the rest of the test
    (mm, iv, lock)
}

#[test]
fn interval_then_list_failure_leaves_no_epoch_open() {
    let (mm, iv, _l) = interval_then_list_refusal(Profile::Current);
    let st = mm.interval_state().unwrap();
    assert_eq!((st.active, st.invalidating()), (0, false));
    // read_begin returns at once (it would block forever if the epoch were left open).
    let seq = iv.read_begin();
    assert!(!iv.read_retry(seq));
    iv.remove().unwrap();
}

#[test]
fn pre_5_12_profile_leaves_the_interval_epoch_open_like_linux() {
    let (mm, iv, _l) = interval_then_list_refusal(Profile::Pre5_12);
    let st = mm.interval_state().unwrap();
    assert_eq!(
        (st.active, st.invalidating()),
        (1, true),
        "the epoch Linux leaves open after a list refusal"
    );
    // A removal now could only wait forever; from a callback-free thread it would. Show that
    // it is queued instead of applied.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = iv.remove();
        let _ = tx.send(r);
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "remove waits for an epoch that never ends"
    );
    assert_eq!(mm.interval_state().unwrap().deferred, 1);
}
