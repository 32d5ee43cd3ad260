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
//! * A B+ tree of fan-out [`LEAF_FANOUT`] (16 entries per leaf) and [`INNER_FANOUT`] (16
//!   children per inner node): a random stab into a million intervals descends six levels
//!   instead of the twenty-odd of a binary tree, and the upper levels are few enough to stay
//!   in cache, so the query pays one or two memory misses instead of one per level.
//! * Every node stores, per slot, the `start` and `key` (for an inner node: those of the
//!   child's first entry) and the `last` (for an inner node: the maximum `last` of the
//!   child's subtree, as `__subtree_last` in Linux's `interval_tree_generic.h`), each in its
//!   own array, and the items (values, or four-byte child ids). A query reads only `start`,
//!   `last` and the items it takes: it scans `start` until it passes the range's end and
//!   descends only into children whose maximum reaches the range's start. `key` is read only
//!   among equal starts (by insert, remove and lookups), and unused slots hold `start ==
//!   u64::MAX`, `last == 0`, so a scan needs no slot count either: both lie on lines a query
//!   does not touch.
//! * Per node, a query asks the CPU for the item lines before scanning (a software
//!   prefetch), a descent by key for the `start` and item lines, and insert and remove for
//!   the whole leaf they change: on a node that missed the cache, the child or value taken
//!   next (or the binary search's second line) arrives with the first line instead of
//!   costing a second round trip.
//! * Insert, remove and lookups find their slot by a binary search over the 16 starts whose
//!   steps select instead of branching (a random key costs no misprediction); the query
//!   keeps a forward scan, which stops at the first start past the range.
//! * The nodes live in arenas (one vector per level, addressed by four-byte ids; freed
//!   nodes are reused). A level's nodes lie together, so the upper levels of a large tree
//!   occupy a few pages instead of being scattered among the leaves; past 2 MiB an arena's
//!   buffer is advised to transparent huge pages (`madvise(MADV_HUGEPAGE)`) before it is
//!   filled, which removes most of the TLB misses of a random descent (on the 2-core VM the
//!   benchmarks ran on, a dependent random load from 64 MiB costs about 300 ns with 4 KiB
//!   pages and 180 ns with huge pages; from 4 MiB, 61 and 37 ns).
//! * A full node splits in half, or off centre when the new slot goes past either end, so
//!   ordered inserts leave nodes three-quarters full (see `insert_splitting`).
//! * Leaves hold the values; nothing is shared: the tree is `Send`/`Sync` exactly when `V`
//!   is.
//!
//! Queries recurse at most once per level (the height is at most 17 even for `2^32` entries,
//! since every node but the root holds at least a quarter of its fan-out).
//!
//! # Measured
//!
//! 2026-12-01 on the shared 2-core VM (load average 3–4), 1M disjoint one-page intervals
//! inserted in random order, random targets, medians. `cargo bench -p mmu-notifier --bench
//! interval_tree` (one run, 20:38 UTC): a stab 291 ns against the standard `BTreeMap`
//! finding one key 284 ns and a binary search of a sorted `Vec` 176 ns; insert + remove of a
//! free page 483 ns against `BTreeMap<(start, key), _>` 704 ns (0.69×). The previous layout
//! of this tree (one arena for all inner levels, 4 KiB pages, `key` and `len` on the query's
//! lines, no prefetch, linear in-node search, splits in half), compiled side by side in one
//! process: a stab with targets that never repeat 289 ns against 562 ns (0.51×; the sorted
//! `Vec` 274 ns in the same run; medians of 15 rounds); in another run, insert + remove of
//! a free page 540 ns against 706 ns and a lone insert 410 ns against 514 ns (minima over 21
//! rounds; the medians moved by ±30 % with the load). Prefetching the `start` lines of each
//! inner node on a descent by key (added after the bench run above) took another 4–8 % off
//! insert + remove and a lone insert in two same-process comparisons (438 / 433 against
//! 459 / 455 ns minima), the stab unchanged.
//!
//! Tried and dropped (same harness): a branchless scan of all 16 slots of a node into a bit
//! mask (no mispredicted loop exit, but about 130 instructions per level: 96 ns against
//! 30 ns for an in-cache stab at 1M, and no faster at random); other fan-outs (leaf /
//! inner 32 / 16, 16 / 32, 24 / 24: a stab with fresh targets 1.27–1.32× of the sorted
//! `Vec` against 1.07–1.08× for 16 / 16 in the same processes, inserts within the noise).
//!
//! # Complexity
//!
//! `insert`, `remove`, `get` are `O(FANOUT · log n)` comparisons over a handful of cache
//! lines per level. Enumerating the `k` overlapping intervals costs `O(log n + k)` node
//! visits when the matches are contiguous in start order (as with disjoint or merely
//! touching ranges) and more when matches are scattered among nested, non-matching
//! intervals, the usual bound for max-augmented search trees.

use core::fmt;
use core::num::NonZeroU32;
use core::ops::{ControlFlow, Index, IndexMut};

/// Maximum number of entries of a leaf.
pub const LEAF_FANOUT: usize = 16;
/// Maximum number of children of an inner node.
pub const INNER_FANOUT: usize = 16;

/// The index of a node in its arena, plus one (so that `Option<NodeId>` is four bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct NodeId(NonZeroU32);

impl NodeId {
    /// A placeholder for path entries not yet written.
    const UNSET: NodeId = NodeId(NonZeroU32::MAX);

    fn index(self) -> usize {
        self.0.get() as usize - 1
    }
}

/// The slots of one node: `start`, `key` and `last` of each, and the item (a value in a
/// leaf, a child in an inner node), each kind in its own array. Slots `0..len` are live, in
/// ascending `(start, key)`; the others hold `start == u64::MAX`, `last == 0` and no item, so
/// that a query can scan the node without reading `len` (see [`IntervalTree::visit`]).
///
/// The arrays a query reads (`start`, `last`, `item`) come first and are contiguous; `key`
/// (read only among equal starts, by insert, remove and lookups) and `len` come last.
#[repr(C, align(64))]
struct Slots<T, const N: usize> {
    start: [u64; N],
    last: [u64; N],
    item: [Option<T>; N],
    key: [u64; N],
    len: u32,
}

/// A slot's contents out of its node.
type Slot<T> = (u64, u64, u64, T);

impl<T, const N: usize> Slots<T, N> {
    /// A node other than the root below this many slots is merged with or refilled from a
    /// sibling.
    const MIN_FILL: usize = N / 4;
    /// A split leaves both halves above the minimum fill.
    const FAN_OUT_OK: () = assert!(N >= 8);

    fn new() -> Self {
        let () = Self::FAN_OUT_OK;
        Slots {
            start: [u64::MAX; N],
            last: [0; N],
            item: core::array::from_fn(|_| None),
            key: [0; N],
            len: 0,
        }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.len as usize
    }

    fn is_full(&self) -> bool {
        self.len() == N
    }

    /// Asks the CPU to fetch the `item` array's cache lines now: a query learns which item it
    /// needs only after comparing the `start` and `last` arrays, and would otherwise wait for
    /// a second memory round trip on a node that missed the cache.
    #[inline(always)]
    fn prefetch_items(&self) {
        prefetch_lines(
            self.item.as_ptr().cast(),
            core::mem::size_of_val(&self.item),
        );
    }

    /// Asks the CPU to fetch what a search of an inner node reads: the `start` lines (a
    /// binary search would otherwise discover its second line only after its first probe)
    /// and the items.
    #[inline(always)]
    fn prefetch_search(&self) {
        prefetch_lines(
            self.start.as_ptr().cast(),
            core::mem::size_of_val(&self.start),
        );
        self.prefetch_items();
    }

    /// Asks the CPU to fetch the whole node: an insert or remove shifts every array of the
    /// leaf it changes, and would otherwise discover the lines one after the other.
    #[inline(always)]
    fn prefetch_all(&self) {
        prefetch_lines((self as *const Self).cast(), core::mem::size_of::<Self>());
    }

    /// The first slot whose `(start, key)` is not below `(start, key)`: `Ok` if equal. Reads
    /// the `key` array only among equal starts.
    #[inline]
    fn search(&self, start: u64, key: u64) -> Result<usize, usize> {
        let n = self.len();
        // The slots below `start`, by a binary search without branches (the steps select,
        // so a random target costs no mispredictions). Unused slots hold `u64::MAX`, never
        // below `start`: the count is at most `n`.
        let mut base = 0;
        let mut size = N;
        while size > 1 {
            let half = size / 2;
            if self.start[base + half] < start {
                base += half;
            }
            size -= half;
        }
        let mut i = base + usize::from(self.start[base] < start);
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

    /// Marks slots `from..to` unused.
    fn clear_slots(&mut self, from: usize, to: usize) {
        self.start[from..to].fill(u64::MAX);
        self.last[from..to].fill(0);
    }

    /// Inserts a slot at `i`; the caller checked that the node is not full.
    fn insert_at(&mut self, i: usize, (start, last, key, item): Slot<T>) {
        let n = self.len();
        debug_assert!(n < N && i <= n);
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
        let n = self.len();
        if i >= n {
            return None;
        }
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
        self.clear_slots(n - 1, n);
        self.len -= 1;
        Some(out)
    }

    /// Moves the slots from `keep` on into a new node.
    fn split_off(&mut self, keep: usize) -> Self {
        let mut right = Self::new();
        let n = self.len();
        let moved = n - keep;
        right.start[..moved].copy_from_slice(&self.start[keep..n]);
        right.last[..moved].copy_from_slice(&self.last[keep..n]);
        right.key[..moved].copy_from_slice(&self.key[keep..n]);
        for (dst, src) in right.item.iter_mut().zip(&mut self.item[keep..n]) {
            *dst = src.take();
        }
        self.clear_slots(keep, n);
        right.len = moved as u32;
        self.len = keep as u32;
        right
    }

    /// Moves every slot of `other` (all after this node's) to the end of this node; the
    /// caller checked that they fit.
    fn append(&mut self, other: &mut Self) {
        let (at, n) = (self.len(), other.len());
        debug_assert!(at + n <= N);
        self.start[at..at + n].copy_from_slice(&other.start[..n]);
        self.last[at..at + n].copy_from_slice(&other.last[..n]);
        self.key[at..at + n].copy_from_slice(&other.key[..n]);
        for (dst, src) in self.item[at..at + n].iter_mut().zip(&mut other.item[..n]) {
            *dst = src.take();
        }
        other.clear_slots(0, n);
        self.len += n as u32;
        other.len = 0;
    }

    /// The maximum `last` over the live slots (unused ones hold 0).
    fn max_last(&self) -> u64 {
        self.last.iter().copied().max().unwrap_or(0)
    }

    fn first_key(&self) -> (u64, u64) {
        (self.start[0], self.key[0])
    }

    /// `(first start, maximum last, first key, slot count)`.
    fn summary(&self) -> (u64, u64, u64, usize) {
        (self.start[0], self.max_last(), self.key[0], self.len())
    }
}

/// A hint to fetch the cache lines of `[p, p + len)` (nothing on targets without one).
#[inline(always)]
pub(crate) fn prefetch_lines(p: *const u8, len: usize) {
    for off in (0..len).step_by(64) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that never faults and has no visible effect, whatever
        // the address (the SSE intrinsic is always available on x86_64).
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                p.wrapping_add(off).cast(),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = p.wrapping_add(off);
    }
}

/// The size of a transparent huge page on x86_64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Advises the kernel to back the whole huge pages inside `[p, p + len)` with transparent
/// huge pages (`madvise(MADV_HUGEPAGE)`; with THP in `madvise` mode, the default of many
/// distributions, nothing else asks for them). Best effort: errors are ignored (the memory
/// stays as it is).
fn advise_huge_pages(p: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        let from = (p as usize).next_multiple_of(HUGE_PAGE);
        let to = (p as usize + len) / HUGE_PAGE * HUGE_PAGE;
        if to > from {
            // SAFETY: advice on whole pages inside an allocation this arena owns; it changes
            // neither the contents nor the validity of any memory.
            let _ =
                unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

/// Inner levels a tree can have: every node but the root holds at least a quarter of its
/// fan-out, so this many levels would need more than `2^32` entries.
const MAX_DEPTH: usize = 17;

/// A leaf: values.
type Leaf<V> = Slots<V, LEAF_FANOUT>;
/// An inner node: children, as ids in the arena of the level below.
type Inner = Slots<NodeId, INNER_FANOUT>;

/// Merges `r` into `l` when both fit in one node, else moves one slot to the short one (`l`
/// if `into_left`). Returns whether it merged (`r` is then empty).
fn even_out<T, const N: usize>(l: &mut Slots<T, N>, r: &mut Slots<T, N>, into_left: bool) -> bool {
    if l.len() + r.len() <= N {
        l.append(r);
        return true;
    }
    if into_left {
        if let Some(slot) = r.remove_at(0) {
            l.insert_at(l.len(), slot);
        }
    } else if let Some(slot) = l.remove_at(l.len() - 1) {
        r.insert_at(0, slot);
    }
    false
}

/// Inserts `slot` at `i` of `s`, splitting `s` if it is full: the split-off upper part comes
/// back.
///
/// A node splits in half, except when the new slot goes past its end or before its start:
/// then the side it joins keeps only the minimum fill (as the standard library's B-tree
/// splits off centre). Entries inserted in ascending (or descending) order, as an address
/// space is often filled, then leave nodes three-quarters full instead of half full.
fn insert_splitting<T, const N: usize>(
    s: &mut Slots<T, N>,
    i: usize,
    slot: Slot<T>,
) -> Option<Slots<T, N>> {
    if !s.is_full() {
        s.insert_at(i, slot);
        return None;
    }
    let min = Slots::<T, N>::MIN_FILL;
    let keep = match i {
        0 => min,
        _ if i == N => N - min,
        _ => N / 2,
    };
    let mut right = s.split_off(keep);
    if i <= s.len() {
        s.insert_at(i, slot);
    } else {
        right.insert_at(i - s.len(), slot);
    }
    Some(right)
}

/// The nodes of one level, in one vector (dense memory: fewer pages, fewer TLB misses than
/// one allocation per node) addressed by [`NodeId`]; freed nodes are reused.
struct Arena<T> {
    nodes: Vec<T>,
    free: Vec<NodeId>,
}

impl<T> Arena<T> {
    const fn new() -> Self {
        Arena {
            nodes: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Puts `node` into a free slot or a new one.
    fn alloc(&mut self, node: T) -> NodeId {
        if let Some(id) = self.free.pop() {
            self.nodes[id.index()] = node;
            return id;
        }
        if self.nodes.len() == self.nodes.capacity() {
            self.grow();
        }
        self.nodes.push(node);
        // Unreachable limit: 2^32 nodes of several hundred bytes each.
        let id = u32::try_from(self.nodes.len()).expect("fewer than 2^32 nodes per level");
        NodeId(NonZeroU32::new(id).expect("one-based"))
    }

    /// Doubles the capacity. Past [`HUGE_PAGE`] the new buffer is advised to be backed by
    /// transparent huge pages before the nodes move in (so before its pages are first
    /// touched): a random descent then misses the TLB far less often.
    #[cold]
    fn grow(&mut self) {
        let bytes = self.nodes.capacity() * core::mem::size_of::<T>();
        if bytes < HUGE_PAGE {
            self.nodes.reserve(1);
            return;
        }
        let mut bigger: Vec<T> = Vec::with_capacity(self.nodes.capacity() * 2);
        advise_huge_pages(
            bigger.as_ptr().cast(),
            bigger.capacity() * core::mem::size_of::<T>(),
        );
        bigger.append(&mut self.nodes);
        self.nodes = bigger;
    }

    /// Returns node `id` (emptied by the caller) to the free list.
    fn release(&mut self, id: NodeId) {
        self.free.push(id);
    }

    /// Nodes in use.
    fn live(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Two distinct nodes, mutably.
    fn two_mut(&mut self, a: NodeId, b: NodeId) -> Option<(&mut T, &mut T)> {
        let (a, b) = (a.index(), b.index());
        if a < b {
            let (x, y) = self.nodes.split_at_mut(b);
            Some((x.get_mut(a)?, y.get_mut(0)?))
        } else if b < a {
            let (x, y) = self.nodes.split_at_mut(a);
            Some((y.get_mut(0)?, x.get_mut(b)?))
        } else {
            None
        }
    }
}

impl<T> Index<NodeId> for Arena<T> {
    type Output = T;

    #[inline(always)]
    fn index(&self, id: NodeId) -> &T {
        &self.nodes[id.index()]
    }
}

impl<T> IndexMut<NodeId> for Arena<T> {
    #[inline(always)]
    fn index_mut(&mut self, id: NodeId) -> &mut T {
        &mut self.nodes[id.index()]
    }
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
    /// The leaves.
    leaves: Arena<Leaf<V>>,
    /// The inner nodes, one arena per level: `inners[l]` holds the nodes whose children are
    /// at level `l` (0: the leaves). A node never changes level, and a query visits one level
    /// after the other, so each level's nodes lie together: the few upper levels stay on a
    /// few pages (in the TLB and the cache) instead of being scattered among the lower ones.
    inners: Vec<Arena<Inner>>,
    root: NodeId,
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

/// What one level of an insert hands to the level above: the node split off the child, if
/// it split.
type Carry = Option<NodeId>;

/// The path of a descent: per inner level from the root down, the node and the slot taken.
type Path = [(NodeId, usize); MAX_DEPTH];

impl<V> IntervalTree<V> {
    /// Creates an empty tree (one empty leaf).
    pub fn new() -> Self {
        let mut leaves = Arena::new();
        let root = leaves.alloc(Slots::new());
        Self {
            leaves,
            inners: Vec::new(),
            root,
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

    /// `(first start, maximum last, first key, slot count)` of node `id` at `level`
    /// (0: a leaf).
    fn summary(&self, level: usize, id: NodeId) -> (u64, u64, u64, usize) {
        if level == 0 {
            self.leaves[id].summary()
        } else {
            self.inners[level - 1][id].summary()
        }
    }

    /// Refreshes the summary of child `i` of inner node `p`, whose children are at `level`;
    /// returns the child's slot count.
    fn refresh(&mut self, p: NodeId, i: usize, level: usize) -> usize {
        let Some(child) = self.inners[level][p].item[i] else {
            return 0;
        };
        let (s, l, k, n) = self.summary(level, child);
        if n > 0 {
            let parent = &mut self.inners[level][p];
            (parent.start[i], parent.last[i], parent.key[i]) = (s, l, k);
        }
        n
    }

    /// The leaf that holds or would hold `(start, key)`, and the path to it (`path[0]` is
    /// the root's step).
    fn descend(&self, start: u64, key: u64, path: &mut Path) -> Option<NodeId> {
        let mut node = self.root;
        for (step, level) in path.iter_mut().zip((0..self.depth).rev()) {
            let s = &self.inners[level][node];
            s.prefetch_search();
            let i = s.child_for(start, key);
            *step = (node, i);
            node = s.item[i]?;
        }
        Some(node)
    }

    /// Inserts the closed interval `[start, last]` under `key` with `value`.
    ///
    /// Errors: an entry `(start, key)` is already present (the tree is unchanged and `value`
    /// comes back). The caller keeps `start <= last`; an inverted interval is stored as
    /// given and reported by a query `[qs, ql]` exactly when `start <= ql && last >= qs`.
    pub fn insert(&mut self, start: u64, last: u64, key: u64, value: V) -> Result<(), V> {
        let mut path = [(NodeId::UNSET, 0); MAX_DEPTH];
        let Some(leaf_id) = self.descend(start, key, &mut path) else {
            return Err(value);
        };
        let leaf = &mut self.leaves[leaf_id];
        leaf.prefetch_all();
        let i = match leaf.search(start, key) {
            Ok(_) => return Err(value),
            Err(i) => i,
        };
        let mut carry: Carry = insert_splitting(leaf, i, (start, last, key, value))
            .map(|right| self.leaves.alloc(right));
        for level in 0..self.depth {
            let (p, i) = path[self.depth - 1 - level];
            let Some(new) = carry else {
                // No split below: the child gained one entry, so its summary only widens,
                // and once a level is unchanged, none above changes either.
                let parent = &mut self.inners[level][p];
                // `key` (on a line the descent did not need) only among equal starts.
                let first =
                    start < parent.start[i] || (start == parent.start[i] && key < parent.key[i]);
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
            let arena = &mut self.inners[level];
            carry = insert_splitting(&mut arena[p], i + 1, (s, l, k, new))
                .map(|right| arena.alloc(right));
        }
        if let Some(new) = carry {
            let mut top = Inner::new();
            for child in [self.root, new] {
                let (s, l, k, _) = self.summary(self.depth, child);
                top.insert_at(top.len(), (s, l, k, child));
            }
            if self.inners.len() == self.depth {
                self.inners.push(Arena::new());
            }
            self.root = self.inners[self.depth].alloc(top);
            self.depth += 1;
        }
        self.len += 1;
        Ok(())
    }

    /// Removes the entry `(start, key)` and returns its value, or `None` if there is none.
    pub fn remove(&mut self, start: u64, key: u64) -> Option<V> {
        let mut path = [(NodeId::UNSET, 0); MAX_DEPTH];
        let leaf_id = self.descend(start, key, &mut path)?;
        let leaf = &mut self.leaves[leaf_id];
        leaf.prefetch_all();
        let i = leaf.search(start, key).ok()?;
        let (_, last, _, value) = leaf.remove_at(i)?;
        let mut fill = (leaf.len(), Leaf::<V>::MIN_FILL);
        self.len -= 1;
        for level in 0..self.depth {
            let (p, i) = path[self.depth - 1 - level];
            let parent = &self.inners[level][p];
            if fill.0 >= fill.1
                && last < parent.last[i]
                && (start != parent.start[i] || key != parent.key[i])
            {
                // The child kept its first entry and its maximum (held by another entry)
                // and needs no rebalancing: nothing above changes.
                break;
            }
            if self.refresh(p, i, level) < fill.1 {
                self.rebalance(p, i, level);
            }
            fill = (self.inners[level][p].len(), Inner::MIN_FILL);
        }
        // An inner root left with one child hands the root to it.
        if self.depth > 0 && self.inners[self.depth - 1][self.root].len() == 1 {
            let old = self.root;
            let top = &mut self.inners[self.depth - 1];
            if let Some(child) = top[old].remove_at(0) {
                top.release(old);
                self.root = child.3;
                self.depth -= 1;
            }
        }
        Some(value)
    }

    /// Child `i` of inner node `p` (children at `level`) fell below its minimum fill: merges
    /// it with a neighbour or moves one slot over from it.
    fn rebalance(&mut self, p: NodeId, i: usize, level: usize) {
        let parent = &self.inners[level][p];
        if parent.len() < 2 {
            return;
        }
        let lo = if i + 1 < parent.len() { i } else { i - 1 };
        let (Some(a), Some(b)) = (parent.item[lo], parent.item[lo + 1]) else {
            return;
        };
        let into_left = i == lo;
        let merged = if level == 0 {
            self.leaves
                .two_mut(a, b)
                .map(|(l, r)| even_out(l, r, into_left))
        } else {
            self.inners[level - 1]
                .two_mut(a, b)
                .map(|(l, r)| even_out(l, r, into_left))
        };
        match merged {
            Some(true) => {
                self.inners[level][p].remove_at(lo + 1);
                if level == 0 {
                    self.leaves.release(b);
                } else {
                    self.inners[level - 1].release(b);
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
    fn find(&self, start: u64, key: u64) -> Option<(NodeId, usize)> {
        let mut node = self.root;
        for level in (0..self.depth).rev() {
            let s = &self.inners[level][node];
            s.prefetch_search();
            node = s.item[s.child_for(start, key)]?;
        }
        let i = self.leaves[node].search(start, key).ok()?;
        Some((node, i))
    }

    /// The value of entry `(start, key)`.
    pub fn get(&self, start: u64, key: u64) -> Option<&V> {
        let (leaf, i) = self.find(start, key)?;
        self.leaves[leaf].item[i].as_ref()
    }

    /// The value of entry `(start, key)`, mutably.
    pub fn get_mut(&mut self, start: u64, key: u64) -> Option<&mut V> {
        let (leaf, i) = self.find(start, key)?;
        self.leaves[leaf].item[i].as_mut()
    }

    /// The `last` of entry `(start, key)`.
    pub fn last_of(&self, start: u64, key: u64) -> Option<u64> {
        let (leaf, i) = self.find(start, key)?;
        Some(self.leaves[leaf].last[i])
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

    /// Calls `f` for every entry of subtree `id` (at `level`) overlapping `[start, last]`.
    fn visit<F>(
        &self,
        id: NodeId,
        level: usize,
        start: u64,
        last: u64,
        f: &mut F,
    ) -> ControlFlow<()>
    where
        F: FnMut(u64, u64, u64, &V) -> ControlFlow<()>,
    {
        // Unused slots hold `start == u64::MAX` and `last == 0`: the scans stop at the first
        // of them (unless `last == u64::MAX`, and then skip them, having no item) without
        // reading `len`, which lies on another cache line.
        if level == 0 {
            let s = &self.leaves[id];
            s.prefetch_items();
            for i in 0..LEAF_FANOUT {
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
            let s = &self.inners[level - 1][id];
            s.prefetch_items();
            for i in 0..INNER_FANOUT {
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

    /// Checks the structural invariants: key order, node fill, unused slots, equal leaf
    /// depths, cached first keys and subtree maxima, entry and node counts per level. Meant
    /// for tests; `O(n)`.
    pub fn validate(&self) -> Result<(), String> {
        let mut nodes = vec![0; self.depth + 1];
        let (count, ..) = self.validate_node(self.root, self.depth, true, &mut nodes)?;
        if count != self.len {
            return Err(format!("{count} entries, len says {}", self.len));
        }
        let live = (0..self.inners.len()).map(|l| self.inners[l].live());
        if nodes[0] != self.leaves.live()
            || !live
                .enumerate()
                .all(|(l, n)| nodes.get(l + 1).copied().unwrap_or(0) == n)
        {
            return Err("arena nodes neither reachable nor free".into());
        }
        Ok(())
    }

    /// Checks subtree `id` at `level`; returns its entry count, first and last keys and
    /// maximum `last`; counts its nodes per level into `nodes`.
    #[allow(clippy::type_complexity)]
    fn validate_node(
        &self,
        id: NodeId,
        level: usize,
        is_root: bool,
        nodes: &mut [usize],
    ) -> Result<(usize, (u64, u64), (u64, u64), u64), String> {
        fn check<T, const N: usize>(s: &Slots<T, N>, is_root: bool) -> Result<(), String> {
            let n = s.len();
            if n > N || (!is_root && n < Slots::<T, N>::MIN_FILL) {
                return Err(format!("node with {n} slots"));
            }
            if !(1..n).all(|i| (s.start[i - 1], s.key[i - 1]) < (s.start[i], s.key[i])) {
                return Err("node out of order".into());
            }
            if s.item[..n].iter().any(Option::is_none) || s.item[n..].iter().any(Option::is_some) {
                return Err("items do not match the length".into());
            }
            if s.start[n..].iter().any(|&x| x != u64::MAX) || s.last[n..].iter().any(|&x| x != 0) {
                return Err("unused slot not cleared".into());
            }
            Ok(())
        }
        nodes[level] += 1;
        if level == 0 {
            let s = &self.leaves[id];
            check(s, is_root)?;
            let n = s.len();
            if n == 0 {
                return Ok((0, (0, 0), (0, 0), 0));
            }
            return Ok((
                n,
                s.first_key(),
                (s.start[n - 1], s.key[n - 1]),
                s.max_last(),
            ));
        }
        let s = &self.inners[level - 1][id];
        check(s, is_root)?;
        if s.len() < 2 && is_root {
            return Err("inner root with fewer than two children".into());
        }
        let mut count = 0;
        let mut prev: Option<(u64, u64)> = None;
        for i in 0..s.len() {
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
    fn arenas_grow_past_a_huge_page() {
        // Ascending inserts leave half-full leaves: 60k entries need about 7,500 leaves of
        // 704 bytes, so the leaf arena grows past 2 MiB through `Arena::grow`'s own path.
        let mut t = IntervalTree::new();
        let n = 60_000u64;
        for i in 0..n {
            t.insert(i * 2, i * 2, i, i as u32).unwrap();
        }
        let bytes = t.leaves.nodes.capacity() * core::mem::size_of::<Leaf<u32>>();
        assert!(bytes > 2 * HUGE_PAGE, "leaf arena {bytes} bytes");
        t.validate().unwrap();
        for i in (0..n).step_by(997) {
            assert_eq!(collect(&t, i * 2, i * 2 + 1), [(i * 2, i * 2, i as u32)]);
        }
        for i in (0..n).step_by(3) {
            assert_eq!(t.remove(i * 2, i), Some(i as u32));
        }
        t.validate().unwrap();
        assert_eq!(t.len(), (n - n.div_ceil(3)) as usize);
    }

    #[test]
    fn ordered_inserts_fill_nodes_three_quarters() {
        for descending in [false, true] {
            let mut t = IntervalTree::new();
            let n = 12_000u64;
            for j in 0..n {
                let i = if descending { n - 1 - j } else { j };
                t.insert(i * 4, i * 4 + 1, i, i as u32).unwrap();
            }
            t.validate().unwrap();
            // Off-centre splits: 12 (or 4 + 1, then filled up to 12 from the other side)
            // entries per leaf; splits in half would leave 8 or 9.
            let leaves = t.leaves.live() as u64;
            assert!(leaves <= n / 11, "{leaves} leaves, descending {descending}");
            assert_eq!(collect(&t, 400, 405), [(400, 401, 100), (404, 405, 101)]);
        }
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
