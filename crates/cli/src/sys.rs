//! Two small helpers the race and bench tools share: a system-call error in `hostmm`'s terms,
//! and a lock that ignores poisoning (a panicked worker is reported by its join, not here).

use rustix::io::Errno;

/// Turns an errno from `call` into [`hostmm::Error::Sys`].
pub fn sys(call: &'static str) -> impl FnOnce(Errno) -> hostmm::Error {
    move |errno| hostmm::Error::Sys { call, errno }
}

/// Locks a mutex, taking the data even if another thread panicked holding it.
pub use sync_prims::lock;

/// The start of `range` as the pointer the `mm` system calls take.
pub fn as_ptr(range: &hostmm::VaRange) -> *mut std::ffi::c_void {
    range.start() as usize as *mut std::ffi::c_void
}
