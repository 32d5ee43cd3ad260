//! `mprotect` (`mm/mprotect.c`).
//!
//! Notifier call site: `change_protection` → `change_pud_range` starts one blockable
//! [`Event::ProtectionVma`] per range that has page tables (it initialises the range lazily, at
//! the first populated entry), under the mmap lock held for write; entries lose their write bit
//! when write permission goes. Entries never gain a write bit here: a later write fault does
//! that (copy-on-write for private memory, dirty tracking for shared).

use mmu_notifier::{Event, Range};

use crate::error::VmError;
use crate::process::Process;
use crate::pte::for_each_pte;
use crate::task::Op;
use crate::vma::{check_range, vm};

impl Process {
    /// `mprotect(2)`: sets the protection of `[addr, addr + len)` to `prot`
    /// ([`vm::READ`] | [`vm::WRITE`] | [`vm::EXEC`]). A hole in the range is
    /// [`VmError::NoMapping`] (`ENOMEM`), and nothing is changed.
    ///
    /// # Context
    /// Takes the mmap lock for write; may sleep.
    pub fn mprotect(&self, addr: u64, len: u64, prot: u32) -> Result<(), VmError> {
        let space = self.space();
        let _task = space.machine.tasks.enter(Op::Mprotect, space.id(), addr);
        if prot & !(vm::READ | vm::WRITE | vm::EXEC) != 0 {
            return Err(VmError::InvalidArgument(format!(
                "protection {prot:#x} has bits other than READ|WRITE|EXEC"
            )));
        }
        let end = check_range(addr, len)?;
        let mut vmas = space.mmap_lock.write();
        if !vmas.covers(addr, end) {
            return Err(VmError::NoMapping(addr));
        }
        let pieces: Vec<(u64, u64, bool)> = vmas
            .range_mut(addr, end)
            .map(|v| {
                let mask = vm::READ | vm::WRITE | vm::EXEC;
                let changed = v.flags & mask != prot;
                v.flags = (v.flags & !mask) | prot;
                (v.start, v.end, changed)
            })
            .collect();
        for (start, end, changed) in pieces {
            if !changed || space.pt.leaves(start, end).is_empty() {
                continue;
            }
            let range = Range::new(start, end, Event::ProtectionVma)
                .map_err(|e| VmError::InvalidArgument(e.to_string()))?;
            let guard = space.mm.invalidate_range_start(range);
            if prot & vm::WRITE == 0 {
                for_each_pte(&space.pt, start, end, |_, pte| {
                    if pte.is_present() {
                        *pte = pte.wrprotect();
                    }
                });
            }
            drop(guard);
            space.mm.arch_invalidate_secondary_tlbs(start, end);
        }
        Ok(())
    }
}
