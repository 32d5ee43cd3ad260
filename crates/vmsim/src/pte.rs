//! Page-table entries, and the page table of one address space.
//!
//! Linux walks four or five levels to a last-level table of 512 entries, each last-level table
//! with its own spinlock when split page-table locks are on (`pte_offset_map_lock`, `mm/memory.c`;
//! the upper levels are populated under `mm->page_table_lock`). The simulator keeps that shape
//! where it matters for concurrency: a directory of 512-entry [`Leaf`] tables, each behind its
//! own validated spinlock of the class `ptl`, so faults on different 2 MiB regions do not
//! contend, and a notifier callback run under a PTL (the young callbacks,
//! `arch_invalidate_secondary_tlbs`) runs in atomic context as in Linux.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::frame::Pfn;

/// Bytes in a page.
pub const PAGE_SIZE: u64 = 4096;
/// Page shift.
pub const PAGE_SHIFT: u32 = 12;
/// Entries in a last-level table.
pub const PTRS_PER_PTE: usize = 512;

/// One page-table entry: present (a frame, with write/young/dirty bits), a swap entry, or none.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Pte(u64);

const PRESENT: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
const YOUNG: u64 = 1 << 2;
const DIRTY: u64 = 1 << 3;
const SWAP: u64 = 1 << 4;
const DEVICE: u64 = 1 << 5;
const MIGRATION: u64 = 1 << 6;
const VALUE_SHIFT: u32 = 12;

impl Pte {
    /// The empty entry (`pte_none`).
    pub const NONE: Pte = Pte(0);

    /// A present entry for `pfn` (`mk_pte`), young as a fresh mapping is.
    pub fn present(pfn: Pfn, write: bool, dirty: bool) -> Pte {
        let mut v = PRESENT | YOUNG | ((pfn.0 as u64) << VALUE_SHIFT);
        if write {
            v |= WRITE;
        }
        if dirty {
            v |= DIRTY;
        }
        Pte(v)
    }
    /// A swap entry for a slot of the swap area (`swp_entry_to_pte`).
    pub fn swap(slot: u32) -> Pte {
        Pte(SWAP | ((slot as u64) << VALUE_SHIFT))
    }
    /// A device-private entry: the page lives in a device's memory (`make_device_private_entry`);
    /// a CPU access faults it back (`do_swap_page` → `migrate_to_ram`).
    pub fn device_private(pfn: Pfn, write: bool) -> Pte {
        let mut v = SWAP | DEVICE | ((pfn.0 as u64) << VALUE_SHIFT);
        if write {
            v |= WRITE;
        }
        Pte(v)
    }
    /// A migration entry: the page at `pfn` is being moved; a fault waits until the move ends
    /// (`make_writable_migration_entry`, `migration_entry_wait`).
    pub fn migration(pfn: Pfn, write: bool) -> Pte {
        let mut v = SWAP | MIGRATION | ((pfn.0 as u64) << VALUE_SHIFT);
        if write {
            v |= WRITE;
        }
        Pte(v)
    }
    /// A migration entry.
    pub fn is_migration(self) -> bool {
        self.0 & (SWAP | MIGRATION) == (SWAP | MIGRATION)
    }
    /// The page a migration entry stands for.
    pub fn migration_pfn(self) -> Option<Pfn> {
        self.is_migration()
            .then_some(Pfn((self.0 >> VALUE_SHIFT) as u32))
    }
    /// `pte_none`.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
    /// `pte_present`.
    pub fn is_present(self) -> bool {
        self.0 & PRESENT != 0
    }
    /// A swap entry (not device-private).
    pub fn is_swap(self) -> bool {
        self.0 & (SWAP | DEVICE | MIGRATION) == SWAP
    }
    /// A device-private entry.
    pub fn is_device_private(self) -> bool {
        self.0 & (SWAP | DEVICE) == (SWAP | DEVICE)
    }
    /// `pte_write`.
    pub fn is_write(self) -> bool {
        self.0 & WRITE != 0
    }
    /// `pte_young`.
    pub fn is_young(self) -> bool {
        self.0 & YOUNG != 0
    }
    /// `pte_dirty`.
    pub fn is_dirty(self) -> bool {
        self.0 & DIRTY != 0
    }
    /// The frame of a present or device-private entry.
    pub fn pfn(self) -> Option<Pfn> {
        (self.is_present() || self.is_device_private())
            .then_some(Pfn((self.0 >> VALUE_SHIFT) as u32))
    }
    /// The swap slot of a swap entry.
    pub fn swap_slot(self) -> Option<u32> {
        self.is_swap().then_some((self.0 >> VALUE_SHIFT) as u32)
    }
    /// `pte_wrprotect`.
    pub fn wrprotect(self) -> Pte {
        Pte(self.0 & !WRITE)
    }
    /// `pte_mkwrite`.
    pub fn mkwrite(self) -> Pte {
        Pte(self.0 | WRITE)
    }
    /// `pte_mkold`.
    pub fn mkold(self) -> Pte {
        Pte(self.0 & !YOUNG)
    }
    /// `pte_mkyoung`.
    pub fn mkyoung(self) -> Pte {
        Pte(self.0 | YOUNG)
    }
    /// `pte_mkdirty`.
    pub fn mkdirty(self) -> Pte {
        Pte(self.0 | DIRTY)
    }
}

impl std::fmt::Debug for Pte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_none() {
            return write!(f, "none");
        }
        if let Some(slot) = self.swap_slot() {
            return write!(f, "swap:{slot}");
        }
        let pfn = self.pfn().map_or(0, |p| p.0);
        if let Some(p) = self.migration_pfn() {
            return write!(f, "migration:{:#x}", p.0);
        }
        let kind = if self.is_device_private() {
            "dev"
        } else {
            "pfn"
        };
        write!(
            f,
            "{kind}:{pfn:#x}{}{}{}",
            if self.is_write() { " w" } else { "" },
            if self.is_young() { " y" } else { "" },
            if self.is_dirty() { " d" } else { "" }
        )
    }
}

static PTL: lockdep::LockClassKey = lockdep::LockClassKey::new("ptl");
static PAGE_TABLE_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("mm->page_table_lock");

/// A last-level table: 512 entries behind their page-table lock.
pub struct Leaf {
    /// The entries, behind the split page-table lock.
    pub ptl: lockdep::SpinLock<[Pte; PTRS_PER_PTE]>,
}

/// Index of the leaf covering `addr`.
#[inline]
pub fn leaf_index(addr: u64) -> u64 {
    addr >> (PAGE_SHIFT + 9)
}

/// Index of `addr`'s entry within its leaf.
#[inline]
pub fn pte_index(addr: u64) -> usize {
    ((addr >> PAGE_SHIFT) as usize) & (PTRS_PER_PTE - 1)
}

/// One address space's page table: a directory of leaves.
pub struct PageTable {
    dir: lockdep::SpinLock<BTreeMap<u64, Arc<Leaf>>>,
}

impl Default for PageTable {
    fn default() -> Self {
        Self::new()
    }
}

impl PageTable {
    /// An empty page table.
    pub fn new() -> PageTable {
        PageTable {
            dir: lockdep::SpinLock::new(BTreeMap::new(), &PAGE_TABLE_LOCK),
        }
    }

    /// The leaf covering `addr`, if it exists (`pte_offset_map`).
    pub fn leaf(&self, addr: u64) -> Option<Arc<Leaf>> {
        self.dir.lock().get(&leaf_index(addr)).cloned()
    }

    /// The leaf covering `addr`, allocated if missing (`pte_alloc`).
    pub fn leaf_alloc(&self, addr: u64) -> Arc<Leaf> {
        self.dir
            .lock()
            .entry(leaf_index(addr))
            .or_insert_with(|| {
                Arc::new(Leaf {
                    ptl: lockdep::SpinLock::new([Pte::NONE; PTRS_PER_PTE], &PTL),
                })
            })
            .clone()
    }

    /// The leaves overlapping `[start, end)`, with the base address of each, in address order.
    pub fn leaves(&self, start: u64, end: u64) -> Vec<(u64, Arc<Leaf>)> {
        if end <= start {
            return Vec::new();
        }
        let (first, last) = (leaf_index(start), leaf_index(end - 1));
        self.dir
            .lock()
            .range(first..=last)
            .map(|(&i, l)| (i << (PAGE_SHIFT + 9), l.clone()))
            .collect()
    }

    /// Drops the leaves that hold no entry inside `[start, end)` (`free_pgtables`). The caller
    /// holds the mmap lock for write, so no fault is using them.
    pub fn free_empty(&self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        let (first, last) = (leaf_index(start), leaf_index(end - 1));
        let mut dir = self.dir.lock();
        let empty: Vec<u64> = dir
            .range(first..=last)
            .filter(|(_, l)| l.ptl.lock().iter().all(|p| p.is_none()))
            .map(|(&i, _)| i)
            .collect();
        for i in empty {
            dir.remove(&i);
        }
    }

    /// Number of leaves (page-table pages) allocated.
    pub fn nr_leaves(&self) -> usize {
        self.dir.lock().len()
    }
}

/// Calls `f(addr, &mut pte)` for every page of `[start, end)` whose leaf exists, one leaf at a
/// time with its PTL held (`walk_page_range` / `zap_pte_range` shape). `f` runs in atomic context.
pub fn for_each_pte<F>(pt: &PageTable, start: u64, end: u64, mut f: F)
where
    F: FnMut(u64, &mut Pte),
{
    for (base, leaf) in pt.leaves(start, end) {
        let lo = start.max(base);
        let hi = end.min(base + (PTRS_PER_PTE as u64) * PAGE_SIZE);
        let mut ptes = leaf.ptl.lock();
        let mut addr = lo;
        while addr < hi {
            f(addr, &mut ptes[pte_index(addr)]);
            addr += PAGE_SIZE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pte_encodes_every_kind() {
        let p = Pte::present(Pfn(0x1234), true, false);
        assert!(p.is_present() && p.is_write() && p.is_young() && !p.is_dirty());
        assert_eq!(p.pfn(), Some(Pfn(0x1234)));
        assert!(!p.wrprotect().is_write());
        assert!(!p.mkold().is_young());
        let s = Pte::swap(77);
        assert!(s.is_swap() && !s.is_present() && !s.is_device_private());
        assert_eq!(s.swap_slot(), Some(77));
        assert_eq!(s.pfn(), None);
        let d = Pte::device_private(Pfn(9), true);
        assert!(d.is_device_private() && !d.is_swap() && !d.is_present());
        assert_eq!(d.pfn(), Some(Pfn(9)));
        assert!(Pte::NONE.is_none());
        let m = Pte::migration(Pfn(3), true);
        assert!(m.is_migration() && !m.is_swap() && !m.is_present() && !m.is_device_private());
        assert_eq!((m.migration_pfn(), m.pfn()), (Some(Pfn(3)), None));
    }

    #[test]
    fn leaves_are_split_by_2mib_and_freed_when_empty() {
        let pt = PageTable::new();
        let a = 0x20_0000 - PAGE_SIZE; // last page of leaf 0
        pt.leaf_alloc(a).ptl.lock()[pte_index(a)] = Pte::present(Pfn(1), false, false);
        pt.leaf_alloc(a + PAGE_SIZE).ptl.lock()[0] = Pte::present(Pfn(2), false, false);
        assert_eq!(pt.nr_leaves(), 2);
        let mut seen = Vec::new();
        for_each_pte(&pt, a, a + 2 * PAGE_SIZE, |addr, pte| {
            seen.push((addr, pte.pfn()))
        });
        assert_eq!(seen, vec![(a, Some(Pfn(1))), (a + PAGE_SIZE, Some(Pfn(2)))]);
        for_each_pte(&pt, a, a + PAGE_SIZE, |_, pte| *pte = Pte::NONE);
        pt.free_empty(0, 0x40_0000);
        assert_eq!(pt.nr_leaves(), 1);
        assert!(pt.leaf(a).is_none());
    }
}
