//! Walking a page's reverse map against the live address spaces (`rmap_walk`, `mm/rmap.c`):
//! the one loop behind `folio_referenced`, `try_to_unmap` and `try_to_migrate`.
//!
//! For every `(mm, address)` its anon_vma or file says may map the page, with that object's
//! rmap lock held for read across the walk, the entry is examined under its page-table lock.
//! With an event, each mapping is bracketed by a blockable invalidation of that one page, in
//! that address space, without its mmap lock (`try_to_unmap_one` / `try_to_migrate_one`:
//! `mmu_notifier_range_init(MMU_NOTIFY_CLEAR, …, address, address + PAGE_SIZE)`); when the
//! visitor changes the entry, the TLB flush's secondary hook runs under the page-table lock
//! (`ptep_clear_flush`).

use std::sync::Arc;

use mmu_notifier::{Event, Range};

use crate::frame::{flags, Pfn};
use crate::machine::Inner;
use crate::machine::Space;
use crate::pte::{pte_index, Pte, PAGE_SIZE};
use crate::rmap::{MapperSet, MmId};

trait HasMappers: Send + Sync {
    fn mappers(&self) -> &MapperSet;
}
impl HasMappers for crate::rmap::AnonVma {
    fn mappers(&self) -> &MapperSet {
        &self.mappers
    }
}
impl HasMappers for crate::rmap::File {
    fn mappers(&self) -> &MapperSet {
        &self.i_mmap
    }
}

/// The anon_vma or file the page is filed under, and its index there (`folio_anon_vma`,
/// `folio->mapping`).
fn owner_of(m: &Inner, pfn: Pfn) -> Option<(Arc<dyn HasMappers>, u64)> {
    let f = m.pool.get(pfn);
    let (owner, index) = f.mapping();
    if owner == 0 {
        return None;
    }
    if f.test(flags::ANON) {
        m.anon_vma(owner).map(|a| (a as Arc<dyn HasMappers>, index))
    } else {
        m.file(owner).map(|f| (f as Arc<dyn HasMappers>, index))
    }
}

/// Calls `visit(space, address, entry)` under the page-table lock for every entry that maps
/// `pfn` as a present page. With `event`, each mapping is bracketed by a blockable invalidation
/// of the page; a visitor that returns true changed the entry, and the secondary TLBs are
/// flushed under the lock. Returns false when the page is filed under nothing any more.
pub(crate) fn rmap_walk(
    m: &Inner,
    pfn: Pfn,
    event: Option<Event>,
    mut visit: impl FnMut(&Space, u64, &mut Pte) -> bool,
) -> bool {
    let Some((owner, index)) = owner_of(m, pfn) else {
        return false;
    };
    let mut visited: Vec<(MmId, u64)> = Vec::new();
    owner.mappers().walk(index, |mm, addr| {
        if visited.contains(&(mm, addr)) {
            return;
        }
        visited.push((mm, addr));
        let Some(space) = m.space(mm) else { return };
        let range = event.and_then(|e| Range::new(addr, addr + PAGE_SIZE, e).ok());
        let guard = range.map(|r| space.mm.invalidate_range_start(r));
        if let Some(leaf) = space.pt.leaf(addr) {
            let mut ptes = leaf.ptl.lock();
            let pte = &mut ptes[pte_index(addr)];
            if pte.is_present() && pte.pfn() == Some(pfn) && visit(&space, addr, pte) {
                space
                    .mm
                    .arch_invalidate_secondary_tlbs(addr, addr + PAGE_SIZE);
            }
        }
        drop(guard);
    });
    true
}
