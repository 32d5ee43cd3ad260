//! A process: a *user* of an address space (`mm_users`). Cloning one with [`Process::mmget`] is
//! `mmget`; [`Process::exit`] (or dropping the last handle) is `mmput`, which runs `exit_mmap`
//! exactly once. An `Arc<Space>` is a *reference* (`mm_count`, `mmgrab`): it keeps the structure
//! alive — reclaim and the OOM reaper hold one — but not the mappings.

use std::sync::{Arc, Weak};

use mmu_notifier::{Mm, MmUser, Teardown};

use crate::error::VmError;
use crate::machine::{Machine, Space, MMAP_LOCK};
use crate::primitive::{AtomicU32, AtomicUsize, Mutex, Ordering};
use crate::pte::PageTable;
use crate::vma::VmaTree;

/// A process: a user of one address space (`mm_users`).
pub struct Process {
    // Dropped first: the last user's drop runs `exit_mmap` while the space is still referenced.
    user: Option<MmUser>,
    space: Arc<Space>,
}

impl Machine {
    /// Creates a process with an empty address space (`mm_alloc`: one user).
    pub fn spawn(&self) -> Process {
        let machine = &self.0;
        let mut user = None;
        let space = Arc::new_cyclic(|weak: &Weak<Space>| {
            let mmap_lock = Arc::new(lockdep::RwLock::new(VmaTree::new(), &MMAP_LOCK));
            let u = Mm::builder()
                .profile(machine.config.profile)
                .mmap_lock(mmap_lock.clone())
                .teardown(Arc::new(ExitMmap(weak.clone())))
                .build_user();
            let mm = u.mm().clone();
            user = Some(u);
            Space {
                id: machine.next_mm.fetch_add(1, Ordering::Relaxed),
                mm,
                mmap_lock,
                pt: PageTable::new(),
                flags: AtomicU32::new(0),
                rss: AtomicUsize::new(0),
                machine: machine.clone(),
                exit_result: Mutex::new(None),
            }
        });
        machine.register_space(&space);
        Process { user, space }
    }
}

impl Process {
    /// The address space.
    pub fn space(&self) -> &Arc<Space> {
        &self.space
    }
    /// The notifier state of the address space.
    pub fn mm(&self) -> &Mm {
        &self.space.mm
    }
    /// Another user of the same address space (`mmget`, e.g. a thread or `CLONE_VM`).
    pub fn mmget(&self) -> Result<Process, VmError> {
        Space::mmget_not_zero(&self.space)
            .ok_or_else(|| VmError::Gone("mmget on an exited mm".into()))
    }
    /// Drops this user (`mmput`); the last user runs `exit_mmap` and its result is returned.
    ///
    /// # Context
    /// May sleep: `exit_mmap` calls `mmu_notifier_release` and a blockable unmap of everything.
    pub fn exit(mut self) -> Result<(), VmError> {
        drop(self.user.take());
        self.take_exit_result().unwrap_or(Ok(()))
    }

    fn take_exit_result(&self) -> Option<Result<(), VmError>> {
        self.space
            .exit_result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        drop(self.user.take());
        // A dropped last handle runs exit_mmap too; an error has nobody to return to, so the
        // machine keeps it for `Machine::check`.
        if let Some(Err(e)) = self.take_exit_result() {
            self.space.machine.late_error(e);
        }
    }
}

/// `exit_mmap`, run by the contract when the last [`MmUser`] goes.
struct ExitMmap(Weak<Space>);

impl Teardown for ExitMmap {
    fn exit_mmap(&self, _mm: &Mm) {
        let Some(space) = self.0.upgrade() else {
            return;
        };
        let r = crate::exit::exit_mmap(&space);
        *space.exit_result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }
}

impl Space {
    /// A new user of the address space unless its last user is gone (`mmget_not_zero`), for
    /// a driver that keeps only a reference.
    pub fn mmget_not_zero(space: &Arc<Space>) -> Option<Process> {
        space.mm.get_user().map(|u| Process {
            user: Some(u),
            space: space.clone(),
        })
    }
}
