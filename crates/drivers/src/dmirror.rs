//! The HMM test device, `dmirror` (`lib/test_hmm.c`), on the simulated kernel.
//!
//! One interval notifier covers the whole address space (`dmirror_fops_open` →
//! `mmu_interval_notifier_insert(&dmirror->notifier, mm, 0, ULONG_MAX & PAGE_MASK, …)`); a
//! mutex (`dmirror->mutex`) is the user lock that protects the device page table
//! (`dmirror->pt`, an xarray there, a [`DevicePt`] here). What the ioctls of the test device do:
//!
//! * [`Dmirror::read`] / [`Dmirror::write`] (`dmirror_read`, `dmirror_write`): the device
//!   accesses pages through its page table under the mutex; a missing entry is a device
//!   fault, `dmirror_fault` → `dmirror_range_fault`: `read_begin`, `hmm_range_fault`, mutex,
//!   `read_retry`, publish (see [`crate::devpt`]).
//! * [`Dmirror::snapshot`] (`dmirror_snapshot`): the CPU page table's state over a range, read
//!   without faulting, through a temporary interval notifier (`dmirror_mrn_ops`).
//! * [`Dmirror::migrate_to_device`] (`dmirror_migrate_to_device`): `migrate_vma_*` with the
//!   device as owner, then the device pages mapped (`dmirror_migrate_finalize_and_map`);
//!   [`Dmirror::migrate_to_system`]: the CPU faults the pages back (`dmirror_devmem_fault`).
//! * The invalidation callback (`dmirror_interval_invalidate`) skips the device's own
//!   `MMU_NOTIFY_MIGRATE` (owner = the device), takes the mutex (trylock when not blockable),
//!   `mmu_interval_set_seq`, drops the entries (`dmirror_do_update`).
//!
//! Deviations: vmsim runs `migrate_to_ram` for the driver, so the callback drops the device's
//! own device-private entries when their pages go back to RAM (test_hmm's
//! `dmirror_devmem_fault` erases them itself); `hmm_range_fault` here has no
//! `dev_private_owner`, so a device fault on its own device-private page migrates it back;
//! a migration holds a driver lock (`migrate_lock`) that device faults take, so the device
//! cannot map a page of the range while it migrates (test_hmm leaves that race to its tests);
//! exclusive access (`make_device_exclusive`) is not modelled.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lockdep::{static_lock_class, Mutex};
use mmu_notifier::{Event, Interval, IntervalNotifier, IntervalNotifierOps, Owner, Range};
use vmsim::frame::flags;
use vmsim::pte::PAGE_SIZE;
use vmsim::{MigrateReport, Process, Space, TASK_SIZE};

use crate::checker::{Access, Checker, Tracker};
use crate::devpt::{access_range, fault_and_map, DevicePt, MAX_TRIES};
use crate::DriverError;

/// The state the callback shares with the ioctls (`struct dmirror`).
struct Mirror {
    space: Arc<Space>,
    owner: Owner,
    pt: Mutex<DevicePt>,
    /// Device-private frames this device owns (`dmirror->mdevice`'s pages).
    own_pages: std::sync::Mutex<HashSet<u32>>,
    migrate_lock: Mutex<()>,
    check: Tracker,
    own_skipped: AtomicU64,
    faults: AtomicU64,
}

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
        let own = range.event() == Event::Migrate && range.owner() == Some(self.owner);
        let Some(mut pt) = range.lock_or_refuse(|| self.pt.lock(), || self.pt.try_lock()) else {
            self.check.interval(range, false);
            return false;
        };
        self.check.interval(range, true);
        if own {
            // Our own migration: nothing to do (test_hmm returns before locking), except the
            // device pages going back to RAM, which `dmirror_devmem_fault` would erase.
            self.own_skipped.fetch_add(1, Ordering::Relaxed);
            let own = self.own_pages.lock().unwrap_or_else(|e| e.into_inner());
            pt.zap_where(range.start(), range.end(), |t| own.contains(&t.pfn.0));
            return true;
        }
        iv.set_seq(cur_seq);
        pt.zap(range.start(), range.end());
        true
    }
}

/// What [`Dmirror::snapshot`] reports for a page (`HMM_DMIRROR_PROT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotPage {
    /// No CPU translation (`HMM_DMIRROR_PROT_NONE`).
    None,
    /// Mapped read-only (`HMM_DMIRROR_PROT_READ`).
    Read,
    /// Mapped writable (`HMM_DMIRROR_PROT_WRITE`).
    Write,
    /// In this device's private memory (`HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL`).
    DevicePrivateLocal,
}

/// One open of the test device on one process.
pub struct Dmirror {
    mirror: Arc<Mirror>,
    notifier: IntervalNotifier,
}

impl std::fmt::Debug for Dmirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dmirror")
            .field("mm", &self.mirror.space.id())
            .field("mapped", &self.mapped())
            .finish()
    }
}

static OWNERS: AtomicU64 = AtomicU64::new(0x1000);

impl Dmirror {
    /// Opens the device on `process`'s address space (`dmirror_fops_open`), reporting to
    /// `checker` as `name`.
    pub fn open(process: &Process, checker: &Checker, name: &str) -> Result<Dmirror, DriverError> {
        let mirror = Arc::new(Mirror {
            space: process.space().clone(),
            owner: Owner(OWNERS.fetch_add(1, Ordering::Relaxed)),
            pt: Mutex::new(DevicePt::new(), static_lock_class!("&dmirror->mutex")),
            own_pages: std::sync::Mutex::new(HashSet::new()),
            migrate_lock: Mutex::new((), static_lock_class!("&dmirror->migrate_lock")),
            check: checker.driver(name),
            own_skipped: AtomicU64::new(0),
            faults: AtomicU64::new(0),
        });
        let notifier = process
            .mm()
            .interval_notifier_insert(0, TASK_SIZE, mirror.clone())?;
        Ok(Dmirror { mirror, notifier })
    }

    /// The device memory's owner token (`dmirror->mdevice`).
    pub fn owner(&self) -> Owner {
        self.mirror.owner
    }

    /// The checker's handle of this device.
    pub fn tracker(&self) -> &Tracker {
        &self.mirror.check
    }

    /// Pages the device maps now.
    pub fn mapped(&self) -> usize {
        self.mirror.pt.lock().len()
    }

    /// Own `MMU_NOTIFY_MIGRATE` invalidations skipped so far.
    pub fn own_migrations_skipped(&self) -> u64 {
        self.mirror.own_skipped.load(Ordering::Relaxed)
    }

    fn user(&self) -> Result<Process, DriverError> {
        Space::mmget_not_zero(&self.mirror.space).ok_or(DriverError::Released)
    }

    /// `dmirror_fault`: faults `npages` from `start` into the device page table.
    pub fn fault(&self, start: u64, npages: u64, write: bool) -> Result<u32, DriverError> {
        let p = self.user()?;
        self.range_fault(&p, start, start + npages * PAGE_SIZE, write)
    }

    /// Device faults taken so far (`cmd.faults` of the ioctls).
    pub fn faults(&self) -> u64 {
        self.mirror.faults.load(Ordering::Relaxed)
    }

    fn range_fault(
        &self,
        p: &Process,
        start: u64,
        end: u64,
        write: bool,
    ) -> Result<u32, DriverError> {
        self.mirror.faults.fetch_add(1, Ordering::Relaxed);
        let _migrating = self.mirror.migrate_lock.lock();
        fault_and_map(
            p,
            &self.notifier,
            &self.mirror.pt,
            start,
            end,
            write,
            "dmirror_range_fault",
        )
    }

    /// `dmirror_read`: the device loads the content word of `npages` pages from `start`.
    pub fn read(&self, start: u64, npages: usize) -> Result<Vec<u64>, DriverError> {
        let p = self.user()?;
        let m = &self.mirror;
        access_range(
            &m.check,
            &m.space,
            &m.pt,
            start,
            npages,
            Access::Read,
            None,
            |a, e| self.range_fault(&p, a, e, false).map(drop),
        )
    }

    /// `dmirror_write`: the device stores `values` into consecutive pages from `start`.
    pub fn write(&self, start: u64, values: &[u64]) -> Result<(), DriverError> {
        let p = self.user()?;
        let m = &self.mirror;
        access_range(
            &m.check,
            &m.space,
            &m.pt,
            start,
            values.len(),
            Access::Write,
            Some(values),
            |a, e| self.range_fault(&p, a, e, true).map(drop),
        )
        .map(drop)
    }

    /// `dmirror_snapshot`: the state of the CPU's translations of `npages` pages from `start`,
    /// read without faulting, stable against invalidations through a temporary interval
    /// notifier over the range.
    pub fn snapshot(&self, start: u64, npages: u64) -> Result<Vec<SnapshotPage>, DriverError> {
        let len = npages * PAGE_SIZE;
        let tmp = self.mirror.space.mm().interval_notifier_insert(
            start,
            len,
            Snap(self.mirror.clone()),
        )?;
        let m = self.mirror.space.machine();
        for _ in 0..MAX_TRIES {
            let seq = tmp.read_begin();
            let mut out = Vec::with_capacity(npages as usize);
            for i in 0..npages {
                out.push(match self.mirror.space.lookup(start + i * PAGE_SIZE) {
                    None => SnapshotPage::None,
                    Some((pfn, w)) => {
                        let dev = m.frames().frame(pfn)?.test(flags::DEVICE_PRIVATE);
                        let own = self
                            .mirror
                            .own_pages
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(&pfn.0);
                        match (dev, own, w) {
                            (true, true, _) => SnapshotPage::DevicePrivateLocal,
                            // `hmm_range_fault` reports another owner's device-private page
                            // as not valid.
                            (true, false, _) => SnapshotPage::None,
                            (false, _, true) => SnapshotPage::Write,
                            (false, _, false) => SnapshotPage::Read,
                        }
                    }
                });
            }
            let _pt = self.mirror.pt.lock();
            if !tmp.read_retry(seq) {
                drop(_pt);
                tmp.remove()?;
                return Ok(out);
            }
        }
        Err(DriverError::Busy {
            what: "dmirror_snapshot",
            tries: MAX_TRIES,
        })
    }

    /// `dmirror_migrate_to_device`: moves the anonymous pages of `npages` from `start` into
    /// device-private memory owned by this device and maps them in the device.
    pub fn migrate_to_device(&self, start: u64, npages: u64) -> Result<MigrateReport, DriverError> {
        let p = self.user()?;
        let end = start + npages * PAGE_SIZE;
        let m = &self.mirror;
        let _migrating = m.migrate_lock.lock();
        m.pt.lock().zap(start, end);
        let seq = self.notifier.read_begin();
        let report = p.migrate_to_device(start, end, m.owner, |_, v| v)?;
        let machine = m.space.machine();
        let mut own = Vec::new();
        for &(_, dev) in &report.moved {
            own.push((dev, machine.frames().frame(dev)?.generation()));
        }
        m.own_pages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(own.iter().map(|(d, _)| d.0));
        // `dmirror_migrate_finalize_and_map`, under the mutex, only if nothing collided.
        let mut pt = m.pt.lock();
        if !self.notifier.read_retry(seq) {
            for (&(a, dev), &(_, generation)) in report.moved.iter().zip(&own) {
                if let Some((pfn, write)) = m.space.lookup(a) {
                    if pfn == dev {
                        pt.insert(
                            a,
                            crate::checker::Translation {
                                pfn,
                                generation,
                                write,
                            },
                        );
                    }
                }
            }
        }
        Ok(report)
    }

    /// Brings the device-private pages of `npages` from `start` back to system memory by
    /// faulting them from the CPU (`dmirror_devmem_fault` → `migrate_to_ram`). Returns the
    /// pages that came back.
    pub fn migrate_to_system(&self, start: u64, npages: u64) -> Result<usize, DriverError> {
        let p = self.user()?;
        let machine = self.mirror.space.machine();
        let mut back = 0;
        for i in 0..npages {
            let a = start + i * PAGE_SIZE;
            let dev = match self.mirror.space.lookup(a) {
                Some((pfn, _)) => machine.frames().frame(pfn)?.test(flags::DEVICE_PRIVATE),
                None => false,
            };
            if dev {
                p.fault(a, false)?;
                back += 1;
            }
        }
        Ok(back)
    }

    /// Closes the device (`dmirror_fops_release`): removes the interval notifier.
    pub fn close(self) -> Result<(), DriverError> {
        self.notifier.remove()?;
        Ok(())
    }
}

/// The temporary notifier of a snapshot (`dmirror_mrn_ops`).
struct Snap(Arc<Mirror>);

impl IntervalNotifierOps for Snap {
    fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
        let Some(_pt) = range.lock_or_refuse(|| self.0.pt.lock(), || self.0.pt.try_lock()) else {
            return false;
        };
        iv.set_seq(cur_seq);
        true
    }
}
