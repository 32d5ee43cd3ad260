//! The lookup index a cache hit searches: an immutable snapshot of the cache's ranges, built by
//! a writer when the set of entries changes and [published](crate::cache::publish) for
//! lock-free readers.
//!
//! Ranges are kept sorted by `(start, end)` in flat arrays (one cache line holds eight starts),
//! plus an open-addressing table from a range's start to its first position, so the common
//! lookup — at the start of a cached range — is one hash probe; any other lookup is a binary
//! search over the starts, then a walk back bounded by the longest range.
//!
//! A range added since the arrays were built goes into a short unsorted tail (at most
//! [`TAIL`] ranges) that shares the arrays of the index before it ([`Index::with`]), so a miss
//! publishing one entry copies the tail, not the whole index; the arrays are rebuilt when the
//! tail is full or a range leaves. A lookup scans the tail only when the arrays' hash probe has
//! no answer, before the sorted search.
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
//!   in the arrays, so no snapshot — with or without a tail, current or one change old — can
//!   make a hit accept an invalidated entry, or miss the invalidation of a tail entry: there is
//!   nothing in the snapshot for it to miss.
//! * **Every pointer stays allocated.** A snapshot with a tail is derived from the snapshot
//!   published *last*, read by the writer under the writers' lock, which every publication
//!   holds; so its pointers are the map's anchors at that moment. A range leaves the map only
//!   in a critical section that publishes a *rebuilt* snapshot (no tail) and then retires the
//!   anchor, so no snapshot published later points to it, and one published earlier is
//!   protected by the grace period (the anchor is stamped after the swap). Extending a snapshot
//!   read *before* the lock would resurrect a removed pointer: `tests/loom_publish.rs`
//!   (`extending_an_index_read_before_the_lock_leads_readers_to_freed_entries`) shows the model
//!   catching that.
//! * **Publication order is the rebuild's.** The tail is extended after `read_retry` under the
//!   writers' lock, with the entry's flags set before the swap (release), exactly where the
//!   full rebuild used to be published; the pending window and the sequence check see nothing
//!   different.
//! * **No ABA.** Snapshots are immutable once published and writers swap unconditionally under
//!   the lock: nothing compares pointers, so a reused address cannot be mistaken for an old
//!   one. The arrays a tail shares are `Arc` slices, freed with the last snapshot that holds
//!   them, itself freed only after its grace period.

use std::ptr::NonNull;
use std::sync::Arc;

/// Most ranges added to an index without rebuilding its arrays.
pub const TAIL: usize = 16;

const EMPTY: u32 = u32::MAX;

/// A snapshot of `(start, end) → T` for ranges of `u64`. The arrays are reference-counted
/// slices, shared with the index the tail grew from (a hit reads them through one pointer, as
/// through a `Box`).
pub struct Index<T> {
    starts: Arc<[u64]>,
    ends: Arc<[u64]>,
    items: Arc<[NonNull<T>]>,
    /// Position of the first range with a given start, or `EMPTY`; a power of two long.
    table: Arc<[u32]>,
    /// The longest range's length in the arrays: no range of them starting more than this
    /// before `end` covers it.
    max_len: u64,
    /// Ranges added since the arrays were built, unsorted.
    tail: Box<[(u64, u64, NonNull<T>)]>,
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
            tail: Box::new([]),
        }
    }

    /// This index plus the range `[start, end)` → `item`, sharing the sorted arrays; `None`
    /// when the tail is full (build a new index then).
    pub fn with(&self, start: u64, end: u64, item: NonNull<T>) -> Option<Self> {
        if self.tail.len() >= TAIL {
            return None;
        }
        let mut tail = Vec::with_capacity(self.tail.len() + 1);
        tail.extend_from_slice(&self.tail);
        tail.push((start, end, item));
        Some(Self {
            starts: self.starts.clone(),
            ends: self.ends.clone(),
            items: self.items.clone(),
            table: self.table.clone(),
            max_len: self.max_len,
            tail: tail.into(),
        })
    }

    /// Ranges in the index.
    #[cfg(all(test, not(loom)))]
    pub fn len(&self) -> usize {
        self.starts.len() + self.tail.len()
    }

    /// The first range covering `[start, end)` for which `accept` holds, searched from ranges
    /// of the arrays that start exactly at `start`, then in the tail, then backwards from
    /// `start` in the arrays.
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
        if let Some(&(_, _, p)) = self
            .tail
            .iter()
            .find(|&&(s, e, p)| s <= start && e >= end && accept(p))
        {
            return Some(p);
        }
        // Ranges starting before `start` (or at it, again: harmless).
        search_back(&self.starts, &self.ends, self.max_len, start, end, |i| {
            accept(self.items[i])
        })
        .map(|i| self.items[i])
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
        let mut idx = Index::build(&starts, &ends, items[..sorted].to_vec(), max_len);
        for (i, r) in b.iter().enumerate() {
            idx = idx.with(r.0, r.1, items[sorted + i]).unwrap();
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
        let mut idx: Index<u32> = Index::empty();
        for i in 0..TAIL as u64 {
            idx = idx
                .with(i * 4096, (i + 1) * 4096, NonNull::from(&x))
                .unwrap();
        }
        assert!(idx.with(0, 4096, NonNull::from(&x)).is_none());
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let idx: Index<u32> = Index::empty();
        assert!(idx.covering(0, 4096, |_| true).is_none());
        assert!(idx.covering(u64::MAX - 4096, u64::MAX, |_| true).is_none());
    }
}
