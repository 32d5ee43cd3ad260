//! File operations that change mappings of *other* processes without their mmap lock:
//! truncation and hole punching (`truncate_pagecache` / `shmem_fallocate(PUNCH_HOLE)` →
//! `unmap_mapping_range`, `mm/memory.c` and `mm/truncate.c`).
//!
//! Notifier call site: `unmap_mapping_range` → `zap_page_range_single` starts one blockable
//! [`Event::Clear`] per mapping VMA, clipped to the file range, under `i_mmap_rwsem` held for
//! read, in every address space mapping the file.

use std::sync::Arc;

use mmu_notifier::{Event, Range};

use crate::error::VmError;
use crate::machine::{Inner, Machine};
use crate::rmap::{CacheEntry, File};
use crate::zap::Gather;

/// `unmap_mapping_range(mapping, first, end - first, even_cows)`: unmaps page indices
/// `[first, end)` of `file` from every address space. Private copies (anonymous pages of a
/// private mapping) are unmapped only with `even_cows` (truncation), not for a hole punch.
fn unmap_mapping_range(
    m: &Inner,
    file: &File,
    first: u64,
    end: u64,
    even_cows: bool,
) -> Result<(), VmError> {
    let mut result = Ok(());
    file.i_mmap.walk_range(first, end, |mapper, a, b| {
        let Some(space) = m.space(mapper.mm) else {
            return;
        };
        let Ok(range) = Range::new(a, b, Event::Clear) else {
            return;
        };
        let guard = space.mm.invalidate_range_start(range);
        let mut tlb = Gather::new();
        let id = file.id();
        let r = tlb.zap(&space, a, b, |pfn| {
            even_cows
                || m.pool.get(pfn).mapping().0 == id
                    && !m.pool.get(pfn).test(crate::frame::flags::ANON)
        });
        drop(guard);
        result = std::mem::replace(&mut result, Ok(()))
            .and(r)
            .and(tlb.finish(&space));
    });
    result
}

/// Drops page-cache entries `[first, end)` (`truncate_inode_pages_range`).
fn drop_cache(m: &Inner, file: &File, first: u64, end: u64) -> Result<(), VmError> {
    let removed: Vec<CacheEntry> = {
        let mut pages = file.pages.lock();
        let keys: Vec<u64> = pages.range(first..end).map(|(&k, _)| k).collect();
        keys.into_iter().filter_map(|k| pages.remove(&k)).collect()
    };
    for e in removed {
        match e {
            CacheEntry::Page(pfn) => {
                let f = m.pool.get(pfn);
                f.set_mapping(0, 0);
                m.put_page(pfn)?;
            }
            CacheEntry::Swap(slot) => m.swap.free(slot)?,
        }
    }
    file.disk.lock().retain(|&k, _| k < first || k >= end);
    Ok(())
}

impl Machine {
    /// `ftruncate(2)` to `pages` pages: shrinking unmaps the pages beyond the new size from every
    /// process (private copies too) and drops them; growing only sets the size.
    pub fn truncate(&self, file: &Arc<File>, pages: u64) -> Result<(), VmError> {
        let old = file.size_pages();
        file.set_size_pages(pages);
        if pages < old {
            unmap_mapping_range(&self.0, file, pages, old, true)?;
            drop_cache(&self.0, file, pages, old)?;
        }
        Ok(())
    }

    /// `fallocate(FALLOC_FL_PUNCH_HOLE)` of `npages` pages from `first`: the pages are unmapped
    /// from every process (private copies stay) and freed; the size does not change.
    pub fn punch_hole(&self, file: &Arc<File>, first: u64, npages: u64) -> Result<(), VmError> {
        let end = first
            .checked_add(npages)
            .ok_or_else(|| VmError::InvalidArgument("hole overflows".into()))?;
        unmap_mapping_range(&self.0, file, first, end, false)?;
        drop_cache(&self.0, file, first, end)
    }
}
