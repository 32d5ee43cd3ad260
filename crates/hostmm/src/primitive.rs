//! Atomics and blocking primitives: `std`'s normally, loom's under `cfg(loom)`, so the model
//! tests in `tests/loom_*.rs` exercise the real protocol code.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

/// One step of a bounded spin: a CPU hint normally, a yield to the model checker under loom.
#[inline]
pub(crate) fn spin_step(i: u32) {
    #[cfg(loom)]
    {
        let _ = i;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    {
        if i < 64 {
            core::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Locks a `std` mutex, ignoring poisoning: every structure guarded here stays consistent
/// across a panic (updates are single assignments), and library code must not panic on
/// another's panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The same for the model-checked mutex of this module (std's, or loom's under `cfg(loom)`).
pub(crate) fn model_lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
