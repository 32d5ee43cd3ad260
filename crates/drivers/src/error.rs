//! The drivers' error type.

use vmsim::VmError;

/// Why a driver operation failed. Misuse and races that a driver answers with an errno in Linux
/// are values of this type, never panics.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The simulated kernel refused (fault on a hole, out of memory, the mm is gone, …).
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The notifier contract refused (registration rules, a released mm, …).
    #[error(transparent)]
    Notifier(#[from] mmu_notifier::Error),
    /// The collision-retry loop never got a stable snapshot within its bound (`-EBUSY` after
    /// `HMM_RANGE_DEFAULT_TIMEOUT` in `lib/test_hmm.c`).
    #[error("{what}: no stable snapshot after {tries} tries (invalidations kept colliding)")]
    Busy {
        /// The operation.
        what: &'static str,
        /// Attempts made.
        tries: u32,
    },
    /// A guest fault that can never complete: KVM's `mmu_invalidate_in_progress` stays raised
    /// over the faulting address, so every attempt returns `RET_PF_RETRY`.
    #[error("guest fault at {addr:#x} stuck: mmu_invalidate_in_progress = {in_progress} after {tries} retries")]
    GuestFaultStuck {
        /// The guest address.
        addr: u64,
        /// The count that never went back to zero.
        in_progress: i64,
        /// Attempts made.
        tries: u32,
    },
    /// The address is outside the object, region or map the operation was given.
    #[error("{addr:#x} is outside {what}")]
    OutOfRange {
        /// The address.
        addr: u64,
        /// What it should have been in.
        what: &'static str,
    },
    /// The driver was torn down (`release` ran): the device has no mappings any more.
    #[error("the device was released")]
    Released,
}
