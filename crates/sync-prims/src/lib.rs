//! The workspace's synchronization primitives and the three helpers every crate shares.
//!
//! **The switch.** [`sync`], [`thread`] and [`thread_local!`] are `std`'s in a normal build,
//! loom's under `--cfg loom`, and shuttle's under `--cfg shuttle` (without loom). The flag is
//! given to the whole build (`RUSTFLAGS`), so every crate that takes its primitives from here
//! runs under the same model checker: a model test of `mmu-notifier` exercises the real
//! protocol code, and a shuttle execution of a simulated machine replays from one seed.
//!
//! **The helpers.**
//! - [`spin`]: one step of a bounded spin (the kernel's `cpu_relax()`), a yield to the model
//!   checker under loom or shuttle, where every step is a scheduling point.
//! - [`lock`], [`wait`], [`unpoison`]: take a mutex (std's or the model's) ignoring poisoning.
//!   Library code must not panic because another thread panicked; every user keeps its guarded
//!   state consistent across a panic (updates complete before anything that can panic), and a
//!   panicked thread is reported by whoever joins it.
//! - [`thread_stripe`]: this thread's index among `n` stripes of a per-thread-striped structure
//!   (SRCU's reader counters, a big-reader lock's slots), assigned round-robin on first use,
//!   like the kernel's per-CPU data indexed by `smp_processor_id()`.

#![forbid(unsafe_code)]

/// Atomics and blocking primitives, from the model checker in use (see the crate docs).
pub mod sync {
    #[cfg(loom)]
    pub use loom::sync::{
        atomic, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
    };
    #[cfg(all(shuttle, not(loom)))]
    pub use shuttle::sync::{
        atomic, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
    };
    #[cfg(not(any(loom, shuttle)))]
    pub use std::sync::{
        atomic, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
    };
}

/// The thread functions every model checker offers (loom has no `sleep`).
pub mod thread {
    #[cfg(loom)]
    pub use loom::thread::{current, spawn, yield_now, Builder, JoinHandle};
    #[cfg(all(shuttle, not(loom)))]
    pub use shuttle::thread::{current, spawn, yield_now, Builder, JoinHandle};
    #[cfg(not(any(loom, shuttle)))]
    pub use std::thread::{current, spawn, yield_now, Builder, JoinHandle};
}

#[cfg(loom)]
pub use loom::thread_local;
#[cfg(all(shuttle, not(loom)))]
pub use shuttle::thread_local;
#[cfg(not(any(loom, shuttle)))]
pub use std::thread_local;

/// One step `i` (counting from 0) of a bounded spin: a CPU hint for the first 64 steps, then a
/// yield to the scheduler. Under loom or shuttle every step yields to the model checker, so a
/// spin is a scheduling point and a model cannot spin forever.
#[inline]
pub fn spin(i: u32) {
    #[cfg(any(loom, shuttle))]
    {
        let _ = i;
        thread::yield_now();
    }
    #[cfg(not(any(loom, shuttle)))]
    {
        if i < 64 {
            core::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// The value of a lock result, poisoned or not (see the crate docs for why that is sound).
#[inline]
pub fn unpoison<G>(r: std::sync::LockResult<G>) -> G {
    r.unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A mutex that [`lock`] can take: `std`'s, and the model checker's under loom or shuttle.
pub trait Lock {
    /// The guard the mutex hands out.
    type Guard<'a>
    where
        Self: 'a;

    /// Locks, ignoring poisoning.
    fn lock_unpoisoned(&self) -> Self::Guard<'_>;
}

/// `Lock` for one mutex type, whose `lock` returns a `LockResult` of its guard.
macro_rules! impl_lock {
    ($($(#[$cfg:meta])* $mutex:ident :: $guard:ident in $($path:ident)::+;)*) => {$(
        $(#[$cfg])*
        impl<T: ?Sized> Lock for $($path)::+::$mutex<T> {
            type Guard<'a>
                = $($path)::+::$guard<'a, T>
            where
                Self: 'a;

            fn lock_unpoisoned(&self) -> Self::Guard<'_> {
                unpoison(self.lock())
            }
        }
    )*};
}

impl_lock! {
    Mutex::MutexGuard in std::sync;
    #[cfg(loom)]
    Mutex::MutexGuard in loom::sync;
    #[cfg(shuttle)]
    Mutex::MutexGuard in shuttle::sync;
}

/// Locks `m` (a `std` mutex or a [`sync::Mutex`]), ignoring poisoning.
#[inline]
pub fn lock<M: Lock + ?Sized>(m: &M) -> M::Guard<'_> {
    m.lock_unpoisoned()
}

/// Waits on `cv`, ignoring poisoning.
#[inline]
pub fn wait<'a, T>(cv: &sync::Condvar, g: sync::MutexGuard<'a, T>) -> sync::MutexGuard<'a, T> {
    unpoison(cv.wait(g))
}

/// This thread's stripe among `n` (`n > 0`): the same on every call from one thread, and
/// spread round-robin over threads as they first ask, so threads on different stripes share no
/// written cache line. Under loom or shuttle always 0: model threads may share one OS thread's
/// locals, and an index drawn from a process-wide counter would make a replay depend on the
/// executions before it.
#[inline]
pub fn thread_stripe(n: usize) -> usize {
    #[cfg(any(loom, shuttle))]
    {
        let _ = n;
        0
    }
    #[cfg(not(any(loom, shuttle)))]
    {
        use std::cell::Cell;
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // A `const` initialiser with a sentinel: no lazy-initialisation check on the hot path.
        std::thread_local! {
            static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        let i = INDEX.with(|c| {
            let i = c.get();
            if i != usize::MAX {
                return i;
            }
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            c.set(i);
            i
        });
        i % n
    }
}

#[cfg(all(test, not(any(loom, shuttle))))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_stripe_and_threads_spread_round_robin() {
        let mine = thread_stripe(8);
        assert_eq!(thread_stripe(8), mine);
        let stripes: Vec<usize> = (0..8)
            .map(|_| {
                std::thread::spawn(|| thread_stripe(1 << 20))
                    .join()
                    .unwrap()
            })
            .collect();
        // Each new thread draws the next index (other tests may draw in between, so the
        // indices only increase).
        assert!(stripes.windows(2).all(|w| w[0] < w[1]), "{stripes:?}");
        assert!(stripes.iter().all(|&s| s < 1 << 20));
    }

    #[test]
    fn lock_and_wait_ignore_poisoning() {
        let m = std::sync::Arc::new(std::sync::Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&*m) += 1;
        assert_eq!(*lock(&*m), 2);

        let cv = sync::Condvar::new();
        let g = lock(&*m);
        let (g, _) = unpoison(cv.wait_timeout(g, std::time::Duration::from_millis(1)));
        assert_eq!(*g, 2);
    }
}
