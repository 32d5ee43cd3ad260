//! The running system of a scenario: the machine, its processes, the drivers attached to
//! them, the checker, and the threads a scenario started. Steps look things up by name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::thread::JoinHandle;
use sync_prims::lock;

use drivers::buggy::{BuggyList, BuggyMirror};
use drivers::dmirror::Dmirror;
use drivers::gntdev::{Gntdev, Gntdev412};
use drivers::kvm::Kvm;
use drivers::odp::{OdpMr, OdpPerMm};
use drivers::sva::Sva;
use drivers::userptr::{Userptr, UserptrLocked};
use drivers::Checker;
use mmu_notifier::Subscription;
use vmsim::{Machine, Process, Watchdog};

use crate::schema::DriverKind;
use crate::trace::{TraceSink, Tracer};

/// Bytes per page.
pub const P: u64 = 4096;

/// A process and its tracing subscription.
pub(crate) struct Proc {
    pub(crate) process: Process,
    pub(crate) _trace: Option<Subscription<Tracer>>,
}

/// A driver instance.
pub(crate) enum Drv {
    Dmirror(Dmirror),
    Odp(OdpMr),
    Odp419(OdpPerMm),
    Kvm(Kvm),
    Gntdev(Gntdev),
    Gntdev412(Gntdev412),
    Userptr(Userptr),
    Userptr57(UserptrLocked),
    Sva(Sva),
    Mirror(BuggyMirror),
    List(BuggyList),
}

/// A driver with where it is attached.
pub(crate) struct DrvSlot {
    pub(crate) drv: Drv,
    pub(crate) kind: DriverKind,
    pub(crate) process: String,
    /// Address of the covered range (or of the mapping it was given), if any.
    pub(crate) base: Option<u64>,
}

/// A mapping: its owner, address and length in pages.
#[derive(Clone, Debug)]
pub(crate) struct MapInfo {
    pub(crate) owner: String,
    pub(crate) addr: u64,
    pub(crate) pages: u64,
}

/// A thread started by a `thread` step.
pub(crate) struct ThreadSlot {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) handle: JoinHandle<()>,
}

/// The running system.
pub(crate) struct World {
    pub(crate) m: Machine,
    pub(crate) checker: Checker,
    pub(crate) processes: Mutex<HashMap<String, Arc<Proc>>>,
    pub(crate) mappings: Mutex<HashMap<String, MapInfo>>,
    pub(crate) drivers: Mutex<HashMap<String, Arc<DrvSlot>>>,
    pub(crate) threads: Mutex<HashMap<String, ThreadSlot>>,
    pub(crate) watchdog: Option<Watchdog>,
    pub(crate) trace: Option<TraceSink>,
    pub(crate) thread_errors: AtomicU64,
    pub(crate) allowed_errors: AtomicU64,
    /// Refusals of drivers already closed.
    pub(crate) closed_refusals: AtomicU64,
    pub(crate) seed: u64,
}

impl World {
    pub(crate) fn add_process(&self, name: &str, process: Process) {
        let trace = self.trace.as_ref().and_then(|sink| {
            process
                .mm()
                .register(Tracer {
                    process: name.to_owned(),
                    sink: sink.clone(),
                })
                .ok()
        });
        lock(&self.processes).insert(
            name.to_owned(),
            Arc::new(Proc {
                process,
                _trace: trace,
            }),
        );
    }

    pub(crate) fn process(&self, name: &str) -> Result<Arc<Proc>, String> {
        lock(&self.processes)
            .get(name)
            .cloned()
            .ok_or_else(|| format!("process `{name}` has exited"))
    }

    pub(crate) fn driver(&self, name: &str) -> Result<Arc<DrvSlot>, String> {
        lock(&self.drivers)
            .get(name)
            .cloned()
            .ok_or_else(|| format!("driver `{name}` is not attached"))
    }

    /// `(process, address, pages)` of `at` (`mapping` or `process/mapping`) from `page`.
    pub(crate) fn place(
        &self,
        at: &str,
        page: u64,
        pages: Option<u64>,
    ) -> Result<(Arc<Proc>, u64, u64), String> {
        let (process, mapping) = crate::validate::split_at(at);
        let info = lock(&self.mappings)
            .get(mapping)
            .cloned()
            .ok_or_else(|| format!("no mapping `{mapping}`"))?;
        let p = self.process(process.unwrap_or(&info.owner))?;
        let n = pages.unwrap_or(info.pages.saturating_sub(page));
        Ok((p, info.addr + page * P, n))
    }

    /// Refusals of every odp driver, attached or closed.
    pub(crate) fn refusals(&self) -> u64 {
        let attached: u64 = lock(&self.drivers)
            .values()
            .map(|d| refusals_of(&d.drv))
            .sum();
        attached + self.closed_refusals.load(Ordering::Relaxed)
    }
}

pub(crate) fn refusals_of(d: &Drv) -> u64 {
    match d {
        Drv::Odp(o) => o.refusals(),
        Drv::Odp419(o) => o.refusals(),
        _ => 0,
    }
}

/// Detaches a driver the world no longer shares.
pub(crate) fn close(slot: DrvSlot, world: &World) -> Result<(), String> {
    let process = world.process(&slot.process).ok();
    world
        .closed_refusals
        .fetch_add(refusals_of(&slot.drv), Ordering::Relaxed);
    let r = match slot.drv {
        Drv::Dmirror(d) => d.close(),
        Drv::Odp(d) => d.deregister(),
        Drv::Odp419(d) => d.unregister(),
        Drv::Kvm(d) => d.destroy(),
        Drv::Gntdev(d) => d.unmap(),
        Drv::Gntdev412(d) => d.close(),
        Drv::Userptr(d) => match &process {
            Some(p) => d.close(&p.process),
            None => {
                drop(d);
                Ok(())
            }
        },
        Drv::Userptr57(d) => match &process {
            Some(p) => d.close(&p.process),
            None => {
                drop(d);
                Ok(())
            }
        },
        Drv::Sva(d) => d.unbind(),
        Drv::Mirror(d) => {
            drop(d);
            Ok(())
        }
        Drv::List(d) => d.unregister(),
    };
    r.map_err(|e| e.to_string())
}
