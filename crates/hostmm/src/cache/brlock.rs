//! A big-reader lock: readers share nothing with each other, writers take every slot.
//!
//! A cache hit must not take an exclusive lock, and should not even bounce a shared cache line
//! between cores (a `RwLock`'s reader count does). Each thread reads through its own slot, a
//! cache-line-padded `RwLock<()>`; a writer (a miss publishing, an invalidation, an eviction)
//! write-locks all slots in index order. Writers are rare and short; readers scale.

use std::cell::UnsafeCell;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use crate::primitive::{thread_stripe, unpoison};

/// Number of reader slots.
pub const SLOTS: usize = 8;

#[repr(align(128))]
struct Slot(RwLock<()>);

/// The lock; see the module documentation.
pub struct BrLock<T> {
    slots: [Slot; SLOTS],
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is mediated by the slot locks exactly like `RwLock<T>`: shared
// references only while some slot is read-locked, the unique reference only while every slot is
// write-locked. So the same bounds as `RwLock<T>` apply.
unsafe impl<T: Send> Send for BrLock<T> {}
// SAFETY: see above.
unsafe impl<T: Send + Sync> Sync for BrLock<T> {}

/// A shared borrow through one slot.
pub struct ReadGuard<'a, T> {
    lock: &'a BrLock<T>,
    slot: usize,
    _slot: RwLockReadGuard<'a, ()>,
}

/// The exclusive borrow: every slot write-locked.
pub struct WriteGuard<'a, T> {
    lock: &'a BrLock<T>,
    _slots: [Option<RwLockWriteGuard<'a, ()>>; SLOTS],
}

/// This thread's slot index, assigned round-robin on first use.
#[inline]
pub fn my_slot() -> usize {
    thread_stripe(SLOTS)
}

impl<T> BrLock<T> {
    /// Wraps `data`.
    pub fn new(data: T) -> Self {
        Self {
            slots: core::array::from_fn(|_| Slot(RwLock::new(()))),
            data: UnsafeCell::new(data),
        }
    }

    /// Shared access through this thread's slot.
    #[inline]
    pub fn read(&self) -> ReadGuard<'_, T> {
        let slot = my_slot();
        let g = unpoison(self.slots[slot].0.read());
        ReadGuard {
            lock: self,
            slot,
            _slot: g,
        }
    }

    /// Exclusive access. Does not allocate (safe on the monitor thread).
    pub fn write(&self) -> WriteGuard<'_, T> {
        let slots = core::array::from_fn(|i| Some(unpoison(self.slots[i].0.write())));
        WriteGuard {
            lock: self,
            _slots: slots,
        }
    }

    /// Exclusive access if no slot is held right now (for non-blockable invalidations).
    pub fn try_write(&self) -> Option<WriteGuard<'_, T>> {
        let mut got: [Option<RwLockWriteGuard<'_, ()>>; SLOTS] = Default::default();
        for (i, g) in got.iter_mut().enumerate() {
            *g = match self.slots[i].0.try_write() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => return None,
            };
        }
        Some(WriteGuard {
            lock: self,
            _slots: got,
        })
    }
}

impl<T> ReadGuard<'_, T> {
    /// The slot this read went through (this thread's): an index for per-slot counters.
    #[inline]
    pub fn slot(&self) -> usize {
        self.slot
    }
}

impl<T> core::ops::Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a slot is read-locked, so no writer holds the unique borrow.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> core::ops::Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: every slot is write-locked by us.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> core::ops::DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: every slot is write-locked by us, so no other borrow exists.
        unsafe { &mut *self.lock.data.get() }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn writers_exclude_readers_on_every_slot() {
        let l = Arc::new(BrLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        *l.write() += 1;
                        let v = *l.read();
                        assert!(v > 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*l.read(), 8000);
    }

    #[test]
    fn try_write_fails_while_a_reader_holds_a_slot() {
        let l = BrLock::new(());
        let r = l.read();
        assert!(l.try_write().is_none());
        drop(r);
        assert!(l.try_write().is_some());
    }
}
