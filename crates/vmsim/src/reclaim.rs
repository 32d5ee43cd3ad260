//! Page reclaim (`mm/vmscan.c`, `mm/rmap.c`): the LRU scan, the reverse-map walks that ask the
//! primary and secondary MMUs whether a page was used and that unmap it, swap-out, writeback,
//! shrinkers, and kswapd.
//!
//! Notifier call sites:
//! * `folio_referenced` → `folio_referenced_one` → `ptep_clear_flush_young_notify`: the primary
//!   young bit is tested and cleared and `mmu_notifier_clear_flush_young` asks the secondaries,
//!   under the page-table lock (atomic context);
//! * `try_to_unmap` → `try_to_unmap_one`: one blockable [`Event::Clear`] per mapping of the page
//!   (`[address, address + PAGE_SIZE)`), *without* that address space's mmap lock, with the rmap
//!   lock held — and, in direct reclaim, inside whatever locks the allocating thread holds. This
//!   is where a notifier that takes a lock held across an allocation deadlocks (seeds 000, 001,
//!   002), and where the validator, seeing `fs_reclaim` held around the callback, reports it.
//!
//! Reclaim runs with `PF_MEMALLOC` set ([`in_reclaim`]): its own allocations never recurse into
//! reclaim, and may use the reserve below the min watermark.

use crate::primitive::Ordering;
use std::cell::Cell;
use std::sync::{Arc, Weak};

use crate::kswapd::KswapdState;
use crate::primitive::{thread, thread_local};

use lockdep::Gfp;
use mmu_notifier::Event;

use crate::error::VmError;
use crate::frame::{flags, Pfn};
use crate::lru::LruKind;
use crate::machine::{Inner, Machine};
use crate::pte::{Pte, PAGE_SIZE};
use crate::rmap::CacheEntry;
use crate::rmap_walk::rmap_walk;

thread_local! {
    static MEMALLOC: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread is inside reclaim (`current->flags & PF_MEMALLOC`).
pub fn in_reclaim() -> bool {
    MEMALLOC.with(|c| c.get() > 0)
}

struct MemallocScope {
    _noreclaim: lockdep::MemallocGuard,
}

impl MemallocScope {
    fn enter() -> MemallocScope {
        MEMALLOC.with(|c| c.set(c.get() + 1));
        MemallocScope {
            _noreclaim: lockdep::memalloc_noreclaim_save(),
        }
    }
}

impl Drop for MemallocScope {
    fn drop(&mut self) {
        MEMALLOC.with(|c| c.set(c.get() - 1));
    }
}

/// Reclaims up to `target` frames (`shrink_node` → `shrink_lruvec` → `shrink_folio_list`,
/// then `shrink_slab`), in an allocating thread (`try_to_free_pages`) or kswapd. Errors (an
/// invariant broken by a page it touched) go to the machine's late errors.
pub(crate) fn reclaim(m: &Inner, target: usize, gfp: Gfp) -> usize {
    if in_reclaim() {
        return 0;
    }
    let _fs = lockdep::fs_reclaim_section(gfp);
    let _memalloc = MemallocScope::enter();
    let mut freed = 0;
    let batch = m.config.reclaim_batch;
    // `shrink_active_list`: keep the inactive list at least as long as the active one.
    let (inactive, active) = m.lru.lens();
    if inactive < active || inactive < target {
        for pfn in m.lru.isolate(
            &m.pool,
            LruKind::Active,
            batch.max(active - inactive.min(active)) / 2 + 1,
        ) {
            if let Err(e) = m.lru.putback(&m.pool, pfn, LruKind::Inactive) {
                m.late_error(e);
            }
        }
    }
    // Two passes over the inactive list at most: a page referenced once gets one more round.
    let mut scanned = 0;
    let limit = 2 * m.lru.lens().0 + batch;
    while freed < target && scanned < limit {
        let isolated = m
            .lru
            .isolate(&m.pool, LruKind::Inactive, batch.min(target - freed));
        if isolated.is_empty() {
            break;
        }
        scanned += isolated.len();
        for pfn in isolated {
            match shrink_folio(m, pfn, true) {
                Ok(true) => freed += 1,
                Ok(false) => {}
                Err(e) => m.late_error(e),
            }
        }
    }
    if freed < target {
        for s in m.shrinkers.read().iter() {
            let n = s.count();
            if n > 0 {
                freed += s.scan(n.min(target - freed.min(target)).max(1));
            }
        }
    }
    m.counters
        .reclaimed
        .fetch_add(freed as u64, Ordering::Relaxed);
    freed
}

/// `folio_referenced`: how many mappings of the page were used since the last look, by the
/// primary (young bit, cleared) or by a secondary MMU (`clear_flush_young`).
pub(crate) fn folio_referenced(m: &Inner, pfn: Pfn) -> usize {
    let mut referenced = 0;
    rmap_walk(m, pfn, None, |space, addr, pte| {
        let young = pte.is_young();
        *pte = pte.mkold();
        // `ptep_clear_flush_young_notify`: the secondaries are asked under the PTL.
        let secondary = space.mm.clear_flush_young(addr, addr + PAGE_SIZE);
        if young || secondary {
            referenced += 1;
        }
        false
    });
    referenced
}

/// `try_to_unmap`: removes every mapping of the page, each behind a blockable Clear
/// invalidation of its address space. Anonymous mappings become swap entries of `slot`.
/// Returns how many mappings were removed, and whether the page is now unmapped.
fn try_to_unmap(m: &Inner, pfn: Pfn, slot: Option<u32>) -> Result<(usize, bool), VmError> {
    let f = m.pool.get(pfn);
    let mut removed = 0;
    let mut err = Ok(());
    rmap_walk(m, pfn, Some(Event::Clear), |space, _addr, pte| {
        if pte.is_dirty() {
            f.set(flags::DIRTY);
        }
        *pte = match slot {
            // Each swap entry holds a reference to the slot (`swap_duplicate`); the caller's
            // own reference (the swap cache's) keeps it until the content is written.
            Some(s) => match m.swap.dup(s) {
                Ok(()) => Pte::swap(s),
                Err(e) => {
                    err = Err(e);
                    return false;
                }
            },
            None => Pte::NONE,
        };
        space.rss.fetch_sub(1, Ordering::AcqRel);
        match f.unmap() {
            Ok(_) => removed += 1,
            Err(e) => err = Err(e),
        }
        true
    });
    err?;
    for _ in 0..removed {
        m.put_page(pfn)?;
    }
    Ok((removed, f.mapcount() == 0))
}

/// `reclaim_pages` (`MADV_PAGEOUT`): isolates one page and reclaims it without asking whether
/// it was referenced. Returns whether it was freed.
pub(crate) fn reclaim_page(m: &Inner, pfn: Pfn) -> Result<bool, VmError> {
    let f = m.pool.get(pfn);
    if !f.try_get() {
        return Ok(false);
    }
    if !m.lru.del(&m.pool, pfn)? {
        // Already isolated by someone else (reclaim, migration): leave it to them.
        m.put_page(pfn)?;
        return Ok(false);
    }
    f.set(flags::ISOLATED);
    let _memalloc = MemallocScope::enter();
    shrink_folio(m, pfn, false)
}

/// `shrink_folio_list` for one isolated page. Returns whether it was freed.
fn shrink_folio(m: &Inner, pfn: Pfn, check_references: bool) -> Result<bool, VmError> {
    let f = m.pool.get(pfn);
    let keep = |kind| m.lru.putback(&m.pool, pfn, kind).map(|_| false);
    if f.pincount() > 0 {
        // `folio_maybe_dma_pinned`: a device may be writing to it; never reclaimed.
        return keep(LruKind::Active);
    }
    let referenced = if check_references {
        folio_referenced(m, pfn)
    } else {
        0
    };
    if referenced > 0 {
        m.counters.referenced.fetch_add(1, Ordering::Relaxed);
        if f.set(flags::REFERENCED) & flags::REFERENCED != 0 || referenced > 1 {
            return keep(LruKind::Active);
        }
        return keep(LruKind::Inactive);
    }
    f.clear(flags::REFERENCED);
    if f.test(flags::ANON) {
        let lazy = f.test(flags::LAZYFREE) && !f.test(flags::DIRTY);
        // `folio_alloc_swap`, then `try_to_unmap`, then `pageout`: the content is written once no
        // CPU mapping can change it; a swap-in in between waits for it (the swap cache's job
        // in Linux).
        let slot = if lazy {
            None
        } else {
            match m.swap.alloc() {
                Some(s) => Some(s),
                None => return keep(LruKind::Active),
            }
        };
        // The broken variant writes the content before unmapping: a store through a still
        // present entry in between is lost (the model in tests/shuttle_replay.rs finds it).
        #[cfg(vmsim_broken = "pageout_before_unmap")]
        let early = f.content();
        let unmap = try_to_unmap(m, pfn, slot);
        #[cfg(not(vmsim_broken = "pageout_before_unmap"))]
        let early = f.content();
        if let Some(s) = slot {
            // `pageout`, then the swap cache lets go of the slot: a concurrent munmap may
            // already have dropped every entry's reference, and the slot is free after this.
            let written = m.swap.write(s, early);
            m.swap.free(s)?;
            written?;
        }
        let (_, unmapped) = unmap?;
        if !unmapped {
            return keep(LruKind::Active);
        }
        if slot.is_some() {
            m.counters.swap_out.fetch_add(1, Ordering::Relaxed);
        }
        f.clear(flags::ISOLATED);
        return m.put_page(pfn);
    }
    // A page-cache page: unmap, write back, remove from the cache.
    let (owner, index) = f.mapping();
    let Some(file) = m.file(owner) else {
        // Truncated and orphaned: only the isolation reference is left to drop.
        let _ = try_to_unmap(m, pfn, None)?;
        f.clear(flags::ISOLATED);
        return m.put_page(pfn);
    };
    let slot = if file.is_shmem() {
        match m.swap.store(f.content()) {
            Some(s) => Some(s),
            None => return keep(LruKind::Active),
        }
    } else {
        None
    };
    let (_, unmapped) = try_to_unmap(m, pfn, None)?;
    if !unmapped || f.pincount() > 0 {
        if let Some(s) = slot {
            m.swap.free(s)?;
        }
        return keep(LruKind::Active);
    }
    if slot.is_none() && f.test(flags::DIRTY) {
        // `pageout`: synchronous writeback.
        file.disk.lock().insert(index, f.content());
    }
    let mut pages = file.pages.lock();
    if pages.get(&index) != Some(&CacheEntry::Page(pfn)) {
        drop(pages);
        if let Some(s) = slot {
            m.swap.free(s)?;
        }
        f.clear(flags::ISOLATED);
        return m.put_page(pfn);
    }
    match slot {
        Some(s) => {
            pages.insert(index, CacheEntry::Swap(s));
            m.counters.swap_out.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            pages.remove(&index);
        }
    }
    drop(pages);
    f.clear(flags::ISOLATED | flags::DIRTY);
    m.put_page(pfn)?; // the page cache's reference
    m.put_page(pfn) // the isolation reference
}

pub(crate) fn start_kswapd(m: &Arc<Inner>) {
    let weak: Weak<Inner> = Arc::downgrade(m);
    let state = m.kswapd.state.clone();
    let spawned = thread::Builder::new()
        .name("kswapd0".into())
        .spawn(move || kswapd(weak, state));
    if let Ok(h) = spawned {
        *m.kswapd.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
    }
}

/// `kswapd` → `balance_pgdat`: reclaims until free memory is back above the high watermark.
fn kswapd(weak: Weak<Inner>, state: Arc<KswapdState>) {
    loop {
        {
            let Some(m) = weak.upgrade() else { return };
            if m.shutdown.load(Ordering::Acquire) {
                return;
            }
            if m.pool.nr_free() < m.config.wmark_high {
                m.counters.kswapd_runs.fetch_add(1, Ordering::Relaxed);
                while m.pool.nr_free() < m.config.wmark_high {
                    let want = m.config.wmark_high - m.pool.nr_free();
                    if reclaim(&m, want.max(1), Gfp::KERNEL) == 0 {
                        break;
                    }
                }
            }
        }
        if !state.wait() {
            return;
        }
    }
}

impl Machine {
    /// Reclaims up to `target` frames now, as kswapd would (`GFP_KERNEL` context). Returns the
    /// frames freed.
    pub fn reclaim(&self, target: usize) -> usize {
        let _task = self
            .0
            .tasks
            .enter(crate::task::Op::Reclaim, 0, target as u64);
        crate::reclaim::reclaim(&self.0, target, Gfp::KERNEL)
    }
}
