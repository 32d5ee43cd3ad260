//! The five seeds, reproduced as the whole system: real reclaim calling a real driver's
//! notifier, real hangs caught by the hung-task watchdog, the real OOM reaper leaving KVM
//! unable to fault. Each seed runs buggy, then fixed, and checks its outcome. Every scenario
//! works in a validator context of its own, so its dependencies meet no other test's.
//!
//! The hung threads of seeds 000 and 002 stay blocked forever (inside the notifier's read
//! section, holding driver locks): their machine, process and driver are leaked on purpose,
//! as a deadlocked kernel would leave them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivers::gntdev::{Gntdev, Gntdev412};
use drivers::kvm::{Kvm, KvmVariant};
use drivers::odp::{NonBlock, OdpMr, OdpPerMm};
use drivers::userptr::{Userptr, UserptrLocked, GUNTHORPE};
use drivers::{Checker, DriverError};
use lockdep::scope::Scope;
use lockdep::{Context, Gfp, Report, ReportKind};
use mmu_notifier::Profile;
use vmsim::{Advice, Config, HungTask, Machine, MapRequest, Process, VmError, Watchdog};

const P: u64 = 4096;

const HOCKO: &str = "a notifier that blocks - waits for something (a mutex whose holder waits for \
memory or a page-table lock) whose completion reclaim cannot guarantee - is the bug, not only one \
that sleeps in atomic context (Michal Hocko)";

fn involving<'a>(reports: &'a [Report], class: &str, kinds: &[ReportKind]) -> Vec<&'a Report> {
    reports
        .iter()
        .filter(|r| r.involves(class) && kinds.contains(&r.kind))
        .collect()
}

/// The "sleeping in invalid context" reports made by code in `file`.
fn sleeping_in<'a>(reports: &'a [Report], file: &str) -> Vec<&'a Report> {
    reports
        .iter()
        .filter(|r| {
            r.kind == ReportKind::SleepingInInvalidContext
                && r.location.as_ref().is_some_and(|l| l.file.ends_with(file))
        })
        .collect()
}

fn cycle_kinds() -> [ReportKind; 3] {
    [
        ReportKind::PossibleCircularLockingDependency,
        ReportKind::ReclaimInversion,
        ReportKind::RecursiveLocking,
    ]
}

/// Starts a named thread in this thread's validator context and scopes.
fn named(name: &str, f: impl FnOnce() + Send + 'static) {
    let inherit = lockdep::scope::inherited();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            inherit.apply();
            f()
        })
        .unwrap();
}

fn wait_hung(dog: &Watchdog, limit: Duration) -> Vec<HungTask> {
    let end = Instant::now() + limit;
    while dog.reports().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300)); // let the other party be reported too
    dog.reports()
}

/// A process whose one VMA (one page-table leaf) is filled with cold pages.
fn cold_process(m: &Machine, pages: u64) -> (Process, u64) {
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(pages * P)).unwrap();
    for i in 0..pages {
        p.write(a + i * P, i).unwrap();
    }
    p.madvise(a, pages * P, Advice::Cold).unwrap();
    (p, a)
}

// ---- seed 000: gntdev 4.12 under memory pressure -------------------------------------------

#[test]
fn seed000_gntdev_412_is_reported_by_the_validator_without_pressure() {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let m = Machine::new(Config::new(256).swap(256)).unwrap();
    let (p, a) = cold_process(&m, 16);
    let c = Checker::new();
    let g = Gntdev412::open(&p, &c, "gntdev-4.12").unwrap();
    g.mmap(&p, a, 4).unwrap(); // priv->lock -> GFP_KERNEL, priv->lock -> ptl
    assert_eq!(m.stats().direct_reclaim, 0);
    assert!(m.reclaim(4) > 0); // one pass of reclaim: ptl -> per-page callback -> priv->lock
    let reports = scope.reports();
    let atomic = sleeping_in(&reports, "gntdev.rs");
    assert!(!atomic.is_empty(), "{reports:#?}");
    assert!(atomic[0].to_string().contains("in_atomic"), "{}", atomic[0]);
    assert!(
        !involving(&reports, "&priv->lock", &cycle_kinds()).is_empty(),
        "the ptl <-> priv->lock cycle: {reports:#?}"
    );
    println!("seed 000 without pressure:\n{}\n{HOCKO}", atomic[0]);
    g.close().unwrap();
}

#[test]
fn seed000_gntdev_412_hangs_under_pressure_and_the_watchdog_reports_it() {
    let _ctx = Context::new().enter();
    let _scope = Scope::new();
    let m = Machine::new(Config::new(96).swap(512).watermarks(2, 3, 4)).unwrap();
    let (p, a) = cold_process(&m, 48);
    let c = Checker::new();
    let g = Arc::new(Gntdev412::open(&p, &c, "gntdev-4.12").unwrap());
    let dog = m.watchdog(Duration::from_millis(200));
    {
        let (m, g, p) = (m.clone(), g.clone(), p.mmget().unwrap());
        named("gntdev-ioctl", move || loop {
            let _op = m.enter("gntdev_mmap");
            let _ = g.mmap(&p, a, 8);
        });
    }
    {
        let p = p.mmget().unwrap();
        named("pressure", move || {
            let b = p.mmap(MapRequest::anon(4096 * P)).unwrap();
            for i in 0..4096 {
                let _ = p.write(b + i * P, i);
            }
        });
    }
    let hung = wait_hung(&dog, Duration::from_secs(20));
    assert!(!hung.is_empty(), "no hung task reported");
    assert!(
        hung.iter().any(|h| h.thread == "gntdev-ioctl"),
        "the ioctl path holding priv->lock hangs: {hung:?}"
    );
    println!("{HOCKO}"); // the watchdog printed each hung task
    std::mem::forget((g, p, m, dog));
}

#[test]
fn seed000_the_current_gntdev_under_the_same_pressure_is_clean() {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let m = Machine::new(Config::new(96).swap(512).watermarks(2, 3, 4)).unwrap();
    let (p, a) = cold_process(&m, 48);
    let c = Checker::new();
    let g = Arc::new(Gntdev::map(&p, &c, "gntdev", a, 8).unwrap());
    let dog = m.watchdog(Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let ioctl = {
        let (m, g, p, stop) = (m.clone(), g.clone(), p.mmget().unwrap(), stop.clone());
        lockdep::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _op = m.enter("gntdev map");
                let _ = g.remap(&p);
                let _ = g.access(a, None);
            }
        })
    };
    let pressure = {
        let p = p.mmget().unwrap();
        lockdep::spawn(move || {
            let b = p.mmap(MapRequest::anon(4096 * P)).unwrap();
            for i in 0..1024 {
                let _ = p.write(b + i * P, i);
            }
        })
    };
    pressure.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    ioctl.join().unwrap();
    assert!(m.stats().direct_reclaim > 0, "there was pressure");
    assert!(dog.reports().is_empty(), "{:?}", dog.reports());
    assert!(scope.reports().is_empty(), "{:#?}", scope.reports());
    Arc::into_inner(g).unwrap().unmap().unwrap();
    c.check_quiescent().unwrap();
}

// ---- seed 001: a lock held across GFP_KERNEL / GFP_NOIO, taken in the notifier --------------

fn seed001(gfp: Gfp) -> (Vec<Report>, vmsim::Stats) {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let m = Machine::new(Config::new(256).swap(256)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(8 * P)).unwrap();
    let c = Checker::new();
    let mr = OdpMr::register(&p, &c, "odp", a, 8 * P, NonBlock::TryLock).unwrap();
    mr.page_fault(a, 8, true).unwrap();
    p.madvise(a, P, Advice::DontNeed).unwrap(); // the notifier takes umem_mutex once
    {
        // The driver allocates with its notifier's lock held (an MTT page, say).
        let _umem = mr.hold_umem_mutex();
        let pfn = m.alloc_page(gfp).unwrap();
        m.put_page(pfn).unwrap();
    }
    let stats = m.stats();
    mr.deregister().unwrap();
    c.check_quiescent().unwrap();
    (scope.reports(), stats)
}

#[test]
fn seed001_gfp_kernel_and_gfp_noio_under_the_notifier_lock_are_reported_without_reclaim() {
    for gfp in [Gfp::KERNEL, Gfp::NOIO] {
        let (reports, stats) = seed001(gfp);
        assert_eq!(
            (stats.direct_reclaim, stats.reclaimed),
            (0, 0),
            "reclaim never ran"
        );
        let found = involving(&reports, "&umem_odp->umem_mutex", &cycle_kinds());
        assert!(!found.is_empty(), "{gfp:?}: {reports:#?}");
        println!("seed 001 with {gfp:?}:\n{}", found[0]);
    }
}

#[test]
fn seed001_gfp_atomic_under_the_notifier_lock_is_clean() {
    let (reports, _) = seed001(Gfp::ATOMIC);
    assert!(reports.is_empty(), "{reports:#?}");
}

// ---- seed 002: i915 userptr populating under pressure ---------------------------------------

#[test]
fn seed002_userptr_object_lock_across_pin_user_pages_is_reported() {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let m = Machine::new(Config::new(256).swap(256)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(8 * P)).unwrap();
    let c = Checker::new();
    let o = UserptrLocked::create(&p, &c, "userptr-5.7", a, 4).unwrap();
    o.get_pages(&p).unwrap(); // obj->mm.lock held across pin_user_pages (GFP_KERNEL faults)
    p.madvise(a + 4 * P, P, Advice::DontNeed).unwrap(); // outside the object: not called
    p.madvise(a, 8 * P, Advice::DontNeed).unwrap(); // the notifier waits for the object
    let reports = scope.reports();
    let found = involving(&reports, "&obj->mm.lock", &cycle_kinds());
    assert!(!found.is_empty(), "{reports:#?}");
    println!("seed 002:\n{}\n{GUNTHORPE}", found[0]);
    o.close(&p).unwrap();
}

/// A 64-frame machine with no free memory left: the 32-page object's first 16 pages are not
/// faulted yet, its last 16 are faulted and cold (reclaim's first pick), the rest of memory is
/// hot pages of another mapping.
fn userptr_pressure() -> (Machine, Process, u64) {
    let m = Machine::new(Config::new(64).swap(256).watermarks(1, 1, 2)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(32 * P)).unwrap();
    for i in 16..32 {
        p.write(a + i * P, i).unwrap();
    }
    p.madvise(a + 16 * P, 16 * P, Advice::Cold).unwrap();
    let b = p.mmap(MapRequest::anon(64 * P)).unwrap();
    let mut i = 0;
    while m.frames().nr_free() > 2 {
        p.write(b + i * P, i).unwrap();
        i += 1;
    }
    (m, p, a)
}

#[test]
fn seed002_userptr_hangs_when_reclaim_picks_the_objects_own_pages() {
    let _ctx = Context::new().enter();
    let _scope = Scope::new();
    let (m, p, a) = userptr_pressure();
    let c = Checker::new();
    let o = Arc::new(UserptrLocked::create(&p, &c, "userptr-5.7", a, 32).unwrap());
    let dog = m.watchdog(Duration::from_millis(200));
    {
        let (m, o, p) = (m.clone(), o.clone(), p.mmget().unwrap());
        named("i915-get-pages", move || {
            let _op = m.enter("i915_gem_userptr get_pages");
            let _ = o.get_pages(&p);
            let _ = m.enter("done");
        });
    }
    let hung = wait_hung(&dog, Duration::from_secs(20));
    assert!(
        hung.iter().any(|h| h.thread == "i915-get-pages"),
        "the populating thread waits for its own object: {hung:?}"
    );
    assert!(m.stats().direct_reclaim > 0);
    println!("{}\n{GUNTHORPE}", hung[0]);
    std::mem::forget((o, p, m, dog));
}

#[test]
fn seed002_the_current_userptr_under_the_same_pressure_is_clean() {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let (m, p, a) = userptr_pressure();
    let c = Checker::new();
    let o = Userptr::create(&p, &c, "userptr", a, 32).unwrap();
    let dog = m.watchdog(Duration::from_millis(200));
    let tries = o.get_pages(&p).unwrap();
    assert!(m.stats().direct_reclaim > 0, "there was pressure");
    assert_eq!(o.gpu_access(&p, 20, None).unwrap(), 20);
    assert!(tries >= 1);
    assert!(dog.reports().is_empty());
    assert!(scope.reports().is_empty(), "{:#?}", scope.reports());
    o.close(&p).unwrap();
    c.check_quiescent().unwrap();
    m.check().unwrap();
}

// ---- seed 003: the OOM reaper and an odp region ----------------------------------------------

fn odp_victim(profile: Profile) -> (Machine, Process, u64) {
    let cfg = Config {
        oom_reap_delay: Duration::from_millis(2),
        ..Config::new(256).profile(profile)
    };
    let m = Machine::new(cfg).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(8 * P)).unwrap();
    p.touch(a, 8 * P, true).unwrap();
    (m, p, a)
}

#[test]
fn seed003_odp_taking_its_mutex_under_the_oom_reaper_is_reported_non_block() {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let (m, p, a) = odp_victim(Profile::Current);
    let c = Checker::new();
    let mr = OdpMr::register(&p, &c, "odp", a, 8 * P, NonBlock::Sleep).unwrap();
    mr.page_fault(a, 8, false).unwrap();
    let report = m.oom_kill(&p);
    assert!(!report.gave_up, "{report}");
    let reports = scope.reports();
    let r = sleeping_in(&reports, "odp.rs");
    assert!(
        r.iter().any(|r| r.to_string().contains("non_block: 1")),
        "{reports:#?}"
    );
    println!("seed 003:\n{}", r[0]);
    mr.deregister().unwrap();
}

/// OOM-kills `p` while another thread runs `hold` (which takes a driver lock, and keeps it
/// until the driver refused once); returns the reaper's report.
fn hold_while_reaping(
    m: &Machine,
    p: &Process,
    hold: impl FnOnce(&dyn Fn()) + Send + 'static,
) -> vmsim::ReapReport {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let holder = lockdep::spawn(move || hold(&|| tx.send(()).unwrap()));
    rx.recv().unwrap(); // the lock is held
    let report = m.oom_kill(p);
    holder.join().unwrap();
    report
}

/// Waits (bounded) until `refusals` is not zero.
fn wait_refused(refusals: impl Fn() -> u64) {
    let end = Instant::now() + Duration::from_secs(10);
    while refusals() == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The trylock variant with the mutex held by a device fault in progress: the reaper skips
/// the VMA, retries, and reaps it once the fault is done. Returns the reaper's report.
fn reap_while_the_umem_mutex_is_held(
    mr: &Arc<OdpMr>,
    m: &Machine,
    p: &Process,
) -> vmsim::ReapReport {
    let mr2 = mr.clone();
    hold_while_reaping(m, p, move |held| {
        let _umem = mr2.hold_umem_mutex();
        held();
        wait_refused(|| mr2.refusals());
    })
}

#[test]
fn seed003_odp_with_trylock_is_skipped_retried_then_reaped() {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let (m, p, a) = odp_victim(Profile::Current);
    let c = Checker::new();
    let mr = Arc::new(OdpMr::register(&p, &c, "odp", a, 8 * P, NonBlock::TryLock).unwrap());
    mr.page_fault(a, 8, false).unwrap();
    let report = reap_while_the_umem_mutex_is_held(&mr, &m, &p);
    assert!(mr.refusals() >= 1, "the first attempt was refused");
    assert!(report.attempts >= 2 && !report.gave_up, "{report}");
    assert_eq!(report.reaped_pages, 8, "{report}");
    assert_eq!(mr.mapped(), 0);
    assert!(scope.reports().is_empty(), "{:#?}", scope.reports());
    Arc::into_inner(mr).unwrap().deregister().unwrap();
    c.check_quiescent().unwrap();
}

// ---- seed 004: KVM and odp under the OOM reaper ----------------------------------------------

#[test]
fn seed004_pre_5_12_leaves_kvms_count_raised_and_the_guest_cannot_fault() {
    let _ctx = Context::new().enter();
    let (m, p, a) = odp_victim(Profile::Pre5_12);
    let c = Checker::new();
    // The 4.19 drivers: odp's per-mm notifier (older, so called after KVM) and KVM's.
    let odp = Arc::new(OdpPerMm::register(p.mm(), &c, "odp-4.19").unwrap());
    let kvm = Kvm::create(&p, &c, "kvm-4.19", KvmVariant::V4_19).unwrap();
    kvm.guest_write(a, 7).unwrap();
    let odp2 = odp.clone();
    let report = hold_while_reaping(&m, &p, move |held| {
        let _reg = odp2.hold_for_registration();
        held();
        wait_refused(|| odp2.refusals());
    });
    assert!(!report.gave_up && report.attempts >= 2, "{report}");
    assert!(
        kvm.in_progress() >= 1,
        "KVM's start of the refused attempt never got its end"
    );
    let stuck = kvm.guest_fault(a, false).unwrap_err();
    assert!(
        matches!(stuck, DriverError::GuestFaultStuck { .. }),
        "{stuck}"
    );
    let u = c.unbalanced();
    assert!(
        u.iter()
            .any(|u| u.driver == "kvm-4.19" && u.outstanding >= 1),
        "{u:?}"
    );
    println!("seed 004 on pre-5.12: {report}\n{stuck}\n{}", u[0]);
    kvm.destroy().unwrap();
    Arc::into_inner(odp).unwrap().unregister().unwrap();
}

#[test]
fn seed004_current_pairs_every_start_and_the_guest_fault_completes() {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let (m, p, a) = odp_victim(Profile::Current);
    let c = Checker::new();
    // The 4.19 odp notifier cannot even be registered on a current kernel.
    assert!(matches!(
        OdpPerMm::register(p.mm(), &c, "odp-4.19"),
        Err(DriverError::Notifier(mmu_notifier::Error::InvalidOps(_)))
    ));
    let mr = Arc::new(OdpMr::register(&p, &c, "odp", a, 8 * P, NonBlock::TryLock).unwrap());
    let kvm = Kvm::create(&p, &c, "kvm", KvmVariant::Current).unwrap();
    kvm.guest_write(a, 7).unwrap();
    mr.page_fault(a, 8, false).unwrap();
    let report = reap_while_the_umem_mutex_is_held(&mr, &m, &p);
    assert!(!report.gave_up && report.attempts >= 2, "{report}");
    assert_eq!(kvm.in_progress(), 0);
    // The fault completes: with an error, since the reaped memory is gone, not RET_PF_RETRY
    // forever.
    match kvm.guest_fault(a, false) {
        Err(DriverError::Vm(VmError::Gone(_))) => {}
        other => panic!("{other:?}"),
    }
    assert!(scope.reports().is_empty(), "{:#?}", scope.reports());
    kvm.destroy().unwrap();
    Arc::into_inner(mr).unwrap().deregister().unwrap();
    c.check_quiescent().unwrap();
}
