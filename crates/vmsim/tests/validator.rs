//! The validator sees the simulated kernel's real contexts: a driver lock held across a page
//! fault's allocation and taken in the driver's notifier is reported when reclaim calls that
//! notifier (seed 001's shape, through real reclaim); a notifier that sleeps when the OOM
//! reaper calls it is reported with `non_block` (seed 003's shape, through the real reaper).

mod common;

use std::sync::Arc;

use lockdep::{scope::Scope, static_lock_class, Mutex, ReportKind};
use mmu_notifier::{Capabilities, Mm, MmuNotifierOps, Range, WouldBlock};
use vmsim::{Advice, Config, Machine, MapRequest};

const P: u64 = 4096;

/// A driver whose notifier takes its lock, blockable or not.
struct Driver {
    lock: Arc<Mutex<u64>>,
}

impl MmuNotifierOps for Driver {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        *self.lock.lock() += 1;
        Ok(())
    }
    fn invalidate_range_end(&self, _r: &Range) {}
    fn release(&self, _mm: &Mm) {}
}

#[test]
fn a_lock_held_across_a_fault_and_taken_in_the_notifier_is_reported_when_reclaim_calls_it() {
    let scope = Scope::new();
    let m = Machine::new(Config::new(128).swap(64)).unwrap();
    let p = m.spawn();
    let lock = Arc::new(Mutex::new(0u64, static_lock_class!("vmsim-driver-lock")));
    let _sub = p.mm().register(Driver { lock: lock.clone() }).unwrap();
    let a = p.mmap(MapRequest::anon(4 * P)).unwrap();
    {
        // The driver populates its mirror with its lock held: the fault allocates (GFP_KERNEL).
        let _g = lock.lock();
        p.write(a, 1).unwrap();
    }
    assert!(
        scope.reports().is_empty(),
        "nothing yet: the reverse order has not been seen"
    );
    // Reclaim unmaps the page: try_to_unmap calls the driver's notifier, which takes the lock.
    p.madvise(a, P, Advice::Cold).unwrap();
    assert_eq!(m.reclaim(1), 1);
    let reports = scope.reports();
    assert!(
        reports.iter().any(|r| r.involves("vmsim-driver-lock")
            && matches!(
                r.kind,
                ReportKind::ReclaimInversion | ReportKind::PossibleCircularLockingDependency
            )),
        "expected the reclaim inversion, got {reports:#?}"
    );
}

#[test]
fn a_notifier_that_sleeps_under_the_oom_reaper_is_reported_with_non_block() {
    let scope = Scope::new();
    let m = Machine::new(Config::new(128)).unwrap();
    let p = m.spawn();
    let lock = Arc::new(Mutex::new(0u64, static_lock_class!("vmsim-reaper-lock")));
    let _sub = p.mm().register(Driver { lock }).unwrap();
    let a = p.mmap(MapRequest::anon(2 * P)).unwrap();
    p.touch(a, 2 * P, true).unwrap();
    let report = m.oom_kill(&p);
    assert!(!report.gave_up, "the buggy driver did not refuse: {report}");
    let sleeping = scope.of_kind(ReportKind::SleepingInInvalidContext);
    assert!(
        !sleeping.is_empty(),
        "the mutex in a non-blockable start must be reported: {:#?}",
        scope.reports()
    );
    assert!(
        sleeping[0].to_string().contains("non_block: 1"),
        "{}",
        sleeping[0]
    );
}
