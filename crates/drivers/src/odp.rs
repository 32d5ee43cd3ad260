//! RDMA on-demand paging (`drivers/infiniband/core/umem_odp.c`, with the mlx5 device side of
//! `drivers/infiniband/hw/mlx5/odp.c`).
//!
//! [`OdpMr`] is one memory region registered with `IB_ACCESS_ON_DEMAND`: an interval notifier
//! over the region (`ib_umem_odp_get` → `mmu_interval_notifier_insert`), the umem mutex
//! (`umem_odp->umem_mutex`) as user lock over the device's translation table (the MTT, a
//! [`DevicePt`] here). The NIC's page faults and prefetches (`pagefault_real_mr`,
//! `mlx5_ib_advise_mr_prefetch`) go through `ib_umem_odp_map_dma_and_lock`: `read_begin`,
//! `hmm_range_fault`, the mutex, `read_retry`, publish. The invalidation
//! (`mlx5_ib_invalidate_range`) takes the mutex, `mmu_interval_set_seq`, unmaps the DMA pages
//! and updates the MTT. In a non-blockable range (the OOM reaper) it may not sleep:
//! [`NonBlock`] chooses between the trylock idiom ([`Range::lock_or_refuse`]) and the seed-003
//! bug of taking the mutex anyway.
//!
//! [`OdpPerMm`] is the Linux 4.19 shape (`ib_ucontext_per_mm`): one list subscriber per
//! address space whose start trylocks `per_mm->umem_rwsem` when not blockable and returns
//! `-EAGAIN`, and which also has an end — Jason Gunthorpe's "B" in seed 004.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lockdep::{static_lock_class, Mutex, RwLock};
use mmu_notifier::{
    Capabilities, Interval, IntervalNotifier, IntervalNotifierOps, Mm, MmuNotifierOps, Range,
    Subscription, WouldBlock,
};
use vmsim::pte::PAGE_SIZE;
use vmsim::{Process, Space};

use crate::checker::{Access, Checker, Tracker};
use crate::devpt::{access_range, fault_and_map, DevicePt};
use crate::DriverError;

/// What the invalidation does in a non-blockable range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonBlock {
    /// `mutex_trylock`, refuse if it fails ([`Range::lock_or_refuse`]): the correct driver.
    TryLock,
    /// `mutex_lock` whatever the range says: sleeps under the OOM reaper (seed 003).
    Sleep,
}

struct MrState {
    space: Arc<Space>,
    start: u64,
    end: u64,
    umem_mutex: Mutex<DevicePt>,
    nonblock: NonBlock,
    check: Tracker,
    refusals: AtomicU64,
}

impl IntervalNotifierOps for MrState {
    fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
        let guard = match self.nonblock {
            NonBlock::TryLock => {
                range.lock_or_refuse(|| self.umem_mutex.lock(), || self.umem_mutex.try_lock())
            }
            NonBlock::Sleep => Some(self.umem_mutex.lock()),
        };
        let Some(mut mtt) = guard else {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            self.check.interval(range, false);
            return false;
        };
        self.check.interval(range, true);
        iv.set_seq(cur_seq);
        mtt.zap(range.start().max(self.start), range.end().min(self.end));
        true
    }
}

/// An on-demand-paging memory region.
pub struct OdpMr {
    mr: Arc<MrState>,
    notifier: IntervalNotifier,
}

impl std::fmt::Debug for OdpMr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OdpMr [{:#x}, {:#x})", self.mr.start, self.mr.end)
    }
}

impl OdpMr {
    /// Registers `[start, start + len)` of `process` (`ib_reg_user_mr` with
    /// `IB_ACCESS_ON_DEMAND`); nothing is mapped until the NIC faults or prefetches.
    pub fn register(
        process: &Process,
        checker: &Checker,
        name: &str,
        start: u64,
        len: u64,
        nonblock: NonBlock,
    ) -> Result<OdpMr, DriverError> {
        let mr = Arc::new(MrState {
            space: process.space().clone(),
            start,
            end: start + len,
            umem_mutex: Mutex::new(DevicePt::new(), static_lock_class!("&umem_odp->umem_mutex")),
            nonblock,
            check: checker.driver(name),
            refusals: AtomicU64::new(0),
        });
        let notifier = process
            .mm()
            .interval_notifier_insert(start, len, mr.clone())?;
        Ok(OdpMr { mr, notifier })
    }

    /// The checker's handle of this region.
    pub fn tracker(&self) -> &Tracker {
        &self.mr.check
    }

    /// Non-blockable invalidations refused so far.
    pub fn refusals(&self) -> u64 {
        self.mr.refusals.load(Ordering::Relaxed)
    }

    /// Pages the NIC maps now.
    pub fn mapped(&self) -> usize {
        self.mr.umem_mutex.lock().len()
    }

    /// Holds the umem mutex as a running device page fault or MTT update does, until the
    /// guard drops.
    pub fn hold_umem_mutex(&self) -> lockdep::MutexGuard<'_, DevicePt> {
        self.mr.umem_mutex.lock()
    }

    fn range(&self, addr: u64, npages: u64) -> Result<(u64, u64), DriverError> {
        let end = addr.saturating_add(npages.saturating_mul(PAGE_SIZE));
        if addr < self.mr.start || end > self.mr.end {
            return Err(DriverError::OutOfRange {
                addr,
                what: "the memory region",
            });
        }
        Ok((addr, end))
    }

    fn user(&self) -> Result<Process, DriverError> {
        Space::mmget_not_zero(&self.mr.space).ok_or(DriverError::Released)
    }

    /// A NIC page fault on `npages` from `addr` (`pagefault_real_mr` →
    /// `ib_umem_odp_map_dma_and_lock`). Returns the attempts it took.
    pub fn page_fault(&self, addr: u64, npages: u64, write: bool) -> Result<u32, DriverError> {
        let (start, end) = self.range(addr, npages)?;
        let p = self.user()?;
        let mr = &self.mr;
        fault_and_map(
            &p,
            &self.notifier,
            &mr.umem_mutex,
            start,
            end,
            write,
            "ib_umem_odp_map_dma_and_lock",
        )
    }

    /// `ibv_advise_mr(IBV_ADVISE_MR_ADVICE_PREFETCH[_WRITE])`: faults the range in ahead of
    /// the NIC's accesses (`mlx5_ib_advise_mr_prefetch`).
    pub fn prefetch(&self, addr: u64, npages: u64, write: bool) -> Result<u32, DriverError> {
        self.page_fault(addr, npages, write)
    }

    /// The NIC reads `npages` from `addr` by DMA (an RDMA read or send), faulting as needed.
    pub fn dma_read(&self, addr: u64, npages: usize) -> Result<Vec<u64>, DriverError> {
        self.range(addr, npages as u64)?;
        let mr = &self.mr;
        access_range(
            &mr.check,
            &mr.space,
            &mr.umem_mutex,
            addr,
            npages,
            Access::DmaRead,
            None,
            |a, e| self.page_fault(a, (e - a) / PAGE_SIZE, false).map(drop),
        )
    }

    /// The NIC writes `values` into consecutive pages from `addr` by DMA (an RDMA write or
    /// receive), faulting as needed.
    pub fn dma_write(&self, addr: u64, values: &[u64]) -> Result<(), DriverError> {
        self.range(addr, values.len() as u64)?;
        let mr = &self.mr;
        access_range(
            &mr.check,
            &mr.space,
            &mr.umem_mutex,
            addr,
            values.len(),
            Access::DmaWrite,
            Some(values),
            |a, e| self.page_fault(a, (e - a) / PAGE_SIZE, true).map(drop),
        )
        .map(drop)
    }

    /// Deregisters the region (`ib_umem_odp_release`): removes the interval notifier.
    pub fn deregister(self) -> Result<(), DriverError> {
        self.notifier.remove()?;
        Ok(())
    }
}

struct PerMmState {
    umem_rwsem: RwLock<DevicePt>,
    check: Tracker,
    refusals: AtomicU64,
}

/// The 4.19 per-address-space ODP notifier (`ib_ucontext_per_mm`): start with a trylock of
/// `umem_rwsem` when not blockable (`-EAGAIN`), and an end. Registrable only on
/// [`mmu_notifier::Profile::Pre5_12`], the kernels that accepted it.
pub struct OdpPerMm {
    state: Arc<PerMmState>,
    sub: Subscription<PerMmOps>,
}

/// The list-subscriber side of [`OdpPerMm`].
pub struct PerMmOps(Arc<PerMmState>);

impl MmuNotifierOps for PerMmOps {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
            | Capabilities::START_CAN_FAIL
            | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        let s = &self.0;
        let Some(mut umems) =
            range.lock_or_refuse(|| s.umem_rwsem.read(), || s.umem_rwsem.try_read())
        else {
            s.refusals.fetch_add(1, Ordering::Relaxed);
            s.check.refused(range);
            return Err(WouldBlock);
        };
        s.check.start(range);
        let _ = &mut umems; // the umems in range are invalidated (none mapped in this model)
        Ok(())
    }
    fn invalidate_range_end(&self, range: &Range) {
        self.0.check.end(range);
    }
}

impl OdpPerMm {
    /// Registers the per-mm notifier on `mm`.
    pub fn register(mm: &Mm, checker: &Checker, name: &str) -> Result<OdpPerMm, DriverError> {
        let state = Arc::new(PerMmState {
            umem_rwsem: RwLock::new(DevicePt::new(), static_lock_class!("&per_mm->umem_rwsem")),
            check: checker.driver(name),
            refusals: AtomicU64::new(0),
        });
        let sub = mm.register(PerMmOps(state.clone()))?;
        Ok(OdpPerMm { state, sub })
    }

    /// Holds `umem_rwsem` for write, as registering or deregistering a region does.
    pub fn hold_for_registration(&self) -> lockdep::RwLockWriteGuard<'_, DevicePt> {
        self.state.umem_rwsem.write()
    }

    /// Starts refused so far.
    pub fn refusals(&self) -> u64 {
        self.state.refusals.load(Ordering::Relaxed)
    }

    /// The checker's handle.
    pub fn tracker(&self) -> &Tracker {
        &self.state.check
    }

    /// Unregisters.
    pub fn unregister(self) -> Result<(), DriverError> {
        self.sub.unregister()?;
        Ok(())
    }
}
