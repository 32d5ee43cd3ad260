//! The one place in this crate that picks synchronization primitives (atomics, the spin step and
//! the model checker come from `sync-prims`, the workspace's switch).
//!
//! Normal builds use `parking_lot` locks and `core` atomics. Under `--cfg loom` the same
//! names resolve to loom's modelled types, so the model tests in `tests/loom_*.rs` exercise
//! the real chain-cache and graph code, and the validated lock types block cooperatively
//! instead of parking the one OS thread that runs every model thread. Under `--cfg shuttle`
//! (and not loom) they resolve to shuttle's, so a simulation built on this crate runs under
//! shuttle's scheduler and replays one interleaving from a seed (`tests/shuttle_model.rs`).
//! The task state (`task.rs`) and the allocation scopes (`gfp.rs`) follow: a task local of
//! the model checker's, so each model thread is a task of its own.

#[cfg(feature = "enabled")]
pub(crate) use sync_prims::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(any(loom, shuttle)))]
pub(crate) use parking_lot::{
    Mutex as RawMutex, MutexGuard as RawMutexGuard, RwLock as RawRwLock,
    RwLockReadGuard as RawRwLockReadGuard, RwLockWriteGuard as RawRwLockWriteGuard,
};

#[cfg(any(loom, shuttle))]
pub(crate) use self::model_shim::*;

/// One step of a bounded spin (a yield to the model checker under loom or shuttle).
pub(crate) use sync_prims::spin;

/// The current thread's name, for reports.
#[cfg(feature = "enabled")]
pub(crate) fn current_thread_name() -> String {
    let t = sync_prims::thread::current();
    match t.name() {
        Some(n) => n.to_owned(),
        None => format!("{:?}", t.id()),
    }
}

#[cfg(any(loom, shuttle))]
mod model_shim {
    //! parking_lot-shaped wrappers over the model checker's std-shaped locks (no poisoning,
    //! `Option` try).
    use sync_prims::{sync as model, unpoison};

    pub(crate) type RawMutexGuard<'a, T> = model::MutexGuard<'a, T>;
    pub(crate) type RawRwLockReadGuard<'a, T> = model::RwLockReadGuard<'a, T>;
    pub(crate) type RawRwLockWriteGuard<'a, T> = model::RwLockWriteGuard<'a, T>;

    #[derive(Debug)]
    pub struct RawMutex<T>(pub(super) model::Mutex<T>);

    impl<T> RawMutex<T> {
        pub(crate) fn new(t: T) -> Self {
            Self(model::Mutex::new(t))
        }
        pub(crate) fn lock(&self) -> RawMutexGuard<'_, T> {
            unpoison(self.0.lock())
        }
        pub(crate) fn try_lock(&self) -> Option<RawMutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
        pub(crate) fn try_lock_for(&self, _: std::time::Duration) -> Option<RawMutexGuard<'_, T>> {
            self.try_lock()
        }
        pub(crate) fn into_inner(self) -> T {
            unpoison(self.0.into_inner())
        }
        pub(crate) fn get_mut(&mut self) -> &mut T {
            unpoison(self.0.get_mut())
        }
    }

    #[derive(Debug)]
    pub struct RawRwLock<T>(model::RwLock<T>);

    impl<T> RawRwLock<T> {
        pub(crate) fn new(t: T) -> Self {
            Self(model::RwLock::new(t))
        }
        pub(crate) fn read(&self) -> RawRwLockReadGuard<'_, T> {
            unpoison(self.0.read())
        }
        pub(crate) fn read_recursive(&self) -> RawRwLockReadGuard<'_, T> {
            self.read()
        }
        pub(crate) fn write(&self) -> RawRwLockWriteGuard<'_, T> {
            unpoison(self.0.write())
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
        pub(crate) fn try_write_for(
            &self,
            _: std::time::Duration,
        ) -> Option<RawRwLockWriteGuard<'_, T>> {
            self.try_write()
        }
        pub(crate) fn into_inner(self) -> T {
            unpoison(self.0.into_inner())
        }
        pub(crate) fn get_mut(&mut self) -> &mut T {
            unpoison(self.0.get_mut())
        }
    }
}

/// A condition variable paired with [`RawMutex`], parking_lot-shaped but taking and
/// returning the guard (so the loom version can be std-shaped underneath).
#[derive(Debug, Default)]
pub(crate) struct RawCondvar(
    #[cfg(not(any(loom, shuttle)))] parking_lot::Condvar,
    #[cfg(any(loom, shuttle))] sync_prims::sync::Condvar,
);

impl RawCondvar {
    pub(crate) fn new() -> Self {
        #[cfg(not(any(loom, shuttle)))]
        return Self(parking_lot::Condvar::new());
        #[cfg(any(loom, shuttle))]
        return Self(sync_prims::sync::Condvar::new());
    }

    pub(crate) fn wait<'a, T>(&self, guard: RawMutexGuard<'a, T>) -> RawMutexGuard<'a, T> {
        #[cfg(not(any(loom, shuttle)))]
        {
            let mut guard = guard;
            self.0.wait(&mut guard);
            guard
        }
        #[cfg(any(loom, shuttle))]
        sync_prims::wait(&self.0, guard)
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }

    pub(crate) fn notify_one(&self) {
        self.0.notify_one();
    }
}
