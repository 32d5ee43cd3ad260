//! Taking pages out of page tables (`zap_pte_range` in `mm/memory.c`) and giving them back once
//! every TLB — the CPU's and, through `arch_invalidate_secondary_tlbs`, the secondary MMUs' — has
//! forgotten them (`tlb_finish_mmu` → `tlb_flush_mmu` → `free_pages_and_swap_cache`).
//!
//! The order is the point: a frame is freed only after the notifier's end and the TLB flush, so
//! a secondary MMU that obeyed the contract can never touch a frame that has been reused.

use crate::primitive::Ordering;

use crate::error::VmError;
use crate::frame::{flags, Pfn};
use crate::machine::Space;
use crate::pte::{for_each_pte, Pte};

/// Pages taken out of page tables, to be released after the TLB flush (`struct mmu_gather`).
#[must_use = "the gathered pages must be released with `finish`"]
#[derive(Default)]
pub(crate) struct Gather {
    pages: Vec<Pfn>,
    start: u64,
    end: u64,
}

impl Gather {
    pub(crate) fn new() -> Gather {
        Gather {
            pages: Vec::new(),
            start: u64::MAX,
            end: 0,
        }
    }

    /// Clears the entries of `[start, end)` (`zap_pte_range`): each present page loses this
    /// mapping and is gathered; each swap entry's slot reference is dropped. `filter` chooses
    /// which present pages to zap (the OOM reaper and `MADV_DONTNEED` zap all; truncation only
    /// the file's pages beyond the size).
    pub(crate) fn zap(
        &mut self,
        space: &Space,
        start: u64,
        end: u64,
        mut filter: impl FnMut(Pfn) -> bool,
    ) -> Result<(), VmError> {
        let m = &space.machine;
        let mut err = Ok(());
        for_each_pte(&space.pt, start, end, |addr, pte| {
            if let Some(slot) = pte.swap_slot() {
                if let Err(e) = m.swap.free(slot) {
                    err = Err(e);
                }
                *pte = Pte::NONE;
                return;
            }
            if pte.is_migration() {
                // The migrating thread holds the page; it finds the entry gone and skips it.
                *pte = Pte::NONE;
                return;
            }
            let Some(pfn) = pte.pfn() else { return };
            if !filter(pfn) {
                return;
            }
            let f = m.pool.get(pfn);
            if pte.is_dirty() {
                f.set(flags::DIRTY);
            }
            if pte.is_present() {
                space.rss.fetch_sub(1, Ordering::AcqRel);
            }
            *pte = Pte::NONE;
            match f.unmap() {
                Ok(_) => self.pages.push(pfn),
                Err(e) => err = Err(e),
            }
            self.start = self.start.min(addr);
            self.end = self.end.max(addr + crate::pte::PAGE_SIZE);
        });
        err
    }

    /// `tlb_finish_mmu`: flushes the TLBs of `space` for what was zapped (the secondary-TLB
    /// hook), then drops the gathered references. Call after the notifier's end.
    pub(crate) fn finish(self, space: &Space) -> Result<(), VmError> {
        if self.start < self.end {
            space
                .mm
                .arch_invalidate_secondary_tlbs(self.start, self.end);
        }
        let mut first_err = Ok(());
        for pfn in self.pages {
            if let Err(e) = space.machine.put_page(pfn) {
                first_err = first_err.and(Err(e));
            }
        }
        first_err
    }
}
