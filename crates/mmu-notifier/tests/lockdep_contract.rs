//! The contract annotated with the `lockdep` validator (feature `lockdep`): the seeds'
//! deadlocks found through the real notifier dispatch, from runs that never deadlock, and
//! correct drivers left clean.
//!
//! Run with `cargo test -p mmu-notifier --features lockdep --test lockdep_contract`.
//!
//! Each test makes its own lock classes (a [`DynamicKey`] per test) and collects only its own
//! threads' reports (a [`Scope`]), so tests running in parallel in this process do not see
//! each other's dependencies.

#![cfg(feature = "lockdep")]

use std::sync::Arc;

use lockdep::testing::Scope;
use lockdep::{might_alloc, DynamicKey, Gfp, Mutex, Report, ReportKind, SpinLock};
use mmu_notifier::{
    Capabilities, Event, Interval, IntervalNotifierOps, Mm, MmuNotifierOps, Range, WouldBlock,
};

const MAP: &str = "mmu_notifier_invalidate_range_start";
const SRCU: &str = "mmu_notifier_srcu";

fn range() -> Range {
    Range::new(0x1000, 0x3000, Event::Unmap).unwrap()
}

fn describe(reports: &[Report]) -> String {
    reports
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every report that is a dependency cycle (circular locking or reclaim inversion).
fn cycles(scope: &Scope) -> Vec<Report> {
    scope
        .reports()
        .into_iter()
        .filter(|r| r.kind.is_cycle())
        .collect()
}

/// A driver whose list callbacks take its (sleeping) lock: the usual KVM/ODP shape.
struct Driver {
    lock: Arc<Mutex<u64>>,
    caps: Capabilities,
}

impl Driver {
    fn new(lock: &Arc<Mutex<u64>>) -> Driver {
        Driver {
            lock: lock.clone(),
            caps: Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END,
        }
    }
}

impl MmuNotifierOps for Driver {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        *self.lock.lock() += 1;
        Ok(())
    }
    fn invalidate_range_end(&self, _range: &Range) {
        *self.lock.lock() -= 1;
    }
}

/// Seed 001: the lock is taken in a callback (recorded through a real invalidation), and held
/// across an allocation with `gfp` elsewhere. No reclaim ever runs.
fn seed001(gfp: Gfp, name: &str) -> Vec<Report> {
    let scope = Scope::new();
    let key = DynamicKey::new(name);
    let lock = Arc::new(Mutex::new(0u64, &key));
    let mm = Mm::new();
    let sub = mm.register(Driver::new(&lock)).unwrap();
    mm.invalidate_range_start(range()).end();
    {
        let _g = lock.lock();
        might_alloc(gfp);
    }
    sub.unregister().unwrap();
    scope.take()
}

#[test]
fn seed001_lock_held_across_gfp_kernel_allocation_is_reported() {
    let reports = seed001(Gfp::KERNEL, "seed001-kernel");
    let inv: Vec<_> = reports
        .iter()
        .filter(|r| r.kind == ReportKind::ReclaimInversion)
        .collect();
    assert_eq!(inv.len(), 1, "{}", describe(&reports));
    assert!(inv[0].involves(MAP) && inv[0].involves("seed001-kernel"));
}

#[test]
fn seed001_lock_held_across_gfp_noio_allocation_is_reported() {
    let reports = seed001(Gfp::NOIO, "seed001-noio");
    assert!(
        reports
            .iter()
            .any(|r| r.kind == ReportKind::ReclaimInversion
                && r.involves(MAP)
                && r.involves("seed001-noio")),
        "{}",
        describe(&reports)
    );
}

#[test]
fn seed001_gfp_atomic_allocation_under_the_lock_is_clean() {
    let reports = seed001(Gfp::ATOMIC, "seed001-atomic");
    assert!(reports.is_empty(), "{}", describe(&reports));
}

#[test]
fn seed001_order_does_not_matter_allocation_first() {
    let scope = Scope::new();
    let key = DynamicKey::new("seed001-alloc-first");
    let lock = Arc::new(Mutex::new(0u64, &key));
    {
        let _g = lock.lock();
        might_alloc(Gfp::KERNEL);
    }
    let mm = Mm::new();
    let _sub = mm.register(Driver::new(&lock)).unwrap();
    mm.invalidate_range_start(range()).end();
    assert_eq!(
        scope.of_kind(ReportKind::ReclaimInversion).len(),
        1,
        "{}",
        describe(&scope.reports())
    );
}

/// Seed 003: a notifier sleeping on a mutex inside the OOM reaper's non-blockable range.
struct SleepsInNonblock {
    lock: Mutex<()>,
}

impl MmuNotifierOps for SleepsInNonblock {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        let _g = self.lock.lock();
        Ok(())
    }
}

#[test]
fn seed003_mutex_in_nonblockable_start_is_reported_with_non_block_1() {
    let scope = Scope::new();
    let key = DynamicKey::new("seed003-mutex");
    let mm = Mm::new();
    let _sub = mm
        .register(SleepsInNonblock {
            lock: Mutex::new((), &key),
        })
        .unwrap();
    // Uncontended: nothing blocks, yet the mutex could have.
    mm.invalidate_range_start_nonblock(range()).unwrap().end();
    let r = scope.of_kind(ReportKind::SleepingInInvalidContext);
    assert_eq!(r.len(), 1, "{}", describe(&scope.reports()));
    let ctx = r[0].context.as_ref().expect("context counters");
    assert_eq!(ctx.non_block, 1);
    assert_eq!(ctx.in_atomic, 0);
    // The section is attributed to the dispatch that opened it, not to library internals.
    let since = ctx.non_block_since.as_ref().expect("where non_block began");
    assert!(since.file.ends_with("mm.rs"), "{since:?}");
    assert!(r[0].to_string().contains("non_block: 1"), "{}", r[0]);
}

#[test]
fn seed003_the_same_notifier_in_a_blockable_range_is_clean() {
    let scope = Scope::new();
    let key = DynamicKey::new("seed003-blockable");
    let mm = Mm::new();
    let _sub = mm
        .register(SleepsInNonblock {
            lock: Mutex::new((), &key),
        })
        .unwrap();
    mm.invalidate_range_start(range()).end();
    assert!(scope.is_clean(), "{}", describe(&scope.reports()));
}

/// A notifier that refuses with `try_lock` instead of sleeping: what seed 003 asks drivers
/// to do.
struct TriesInNonblock {
    lock: Mutex<()>,
}

impl MmuNotifierOps for TriesInNonblock {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::START_CAN_FAIL
    }
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        if range.is_blockable() {
            let _g = self.lock.lock();
            return Ok(());
        }
        match self.lock.try_lock() {
            Some(_g) => Ok(()),
            None => Err(WouldBlock),
        }
    }
}

#[test]
fn seed003_try_lock_in_nonblockable_start_is_clean_even_when_it_refuses() {
    let scope = Scope::new();
    let key = DynamicKey::new("seed003-trylock");
    let mm = Mm::new();
    let sub = mm
        .register(TriesInNonblock {
            lock: Mutex::new((), &key),
        })
        .unwrap();
    mm.invalidate_range_start_nonblock(range()).unwrap().end();
    {
        let _held = sub.lock.lock();
        // Another thread holds the lock: the reaper's start is refused, nothing sleeps.
        let mm2 = mm.clone();
        let refused =
            std::thread::spawn(move || mm2.invalidate_range_start_nonblock(range()).is_err())
                .join()
                .unwrap();
        assert!(refused);
    }
    assert!(scope.is_clean(), "{}", describe(&scope.reports()));
}

/// Seed 000: a hardware-TLB notifier (arch_invalidate_secondary_tlbs runs in atomic context).
struct Iommu {
    mutex: Mutex<u64>,
    spin: SpinLock<u64>,
    sleeps: bool,
}

impl MmuNotifierOps for Iommu {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ARCH_INVALIDATE_SECONDARY_TLBS
    }
    fn arch_invalidate_secondary_tlbs(&self, _mm: &Mm, _start: u64, _end: u64) {
        if self.sleeps {
            *self.mutex.lock() += 1;
        } else {
            *self.spin.lock() += 1;
        }
    }
}

fn seed000(sleeps: bool, name: &str) -> Scope {
    let scope = Scope::new();
    let key = DynamicKey::new(name);
    let mm = Mm::new();
    let _sub = mm
        .register(Iommu {
            mutex: Mutex::new(0, &key),
            spin: SpinLock::new(0, &key),
            sleeps,
        })
        .unwrap();
    mm.arch_invalidate_secondary_tlbs(0x1000, 0x2000);
    scope
}

#[test]
fn seed000_sleeping_lock_in_arch_invalidate_secondary_tlbs_is_reported() {
    let scope = seed000(true, "seed000-mutex");
    let r = scope.of_kind(ReportKind::SleepingInInvalidContext);
    assert_eq!(r.len(), 1, "{}", describe(&scope.reports()));
    assert_eq!(r[0].context.as_ref().unwrap().in_atomic, 1);
}

#[test]
fn seed000_spinlock_in_arch_invalidate_secondary_tlbs_is_clean() {
    let scope = seed000(false, "seed000-spin");
    assert!(scope.is_clean(), "{}", describe(&scope.reports()));
}

/// An interval subscriber (HMM/ODP shape): the callback takes the driver lock (only tries it
/// in a non-blockable range) and bumps the sequence under it.
struct Mirror {
    lock: Arc<Mutex<Option<u64>>>,
}

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, interval: &Interval, range: &Range, cur_seq: u64) -> bool {
        // Interval callbacks of a non-blockable range are checked for sleeping too.
        let Some(mut pt) = range.lock_or_refuse(|| self.lock.lock(), || self.lock.try_lock())
        else {
            return false;
        };
        interval.set_seq(cur_seq);
        *pt = None;
        true
    }
}

#[test]
fn read_begin_under_the_driver_lock_is_reported() {
    let scope = Scope::new();
    let key = DynamicKey::new("mirror-readbegin-bad");
    let lock = Arc::new(Mutex::new(None, &key));
    let mm = Mm::new();
    let iv = mm
        .interval_notifier_insert(0x1000, 0x1000, Mirror { lock: lock.clone() })
        .unwrap();
    mm.invalidate_range_start(range()).end();
    {
        // Wrong: read_begin may wait for the invalidation, whose callback needs this lock.
        let mut pt = lock.lock();
        let seq = iv.read_begin();
        if !iv.read_retry(seq) {
            *pt = Some(1);
        }
    }
    // A cycle through the notifier map, which lockdep files under reclaim inversions.
    let r = cycles(&scope);
    assert_eq!(r.len(), 1, "{}", describe(&scope.reports()));
    assert!(r[0].involves(MAP) && r[0].involves("mirror-readbegin-bad"));
    drop(scope);
    iv.remove().unwrap();
}

#[test]
fn remove_under_the_driver_lock_is_reported() {
    let scope = Scope::new();
    let key = DynamicKey::new("mirror-remove-bad");
    let lock = Arc::new(Mutex::new(None, &key));
    let mm = Mm::new();
    let iv = mm
        .interval_notifier_insert(0x1000, 0x1000, Mirror { lock: lock.clone() })
        .unwrap();
    mm.invalidate_range_start(range()).end();
    {
        let _pt = lock.lock();
        iv.remove().unwrap();
    }
    let r = cycles(&scope);
    assert_eq!(r.len(), 1, "{}", describe(&scope.reports()));
    assert!(r[0].involves(MAP) && r[0].involves("mirror-remove-bad"));
}

#[test]
fn unregister_under_a_lock_the_callback_takes_is_reported() {
    let scope = Scope::new();
    let key = DynamicKey::new("driver-unregister-bad");
    let lock = Arc::new(Mutex::new(0u64, &key));
    let mm = Mm::new();
    let sub = mm.register(Driver::new(&lock)).unwrap();
    mm.invalidate_range_start(range()).end();
    {
        // Wrong: unregister waits for every callback in flight, and a callback waits for this.
        let _g = lock.lock();
        sub.unregister().unwrap();
    }
    let r = cycles(&scope);
    assert_eq!(r.len(), 1, "{}", describe(&scope.reports()));
    assert!(r[0].involves(SRCU) && r[0].involves("driver-unregister-bad"));
}

#[test]
fn unregister_while_holding_a_spinlock_is_reported() {
    let scope = Scope::new();
    let key = DynamicKey::new("driver-unregister-spin");
    let spin = SpinLock::new((), &key);
    let mm = Mm::new();
    let sub = mm
        .register(SleepsInNonblock {
            lock: Mutex::new((), DynamicKey::new("unused").class()),
        })
        .unwrap();
    {
        let _g = spin.lock();
        sub.unregister().unwrap();
    }
    let r = scope.of_kind(ReportKind::SleepingInInvalidContext);
    assert!(!r.is_empty(), "{}", describe(&scope.reports()));
    assert_eq!(r[0].context.as_ref().unwrap().in_atomic, 1);
}

struct SpinDriver {
    lock: SpinLock<u64>,
}

impl MmuNotifierOps for SpinDriver {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        *self.lock.lock() += 1;
        Ok(())
    }
    fn invalidate_range_end(&self, _range: &Range) {
        *self.lock.lock() -= 1;
    }
}

/// A correct driver using every part of the contract, from three threads: nothing reported.
/// This is also the check on the contract's own annotated locks (list, get, interval-tree
/// lock as a spinlock, SRCU): any ordering problem between them, or sleeping under the tree
/// lock, would show up here.
#[test]
fn a_correct_driver_exercising_the_whole_contract_is_clean() {
    let scope = Scope::new();
    let dkey = DynamicKey::new("clean-driver");
    let mkey = DynamicKey::new("clean-mirror");
    let tkey = DynamicKey::new("clean-trylock");
    let mlock = Arc::new(Mutex::new(None, &mkey));
    let mm = Mm::new();
    // KVM's shape: a spinlock in every callback, fine in non-blockable ranges too.
    let sub = mm
        .register(SpinDriver {
            lock: SpinLock::new(0, &dkey),
        })
        .unwrap();
    // Seed 003's fix: a sleeping lock only when blockable, try_lock otherwise.
    let tries = mm
        .register(TriesInNonblock {
            lock: Mutex::new((), &tkey),
        })
        .unwrap();
    let iv = Arc::new(
        mm.interval_notifier_insert(
            0x1000,
            0x4000,
            Mirror {
                lock: mlock.clone(),
            },
        )
        .unwrap(),
    );
    struct Shared;
    impl MmuNotifierOps for Shared {
        fn capabilities(&self) -> Capabilities {
            Capabilities::YOUNG
        }
        fn test_young(&self, _mm: &Mm, _a: u64) -> bool {
            true
        }
    }
    let shared = mm.notifier_get(|_| Shared).unwrap();
    let handle = scope.handle();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (mm, handle) = (mm.clone(), handle.clone());
            s.spawn(move || {
                handle.attach();
                for i in 0..200u64 {
                    let start = 0x1000 * (1 + (i + t) % 6);
                    let r = Range::new(start, start + 0x1000, Event::Clear).unwrap();
                    if i % 3 == 0 {
                        if let Ok(g) = mm.invalidate_range_start_nonblock(r) {
                            g.end();
                        }
                    } else {
                        mm.invalidate_range_start(r).end();
                    }
                    mm.clear_young(start, start + 0x1000);
                    mm.test_young(start);
                }
            });
        }
        let (iv, mlock, handle) = (iv.clone(), mlock.clone(), handle.clone());
        s.spawn(move || {
            handle.attach();
            for i in 0..200u64 {
                // The documented pattern: read_begin unlocked, read_retry under the lock.
                let seq = iv.read_begin();
                let mut pt = mlock.lock();
                if !iv.read_retry(seq) {
                    *pt = Some(i);
                }
            }
        });
    });
    mm.arch_invalidate_secondary_tlbs(0, 0x1000);
    shared.put();
    mm.synchronize();
    let extra = mm
        .interval_notifier_insert(
            0x9000,
            0x1000,
            Mirror {
                lock: mlock.clone(),
            },
        )
        .unwrap();
    extra.remove().unwrap();
    sub.unregister().unwrap();
    tries.unregister().unwrap();
    Arc::try_unwrap(iv).ok().unwrap().remove().unwrap();
    mm.release();
    assert!(scope.is_clean(), "{}", describe(&scope.reports()));
}

/// Seed 002: a notifier callback that allocates. Reclaim calls notifiers; a callback that
/// allocates with direct reclaim allowed can recurse into reclaim, and into itself.
struct Allocates {
    gfp: Gfp,
}

impl MmuNotifierOps for Allocates {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        might_alloc(self.gfp);
        Ok(())
    }
}

fn seed002(gfp: Gfp) -> Scope {
    let scope = Scope::new();
    let mm = Mm::new();
    let _sub = mm.register(Allocates { gfp }).unwrap();
    mm.invalidate_range_start(range()).end();
    scope
}

#[test]
fn seed002_gfp_kernel_allocation_in_a_callback_is_reported() {
    let scope = seed002(Gfp::KERNEL);
    let r = scope.of_kind(ReportKind::ReclaimRecursion);
    assert_eq!(r.len(), 1, "{}", describe(&scope.reports()));
    assert!(r[0].involves(MAP), "{}", r[0]);
}

#[test]
fn seed002_gfp_nowait_allocation_in_a_callback_is_clean() {
    let scope = seed002(Gfp::NOWAIT);
    assert!(scope.is_clean(), "{}", describe(&scope.reports()));
}
