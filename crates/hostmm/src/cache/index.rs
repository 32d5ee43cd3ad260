//! The lookup index a cache hit searches: an immutable snapshot of the cache's ranges, built by
//! a writer when the set of entries changes and [published](crate::cache::publish) for
//! lock-free readers.
//!
//! Ranges are kept sorted by `(start, end)` in flat arrays (one cache line holds eight starts),
//! plus an open-addressing table from a range's start to its first position, so the common
//! lookup — at the start of a cached range — is one hash probe; any other lookup is a binary
//! search over the starts, then a walk back bounded by the longest range.
//!
//! A range added since the arrays were built goes into a short tail of at most [`TAIL`]
//! ranges, appended **in place** in the published index ([`Index::push`]): a miss publishing
//! one entry writes one slot and raises the tail's length, with no new snapshot, no swap and
//! nothing to retire. The arrays are rebuilt (a new snapshot with an empty tail, published and
//! the old one retired) when the tail is full or a range leaves, so a miss copies the index
//! once per [`TAIL`] misses: `O(entries / TAIL)` amortised. A lookup scans the tail only when
//! the arrays have no answer (neither the hash probe nor the sorted search).
//!
//! The index holds *pointers* to entries, not references: it says where to look, and the
//! caller checks each candidate's own validity flag. Keeping every pointer alive is the
//! writer's rule (see `regcache.rs`): an entry leaves the map only together with a new snapshot
//! without it, and is retired after that snapshot is published.
//!
//! # Why the tail is sound
//!
//! * **No invalidation lives in the index.** Whether a hit may accept an entry is decided by
//!   the entry's own flag, cleared by the invalidation under the writers' lock before the
//!   invalidating call returns (or, under uffd, before its pending window closes), and loaded
//!   with acquire by every hit after the gate. A range in the tail is checked exactly like one
//!   in the arrays, so no snapshot — whatever its tail holds, current or one change old — can
//!   make a hit accept an invalidated entry, or miss the invalidation of a tail entry: there is
//!   nothing in the snapshot for it to miss.
//! * **A slot is read only once written.** The writer fills slot `n` (relaxed stores), then
//!   stores the length `n + 1` with release; a reader loads the length with acquire and reads
//!   only the slots below it, so it sees each slot's final contents. A slot is written once in
//!   the life of its index (append-only, never reused: no ABA) and only by the writer holding
//!   the writers' lock, so appends never race with each other.
//! * **Every pointer stays allocated.** Appends go only into the index published *last*, read
//!   by the writer under the writers' lock, which every publication holds; so the pointers of
//!   the published index are anchors in the map. A range leaves the map only in a critical
//!   section that publishes a *rebuilt* snapshot (empty tail) and then retires the anchor: no
//!   later append reaches the old snapshot, a reader still in it is protected by the grace
//!   period (the anchor is stamped after the swap), and the new one never had the pointer.
//! * **Publication order is the rebuild's.** The append is made after `read_retry` under the
//!   writers' lock, with the entry's flags set before the length's release store, exactly
//!   where the full rebuild used to be published; the pending window and the sequence check see
//!   nothing different.
//!
//! `tests/loom_publish.rs` model-checks the append against concurrent readers, invalidations
//! and a flush's rebuild, and catches the broken variants: an append into an index read before
//! the lock (the entry is lost), a removal without a rebuild (a reader reaches a freed entry),
//! and a length raised before its slot is written (a reader sees an unwritten slot).

use std::ptr::NonNull;

use crate::primitive::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Most ranges appended to an index without rebuilding its arrays (2 in the models, so that
/// they reach a full tail).
pub const TAIL: usize = if cfg!(loom) { 2 } else { 16 };

const EMPTY: u32 = u32::MAX;

/// A snapshot of `(start, end) → T` for ranges of `u64`: immutable sorted arrays, plus a tail
/// the writer appends to in place.
pub struct Index<T> {
    starts: Box<[u64]>,
    ends: Box<[u64]>,
    items: Box<[NonNull<T>]>,
    /// Position of the first range with a given start, or `EMPTY`; a power of two long.
    table: Box<[u32]>,
    /// The longest range's length in the arrays: no range of them starting more than this
    /// before `end` covers it.
    max_len: u64,
    /// Ranges appended since the arrays were built, in the order appended.
    tail: Tail<T>,
}

/// The appended ranges: slots below `len` are written and never change. On lines of its own,
/// so an append does not take from readers the line of the arrays' pointers.
#[repr(align(128))]
struct Tail<T> {
    len: AtomicUsize,
    slots: [TailSlot<T>; TAIL],
}

struct TailSlot<T> {
    start: AtomicU64,
    end: AtomicU64,
    item: AtomicPtr<T>,
}

impl<T> Tail<T> {
    fn new() -> Self {
        Self {
            len: AtomicUsize::new(0),
            slots: std::array::from_fn(|_| TailSlot {
                start: AtomicU64::new(0),
                end: AtomicU64::new(0),
                item: AtomicPtr::new(std::ptr::null_mut()),
            }),
        }
    }
}

// SAFETY: the index only stores the pointers; whoever dereferences them (`regcache.rs`, under a
// pinned guard) keeps the pointees alive. `T: Sync` because readers on any thread share them.
unsafe impl<T: Send + Sync> Send for Index<T> {}
// SAFETY: see above.
unsafe impl<T: Send + Sync> Sync for Index<T> {}

#[inline]
fn slot_of(start: u64, mask: usize) -> usize {
    // Page numbers are dense and aligned: a multiplicative hash spreads them.
    ((start >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & mask
}

impl<T> Index<T> {
    /// An index of no range.
    pub fn empty() -> Self {
        Self::build(&[], &[], Vec::new(), 0)
    }

    /// An index of the ranges `[starts[i], ends[i])` → `items[i]`, sorted by `(start, end)`;
    /// `max_len` at least the longest range's length.
    pub fn build(starts: &[u64], ends: &[u64], items: Vec<NonNull<T>>, max_len: u64) -> Self {
        debug_assert!(starts.len() == ends.len() && ends.len() == items.len());
        debug_assert!(starts.windows(2).all(|w| w[0] <= w[1]));
        let cap = (starts.len() * 2).next_power_of_two().max(2);
        let mask = cap - 1;
        let mut table = vec![EMPTY; cap];
        let mut prev = None;
        for (i, &s) in starts.iter().enumerate() {
            if prev == Some(s) {
                continue; // only the first range of each start
            }
            prev = Some(s);
            let mut h = slot_of(s, mask);
            while table[h] != EMPTY {
                h = (h + 1) & mask;
            }
            table[h] = i as u32;
        }
        Self {
            starts: starts.into(),
            ends: ends.into(),
            items: items.into(),
            table: table.into(),
            max_len,
            tail: Tail::new(),
        }
    }

    /// Appends `[start, end)` → `item` to the tail in place; `false` when the tail is full
    /// (build a new index then). Only the writer that published this index may append, holding
    /// the lock that serializes the writers, and only while it is the published one (see the
    /// module documentation).
    pub fn push(&self, start: u64, end: u64, item: NonNull<T>) -> bool {
        // Appends are serialized by the writers' lock: this is the last length stored.
        let n = self.tail.len.load(Ordering::Relaxed);
        let Some(slot) = self.tail.slots.get(n) else {
            return false;
        };
        slot.start.store(start, Ordering::Relaxed);
        slot.end.store(end, Ordering::Relaxed);
        slot.item.store(item.as_ptr(), Ordering::Relaxed);
        // Release: a reader that loads `n + 1` sees the slot written.
        self.tail.len.store(n + 1, Ordering::Release);
        true
    }

    /// The broken append the models must catch: the length raised before the slot is written.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn push_length_first(&self, start: u64, end: u64, item: NonNull<T>) -> bool {
        let n = self.tail.len.load(Ordering::Relaxed);
        let Some(slot) = self.tail.slots.get(n) else {
            return false;
        };
        self.tail.len.store(n + 1, Ordering::Release);
        slot.start.store(start, Ordering::Relaxed);
        slot.end.store(end, Ordering::Relaxed);
        slot.item.store(item.as_ptr(), Ordering::Relaxed);
        true
    }

    /// Whether every tail slot below the length a reader loads now is written (the models'
    /// check of the append's order).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn tail_written(&self) -> bool {
        let n = self.tail.len.load(Ordering::Acquire);
        self.tail.slots[..n]
            .iter()
            .all(|s| !s.item.load(Ordering::Relaxed).is_null())
    }

    /// The first tail range covering `[start, end)` for which `accept` holds.
    #[inline]
    fn tail_covering(
        &self,
        start: u64,
        end: u64,
        accept: &mut impl FnMut(NonNull<T>) -> bool,
    ) -> Option<NonNull<T>> {
        // Acquire: every slot below the length is written (see `push`).
        let n = self.tail.len.load(Ordering::Acquire);
        for slot in &self.tail.slots[..n] {
            if slot.start.load(Ordering::Relaxed) <= start
                && slot.end.load(Ordering::Relaxed) >= end
            {
                let item = slot.item.load(Ordering::Relaxed);
                // Never null: written before the length was raised past it.
                if let Some(p) = NonNull::new(item) {
                    if accept(p) {
                        return Some(p);
                    }
                }
            }
        }
        None
    }

    /// Ranges in the index.
    #[cfg(all(test, not(loom)))]
    pub fn len(&self) -> usize {
        self.starts.len() + self.tail.len.load(Ordering::Acquire)
    }

    /// The first range covering `[start, end)` for which `accept` holds, searched from ranges
    /// of the arrays that start exactly at `start`, then backwards from `start` in the arrays,
    /// then in the tail.
    #[inline]
    pub fn covering(
        &self,
        start: u64,
        end: u64,
        mut accept: impl FnMut(NonNull<T>) -> bool,
    ) -> Option<NonNull<T>> {
        let mask = self.table.len() - 1;
        let mut h = slot_of(start, mask);
        loop {
            let i = self.table[h];
            if i == EMPTY {
                break;
            }
            let mut i = i as usize;
            if self.starts[i] == start {
                while i < self.starts.len() && self.starts[i] == start {
                    if self.ends[i] >= end && accept(self.items[i]) {
                        return Some(self.items[i]);
                    }
                    i += 1;
                }
                break;
            }
            h = (h + 1) & mask;
        }
        // Ranges of the arrays starting before `start` (or at it, again: harmless), then the
        // tail: most lookups inside a range find it in the arrays.
        search_back(&self.starts, &self.ends, self.max_len, start, end, |i| {
            accept(self.items[i])
        })
        .map(|i| self.items[i])
        .or_else(|| self.tail_covering(start, end, &mut accept))
    }
}

/// The position of a range covering `[start, end)` for which `accept` holds, among ranges
/// `[starts[i], ends[i])` sorted by `(start, end)` of which none is longer than `max_len`: a
/// binary search for the last range starting at or before `start`, then a walk back that stops
/// where no range can reach `end`. (The cache's map searches its own arrays with it too.)
#[inline]
pub fn search_back(
    starts: &[u64],
    ends: &[u64],
    max_len: u64,
    start: u64,
    end: u64,
    mut accept: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let upto = starts.partition_point(|&s| s <= start);
    (0..upto)
        .rev()
        .take_while(|&i| starts[i].saturating_add(max_len) >= end)
        .find(|&i| ends[i] >= end && accept(i))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The first `sorted` ranges built into the arrays, the rest added to the tail.
    fn index(ranges: &[(u64, u64)], ids: &[u32], sorted: usize) -> Index<u32> {
        let items: Vec<NonNull<u32>> = ids.iter().map(NonNull::from).collect();
        let (a, b) = ranges.split_at(sorted);
        let starts: Vec<u64> = a.iter().map(|r| r.0).collect();
        let ends: Vec<u64> = a.iter().map(|r| r.1).collect();
        let max_len = a.iter().map(|r| r.1 - r.0).max().unwrap_or(0);
        let idx = Index::build(&starts, &ends, items[..sorted].to_vec(), max_len);
        for (i, r) in b.iter().enumerate() {
            assert!(idx.push(r.0, r.1, items[sorted + i]));
        }
        idx
    }

    #[test]
    fn finds_exact_interior_and_nothing_else_like_a_naive_scan() {
        let p = 4096;
        // Sorted, overlapping, duplicate starts, a long one.
        let ranges = [
            (0, p),
            (p, 2 * p),
            (p, 4 * p),
            (3 * p, 4 * p),
            (5 * p, 40 * p),
            (9 * p, 10 * p),
            (41 * p, 42 * p),
        ];
        let ids: Vec<u32> = (0..ranges.len() as u32).collect();
        // All in the sorted arrays, some in the tail, all in the tail.
        for sorted in [ranges.len(), 4, 0] {
            let idx = index(&ranges, &ids, sorted);
            assert_eq!(idx.len(), ranges.len());
            // Every query against a naive model, with every acceptance pattern of "valid" ranges.
            for valid_mask in 0u32..(1 << ranges.len()) {
                let ok = |p: NonNull<u32>| valid_mask & (1 << unsafe { *p.as_ptr() }) != 0;
                for s in 0..44 {
                    for len in 1..6 {
                        let (qs, qe) = (s * p, (s + len) * p);
                        let got = idx.covering(qs, qe, ok).map(|p| unsafe { *p.as_ptr() });
                        let any = ranges.iter().enumerate().any(|(i, &(rs, re))| {
                            rs <= qs && re >= qe && valid_mask & (1 << i) != 0
                        });
                        assert_eq!(got.is_some(), any, "[{s}, {}) mask {valid_mask:b}", s + len);
                        if let Some(i) = got {
                            let (rs, re) = ranges[i as usize];
                            assert!(rs <= qs && re >= qe && valid_mask & (1 << i) != 0);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_tail_is_bounded() {
        let x = 0u32;
        let idx: Index<u32> = Index::empty();
        for i in 0..TAIL as u64 {
            assert!(idx.push(i * 4096, (i + 1) * 4096, NonNull::from(&x)));
        }
        assert!(!idx.push(0, 4096, NonNull::from(&x)));
        assert_eq!(idx.len(), TAIL);
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let idx: Index<u32> = Index::empty();
        assert!(idx.covering(0, 4096, |_| true).is_none());
        assert!(idx.covering(u64::MAX - 4096, u64::MAX, |_| true).is_none());
    }
}
