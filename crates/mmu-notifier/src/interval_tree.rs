//! An augmented B+ tree over closed `u64` intervals.
//!
//! [`IntervalTree`] stores closed intervals `[start, last]` (both ends inclusive, so `last`
//! may be `u64::MAX`), each under a caller-chosen `key` and with a value of type `V`. An
//! entry is identified by `(start, key)`, which must be unique; intervals themselves may
//! repeat and overlap freely. It answers "which stored intervals overlap `[start, last]`?" in
//! ascending `(start, key)` order, which is what the invalidation path needs to find the
//! interval notifiers covering a range.
//!
//! # Design
//!
//! * A B+ tree of fan-out [`FANOUT`] (16): a random stab into a million intervals descends
//!   five or six levels instead of the twenty-odd of a binary tree, and the upper levels are
//!   few enough to stay in cache, so the query pays one or two memory misses instead of one
//!   per level.
//! * Every node stores, per slot, the `start` and `key` (for an inner node: those of the
//!   child's first entry) and the `last` (for an inner node: the maximum `last` of the
//!   child's subtree, as `__subtree_last` in Linux's `interval_tree_generic.h`), each in its
//!   own array: a query scans the `start` array until it passes the range's end and descends
//!   only into children whose maximum reaches the range's start.
//! * Leaves hold the values; inner nodes hold boxed children. Nothing is shared: the tree is
//!   `Send`/`Sync` exactly when `V` is.
//!
//! Queries recurse at most once per level (the height is at most 16 even for `2^32` entries,
//! since every node but the root holds at least [`FANOUT`]` / 4` slots).
//!
//! # Complexity
//!
//! `insert`, `remove`, `get` are `O(FANOUT · log n)` comparisons over a handful of cache
//! lines per level. Enumerating the `k` overlapping intervals costs `O(log n + k)` node
//! visits when the matches are contiguous in start order (as with disjoint or merely
//! touching ranges) and more when matches are scattered among nested, non-matching
//! intervals, the usual bound for max-augmented search trees.

use core::fmt;
use core::ops::ControlFlow;

/// Maximum number of slots (entries of a leaf, children of an inner node) of a node.
pub const FANOUT: usize = 16;
/// A node other than the root below this many slots is merged with or refilled from a
/// sibling.
const MIN_FILL: usize = FANOUT / 4;

/// The slots of one node: `start`, `key` and `last` of each, and the item (a value in a
/// leaf, a child in an inner node). Slots `0..len` are live, in ascending `(start, key)`.
#[repr(C, align(64))]
struct Slots<T> {
    start: [u64; FANOUT],
    last: [u64; FANOUT],
    item: [Option<T>; FANOUT],
    key: [u64; FANOUT],
    len: usize,
}

/// A slot's contents out of its node.
type Slot<T> = (u64, u64, u64, T);

impl<T> Slots<T> {
    fn new() -> Self {
        Slots {
            start: [0; FANOUT],
            last: [0; FANOUT],
            item: core::array::from_fn(|_| None),
            key: [0; FANOUT],
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == FANOUT
    }

    /// The first slot whose `(start, key)` is not below `(start, key)`: `Ok` if equal. Reads
    /// the `key` array only among equal starts.
    #[inline]
    fn search(&self, start: u64, key: u64) -> Result<usize, usize> {
        let n = self.len;
        let mut i = self.start[..n].iter().take_while(|&&s| s < start).count();
        while i < n && self.start[i] == start {
            if self.key[i] >= key {
                return if self.key[i] == key { Ok(i) } else { Err(i) };
            }
            i += 1;
        }
        Err(i)
    }

    /// The child of an inner node whose subtree would hold `(start, key)`.
    #[inline]
    fn child_for(&self, start: u64, key: u64) -> usize {
        match self.search(start, key) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        }
    }

    /// Inserts a slot at `i`; the caller checked that the node is not full.
    fn insert_at(&mut self, i: usize, (start, last, key, item): Slot<T>) {
        debug_assert!(self.len < FANOUT && i <= self.len);
        let n = self.len;
        self.start.copy_within(i..n, i + 1);
        self.last.copy_within(i..n, i + 1);
        self.key.copy_within(i..n, i + 1);
        self.item[i..=n].rotate_right(1);
        self.start[i] = start;
        self.last[i] = last;
        self.key[i] = key;
        self.item[i] = Some(item);
        self.len += 1;
    }

    /// Removes slot `i` (live).
    fn remove_at(&mut self, i: usize) -> Option<Slot<T>> {
        if i >= self.len {
            return None;
        }
        let n = self.len;
        let out = (
            self.start[i],
            self.last[i],
            self.key[i],
            self.item[i].take()?,
        );
        self.start.copy_within(i + 1..n, i);
        self.last.copy_within(i + 1..n, i);
        self.key.copy_within(i + 1..n, i);
        self.item[i..n].rotate_left(1);
        self.len -= 1;
        Some(out)
    }

    /// Moves the upper half of the slots into a new node.
    fn split_off_half(&mut self) -> Slots<T> {
        let mut right = Slots::new();
        let keep = self.len / 2;
        let moved = self.len - keep;
        right.start[..moved].copy_from_slice(&self.start[keep..self.len]);
        right.last[..moved].copy_from_slice(&self.last[keep..self.len]);
        right.key[..moved].copy_from_slice(&self.key[keep..self.len]);
        for (dst, src) in right.item.iter_mut().zip(&mut self.item[keep..self.len]) {
            *dst = src.take();
        }
        right.len = moved;
        self.len = keep;
        right
    }

    /// Moves every slot of `other` (all after this node's) to the end of this node; the
    /// caller checked that they fit.
    fn append(&mut self, other: &mut Slots<T>) {
        debug_assert!(self.len + other.len <= FANOUT);
        let (at, n) = (self.len, other.len);
        self.start[at..at + n].copy_from_slice(&other.start[..n]);
        self.last[at..at + n].copy_from_slice(&other.last[..n]);
        self.key[at..at + n].copy_from_slice(&other.key[..n]);
        for (dst, src) in self.item[at..at + n].iter_mut().zip(&mut other.item[..n]) {
            *dst = src.take();
        }
        self.len += n;
        other.len = 0;
    }

    /// The maximum `last` over the live slots.
    fn max_last(&self) -> u64 {
        self.last[..self.len].iter().copied().max().unwrap_or(0)
    }

    fn first_key(&self) -> (u64, u64) {
        (self.start[0], self.key[0])
    }
}

/// Sentinel index: no node.
const NIL: u32 = u32::MAX;
/// Inner levels a tree can have: every node but the root holds at least [`MIN_FILL`]
/// slots, so `MAX_DEPTH` levels would need more than `2^32` entries.
const MAX_DEPTH: usize = 17;

/// A leaf: values.
type Leaf<V> = Slots<V>;
/// An inner node: children, as indices into the leaf arena (the level above the leaves) or
/// into the inner arena (the levels above).
type Inner = Slots<u32>;

/// Two distinct elements `v[a]`, `v[b]` of a slice, mutably, in either index order.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> Option<(&mut T, &mut T)> {
    if a < b {
        let (x, y) = v.split_at_mut(b);
        Some((x.get_mut(a)?, y.get_mut(0)?))
    } else if b < a {
        let (x, y) = v.split_at_mut(a);
        Some((y.get_mut(0)?, x.get_mut(b)?))
    } else {
        None
    }
}

/// Merges `r` into `l` when both fit in one node, else moves one slot to the short one (`l`
/// if `into_left`). Returns whether it merged (`r` is then empty).
fn even_out<T>(l: &mut Slots<T>, r: &mut Slots<T>, into_left: bool) -> bool {
    if l.len + r.len <= FANOUT {
        l.append(r);
        return true;
    }
    if into_left {
        if let Some(slot) = r.remove_at(0) {
            l.insert_at(l.len, slot);
        }
    } else if let Some(slot) = l.remove_at(l.len - 1) {
        r.insert_at(0, slot);
    }
    false
}

/// Inserts `slot` at `i` of `s`, splitting `s` if it is full: the split-off upper half comes
/// back.
fn insert_splitting<T>(s: &mut Slots<T>, i: usize, slot: Slot<T>) -> Option<Slots<T>> {
    if !s.is_full() {
        s.insert_at(i, slot);
        return None;
    }
    let mut right = s.split_off_half();
    if i <= s.len {
        s.insert_at(i, slot);
    } else {
        right.insert_at(i - s.len, slot);
    }
    Some(right)
}

/// An augmented B+ tree of closed `u64` intervals with values, each entry named by a unique
/// `(start, key)`.
///
/// See the [module documentation](self) for ordering and complexity.
///
/// ```
/// use core::ops::ControlFlow;
/// use mmu_notifier::interval_tree::IntervalTree;
///
/// let mut tree = IntervalTree::new();
/// tree.insert(0x1000, 0x1fff, 1, "a").unwrap();
/// tree.insert(0x3000, u64::MAX, 2, "b").unwrap();
/// assert_eq!(tree.insert(0x3000, 0x3fff, 2, "dup"), Err("dup"));
/// let mut hits = Vec::new();
/// tree.for_each_overlap(0x1800, 0x3000, |_, _, _, v| {
///     hits.push(*v);
///     ControlFlow::Continue(())
/// });
/// assert_eq!(hits, ["a", "b"]);
/// assert_eq!(tree.remove(0x3000, 2), Some("b"));
/// assert_eq!(tree.remove(0x3000, 2), None);
/// ```
pub struct IntervalTree<V> {
    /// The nodes live in two arenas (dense memory: fewer pages, fewer TLB misses than one
    /// allocation per node) addressed by `u32`; freed nodes are reused.
    leaves: Vec<Leaf<V>>,
    inners: Vec<Inner>,
    free_leaves: Vec<u32>,
    free_inners: Vec<u32>,
    root: u32,
    /// Inner levels above the leaves (0: the root is a leaf).
    depth: usize,
    len: usize,
}

impl<V> Default for IntervalTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for IntervalTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        self.for_each_overlap(0, u64::MAX, |s, l, k, v| {
            list.entry(&(s, l, k, v));
            ControlFlow::Continue(())
        });
        list.finish()
    }
}

/// What one level of an insert hands to the level above: the index of the node split off
/// the child, if it split.
type Carry = Option<u32>;

impl<V> IntervalTree<V> {
    /// Creates an empty tree (one empty leaf).
    pub fn new() -> Self {
        Self {
            leaves: vec![Slots::new()],
            inners: Vec::new(),
            free_leaves: Vec::new(),
            free_inners: Vec::new(),
            root: 0,
            depth: 0,
            len: 0,
        }
    }

    /// Number of intervals stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree stores no interval.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Height of the tree (a lone leaf is 1). For tests and benchmarks.
    pub fn height(&self) -> usize {
        self.depth + 1
    }

    fn alloc_leaf(&mut self, s: Leaf<V>) -> u32 {
        alloc_slot(&mut self.leaves, &mut self.free_leaves, s)
    }

    fn alloc_inner(&mut self, s: Inner) -> u32 {
        alloc_slot(&mut self.inners, &mut self.free_inners, s)
    }

    /// `(first start, maximum last, first key, slot count)` of node `idx` at `level`
    /// (0: a leaf).
    fn summary(&self, level: usize, idx: u32) -> (u64, u64, u64, usize) {
        fn of<T>(s: &Slots<T>) -> (u64, u64, u64, usize) {
            (s.start[0], s.max_last(), s.key[0], s.len)
        }
        if level == 0 {
            of(&self.leaves[idx as usize])
        } else {
            of(&self.inners[idx as usize])
        }
    }

    /// Refreshes the summary of child `i` of inner node `p`, whose children are at `level`;
    /// returns the child's slot count.
    fn refresh(&mut self, p: u32, i: usize, level: usize) -> usize {
        let Some(child) = self.inners[p as usize].item[i] else {
            return 0;
        };
        let (s, l, k, n) = self.summary(level, child);
        if n > 0 {
            let parent = &mut self.inners[p as usize];
            (parent.start[i], parent.last[i], parent.key[i]) = (s, l, k);
        }
        n
    }

    /// The path from the root to the leaf that holds or would hold `(start, key)`: each
    /// inner node with the slot taken, and the leaf.
    fn descend(&self, start: u64, key: u64, path: &mut [(u32, usize); MAX_DEPTH]) -> u32 {
        let mut node = self.root;
        for step in path.iter_mut().take(self.depth) {
            let s = &self.inners[node as usize];
            let i = s.child_for(start, key);
            *step = (node, i);
            node = s.item[i].unwrap_or(NIL);
        }
        node
    }

    /// Inserts the closed interval `[start, last]` under `key` with `value`.
    ///
    /// Errors: an entry `(start, key)` is already present (the tree is unchanged and `value`
    /// comes back). The caller keeps `start <= last`; an inverted interval is stored as
    /// given and reported by a query `[qs, ql]` exactly when `start <= ql && last >= qs`.
    pub fn insert(&mut self, start: u64, last: u64, key: u64, value: V) -> Result<(), V> {
        let mut path = [(NIL, 0); MAX_DEPTH];
        let leaf_idx = self.descend(start, key, &mut path);
        let Some(leaf) = self.leaves.get_mut(leaf_idx as usize) else {
            return Err(value);
        };
        let i = match leaf.search(start, key) {
            Ok(_) => return Err(value),
            Err(i) => i,
        };
        let mut carry: Carry = insert_splitting(leaf, i, (start, last, key, value))
            .map(|right| self.alloc_leaf(right));
        for level in 0..self.depth {
            let (p, i) = path[self.depth - 1 - level];
            let Some(new) = carry else {
                // No split below: the child gained one entry, so its summary only widens,
                // and once a level is unchanged, none above changes either.
                let parent = &mut self.inners[p as usize];
                let first = (start, key) < (parent.start[i], parent.key[i]);
                if !first && last <= parent.last[i] {
                    break;
                }
                if first {
                    (parent.start[i], parent.key[i]) = (start, key);
                }
                parent.last[i] = parent.last[i].max(last);
                continue;
            };
            self.refresh(p, i, level);
            let (s, l, k, _) = self.summary(level, new);
            carry = insert_splitting(&mut self.inners[p as usize], i + 1, (s, l, k, new))
                .map(|right| self.alloc_inner(right));
        }
        if let Some(new) = carry {
            let mut top = Slots::new();
            for child in [self.root, new] {
                let (s, l, k, _) = self.summary(self.depth, child);
                top.insert_at(top.len, (s, l, k, child));
            }
            self.root = self.alloc_inner(top);
            self.depth += 1;
        }
        self.len += 1;
        Ok(())
    }

    /// Removes the entry `(start, key)` and returns its value, or `None` if there is none.
    pub fn remove(&mut self, start: u64, key: u64) -> Option<V> {
        let mut path = [(NIL, 0); MAX_DEPTH];
        let leaf_idx = self.descend(start, key, &mut path);
        let leaf = self.leaves.get_mut(leaf_idx as usize)?;
        let i = leaf.search(start, key).ok()?;
        let (_, last, _, value) = leaf.remove_at(i)?;
        let mut fill = leaf.len;
        self.len -= 1;
        for level in 0..self.depth {
            let (p, i) = path[self.depth - 1 - level];
            let parent = &self.inners[p as usize];
            if fill >= MIN_FILL
                && last < parent.last[i]
                && (start, key) != (parent.start[i], parent.key[i])
            {
                // The child kept its first entry and its maximum (held by another entry)
                // and needs no rebalancing: nothing above changes.
                break;
            }
            if self.refresh(p, i, level) < MIN_FILL {
                self.rebalance(p, i, level);
            }
            fill = self.inners[p as usize].len;
        }
        // An inner root left with one child hands the root to it.
        if self.depth > 0 && self.inners[self.root as usize].len == 1 {
            let old = self.root;
            if let Some(child) = self.inners[old as usize].remove_at(0) {
                self.root = child.3;
                self.depth -= 1;
                self.free_inners.push(old);
            }
        }
        Some(value)
    }

    /// Child `i` of inner node `p` (children at `level`) fell below [`MIN_FILL`]: merges it
    /// with a neighbour or moves one slot over from it.
    fn rebalance(&mut self, p: u32, i: usize, level: usize) {
        let parent = &self.inners[p as usize];
        if parent.len < 2 {
            return;
        }
        let lo = if i + 1 < parent.len { i } else { i - 1 };
        let (Some(a), Some(b)) = (parent.item[lo], parent.item[lo + 1]) else {
            return;
        };
        let (a, b, into_left) = (a as usize, b as usize, i == lo);
        let merged = if level == 0 {
            two_mut(&mut self.leaves, a, b).map(|(l, r)| even_out(l, r, into_left))
        } else {
            two_mut(&mut self.inners, a, b).map(|(l, r)| even_out(l, r, into_left))
        };
        match merged {
            Some(true) => {
                self.inners[p as usize].remove_at(lo + 1);
                if level == 0 {
                    self.free_leaves.push(b as u32);
                } else {
                    self.free_inners.push(b as u32);
                }
            }
            Some(false) => {
                self.refresh(p, lo + 1, level);
            }
            None => return,
        }
        self.refresh(p, lo, level);
    }

    /// The leaf slot of entry `(start, key)`.
    fn find(&self, start: u64, key: u64) -> Option<(u32, usize)> {
        let mut node = self.root;
        for _ in 0..self.depth {
            let s = &self.inners[node as usize];
            node = s.item[s.child_for(start, key)]?;
        }
        let i = self.leaves.get(node as usize)?.search(start, key).ok()?;
        Some((node, i))
    }

    /// The value of entry `(start, key)`.
    pub fn get(&self, start: u64, key: u64) -> Option<&V> {
        let (leaf, i) = self.find(start, key)?;
        self.leaves[leaf as usize].item[i].as_ref()
    }

    /// The value of entry `(start, key)`, mutably.
    pub fn get_mut(&mut self, start: u64, key: u64) -> Option<&mut V> {
        let (leaf, i) = self.find(start, key)?;
        self.leaves[leaf as usize].item[i].as_mut()
    }

    /// The `last` of entry `(start, key)`.
    pub fn last_of(&self, start: u64, key: u64) -> Option<u64> {
        let (leaf, i) = self.find(start, key)?;
        Some(self.leaves[leaf as usize].last[i])
    }

    /// Whether the entry `(start, key)` is present.
    pub fn contains(&self, start: u64, key: u64) -> bool {
        self.find(start, key).is_some()
    }

    /// Calls `f(start, last, key, &value)` for every stored interval that overlaps the closed
    /// range `[start, last]`, in ascending `(start, key)` order, stopping as soon as `f`
    /// returns [`ControlFlow::Break`].
    ///
    /// A stored `[s, l]` overlaps when `s <= last && l >= start`. An inverted query
    /// (`start > last`) matches nothing.
    #[inline]
    pub fn for_each_overlap<F>(&self, start: u64, last: u64, mut f: F)
    where
        F: FnMut(u64, u64, u64, &V) -> ControlFlow<()>,
    {
        if start <= last {
            let _ = self.visit(self.root, self.depth, start, last, &mut f);
        }
    }

    /// Calls `f` for every entry of subtree `idx` (at `level`) overlapping `[start, last]`.
    fn visit<F>(&self, idx: u32, level: usize, start: u64, last: u64, f: &mut F) -> ControlFlow<()>
    where
        F: FnMut(u64, u64, u64, &V) -> ControlFlow<()>,
    {
        if level == 0 {
            let Some(s) = self.leaves.get(idx as usize) else {
                return ControlFlow::Continue(());
            };
            for i in 0..s.len {
                if s.start[i] > last {
                    break;
                }
                if s.last[i] >= start {
                    if let Some(v) = &s.item[i] {
                        f(s.start[i], s.last[i], s.key[i], v)?;
                    }
                }
            }
        } else {
            let Some(s) = self.inners.get(idx as usize) else {
                return ControlFlow::Continue(());
            };
            for i in 0..s.len {
                if s.start[i] > last {
                    break;
                }
                if s.last[i] >= start {
                    if let Some(child) = s.item[i] {
                        self.visit(child, level - 1, start, last, f)?;
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// The first (lowest `(start, key)`) interval overlapping `[start, last]`, as
    /// `(start, last, key)`.
    pub fn first_overlap(&self, start: u64, last: u64) -> Option<(u64, u64, u64)> {
        let mut first = None;
        self.for_each_overlap(start, last, |s, l, k, _| {
            first = Some((s, l, k));
            ControlFlow::Break(())
        });
        first
    }

    /// Removes every interval.
    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// Checks the structural invariants: key order, node fill, equal leaf depths, cached
    /// first keys and subtree maxima, entry and node counts. Meant for tests; `O(n)`.
    pub fn validate(&self) -> Result<(), String> {
        let mut nodes = (0, 0);
        let (count, ..) = self.validate_node(self.root, self.depth, true, &mut nodes)?;
        if count != self.len {
            return Err(format!("{count} entries, len says {}", self.len));
        }
        if nodes.0 + self.free_leaves.len() != self.leaves.len()
            || nodes.1 + self.free_inners.len() != self.inners.len()
        {
            return Err("arena nodes neither reachable nor free".into());
        }
        Ok(())
    }

    /// Checks subtree `idx` at `level`; returns its entry count, first and last keys and
    /// maximum `last`; counts its (leaf, inner) nodes into `nodes`.
    #[allow(clippy::type_complexity)]
    fn validate_node(
        &self,
        idx: u32,
        level: usize,
        is_root: bool,
        nodes: &mut (usize, usize),
    ) -> Result<(usize, (u64, u64), (u64, u64), u64), String> {
        fn check<T>(s: &Slots<T>, is_root: bool) -> Result<(), String> {
            let n = s.len;
            if n > FANOUT || (!is_root && n < MIN_FILL) {
                return Err(format!("node with {n} slots"));
            }
            if !(1..n).all(|i| (s.start[i - 1], s.key[i - 1]) < (s.start[i], s.key[i])) {
                return Err("node out of order".into());
            }
            if s.item[..n].iter().any(Option::is_none) || s.item[n..].iter().any(Option::is_some) {
                return Err("items do not match the length".into());
            }
            Ok(())
        }
        if level == 0 {
            let s = self.leaves.get(idx as usize).ok_or("leaf out of bounds")?;
            check(s, is_root)?;
            nodes.0 += 1;
            if s.len == 0 {
                return Ok((0, (0, 0), (0, 0), 0));
            }
            let n = s.len;
            return Ok((
                n,
                s.first_key(),
                (s.start[n - 1], s.key[n - 1]),
                s.max_last(),
            ));
        }
        let s = self.inners.get(idx as usize).ok_or("inner out of bounds")?;
        check(s, is_root)?;
        nodes.1 += 1;
        if s.len < 2 && is_root {
            return Err("inner root with fewer than two children".into());
        }
        let mut count = 0;
        let mut prev: Option<(u64, u64)> = None;
        for i in 0..s.len {
            let child = s.item[i].ok_or("missing child")?;
            let (c, first, lastk, max) = self.validate_node(child, level - 1, false, nodes)?;
            if first != (s.start[i], s.key[i]) || max != s.last[i] {
                return Err(format!("stale summary of child {i}"));
            }
            if prev.is_some_and(|p| p >= first) {
                return Err("children out of key order".into());
            }
            prev = Some(lastk);
            count += c;
        }
        Ok((count, s.first_key(), prev.unwrap_or((0, 0)), s.max_last()))
    }
}

/// Puts `s` into a free slot of `arena` (one of `free`'s) or a new one; returns its index.
fn alloc_slot<T>(arena: &mut Vec<T>, free: &mut Vec<u32>, s: T) -> u32 {
    match free.pop() {
        Some(i) => {
            arena[i as usize] = s;
            i
        }
        None => {
            arena.push(s);
            (arena.len() - 1) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(t: &IntervalTree<u32>, s: u64, l: u64) -> Vec<(u64, u64, u32)> {
        let mut out = Vec::new();
        t.for_each_overlap(s, l, |s, l, _, v| {
            out.push((s, l, *v));
            ControlFlow::Continue(())
        });
        out
    }

    #[test]
    fn empty() {
        let t: IntervalTree<u32> = IntervalTree::default();
        assert!(t.is_empty());
        assert_eq!(t.first_overlap(0, u64::MAX), None);
        assert_eq!(t.get(0, 0), None);
        t.validate().unwrap();
        assert_eq!(t.height(), 1);
    }

    #[test]
    fn single_and_duplicate_key() {
        let mut t = IntervalTree::new();
        t.insert(10, 20, 7, 1u32).unwrap();
        assert_eq!(t.insert(10, 30, 7, 2), Err(2));
        assert_eq!(t.len(), 1);
        for (s, l, hit) in [
            (0, 9, false),
            (0, 10, true),
            (20, 30, true),
            (21, 30, false),
        ] {
            assert_eq!(t.first_overlap(s, l).is_some(), hit, "[{s}, {l}]");
        }
        assert_eq!(collect(&t, 15, 14), [], "inverted query");
        *t.get_mut(10, 7).unwrap() = 3;
        assert_eq!(t.last_of(10, 7), Some(20));
        assert_eq!(t.remove(10, 7), Some(3));
        assert_eq!(t.remove(10, 7), None);
        t.validate().unwrap();
    }

    #[test]
    fn grows_and_shrinks_balanced() {
        let mut t = IntervalTree::new();
        let n = 1u64 << 14;
        for i in 0..n {
            t.insert(i * 10, i * 10 + 5, i, i as u32).unwrap();
        }
        t.validate().unwrap();
        assert!(t.height() <= 6, "height {}", t.height());
        assert_eq!(collect(&t, 13, 27), [(10, 15, 1), (20, 25, 2)]);
        for i in (0..n).step_by(2) {
            assert_eq!(t.remove(i * 10, i), Some(i as u32));
        }
        t.validate().unwrap();
        for i in (1..n).rev().step_by(2) {
            assert_eq!(t.remove(i * 10, i), Some(i as u32));
            if i % 1001 == 1 {
                t.validate().unwrap();
            }
        }
        assert!(t.is_empty());
        t.validate().unwrap();
        assert_eq!(t.height(), 1);
    }

    #[test]
    fn nested_and_early_break() {
        let mut t = IntervalTree::new();
        for i in 0..50u64 {
            t.insert(i * 2, 1000 - i, i, i as u32).unwrap();
            t.insert(i * 2 + 1, i * 2 + 1, 100 + i, 100 + i as u32)
                .unwrap();
        }
        t.validate().unwrap();
        let hits = collect(&t, 500, 600);
        assert_eq!(hits.len(), 50);
        assert!(hits.iter().all(|h| h.2 < 100));
        let mut seen = 0;
        t.for_each_overlap(500, 600, |_, _, _, _| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(seen, 3);
        assert_eq!(t.first_overlap(500, 600), Some((0, 1000, 0)));
    }

    #[test]
    fn max_endpoints_and_debug() {
        let mut t = IntervalTree::new();
        t.insert(u64::MAX, u64::MAX, 0, 1u32).unwrap();
        t.insert(0, u64::MAX, 0, 2).unwrap();
        t.insert(0, 0, 1, 3).unwrap();
        assert_eq!(
            collect(&t, u64::MAX, u64::MAX),
            [(0, u64::MAX, 2), (u64::MAX, u64::MAX, 1)]
        );
        assert_eq!(collect(&t, 0, 0), [(0, u64::MAX, 2), (0, 0, 3)]);
        assert_eq!(
            format!("{t:?}"),
            format!(
                "[(0, {m}, 0, 2), (0, 0, 1, 3), ({m}, {m}, 0, 1)]",
                m = u64::MAX
            )
        );
        t.clear();
        assert!(t.is_empty());
    }
}
