//! The simulator's errors: what the corresponding system call's errno would say, plus the
//! simulator's own invariant violations.

/// An error of the simulated memory manager.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VmError {
    /// An argument the kernel would refuse with `EINVAL`: unaligned address, zero length,
    /// bad flag combination, range overflow.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No mapping covers the address (`EFAULT` for an access, `ENOMEM` for mprotect/madvise on
    /// a hole, `SIGSEGV` for a fault).
    #[error("no mapping at {0:#x}")]
    NoMapping(u64),
    /// The access is not allowed by the mapping's protection (`SIGSEGV` / `EFAULT`).
    #[error("access at {addr:#x} not permitted (mapping allows {allowed})")]
    Protection {
        /// The faulting address.
        addr: u64,
        /// The protection the mapping has, e.g. `r--`.
        allowed: String,
    },
    /// A fixed mapping without `MAP_FIXED` overlaps an existing one (`EEXIST` with
    /// `MAP_FIXED_NOREPLACE`).
    #[error("{start:#x}..{end:#x} overlaps an existing mapping")]
    Overlap {
        /// Start of the requested range.
        start: u64,
        /// End of the requested range.
        end: u64,
    },
    /// An access the kernel answers with `SIGBUS`: beyond the end of a file, or to memory the
    /// OOM reaper has taken.
    #[error("bus error: {0}")]
    Bus(String),
    /// Out of memory: no frame could be found even after reclaim (`ENOMEM` / `VM_FAULT_OOM`).
    #[error("out of memory")]
    OutOfMemory,
    /// Out of address space or swap.
    #[error("no space: {0}")]
    NoSpace(String),
    /// A frame number outside the pool.
    #[error("pfn {0:#x} is outside the machine's memory")]
    BadFrame(u32),
    /// The process has exited or is being killed (`EINTR`/`SIGBUS` after the OOM reaper set
    /// `MMF_UNSTABLE`).
    #[error("the address space is gone or unstable: {0}")]
    Gone(String),
    /// The range changed while it was being walked (`-EBUSY` from `hmm_range_fault`): the
    /// caller takes a new `read_begin` and retries.
    #[error("busy: the range was invalidated during the walk")]
    Busy,
    /// A would-block condition a non-blocking caller asked to be told of (`EAGAIN`).
    #[error("would block: {0}")]
    WouldBlock(String),
    /// An invariant of the simulated memory manager was violated (a bug in the simulator or
    /// in a driver that drives it wrongly). Never a panic: the state is left as it was.
    #[error("invariant violated: {0}")]
    Invariant(String),
}

/// An invariant violation, naming the operation and thread that found it (from the watchdog's
/// record of what this thread is doing), so a report says where it happened.
pub(crate) fn invariant(msg: impl Into<String>) -> VmError {
    let mut msg = msg.into();
    if let Some((thread, op)) = crate::task::current_op() {
        msg.push_str(&format!(" (in {op} on thread {thread})"));
    }
    VmError::Invariant(msg)
}
