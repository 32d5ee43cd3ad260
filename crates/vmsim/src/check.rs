//! Invariants of the simulated memory manager, checked on demand at a quiescent point
//! (`Machine::check`): frames conserved; no page-table entry pointing at a free frame; every
//! frame's mapcount equal to the entries mapping it; references at least mappings plus pins;
//! swap slots in use exactly those referenced by entries and shmem caches.

use std::collections::HashMap;

use crate::error::VmError;
use crate::frame::{flags, Pfn};
use crate::machine::Machine;
use crate::pte::for_each_pte;
use crate::rmap::CacheEntry;

/// What a successful check saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Frames in use.
    pub used: usize,
    /// Frames free.
    pub free: usize,
    /// Present page-table entries.
    pub mapped_entries: usize,
    /// Swap slots in use.
    pub swap_used: usize,
}

impl Machine {
    /// Checks every invariant. Call it when no operation is running (between test steps, at the
    /// end of a run); it reports the first violation as [`VmError::Invariant`].
    pub fn check(&self) -> Result<CheckReport, VmError> {
        let m = &self.0;
        if let Some(e) = m
            .late_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
        {
            return Err(e.clone());
        }
        let counts = m.pool.check_conservation()?;
        let mut maps: HashMap<Pfn, u32> = HashMap::new();
        let mut swap_refs: HashMap<u32, u32> = HashMap::new();
        let mut mapped_entries = 0;
        for space in m.spaces() {
            let vmas = space.mmap_lock.read();
            let mut err = Ok(());
            let mut present = 0usize;
            for v in vmas.iter() {
                for_each_pte(&space.pt, v.start, v.end, |addr, pte| {
                    if let Some(slot) = pte.swap_slot() {
                        *swap_refs.entry(slot).or_default() += 1;
                        return;
                    }
                    let Some(pfn) = pte.pfn() else { return };
                    let f = m.pool.get(pfn);
                    if f.test(flags::FREE) {
                        err = Err(crate::error::invariant(format!(
                            "mm {} maps {addr:#x} to free {pfn}",
                            space.id()
                        )));
                    }
                    mapped_entries += 1;
                    if pte.is_present() {
                        present += 1;
                    }
                    *maps.entry(pfn).or_default() += 1;
                });
            }
            err?;
            if present != space.rss() {
                return Err(crate::error::invariant(format!(
                    "mm {} counts {} resident pages but maps {present}",
                    space.id(),
                    space.rss()
                )));
            }
            // Entries outside every VMA are a leak of the unmap paths.
            let mut stray = None;
            for_each_pte(&space.pt, 0, crate::TASK_SIZE, |addr, pte| {
                if !pte.is_none() && vmas.find(addr).is_none() && stray.is_none() {
                    stray = Some(addr);
                }
            });
            if let Some(addr) = stray {
                return Err(crate::error::invariant(format!(
                    "mm {} has an entry at {addr:#x} outside every mapping",
                    space.id()
                )));
            }
        }
        for file in m.registry.lock().files.values().filter_map(|w| w.upgrade()) {
            for e in file.pages.lock().values() {
                if let CacheEntry::Swap(slot) = e {
                    *swap_refs.entry(*slot).or_default() += 1;
                }
            }
        }
        for i in 0..m.pool.total() {
            let pfn = Pfn(i as u32);
            let f = m.pool.get(pfn);
            let entries = maps.get(&pfn).copied().unwrap_or(0);
            if f.mapcount() != entries {
                return Err(crate::error::invariant(format!(
                    "{pfn} has mapcount {} but {entries} page-table entries map it",
                    f.mapcount()
                )));
            }
            if !f.test(flags::FREE) && f.refcount() < f.mapcount() + f.pincount() {
                return Err(crate::error::invariant(format!(
                    "{pfn} has refcount {} below mapcount {} + pincount {}",
                    f.refcount(),
                    f.mapcount(),
                    f.pincount()
                )));
            }
        }
        let (swap_used, _) = m.swap.usage();
        let referenced: usize = swap_refs.len();
        if referenced != swap_used {
            return Err(crate::error::invariant(format!(
                "{swap_used} swap slots in use but {referenced} referenced"
            )));
        }
        Ok(CheckReport {
            used: counts.used,
            free: counts.free,
            mapped_entries,
            swap_used,
        })
    }
}
