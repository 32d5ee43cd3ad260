//! Address-space teardown (`exit_mmap`, `mm/mmap.c`), in Linux's order:
//!
//! 1. `mmu_notifier_release` with no lock held: interval subscribers get a blockable Release of
//!    everything, list subscribers their `release`, once;
//! 2. the mmap lock for read, and `unmap_vmas`: one blockable [`Event::Unmap`] of `[0, MAX)`
//!    (after step 1 only interval subscribers are left to see it);
//! 3. `MMF_OOM_SKIP`, so the OOM reaper leaves the mm alone;
//! 4. the mmap lock for write: free page tables, the TLB flush (`tlb_finish_mmu`, the secondary
//!    TLB hook), the pages, the VMAs.

use std::sync::Arc;

use mmu_notifier::{Event, Range};

use crate::error::VmError;
use crate::machine::{mmf, Space};
use crate::task::Op;
use crate::zap::Gather;

pub(crate) fn exit_mmap(space: &Arc<Space>) -> Result<(), VmError> {
    let _task = space.machine.tasks.enter(Op::ExitMmap, space.id(), 0);
    if space.set(mmf::EXITED) & mmf::EXITED != 0 {
        return Ok(());
    }
    space.mm.release();
    let mut tlb = Gather::new();
    let mut result = Ok(());
    {
        let vmas = space.mmap_lock.read();
        let guard = space.mm.invalidate_range_start(Range::whole(Event::Unmap));
        for v in vmas.iter() {
            result = result.and(tlb.zap(space, v.start, v.end, |_| true));
        }
        drop(guard);
    }
    space.set(mmf::OOM_SKIP);
    let mut vmas = space.mmap_lock.write();
    result = result.and(tlb.finish(space));
    for v in vmas.iter() {
        v.unlink(space.id());
    }
    *vmas = crate::vma::VmaTree::new();
    space.pt.free_empty(0, crate::TASK_SIZE);
    drop(vmas);
    space.machine.unregister_space(space.id());
    result
}
