//! The contract annotated with the `lockdep` validator (feature `lockdep`): the seeds'
//! deadlocks found through the real notifier dispatch, from runs that never deadlock, and
//! correct drivers left clean.
//!
//! Run with `cargo test -p mmu-notifier --features lockdep --test lockdep_contract`.
//!
//! Each test makes its own lock classes (a [`DynamicKey`] per test) and collects only its own
//! threads' reports (a [`Scope`]), so tests running in parallel in this process do not see
//! each other's reports; the tests added with the map's edges each work in a validator
//! [`Context`] of their own as well (through [`Findings::isolated`]), so they do not see each
//! other's dependencies either.

#![cfg(feature = "lockdep")]

use std::sync::Arc;

use lockdep::scope::Scope;
use lockdep::{might_alloc, DynamicKey, Gfp, LockMap, Mutex, Report, ReportKind, SpinLock};
use mmu_notifier::{
    Capabilities, Event, Findings, Interval, IntervalNotifier, IntervalNotifierOps, Mm,
    MmuNotifierOps, Range, Warning, WouldBlock,
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

/// Asserts the scope holds exactly one dependency cycle, and that it runs through `a` and `b`.
fn assert_one_cycle(scope: &Scope, a: &str, b: &str) {
    let r = cycles(scope);
    assert_eq!(r.len(), 1, "{}", describe(&scope.reports()));
    assert!(r[0].involves(a) && r[0].involves(b), "{}", r[0]);
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
    assert!(since.file.ends_with("invalidate.rs"), "{since:?}");
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
    assert_one_cycle(&scope, MAP, "mirror-readbegin-bad");
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
    assert_one_cycle(&scope, MAP, "mirror-remove-bad");
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
    assert_one_cycle(&scope, SRCU, "driver-unregister-bad");
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
    // Reclaim may enter the map this callback runs in: the kernel's lockdep reports the map
    // taken again while held, "possible recursive locking".
    let scope = seed002(Gfp::KERNEL);
    let r = scope.of_kind(ReportKind::RecursiveLocking);
    assert_eq!(r.len(), 1, "{}", describe(&scope.reports()));
    assert!(r[0].involves(MAP), "{}", r[0]);
}

#[test]
fn seed002_gfp_nowait_allocation_in_a_callback_is_clean() {
    let scope = seed002(Gfp::NOWAIT);
    assert!(scope.is_clean(), "{}", describe(&scope.reports()));
}

// ---- The map's edges (caller lock -> map, map -> callback lock), the pre-5.12 ODP lock held
// ---- from start to end, and remove from inside a callback.

/// A list subscriber that takes `lock` in its start callback only (amdgpu's 2016 notifier
/// took the buffer's reservation there).
struct TakesInStart {
    lock: Arc<Mutex<u64>>,
}

impl MmuNotifierOps for TakesInStart {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        *self.lock.lock() += 1;
        Ok(())
    }
}

/// The cycle reports among `findings`.
fn cycles_found(findings: &Findings) -> Vec<Report> {
    findings
        .reports()
        .into_iter()
        .filter(|r| r.kind.is_cycle())
        .collect()
}

/// A caller lock held around an invalidation whose start callback takes the driver's lock
/// (`around` gets the invalidation to run under the caller lock), and elsewhere the caller
/// lock taken under the driver's lock (`inverse`, run with the driver lock held). Returns the
/// findings, in a validator context of their own.
fn caller_lock_inversion(
    driver: &str,
    around: impl FnOnce(&dyn Fn()),
    inverse: impl FnOnce(),
) -> Findings {
    let findings = Findings::isolated();
    let key = DynamicKey::new(driver);
    let lock = Arc::new(Mutex::new(0u64, &key));
    let mm = Mm::builder().diagnostics(findings.diagnostics()).build();
    let _sub = mm.register(TakesInStart { lock: lock.clone() }).unwrap();
    around(&|| mm.invalidate_range_start(range()).end());
    {
        let _d = lock.lock();
        inverse();
    }
    findings
}

#[test]
fn caller_lock_held_around_start_is_ordered_before_the_map() {
    // amdgpu's 2016 reservation-vs-anon_vma inversion, reduced: rmap code holds the anon_vma
    // lock around invalidate_range_start, whose callback takes the reservation; elsewhere the
    // driver holds the reservation and takes the anon_vma lock (get_user_pages faulting).
    // Before the fix the anon_vma -> map edge was weak (through the SRCU read section), so
    // the cycle anon_vma -> map -> reservation -> anon_vma was not reported.
    let anon_vma_key = DynamicKey::new("anon_vma");
    let anon_vma = Mutex::new((), &anon_vma_key);
    let findings = caller_lock_inversion(
        "reservation",
        |invalidate| {
            let _rmap = anon_vma.lock();
            invalidate();
        },
        || drop(anon_vma.lock()),
    );
    let r = cycles_found(&findings);
    assert_eq!(r.len(), 1, "{}", findings.describe());
    assert!(
        r[0].involves(MAP) && r[0].involves("anon_vma") && r[0].involves("reservation"),
        "{}",
        r[0]
    );
    // The edge into the map comes straight from anon_vma, not through the SRCU section.
    assert!(
        r[0].cycle
            .iter()
            .any(|d| d.from.name == "anon_vma" && d.to.name == MAP),
        "{}",
        r[0]
    );
}

#[test]
fn caller_lock_to_map_is_strong_for_mmap_lock_too() {
    // The same with the mmap lock (a read-held rw_semaphore) around the start, and the driver
    // taking it for write under its own lock.
    let mmap_key = DynamicKey::new("mmap_lock");
    let mmap_lock = lockdep::RwLock::new((), &mmap_key);
    let findings = caller_lock_inversion(
        "driver_lock_mmap",
        |invalidate| {
            let _mmap = mmap_lock.read();
            invalidate();
        },
        || drop(mmap_lock.write()),
    );
    let r = cycles_found(&findings);
    assert_eq!(r.len(), 1, "{}", findings.describe());
    assert!(r[0].involves(MAP) && r[0].involves("mmap_lock"), "{}", r[0]);
}

#[test]
fn map_then_callback_lock_is_strong() {
    // map -> callback lock, then the lock held while waiting for invalidations (a wait on the
    // map): the cycle closes through that one edge, for a list and an interval callback.
    let findings = Findings::isolated();
    let key = DynamicKey::new("callback_lock");
    let lock = Arc::new(Mutex::new(0u64, &key));
    let mirror_key = DynamicKey::new("callback_lock_interval");
    let mirror_lock = Arc::new(Mutex::new(None, &mirror_key));
    let mm = Mm::builder().diagnostics(findings.diagnostics()).build();
    let _sub = mm.register(TakesInStart { lock: lock.clone() }).unwrap();
    let iv = mm
        .interval_notifier_insert(
            0x1000,
            0x1000,
            Mirror {
                lock: mirror_lock.clone(),
            },
        )
        .unwrap();
    mm.invalidate_range_start(range()).end();
    {
        let _g = lock.lock();
        might_alloc(Gfp::NOIO); // may enter reclaim, which may take the map
    }
    {
        let _g = mirror_lock.lock();
        might_alloc(Gfp::NOIO);
    }
    let r = cycles_found(&findings);
    assert_eq!(r.len(), 2, "{}", findings.describe());
    assert!(r.iter().any(|r| r.involves("callback_lock")));
    assert!(r.iter().any(|r| r.involves("callback_lock_interval")));
    for r in &r {
        assert!(
            r.cycle.iter().any(|d| d.from.name == MAP),
            "map -> lock is a direct edge: {r}"
        );
    }
    drop(findings);
    iv.remove().unwrap();
}

/// The pre-5.12 ODP design: the start callback takes the umem lock and the end releases it
/// (here a pseudo-lock held raw, which the validator treats exactly as a held mutex).
static ODP_UMEM_LOCK: LockMap = LockMap::new("odp_umem_mutex");

struct OdpPre512;

impl MmuNotifierOps for OdpPre512 {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        ODP_UMEM_LOCK.acquire_raw();
        Ok(())
    }
    fn invalidate_range_end(&self, _range: &Range) {
        ODP_UMEM_LOCK.release_raw();
    }
}

#[test]
fn a_lock_held_from_start_to_end_is_not_a_cycle_with_the_map() {
    // Kernel lockdep reports this (the end takes the map again with the lock held); it cannot
    // deadlock, since the end waits for no other invalidation. Not reported here.
    let findings = Findings::isolated();
    let mm = Mm::builder().diagnostics(findings.diagnostics()).build();
    let _sub = mm.register(OdpPre512).unwrap();
    for _ in 0..2 {
        mm.invalidate_range_start(range()).end();
    }
    assert!(findings.is_clean(), "{}", findings.describe());
    // A real inversion with that lock is still found: held across a reclaiming allocation.
    {
        ODP_UMEM_LOCK.acquire_raw();
        might_alloc(Gfp::KERNEL);
        ODP_UMEM_LOCK.release_raw();
    }
    let r = findings.reports();
    assert_eq!(r.len(), 1, "{}", findings.describe());
    assert_eq!(r[0].kind, ReportKind::ReclaimInversion, "{}", r[0]);
    assert!(r[0].involves("odp_umem_mutex") && r[0].involves(MAP));
}

/// A list subscriber that removes an interval notifier from inside its start callback.
struct RemovesInCallback {
    victim: std::sync::Mutex<Option<IntervalNotifier>>,
}

impl MmuNotifierOps for RemovesInCallback {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        if let Some(iv) = self.victim.lock().unwrap().take() {
            let _ = iv.remove();
        }
        Ok(())
    }
}

#[test]
fn remove_inside_a_callback_is_recursive_locking_of_the_map() {
    // No interval epoch is open (the interval is far from the range), so remove does not
    // wait; it still may wait for invalidations, from inside one: the map taken again.
    let findings = Findings::isolated();
    let key = DynamicKey::new("removed_mirror");
    let mm = Mm::builder().diagnostics(findings.diagnostics()).build();
    let iv = mm
        .interval_notifier_insert(
            0x100_0000,
            0x1000,
            Mirror {
                lock: Arc::new(Mutex::new(None, &key)),
            },
        )
        .unwrap();
    let _sub = mm
        .register(RemovesInCallback {
            victim: std::sync::Mutex::new(Some(iv)),
        })
        .unwrap();
    mm.invalidate_range_start(range()).end();
    let r = findings.reports();
    let recursive: Vec<&Report> = r
        .iter()
        .filter(|r| r.kind == ReportKind::RecursiveLocking)
        .collect();
    assert_eq!(recursive.len(), 1, "{}", findings.describe());
    assert!(recursive[0].involves(MAP), "{}", recursive[0]);
    assert!(
        recursive[0]
            .to_string()
            .contains("possible recursive locking detected"),
        "{}",
        recursive[0]
    );
    assert!(!r.iter().any(|r| r.kind == ReportKind::ReclaimRecursion));
}

#[test]
fn findings_collect_contract_warnings_and_validator_reports_together() {
    let findings = Findings::isolated();
    let mm = Mm::builder().diagnostics(findings.diagnostics()).build();
    mm.release();
    mm.release(); // a contract warning
    {
        let _map_user = lockdep::non_block_section();
        lockdep::might_sleep(); // a validator report
    }
    let all = findings.all();
    assert!(all
        .iter()
        .any(|f| matches!(f, mmu_notifier::Finding::Contract(Warning::DoubleRelease))));
    assert!(all.iter().any(|f| matches!(f,
        mmu_notifier::Finding::Validator(r) if r.kind == ReportKind::SleepingInInvalidContext)));
    assert!(!findings.is_clean());
}

#[test]
fn findings_see_reports_from_threads_nobody_attached() {
    let findings = Findings::isolated();
    let context = findings.context().unwrap();
    // A thread in the test's context that was not attached to its scope (started with
    // std::thread::spawn, not lockdep::scope::spawn): an orphan, still counted.
    std::thread::spawn(move || {
        let _in = context.enter();
        lockdep::non_block_start();
        lockdep::might_sleep();
        lockdep::non_block_end();
    })
    .join()
    .unwrap();
    assert!(!findings.is_clean(), "an orphan report must not be dropped");
    assert_eq!(findings.reports().len(), 1, "{}", findings.describe());
}
