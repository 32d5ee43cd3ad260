//! A torture slot: one process with its two mappings and every reference driver attached,
//! built, and retired (drivers closed, process exited) when it was OOM-killed.

use std::sync::{Arc, Mutex, RwLock};

use sync_prims::lock;

use drivers::buggy::BuggyMirror;
use drivers::dmirror::Dmirror;
use drivers::gntdev::Gntdev;
use drivers::kvm::{Kvm, KvmVariant};
use drivers::odp::{NonBlock, OdpMr};
use drivers::sva::Sva;
use drivers::userptr::Userptr;
use drivers::Checker;
use mmu_notifier::Subscription;
use vmsim::{Machine, MapRequest, Process};

use super::inject::Injector;
use super::Shared;
use crate::world::P;

/// Pages of the mapping the range drivers cover.
pub(crate) const A_PAGES: u64 = 128;
/// Pages of the pressure mapping.
pub(crate) const B_PAGES: u64 = 512;

/// Every driver of a slot; each behind its own lock (taken after the slot's process lock)
/// so it can be closed when the slot is retired.
#[derive(Default)]
pub(crate) struct Drivers {
    pub(crate) dmirror: Mutex<Option<Dmirror>>,
    pub(crate) odp: Mutex<Option<OdpMr>>,
    pub(crate) kvm: Mutex<Option<Kvm>>,
    pub(crate) gntdev: Mutex<Option<Gntdev>>,
    pub(crate) userptr: Mutex<Option<Userptr>>,
    pub(crate) sva: Mutex<Option<Sva>>,
    pub(crate) buggy: Mutex<Option<BuggyMirror>>,
    /// Subscribers that join and leave during the run.
    pub(crate) churn: Mutex<Vec<Dmirror>>,
}

/// A live process of the torture.
pub(crate) struct Live {
    pub(crate) process: Process,
    pub(crate) a: u64,
    pub(crate) b: u64,
    pub(crate) drivers: Drivers,
    /// This process's coherence checker (every driver of the process, churn included).
    pub(crate) checker: Checker,
    pub(crate) _inject: Option<Subscription<Injector>>,
}

/// A slot: the process lock is the outer lock of everything in it.
pub(crate) struct Slot {
    pub(crate) live: RwLock<Option<Live>>,
    pub(crate) index: usize,
}

/// Builds a slot's process, mappings and drivers. Errors (out of memory while building)
/// leave the slot empty; a later operation retries.
pub(crate) fn build(m: &Machine, sh: &Shared, index: usize) -> Option<Live> {
    let checker = Checker::new();
    let c = &checker;
    let process = m.spawn();
    let a = process.mmap(MapRequest::anon(A_PAGES * P)).ok()?;
    let b = process.mmap(MapRequest::anon(B_PAGES * P)).ok()?;
    let inject = process
        .mm()
        .register(Injector {
            stats: sh.inject.clone(),
            seed: sh.seed ^ (index as u64) << 32,
            refuse_one_in: 32,
            slow_one_in: 256,
            slow: std::time::Duration::from_micros(200),
        })
        .ok();
    let d = Drivers::default();
    let name = |k: &str| format!("{k}#{index}");
    *lock(&d.dmirror) = Dmirror::open(&process, c, &name("dmirror")).ok();
    *lock(&d.odp) =
        OdpMr::register(&process, c, &name("odp"), a, A_PAGES * P, NonBlock::TryLock).ok();
    *lock(&d.kvm) = Kvm::create(&process, c, &name("kvm"), KvmVariant::Current).ok();
    *lock(&d.gntdev) = Gntdev::map(&process, c, &name("gntdev"), a, 16).ok();
    // i915's userptr refuses every non-blockable range (as `i915_gem_userptr_invalidate`
    // does), so the OOM reaper can never reap its VMA: only every other process has one, so
    // that reaping both fails and succeeds.
    if index % 2 == 0 {
        *lock(&d.userptr) = Userptr::create(&process, c, &name("userptr"), a + 16 * P, 16).ok();
    }
    // Unless asked, the IOMMU binds only where dmirror does not migrate to device memory
    // (see `TortureConfig::sva_over_device_memory`).
    if sh.sva_over_device_memory || index % 2 == 1 {
        *lock(&d.sva) = Sva::bind(&process, c, &name("sva")).ok();
    }
    if let Some(bug) = sh.buggy {
        *lock(&d.buggy) = BuggyMirror::open(&process, c, bug).ok();
    }
    Some(Live {
        process,
        a,
        b,
        drivers: d,
        checker,
        _inject: inject,
    })
}

/// Closes every driver of a retired slot, then the process exits. Errors are counted by the
/// caller as operation errors, never ignored silently: a driver that cannot close is a
/// failed operation.
pub(crate) fn retire(sh: &Shared, live: Live) -> usize {
    let mut errors = 0;
    let d = live.drivers;
    let mut count = |r: Result<(), drivers::DriverError>| {
        if r.is_err() {
            errors += 1;
        }
    };
    for x in lock(&d.churn).drain(..) {
        count(x.close());
    }
    if let Some(x) = lock(&d.dmirror).take() {
        count(x.close());
    }
    if let Some(x) = lock(&d.odp).take() {
        count(x.deregister());
    }
    if let Some(x) = lock(&d.kvm).take() {
        count(x.destroy());
    }
    if let Some(x) = lock(&d.gntdev).take() {
        count(x.unmap());
    }
    if let Some(x) = lock(&d.userptr).take() {
        count(x.close(&live.process));
    }
    if let Some(x) = lock(&d.sva).take() {
        count(x.unbind());
    }
    drop(lock(&d.buggy).take());
    drop(live._inject);
    if live.process.exit().is_err() {
        errors += 1;
    }
    sh.retire_checker(&live.checker);
    errors
}

impl Slot {
    pub(crate) fn new(index: usize) -> Arc<Slot> {
        Arc::new(Slot {
            live: RwLock::new(None),
            index,
        })
    }
}
