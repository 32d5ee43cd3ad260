//! The Xen grant device (`drivers/xen/gntdev.c`): pages granted by another domain, mapped into
//! a process's address space, which the other domain (the device here) accesses.
//!
//! Two variants of its MMU notifier:
//!
//! * [`Gntdev412`], the Linux 4.12 driver of seed 000. Its per-page callback
//!   (`mn_invl_page`, the `invalidate_page` callback that `try_to_unmap_one` called under the
//!   page-table lock until 4.13) takes `priv->lock`, a mutex. The same mutex is held by the
//!   mmap path (`gntdev_mmap` → `apply_to_page_range`), which allocates page-table pages
//!   (`GFP_KERNEL`) and takes page-table locks while holding it. vmsim calls a per-page
//!   callback under the page-table lock at that very place: `arch_invalidate_secondary_tlbs`
//!   from `try_to_unmap_one`, so the model uses that callback (which makes it a list
//!   subscriber with no start and end, as far as the contract is concerned).
//! * [`Gntdev`], the current driver: one interval notifier per map (`gntdev_invalidate`),
//!   blockable, taking the map's lock (trylock when the range is not blockable,
//!   [`Range::lock_or_refuse`]), `mmu_interval_set_seq`, the grants of the overlap unmapped
//!   (`unmap_grant_pages`). The mapping path allocates before it takes any lock and publishes
//!   the translations it found under the collision-retry protocol.
//!
//! Michal Hocko's point about seed 000: the bug is a notifier that *blocks* — waits for
//! something (here a mutex whose holder waits for memory or a page-table lock) whose
//! completion reclaim cannot guarantee — not only one that sleeps in atomic context.
//!
//! Deviation: the granted frames are the process's own anonymous pages (a foreign frame has no
//! counterpart in vmsim); the device accesses them through the grant's translation.

use std::sync::Arc;

use lockdep::{static_lock_class, Gfp, Mutex};
use mmu_notifier::{
    Capabilities, Interval, IntervalNotifier, IntervalNotifierOps, Mm, MmuNotifierOps, Range,
    Subscription,
};
use vmsim::pte::PAGE_SIZE;
use vmsim::{Process, Space};

use crate::checker::{Access, Checker, Tracker, Translation};
use crate::devpt::{device_access, DevicePt, MAX_TRIES};
use crate::DriverError;

/// Maps the translations the primary has now for `[start, end)` into `pt` (the page-table walk
/// of `find_grant_ptes`); pages the primary has not mapped are faulted by `process` first.
fn walk(process: &Process, pt: &mut DevicePt, start: u64, end: u64) -> Result<(), DriverError> {
    let space = process.space();
    let m = space.machine();
    let mut a = start;
    while a < end {
        match space.lookup(a) {
            Some((pfn, write)) => {
                let generation = m.frames().frame(pfn)?.generation();
                pt.insert(
                    a,
                    Translation {
                        pfn,
                        generation,
                        write,
                    },
                );
                a += PAGE_SIZE;
            }
            None => process.fault(a, true)?,
        }
    }
    Ok(())
}

struct Priv412 {
    space: Arc<Space>,
    lock: Mutex<DevicePt>,
    check: Tracker,
}

/// The notifier of [`Gntdev412`].
pub struct Gntdev412Notifier(Arc<Priv412>);

impl MmuNotifierOps for Gntdev412Notifier {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ARCH_INVALIDATE_SECONDARY_TLBS | Capabilities::RELEASE
    }
    fn arch_invalidate_secondary_tlbs(&self, _mm: &Mm, start: u64, end: u64) {
        // `mn_invl_page` → `mn_invl_range_start`: mutex_lock(&priv->lock), in atomic context.
        let mut pt = self.0.lock.lock();
        self.0.check.tlb(start, end);
        pt.zap(start, end);
    }
    fn release(&self, _mm: &Mm) {
        let mut pt = self.0.lock.lock();
        self.0.check.release();
        pt.zap(0, u64::MAX);
    }
}

/// The Linux 4.12 grant device (seed 000).
pub struct Gntdev412 {
    p: Arc<Priv412>,
    sub: Option<Subscription<Gntdev412Notifier>>,
}

impl Gntdev412 {
    /// Opens the device on `process` (`gntdev_open` → `mmu_notifier_register`).
    pub fn open(
        process: &Process,
        checker: &Checker,
        name: &str,
    ) -> Result<Gntdev412, DriverError> {
        let p = Arc::new(Priv412 {
            space: process.space().clone(),
            lock: Mutex::new(DevicePt::new(), static_lock_class!("&priv->lock")),
            check: checker.driver(name),
        });
        let sub = process.mm().register(Gntdev412Notifier(p.clone()))?;
        Ok(Gntdev412 { p, sub: Some(sub) })
    }

    /// `gntdev_mmap` of `npages` grants at `addr`: with `priv->lock` held, a page-table page
    /// is allocated (`GFP_KERNEL`, may enter direct reclaim) and the page tables are walked
    /// under their locks (`apply_to_page_range` → `find_grant_ptes`).
    pub fn mmap(&self, process: &Process, addr: u64, npages: u64) -> Result<(), DriverError> {
        let m = process.space().machine();
        let mut pt = self.p.lock.lock();
        let table = m.alloc_page(Gfp::KERNEL)?; // pte_alloc
        m.put_page(table)?;
        walk(process, &mut pt, addr, addr + npages * PAGE_SIZE)
    }

    /// The other domain accesses the granted page at `addr`.
    pub fn access(&self, addr: u64, store: Option<u64>) -> Result<Option<u64>, DriverError> {
        let pt = self.p.lock.lock();
        let access = if store.is_some() {
            Access::Write
        } else {
            Access::Read
        };
        device_access(&self.p.check, &self.p.space, &pt, addr, access, store)
    }

    /// Grants mapped now.
    pub fn mapped(&self) -> usize {
        self.p.lock.lock().len()
    }

    /// The checker's handle.
    pub fn tracker(&self) -> &Tracker {
        &self.p.check
    }

    /// Closes the device (`gntdev_release` → `mmu_notifier_unregister`).
    pub fn close(mut self) -> Result<(), DriverError> {
        if let Some(s) = self.sub.take() {
            s.unregister()?;
        }
        Ok(())
    }
}

struct GrantMap {
    space: Arc<Space>,
    lock: Mutex<DevicePt>,
    check: Tracker,
}

impl IntervalNotifierOps for GrantMap {
    fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
        let Some(mut pt) = range.lock_or_refuse(|| self.lock.lock(), || self.lock.try_lock())
        else {
            self.check.interval(range, false);
            return false;
        };
        self.check.interval(range, true);
        iv.set_seq(cur_seq);
        pt.zap(range.start(), range.end()); // unmap_grant_pages
        true
    }
}

/// One grant map of the current grant device.
pub struct Gntdev {
    map: Arc<GrantMap>,
    notifier: IntervalNotifier,
    start: u64,
    end: u64,
}

impl Gntdev {
    /// `IOCTL_GNTDEV_MAP_GRANT_REF` + `gntdev_mmap` of `npages` at `addr` on `process`: the
    /// map is allocated first (`gntdev_alloc_map`, no lock held), then an interval notifier is
    /// inserted over it and the grants are mapped under the collision-retry protocol.
    pub fn map(
        process: &Process,
        checker: &Checker,
        name: &str,
        addr: u64,
        npages: u64,
    ) -> Result<Gntdev, DriverError> {
        let m = process.space().machine();
        let table = m.alloc_page(Gfp::KERNEL)?; // gntdev_alloc_map, before any lock
        m.put_page(table)?;
        let map = Arc::new(GrantMap {
            space: process.space().clone(),
            lock: Mutex::new(DevicePt::new(), static_lock_class!("&map->lock (gntdev)")),
            check: checker.driver(name),
        });
        let len = npages * PAGE_SIZE;
        let notifier = process
            .mm()
            .interval_notifier_insert(addr, len, map.clone())?;
        let g = Gntdev {
            map,
            notifier,
            start: addr,
            end: addr + len,
        };
        g.remap(process)?;
        Ok(g)
    }

    /// (Re)maps every grant of the map: walk without the lock, publish under it if no
    /// invalidation collided.
    pub fn remap(&self, process: &Process) -> Result<(), DriverError> {
        for _ in 0..MAX_TRIES {
            let seq = self.notifier.read_begin();
            let mut found = DevicePt::new();
            walk(process, &mut found, self.start, self.end)?;
            let mut pt = self.map.lock.lock();
            if self.notifier.read_retry(seq) {
                continue;
            }
            *pt = found;
            return Ok(());
        }
        Err(DriverError::Busy {
            what: "gntdev map",
            tries: MAX_TRIES,
        })
    }

    /// The other domain accesses the granted page at `addr`; `None` when that grant is
    /// unmapped now (the access faults in the other domain).
    pub fn access(&self, addr: u64, store: Option<u64>) -> Result<Option<u64>, DriverError> {
        let pt = self.map.lock.lock();
        let access = if store.is_some() {
            Access::Write
        } else {
            Access::Read
        };
        device_access(&self.map.check, &self.map.space, &pt, addr, access, store)
    }

    /// Grants mapped now.
    pub fn mapped(&self) -> usize {
        self.map.lock.lock().len()
    }

    /// The checker's handle.
    pub fn tracker(&self) -> &Tracker {
        &self.map.check
    }

    /// Unmaps (`gntdev_put_map` → `mmu_interval_notifier_remove`).
    pub fn unmap(self) -> Result<(), DriverError> {
        self.notifier.remove()?;
        Ok(())
    }
}
