//! An address space (`struct mm_struct`) and the process handle that uses it.
//!
//! A [`Space`] owns the contract's notifier state ([`mmu_notifier::Mm`]), the mmap lock (a
//! validated read-write semaphore of the class `&mm->mmap_lock`) protecting its VMAs, its page
//! table, and the flags the OOM paths read (`MMF_UNSTABLE`, `MMF_OOM_SKIP`). A [`Process`] is a
//! *user* of the space (`mm_users`): cloning it is `mmget`; [`Process::exit`] (or dropping the
//! last handle) runs `exit_mmap` exactly once. `Arc<Space>` is a *reference* (`mm_count`,
//! `mmgrab`): it keeps the structure alive — reclaim and the OOM reaper hold one — but not the
//! mappings.

use crate::primitive::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use mmu_notifier::Mm;

use crate::error::VmError;
use crate::machine::{Inner, Machine};
use crate::pte::PageTable;
use crate::rmap::MmId;
use crate::vma::VmaTree;

/// `mm->flags` bits the simulator uses.
pub mod mmf {
    /// `MMF_UNSTABLE`: the OOM reaper has started; content is no longer reliable and faults fail.
    pub const UNSTABLE: u32 = 1 << 0;
    /// `MMF_OOM_SKIP`: reaped (or exited); the OOM killer no longer considers it.
    pub const OOM_SKIP: u32 = 1 << 1;
    /// The owning process was chosen by the OOM killer (`tsk_is_oom_victim`).
    pub const OOM_VICTIM: u32 = 1 << 2;
    /// `exit_mmap` has run.
    pub const EXITED: u32 = 1 << 3;
}

static MMAP_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("&mm->mmap_lock");

/// The lock class of every address space's mmap lock (what a driver's `might_lock` names).
pub fn mmap_lock_class() -> lockdep::LockClass {
    MMAP_LOCK.class()
}

/// One address space.
pub struct Space {
    id: MmId,
    pub(crate) mm: Mm,
    /// The mmap lock and the VMAs it protects; shared with the contract, which records
    /// `might_lock` of it in unlocked registrations and checks it in the `_locked` ones.
    pub(crate) mmap_lock: Arc<lockdep::RwLock<VmaTree>>,
    pub(crate) pt: PageTable,
    pub(crate) flags: AtomicU32,
    pub(crate) rss: AtomicUsize,
    pub(crate) users: AtomicUsize,
    pub(crate) machine: Arc<Inner>,
}

impl Space {
    pub(crate) fn new(machine: &Arc<Inner>) -> Arc<Space> {
        let id = machine.next_mm.fetch_add(1, Ordering::Relaxed);
        let mmap_lock = Arc::new(lockdep::RwLock::new(VmaTree::new(), &MMAP_LOCK));
        let mm = Mm::builder()
            .profile(machine.config.profile)
            .mmap_lock(mmap_lock.clone())
            .build();
        let s = Arc::new(Space {
            id,
            mm,
            mmap_lock,
            pt: PageTable::new(),
            flags: AtomicU32::new(0),
            rss: AtomicUsize::new(0),
            users: AtomicUsize::new(1),
            machine: machine.clone(),
        });
        machine.register_space(&s);
        s
    }

    /// The address space's id on its machine.
    pub fn id(&self) -> MmId {
        self.id
    }
    /// The contract's notifier state: subscribe secondary MMUs here.
    pub fn mm(&self) -> &Mm {
        &self.mm
    }
    /// Resident pages mapped (`get_mm_rss`).
    pub fn rss(&self) -> usize {
        self.rss.load(Ordering::Acquire)
    }
    /// The `mm->flags` bits ([`mmf`]).
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }
    /// Whether a flag of [`mmf`] is set.
    pub fn test(&self, f: u32) -> bool {
        self.flags() & f != 0
    }
    pub(crate) fn set(&self, f: u32) -> u32 {
        self.flags.fetch_or(f, Ordering::AcqRel)
    }
    /// The machine.
    pub fn machine(&self) -> Machine {
        Machine(self.machine.clone())
    }
    /// The VMAs, printed one per line as `/proc/PID/maps` would (takes the mmap lock for read).
    pub fn maps(&self) -> String {
        let vmas = self.mmap_lock.read();
        vmas.iter().map(|v| format!("{v:?}\n")).collect()
    }
    /// Number of VMAs.
    pub fn nr_vmas(&self) -> usize {
        self.mmap_lock.read().len()
    }
    /// The primary's translation of `addr` now, read under its page-table lock: the frame of a
    /// present or device-private entry and whether it is writable (`None`: no entry, a swap or
    /// a migration entry). For checkers of secondary MMUs.
    pub fn lookup(&self, addr: u64) -> Option<(crate::Pfn, bool)> {
        let pte = self.pt.leaf(addr)?.ptl.lock()[crate::pte::pte_index(addr)];
        pte.pfn().map(|p| (p, pte.is_write()))
    }
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
    /// `check_stable_address_space`: faults fail once the OOM reaper has started.
    pub(crate) fn check_stable(&self) -> Result<(), VmError> {
        if self.test(mmf::UNSTABLE) {
            return Err(VmError::Gone(format!(
                "mm {} is being reaped by the OOM reaper (SIGBUS)",
                self.id
            )));
        }
        if self.test(mmf::EXITED) {
            return Err(VmError::Gone(format!("mm {} has exited", self.id)));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Space {{ id: {}, rss: {}, flags: {:#x} }}",
            self.id,
            self.rss(),
            self.flags()
        )
    }
}

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
        space.machine.unregister_space(space.id);
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
