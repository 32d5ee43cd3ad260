//! The chain cache: each distinct chain of held classes is validated once.
//!
//! Validating an acquisition walks the dependency graph, which is O(classes²) in the worst
//! case and needs the graph lock. But programs take the same few *chains* (the sequence of
//! classes held, bottom to top, plus the one being taken) over and over. So every chain is
//! hashed into a 64-bit *chain key* ([`chain_hash`], a rolling hash updated on each push),
//! and once a chain has been validated its key goes into this table. The steady state, an
//! acquisition whose chain was seen before, is a hash and a few atomic loads: no lock, no
//! store, so threads taking disjoint locks do not contend (`Documentation/locking/lockdep-design.rst`, "Performance";
//! `lookup_chain_cache_add` in `kernel/locking/lockdep.c`).
//!
//! # The insertion protocol
//!
//! The table is open-addressed (linear probing) over `AtomicU64` slots; 0 means empty and no
//! key is 0. Readers probe with `Acquire` loads from `key & mask` until they find the key (a
//! hit) or an empty slot (a miss). There is one writer at a time: a thread that missed takes
//! the graph lock, probes again (another thread may have validated the same chain meanwhile),
//! validates, adds its edges to the graph, and only then publishes the key with a `Release`
//! store into the first empty slot of its probe sequence. Slots only go from 0 to a key, never
//! back, so a reader's probe sequence never loses a key it has passed. A hit therefore means
//! the chain's validation and edges happened before. Keys are published only after
//! validation, so a thread that hits never skips a check no one made. The model test
//! `tests/loom_chain_cache.rs` checks the protocol.
//!
//! # The per-thread memo
//!
//! In front of the table each task keeps a [`Memo`]: a small direct-mapped array of chain keys
//! it has itself found in its context's table. The steady-state acquisition is then the rolling
//! hash of the held-lock stack plus one load from the task's own memory: no line of the
//! table is read, none is written. A key enters the memo only after a hit in the table (an `Acquire`
//! load that saw the key, so the validation happened before), never after a validation that
//! could not be published (a full table), and the memo is emptied whenever the task changes
//! validator context, so a chain validated in one context is validated again in the next.
//!
//! When the table is three-quarters full the validator reports once and validates the
//! remaining new chains under the graph lock every time (correct, slower), as the kernel's
//! `MAX_LOCKDEP_CHAINS` does, minus the kernel's turning itself off.

use crate::primitive::{AtomicU64, Ordering};
use crate::Read;

/// Extends chain key `prev` by one held lock.
///
/// A splitmix64-style mix of the previous key with the class id and read mode: order
/// matters (A then B is not B then A), as does the read mode (a read-held A gives different
/// dependency kinds from a write-held A). Never returns 0, the empty slot.
#[inline]
pub(crate) fn chain_hash(prev: u64, class_id: u32, read: Read) -> u64 {
    let v = (u64::from(class_id) << 2) | read as u64;
    let mut z = prev
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(v.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z == 0 {
        1
    } else {
        z
    }
}

/// The table of validated chain keys.
pub(crate) struct ChainCache {
    slots: Box<[AtomicU64]>,
    mask: usize,
}

impl ChainCache {
    /// A table of `capacity` slots (rounded up to a power of two).
    pub(crate) fn new(capacity: usize) -> Self {
        let cap = capacity.max(2).next_power_of_two();
        Self {
            slots: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            mask: cap - 1,
        }
    }

    /// Whether `key` was validated (lock-free, loads only).
    #[inline]
    pub(crate) fn contains(&self, key: u64) -> bool {
        let mut i = key as usize & self.mask;
        for _ in 0..=self.mask {
            let v = self.slots[i].load(Ordering::Acquire);
            if v == key {
                return true;
            }
            if v == 0 {
                return false;
            }
            i = (i + 1) & self.mask;
        }
        false
    }

    /// Publishes `key`. The caller holds the graph lock (the only writer) and passes the
    /// count of used slots it keeps under that lock. `false` when the table is too full.
    pub(crate) fn insert(&self, key: u64, used: &mut usize) -> bool {
        if (*used + 1) * 4 > self.slots.len() * 3 {
            return false;
        }
        let mut i = key as usize & self.mask;
        loop {
            // Relaxed suffices: slots change only under the graph lock, which we hold.
            let v = self.slots[i].load(Ordering::Relaxed);
            if v == key {
                return true;
            }
            if v == 0 {
                self.slots[i].store(key, Ordering::Release);
                *used += 1;
                return true;
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// Slots in a task's [`Memo`].
const MEMO_SLOTS: usize = 64;

/// A task's private memo of chain keys found in its context's [`ChainCache`] (see the module
/// documentation). Direct-mapped: a key lives at `key % 64` or not at all; 0 is empty.
pub(crate) struct Memo([u64; MEMO_SLOTS]);

impl Memo {
    pub(crate) const fn new() -> Self {
        Self([0; MEMO_SLOTS])
    }

    /// Whether `key` was found in the context's table before (one load).
    #[inline(always)]
    pub(crate) fn contains(&self, key: u64) -> bool {
        self.0[key as usize % MEMO_SLOTS] == key
    }

    /// Remembers `key`, which the caller just found in its context's table.
    #[inline(always)]
    pub(crate) fn remember(&mut self, key: u64) {
        self.0[key as usize % MEMO_SLOTS] = key;
    }

    /// Forgets everything: the task changed validator context.
    pub(crate) fn clear(&mut self) {
        self.0 = [0; MEMO_SLOTS];
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn chain_hash_depends_on_order_and_read_mode() {
        let a = chain_hash(chain_hash(1, 10, Read::Exclusive), 11, Read::Exclusive);
        let b = chain_hash(chain_hash(1, 11, Read::Exclusive), 10, Read::Exclusive);
        let c = chain_hash(chain_hash(1, 10, Read::Recursive), 11, Read::Exclusive);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_memo_holds_what_it_was_given_until_cleared() {
        let mut m = Memo::new();
        assert!(!m.contains(7));
        m.remember(7);
        assert!(m.contains(7));
        // A key of the same slot replaces it: a memo miss, never a false hit.
        m.remember(7 + MEMO_SLOTS as u64);
        assert!(!m.contains(7));
        assert!(m.contains(7 + MEMO_SLOTS as u64));
        m.clear();
        assert!(!m.contains(7 + MEMO_SLOTS as u64));
    }

    #[test]
    fn colliding_keys_are_all_found_and_table_refuses_when_full() {
        let t = ChainCache::new(8);
        let mut used = 0;
        // All three start probing at slot 1.
        for k in [1u64, 9, 17] {
            assert!(t.insert(k, &mut used));
        }
        for k in [1u64, 9, 17] {
            assert!(t.contains(k));
        }
        assert!(!t.contains(25));
        for k in [2u64, 3, 4] {
            assert!(t.insert(k, &mut used));
        }
        assert_eq!(used, 6);
        assert!(!t.insert(5, &mut used), "7 of 8 is over three-quarters");
    }
}
