//! The five seeds as the whole system: each scenario builds a machine, a process and the driver,
//! runs the seed's workload (real reclaim, real pressure, the real OOM reaper), and returns what
//! it observed as an [`Outcome`]: the validator's reports, the hung tasks the watchdog found,
//! the checker's violations and unpaired starts, the reaper's report. The tests
//! (`tests/seeds.rs`) and the tour check these outcomes.
//!
//! Every scenario works in a validator [`Context`] of its own, so its dependencies meet no
//! other scenario's. A scenario that hangs on purpose (the buggy drivers of seeds 000 and 002
//! under pressure) leaves its deadlocked threads blocked and leaks their machine, process and
//! driver, as a deadlocked kernel would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockdep::scope::Scope;
use lockdep::{Context, Gfp, Report, ReportKind};
use mmu_notifier::Profile;
use vmsim::{Advice, Config, HungTask, Machine, MapRequest, Process, ReapReport, Watchdog};

use crate::checker::{Checker, Unbalanced, Violation};
use crate::gntdev::{Gntdev, Gntdev412};
use crate::kvm::{Kvm, KvmVariant};
use crate::odp::{NonBlock, OdpMr, OdpPerMm};
use crate::userptr::{Userptr, UserptrLocked};
use crate::DriverError;

const P: u64 = 4096;

/// Michal Hocko's point about seed 000, as the tour prints it.
pub const HOCKO: &str = "a notifier that blocks - waits for something (a mutex whose holder \
waits for memory or a page-table lock) whose completion reclaim cannot guarantee - is the bug, \
not only one that sleeps in atomic context (Michal Hocko)";

/// How long a scenario waits for the watchdog's first report.
pub const HANG_LIMIT: Duration = Duration::from_secs(20);

/// What a scenario observed.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The validator's reports of the run.
    pub reports: Vec<Report>,
    /// The hung tasks the watchdog reported.
    pub hung: Vec<HungTask>,
    /// The checker's violations.
    pub violations: Vec<Violation>,
    /// List subscribers whose starts and ends did not pair.
    pub unbalanced: Vec<Unbalanced>,
    /// Direct-reclaim entries of the machine.
    pub direct_reclaim: u64,
    /// Frames reclaimed.
    pub reclaimed: u64,
    /// The OOM reaper's report.
    pub reap: Option<ReapReport>,
    /// Non-blockable starts the driver refused.
    pub refusals: u64,
    /// KVM's `mmu_invalidate_in_progress` after the reaper.
    pub kvm_in_progress: Option<i64>,
    /// The guest fault after the reaper, as text (`Ok` or the error).
    pub guest_fault: Option<Result<(), String>>,
    /// Whether the guest fault was declared stuck (`RET_PF_RETRY` forever).
    pub guest_fault_stuck: bool,
    /// Whether the registration of a driver failed as the profile demands.
    pub registration_refused: Option<bool>,
}

impl Outcome {
    /// The reports of `kinds` that involve the lock class `class`.
    pub fn involving(&self, class: &str, kinds: &[ReportKind]) -> Vec<&Report> {
        self.reports
            .iter()
            .filter(|r| r.involves(class) && kinds.contains(&r.kind))
            .collect()
    }

    /// The "sleeping in invalid context" reports made by code in `file`.
    pub fn sleeping_in(&self, file: &str) -> Vec<&Report> {
        self.reports
            .iter()
            .filter(|r| {
                r.kind == ReportKind::SleepingInInvalidContext
                    && r.location.as_ref().is_some_and(|l| l.file.ends_with(file))
            })
            .collect()
    }

    /// The lock-order reports of `class` (a cycle, a reclaim inversion, recursive locking).
    pub fn cycles(&self, class: &str) -> Vec<&Report> {
        self.involving(class, &CYCLES)
    }

    /// Nothing wrong seen: no report, no hung task, no violation, every start paired.
    pub fn is_clean(&self) -> bool {
        self.reports.is_empty()
            && self.hung.is_empty()
            && self.violations.is_empty()
            && self.unbalanced.is_empty()
    }

    fn checker(&mut self, c: &Checker) {
        self.violations = c.violations();
        self.unbalanced = c.unbalanced();
    }

    /// Takes the scope's reports, the checker's findings and the machine's counters.
    fn finish(mut self, scope: &Scope, c: &Checker, m: &Machine) -> Result<Outcome, DriverError> {
        self.reports = scope.take();
        self.checker(c);
        self.stats(m);
        Ok(self)
    }

    fn stats(&mut self, m: &Machine) {
        let s = m.stats();
        self.direct_reclaim = s.direct_reclaim;
        self.reclaimed = s.reclaimed;
    }
}

/// The kinds of a lock-order report.
pub const CYCLES: [ReportKind; 3] = [
    ReportKind::PossibleCircularLockingDependency,
    ReportKind::ReclaimInversion,
    ReportKind::RecursiveLocking,
];

/// Starts a named thread in this thread's validator context and scopes.
fn named(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), DriverError> {
    let inherit = lockdep::scope::inherited();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            inherit.apply();
            f()
        })
        .map(drop)
        .map_err(|e| DriverError::Vm(vmsim::VmError::NoSpace(format!("thread: {e}"))))
}

fn wait_hung(dog: &Watchdog, limit: Duration) -> Vec<HungTask> {
    let end = Instant::now() + limit;
    while dog.reports().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !dog.reports().is_empty() {
        std::thread::sleep(Duration::from_millis(300)); // the other party of a cycle too
    }
    dog.reports()
}

/// A process whose one VMA (one page-table leaf) is filled with cold pages.
fn cold_process(m: &Machine, pages: u64) -> Result<(Process, u64), DriverError> {
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(pages * P))?;
    for i in 0..pages {
        p.write(a + i * P, i)?;
    }
    p.madvise(a, pages * P, Advice::Cold)?;
    Ok((p, a))
}

fn gntdev_machine() -> Result<(Machine, Process, u64), DriverError> {
    let m = Machine::new(Config::new(96).swap(512).watermarks(2, 3, 4))?;
    let (p, a) = cold_process(&m, 48)?;
    Ok((m, p, a))
}

/// Memory pressure without running out: `rounds` passes of writes over 256 pages (with the
/// cold ones, within the machine's memory and swap), each write to a swapped-out page
/// allocating, so direct reclaim runs again and again; stops early when `stop` is set.
fn pressure(p: &Process, stop: &AtomicBool, rounds: u64) {
    let Ok(b) = p.mmap(MapRequest::anon(256 * P)) else {
        return;
    };
    for r in 0..rounds {
        for i in 0..256 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let _ = p.write(b + i * P, r + i);
        }
    }
}

/// Seed 000 without pressure: one `gntdev_mmap` of the 4.12 driver (its mutex across a
/// `GFP_KERNEL` allocation and the page-table locks), then one reclaim pass (the per-page
/// callback takes the mutex under the page-table lock). Nothing hangs; the validator reports.
pub fn seed000_validator() -> Result<Outcome, DriverError> {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let m = Machine::new(Config::new(256).swap(256))?;
    let (p, a) = cold_process(&m, 16)?;
    let c = Checker::new();
    let g = Gntdev412::open(&p, &c, "gntdev-4.12")?;
    g.mmap(&p, a, 4)?;
    m.reclaim(4);
    g.close()?;
    Outcome::default().finish(&scope, &c, &m)
}

/// Seed 000 under memory pressure: an ioctl thread mapping grants in a loop (`gntdev_mmap`)
/// against a thread allocating until reclaim runs, with the hung-task watchdog on.
/// `buggy`: the 4.12 driver, whose threads deadlock (waits up to `limit` for the report);
/// otherwise the current driver, run until the pressure thread is done.
pub fn seed000_pressure(buggy: bool, limit: Duration) -> Result<Outcome, DriverError> {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let (m, p, a) = gntdev_machine()?;
    let c = Checker::new();
    let dog = m.watchdog(Duration::from_millis(200));
    let mut o = Outcome::default();
    if buggy {
        let g = Arc::new(Gntdev412::open(&p, &c, "gntdev-4.12")?);
        {
            let (m, g, p) = (m.clone(), g.clone(), p.mmget()?);
            named("gntdev-ioctl", move || loop {
                let _op = m.enter("gntdev_mmap");
                let _ = g.mmap(&p, a, 8);
            })?;
        }
        let (p2, stop) = (p.mmget()?, Arc::new(AtomicBool::new(false)));
        let stop2 = stop.clone();
        named("pressure", move || pressure(&p2, &stop2, u64::MAX))?;
        o.hung = wait_hung(&dog, limit);
        stop.store(true, Ordering::Relaxed);
        o.reports = scope.take();
        o.stats(&m);
        std::mem::forget((g, p, m, dog)); // deadlocked threads hold them
        return Ok(o);
    }
    let g = Arc::new(Gntdev::map(&p, &c, "gntdev", a, 8)?);
    let stop = Arc::new(AtomicBool::new(false));
    let ioctl = {
        let (m, g, p, stop) = (m.clone(), g.clone(), p.mmget()?, stop.clone());
        lockdep::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _op = m.enter("gntdev map");
                let _ = g.remap(&p);
                let _ = g.access(a, None);
            }
        })
    };
    let p2 = p.mmget()?;
    let done = Arc::new(AtomicBool::new(false));
    let load = lockdep::spawn(move || pressure(&p2, &done, 4));
    let _ = load.join();
    stop.store(true, Ordering::Relaxed);
    let _ = ioctl.join();
    o.hung = dog.reports();
    if let Some(g) = Arc::into_inner(g) {
        g.unmap()?;
    }
    o.finish(&scope, &c, &m)
}

/// A 256-frame machine with swap, no pressure, and a process with an unfaulted 8-page mapping.
fn roomy_process() -> Result<(Machine, Process, u64), DriverError> {
    let m = Machine::new(Config::new(256).swap(256))?;
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(8 * P))?;
    Ok((m, p, a))
}

/// Seed 001: odp's umem mutex (taken by its notifier) held across one allocation of `gfp`,
/// with no memory pressure at all.
pub fn seed001(gfp: Gfp) -> Result<Outcome, DriverError> {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let (m, p, a) = roomy_process()?;
    let c = Checker::new();
    let mr = OdpMr::register(&p, &c, "odp", a, 8 * P, NonBlock::TryLock)?;
    mr.page_fault(a, 8, true)?;
    p.madvise(a, P, Advice::DontNeed)?; // the notifier takes umem_mutex once
    {
        let _umem = mr.hold_umem_mutex(); // e.g. allocating an MTT page under it
        let pfn = m.alloc_page(gfp)?;
        m.put_page(pfn)?;
    }
    mr.deregister()?;
    Outcome::default().finish(&scope, &c, &m)
}

/// Seed 002 without pressure: the 5.7-era userptr object populated (its lock across
/// `pin_user_pages`), then a `MADV_DONTNEED` over it (its notifier waits for the object).
pub fn seed002_validator() -> Result<Outcome, DriverError> {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let (m, p, a) = roomy_process()?;
    let c = Checker::new();
    let o = UserptrLocked::create(&p, &c, "userptr-5.7", a, 4)?;
    o.get_pages(&p)?;
    p.madvise(a + 4 * P, P, Advice::DontNeed)?; // outside the object: not its business
    p.madvise(a, 8 * P, Advice::DontNeed)?;
    o.close(&p)?;
    Outcome::default().finish(&scope, &c, &m)
}

/// A 64-frame machine with no free memory: a 32-page range whose first 16 pages are not
/// faulted yet and whose last 16 are faulted and cold (reclaim's first pick); the rest of
/// memory is hot pages of another mapping.
fn userptr_pressure() -> Result<(Machine, Process, u64), DriverError> {
    let m = Machine::new(Config::new(64).swap(256).watermarks(1, 1, 2))?;
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(32 * P))?;
    for i in 16..32 {
        p.write(a + i * P, i)?;
    }
    p.madvise(a + 16 * P, 16 * P, Advice::Cold)?;
    let b = p.mmap(MapRequest::anon(64 * P))?;
    let mut i = 0;
    while m.frames().nr_free() > 2 {
        p.write(b + i * P, i)?;
        i += 1;
    }
    Ok((m, p, a))
}

/// Seed 002 under pressure: a userptr object over the 32-page range populated while memory is
/// full. `buggy`: the 5.7 design, whose populating thread recurses into its own notifier and
/// hangs (waits up to `limit`); otherwise the current design, which also has the GPU read
/// page 20.
pub fn seed002_pressure(buggy: bool, limit: Duration) -> Result<Outcome, DriverError> {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let (m, p, a) = userptr_pressure()?;
    let c = Checker::new();
    let dog = m.watchdog(Duration::from_millis(200));
    let mut out = Outcome::default();
    if buggy {
        let o = Arc::new(UserptrLocked::create(&p, &c, "userptr-5.7", a, 32)?);
        let (m2, o2, p2) = (m.clone(), o.clone(), p.mmget()?);
        named("i915-get-pages", move || {
            let _op = m2.enter("i915_gem_userptr get_pages");
            let _ = o2.get_pages(&p2);
        })?;
        out.hung = wait_hung(&dog, limit);
        out.reports = scope.take();
        out.stats(&m);
        std::mem::forget((o, p, m, dog));
        return Ok(out);
    }
    let o = Userptr::create(&p, &c, "userptr", a, 32)?;
    o.get_pages(&p)?;
    let v = o.gpu_access(&p, 20, None)?;
    if v != 20 {
        out.guest_fault = Some(Err(format!("the GPU read {v} instead of 20")));
    }
    o.close(&p)?;
    out.hung = dog.reports();
    out.finish(&scope, &c, &m)
}

fn victim(profile: Profile) -> Result<(Machine, Process, u64), DriverError> {
    let cfg = Config {
        oom_reap_delay: Duration::from_millis(2),
        ..Config::new(256).profile(profile)
    };
    let m = Machine::new(cfg)?;
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(8 * P))?;
    p.touch(a, 8 * P, true)?;
    Ok((m, p, a))
}

/// OOM-kills `p` while another thread runs `hold`, which takes a driver lock, calls `held`,
/// and keeps the lock until the driver refused once (bounded); returns the reaper's report.
fn hold_while_reaping(
    m: &Machine,
    p: &Process,
    hold: impl FnOnce(&dyn Fn()) + Send + 'static,
) -> ReapReport {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let holder = lockdep::spawn(move || {
        hold(&|| {
            let _ = tx.send(());
        })
    });
    let _ = rx.recv();
    let report = m.oom_kill(p);
    let _ = holder.join();
    report
}

fn wait_refused(refusals: impl Fn() -> u64) {
    let end = Instant::now() + Duration::from_secs(10);
    while refusals() == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// OOM-kills `p` with the odp region `mr` on it, with its umem mutex held by another thread
/// until the reaper was refused once if `hold_umem` (else with nothing held); then deregisters
/// the region. Returns the reaper's report and the region's refusals.
fn reap_odp(
    m: &Machine,
    p: &Process,
    mr: Arc<OdpMr>,
    hold_umem: bool,
) -> Result<(ReapReport, u64), DriverError> {
    let report = if hold_umem {
        let mr2 = mr.clone();
        hold_while_reaping(m, p, move |held| {
            let _umem = mr2.hold_umem_mutex();
            held();
            wait_refused(|| mr2.refusals());
        })
    } else {
        m.oom_kill(p)
    };
    let refusals = mr.refusals();
    if let Some(mr) = Arc::into_inner(mr) {
        mr.deregister()?;
    }
    Ok((report, refusals))
}

/// Seed 003: an odp region on a process the OOM reaper reaps. [`NonBlock::Sleep`]: the
/// notifier takes its mutex in the non-blockable range. [`NonBlock::TryLock`]: the mutex is
/// held by a device fault in progress until the reaper was refused once.
pub fn seed003(nonblock: NonBlock) -> Result<Outcome, DriverError> {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let (m, p, a) = victim(Profile::Current)?;
    let c = Checker::new();
    let mr = Arc::new(OdpMr::register(&p, &c, "odp", a, 8 * P, nonblock)?);
    mr.page_fault(a, 8, false)?;
    let (report, refusals) = reap_odp(&m, &p, mr, nonblock == NonBlock::TryLock)?;
    let o = Outcome {
        reap: Some(report),
        refusals,
        ..Outcome::default()
    };
    o.finish(&scope, &c, &m)
}

/// Seed 004: KVM and odp on one process, OOM-killed and reaped while odp's lock is held by
/// another thread until it refused once. [`Profile::Pre5_12`]: the 4.19 drivers (odp's per-mm
/// list notifier with a trylock start and an end, registered first so it runs after KVM's);
/// [`Profile::Current`]: the current ones (odp an interval notifier). Then the guest faults.
pub fn seed004(profile: Profile) -> Result<Outcome, DriverError> {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let (m, p, a) = victim(profile)?;
    let c = Checker::new();
    let mut o = Outcome::default();
    let (report, kvm, refusals) = if profile == Profile::Pre5_12 {
        let odp = Arc::new(OdpPerMm::register(p.mm(), &c, "odp-4.19")?);
        let kvm = Kvm::create(&p, &c, "kvm-4.19", KvmVariant::V4_19)?;
        kvm.guest_write(a, 7)?;
        let odp2 = odp.clone();
        let report = hold_while_reaping(&m, &p, move |held| {
            let _reg = odp2.hold_for_registration();
            held();
            wait_refused(|| odp2.refusals());
        });
        let refusals = odp.refusals();
        if let Some(odp) = Arc::into_inner(odp) {
            odp.unregister()?;
        }
        (report, kvm, refusals)
    } else {
        o.registration_refused = Some(matches!(
            OdpPerMm::register(p.mm(), &c, "odp-4.19"),
            Err(DriverError::Notifier(mmu_notifier::Error::InvalidOps(_)))
        ));
        let mr = Arc::new(OdpMr::register(&p, &c, "odp", a, 8 * P, NonBlock::TryLock)?);
        let kvm = Kvm::create(&p, &c, "kvm", KvmVariant::Current)?;
        kvm.guest_write(a, 7)?;
        mr.page_fault(a, 8, false)?;
        let (report, refusals) = reap_odp(&m, &p, mr, true)?;
        (report, kvm, refusals)
    };
    o.refusals = refusals;
    o.reap = Some(report);
    o.kvm_in_progress = Some(kvm.in_progress());
    let fault = kvm.guest_fault(a, false);
    o.guest_fault_stuck = matches!(fault, Err(DriverError::GuestFaultStuck { .. }));
    o.guest_fault = Some(fault.map_err(|e| e.to_string()));
    kvm.destroy()?;
    o.finish(&scope, &c, &m)
}
