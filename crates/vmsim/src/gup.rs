//! What drivers use to reach the primary's pages: `pin_user_pages` (`mm/gup.c`) and an
//! `hmm_range_fault` equivalent (`mm/hmm.c`).

use mmu_notifier::Interval;

use crate::error::VmError;
use crate::fault::handle_fault;
use crate::frame::Pfn;
use crate::process::Process;
use crate::pte::{pte_index, PAGE_SIZE};
use crate::task::Op;
use crate::vma::check_range;

/// One page as `hmm_range_fault` reports it (`HMM_PFN_VALID`, `HMM_PFN_WRITE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HmmPfn {
    /// The frame.
    pub pfn: Pfn,
    /// Mapped writable by the primary (`HMM_PFN_WRITE`).
    pub write: bool,
    /// The frame's generation when it was looked up: a device access can tell if the frame was
    /// freed since.
    pub generation: u32,
}

impl Process {
    /// `pin_user_pages(FOLL_LONGTERM [| FOLL_WRITE])`: faults `npages` pages from `addr` in and
    /// pins them; they are not reclaimed or migrated until [`Process::unpin_user_pages`]. With
    /// `write`, copy-on-write is broken first, so the pinned frame is the one the process writes.
    ///
    /// # Context
    /// Takes the mmap lock for read; may sleep and reclaim. On error nothing stays pinned.
    pub fn pin_user_pages(&self, addr: u64, npages: u64, write: bool) -> Result<Vec<Pfn>, VmError> {
        let end = check_range(addr, npages.saturating_mul(PAGE_SIZE))?;
        let space = self.space();
        let vmas = space.mmap_lock.read();
        let m = &space.machine;
        let mut pinned = Vec::new();
        let _task = m.tasks.enter(Op::PinUserPages, space.id(), addr);
        let mut a = addr;
        let mut result = Ok(());
        'pages: while a < end {
            for _ in 0..64 {
                if let Some(leaf) = space.pt.leaf(a) {
                    let ptes = leaf.ptl.lock();
                    let pte = ptes[pte_index(a)];
                    if pte.is_present() && (!write || pte.is_write()) {
                        let pfn = pte.pfn().expect("present");
                        m.pool.get(pfn).pin();
                        pinned.push(pfn);
                        a += PAGE_SIZE;
                        continue 'pages;
                    }
                }
                if let Err(e) = handle_fault(space, &vmas, a, write) {
                    result = Err(e);
                    break 'pages;
                }
            }
            result = Err(VmError::WouldBlock(format!("pinning {a:#x} kept racing")));
            break;
        }
        drop(vmas);
        if let Err(e) = result {
            self.unpin_user_pages(&pinned)?;
            return Err(e);
        }
        Ok(pinned)
    }

    /// `unpin_user_pages`.
    pub fn unpin_user_pages(&self, pfns: &[Pfn]) -> Result<(), VmError> {
        let m = &self.space().machine;
        for &pfn in pfns {
            m.pool.frame(pfn)?.unpin()?;
            m.put_page(pfn)?;
        }
        Ok(())
    }

    /// `hmm_range_fault`: the frames backing `[start, end)`, faulting them in (for writing if
    /// `write`) as `HMM_PFN_REQ_FAULT` asks. Fails with [`VmError::Busy`] when `interval`'s
    /// sequence moved past `notifier_seq` during the walk (`mmu_interval_check_retry`): the
    /// caller takes a new `read_begin` and retries, as drivers do.
    ///
    /// # Context
    /// Takes the mmap lock for read; may sleep and reclaim. The caller must not hold its own
    /// lock that its invalidate callback takes.
    pub fn hmm_range_fault(
        &self,
        interval: &Interval,
        notifier_seq: u64,
        start: u64,
        end: u64,
        write: bool,
    ) -> Result<Vec<HmmPfn>, VmError> {
        let end = check_range(start, end.saturating_sub(start))?;
        let space = self.space();
        let vmas = space.mmap_lock.read();
        let m = &space.machine;
        let mut out = Vec::with_capacity(((end - start) / PAGE_SIZE) as usize);
        let mut a = start;
        while a < end {
            if interval.check_retry(notifier_seq) {
                return Err(VmError::Busy);
            }
            // `hmm_vma_walk_test`: a VMA without the access is -EFAULT, present entries or not.
            let vma = vmas.find(a).ok_or(VmError::NoMapping(a))?;
            if vma.flags
                & if write {
                    crate::vm::WRITE
                } else {
                    crate::vm::READ
                }
                == 0
            {
                let allowed = crate::vma::prot_string(vma.flags);
                return Err(VmError::Protection { addr: a, allowed });
            }
            let found = space.pt.leaf(a).and_then(|leaf| {
                let pte = leaf.ptl.lock()[pte_index(a)];
                (pte.is_present() && (!write || pte.is_write())).then(|| HmmPfn {
                    pfn: pte.pfn().expect("present"),
                    write: pte.is_write(),
                    generation: m.pool.get(pte.pfn().expect("present")).generation(),
                })
            });
            match found {
                Some(p) => {
                    out.push(p);
                    a += PAGE_SIZE;
                }
                None => handle_fault(space, &vmas, a, write)?,
            }
        }
        Ok(out)
    }
}
