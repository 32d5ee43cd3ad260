//! i915 GEM userptr objects (`drivers/gpu/drm/i915/gem/i915_gem_userptr.c`): a GPU buffer
//! object backed by a range of a process's memory, its pages pinned to populate the object.
//!
//! * [`UserptrLocked`], the seed-002 design (Linux 5.7 era, `struct i915_mmu_notifier` with
//!   `obj->mm.lock`): one list subscriber per address space whose start, for every object
//!   overlapping the range, waits for the object (takes `obj->mm.lock`); populating the object
//!   takes that lock and pins the pages one by one (`pin_user_pages`, which faults and
//!   allocates). Under memory pressure the allocation of page *n* enters direct reclaim, which
//!   picks a page of the same object not pinned yet and calls the notifier, which waits for
//!   the object: recursion. (In the 5.7 driver the pages were taken with `get_user_pages`,
//!   which reclaim may still try to unmap; vmsim's pins are `FOLL_PIN`, which reclaim skips, so
//!   the recursion comes through the pages not pinned yet.)
//! * [`Userptr`], the current design: an interval notifier per object
//!   (`i915_gem_userptr_invalidate`: `notifier_lock` for write, `mmu_interval_set_seq`, the
//!   pages marked for revalidation); populating pins the whole range with no lock held
//!   (`i915_gem_object_userptr_submit_init`) and publishes under `notifier_lock` only if
//!   `read_retry` says nothing collided (`i915_gem_object_userptr_submit_done`). The GPU uses
//!   the pages only while they are valid.
//!
//! Jason Gunthorpe's point about seed 002: notifiers are not for influencing the mm's policy —
//! a notifier cannot ask reclaim to leave a page alone; a driver must not hold, across an
//! allocation, a lock its notifier takes.

use std::sync::Arc;

use lockdep::{static_lock_class, Mutex, SpinLock};
use mmu_notifier::{
    Capabilities, Interval, IntervalNotifier, IntervalNotifierOps, MmuNotifierOps, Range,
    Subscription, WouldBlock,
};
use vmsim::pte::PAGE_SIZE;
use vmsim::{Pfn, Process, Space};

use crate::checker::{Access, Checker, Tracker, Translation};
use crate::devpt::{touch_frame, MAX_TRIES};
use crate::DriverError;

/// The quote the seed-002 steps print.
pub const GUNTHORPE: &str = "notifiers are not for influencing the mm's policy: a driver must \
not hold a lock its notifier takes across pin_user_pages()/get_user_pages() (Jason Gunthorpe)";

/// The object's pages: the pinned frames and the translations the GPU uses.
#[derive(Default)]
struct Pages {
    pinned: Vec<Pfn>,
    gpu: Vec<Translation>,
    valid: bool,
}

fn gpu_access(
    check: &Tracker,
    space: &Space,
    pages: &Pages,
    start: u64,
    index: usize,
    store: Option<u64>,
) -> Result<Option<u64>, DriverError> {
    let Some(&t) = pages.gpu.get(index).filter(|_| pages.valid) else {
        return Ok(None);
    };
    let access = if store.is_some() {
        Access::DmaWrite
    } else {
        Access::DmaRead
    };
    let addr = start + index as u64 * PAGE_SIZE;
    check.access(space, addr, t, access);
    Ok(Some(touch_frame(space, t.pfn, store)?))
}

fn translations(
    space: &Space,
    pinned: &[Pfn],
    write: bool,
) -> Result<Vec<Translation>, DriverError> {
    let m = space.machine();
    pinned
        .iter()
        .map(|&pfn| {
            Ok(Translation {
                pfn,
                generation: m.frames().frame(pfn)?.generation(),
                write,
            })
        })
        .collect()
}

struct LockedObj {
    space: Arc<Space>,
    start: u64,
    end: u64,
    /// `obj->mm.lock`.
    mm_lock: Mutex<Pages>,
    check: Tracker,
}

/// The per-address-space notifier of the seed-002 design.
pub struct LockedNotifier(Arc<LockedObj>);

impl MmuNotifierOps for LockedNotifier {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::START_CAN_FAIL
    }
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        let o = &self.0;
        if !range.overlaps(o.start, o.end) {
            return Ok(());
        }
        if !range.is_blockable() {
            o.check.refused(range);
            return Err(WouldBlock);
        }
        // Wait for the object: `obj->mm.lock`, then drop its pages.
        let mut pages = o.mm_lock.lock();
        o.check.tlb(range.start(), range.end());
        pages.valid = false;
        let pinned = std::mem::take(&mut pages.pinned);
        drop(pages);
        if let Some(p) = Space::mmget_not_zero(&o.space) {
            let _ = p.unpin_user_pages(&pinned);
        }
        Ok(())
    }
}

/// A userptr object of the seed-002 design.
pub struct UserptrLocked {
    obj: Arc<LockedObj>,
    sub: Option<Subscription<LockedNotifier>>,
}

impl UserptrLocked {
    /// Creates the object over `npages` from `addr` (`i915_gem_userptr_ioctl`).
    pub fn create(
        process: &Process,
        checker: &Checker,
        name: &str,
        addr: u64,
        npages: u64,
    ) -> Result<UserptrLocked, DriverError> {
        let obj = Arc::new(LockedObj {
            space: process.space().clone(),
            start: addr,
            end: addr + npages * PAGE_SIZE,
            mm_lock: Mutex::new(Pages::default(), static_lock_class!("&obj->mm.lock")),
            check: checker.driver(name),
        });
        let sub = process.mm().register(LockedNotifier(obj.clone()))?;
        Ok(UserptrLocked {
            obj,
            sub: Some(sub),
        })
    }

    /// Populates the object (`__i915_gem_userptr_get_pages_worker` of that era): the object
    /// lock held while the pages are pinned one by one — the bug.
    pub fn get_pages(&self, process: &Process) -> Result<(), DriverError> {
        let o = &self.obj;
        let mut pages = o.mm_lock.lock();
        let mut a = o.start;
        while a < o.end {
            let pfn = process.pin_user_pages(a, 1, true)?; // may allocate and reclaim
            pages.pinned.extend(&pfn);
            a += PAGE_SIZE;
        }
        pages.gpu = translations(&o.space, &pages.pinned, true)?;
        pages.valid = true;
        Ok(())
    }

    /// The GPU accesses page `index` of the object; `None` when the object has no pages.
    pub fn gpu_access(&self, index: usize, store: Option<u64>) -> Result<Option<u64>, DriverError> {
        let o = &self.obj;
        let pages = o.mm_lock.lock();
        gpu_access(&o.check, &o.space, &pages, o.start, index, store)
    }

    /// Frees the object: unpins its pages and unregisters the notifier.
    pub fn close(mut self, process: &Process) -> Result<(), DriverError> {
        let pinned = std::mem::take(&mut self.obj.mm_lock.lock().pinned);
        process.unpin_user_pages(&pinned)?;
        if let Some(s) = self.sub.take() {
            s.unregister()?;
        }
        Ok(())
    }
}

struct Obj {
    space: Arc<Space>,
    start: u64,
    end: u64,
    /// `i915->mm.notifier_lock`.
    notifier_lock: SpinLock<Pages>,
    check: Tracker,
}

impl IntervalNotifierOps for Obj {
    fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
        if !range.is_blockable() {
            self.check.interval(range, false);
            return false;
        }
        let mut pages = self.notifier_lock.lock();
        self.check.interval(range, true);
        iv.set_seq(cur_seq);
        pages.valid = false; // the GPU revalidates before its next use (after waiting for idle)
        true
    }
}

/// A userptr object of the current design.
pub struct Userptr {
    obj: Arc<Obj>,
    notifier: IntervalNotifier,
}

impl Userptr {
    /// Creates the object over `npages` from `addr` (`i915_gem_userptr_ioctl` →
    /// `mmu_interval_notifier_insert`).
    pub fn create(
        process: &Process,
        checker: &Checker,
        name: &str,
        addr: u64,
        npages: u64,
    ) -> Result<Userptr, DriverError> {
        let obj = Arc::new(Obj {
            space: process.space().clone(),
            start: addr,
            end: addr + npages * PAGE_SIZE,
            notifier_lock: SpinLock::new(
                Pages::default(),
                static_lock_class!("&i915->mm.notifier_lock"),
            ),
            check: checker.driver(name),
        });
        let notifier =
            process
                .mm()
                .interval_notifier_insert(addr, npages * PAGE_SIZE, obj.clone())?;
        Ok(Userptr { obj, notifier })
    }

    /// Populates (or revalidates) the object: pins with no lock held, publishes under
    /// `notifier_lock` if nothing collided. Returns the attempts it took.
    pub fn get_pages(&self, process: &Process) -> Result<u32, DriverError> {
        let o = &self.obj;
        let npages = (o.end - o.start) / PAGE_SIZE;
        for tries in 1..=MAX_TRIES {
            let seq = self.notifier.read_begin();
            let pinned = process.pin_user_pages(o.start, npages, true)?;
            let gpu = translations(&o.space, &pinned, true)?;
            let old = {
                let mut pages = o.notifier_lock.lock();
                if self.notifier.read_retry(seq) {
                    None
                } else {
                    let old = std::mem::replace(&mut pages.pinned, pinned.clone());
                    pages.gpu = gpu;
                    pages.valid = true;
                    Some(old)
                }
            };
            match old {
                Some(old) => {
                    process.unpin_user_pages(&old)?;
                    return Ok(tries);
                }
                None => process.unpin_user_pages(&pinned)?,
            }
        }
        Err(DriverError::Busy {
            what: "userptr get_pages",
            tries: MAX_TRIES,
        })
    }

    /// The GPU accesses page `index`, revalidating the object first when an invalidation
    /// made its pages stale (as the next execbuf does).
    pub fn gpu_access(
        &self,
        process: &Process,
        index: usize,
        store: Option<u64>,
    ) -> Result<u64, DriverError> {
        let o = &self.obj;
        if index as u64 >= (o.end - o.start) / PAGE_SIZE {
            return Err(DriverError::OutOfRange {
                addr: o.start + index as u64 * PAGE_SIZE,
                what: "the object",
            });
        }
        for _ in 0..MAX_TRIES {
            {
                let pages = o.notifier_lock.lock();
                if let Some(v) = gpu_access(&o.check, &o.space, &pages, o.start, index, store)? {
                    return Ok(v);
                }
            }
            self.get_pages(process)?;
        }
        Err(DriverError::Busy {
            what: "userptr gpu access",
            tries: MAX_TRIES,
        })
    }

    /// Frees the object: unpins its pages and removes the notifier.
    pub fn close(self, process: &Process) -> Result<(), DriverError> {
        let pinned = std::mem::take(&mut self.obj.notifier_lock.lock().pinned);
        process.unpin_user_pages(&pinned)?;
        self.notifier.remove()?;
        Ok(())
    }
}
