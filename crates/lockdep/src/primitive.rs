//! The one place that picks synchronization primitives.
//!
//! Normal builds use `parking_lot` locks and `core` atomics. Under `--cfg loom` the same
//! names resolve to loom's modelled types, so the model tests in `tests/loom_*.rs` exercise
//! the real chain-cache and graph code, and the validated lock types block cooperatively
//! instead of parking the one OS thread that runs every model thread. Under `--cfg shuttle`
//! (and not loom) they resolve to shuttle's, so a simulation built on this crate runs under
//! shuttle's scheduler and replays one interleaving from a seed (`tests/shuttle_model.rs`).
//! The task state (`task.rs`) and the allocation scopes (`gfp.rs`) follow: a task local of
//! the model checker's, so each model thread is a task of its own.

#[cfg(all(not(any(loom, shuttle)), feature = "enabled"))]
pub(crate) use core::sync::atomic::{AtomicU64, Ordering};
#[cfg(all(loom, feature = "enabled"))]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(all(shuttle, not(loom), feature = "enabled"))]
pub(crate) use shuttle::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(any(loom, shuttle)))]
pub(crate) use parking_lot::{
    Mutex as RawMutex, MutexGuard as RawMutexGuard, RwLock as RawRwLock,
    RwLockReadGuard as RawRwLockReadGuard, RwLockWriteGuard as RawRwLockWriteGuard,
};

#[cfg(any(loom, shuttle))]
pub(crate) use self::model_shim::*;

/// The model checker in use, if any.
#[cfg(loom)]
use loom as model;
#[cfg(all(shuttle, not(loom)))]
use shuttle as model;

/// Yield the processor inside a spin loop.
#[inline]
pub(crate) fn spin_yield(spins: u32) {
    #[cfg(any(loom, shuttle))]
    {
        let _ = spins;
        model::thread::yield_now();
    }
    #[cfg(not(any(loom, shuttle)))]
    {
        if spins < 64 {
            core::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// The current thread's name, for reports.
#[cfg(feature = "enabled")]
pub(crate) fn current_thread_name() -> String {
    #[cfg(any(loom, shuttle))]
    let t = model::thread::current();
    #[cfg(not(any(loom, shuttle)))]
    let t = std::thread::current();
    match t.name() {
        Some(n) => n.to_owned(),
        None => format!("{:?}", t.id()),
    }
}

#[cfg(any(loom, shuttle))]
mod model_shim {
    //! parking_lot-shaped wrappers over the model checker's std-shaped locks (no poisoning,
    //! `Option` try).
    use std::sync::PoisonError;

    use super::model;

    pub(crate) type RawMutexGuard<'a, T> = model::sync::MutexGuard<'a, T>;
    pub(crate) type RawRwLockReadGuard<'a, T> = model::sync::RwLockReadGuard<'a, T>;
    pub(crate) type RawRwLockWriteGuard<'a, T> = model::sync::RwLockWriteGuard<'a, T>;

    #[derive(Debug)]
    pub struct RawMutex<T>(pub(super) model::sync::Mutex<T>);

    impl<T> RawMutex<T> {
        pub(crate) fn new(t: T) -> Self {
            Self(model::sync::Mutex::new(t))
        }
        pub(crate) fn lock(&self) -> RawMutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }
        pub(crate) fn try_lock(&self) -> Option<RawMutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
        pub(crate) fn into_inner(self) -> T {
            self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
        }
        pub(crate) fn get_mut(&mut self) -> &mut T {
            self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
        }
    }

    #[derive(Debug)]
    pub struct RawRwLock<T>(model::sync::RwLock<T>);

    impl<T> RawRwLock<T> {
        pub(crate) fn new(t: T) -> Self {
            Self(model::sync::RwLock::new(t))
        }
        pub(crate) fn read(&self) -> RawRwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(PoisonError::into_inner)
        }
        pub(crate) fn read_recursive(&self) -> RawRwLockReadGuard<'_, T> {
            self.read()
        }
        pub(crate) fn write(&self) -> RawRwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(PoisonError::into_inner)
        }
        pub(crate) fn try_read(&self) -> Option<RawRwLockReadGuard<'_, T>> {
            self.0.try_read().ok()
        }
        pub(crate) fn try_read_recursive(&self) -> Option<RawRwLockReadGuard<'_, T>> {
            self.try_read()
        }
        pub(crate) fn try_write(&self) -> Option<RawRwLockWriteGuard<'_, T>> {
            self.0.try_write().ok()
        }
        pub(crate) fn into_inner(self) -> T {
            self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
        }
        pub(crate) fn get_mut(&mut self) -> &mut T {
            self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
        }
    }
}

/// A condition variable paired with [`RawMutex`], parking_lot-shaped but taking and
/// returning the guard (so the loom version can be std-shaped underneath).
#[derive(Debug, Default)]
pub(crate) struct RawCondvar(
    #[cfg(not(any(loom, shuttle)))] parking_lot::Condvar,
    #[cfg(any(loom, shuttle))] model::sync::Condvar,
);

impl RawCondvar {
    pub(crate) fn new() -> Self {
        #[cfg(not(any(loom, shuttle)))]
        return Self(parking_lot::Condvar::new());
        #[cfg(any(loom, shuttle))]
        return Self(model::sync::Condvar::new());
    }

    pub(crate) fn wait<'a, T>(&self, guard: RawMutexGuard<'a, T>) -> RawMutexGuard<'a, T> {
        #[cfg(not(any(loom, shuttle)))]
        {
            let mut guard = guard;
            self.0.wait(&mut guard);
            guard
        }
        #[cfg(any(loom, shuttle))]
        {
            self.0
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }

    pub(crate) fn notify_one(&self) {
        self.0.notify_one();
    }
}
