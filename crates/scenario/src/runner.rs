//! Running a loaded scenario: build the machine, processes and drivers, run the steps (a
//! `thread` step concurrently), tear down, and hand what was observed to the expectations.
//!
//! The runner uses real threads. `seed` controls the runner's own choices: the yields each
//! scenario thread makes before each of its steps. It does not control the OS scheduler: a
//! seed makes a run repeatable in its choices, not in its interleaving. (The simulator's
//! exact-replay mode is a `--cfg shuttle` build of its tests, see `crates/vmsim`.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use std::time::{Duration, Instant};
use sync_prims::lock;

use drivers::buggy::{BuggyList, BuggyMirror, IntervalBug, ListBug};
use drivers::dmirror::Dmirror;
use drivers::gntdev::{Gntdev, Gntdev412};
use drivers::kvm::{Kvm, KvmVariant};
use drivers::odp::{NonBlock, OdpMr, OdpPerMm};
use drivers::sva::Sva;
use drivers::userptr::{Userptr, UserptrLocked};
use drivers::{Checker, DriverError};
use lockdep::scope::Scope;
use lockdep::{Context, Gfp};
use mmu_notifier::Profile;
use toml::Spanned;
use vmsim::{Advice, Config, Machine, MapRequest};

use crate::load::Loaded;
use crate::outcome::Outcome;
use crate::rng::Rng;
use crate::schema::{
    Action, AdviceName, DriverKind, DriverSpec, GfpName, MapKindName, NonBlockName, ProfileName,
    Step,
};
use crate::trace::TraceSink;
use crate::world::{close, Drv, DrvSlot, MapInfo, Proc, ThreadSlot, World, P};

/// How to run.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Seed of the runner's choices (see the module documentation).
    pub seed: u64,
    /// Where notifier events go as they happen (`--trace`); `None`: not traced.
    pub trace: Option<TraceSink>,
}

/// Default time a `stop` step and the final teardown wait for a thread.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// How long a `hold` keeps its lock waiting for a refusal.
const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// Runs a loaded scenario and checks its expectations. Never panics on a scenario's account:
/// a failed step, a hung thread or a violated invariant is part of the outcome.
pub fn run(loaded: &Loaded, opts: &RunOptions) -> Outcome {
    let started = Instant::now();
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let s = &loaded.scenario;
    let mut step_error = None;
    let world = match build(loaded, opts) {
        Ok(w) => Some(Arc::new(w)),
        Err(e) => {
            step_error = Some(e);
            None
        }
    };
    let mut leaked = Vec::new();
    let mut obs = crate::expect::Raw::default();
    if let Some(world) = &world {
        if step_error.is_none() {
            step_error = attach_all(loaded, world).err();
        }
        if step_error.is_none() {
            step_error = run_steps(loaded, world, &s.steps).err();
        }
        leaked = stop_all(world);
        obs.unbalanced = world.checker.unbalanced();
        obs.counters = crate::expect::counters(world);
        if leaked.is_empty() {
            if let Err(e) = teardown(world) {
                step_error.get_or_insert(format!("teardown: {e}"));
            }
            if let Err(e) = world.m.check() {
                obs.invariant = Some(e.to_string());
            }
        }
        obs.violations = world.checker.violations();
        obs.hangs = world
            .watchdog
            .as_ref()
            .map(|w| w.reports())
            .unwrap_or_default();
        obs.leaked = leaked.clone();
    }
    obs.reports = scope.reports();
    obs.reports.extend(scope.orphans());
    if !leaked.is_empty() {
        // The hung threads hold the machine, its processes and drivers: leave them all as a
        // deadlocked kernel would, rather than wait for them forever.
        std::mem::forget(world);
    }
    crate::expect::evaluate(loaded, obs, opts.seed, step_error, started.elapsed())
}

fn gfp(g: GfpName) -> Gfp {
    match g {
        GfpName::Kernel => Gfp::KERNEL,
        GfpName::Nofs => Gfp::NOFS,
        GfpName::Noio => Gfp::NOIO,
        GfpName::Atomic => Gfp::ATOMIC,
        GfpName::Nowait => Gfp::NOWAIT,
    }
}

fn advice(a: AdviceName) -> Advice {
    match a {
        AdviceName::Dontneed => Advice::DontNeed,
        AdviceName::Free => Advice::Free,
        AdviceName::Cold => Advice::Cold,
        AdviceName::Pageout => Advice::PageOut,
        AdviceName::Dontfork => Advice::DontFork,
        AdviceName::Dofork => Advice::DoFork,
        AdviceName::Wipeonfork => Advice::WipeOnFork,
        AdviceName::Keeponfork => Advice::KeepOnFork,
    }
}

fn build(loaded: &Loaded, opts: &RunOptions) -> Result<World, String> {
    let ms = &loaded.scenario.machine;
    let mut cfg = Config::new(ms.frames).swap(ms.swap).kswapd(ms.kswapd);
    if let Some(w) = ms.watermarks {
        cfg = cfg.watermarks(w.min, w.low, w.high);
    }
    cfg = cfg.profile(match ms.profile {
        ProfileName::Current => Profile::Current,
        ProfileName::Pre5_12 => Profile::Pre5_12,
    });
    if let Some(d) = ms.oom_reap_delay_ms {
        cfg.oom_reap_delay = Duration::from_millis(d);
    }
    let m = Machine::new(cfg).map_err(|e| format!("machine: {e}"))?;
    let watchdog = ms.watchdog_ms.map(|t| m.watchdog(Duration::from_millis(t)));
    let world = World {
        m,
        checker: Checker::new(),
        processes: Mutex::new(HashMap::new()),
        mappings: Mutex::new(HashMap::new()),
        drivers: Mutex::new(HashMap::new()),
        threads: Mutex::new(HashMap::new()),
        watchdog,
        trace: opts.trace.clone(),
        thread_errors: AtomicU64::new(0),
        allowed_errors: AtomicU64::new(0),
        closed_refusals: AtomicU64::new(0),
        seed: opts.seed,
    };
    for p in &loaded.scenario.processes {
        let p = p.get_ref();
        let process = world.m.spawn();
        for map in &p.mappings {
            let map = map.get_ref();
            let len = map.pages * P;
            let mut req = match map.kind {
                MapKindName::Anon => MapRequest::anon(len),
                MapKindName::AnonShared => MapRequest::anon_shared(len),
                MapKindName::File | MapKindName::FilePrivate => {
                    let f = world.m.create_file(map.pages, false);
                    MapRequest::file(&f, 0, len, map.kind == MapKindName::File)
                }
            };
            if let Some(prot) = &map.prot {
                req = req.prot(crate::validate::parse_prot(prot)?);
            }
            let a = process
                .mmap(req)
                .map_err(|e| format!("mapping `{}`: {e}", map.name))?;
            if map.populate {
                for i in 0..map.pages {
                    process
                        .write(a + i * P, i)
                        .map_err(|e| format!("populating `{}`: {e}", map.name))?;
                }
            }
            if map.cold {
                process
                    .madvise(a, len, Advice::Cold)
                    .map_err(|e| format!("`{}` cold: {e}", map.name))?;
            }
            lock(&world.mappings).insert(
                map.name.clone(),
                MapInfo {
                    owner: p.name.clone(),
                    addr: a,
                    pages: map.pages,
                },
            );
        }
        world.add_process(&p.name, process);
    }
    Ok(world)
}

fn attach_all(loaded: &Loaded, world: &World) -> Result<(), String> {
    for d in &loaded.scenario.drivers {
        let line = loaded.position(&d.span()).0;
        let spec = d.get_ref();
        let r = attach(world, spec);
        match (&spec.attach_error, r) {
            (None, Ok(slot)) => {
                lock(&world.drivers).insert(spec.name.clone(), Arc::new(slot));
            }
            (None, Err(e)) => return Err(format!("driver `{}` (line {line}): {e}", spec.name)),
            (Some(want), Ok(slot)) => {
                let _ = close(slot, world);
                return Err(format!(
                    "driver `{}` (line {line}) attached, but must fail with an error containing {want:?}",
                    spec.name
                ));
            }
            (Some(want), Err(e)) if !e.contains(want.as_str()) => {
                return Err(format!(
                    "driver `{}` (line {line}) failed with {e:?}, which does not contain {want:?}",
                    spec.name
                ))
            }
            (Some(_), Err(_)) => {}
        }
    }
    Ok(())
}

fn attach(world: &World, d: &DriverSpec) -> Result<DrvSlot, String> {
    let proc_ = world.process(&d.process)?;
    let p = &proc_.process;
    let c = &world.checker;
    let range = match &d.at {
        Some(at) => {
            let (_, a, n) = world.place(at, d.page, d.pages)?;
            Some((a, n))
        }
        None => None,
    };
    let (a, n) = range.unwrap_or((0, 0));
    let e = |e: DriverError| e.to_string();
    let drv = match d.kind {
        DriverKind::Dmirror => Drv::Dmirror(Dmirror::open(p, c, &d.name).map_err(e)?),
        DriverKind::Odp => {
            let nb = match d.nonblock.unwrap_or_default() {
                NonBlockName::Trylock => NonBlock::TryLock,
                NonBlockName::Sleep => NonBlock::Sleep,
            };
            Drv::Odp(OdpMr::register(p, c, &d.name, a, n * P, nb).map_err(e)?)
        }
        DriverKind::Odp4_19 => Drv::Odp419(OdpPerMm::register(p.mm(), c, &d.name).map_err(e)?),
        DriverKind::Kvm => Drv::Kvm(Kvm::create(p, c, &d.name, KvmVariant::Current).map_err(e)?),
        DriverKind::Kvm4_19 => Drv::Kvm(Kvm::create(p, c, &d.name, KvmVariant::V4_19).map_err(e)?),
        DriverKind::Gntdev => Drv::Gntdev(Gntdev::map(p, c, &d.name, a, n).map_err(e)?),
        DriverKind::Gntdev4_12 => Drv::Gntdev412(Gntdev412::open(p, c, &d.name).map_err(e)?),
        DriverKind::Userptr => Drv::Userptr(Userptr::create(p, c, &d.name, a, n).map_err(e)?),
        DriverKind::Userptr5_7 => {
            Drv::Userptr57(UserptrLocked::create(p, c, &d.name, a, n).map_err(e)?)
        }
        DriverKind::Sva => Drv::Sva(Sva::bind(p, c, &d.name).map_err(e)?),
        DriverKind::BuggySetSeqForgotten => {
            Drv::Mirror(BuggyMirror::open(p, c, IntervalBug::SetSeqForgotten).map_err(e)?)
        }
        DriverKind::BuggyRetryOutsideLock => {
            Drv::Mirror(BuggyMirror::open(p, c, IntervalBug::RetryOutsideLock).map_err(e)?)
        }
        DriverKind::BuggyNoRetry => {
            Drv::Mirror(BuggyMirror::open(p, c, IntervalBug::NoRetry).map_err(e)?)
        }
        DriverKind::BuggyZapOnlyInEnd => {
            Drv::List(BuggyList::register(p, c, ListBug::ZapOnlyInEnd).map_err(e)?)
        }
        DriverKind::BuggyReleaseKeepsMappings => {
            Drv::List(BuggyList::register(p, c, ListBug::ReleaseKeepsMappings).map_err(e)?)
        }
    };
    Ok(DrvSlot {
        drv,
        kind: d.kind,
        process: d.process.clone(),
        base: range.map(|r| r.0),
    })
}

fn run_steps(loaded: &Loaded, world: &Arc<World>, steps: &[Spanned<Step>]) -> Result<(), String> {
    for (i, st) in steps.iter().enumerate() {
        let line = loaded.position(&st.span()).0;
        let step = st.get_ref();
        let judge = step.judge();
        let r = exec(loaded, world, step);
        let at = || format!("step {} ({}, line {line})", i + 1, step.op());
        match (r, &judge.error) {
            (Ok(()), None) => {}
            (Ok(()), Some(want)) => {
                return Err(format!(
                    "{} succeeded, but must fail with an error containing {want:?}",
                    at()
                ))
            }
            (Err(e), Some(want)) if e.contains(want.as_str()) => {}
            (Err(e), Some(want)) => {
                return Err(format!(
                    "{} failed with {e:?}, which does not contain {want:?}",
                    at()
                ))
            }
            (Err(_), None) if judge.may_fail => {
                world.allowed_errors.fetch_add(1, Ordering::Relaxed);
            }
            (Err(e), None) => return Err(format!("{}: {e}", at())),
        }
    }
    Ok(())
}

fn vm<T>(r: Result<T, vmsim::VmError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn exec(loaded: &Loaded, world: &Arc<World>, step: &Step) -> Result<(), String> {
    match step {
        Step::Write {
            at,
            page,
            pages,
            value,
            ..
        } => {
            let (p, a, n) = world.place(at, *page, *pages)?;
            for i in 0..n {
                vm(p.process.write(a + i * P, value.unwrap_or(page + i)))?;
            }
        }
        Step::Read {
            at,
            page,
            pages,
            equals,
            ..
        } => {
            let (p, a, n) = world.place(at, *page, *pages)?;
            for i in 0..n {
                let v = vm(p.process.read(a + i * P))?;
                if let Some(want) = equals {
                    if v != *want {
                        return Err(format!("page {} of `{at}` reads {v}, not {want}", page + i));
                    }
                }
            }
        }
        Step::Madvise {
            at,
            page,
            pages,
            advice: adv,
            ..
        } => {
            let (p, a, n) = world.place(at, *page, *pages)?;
            vm(p.process.madvise(a, n * P, advice(*adv)))?;
        }
        Step::Munmap {
            at, page, pages, ..
        } => {
            let (p, a, n) = world.place(at, *page, *pages)?;
            vm(p.process.munmap(a, n * P))?;
        }
        Step::Mprotect {
            at,
            page,
            pages,
            prot,
            ..
        } => {
            let (p, a, n) = world.place(at, *page, *pages)?;
            vm(p.process
                .mprotect(a, n * P, crate::validate::parse_prot(prot)?))?;
        }
        Step::Migrate {
            at, page, pages, ..
        } => {
            let (p, a, n) = world.place(at, *page, *pages)?;
            vm(p.process.migrate_pages(a, n))?;
        }
        Step::FillMemory { at, leave_free } => {
            let (p, a, n) = world.place(at, 0, None)?;
            let mut i = 0;
            while world.m.frames().nr_free() > *leave_free {
                if i >= n {
                    return Err(format!(
                        "`{at}` is full and {} frames are still free",
                        world.m.frames().nr_free()
                    ));
                }
                vm(p.process.write(a + i * P, i))?;
                i += 1;
            }
        }
        Step::Fork { process, child } => {
            let p = world.process(process)?;
            let c = vm(p.process.fork())?;
            world.add_process(child, c);
        }
        Step::Exit { process } => {
            let p = lock(&world.processes)
                .remove(process)
                .ok_or_else(|| format!("process `{process}` has exited"))?;
            let p = Arc::try_unwrap(p)
                .map_err(|_| format!("process `{process}` is in use by a running thread"))?;
            vm(p.process.exit())?;
        }
        Step::Reclaim { pages } => {
            world.m.reclaim(*pages);
        }
        Step::OomKill { process } => {
            let p = world.process(process)?;
            world.m.oom_kill(&p.process);
        }
        Step::Alloc {
            gfp: g, holding, ..
        } => {
            let slot = holding.as_ref().map(|h| world.driver(h)).transpose()?;
            let _held = slot.as_deref().map(hold_guard);
            let pfn = vm(world.m.alloc_page(gfp(*g)))?;
            vm(world.m.put_page(pfn))?;
        }
        Step::Device {
            driver,
            action,
            at,
            page,
            pages,
            write,
            value,
            ..
        } => {
            let slot = world.driver(driver)?;
            let (p, a, n) = match at {
                Some(at) => world.place(at, *page, Some(pages.unwrap_or(1)))?,
                None => {
                    let p = world.process(&slot.process)?;
                    let base = slot.base.unwrap_or(0);
                    let a = page
                        .checked_mul(P)
                        .and_then(|o| o.checked_add(base))
                        .ok_or_else(|| format!("page {page} is beyond the address space"))?;
                    (p, a, pages.unwrap_or(1))
                }
            };
            device(world, &slot, &p, *action, a, n, *write, *value)?;
        }
        Step::Close { driver } => {
            let slot = lock(&world.drivers)
                .remove(driver)
                .ok_or_else(|| format!("driver `{driver}` is not attached"))?;
            let slot = Arc::try_unwrap(slot)
                .map_err(|_| format!("driver `{driver}` is in use by a running thread"))?;
            close(slot, world)?;
        }
        Step::Thread {
            name,
            steps,
            repeat,
            task,
        } => spawn_thread(loaded, world, name, steps, *repeat, task.clone())?,
        Step::Stop { thread, wait_ms } => {
            let t = lock(&world.threads).remove(thread);
            if let Some(t) = t {
                t.stop.store(true, Ordering::Relaxed);
                let wait = wait_ms.map_or(STOP_WAIT, Duration::from_millis);
                if !join_within(&t, wait) {
                    lock(&world.threads).insert(thread.clone(), t);
                    return Err(format!(
                        "thread `{thread}` did not stop within {} ms",
                        wait.as_millis()
                    ));
                }
            }
        }
        Step::WaitHang {
            limit_ms,
            settle_ms,
        } => {
            let dog = world
                .watchdog
                .as_ref()
                .ok_or("wait-hang needs machine.watchdog_ms")?;
            if dog
                .wait_for_report(Duration::from_millis(*limit_ms))
                .is_none()
            {
                return Err(format!("no hung task reported within {limit_ms} ms"));
            }
            std::thread::sleep(Duration::from_millis(settle_ms.unwrap_or(300)));
        }
        Step::Sleep { ms } => std::thread::sleep(Duration::from_millis(*ms)),
        Step::Check => {
            vm(world.m.check())?;
        }
    }
    Ok(())
}

/// Takes the driver's notifier lock (odp's umem mutex, odp-4.19's registration lock).
enum Held<'a> {
    Umem(#[allow(dead_code)] lockdep::MutexGuard<'a, drivers::devpt::DevicePt>),
    Reg(#[allow(dead_code)] lockdep::RwLockWriteGuard<'a, drivers::devpt::DevicePt>),
    Nothing,
}

fn hold_guard(slot: &DrvSlot) -> Held<'_> {
    match &slot.drv {
        Drv::Odp(o) => Held::Umem(o.hold_umem_mutex()),
        Drv::Odp419(o) => Held::Reg(o.hold_for_registration()),
        _ => Held::Nothing,
    }
}

#[allow(clippy::too_many_arguments)]
fn device(
    world: &World,
    slot: &DrvSlot,
    p: &Proc,
    action: Action,
    a: u64,
    n: u64,
    write: bool,
    value: Option<u64>,
) -> Result<(), String> {
    let e = |e: DriverError| e.to_string();
    let base = slot.base.unwrap_or(a).min(a);
    let val = |i: u64| value.unwrap_or((a - base) / P + i);
    if n > crate::validate::MAX_MAPPING_PAGES {
        return Err(format!("{n} pages is more than an address space holds"));
    }
    let pages = 0..n;
    let unsupported = || {
        format!(
            "driver {} has no action `{}`",
            slot.kind.name(),
            action.name()
        )
    };
    match (&slot.drv, action) {
        (_, Action::Hold) => {
            let before = refusals_now(slot);
            let _g = hold_guard(slot);
            if let Some(tx) = READY.with(|r| r.borrow_mut().take()) {
                let _ = tx.send(());
            }
            let end = Instant::now() + HOLD_LIMIT;
            while refusals_now(slot) == before && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        (Drv::Dmirror(d), Action::Fault) => {
            d.fault(a, n, write).map_err(e)?;
        }
        (Drv::Dmirror(d), Action::Read) => {
            d.read(a, n as usize).map_err(e)?;
        }
        (Drv::Dmirror(d), Action::Write) => {
            let v: Vec<u64> = pages.map(val).collect();
            d.write(a, &v).map_err(e)?;
        }
        (Drv::Dmirror(d), Action::Snapshot) => {
            d.snapshot(a, n).map_err(e)?;
        }
        (Drv::Dmirror(d), Action::MigrateToDevice) => {
            d.migrate_to_device(a, n).map_err(e)?;
        }
        (Drv::Dmirror(d), Action::MigrateToSystem) => {
            d.migrate_to_system(a, n).map_err(e)?;
        }
        (Drv::Odp(d), Action::Fault) => {
            d.page_fault(a, n, write).map_err(e)?;
        }
        (Drv::Odp(d), Action::Prefetch) => {
            d.prefetch(a, n, write).map_err(e)?;
        }
        (Drv::Odp(d), Action::Read) => {
            d.dma_read(a, n as usize).map_err(e)?;
        }
        (Drv::Odp(d), Action::Write) => {
            let v: Vec<u64> = pages.map(val).collect();
            d.dma_write(a, &v).map_err(e)?;
        }
        (Drv::Kvm(d), Action::Fault) => {
            for i in pages {
                d.guest_fault(a + i * P, write).map_err(e)?;
            }
        }
        (Drv::Kvm(d), Action::Read) => {
            for i in pages {
                d.guest_read(a + i * P).map_err(e)?;
            }
        }
        (Drv::Kvm(d), Action::Write) => {
            for i in pages {
                d.guest_write(a + i * P, val(i)).map_err(e)?;
            }
        }
        (Drv::Gntdev412(d), Action::Fault) => d.mmap(&p.process, a, n).map_err(e)?,
        (Drv::Gntdev(d), Action::Fault) => d.remap(&p.process).map_err(e)?,
        (Drv::Gntdev412(d), Action::Read | Action::Write) => {
            for i in pages {
                let store = (action == Action::Write).then(|| val(i));
                d.access(a + i * P, store).map_err(e)?;
            }
        }
        (Drv::Gntdev(d), Action::Read | Action::Write) => {
            for i in pages {
                let store = (action == Action::Write).then(|| val(i));
                d.access(a + i * P, store).map_err(e)?;
            }
        }
        (Drv::Userptr(d), Action::Fault) => {
            d.get_pages(&p.process).map_err(e)?;
        }
        (Drv::Userptr57(d), Action::Fault) => d.get_pages(&p.process).map_err(e)?,
        (Drv::Userptr(d), Action::Read | Action::Write) => {
            for i in pages {
                let index = ((a - base) / P + i) as usize;
                let store = (action == Action::Write).then(|| val(i));
                d.gpu_access(&p.process, index, store).map_err(e)?;
            }
        }
        (Drv::Userptr57(d), Action::Read | Action::Write) => {
            for i in pages {
                let index = ((a - base) / P + i) as usize;
                let store = (action == Action::Write).then(|| val(i));
                d.gpu_access(index, store).map_err(e)?;
            }
        }
        (Drv::Sva(d), Action::Read | Action::Write) => {
            for i in pages {
                let store = (action == Action::Write).then(|| val(i));
                d.dma(a + i * P, store).map_err(e)?;
            }
        }
        (Drv::Mirror(d), Action::Fault) => {
            for i in pages {
                d.fault_with(&p.process, a + i * P, write, || {})
                    .map_err(e)?;
            }
        }
        (Drv::Mirror(d), Action::Read) => {
            for i in pages {
                d.try_read(a + i * P).map_err(e)?;
            }
        }
        (Drv::List(d), Action::Fault) => {
            for i in pages {
                d.fault(&p.process, a + i * P).map_err(e)?;
            }
        }
        (Drv::List(d), Action::Read) => {
            for i in pages {
                d.try_read(a + i * P).map_err(e)?;
            }
        }
        _ => return Err(unsupported()),
    }
    let _ = world;
    Ok(())
}

fn refusals_now(slot: &DrvSlot) -> u64 {
    crate::world::refusals_of(&slot.drv)
}

thread_local! {
    /// Set in a scenario thread until its first step is under way (a `hold` sends it once the
    /// lock is taken).
    static READY: std::cell::RefCell<Option<mpsc::Sender<()>>> = const { std::cell::RefCell::new(None) };
}

fn spawn_thread(
    loaded: &Loaded,
    world: &Arc<World>,
    name: &str,
    steps: &[Step],
    repeat: bool,
    task: Option<String>,
) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let inherit = lockdep::scope::inherited();
    let (w, st, l) = (world.clone(), stop.clone(), loaded.clone());
    let steps: Vec<Step> = steps.to_vec();
    let mut rng = Rng::new(world.seed ^ crate::rng::hash(name));
    let handle = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            inherit.apply();
            let first_holds = matches!(
                steps.first(),
                Some(Step::Device {
                    action: Action::Hold,
                    ..
                })
            );
            if first_holds {
                READY.with(|r| *r.borrow_mut() = Some(tx));
            } else {
                let _ = tx.send(());
            }
            loop {
                let _op = task.as_ref().map(|t| w.m.enter(t.clone()));
                for s in &steps {
                    for _ in 0..rng.below(3) {
                        std::thread::yield_now();
                    }
                    if exec(&l, &w, s).is_err() {
                        w.thread_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if st.load(Ordering::Relaxed) {
                        break;
                    }
                }
                if !repeat || st.load(Ordering::Relaxed) {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start thread `{name}`: {e}"))?;
    // Wait until the thread's first step is under way (a hold: its lock is taken), bounded.
    let _ = rx.recv_timeout(HOLD_LIMIT);
    lock(&world.threads).insert(name.to_owned(), ThreadSlot { stop, handle });
    Ok(())
}

fn join_within(t: &ThreadSlot, wait: Duration) -> bool {
    let end = Instant::now() + wait;
    while !t.handle.is_finished() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Stops every scenario thread; returns the names of those that did not finish (hung).
fn stop_all(world: &World) -> Vec<String> {
    let threads: Vec<(String, ThreadSlot)> = lock(&world.threads).drain().collect();
    for (_, t) in &threads {
        t.stop.store(true, Ordering::Relaxed);
    }
    let end = Instant::now() + STOP_WAIT.min(Duration::from_secs(2));
    let mut hung = Vec::new();
    for (name, t) in threads {
        let left = end.saturating_duration_since(Instant::now());
        if join_within(&t, left) {
            let _ = t.handle.join();
        } else {
            hung.push(name);
            std::mem::forget(t);
        }
    }
    hung.sort();
    hung
}

/// Closes every driver (reverse name order) and exits every process.
fn teardown(world: &World) -> Result<(), String> {
    let mut drivers: Vec<(String, Arc<DrvSlot>)> = lock(&world.drivers).drain().collect();
    drivers.sort_by(|a, b| b.0.cmp(&a.0));
    let mut first = Ok(());
    for (name, slot) in drivers {
        let r = match Arc::try_unwrap(slot) {
            Ok(slot) => close(slot, world),
            Err(_) => Err(format!("driver `{name}` still in use")),
        };
        if first.is_ok() {
            first = r.map_err(|e| format!("closing `{name}`: {e}"));
        }
    }
    let processes: Vec<(String, Arc<Proc>)> = lock(&world.processes).drain().collect();
    for (name, p) in processes {
        if let Ok(p) = Arc::try_unwrap(p) {
            let Proc { process, _trace } = p;
            let r = process.exit().map_err(|e| format!("exit of `{name}`: {e}"));
            if first.is_ok() {
                first = r;
            }
        }
    }
    first
}
