//! The synchronization primitives the crate is built from, all from `sync-prims`.
//!
//! Under `--cfg loom` they are loom's, so the model tests in `tests/loom_*.rs` exercise the real
//! protocol code. Under `--cfg shuttle` (and not loom) they are shuttle's: a simulation built on
//! this crate then runs under shuttle's scheduler, one interleaving per execution, and a seed
//! replays it (`tests/shuttle_model.rs`). Otherwise `std`'s. Nothing else in the crate names
//! `std::sync` directly.

pub(crate) use std::sync::atomic::Ordering;
pub(crate) use sync_prims::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
};
pub(crate) use sync_prims::sync::{Condvar, Mutex, MutexGuard};
pub(crate) use sync_prims::thread_local;
/// Locks and condition-variable waits ignore poisoning: the crate never runs user callbacks
/// while holding one of its own mutexes, so a poisoned lock can only come from a panic inside
/// the crate's own short critical sections, whose state updates are written to be complete
/// before anything that can panic.
pub(crate) use sync_prims::{lock, spin, thread_stripe, wait};

/// A cell shared without a lock under a protocol of the crate's own; under the model checker
/// it is loom's, which reports any access the protocol failed to order.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// A cell shared without a lock under a protocol of the crate's own (the same methods as
/// loom's, which replaces it under the model checker).
#[cfg(not(loom))]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(v: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(v))
    }

    /// Calls `f` with a pointer for reading.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a pointer for writing.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// A `SeqCst` fence under the model checker, nothing otherwise: loom treats `SeqCst` accesses
/// as `AcqRel` (its README, "Unsupported features"), too weak for a store-load (Dekker)
/// argument that rests on the single total order of `SeqCst` operations; a `SeqCst` fence,
/// which loom does model, restores it there. Put it between the store and the load of each
/// side of such a pair.
#[inline(always)]
pub(crate) fn model_fence() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}
