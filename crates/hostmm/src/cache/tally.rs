//! Per-thread counters: each thread owns one slot of a [`Tally`] at a time (its
//! [index](crate::cache::threads)), so counting is a load and a store to a line no other thread
//! writes — no read-modify-write, no shared line. When an index changes hands, the pool's mutex
//! orders the old owner's last store before the new owner's first load, so no count is lost.
//! Threads without an index of their own share the overflow slot, counted with `fetch_add`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::threads::{OVERFLOW, THREADS};

#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

/// One counter, split over threads.
pub struct Tally {
    slots: Box<[Slot]>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            slots: (0..=THREADS).map(|_| Slot::default()).collect(),
        }
    }
}

impl Tally {
    /// Adds one for this thread.
    #[cfg(all(test, not(loom)))]
    pub fn add_one(&self) {
        self.add_one_at(crate::cache::threads::index());
    }

    /// Adds one for the thread whose [index](crate::cache::threads::index) is `i` — the
    /// caller's own, looked up already.
    #[inline]
    pub fn add_one_at(&self, i: usize) {
        let s = &self.slots[i].0;
        if i == OVERFLOW {
            s.fetch_add(1, Ordering::Relaxed);
        } else {
            // Only this thread writes this slot while it owns the index (see the module docs).
            s.store(s.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// The sum over all threads (a snapshot; counts racing it may or may not be in it).
    pub fn sum(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_and_reused_indices_are_all_kept() {
        let t = Tally::default();
        // More threads than indices over time, a few at once: indices are reused.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..(THREADS / 2) {
                        std::thread::scope(|s2| {
                            s2.spawn(|| {
                                for _ in 0..100 {
                                    t.add_one();
                                }
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(t.sum(), 4 * (THREADS as u64 / 2) * 100);
    }

    #[test]
    fn threads_beyond_the_pool_share_the_overflow_slot_without_losing_counts() {
        let t = Tally::default();
        let hold = std::sync::Barrier::new(THREADS + 9);
        std::thread::scope(|s| {
            for _ in 0..THREADS + 8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        t.add_one();
                    }
                    hold.wait(); // every thread holds its index until all have counted
                });
            }
            hold.wait();
        });
        assert_eq!(t.sum(), (THREADS as u64 + 8) * 1000);
    }
}
