//! The coherence checker catches each purpose-built bug, and the same scenario with the rule
//! kept is clean (so each test can fail: it fails on the correct variant's expectation if the
//! checker reported nothing, and the clean run fails if the checker reported a false alarm).

use drivers::buggy::{BuggyList, BuggyMirror, IntervalBug, ListBug};
use drivers::checker::{Callback, Stale};
use drivers::Checker;
use mmu_notifier::{Capabilities, MmuNotifierOps, Range, WouldBlock};
use vmsim::{Advice, Config, Machine, MapRequest, Process};

const P: u64 = 4096;

fn machine() -> (Machine, Process, u64) {
    let m = Machine::new(Config::new(256).swap(256)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(8 * P)).unwrap();
    p.write(a, 41).unwrap();
    (m, p, a)
}

/// Runs the collision scenario on a mirror with `bug`: a device fault whose window sees
/// `MADV_DONTNEED` free the page it looked up, then a device read.
fn collide(bug: IntervalBug) -> (Checker, Option<u64>) {
    let (m, p, a) = machine();
    let c = Checker::new();
    let d = BuggyMirror::open(&p, &c, bug).unwrap();
    d.fault_with(&p, a, false, || p.madvise(a, P, Advice::DontNeed).unwrap())
        .unwrap();
    let seen = d.try_read(a).unwrap();
    drop(d);
    m.check().unwrap();
    (c, seen)
}

fn assert_caught(bug: IntervalBug) {
    let (c, seen) = collide(bug);
    let v = c.violations();
    assert_eq!(v.len(), 1, "{bug:?} must be caught once: {v:#?}");
    let v = &v[0];
    assert_eq!(v.driver, format!("mirror({bug:?})"));
    assert!(
        matches!(v.stale, Stale::FrameFreed { .. } | Stale::NotMapped),
        "{v}"
    );
    let inv = v
        .should_have_stopped_it
        .expect("the DONTNEED reached the driver");
    assert_eq!(inv.callback, Callback::Interval);
    assert_eq!(inv.event, mmu_notifier::Event::Clear);
    assert_eq!(
        seen,
        Some(41),
        "the device read the freed frame's old content"
    );
    let text = v.to_string();
    assert!(
        text.contains("BUG: stale secondary translation") && text.contains("MMU_NOTIFY_CLEAR"),
        "{text}"
    );
    assert!(c.check_quiescent().is_err());
}

#[test]
fn the_reference_protocol_under_the_same_collision_is_clean() {
    let (c, seen) = collide(IntervalBug::None);
    // The retry looked the page up again: a fresh zero page.
    assert_eq!(seen, Some(0));
    let s = c.check_quiescent().unwrap();
    assert_eq!(s.accesses, 1);
}

#[test]
fn set_seq_forgotten_is_caught() {
    assert_caught(IntervalBug::SetSeqForgotten);
}

#[test]
fn read_retry_outside_the_user_lock_is_caught() {
    assert_caught(IntervalBug::RetryOutsideLock);
}

#[test]
fn no_retry_at_all_is_caught() {
    assert_caught(IntervalBug::NoRetry);
}

/// A list subscriber registered after the driver under test, so it is called before it, that
/// makes the driver's device read in its own end: after the primary changed its entries and
/// before the driver's end.
struct Probe(std::sync::Arc<BuggyList>);
impl MmuNotifierOps for Probe {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_end(&self, r: &Range) {
        let _ = self.0.try_read(r.start()).unwrap();
    }
}

fn zap_in_end(bug: ListBug) -> Checker {
    let (m, p, a) = machine();
    let c = Checker::new();
    let d = std::sync::Arc::new(BuggyList::register(&p, &c, bug).unwrap());
    d.fault(&p, a).unwrap();
    let probe = p.mm().register(Probe(d.clone())).unwrap();
    p.munmap(a, 8 * P).unwrap();
    probe.unregister().unwrap();
    std::sync::Arc::into_inner(d).unwrap().unregister().unwrap();
    m.check().unwrap();
    c
}

#[test]
fn zapping_only_in_end_is_caught() {
    let c = zap_in_end(ListBug::ZapOnlyInEnd);
    let v = c.violations();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].stale, Stale::NotMapped);
    let inv = v[0].should_have_stopped_it.unwrap();
    assert_eq!(
        (inv.callback, inv.event),
        (Callback::Start, mmu_notifier::Event::Unmap)
    );
    assert!(
        c.unbalanced().is_empty(),
        "starts and ends pair: {:?}",
        c.unbalanced()
    );
}

#[test]
fn zapping_in_start_is_clean_under_the_same_probe() {
    zap_in_end(ListBug::None).check_quiescent().unwrap();
}

fn exit_then_read(bug: ListBug) -> Checker {
    let (m, p, a) = machine();
    let c = Checker::new();
    let d = BuggyList::register(&p, &c, bug).unwrap();
    d.fault(&p, a).unwrap();
    p.exit().unwrap();
    let _ = d.try_read(a).unwrap();
    d.unregister().unwrap();
    assert_eq!(m.check().unwrap().used, 0);
    c
}

#[test]
fn a_release_that_keeps_mappings_is_caught() {
    let c = exit_then_read(ListBug::ReleaseKeepsMappings);
    let v = c.violations();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert!(matches!(v[0].stale, Stale::FrameFreed { .. }), "{}", v[0]);
    assert_eq!(
        v[0].should_have_stopped_it.unwrap().callback,
        Callback::Release
    );
}

#[test]
fn a_release_that_drops_everything_is_clean() {
    exit_then_read(ListBug::None).check_quiescent().unwrap();
}

/// A list subscriber that refuses every non-blockable start: the OOM reaper's starts of the
/// other subscriber then have no end on the pre-5.12 profile.
struct Refuser;
impl MmuNotifierOps for Refuser {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::START_CAN_FAIL
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        if r.is_blockable() {
            Ok(())
        } else {
            Err(WouldBlock)
        }
    }
}

fn reaped_with_refuser(profile: mmu_notifier::Profile) -> Checker {
    let m = Machine::new(Config::new(128).profile(profile)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(4 * P)).unwrap();
    p.touch(a, 4 * P, true).unwrap();
    let c = Checker::new();
    let _r = p.mm().register(Refuser).unwrap(); // older: called after the list mirror
    let d = BuggyList::register(&p, &c, ListBug::None).unwrap();
    let report = m.oom_kill(&p);
    assert!(report.gave_up, "{report}");
    drop(d);
    c
}

#[test]
fn pairing_counts_expose_a_start_without_end_at_quiescence() {
    let c = reaped_with_refuser(mmu_notifier::Profile::Pre5_12);
    let u = c.unbalanced();
    assert_eq!(u.len(), 1, "{u:?}");
    assert_eq!(
        u[0].outstanding, 10,
        "one unpaired start per reaper attempt"
    );
    let e = c.check_quiescent().unwrap_err();
    assert!(e.to_string().contains("without an end"), "{e}");
    c_is_clean_on_current();
}

fn c_is_clean_on_current() {
    reaped_with_refuser(mmu_notifier::Profile::Current)
        .check_quiescent()
        .unwrap();
}
