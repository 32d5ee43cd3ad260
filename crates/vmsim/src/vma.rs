//! Virtual memory areas: the mappings of one address space (`struct vm_area_struct`).
//!
//! Linux keeps an address space's VMAs in a maple tree under `mmap_lock`; every operation that
//! changes the layout (mmap, munmap, mremap, mprotect) splits the VMAs at the range's edges
//! first (`split_vma`, `mm/vma.c`) and then acts on whole VMAs. [`VmaTree`] does the same over a
//! `BTreeMap` keyed by start address; it is plain data, always used with the mmap lock held (read
//! for lookups, write for changes).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::VmError;
use crate::pte::PAGE_SIZE;
use crate::rmap::{AnonVma, File};

/// VMA flags (`VM_*`, `include/linux/mm.h`), the subset the notifier call sites depend on.
pub mod vm {
    /// `VM_READ`.
    pub const READ: u32 = 1 << 0;
    /// `VM_WRITE`.
    pub const WRITE: u32 = 1 << 1;
    /// `VM_EXEC`.
    pub const EXEC: u32 = 1 << 2;
    /// `VM_SHARED`: stores reach the backing object and every other mapping of it.
    pub const SHARED: u32 = 1 << 3;
    /// `VM_DONTCOPY` (`MADV_DONTFORK`): not copied into a child at fork.
    pub const DONTCOPY: u32 = 1 << 4;
    /// `VM_LOCKED` (`mlock`): never reclaimed.
    pub const LOCKED: u32 = 1 << 5;
    /// `VM_WIPEONFORK` (`MADV_WIPEONFORK`): the child gets an empty mapping.
    pub const WIPEONFORK: u32 = 1 << 6;
}

/// Renders protection bits as `rwx`.
pub fn prot_string(flags: u32) -> String {
    format!(
        "{}{}{}{}",
        if flags & vm::READ != 0 { 'r' } else { '-' },
        if flags & vm::WRITE != 0 { 'w' } else { '-' },
        if flags & vm::EXEC != 0 { 'x' } else { '-' },
        if flags & vm::SHARED != 0 { 's' } else { 'p' },
    )
}

/// What backs a mapping.
#[derive(Clone)]
pub enum Backing {
    /// Anonymous memory (private, or shared through a shmem object for `MAP_SHARED|MAP_ANON`,
    /// which Linux backs with a shmem file: then this is [`Backing::File`]).
    Anon,
    /// A file or shmem object, mapped from page offset `pgoff` (`vm_file`, `vm_pgoff`).
    File(Arc<File>),
}

/// One mapping.
#[derive(Clone)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `VM_*` flags ([`vm`]).
    pub flags: u32,
    /// Page offset of `start` in the backing object, or in the anon_vma's linear index space
    /// for anonymous memory (`vm_pgoff`): rmap computes a page's address from it.
    pub pgoff: u64,
    /// The backing.
    pub backing: Backing,
    /// The anon_vma chain (`anon_vma_chain`): every anon_vma whose pages this VMA may map (its
    /// own first, then the ones inherited at fork). Empty until the first anonymous page.
    pub anon_vmas: Vec<Arc<AnonVma>>,
}

impl Vma {
    /// Pages in the VMA.
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE_SIZE
    }
    /// `vma_is_anonymous`.
    pub fn is_anonymous(&self) -> bool {
        matches!(self.backing, Backing::Anon)
    }
    /// `VM_SHARED`.
    pub fn is_shared(&self) -> bool {
        self.flags & vm::SHARED != 0
    }
    /// Private and writable: a write fault copies (`is_cow_mapping`).
    pub fn is_cow(&self) -> bool {
        self.flags & vm::SHARED == 0 && self.flags & vm::WRITE != 0
    }
    /// The page offset of `addr` within the backing or the anon index space (`linear_page_index`).
    pub fn page_index(&self, addr: u64) -> u64 {
        self.pgoff + (addr - self.start) / PAGE_SIZE
    }
    /// The address of page offset `index`, if this VMA maps it (`vma_address`).
    pub fn address_of(&self, index: u64) -> Option<u64> {
        if index < self.pgoff || index >= self.pgoff + self.pages() {
            return None;
        }
        Some(self.start + (index - self.pgoff) * PAGE_SIZE)
    }
    /// The backing file, if any.
    pub fn file(&self) -> Option<&Arc<File>> {
        match &self.backing {
            Backing::File(f) => Some(f),
            Backing::Anon => None,
        }
    }
    /// This VMA's own anon_vma (the one new anonymous pages are filed under).
    pub fn anon_vma(&self) -> Option<&Arc<AnonVma>> {
        self.anon_vmas.first()
    }

    /// Files this VMA in the reverse maps of its anon_vmas and file (`anon_vma_chain_link`,
    /// `vma_interval_tree_insert`).
    pub(crate) fn link(&self, mm: crate::rmap::MmId) {
        let m = crate::rmap::Mapper {
            mm,
            start: self.start,
            end: self.end,
            pgoff: self.pgoff,
        };
        for av in &self.anon_vmas {
            av.mappers.link(m);
        }
        if let Some(f) = self.file() {
            f.i_mmap.link(m);
        }
    }

    /// Removes this VMA's range from the reverse maps (`unlink_anon_vmas`, `unlink_file_vma`).
    pub(crate) fn unlink(&self, mm: crate::rmap::MmId) {
        for av in &self.anon_vmas {
            av.mappers.unlink(mm, self.start, self.end);
        }
        if let Some(f) = self.file() {
            f.i_mmap.unlink(mm, self.start, self.end);
        }
    }

    /// Splits at `addr` (strictly inside): `self` keeps `[start, addr)`, the returned VMA is
    /// `[addr, end)` with its page offset advanced (`__split_vma`).
    fn split_off(&mut self, addr: u64) -> Vma {
        let mut tail = self.clone();
        tail.start = addr;
        tail.pgoff = self.pgoff + (addr - self.start) / PAGE_SIZE;
        self.end = addr;
        tail
    }
}

impl std::fmt::Debug for Vma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:#x}-{:#x} {} pgoff {:#x} {}",
            self.start,
            self.end,
            prot_string(self.flags),
            self.pgoff,
            match &self.backing {
                Backing::Anon => "anon".to_string(),
                Backing::File(file) => format!("file#{}", file.id()),
            }
        )
    }
}

/// Checks that `[start, start + len)` is page-aligned, non-empty and does not overflow; returns
/// the end.
pub fn check_range(start: u64, len: u64) -> Result<u64, VmError> {
    if start % PAGE_SIZE != 0 {
        return Err(VmError::InvalidArgument(format!(
            "address {start:#x} is not page-aligned"
        )));
    }
    if len == 0 {
        return Err(VmError::InvalidArgument("zero length".into()));
    }
    let len = len
        .checked_add(PAGE_SIZE - 1)
        .ok_or_else(|| VmError::InvalidArgument("length overflows".into()))?
        & !(PAGE_SIZE - 1);
    start
        .checked_add(len)
        .filter(|&e| e <= crate::TASK_SIZE)
        .ok_or_else(|| {
            VmError::InvalidArgument(format!(
                "{start:#x} + {len:#x} runs past the end of the address space"
            ))
        })
}

/// The VMAs of one address space.
#[derive(Default, Clone)]
pub struct VmaTree {
    map: BTreeMap<u64, Vma>,
}

impl VmaTree {
    /// No mappings.
    pub fn new() -> VmaTree {
        VmaTree::default()
    }
    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether there is no VMA.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// The VMA containing `addr` (`vma_lookup`).
    pub fn find(&self, addr: u64) -> Option<&Vma> {
        self.map
            .range(..=addr)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| addr < v.end)
    }
    /// The VMA containing `addr`, mutably.
    pub fn find_mut(&mut self, addr: u64) -> Option<&mut Vma> {
        self.map
            .range_mut(..=addr)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| addr < v.end)
    }
    /// VMAs overlapping `[start, end)`, in address order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Vma> {
        let first = self.find(start).map_or(start, |v| v.start);
        self.map
            .range(first..end)
            .map(|(_, v)| v)
            .filter(move |v| v.end > start)
    }
    /// Every VMA in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.map.values()
    }
    /// Every VMA, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Vma> {
        self.map.values_mut()
    }
    /// Whether `[start, end)` is entirely covered by VMAs, with no hole.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for v in self.overlapping(start, end) {
            if v.start > at {
                return false;
            }
            at = v.end;
        }
        at >= end
    }
    /// Inserts a VMA that overlaps none.
    pub fn insert(&mut self, vma: Vma) -> Result<(), VmError> {
        if vma.start >= vma.end || self.overlapping(vma.start, vma.end).next().is_some() {
            return Err(VmError::Overlap {
                start: vma.start,
                end: vma.end,
            });
        }
        self.map.insert(vma.start, vma);
        Ok(())
    }
    /// Splits VMAs so that `start` and `end` are VMA boundaries (`split_vma` at both edges).
    pub fn split_at_edges(&mut self, start: u64, end: u64) {
        for addr in [start, end] {
            if let Some(v) = self.find_mut(addr) {
                if v.start < addr {
                    let tail = v.split_off(addr);
                    self.map.insert(tail.start, tail);
                }
            }
        }
    }
    /// Removes and returns the VMAs inside `[start, end)`, split at the edges first
    /// (`vms_gather_munmap_vmas` + detach).
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<Vma> {
        self.split_at_edges(start, end);
        let keys: Vec<u64> = self.map.range(start..end).map(|(&k, _)| k).collect();
        keys.into_iter()
            .filter_map(|k| self.map.remove(&k))
            .collect()
    }
    /// The VMAs inside `[start, end)` after splitting at the edges, mutably (mprotect, madvise
    /// flag changes).
    pub fn range_mut(&mut self, start: u64, end: u64) -> impl Iterator<Item = &mut Vma> {
        self.split_at_edges(start, end);
        self.map.range_mut(start..end).map(|(_, v)| v)
    }
    /// The lowest free gap of `len` bytes at or above `hint` (`get_unmapped_area`, bottom-up).
    pub fn find_gap(&self, hint: u64, len: u64) -> Option<u64> {
        let mut at = hint.max(crate::MMAP_MIN_ADDR);
        for v in self.map.values() {
            if v.end <= at {
                continue;
            }
            if v.start >= at.checked_add(len)? {
                break;
            }
            at = v.end;
        }
        at.checked_add(len)
            .filter(|&e| e <= crate::TASK_SIZE)
            .map(|_| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(start: u64, end: u64) -> Vma {
        Vma {
            start,
            end,
            flags: vm::READ | vm::WRITE,
            pgoff: start / PAGE_SIZE,
            backing: Backing::Anon,
            anon_vmas: Vec::new(),
        }
    }

    #[test]
    fn split_and_remove_keep_page_offsets() {
        let mut t = VmaTree::new();
        t.insert(anon(0x10000, 0x20000)).unwrap();
        let removed = t.remove_range(0x14000, 0x18000);
        assert_eq!(removed.len(), 1);
        assert_eq!((removed[0].start, removed[0].end), (0x14000, 0x18000));
        assert_eq!(removed[0].pgoff, 0x14);
        let left: Vec<_> = t.iter().map(|v| (v.start, v.end, v.pgoff)).collect();
        assert_eq!(
            left,
            vec![(0x10000, 0x14000, 0x10), (0x18000, 0x20000, 0x18)]
        );
        assert!(!t.covers(0x10000, 0x20000));
        assert!(t.covers(0x18000, 0x20000));
        assert_eq!(t.find(0x18000).unwrap().address_of(0x19), Some(0x19000));
    }

    #[test]
    fn overlapping_insert_is_refused() {
        let mut t = VmaTree::new();
        t.insert(anon(0x10000, 0x20000)).unwrap();
        assert!(matches!(
            t.insert(anon(0x1f000, 0x21000)),
            Err(VmError::Overlap { .. })
        ));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn gaps_are_found_bottom_up() {
        let mut t = VmaTree::new();
        t.insert(anon(crate::MMAP_MIN_ADDR, crate::MMAP_MIN_ADDR + 0x2000))
            .unwrap();
        assert_eq!(t.find_gap(0, 0x1000), Some(crate::MMAP_MIN_ADDR + 0x2000));
    }

    #[test]
    fn bad_ranges_are_typed_errors() {
        assert!(check_range(0x1001, 4096).is_err());
        assert!(check_range(0x1000, 0).is_err());
        assert!(check_range(!0xfff, 8192).is_err());
        assert_eq!(check_range(0x1000, 1).unwrap(), 0x2000);
    }
}
