//! Byte-range bookkeeping: sets of ranges and reference counts over ranges.
//!
//! Used where the kernel keeps a per-VMA state that is not counted (a userfaultfd registration,
//! `mlock`, `MADV_DONTFORK`): several users of overlapping ranges share it, and it may be
//! undone only on bytes that no user still needs.

use std::collections::BTreeMap;

use crate::sys::va::VaRange;

/// A set of disjoint, coalesced ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// start → end, disjoint, never adjacent.
    runs: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `r` (merging with neighbours).
    pub(crate) fn insert(&mut self, r: VaRange) {
        let (mut s, mut e) = (r.start(), r.end());
        if let Some((&ps, &pe)) = self.runs.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
                self.runs.remove(&ps);
            }
        }
        let inside: Vec<(u64, u64)> = self.runs.range(s..=e).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in inside {
            e = e.max(b);
            self.runs.remove(&a);
        }
        self.runs.insert(s, e);
    }

    /// Removes `r`, keeping what lies outside it.
    pub(crate) fn remove(&mut self, r: VaRange) {
        let mut hit: Vec<(u64, u64)> = Vec::new();
        if let Some((&s, &e)) = self.runs.range(..r.start()).next_back() {
            if e > r.start() {
                hit.push((s, e));
            }
        }
        hit.extend(self.runs.range(r.start()..r.end()).map(|(&a, &b)| (a, b)));
        for (s, e) in hit {
            self.runs.remove(&s);
            if s < r.start() {
                self.runs.insert(s, r.start());
            }
            if e > r.end() {
                self.runs.insert(r.end(), e);
            }
        }
    }

    /// The run that contains all of `r`, if one does.
    pub(crate) fn run_containing(&self, r: VaRange) -> Option<VaRange> {
        let (&s, &e) = self.runs.range(..=r.start()).next_back()?;
        (e >= r.end()).then(|| VaRange::from_bounds(s, e)).flatten()
    }

    /// The parts of the set inside `r`.
    pub(crate) fn within(&self, r: VaRange) -> Vec<VaRange> {
        let mut out = Vec::new();
        if let Some((_, &e)) = self.runs.range(..r.start()).next_back() {
            if e > r.start() {
                out.extend(VaRange::from_bounds(r.start(), e.min(r.end())));
            }
        }
        for (&s, &e) in self.runs.range(r.start()..r.end()) {
            out.extend(VaRange::from_bounds(s, e.min(r.end())));
        }
        out
    }

    /// Number of runs.
    pub(crate) fn len(&self) -> usize {
        self.runs.len()
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.runs.clear();
    }

    /// The runs, in order.
    pub(crate) fn runs(&self) -> Vec<VaRange> {
        self.runs
            .iter()
            .filter_map(|(&s, &e)| VaRange::from_bounds(s, e))
            .collect()
    }
}

/// Reference counts over byte ranges, so overlapping users compose: a state the kernel does
/// not count (`mlock`, `MADV_DONTFORK`, a userfaultfd registration) is undone only on bytes
/// whose last user went away.
#[derive(Debug, Default)]
pub struct RangeCounts {
    /// Disjoint segments: start → (end, count ≥ 1).
    segs: BTreeMap<u64, (u64, u32)>,
}

impl RangeCounts {
    /// No references.
    pub const fn new() -> Self {
        Self {
            segs: BTreeMap::new(),
        }
    }

    fn split_at(&mut self, at: u64) {
        if let Some((&s, &(e, c))) = self.segs.range(..at).next_back() {
            if e > at {
                self.segs.insert(s, (at, c));
                self.segs.insert(at, (e, c));
            }
        }
    }

    /// Adds one reference on `r`; returns the sub-ranges whose count went from zero to one.
    pub fn add(&mut self, r: VaRange) -> Vec<VaRange> {
        self.split_at(r.start());
        self.split_at(r.end());
        let mut cur = r.start();
        let mut fresh = Vec::new();
        let existing: Vec<(u64, u64, u32)> = self
            .segs
            .range(r.start()..r.end())
            .map(|(&s, &(e, c))| (s, e, c))
            .collect();
        for (s, e, c) in existing {
            if s > cur {
                self.segs.insert(cur, (s, 1));
                fresh.extend(VaRange::from_bounds(cur, s));
            }
            self.segs.insert(s, (e, c + 1));
            cur = e;
        }
        if cur < r.end() {
            self.segs.insert(cur, (r.end(), 1));
            fresh.extend(VaRange::from_bounds(cur, r.end()));
        }
        fresh
    }

    /// Drops one reference on `r`; returns the sub-ranges whose count reached zero.
    pub fn remove(&mut self, r: VaRange) -> Vec<VaRange> {
        self.split_at(r.start());
        self.split_at(r.end());
        let existing: Vec<(u64, u64, u32)> = self
            .segs
            .range(r.start()..r.end())
            .map(|(&s, &(e, c))| (s, e, c))
            .collect();
        let mut freed: Vec<VaRange> = Vec::new();
        for (s, e, c) in existing {
            if c <= 1 {
                self.segs.remove(&s);
                match freed.last_mut() {
                    Some(last) if last.end() == s => {
                        *last = VaRange::from_bounds(last.start(), e).unwrap_or(*last)
                    }
                    _ => freed.extend(VaRange::from_bounds(s, e)),
                }
            } else {
                self.segs.insert(s, (e, c - 1));
            }
        }
        freed
    }

    /// The parts of `r` with no reference.
    pub fn unheld_within(&self, r: VaRange) -> Vec<VaRange> {
        let mut out = Vec::new();
        let mut cur = r.start();
        let first = self
            .segs
            .range(..r.start())
            .next_back()
            .filter(|(_, &(e, _))| e > r.start())
            .map(|(&s, &(e, _))| (s, e));
        for (s, e) in first.into_iter().chain(
            self.segs
                .range(r.start()..r.end())
                .map(|(&s, &(e, _))| (s, e)),
        ) {
            if s > cur {
                out.extend(VaRange::from_bounds(cur, s));
            }
            cur = cur.max(e);
        }
        if cur < r.end() {
            out.extend(VaRange::from_bounds(cur, r.end()));
        }
        out
    }

    /// Number of bytes with at least one reference.
    pub fn bytes(&self) -> u64 {
        self.segs.iter().map(|(s, (e, _))| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u64, e: u64) -> VaRange {
        VaRange::from_bounds(s, e).unwrap()
    }

    #[test]
    fn overlapping_counts_release_only_unshared_bytes() {
        let mut c = RangeCounts::default();
        assert_eq!(c.add(r(0x1000, 0x3000)), vec![r(0x1000, 0x3000)]);
        assert_eq!(c.add(r(0x2000, 0x5000)), vec![r(0x3000, 0x5000)]);
        assert_eq!(c.bytes(), 0x4000);
        assert_eq!(
            c.unheld_within(r(0x0, 0x8000)),
            vec![r(0x0, 0x1000), r(0x5000, 0x8000)]
        );
        assert!(c.unheld_within(r(0x2000, 0x3000)).is_empty());
        assert_eq!(c.remove(r(0x1000, 0x3000)), vec![r(0x1000, 0x2000)]);
        assert_eq!(c.bytes(), 0x3000);
        assert_eq!(c.remove(r(0x2000, 0x5000)), vec![r(0x2000, 0x5000)]);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn same_range_twice_needs_two_releases() {
        let mut c = RangeCounts::default();
        c.add(r(0x1000, 0x2000));
        assert!(c.add(r(0x1000, 0x2000)).is_empty());
        assert!(c.remove(r(0x1000, 0x2000)).is_empty());
        assert_eq!(c.remove(r(0x1000, 0x2000)), vec![r(0x1000, 0x2000)]);
    }

    #[test]
    fn sets_merge_split_and_answer_containment() {
        let mut s = RangeSet::default();
        s.insert(r(0x1000, 0x3000));
        s.insert(r(0x3000, 0x4000));
        s.insert(r(0x6000, 0x8000));
        assert_eq!(s.runs(), vec![r(0x1000, 0x4000), r(0x6000, 0x8000)]);
        assert_eq!(s.run_containing(r(0x2000, 0x3000)), Some(r(0x1000, 0x4000)));
        assert_eq!(s.run_containing(r(0x3000, 0x7000)), None);
        s.remove(r(0x2000, 0x3000));
        assert_eq!(s.run_containing(r(0x1000, 0x4000)), None);
        assert_eq!(
            s.within(r(0x1800, 0x7000)),
            vec![r(0x1800, 0x2000), r(0x3000, 0x4000), r(0x6000, 0x7000)]
        );
        s.insert(r(0x0, 0x9000));
        assert_eq!(s.runs(), vec![r(0x0, 0x9000)]);
        assert_eq!(s.len(), 1);
    }
}
