//! `madvise` (`mm/madvise.c`).
//!
//! Notifier call sites:
//! * `MADV_DONTNEED`: one blockable [`Event::Clear`] per VMA, clipped to the request
//!   (`zap_page_range_single`), mmap lock for read; pages are unmapped and freed.
//! * `MADV_FREE`: one blockable [`Event::Clear`] per anonymous VMA, clipped
//!   (`madvise_free_single_vma`); exclusive pages are marked clean, old and lazily freeable —
//!   reclaim drops them without swap unless written again.
//! * `MADV_COLD`: **no** invalidation; primary young bits are cleared silently and pages
//!   deactivated; secondaries see only the TLB flush's hook.
//! * `MADV_PAGEOUT`: reclaims the pages now (Clear invalidations through `try_to_unmap`), without
//!   asking whether they were referenced (no young callbacks).
//! * `MADV_DONTFORK` / `MADV_DOFORK` / `MADV_WIPEONFORK` / `MADV_KEEPONFORK`: VMA flags only,
//!   mmap lock for write.

use mmu_notifier::{Event, Range};

use crate::error::VmError;
use crate::frame::{flags, Pfn};
use crate::lru::LruKind;
use crate::process::Process;
use crate::pte::for_each_pte;
use crate::task::Op;
use crate::vma::{check_range, vm};
use crate::zap::Gather;

/// The advice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_DONTNEED`.
    DontNeed,
    /// `MADV_FREE`.
    Free,
    /// `MADV_COLD`.
    Cold,
    /// `MADV_PAGEOUT`.
    PageOut,
    /// `MADV_DONTFORK`.
    DontFork,
    /// `MADV_DOFORK`.
    DoFork,
    /// `MADV_WIPEONFORK`.
    WipeOnFork,
    /// `MADV_KEEPONFORK`.
    KeepOnFork,
}

impl Process {
    /// `madvise(2)`. A hole in the range is [`VmError::NoMapping`] (`ENOMEM`), after the
    /// advice was applied to the mapped parts (as Linux does).
    ///
    /// # Context
    /// Takes the mmap lock (read for DONTNEED/FREE/COLD/PAGEOUT, write for the fork flags); may
    /// sleep.
    pub fn madvise(&self, addr: u64, len: u64, advice: Advice) -> Result<(), VmError> {
        let space = self.space();
        let _task = space.machine.tasks.enter(Op::Madvise, space.id(), addr);
        let end = check_range(addr, len)?;
        let flag = match advice {
            Advice::DontFork | Advice::DoFork => Some(vm::DONTCOPY),
            Advice::WipeOnFork | Advice::KeepOnFork => Some(vm::WIPEONFORK),
            _ => None,
        };
        if let Some(flag) = flag {
            let mut vmas = space.mmap_lock.write();
            let covered = vmas.covers(addr, end);
            for v in vmas.range_mut(addr, end) {
                if flag == vm::WIPEONFORK && (v.is_shared() || !v.is_anonymous()) {
                    return Err(VmError::InvalidArgument(
                        "MADV_WIPEONFORK applies to private anonymous memory only".into(),
                    ));
                }
                match advice {
                    Advice::DontFork | Advice::WipeOnFork => v.flags |= flag,
                    _ => v.flags &= !flag,
                }
            }
            return if covered {
                Ok(())
            } else {
                Err(VmError::NoMapping(addr))
            };
        }
        let vmas = space.mmap_lock.read();
        let covered = vmas.covers(addr, end);
        let m = &space.machine;
        let pieces: Vec<(u64, u64, bool, u32)> = vmas
            .overlapping(addr, end)
            .map(|v| {
                (
                    v.start.max(addr),
                    v.end.min(end),
                    v.is_anonymous() && !v.is_shared(),
                    v.flags,
                )
            })
            .collect();
        for (start, end, private_anon, vflags) in pieces {
            match advice {
                Advice::DontNeed => {
                    if vflags & vm::LOCKED != 0 {
                        return Err(VmError::InvalidArgument(
                            "MADV_DONTNEED on locked memory".into(),
                        ));
                    }
                    let range = Range::new(start, end, Event::Clear)
                        .map_err(|e| VmError::InvalidArgument(e.to_string()))?;
                    let guard = space.mm.invalidate_range_start(range);
                    let mut tlb = Gather::new();
                    let r = tlb.zap(space, start, end, |_| true);
                    drop(guard);
                    r.and(tlb.finish(space))?;
                }
                Advice::Free => {
                    if !private_anon {
                        return Err(VmError::InvalidArgument(
                            "MADV_FREE applies to private anonymous memory only".into(),
                        ));
                    }
                    let range = Range::new(start, end, Event::Clear)
                        .map_err(|e| VmError::InvalidArgument(e.to_string()))?;
                    let guard = space.mm.invalidate_range_start(range);
                    for_each_pte(&space.pt, start, end, |_, pte| {
                        let Some(pfn) = pte.pfn().filter(|_| pte.is_present()) else {
                            return;
                        };
                        let f = m.pool.get(pfn);
                        if f.test(flags::ANON) && f.mapcount() == 1 {
                            f.clear(flags::DIRTY);
                            f.set(flags::LAZYFREE);
                            *pte = Pte::present(pfn, pte.is_write(), false).mkold();
                        }
                    });
                    drop(guard);
                    space.mm.arch_invalidate_secondary_tlbs(start, end);
                }
                Advice::Cold | Advice::PageOut => {
                    let mut pfns: Vec<Pfn> = Vec::new();
                    for_each_pte(&space.pt, start, end, |_, pte| {
                        if let Some(pfn) = pte.pfn().filter(|_| pte.is_present()) {
                            *pte = pte.mkold();
                            pfns.push(pfn);
                        }
                    });
                    space.mm.arch_invalidate_secondary_tlbs(start, end);
                    for pfn in pfns {
                        if advice == Advice::Cold {
                            if m.lru.del(&m.pool, pfn)? {
                                m.lru.add(&m.pool, pfn, LruKind::Inactive)?;
                            }
                        } else {
                            crate::reclaim::reclaim_page(m, pfn)?;
                        }
                    }
                }
                _ => unreachable!("fork flags handled above"),
            }
        }
        if covered {
            Ok(())
        } else {
            Err(VmError::NoMapping(addr))
        }
    }
}

use crate::pte::Pte;
