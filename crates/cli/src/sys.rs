//! Two small helpers the race and bench tools share: a system-call error in `hostmm`'s terms,
//! and a lock that ignores poisoning (a panicked worker is reported by its join, not here).

use std::sync::{Mutex, MutexGuard, PoisonError};

use rustix::io::Errno;

/// Turns an errno from `call` into [`hostmm::Error::Sys`].
pub fn sys(call: &'static str) -> impl FnOnce(Errno) -> hostmm::Error {
    move |errno| hostmm::Error::Sys { call, errno }
}

/// Locks `m`, taking the data even if another thread panicked holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The start of `range` as the pointer the `mm` system calls take.
pub fn as_ptr(range: &hostmm::VaRange) -> *mut std::ffi::c_void {
    range.start() as usize as *mut std::ffi::c_void
}
