//! Page faults and CPU accesses (`handle_mm_fault`, `mm/memory.c`; `filemap_fault`,
//! `mm/filemap.c`; `shmem_fault`, `mm/shmem.c`).
//!
//! Notifier call sites:
//! * anonymous first touch (`do_anonymous_page`), swap-in (`do_swap_page`), page-cache and shmem
//!   faults, and write faults that can reuse the page (`wp_page_reuse`): **none** — nothing a
//!   secondary MMU could have mapped changes;
//! * a copy-on-write break (`wp_page_copy`): one blockable [`Event::Clear`] over the page,
//!   started after the new page is allocated and filled, with the old entry replaced under the
//!   page-table lock by `ptep_clear_flush` (whose TLB flush calls
//!   `arch_invalidate_secondary_tlbs` under that lock).
//!
//! Deviation: a read fault on anonymous memory allocates a page instead of mapping the shared
//! zero page (so a later write does not need a copy and fires no `Clear`).

use crate::primitive::Ordering;

use mmu_notifier::{Event, Range};

use crate::error::VmError;
use crate::frame::{flags, Pfn};
use crate::lru::LruKind;
use crate::machine::Space;
use crate::process::Process;
use crate::pte::{pte_index, Leaf, Pte, PAGE_SIZE};
use crate::rmap::{CacheEntry, File};
use crate::task::Op;
use crate::vma::{prot_string, vm, Vma, VmaTree};

use crate::alloc::GFP_USER;

impl Process {
    /// Faults the page at `addr` in (`handle_mm_fault`), for writing if `write`.
    ///
    /// # Context
    /// Takes the mmap lock for read; may sleep and may enter direct reclaim.
    pub fn fault(&self, addr: u64, write: bool) -> Result<(), VmError> {
        let space = self.space();
        let _task = space.machine.tasks.enter(Op::Fault, space.id(), addr);
        let vmas = space.mmap_lock.read();
        handle_fault(space, &vmas, addr, write).map(|_| ())
    }

    /// Faults `[addr, addr + len)` in, page by page.
    pub fn touch(&self, addr: u64, len: u64, write: bool) -> Result<(), VmError> {
        let end = crate::vma::check_range(addr, len)?;
        let space = self.space();
        let _task = space.machine.tasks.enter(Op::Fault, space.id(), addr);
        let vmas = space.mmap_lock.read();
        let mut a = addr;
        while a < end {
            handle_fault(space, &vmas, a, write)?;
            a += PAGE_SIZE;
        }
        Ok(())
    }

    /// A CPU load of the page's content word at `addr`, faulting as needed.
    pub fn read(&self, addr: u64) -> Result<u64, VmError> {
        self.access(addr, false, |f| f.content())
    }

    /// A CPU store of `value` into the page's content word at `addr`, faulting as needed
    /// (copy-on-write breaks included).
    pub fn write(&self, addr: u64, value: u64) -> Result<(), VmError> {
        self.access(addr, true, |f| f.set_content(value))
    }

    fn access<R>(
        &self,
        addr: u64,
        write: bool,
        op: impl FnOnce(&crate::frame::Frame) -> R,
    ) -> Result<R, VmError> {
        let space = self.space();
        let what = if write { Op::Write } else { Op::Read };
        let _task = space.machine.tasks.enter(what, space.id(), addr);
        let vmas = space.mmap_lock.read();
        let page = addr & !(PAGE_SIZE - 1);
        let vma = vmas.find(page).ok_or(VmError::NoMapping(addr))?;
        if vma.flags & if write { vm::WRITE } else { vm::READ } == 0 {
            return Err(VmError::Protection {
                addr,
                allowed: prot_string(vma.flags),
            });
        }
        // A TLB hit needs no fault; a miss faults and retries (bounded: each fault makes the
        // entry usable unless another thread changes it again).
        for _ in 0..64 {
            if let Some(leaf) = space.pt.leaf(page) {
                let mut ptes = leaf.ptl.lock();
                let pte = &mut ptes[pte_index(page)];
                if pte.is_present() && (!write || pte.is_write()) {
                    let pfn = pte.pfn().expect("present entries have a frame");
                    *pte = if write {
                        pte.mkyoung().mkdirty()
                    } else {
                        pte.mkyoung()
                    };
                    return Ok(op(space.machine.pool.get(pfn)));
                }
            }
            handle_fault(space, &vmas, page, write)?;
        }
        Err(VmError::WouldBlock(format!(
            "access at {addr:#x} kept faulting: the page is changed faster than it can be mapped"
        )))
    }
}

/// Resolves a fault at `addr` with the mmap lock held (read or write). On success the entry is
/// present, and writable if `write`.
pub(crate) fn handle_fault(
    space: &Space,
    vmas: &VmaTree,
    addr: u64,
    write: bool,
) -> Result<(), VmError> {
    space
        .machine
        .counters
        .faults
        .fetch_add(1, Ordering::Relaxed);
    space.check_stable()?;
    let page = addr & !(PAGE_SIZE - 1);
    let vma = vmas.find(page).ok_or(VmError::NoMapping(addr))?;
    let need = if write { vm::WRITE } else { vm::READ };
    if vma.flags & need == 0 {
        return Err(VmError::Protection {
            addr,
            allowed: prot_string(vma.flags),
        });
    }
    let leaf = space.pt.leaf_alloc(page);
    for _ in 0..64 {
        let pte = leaf.ptl.lock()[pte_index(page)];
        if pte.is_none() {
            match vma.file() {
                None => do_anonymous_page(space, vma, &leaf, page, write)?,
                Some(file) => do_file_fault(space, vma, file, &leaf, page, write)?,
            }
        } else if pte.is_swap() {
            do_swap_page(space, vma, &leaf, page, pte)?;
        } else if pte.is_device_private() {
            crate::migrate::migrate_to_ram(space, &leaf, page, pte)?;
        } else if pte.is_migration() {
            // `migration_entry_wait`: the page is moving; wait for the move to finish.
            crate::primitive::thread::yield_now();
        } else if write && !pte.is_write() {
            if vma.is_shared() {
                // `wp_page_shared`: a shared page only needs its write bit (dirty tracking).
                let mut ptes = leaf.ptl.lock();
                let p = &mut ptes[pte_index(page)];
                if *p == pte {
                    *p = pte.mkwrite().mkdirty().mkyoung();
                }
            } else {
                do_wp_page(space, vma, &leaf, page, pte)?;
            }
        } else {
            return Ok(());
        }
    }
    Err(VmError::WouldBlock(format!(
        "fault at {addr:#x} raced with changes 64 times"
    )))
}

/// Installs `pfn` at `page` if the entry still equals `expect`; the caller's reference becomes
/// the mapping's. Returns false (and keeps the reference with the caller) if it changed.
fn set_pte_if(
    space: &Space,
    leaf: &Leaf,
    page: u64,
    expect: Pte,
    pfn: Pfn,
    write: bool,
    dirty: bool,
) -> bool {
    let mut ptes = leaf.ptl.lock();
    let p = &mut ptes[pte_index(page)];
    if *p != expect {
        return false;
    }
    space.machine.pool.get(pfn).map();
    *p = Pte::present(pfn, write, dirty);
    space.rss.fetch_add(1, Ordering::AcqRel);
    true
}

/// A new anonymous page for `page` of `vma`, on the inactive list, with one reference.
fn new_anon_page(space: &Space, vma: &Vma, page: u64) -> Result<Pfn, VmError> {
    let anon = vma
        .anon_vma()
        .ok_or_else(|| crate::error::invariant(format!("private VMA {vma:?} has no anon_vma")))?;
    let m = &space.machine;
    let pfn = crate::alloc::alloc_page(m, GFP_USER)?;
    let f = m.pool.get(pfn);
    f.set_mapping(anon.id(), vma.page_index(page));
    f.set(flags::ANON | flags::SWAPBACKED);
    // On the LRU before it is mapped, while the allocation reference is ours: once mapped, a
    // concurrent zap (MADV_DONTNEED under the read lock, truncation) may free it
    // (`folio_add_lru_vma` before `set_pte_at`).
    on_lru(space, pfn)?;
    Ok(pfn)
}

/// Puts a new page on the inactive list; on failure the page is given back.
fn on_lru(space: &Space, pfn: Pfn) -> Result<(), VmError> {
    let m = &space.machine;
    if let Err(e) = m.lru.add(&m.pool, pfn, LruKind::Inactive) {
        m.put_page(pfn)?;
        return Err(e);
    }
    Ok(())
}

/// Drops a page that lost a race to be mapped.
fn discard(space: &Space, pfn: Pfn) -> Result<(), VmError> {
    space.machine.put_page(pfn).map(|_| ())
}

fn do_anonymous_page(
    space: &Space,
    vma: &Vma,
    leaf: &Leaf,
    page: u64,
    write: bool,
) -> Result<(), VmError> {
    let pfn = new_anon_page(space, vma, page)?;
    let writable = vma.flags & vm::WRITE != 0;
    if set_pte_if(space, leaf, page, Pte::NONE, pfn, writable, write) {
        Ok(())
    } else {
        discard(space, pfn)
    }
}

fn do_swap_page(space: &Space, vma: &Vma, leaf: &Leaf, page: u64, pte: Pte) -> Result<(), VmError> {
    let m = &space.machine;
    let slot = pte.swap_slot().expect("a swap entry");
    // Our own reference to the slot while we read it (the swap cache's, in Linux): a zap under
    // the mmap read lock (MADV_DONTNEED) may drop the entry's meanwhile.
    {
        let ptes = leaf.ptl.lock(); // the zap drops the entry's reference under it
        if ptes[pte_index(page)] != pte {
            return Ok(()); // changed already: the fault loop looks again
        }
        m.swap.dup(slot)?;
    }
    let r = swap_in(space, vma, leaf, page, pte, slot);
    m.swap.free(slot).and(r)
}

fn swap_in(
    space: &Space,
    vma: &Vma,
    leaf: &Leaf,
    page: u64,
    pte: Pte,
    slot: u32,
) -> Result<(), VmError> {
    let m = &space.machine;
    let content = m.swap.load(slot)?;
    let pfn = crate::alloc::alloc_page(m, GFP_USER)?;
    let f = m.pool.get(pfn);
    f.set_content(content);
    f.set(flags::ANON | flags::SWAPBACKED | flags::DIRTY);
    // The swap entry does not say which anon_vma the page belonged to; Linux keeps the folio in
    // the swap cache with it. The simulator files the page under the faulting VMA's own
    // anon_vma: only this mapping maps the new page.
    let anon = vma
        .anon_vma()
        .ok_or_else(|| crate::error::invariant(format!("private VMA {vma:?} has no anon_vma")))?;
    f.set_mapping(anon.id(), vma.page_index(page));
    on_lru(space, pfn)?;
    let mut ptes = leaf.ptl.lock();
    let p = &mut ptes[pte_index(page)];
    if *p != pte {
        drop(ptes);
        return discard(space, pfn);
    }
    f.map();
    *p = Pte::present(pfn, false, true);
    space.rss.fetch_add(1, Ordering::AcqRel);
    drop(ptes);
    m.swap.free(slot)?;
    m.counters.swap_in.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn do_wp_page(space: &Space, vma: &Vma, leaf: &Leaf, page: u64, pte: Pte) -> Result<(), VmError> {
    let m = &space.machine;
    let old = pte.pfn().expect("a present entry");
    let of = m.pool.get(old);
    // `wp_can_reuse_anon_folio`: our mapping holds the only reference.
    if of.test(flags::ANON) && of.mapcount() == 1 && of.pincount() == 0 && of.refcount() == 1 {
        let mut ptes = leaf.ptl.lock();
        let p = &mut ptes[pte_index(page)];
        if *p == pte {
            *p = pte.mkwrite().mkdirty().mkyoung();
        }
        return Ok(());
    }
    // `wp_page_copy`: allocate and fill the copy, then invalidate the one page.
    let new = new_anon_page(space, vma, page)?;
    m.pool.get(new).set_content(of.content());
    let range = Range::new(page, page + PAGE_SIZE, Event::Clear)
        .map_err(|e| VmError::InvalidArgument(e.to_string()))?;
    let guard = space.mm.invalidate_range_start(range);
    let replaced = {
        let mut ptes = leaf.ptl.lock();
        let p = &mut ptes[pte_index(page)];
        if *p == pte {
            // `ptep_clear_flush`: the TLB flush, with its secondary hook, under the PTL.
            space
                .mm
                .arch_invalidate_secondary_tlbs(page, page + PAGE_SIZE);
            m.pool.get(new).map();
            *p = Pte::present(new, true, true);
            Some(of.unmap())
        } else {
            None
        }
    };
    drop(guard);
    let Some(unmapped) = replaced else {
        return discard(space, new);
    };
    m.counters.cow.fetch_add(1, Ordering::Relaxed);
    unmapped?;
    m.put_page(old).map(|_| ())
}

/// Finds or creates the page-cache page of `file` at `index`, with one extra reference for the
/// caller (`filemap_get_folio` / `shmem_get_folio`).
pub(crate) fn page_cache_get(space: &Space, file: &File, index: u64) -> Result<Pfn, VmError> {
    let m = &space.machine;
    for _ in 0..64 {
        let entry = file.pages.lock().get(&index).copied();
        match entry {
            Some(CacheEntry::Page(pfn)) => {
                if m.pool.get(pfn).try_get() {
                    return Ok(pfn);
                }
            }
            Some(CacheEntry::Swap(slot)) => {
                let content = m.swap.load(slot)?;
                let pfn = crate::alloc::alloc_page(m, GFP_USER)?;
                let f = m.pool.get(pfn);
                f.set_content(content);
                f.set_mapping(file.id(), index);
                f.set(flags::SWAPBACKED | flags::DIRTY);
                on_lru(space, pfn)?;
                let mut pages = file.pages.lock();
                if pages.get(&index) == Some(&CacheEntry::Swap(slot)) {
                    pages.insert(index, CacheEntry::Page(pfn));
                    f.get();
                    drop(pages);
                    m.swap.free(slot)?;
                    m.counters.swap_in.fetch_add(1, Ordering::Relaxed);
                    return Ok(pfn);
                }
                drop(pages);
                discard(space, pfn)?;
            }
            None => {
                let content = file.disk.lock().get(&index).copied().unwrap_or(0);
                let pfn = crate::alloc::alloc_page(m, GFP_USER)?;
                let f = m.pool.get(pfn);
                f.set_content(content);
                f.set_mapping(file.id(), index);
                if file.is_shmem() {
                    f.set(flags::SWAPBACKED);
                }
                on_lru(space, pfn)?;
                let inserted = match file.pages.lock().entry(index) {
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(CacheEntry::Page(pfn));
                        f.get();
                        true
                    }
                    std::collections::btree_map::Entry::Occupied(_) => false,
                };
                if inserted {
                    return Ok(pfn);
                }
                discard(space, pfn)?;
            }
        }
    }
    Err(VmError::WouldBlock(format!(
        "page cache of file {} at {index} kept changing",
        file.id()
    )))
}

fn do_file_fault(
    space: &Space,
    vma: &Vma,
    file: &File,
    leaf: &Leaf,
    page: u64,
    write: bool,
) -> Result<(), VmError> {
    let index = vma.page_index(page);
    if index >= file.size_pages() {
        return Err(VmError::Bus(format!(
            "{page:#x} is beyond the end of file {} ({} pages)",
            file.id(),
            file.size_pages()
        )));
    }
    let pfn = page_cache_get(space, file, index)?;
    if write && !vma.is_shared() {
        // `do_cow_fault`: a private copy of the file page, mapped writable.
        let content = space.machine.pool.get(pfn).content();
        space.machine.put_page(pfn)?;
        let new = new_anon_page(space, vma, page)?;
        space.machine.pool.get(new).set_content(content);
        if set_pte_if(space, leaf, page, Pte::NONE, new, true, true) {
            return Ok(());
        }
        return discard(space, new);
    }
    let writable = vma.is_shared() && vma.flags & vm::WRITE != 0 && write;
    if !set_pte_if(space, leaf, page, Pte::NONE, pfn, writable, write) {
        return discard(space, pfn);
    }
    Ok(())
}
