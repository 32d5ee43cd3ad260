//! A process: a *user* of an address space (`mm_users`). Cloning one with [`Process::mmget`] is
//! `mmget`; [`Process::exit`] (or dropping the last handle) is `mmput`, which runs `exit_mmap`
//! exactly once. An `Arc<Space>` is a *reference* (`mm_count`, `mmgrab`): it keeps the structure
//! alive — reclaim and the OOM reaper hold one — but not the mappings.

use std::sync::Arc;

use crate::error::VmError;
use crate::machine::{Machine, Space};
use crate::primitive::Ordering;
use mmu_notifier::Mm;

/// A process: a user of one address space (`mm_users`).
pub struct Process {
    space: Arc<Space>,
    exited: bool,
}

impl Machine {
    /// Creates a process with an empty address space.
    pub fn spawn(&self) -> Process {
        Process {
            space: Space::new(&self.0),
            exited: false,
        }
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
    /// Drops this user (`mmput`); the last user runs `exit_mmap`.
    ///
    /// # Context
    /// May sleep: `exit_mmap` calls `mmu_notifier_release` and a blockable unmap of everything.
    pub fn exit(mut self) -> Result<(), VmError> {
        self.exited = true;
        mmput(&self.space)
    }
}

fn mmput(space: &Arc<Space>) -> Result<(), VmError> {
    if space.users.fetch_sub(1, Ordering::AcqRel) == 1 {
        crate::exit::exit_mmap(space)?;
        space.machine.unregister_space(space.id());
    }
    Ok(())
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.exited {
            // A dropped last handle still runs exit_mmap, as mmput does; an error here has
            // nobody to return to, so the machine keeps it for `Machine::check`.
            if let Err(e) = mmput(&self.space) {
                self.space.machine.late_error(e);
            }
        }
    }
}

impl Space {
    /// A new user of the address space unless its last user is gone (`mmget_not_zero`), for
    /// a driver that keeps only a reference.
    pub fn mmget_not_zero(space: &Arc<Space>) -> Option<Process> {
        let mut cur = space.users.load(Ordering::Acquire);
        while cur != 0 {
            match space.users.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Process {
                        space: space.clone(),
                        exited: false,
                    })
                }
                Err(now) => cur = now,
            }
        }
        None
    }
}
