//! An IOMMU doing shared virtual addressing (`drivers/iommu/intel/svm.c`; the arm-smmu-v3 SVA
//! code has the same shape).
//!
//! The device issues DMA with the process's virtual addresses; the IOMMU walks the CPU page
//! table itself (ATS / PRI) and caches translations in its IOTLB. Its notifier implements only
//! `arch_invalidate_secondary_tlbs` (`intel_arch_invalidate_secondary_tlbs`, Linux 6.6+), called
//! from the primary's TLB flush in atomic context: it drops the IOTLB entries of the range under
//! a spinlock (the invalidation queue's lock, `qi_submit_sync` in the kernel) and never sleeps.
//! `release` (`intel_mm_release`) drops everything and stops the device's translations.
//! A translation miss is an ATS request; a non-present page a PRI page request, which the
//! kernel answers with `handle_mm_fault` (`iommu_sva_handle_iopf`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lockdep::{static_lock_class, SpinLock};
use mmu_notifier::{Capabilities, Mm, MmuNotifierOps, Subscription};
use vmsim::pte::PAGE_SIZE;
use vmsim::{Process, Space};

use crate::checker::{Access, Checker, Tracker, Translation};
use crate::devpt::touch_frame;
use crate::DriverError;

#[derive(Default)]
struct Iotlb {
    entries: BTreeMap<u64, Translation>,
    /// Bumped by every flush: a walk that raced a flush does not fill the IOTLB.
    flushes: u64,
}

struct Iommu {
    space: Arc<Space>,
    iotlb: SpinLock<Iotlb>,
    check: Tracker,
    released: AtomicBool,
}

/// The notifier side of an [`Sva`] bond.
pub struct SvaNotifier(Arc<Iommu>);

impl MmuNotifierOps for SvaNotifier {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ARCH_INVALIDATE_SECONDARY_TLBS | Capabilities::RELEASE
    }
    fn arch_invalidate_secondary_tlbs(&self, _mm: &Mm, start: u64, end: u64) {
        let mut tlb = self.0.iotlb.lock();
        tlb.flushes += 1;
        let gone: Vec<u64> = tlb.entries.range(start..end).map(|(&a, _)| a).collect();
        for a in gone {
            tlb.entries.remove(&a);
        }
        self.0.check.tlb(start, end);
    }
    fn release(&self, _mm: &Mm) {
        let mut tlb = self.0.iotlb.lock();
        tlb.flushes += 1;
        tlb.entries.clear();
        self.0.released.store(true, Ordering::Release);
        self.0.check.release();
    }
}

/// A device bound to a process's address space (`iommu_sva_bind_device`).
pub struct Sva {
    iommu: Arc<Iommu>,
    sub: Option<Subscription<SvaNotifier>>,
}

impl Sva {
    /// Binds the device to `process` (`iommu_sva_bind_device` → `mmu_notifier_register`).
    pub fn bind(process: &Process, checker: &Checker, name: &str) -> Result<Sva, DriverError> {
        let iommu = Arc::new(Iommu {
            space: process.space().clone(),
            iotlb: SpinLock::new(
                Iotlb::default(),
                static_lock_class!("&iommu->invalidation_queue"),
            ),
            check: checker.driver(name),
            released: AtomicBool::new(false),
        });
        let sub = process.mm().register(SvaNotifier(iommu.clone()))?;
        Ok(Sva {
            iommu,
            sub: Some(sub),
        })
    }

    /// The checker's handle.
    pub fn tracker(&self) -> &Tracker {
        &self.iommu.check
    }

    /// IOTLB entries now.
    pub fn cached(&self) -> usize {
        self.iommu.iotlb.lock().entries.len()
    }

    /// The device reads (`store == None`) or writes the word at virtual address `addr` by DMA.
    pub fn dma(&self, addr: u64, store: Option<u64>) -> Result<u64, DriverError> {
        let io = &self.iommu;
        let page = addr & !(PAGE_SIZE - 1);
        let access = if store.is_some() {
            Access::DmaWrite
        } else {
            Access::DmaRead
        };
        for _ in 0..crate::devpt::MAX_TRIES {
            if io.released.load(Ordering::Acquire) {
                return Err(DriverError::Released);
            }
            let flushes = {
                let tlb = io.iotlb.lock();
                if let Some(t) = tlb
                    .entries
                    .get(&page)
                    .copied()
                    .filter(|t| store.is_none() || t.write)
                {
                    io.check.access_tlb(&io.space, page, t, access);
                    return touch_frame(&io.space, t.pfn, store);
                }
                tlb.flushes
            };
            // IOTLB miss: the IOMMU walks the CPU page table (ATS translation request).
            // Only present entries: a device-private page is not present to the IOMMU.
            match io.space.walk(page) {
                Some((pfn, w)) if store.is_none() || w => {
                    let m = io.space.machine();
                    let generation = m.frames().frame(pfn)?.generation();
                    let mut tlb = io.iotlb.lock();
                    if tlb.flushes == flushes {
                        tlb.entries.insert(
                            page,
                            Translation {
                                pfn,
                                generation,
                                write: w,
                            },
                        );
                    }
                }
                _ => {
                    // Not present or read-only: a PRI page request, handled by the CPU fault path.
                    let p = Space::mmget_not_zero(&io.space).ok_or(DriverError::Released)?;
                    p.fault(page, store.is_some())?;
                }
            }
        }
        Err(DriverError::Busy {
            what: "sva dma",
            tries: crate::devpt::MAX_TRIES,
        })
    }

    /// Unbinds (`iommu_sva_unbind_device`).
    pub fn unbind(mut self) -> Result<(), DriverError> {
        if let Some(sub) = self.sub.take() {
            sub.unregister()?;
        }
        Ok(())
    }
}
