//! Creating and destroying mappings: `mmap`, `munmap`, `mremap` (`mm/mmap.c`, `mm/vma.c`,
//! `mm/mremap.c`).
//!
//! Notifier call sites, as in Linux 6.x:
//! * `munmap` and a `MAP_FIXED` mapping over existing ones: one blockable
//!   [`Event::Unmap`] over the whole span, with the VMAs already detached
//!   (`vms_clear_ptes` → `unmap_vmas`), under the mmap lock held for write here (Linux downgrades
//!   to read for munmap(2); the notifiers see the same thing either way).
//! * `mremap` moving pages: one blockable [`Event::Unmap`] over the old range
//!   (`move_page_tables`), then the entries move to the new range without faulting.
//! * `mmap` itself fires nothing: a new mapping has no pages yet.

use std::sync::Arc;

use mmu_notifier::{Event, Range};

use crate::error::VmError;
use crate::machine::Space;
use crate::process::Process;
use crate::pte::{for_each_pte, Pte, PAGE_SIZE};
use crate::rmap::File;
use crate::task::Op;
use crate::vma::{check_range, vm, Backing, Vma, VmaTree};
use crate::zap::Gather;

/// What to map.
#[derive(Clone)]
pub enum MapKind {
    /// Anonymous private memory (`MAP_PRIVATE|MAP_ANONYMOUS`).
    Anon,
    /// Anonymous shared memory (`MAP_SHARED|MAP_ANONYMOUS`): backed by a new shmem object,
    /// shared with children after fork.
    AnonShared,
    /// A file or shmem object from page offset `pgoff`, shared (`MAP_SHARED`) or private
    /// (`MAP_PRIVATE`: copy-on-write).
    File {
        /// The object.
        file: Arc<File>,
        /// Page offset of the mapping's start.
        pgoff: u64,
        /// `MAP_SHARED`.
        shared: bool,
    },
}

/// An `mmap` request.
#[derive(Clone)]
pub struct MapRequest {
    /// Address hint, or the exact address with `fixed`.
    pub addr: Option<u64>,
    /// Length in bytes (rounded up to pages).
    pub len: u64,
    /// Protection: [`vm::READ`], [`vm::WRITE`], [`vm::EXEC`].
    pub prot: u32,
    /// `MAP_FIXED`: replace whatever is mapped at `addr`.
    pub fixed: bool,
    /// `MAP_FIXED_NOREPLACE`: at `addr`, or fail with [`VmError::Overlap`].
    pub noreplace: bool,
    /// What backs it.
    pub kind: MapKind,
}

impl MapRequest {
    /// Private anonymous read-write memory of `len` bytes, anywhere.
    pub fn anon(len: u64) -> MapRequest {
        MapRequest {
            addr: None,
            len,
            prot: vm::READ | vm::WRITE,
            fixed: false,
            noreplace: false,
            kind: MapKind::Anon,
        }
    }
    /// Shared anonymous read-write memory.
    pub fn anon_shared(len: u64) -> MapRequest {
        MapRequest {
            kind: MapKind::AnonShared,
            ..MapRequest::anon(len)
        }
    }
    /// A read-write mapping of `file` from page `pgoff`.
    pub fn file(file: &Arc<File>, pgoff: u64, len: u64, shared: bool) -> MapRequest {
        MapRequest {
            kind: MapKind::File {
                file: file.clone(),
                pgoff,
                shared,
            },
            ..MapRequest::anon(len)
        }
    }
    /// At exactly `addr`, replacing what is there (`MAP_FIXED`).
    pub fn fixed(mut self, addr: u64) -> MapRequest {
        self.addr = Some(addr);
        self.fixed = true;
        self
    }
    /// At exactly `addr`, failing if anything is there (`MAP_FIXED_NOREPLACE`).
    pub fn noreplace(mut self, addr: u64) -> MapRequest {
        self.addr = Some(addr);
        self.noreplace = true;
        self
    }
    /// With protection `prot`.
    pub fn prot(mut self, prot: u32) -> MapRequest {
        self.prot = prot;
        self
    }
}

impl crate::machine::Machine {
    /// Creates a file (`shmem = false`: a regular file whose clean pages can be dropped) or a
    /// shmem object of `pages` pages (`memfd_create` + `ftruncate`).
    pub fn create_file(&self, pages: u64, shmem: bool) -> Arc<File> {
        let owner: std::sync::Weak<dyn crate::rmap::CacheOwner> = Arc::downgrade(&self.0) as _;
        let f = Arc::new(File::new(pages, shmem, owner));
        self.0.register_file(&f);
        f
    }
}

impl Process {
    /// `mmap(2)`. Returns the address mapped.
    ///
    /// # Context
    /// Takes the mmap lock for write; may sleep. With `fixed` over existing mappings it unmaps
    /// them first (an [`Event::Unmap`] invalidation).
    pub fn mmap(&self, req: MapRequest) -> Result<u64, VmError> {
        let space = self.space();
        let _task = space
            .machine
            .tasks
            .enter(Op::Mmap, space.id(), req.addr.unwrap_or(0));
        space.check_stable()?;
        if req.prot & !(vm::READ | vm::WRITE | vm::EXEC) != 0 {
            return Err(VmError::InvalidArgument(format!(
                "protection {:#x} has bits other than READ|WRITE|EXEC",
                req.prot
            )));
        }
        if req.fixed && req.noreplace {
            return Err(VmError::InvalidArgument(
                "MAP_FIXED and MAP_FIXED_NOREPLACE together".into(),
            ));
        }
        let len = check_range(0, req.len)?;
        let mut vmas = space.mmap_lock.write();
        let start = match req.addr {
            Some(a) if req.fixed || req.noreplace => {
                let end = check_range(a, len)?;
                if a < crate::MMAP_MIN_ADDR {
                    return Err(VmError::InvalidArgument(format!(
                        "{a:#x} is below mmap_min_addr"
                    )));
                }
                if vmas.overlapping(a, end).next().is_some() {
                    if req.noreplace {
                        return Err(VmError::Overlap { start: a, end });
                    }
                    do_munmap(space, &mut vmas, a, end)?;
                }
                a
            }
            hint => vmas
                .find_gap(hint.unwrap_or(0) & !(PAGE_SIZE - 1), len)
                .ok_or_else(|| VmError::NoSpace("no gap in the address space".into()))?,
        };
        let end = start + len;
        let (backing, pgoff, shared, anon_vmas) = match &req.kind {
            MapKind::Anon => (
                Backing::Anon,
                start / PAGE_SIZE,
                false,
                // Linux allocates the anon_vma at the first fault (`anon_vma_prepare`, under
                // the mmap read lock and `page_table_lock`); the simulator does it here, under
                // the write lock, so faults never change a VMA. The rmap is the same.
                vec![space.machine.new_anon_vma()],
            ),
            MapKind::AnonShared => {
                let f = crate::machine::Machine(space.machine.clone())
                    .create_file(len / PAGE_SIZE, true);
                (Backing::File(f), 0, true, Vec::new())
            }
            MapKind::File {
                file,
                pgoff,
                shared,
            } => {
                let anon = if *shared {
                    Vec::new()
                } else {
                    vec![space.machine.new_anon_vma()]
                };
                (Backing::File(file.clone()), *pgoff, *shared, anon)
            }
        };
        let vma = Vma {
            start,
            end,
            flags: req.prot | if shared { vm::SHARED } else { 0 },
            pgoff,
            backing,
            anon_vmas,
        };
        vma.link(space.id());
        vmas.insert(vma)?;
        Ok(start)
    }

    /// `munmap(2)`. Unmapping a range with no mapping succeeds, as in Linux.
    ///
    /// # Context
    /// Takes the mmap lock for write; may sleep (a blockable [`Event::Unmap`]).
    pub fn munmap(&self, addr: u64, len: u64) -> Result<(), VmError> {
        let space = self.space();
        let _task = space.machine.tasks.enter(Op::Munmap, space.id(), addr);
        let end = check_range(addr, len)?;
        let mut vmas = space.mmap_lock.write();
        do_munmap(space, &mut vmas, addr, end)
    }

    /// `mremap(2)` with `MREMAP_MAYMOVE|MREMAP_FIXED` semantics reduced to a move: the pages of
    /// `[old, old + len)` (one whole mapping or part of one) move to `new` (or a free gap).
    /// Returns the new address.
    ///
    /// # Context
    /// Takes the mmap lock for write; may sleep (a blockable [`Event::Unmap`] of the old range).
    pub fn mremap_move(&self, old: u64, len: u64, new: Option<u64>) -> Result<u64, VmError> {
        let space = self.space();
        let _task = space.machine.tasks.enter(Op::Mremap, space.id(), old);
        let old_end = check_range(old, len)?;
        let len = old_end - old;
        let mut vmas = space.mmap_lock.write();
        let Some(src) = vmas.find(old).cloned() else {
            return Err(VmError::NoMapping(old));
        };
        if src.end < old_end {
            return Err(VmError::InvalidArgument(
                "mremap of a range spanning several mappings".into(),
            ));
        }
        let dst = match new {
            Some(n) => {
                let e = check_range(n, len)?;
                if n < old_end && old < e {
                    return Err(VmError::InvalidArgument(
                        "mremap onto an overlapping range".into(),
                    ));
                }
                do_munmap(space, &mut vmas, n, e)?;
                n
            }
            None => vmas
                .find_gap(0, len)
                .ok_or_else(|| VmError::NoSpace("no gap for mremap".into()))?,
        };
        let mut moved = vmas.remove_range(old, old_end);
        let mut piece = moved
            .pop()
            .ok_or_else(|| crate::error::invariant("mremap lost its source VMA"))?;
        piece.unlink(space.id());
        // `move_vma` → `move_page_tables`: one Unmap over the old range, entries moved under
        // both page-table locks.
        let range = Range::new(old, old_end, Event::Unmap)
            .map_err(|e| VmError::InvalidArgument(e.to_string()))?;
        let guard = space.mm.invalidate_range_start(range);
        let mut entries = Vec::new();
        for_each_pte(&space.pt, old, old_end, |addr, pte| {
            if !pte.is_none() {
                entries.push((addr - old, *pte));
                *pte = Pte::NONE;
            }
        });
        for (off, pte) in entries {
            let leaf = space.pt.leaf_alloc(dst + off);
            leaf.ptl.lock()[crate::pte::pte_index(dst + off)] = pte;
        }
        drop(guard);
        space.mm.arch_invalidate_secondary_tlbs(old, old_end);
        // The VMA keeps its page offset, so reverse-map lookups of its pages find the new
        // address (`copy_vma` keeps `vm_pgoff`).
        piece.start = dst;
        piece.end = dst + len;
        piece.link(space.id());
        vmas.insert(piece)?;
        space.pt.free_empty(old, old_end);
        Ok(dst)
    }
}

/// Unmaps `[start, end)` with the mmap lock held for write (`do_vmi_munmap`): detach the VMAs,
/// one Unmap over the span, zap, end, flush, free.
pub(crate) fn do_munmap(
    space: &Space,
    vmas: &mut VmaTree,
    start: u64,
    end: u64,
) -> Result<(), VmError> {
    let removed = vmas.remove_range(start, end);
    let (Some(first), Some(last)) = (removed.first(), removed.last()) else {
        return Ok(());
    };
    let (span_start, span_end) = (first.start, last.end);
    for v in &removed {
        v.unlink(space.id());
    }
    // `unmap_region` → `unmap_vmas`: mmu_notifier_range_init(MMU_NOTIFY_UNMAP, ...) over the span.
    let range = Range::new(span_start, span_end, Event::Unmap)
        .map_err(|e| VmError::InvalidArgument(e.to_string()))?;
    let guard = space.mm.invalidate_range_start(range);
    let mut tlb = Gather::new();
    let mut result = Ok(());
    for v in &removed {
        result = result.and(tlb.zap(space, v.start, v.end, |_| true));
    }
    drop(guard);
    result = result.and(tlb.finish(space));
    space.pt.free_empty(span_start, span_end);
    result
}
