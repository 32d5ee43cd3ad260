//! Per-thread slot indices: a thread takes the lowest free index of a process-wide pool the first
//! time it asks, and gives it back when it exits, so at most [`THREADS`] threads own one at a
//! time and an index changes hands only through the pool's mutex (which orders the old owner's
//! last write to its slots before the new owner's first). Threads beyond [`THREADS`], and a
//! thread asking during its own exit, get [`OVERFLOW`]: slots indexed by it are shared.
//!
//! The read-side slots of the cache's [publication](crate::cache::publish) and its per-thread
//! [tally](crate::cache::tally) are indexed by it.

/// Indices handed out; later threads share [`OVERFLOW`].
pub const THREADS: usize = 128;

/// The index of every thread without one of its own.
pub const OVERFLOW: usize = THREADS;

const UNSET: usize = usize::MAX;

#[cfg(not(loom))]
mod imp {
    use super::{OVERFLOW, THREADS, UNSET};
    use crate::primitive::lock;
    use std::cell::Cell;
    use std::sync::Mutex;

    /// Indices in use, one bit each.
    static POOL: Mutex<[u64; THREADS / 64]> = Mutex::new([0; THREADS / 64]);

    /// This thread's index; released to the pool when the thread exits.
    struct Owner(Cell<usize>);

    impl Drop for Owner {
        fn drop(&mut self) {
            let i = self.0.get();
            if i < THREADS {
                lock(&POOL)[i / 64] &= !(1 << (i % 64));
            }
        }
    }

    thread_local! {
        static OWNER: Owner = const { Owner(Cell::new(UNSET)) };
    }

    fn take() -> usize {
        let mut pool = lock(&POOL);
        for (w, word) in pool.iter_mut().enumerate() {
            if *word != u64::MAX {
                let b = word.trailing_ones() as usize;
                *word |= 1 << b;
                return w * 64 + b;
            }
        }
        OVERFLOW
    }

    /// This thread's index, or [`OVERFLOW`].
    #[inline]
    pub fn index() -> usize {
        OWNER
            .try_with(|o| {
                let i = o.0.get();
                if i != UNSET {
                    return i;
                }
                let i = take();
                o.0.set(i);
                i
            })
            .unwrap_or(OVERFLOW)
    }
}

#[cfg(loom)]
mod imp {
    use super::{OVERFLOW, THREADS, UNSET};
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use std::cell::Cell;

    loom::lazy_static! {
        static ref NEXT: AtomicUsize = AtomicUsize::new(0);
    }
    loom::thread_local! {
        static OWNER: Cell<usize> = Cell::new(UNSET);
    }

    /// Under loom: a fresh index per model thread, never reused (models have few threads).
    pub fn index() -> usize {
        OWNER.with(|o| {
            if o.get() == UNSET {
                let i = NEXT.fetch_add(1, Ordering::Relaxed);
                o.set(if i < THREADS { i } else { OVERFLOW });
            }
            o.get()
        })
    }
}

pub use imp::index;
