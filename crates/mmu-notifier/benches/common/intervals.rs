//! Interval layouts for the benchmarks: one-page ranges, and disjoint one-page intervals in a
//! random order (the driver callback, `SetSeq`, is in `subscribers.rs`).

use mmu_notifier::{Event, Range};

use super::rng::Rng;

pub const PAGE: u64 = 4096;

/// The one-page range starting at `start`.
pub fn page_range(start: u64) -> Range {
    Range::new(start, start + PAGE, Event::Unmap).expect("non-empty range")
}

/// `n` disjoint one-page intervals on every other page, in a random insertion order.
pub fn interval_starts(n: usize, rng: &mut Rng) -> Vec<u64> {
    let mut starts: Vec<u64> = (0..n as u64).map(|i| 2 * i * PAGE).collect();
    for i in (1..starts.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        starts.swap(i, j);
    }
    starts
}
