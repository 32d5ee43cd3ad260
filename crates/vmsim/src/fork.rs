//! `fork` (`dup_mmap` in `kernel/fork.c`, `copy_page_range` in `mm/memory.c`).
//!
//! Both address spaces' mmap locks are held for write (the child's nested). Each VMA not marked
//! `VM_DONTCOPY` is duplicated; its page-table entries are copied only where Linux copies them
//! (`vma_needs_copy`: the VMA has an anon_vma — private memory that may hold anonymous pages);
//! shared mappings are faulted in lazily by the child.
//!
//! Notifier call sites: for a copy-on-write VMA, one blockable [`Event::ProtectionPage`] over the
//! whole source VMA **on the parent only** (`copy_page_range`), because the parent's writable
//! entries become read-only. The child is never notified (it has no subscribers yet). After the
//! copy, `flush_tlb_mm(parent)` calls the secondary-TLB hook over everything.
//!
//! A pinned anonymous page (`FOLL_PIN`, e.g. an RDMA registration) is copied for the child at
//! once instead of shared (`copy_present_page`, `folio_needs_cow_for_dma`), so the parent keeps
//! writing to the frame the device was given.

use crate::primitive::Ordering;

use mmu_notifier::{Event, Range};

use crate::alloc::GFP_USER;
use crate::error::VmError;
use crate::frame::{flags, Pfn};
use crate::lru::LruKind;
use crate::machine::Space;
use crate::process::Process;
use crate::pte::{for_each_pte, pte_index, Pte};
use crate::task::Op;
use crate::vma::{vm, Vma};

impl Process {
    /// `fork(2)`: a child process with a copy-on-write copy of this address space.
    ///
    /// # Context
    /// Takes both mmap locks for write; may sleep and allocate (page tables, pinned-page copies).
    pub fn fork(&self) -> Result<Process, VmError> {
        let parent = self.space();
        let _task = parent.machine.tasks.enter(Op::Fork, parent.id(), 0);
        parent.check_stable()?;
        let child = parent.machine().spawn();
        let cs = child.space().clone();
        let pvmas = parent.mmap_lock.write();
        let mut cvmas = cs.mmap_lock.write_nested(1);
        let mut result = Ok(());
        let mut copied_cow = false;
        for v in pvmas.iter() {
            if v.flags & vm::DONTCOPY != 0 {
                continue;
            }
            let mut cv = v.clone();
            if !v.anon_vmas.is_empty() {
                // `anon_vma_fork`: the child's own anon_vma first, then the parent's chain.
                cv.anon_vmas = std::iter::once(parent.machine.new_anon_vma())
                    .chain(
                        if v.flags & vm::WIPEONFORK != 0 {
                            None
                        } else {
                            Some(v.anon_vmas.iter().cloned())
                        }
                        .into_iter()
                        .flatten(),
                    )
                    .collect();
            }
            cv.link(cs.id());
            let child_anon = cv.anon_vma().map(|a| a.id());
            cvmas.insert(cv)?;
            if v.anon_vmas.is_empty() || v.flags & vm::WIPEONFORK != 0 {
                continue;
            }
            let cow = v.is_cow();
            copied_cow |= cow;
            result = result.and(copy_range(parent, &cs, v, child_anon.unwrap_or(0), cow));
        }
        drop(cvmas);
        drop(pvmas);
        if copied_cow {
            parent.mm.arch_invalidate_secondary_tlbs(0, u64::MAX);
        }
        result.map(|_| child)
    }
}

/// `copy_page_range` for one VMA.
fn copy_range(
    parent: &Space,
    child: &Space,
    v: &Vma,
    child_anon: u32,
    cow: bool,
) -> Result<(), VmError> {
    let m = &parent.machine;
    let (start, end) = (v.start, v.end);
    if parent.pt.leaves(start, end).is_empty() {
        return Ok(());
    }
    let range = Range::new(start, end, Event::ProtectionPage)
        .map_err(|e| VmError::InvalidArgument(e.to_string()))?;
    let guard = cow.then(|| parent.mm.invalidate_range_start(range));
    let mut entries: Vec<(u64, Pte)> = Vec::new();
    let mut pinned: Vec<(u64, Pfn)> = Vec::new();
    let mut err = Ok(());
    for_each_pte(&parent.pt, start, end, |addr, pte| {
        if let Some(slot) = pte.swap_slot() {
            if let Err(e) = m.swap.dup(slot) {
                err = Err(e);
            }
            entries.push((addr, *pte));
            return;
        }
        let Some(pfn) = pte.pfn() else { return };
        if !pte.is_present() {
            return;
        }
        let f = m.pool.get(pfn);
        if cow && f.test(flags::ANON) && f.pincount() > 0 {
            pinned.push((addr, pfn));
            return;
        }
        f.get();
        f.map();
        if cow && pte.is_write() {
            *pte = pte.wrprotect();
        }
        entries.push((
            addr,
            if cow {
                pte.wrprotect().mkold()
            } else {
                pte.mkold()
            },
        ));
    });
    drop(guard);
    err?;
    for (addr, pte) in entries {
        if pte.is_present() {
            child.rss.fetch_add(1, Ordering::AcqRel);
        }
        child.pt.leaf_alloc(addr).ptl.lock()[pte_index(addr)] = pte;
    }
    // `copy_present_page`: the child gets its own copy of each pinned page.
    for (addr, pfn) in pinned {
        let new = crate::alloc::alloc_page(m, GFP_USER)?;
        let nf = m.pool.get(new);
        nf.set_content(m.pool.get(pfn).content());
        nf.set_mapping(child_anon, v.page_index(addr));
        nf.set(flags::ANON | flags::SWAPBACKED | flags::DIRTY);
        nf.map();
        child.pt.leaf_alloc(addr).ptl.lock()[pte_index(addr)] = Pte::present(new, true, true);
        child.rss.fetch_add(1, Ordering::AcqRel);
        m.lru.add(&m.pool, new, LruKind::Inactive)?;
    }
    Ok(())
}
