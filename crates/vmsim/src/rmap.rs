//! Reverse mapping: from a page to the page-table entries that map it (`mm/rmap.c`).
//!
//! Reclaim, migration, truncation and the OOM-free paths start from a *page*, not from an
//! address space: to unmap it they must find every `(mm, address)` mapping it, without holding
//! any of those address spaces' `mmap_lock` (Linux never takes it there, which is why reclaim can
//! run under any lock that is not a reclaim inversion). Linux files anonymous pages under an
//! `anon_vma` (shared with children after fork) and page-cache pages under their file's
//! `address_space`; both keep an interval tree of the VMAs that may map the page, updated under
//! the anon_vma / `i_mmap` lock whenever a VMA is created, split, moved or removed.
//!
//! A [`MapperSet`] is that interval tree, as plain data: entries `(mm, start, end, pgoff)`, one per
//! VMA piece, behind a validated read-write lock of the class Linux uses (`anon_vma->rwsem`,
//! `mapping->i_mmap_rwsem`). A page with index `i` is mapped in an entry at
//! `start + (i - pgoff) * PAGE_SIZE` when that falls inside the entry (`vma_address`).

use crate::primitive::{AtomicU64, Ordering};
use std::collections::BTreeMap;

use crate::frame::Pfn;
use crate::pte::PAGE_SIZE;

/// Identifies an address space inside one machine.
pub type MmId = u64;

/// One VMA piece that may map pages of an anon_vma or file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapper {
    /// The address space.
    pub mm: MmId,
    /// First address of the piece.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// Page index of `start`.
    pub pgoff: u64,
}

impl Mapper {
    /// The address at which this piece maps page index `index`, if it does.
    pub fn address_of(&self, index: u64) -> Option<u64> {
        let pages = (self.end - self.start) / PAGE_SIZE;
        (index >= self.pgoff && index < self.pgoff + pages)
            .then(|| self.start + (index - self.pgoff) * PAGE_SIZE)
    }
}

/// The VMAs that may map pages of one anon_vma or file, behind its rmap lock.
pub struct MapperSet {
    entries: lockdep::RwLock<Vec<Mapper>>,
}

impl MapperSet {
    fn new(class: &'static lockdep::LockClassKey) -> MapperSet {
        MapperSet {
            entries: lockdep::RwLock::new(Vec::new(), class),
        }
    }

    /// Adds a VMA piece (`anon_vma_interval_tree_insert`, `vma_interval_tree_insert`).
    pub fn link(&self, m: Mapper) {
        self.entries.write().push(m);
    }

    /// Removes `[start, end)` of `mm` from every entry, splitting entries that straddle it
    /// (the unlink half of `vma_prepare`/`vma_complete` around a split, move or unmap).
    pub fn unlink(&self, mm: MmId, start: u64, end: u64) {
        let mut entries = self.entries.write();
        let mut out = Vec::with_capacity(entries.len());
        for m in entries.drain(..) {
            if m.mm != mm || m.end <= start || m.start >= end {
                out.push(m);
                continue;
            }
            if m.start < start {
                out.push(Mapper { end: start, ..m });
            }
            if m.end > end {
                out.push(Mapper {
                    start: end,
                    pgoff: m.pgoff + (end - m.start) / PAGE_SIZE,
                    ..m
                });
            }
        }
        *entries = out;
    }

    /// Every `(mm, address)` that may map page index `index` (`rmap_walk` candidates). The
    /// caller checks the page table: a candidate may map another page there (after COW).
    pub fn candidates(&self, index: u64) -> Vec<(MmId, u64)> {
        self.entries
            .read()
            .iter()
            .filter_map(|m| m.address_of(index).map(|a| (m.mm, a)))
            .collect()
    }

    /// Calls `f(mm, address)` for every entry that may map page index `index`, with the rmap
    /// lock held for read across the whole walk (`rmap_walk_anon` / `rmap_walk_file` under
    /// `anon_vma_lock_read` / `i_mmap_lock_read`): the callbacks may sleep (reclaim calls
    /// notifiers from here) but the set of VMAs cannot change underneath.
    pub fn walk(&self, index: u64, mut f: impl FnMut(MmId, u64)) {
        let entries = self.entries.read();
        for m in entries.iter() {
            if let Some(a) = m.address_of(index) {
                f(m.mm, a);
            }
        }
    }

    /// Calls `f(entry, start, end)` for every entry mapping some page of `[first, end)` (page
    /// indices), with the address range it maps them at, holding the rmap lock for read
    /// (`vma_interval_tree_foreach` under `i_mmap_lock_read`).
    pub fn walk_range(&self, first: u64, end: u64, mut f: impl FnMut(Mapper, u64, u64)) {
        let entries = self.entries.read();
        for m in entries.iter() {
            let pages = (m.end - m.start) / PAGE_SIZE;
            let (lo, hi) = (first.max(m.pgoff), end.min(m.pgoff + pages));
            if lo < hi {
                f(
                    *m,
                    m.start + (lo - m.pgoff) * PAGE_SIZE,
                    m.start + (hi - m.pgoff) * PAGE_SIZE,
                );
            }
        }
    }

    /// Every entry of `mm` (tests and invariant checks).
    pub fn entries_of(&self, mm: MmId) -> Vec<Mapper> {
        self.entries
            .read()
            .iter()
            .filter(|m| m.mm == mm)
            .copied()
            .collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether no VMA maps this object any more.
    pub fn is_empty(&self) -> bool {
        self.entries.read().is_empty()
    }
}

static ANON_VMA_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("&anon_vma->rwsem");
static I_MMAP_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("&mapping->i_mmap_rwsem");
static I_PAGES_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("&mapping->i_pages");

static DISK_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("vmsim disk");

/// Ids are plain counters, not part of any protocol: a `std` atomic even under shuttle, whose
/// atomics must not outlive one execution.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_id() -> u32 {
    // Ids are u32 so a frame can name its owner in 4 bytes; 4 billion anon_vmas and files per
    // process lifetime is far beyond any simulation.
    NEXT_ID.fetch_add(1, Ordering::Relaxed) as u32
}

/// An anon_vma: the reverse map of anonymous pages first faulted in one VMA (and inherited by
/// its children at fork).
pub struct AnonVma {
    id: u32,
    /// The VMA pieces that may map its pages.
    pub mappers: MapperSet,
}

impl AnonVma {
    /// A new, empty anon_vma (`anon_vma_alloc`).
    pub fn new() -> AnonVma {
        AnonVma {
            id: next_id(),
            mappers: MapperSet::new(&ANON_VMA_LOCK),
        }
    }
    /// Its id (what a frame's `mapping` names).
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Default for AnonVma {
    fn default() -> Self {
        Self::new()
    }
}

/// One slot of a page cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheEntry {
    /// The page is in memory.
    Page(Pfn),
    /// A shmem page swapped out to this slot (Linux stores the swap entry in `i_pages`).
    Swap(u32),
}

/// Who gets a file's cached pages and shmem swap slots back when the file goes away
/// (`truncate_inode_pages_final` on eviction): the machine.
pub trait CacheOwner: Send + Sync {
    /// Drops the page cache's reference to `pfn`.
    fn drop_cache_page(&self, pfn: Pfn);
    /// Drops a shmem swap slot.
    fn drop_swap_slot(&self, slot: u32);
}

/// A file or shmem object: its page cache (`i_pages`), size and reverse map (`i_mmap`).
pub struct File {
    id: u32,
    shmem: bool,
    size_pages: AtomicU64,
    /// The page cache: page index → page or shmem swap slot (`mapping->i_pages`).
    pub pages: lockdep::SpinLock<BTreeMap<u64, CacheEntry>>,
    /// A regular file's content on disk, by page index (what writeback wrote; absent = zeros).
    pub disk: lockdep::SpinLock<BTreeMap<u64, u64>>,
    /// The VMA pieces mapping the file (`mapping->i_mmap`).
    pub i_mmap: MapperSet,
    owner: std::sync::Weak<dyn CacheOwner>,
}

impl Drop for File {
    /// The last reference to the file is gone (every mapping and every handle): its page cache
    /// and swap slots go back to the machine.
    fn drop(&mut self) {
        let pages = std::mem::take(self.pages.get_mut());
        let Some(owner) = self.owner.upgrade() else {
            return;
        };
        for e in pages.into_values() {
            match e {
                CacheEntry::Page(pfn) => owner.drop_cache_page(pfn),
                CacheEntry::Swap(slot) => owner.drop_swap_slot(slot),
            }
        }
    }
}

impl File {
    /// A file of `size_pages` pages; `shmem` for tmpfs/memfd/`MAP_SHARED|MAP_ANONYMOUS` (pages
    /// are swap-backed and have no other copy), otherwise a regular file whose clean pages can
    /// simply be dropped.
    pub(crate) fn new(
        size_pages: u64,
        shmem: bool,
        owner: std::sync::Weak<dyn CacheOwner>,
    ) -> File {
        File {
            id: next_id(),
            shmem,
            size_pages: AtomicU64::new(size_pages),
            pages: lockdep::SpinLock::new(BTreeMap::new(), &I_PAGES_LOCK),
            disk: lockdep::SpinLock::new(BTreeMap::new(), &DISK_LOCK),
            i_mmap: MapperSet::new(&I_MMAP_LOCK),
            owner,
        }
    }
    /// Its id (what a frame's `mapping` names).
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Whether it is shmem (swap-backed).
    pub fn is_shmem(&self) -> bool {
        self.shmem
    }
    /// Size in pages (`i_size >> PAGE_SHIFT`).
    pub fn size_pages(&self) -> u64 {
        self.size_pages.load(Ordering::Acquire)
    }
    /// Sets the size (the caller truncates the page cache and the mappings beyond it).
    pub(crate) fn set_size_pages(&self, pages: u64) {
        self.size_pages.store(pages, Ordering::Release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlink_splits_straddling_entries_and_keeps_offsets() {
        let av = AnonVma::new();
        av.mappers.link(Mapper {
            mm: 1,
            start: 0x10000,
            end: 0x20000,
            pgoff: 0x10,
        });
        av.mappers.link(Mapper {
            mm: 2,
            start: 0x10000,
            end: 0x20000,
            pgoff: 0x10,
        });
        av.mappers.unlink(1, 0x14000, 0x18000);
        assert_eq!(av.mappers.entries_of(1).len(), 2);
        assert_eq!(av.mappers.candidates(0x15), vec![(2, 0x15000)]);
        let mut c = av.mappers.candidates(0x19);
        c.sort();
        assert_eq!(c, vec![(1, 0x19000), (2, 0x19000)]);
        assert_eq!(av.mappers.entries_of(1)[1].pgoff, 0x18);
    }
}
