//! The holes of issue 8, section 1, each with the test that failed before it was closed.
//!
//! * An invalidation begun on an address space with no subscription must be seen by the first
//!   subscription: Linux excludes it in `__mmu_notifier_register` with `mm_take_all_locks()`;
//!   here every invalidation holds the address space's read section from start to end, and
//!   registration waits for a grace period, so the first `interval_notifier_insert` and the
//!   first `register` return only after that invalidation ends.
//! * A pre-5.12 driver (a start that can fail *and* an end) runs on `Profile::Pre5_12`, and
//!   shows the seed-004 imbalance alone.
//!
//! (The third hole, interval callbacks in a non-blockable range checked for sleeping, needs the
//! validator: `tests/nonblock_interval.rs`.)

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mmu_notifier::{
    Capabilities, Error, Interval, IntervalNotifierOps, MmuNotifierOps, Profile, Range, Warning,
    WouldBlock,
};

/// Long enough for a thread that is not blocked to get through a register or insert.
const SETTLE: Duration = Duration::from_millis(150);

struct SetSeq;

impl IntervalNotifierOps for SetSeq {
    fn invalidate(&self, iv: &Interval, _range: &Range, cur_seq: u64) -> bool {
        iv.set_seq(cur_seq);
        true
    }
}

#[test]
fn first_interval_insert_waits_for_an_invalidation_begun_with_nothing_subscribed() {
    let (mm, d) = mm();
    let guard = mm.invalidate_range_start(range(0x1000, 0x3000));
    assert!(!mm.has_notifiers());
    let returned = Arc::new(AtomicBool::new(false));
    let mapped_while_open = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let iv = mm.interval_notifier_insert(0x1000, 0x2000, SetSeq).unwrap();
            let seq = iv.read_begin();
            returned.store(true, SeqCst);
            // Map under the (here implicit) driver lock: must not have to retry.
            assert!(!iv.read_retry(seq));
            iv.remove().unwrap();
        });
        std::thread::sleep(SETTLE);
        let early = returned.load(SeqCst);
        drop(guard);
        h.join().unwrap();
        early
    });
    assert!(
        !mapped_while_open,
        "read_begin returned while an invalidation covering the interval was still open"
    );
    assert!(returned.load(SeqCst));
    assert!(d.take().is_empty());
}

#[test]
fn first_register_waits_for_an_invalidation_begun_with_nothing_subscribed() {
    let (mm, d) = mm();
    let guard = mm
        .invalidate_range_start_nonblock(range(0x1000, 0x3000))
        .unwrap();
    let log = Log::default();
    let registered = AtomicBool::new(false);
    let early = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let sub = mm.register(Counter::new("late", &log)).unwrap();
            registered.store(true, SeqCst);
            sub
        });
        std::thread::sleep(SETTLE);
        let early = registered.load(SeqCst);
        drop(guard);
        let sub = h.join().unwrap();
        // It never saw the old invalidation's start, and must not see its end either.
        assert_eq!(sub.ends.load(SeqCst), 0);
        assert_eq!(sub.in_progress.load(SeqCst), 0);
        sub.unregister().unwrap();
        early
    });
    assert!(
        !early,
        "register returned while an invalidation begun before it was still open"
    );
    assert!(d.take().is_empty());
}

#[test]
fn first_register_from_the_thread_holding_the_invalidation_is_refused_not_a_hang() {
    let (mm, d) = mm();
    let guard = mm.invalidate_range_start(range(0x1000, 0x3000));
    let log = Log::default();
    assert!(matches!(
        mm.register(Counter::new("self", &log)),
        Err(Error::InCallback(_))
    ));
    assert!(matches!(
        mm.interval_notifier_insert(0x1000, 0x1000, SetSeq),
        Err(Error::InCallback(_))
    ));
    drop(guard);
    let reports = d.take();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(reports
        .iter()
        .all(|w| matches!(w, Warning::CalledFromCallback { .. })));
    // And once the invalidation has ended, both work.
    mm.register(Counter::new("after", &log))
        .unwrap()
        .unregister()
        .unwrap();
}

/// KVM as of Linux 4.19: `mmu_notifier_count` is raised at the top of the start, then the
/// start refuses a non-blockable range; the end lowers it.
#[derive(Default)]
struct Kvm419 {
    mmu_notifier_count: AtomicI64,
}

impl MmuNotifierOps for Kvm419 {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
            | Capabilities::START_CAN_FAIL
            | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        self.mmu_notifier_count.fetch_add(1, SeqCst);
        if !range.is_blockable() {
            return Err(WouldBlock);
        }
        Ok(())
    }
    fn invalidate_range_end(&self, _range: &Range) {
        self.mmu_notifier_count.fetch_sub(1, SeqCst);
    }
}

#[test]
fn a_pre_5_12_driver_registers_on_the_pre_5_12_profile_with_a_warning() {
    let (mm, d) = mm_with(Profile::Pre5_12);
    let kvm = mm.register(Kvm419::default()).unwrap();
    assert_eq!(
        d.take(),
        vec![Warning::FallibleStartWithEnd {
            subscriber: kvm.id()
        }]
    );
    // Blockable invalidations pair as always.
    drop(mm.invalidate_range_start(range(0, 0x1000)));
    assert_eq!(kvm.mmu_notifier_count.load(SeqCst), 0);
    // Seed 004 with that one driver: its own refused start raised the count, no end comes.
    assert!(mm
        .invalidate_range_start_nonblock(range(0, 0x1000))
        .is_err());
    assert_eq!(
        kvm.mmu_notifier_count.load(SeqCst),
        1,
        "the pre-5.12 kernel gives a refused start no end: the count stays raised"
    );
    assert!(d.take().is_empty());
    kvm.unregister().unwrap();
}

#[test]
fn the_same_driver_is_refused_on_the_current_profile() {
    let (mm, d) = mm();
    assert!(matches!(
        mm.register(Kvm419::default()),
        Err(Error::InvalidOps(_))
    ));
    assert!(d.take().is_empty());
    assert!(
        !mm.has_notifiers(),
        "a refused registration creates no state"
    );
}
