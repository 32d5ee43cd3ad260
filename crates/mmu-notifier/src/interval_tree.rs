//! An augmented AVL tree over closed `u64` intervals.
//!
//! [`IntervalTree`] stores closed intervals `[start, last]` (both ends
//! inclusive, so `last` may be `u64::MAX`) together with a value of type `V`.
//! Duplicate and overlapping intervals are allowed. It answers "which stored
//! intervals overlap `[start, last]`?" in ascending order, which is what the
//! invalidation path needs to find the interval notifiers covering a range.
//!
//! # Design
//!
//! * Nodes live in an arena (`Vec`) addressed by `u32` indices; freed slots are
//!   reused through an intrusive free list. A [`NodeId`] carries the slot index
//!   and a generation number, so an id that outlives its node is reported as
//!   stale (`None` / `false`) instead of aliasing whichever node reuses the
//!   slot. A slot whose generation would wrap is retired, never reused.
//! * The fields a query touches (`start`, `last`, the cached subtree maximum of
//!   `last`, and the two child links) are kept in a separate, 32-byte aligned
//!   array: two nodes per cache line, and a node never straddles two lines.
//!   Parent links, heights, generations and values live in a second array
//!   that queries only read for the intervals they report.
//! * The tree is ordered by `start`; among equal `start`s a newly inserted
//!   interval goes after every interval already present with that `start`.
//!   Rotations and removals preserve in-order position, so the tie order is
//!   **insertion order**: of two live intervals with equal `start`, the one
//!   inserted earlier is visited first.
//! * Each node caches the maximum `last` of its subtree (like `__subtree_last`
//!   in Linux's `interval_tree_generic.h`), which lets queries skip every
//!   subtree that ends before the query starts.
//!
//! Nothing is recursive: updates walk parent links, queries use a fixed-size
//! stack bounded by the AVL height (at most 45 levels for the at most
//! `u32::MAX` nodes the arena can address).
//!
//! # Complexity
//!
//! `insert` and `remove` are `O(log n)`. [`IntervalTree::first_overlap`] is
//! `O(log n)`. Enumerating the `k` overlapping intervals costs `O(log n + k)`
//! when the matches are contiguous in start order (for example when stored
//! intervals do not nest, as with disjoint or merely touching ranges) and at
//! most `O(log n + k·log(n/k))` in general (matches scattered among nested,
//! non-matching intervals), the usual bound for max-augmented search trees.

use core::fmt;
use core::iter::FusedIterator;
use core::ops::ControlFlow;

/// Sentinel index meaning "no node".
const NIL: u32 = u32::MAX;

/// Capacity of the explicit traversal stack of [`Overlaps`].
///
/// An AVL tree of height `h` holds at least `F(h + 2) - 1` nodes (`F` the
/// Fibonacci numbers). `F(48) - 1 > u32::MAX`, and the arena holds fewer than
/// `u32::MAX` nodes, so the height is at most 45; the stack holds at most one
/// node per level.
const STACK_CAP: usize = 48;

/// Handle to an interval stored in an [`IntervalTree`].
///
/// Ids are stable for the lifetime of the interval (rebalancing never changes
/// them). Once the interval is removed (or the tree cleared) the id becomes
/// stale: every lookup with it returns `None`/`false`, even after its slot has
/// been reused by a newer interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId {
    index: u32,
    generation: u32,
}

impl NodeId {
    /// Slot index of the node in the tree's arena (dense, reused after
    /// removal; useful as a key into side tables sized by capacity).
    pub fn index(self) -> u32 {
        self.index
    }

    /// Generation of the slot at the time the id was handed out.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// Query-hot part of a node: exactly 32 bytes, 32-byte aligned.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
struct Link {
    start: u64,
    last: u64,
    /// Maximum `last` over the subtree rooted here.
    subtree_last: u64,
    left: u32,
    right: u32,
}

const EMPTY_LINK: Link = Link {
    start: 0,
    last: 0,
    subtree_last: 0,
    left: NIL,
    right: NIL,
};

/// Cold part of a node.
#[derive(Clone, Debug)]
struct Slot<V> {
    /// `Some` iff the slot holds a live interval.
    value: Option<V>,
    /// Parent link of a live node; next free slot (or `NIL`) of a free one.
    parent: u32,
    /// Bumped on every free; `u32::MAX` marks a retired slot.
    generation: u32,
    /// AVL height of the subtree rooted here (a leaf has height 1).
    height: u8,
}

/// An augmented balanced search tree of closed `u64` intervals with values.
///
/// See the [module documentation](self) for ordering and complexity.
///
/// ```
/// use core::ops::ControlFlow;
/// use mmu_notifier::interval_tree::IntervalTree;
///
/// let mut tree = IntervalTree::new();
/// let a = tree.insert(0x1000, 0x1fff, "a");
/// let b = tree.insert(0x3000, u64::MAX, "b");
/// assert_eq!(tree.first_overlap(0x1800, 0x3000), Some(a));
/// let hits: Vec<_> = tree.overlaps(0x1800, 0x3000).map(|(_, _, _, v)| *v).collect();
/// assert_eq!(hits, ["a", "b"]);
/// assert_eq!(tree.remove(b), Some("b"));
/// assert_eq!(tree.remove(b), None); // stale id
/// ```
#[derive(Clone)]
pub struct IntervalTree<V> {
    links: Vec<Link>,
    slots: Vec<Slot<V>>,
    root: u32,
    free_head: u32,
    len: usize,
}

impl<V> Default for IntervalTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for IntervalTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(_, s, l, v)| (s, l, v)))
            .finish()
    }
}

impl<V> IntervalTree<V> {
    /// Creates an empty tree. Does not allocate.
    pub fn new() -> Self {
        Self {
            links: Vec::new(),
            slots: Vec::new(),
            root: NIL,
            free_head: NIL,
            len: 0,
        }
    }

    /// Creates an empty tree with room for `n` intervals before reallocating.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            links: Vec::with_capacity(n),
            slots: Vec::with_capacity(n),
            root: NIL,
            free_head: NIL,
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

    /// Inserts the closed interval `[start, last]` with `value` and returns
    /// its id.
    ///
    /// The caller guarantees `start <= last` (checked by a `debug_assert!`).
    /// In release builds an inverted interval is stored as given and is
    /// reported by a query `[qs, ql]` exactly when `start <= ql && last >= qs`;
    /// use [`try_insert`](Self::try_insert) to reject it instead.
    ///
    /// An interval equal in `start` to intervals already present is ordered
    /// after them (see the [module documentation](self)).
    ///
    /// # Panics
    ///
    /// If the tree already holds `u32::MAX` slots (about 4·10⁹ nodes, far
    /// beyond available memory in practice), like `Vec` on capacity overflow.
    pub fn insert(&mut self, start: u64, last: u64, value: V) -> NodeId {
        debug_assert!(start <= last, "inverted interval [{start:#x}, {last:#x}]");
        match self.insert_inner(start, last, value) {
            Some(id) => id,
            None => panic!("IntervalTree: node arena exhausted (u32 indices)"),
        }
    }

    /// Like [`insert`](Self::insert), but returns `None` (dropping `value`)
    /// instead of inserting when `start > last`, or when the arena cannot
    /// address another node.
    pub fn try_insert(&mut self, start: u64, last: u64, value: V) -> Option<NodeId> {
        if start > last {
            return None;
        }
        self.insert_inner(start, last, value)
    }

    /// Removes the interval `id` and returns its value, or `None` if `id` is
    /// stale or does not belong to this tree.
    pub fn remove(&mut self, id: NodeId) -> Option<V> {
        if !self.contains(id) {
            return None;
        }
        let n = id.index;
        // Node whose cached values are out of step with its children after a
        // successor swap; the upward pass must not stop below it.
        let mut must_visit = NIL;
        if self.left(n) != NIL && self.right(n) != NIL {
            // Move `n` into its in-order successor's position (which has no
            // left child) by relinking, so that ids stay attached to their
            // intervals; the successor takes `n`'s place.
            let s = self.leftmost(self.right(n));
            self.swap_with_successor(n, s);
            must_visit = s;
        }
        let child = if self.left(n) != NIL {
            self.left(n)
        } else {
            self.right(n)
        };
        let parent = self.parent(n);
        self.replace_child(parent, n, child);
        if child != NIL {
            self.set_parent(child, parent);
        }
        self.fix_upward(parent, must_visit);
        self.len -= 1;
        self.free_slot(n)
    }

    /// Shared reference to the value of interval `id`, `None` if stale.
    pub fn get(&self, id: NodeId) -> Option<&V> {
        match self.slots.get(id.index as usize) {
            Some(slot) if slot.generation == id.generation => slot.value.as_ref(),
            _ => None,
        }
    }

    /// Mutable reference to the value of interval `id`, `None` if stale.
    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut V> {
        match self.slots.get_mut(id.index as usize) {
            Some(slot) if slot.generation == id.generation => slot.value.as_mut(),
            _ => None,
        }
    }

    /// The `(start, last)` of interval `id`, `None` if stale.
    pub fn interval(&self, id: NodeId) -> Option<(u64, u64)> {
        if self.contains(id) {
            let link = &self.links[id.index as usize];
            Some((link.start, link.last))
        } else {
            None
        }
    }

    /// Whether `id` refers to an interval currently in the tree.
    pub fn contains(&self, id: NodeId) -> bool {
        matches!(
            self.slots.get(id.index as usize),
            Some(slot) if slot.generation == id.generation && slot.value.is_some()
        )
    }

    /// Calls `f(id, start, last, &value)` for every stored interval that
    /// overlaps the closed range `[start, last]`, in ascending `start` order
    /// (ties in insertion order), stopping early as soon as `f` returns
    /// [`ControlFlow::Break`].
    ///
    /// A stored `[s, l]` overlaps when `s <= last && l >= start`. An inverted
    /// query (`start > last`) matches nothing. See the
    /// [module documentation](self) for the cost.
    pub fn for_each_overlap<F>(&self, start: u64, last: u64, mut f: F)
    where
        F: FnMut(NodeId, u64, u64, &V) -> ControlFlow<()>,
    {
        for (id, s, l, v) in self.overlaps(start, last) {
            if f(id, s, l, v).is_break() {
                return;
            }
        }
    }

    /// Iterator over the stored intervals overlapping the closed range
    /// `[start, last]`, in the same order as
    /// [`for_each_overlap`](Self::for_each_overlap). It never allocates.
    pub fn overlaps(&self, start: u64, last: u64) -> Overlaps<'_, V> {
        let mut it = Overlaps {
            tree: self,
            start,
            last,
            stack: [NIL; STACK_CAP],
            depth: 0,
        };
        if start <= last {
            it.descend(self.root);
        }
        it
    }

    /// The first (lowest `start`, earliest inserted among equal starts)
    /// interval overlapping `[start, last]`, in `O(log n)` without any stack.
    /// `None` if there is none or the query is inverted.
    pub fn first_overlap(&self, start: u64, last: u64) -> Option<NodeId> {
        if start > last {
            return None;
        }
        // The first interval in tree order with `l >= start` precedes (or is)
        // every overlapping interval, so it is the answer iff its own
        // `s <= last`; find it by descending on the subtree maxima.
        let mut n = self.root;
        if n == NIL || self.links[n as usize].subtree_last < start {
            return None;
        }
        loop {
            let link = &self.links[n as usize];
            if link.left != NIL && self.links[link.left as usize].subtree_last >= start {
                n = link.left;
                continue;
            }
            if link.start > last {
                return None;
            }
            if link.last >= start {
                return Some(self.id_of(n));
            }
            // Some node in this subtree has `l >= start`; it is neither in
            // the left subtree nor `n`, so it is on the right.
            n = link.right;
            if n == NIL {
                // Unreachable while the cached maxima are consistent.
                return None;
            }
        }
    }

    /// Iterator over all stored intervals in ascending order (by `start`,
    /// ties in insertion order). The same as `overlaps(0, u64::MAX)`.
    pub fn iter(&self) -> Overlaps<'_, V> {
        self.overlaps(0, u64::MAX)
    }

    /// Removes every interval. All previously returned ids become stale; the
    /// arena's memory is kept for reuse. `O(capacity)`.
    pub fn clear(&mut self) {
        for slot in &mut self.slots {
            if slot.value.take().is_some() {
                // Cannot overflow: live slots have generation < u32::MAX.
                slot.generation += 1;
            }
        }
        // Rebuild the free list in ascending index order, skipping retired
        // slots.
        self.free_head = NIL;
        for i in (0..self.slots.len()).rev() {
            let slot = &mut self.slots[i];
            if slot.generation != u32::MAX {
                slot.parent = self.free_head;
                self.free_head = i as u32;
            }
        }
        self.root = NIL;
        self.len = 0;
    }

    /// Checks the structural invariants: parent links, BST order by
    /// `start`, AVL balance and heights, cached subtree maxima, node count and
    /// free list. Meant for tests; `O(n)` and allocating.
    #[doc(hidden)]
    pub fn validate(&self) -> Result<(), String> {
        if self.links.len() != self.slots.len() {
            return Err("arena arrays differ in length".into());
        }
        if self.root != NIL {
            if self.root as usize >= self.slots.len() {
                return Err(format!("root {} out of bounds", self.root));
            }
            if self.slots[self.root as usize].parent != NIL {
                return Err("root has a parent".into());
            }
        }
        // Post-order without recursion: (node, children_done).
        let mut count = 0usize;
        let mut stack: Vec<(u32, bool)> = Vec::new();
        if self.root != NIL {
            stack.push((self.root, false));
        }
        while let Some((n, done)) = stack.pop() {
            let link = &self.links[n as usize];
            let slot = &self.slots[n as usize];
            if !done {
                count += 1;
                if count > self.len {
                    return Err("more reachable nodes than len (or a cycle)".into());
                }
                if slot.value.is_none() {
                    return Err(format!("node {n} reachable but free"));
                }
                stack.push((n, true));
                for c in [link.left, link.right] {
                    if c != NIL {
                        if c as usize >= self.slots.len() {
                            return Err(format!("child {c} of {n} out of bounds"));
                        }
                        if self.slots[c as usize].parent != n {
                            return Err(format!("child {c} of {n} has wrong parent"));
                        }
                        stack.push((c, false));
                    }
                }
                continue;
            }
            let (lh, rh) = (self.height(link.left), self.height(link.right));
            if usize::from(slot.height) != 1 + usize::from(lh.max(rh)) {
                return Err(format!("node {n}: wrong height {}", slot.height));
            }
            if lh.abs_diff(rh) > 1 {
                return Err(format!("node {n}: unbalanced ({lh} vs {rh})"));
            }
            let mut max = link.last;
            if link.left != NIL {
                let l = &self.links[link.left as usize];
                max = max.max(l.subtree_last);
            }
            if link.right != NIL {
                let r = &self.links[link.right as usize];
                max = max.max(r.subtree_last);
            }
            if max != link.subtree_last {
                return Err(format!(
                    "node {n}: subtree_last {:#x}, expected {max:#x}",
                    link.subtree_last
                ));
            }
        }
        if count != self.len {
            return Err(format!("{count} reachable nodes, len {}", self.len));
        }
        // BST order along the in-order walk.
        let mut prev: Option<u64> = None;
        for (_, s, _, _) in self.iter() {
            if prev.is_some_and(|p| p > s) {
                return Err(format!("in-order starts decrease at {s:#x}"));
            }
            prev = Some(s);
        }
        // Free list: every free, non-retired slot exactly once.
        let mut free = 0usize;
        let mut f = self.free_head;
        while f != NIL {
            let slot = self
                .slots
                .get(f as usize)
                .ok_or_else(|| format!("free slot {f} out of bounds"))?;
            if slot.value.is_some() || slot.generation == u32::MAX {
                return Err(format!("free list holds live or retired slot {f}"));
            }
            free += 1;
            if free > self.slots.len() {
                return Err("free list cycles".into());
            }
            f = slot.parent;
        }
        let retired = self
            .slots
            .iter()
            .filter(|s| s.value.is_none() && s.generation == u32::MAX)
            .count();
        if free + retired + self.len != self.slots.len() {
            return Err("free list does not cover the free slots".into());
        }
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Internals.

    fn insert_inner(&mut self, start: u64, last: u64, value: V) -> Option<NodeId> {
        let n = self.alloc(start, last, value)?;
        // Equal starts go right: the newcomer follows existing equal starts.
        let mut parent = NIL;
        let mut cur = self.root;
        let mut go_left = false;
        while cur != NIL {
            parent = cur;
            let link = &self.links[cur as usize];
            go_left = start < link.start;
            cur = if go_left { link.left } else { link.right };
        }
        self.slots[n as usize].parent = parent;
        if parent == NIL {
            self.root = n;
        } else {
            if go_left {
                self.links[parent as usize].left = n;
            } else {
                self.links[parent as usize].right = n;
            }
            self.fix_upward(parent, NIL);
        }
        self.len += 1;
        Some(self.id_of(n))
    }

    /// Takes a slot (free list first) and initialises it as a leaf.
    fn alloc(&mut self, start: u64, last: u64, value: V) -> Option<u32> {
        let link = Link {
            start,
            last,
            subtree_last: last,
            left: NIL,
            right: NIL,
        };
        if self.free_head != NIL {
            let n = self.free_head;
            let slot = &mut self.slots[n as usize];
            self.free_head = slot.parent;
            slot.value = Some(value);
            slot.parent = NIL;
            slot.height = 1;
            self.links[n as usize] = link;
            return Some(n);
        }
        let n = self.slots.len();
        if n >= NIL as usize {
            return None;
        }
        self.links.push(link);
        self.slots.push(Slot {
            value: Some(value),
            parent: NIL,
            generation: 0,
            height: 1,
        });
        Some(n as u32)
    }

    /// Frees the (already unlinked) slot `n` and returns its value.
    fn free_slot(&mut self, n: u32) -> Option<V> {
        self.links[n as usize] = EMPTY_LINK;
        let slot = &mut self.slots[n as usize];
        let value = slot.value.take();
        // Live slots have generation < u32::MAX, so this cannot overflow.
        slot.generation += 1;
        slot.height = 0;
        if slot.generation == u32::MAX {
            // Retire: reusing it would eventually repeat a generation.
            slot.parent = NIL;
        } else {
            slot.parent = self.free_head;
            self.free_head = n;
        }
        value
    }

    fn id_of(&self, n: u32) -> NodeId {
        NodeId {
            index: n,
            generation: self.slots[n as usize].generation,
        }
    }

    #[inline]
    fn left(&self, n: u32) -> u32 {
        self.links[n as usize].left
    }

    #[inline]
    fn right(&self, n: u32) -> u32 {
        self.links[n as usize].right
    }

    #[inline]
    fn parent(&self, n: u32) -> u32 {
        self.slots[n as usize].parent
    }

    #[inline]
    fn set_parent(&mut self, n: u32, p: u32) {
        self.slots[n as usize].parent = p;
    }

    #[inline]
    fn height(&self, n: u32) -> u8 {
        if n == NIL {
            0
        } else {
            self.slots[n as usize].height
        }
    }

    fn leftmost(&self, mut n: u32) -> u32 {
        loop {
            let l = self.left(n);
            if l == NIL {
                return n;
            }
            n = l;
        }
    }

    /// Makes `new` take `old`'s place under `parent` (`NIL`: the root).
    fn replace_child(&mut self, parent: u32, old: u32, new: u32) {
        if parent == NIL {
            self.root = new;
        } else {
            let link = &mut self.links[parent as usize];
            if link.left == old {
                link.left = new;
            } else {
                link.right = new;
            }
        }
    }

    /// Exchanges the tree positions of `n` (which has two children) and its
    /// in-order successor `s` (the leftmost node of `n`'s right subtree).
    /// Afterwards `n` has no left child; the caller unlinks it and rebalances
    /// from its new parent upwards. `s` inherits `n`'s cached height and
    /// maximum, which describe its new subtree as its parent expects, but
    /// its children's cached values still reflect the old layout, so the
    /// upward pass must refresh `s` before it may stop.
    fn swap_with_successor(&mut self, n: u32, s: u32) {
        let np = self.parent(n);
        let nl = self.left(n);
        let nr = self.right(n);
        let sp = self.parent(s);
        let sr = self.right(s);

        // `s` takes `n`'s place.
        self.replace_child(np, n, s);
        self.set_parent(s, np);
        self.links[s as usize].left = nl;
        self.set_parent(nl, s);
        self.slots[s as usize].height = self.slots[n as usize].height;
        self.links[s as usize].subtree_last = self.links[n as usize].subtree_last;
        if sp == n {
            self.links[s as usize].right = n;
            self.set_parent(n, s);
        } else {
            self.links[s as usize].right = nr;
            self.set_parent(nr, s);
            self.links[sp as usize].left = n;
            self.set_parent(n, sp);
        }
        // `n` takes `s`'s place.
        self.links[n as usize].left = NIL;
        self.links[n as usize].right = sr;
        if sr != NIL {
            self.set_parent(sr, n);
        }
    }

    /// Recomputes `n`'s height and subtree maximum from its children.
    #[inline]
    fn update(&mut self, n: u32) {
        let Link {
            last, left, right, ..
        } = self.links[n as usize];
        let mut max = last;
        if left != NIL {
            max = max.max(self.links[left as usize].subtree_last);
        }
        if right != NIL {
            max = max.max(self.links[right as usize].subtree_last);
        }
        self.links[n as usize].subtree_last = max;
        self.slots[n as usize].height = 1 + self.height(left).max(self.height(right));
    }

    /// Rotates `x` down to the left; returns the new subtree root.
    fn rotate_left(&mut self, x: u32) -> u32 {
        let y = self.right(x);
        let yl = self.left(y);
        let xp = self.parent(x);
        self.links[x as usize].right = yl;
        if yl != NIL {
            self.set_parent(yl, x);
        }
        self.set_parent(y, xp);
        self.replace_child(xp, x, y);
        self.links[y as usize].left = x;
        self.set_parent(x, y);
        self.update(x);
        self.update(y);
        y
    }

    /// Rotates `x` down to the right; returns the new subtree root.
    fn rotate_right(&mut self, x: u32) -> u32 {
        let y = self.left(x);
        let yr = self.right(y);
        let xp = self.parent(x);
        self.links[x as usize].left = yr;
        if yr != NIL {
            self.set_parent(yr, x);
        }
        self.set_parent(y, xp);
        self.replace_child(xp, x, y);
        self.links[y as usize].right = x;
        self.set_parent(x, y);
        self.update(x);
        self.update(y);
        y
    }

    /// Restores balance at `n` (whose children are balanced and up to date)
    /// and refreshes its cached values; returns the subtree's new root.
    fn rebalance(&mut self, n: u32) -> u32 {
        let (l, r) = (self.left(n), self.right(n));
        let (lh, rh) = (self.height(l), self.height(r));
        if lh > rh + 1 {
            if self.height(self.left(l)) < self.height(self.right(l)) {
                self.rotate_left(l);
            }
            self.rotate_right(n)
        } else if rh > lh + 1 {
            if self.height(self.right(r)) < self.height(self.left(r)) {
                self.rotate_right(r);
            }
            self.rotate_left(n)
        } else {
            self.update(n);
            n
        }
    }

    /// Rebalances and refreshes the nodes from `n` towards the root after a
    /// single insertion or removal below `n`.
    ///
    /// Every node off that path satisfies "cached height and maximum are
    /// those computed from its children's cached values", so the walk stops
    /// at the first node that needs no rotation and whose cached values come
    /// out unchanged: nothing above it can change either. `must_visit` (or
    /// `NIL`) is an ancestor for which that local property does not hold
    /// yet; the walk does not stop before refreshing it.
    fn fix_upward(&mut self, mut n: u32, mut must_visit: u32) {
        while n != NIL {
            let old_height = self.slots[n as usize].height;
            let old_max = self.links[n as usize].subtree_last;
            let top = self.rebalance(n);
            if n == must_visit {
                must_visit = NIL;
            }
            if top == n
                && must_visit == NIL
                && self.slots[n as usize].height == old_height
                && self.links[n as usize].subtree_last == old_max
            {
                return;
            }
            n = self.parent(top);
        }
    }
}

impl<'a, V> IntoIterator for &'a IntervalTree<V> {
    type Item = (NodeId, u64, u64, &'a V);
    type IntoIter = Overlaps<'a, V>;

    fn into_iter(self) -> Overlaps<'a, V> {
        self.iter()
    }
}

/// Iterator over the intervals of an [`IntervalTree`] overlapping a query
/// range, in ascending order; see [`IntervalTree::overlaps`].
///
/// Yields `(id, start, last, &value)`. Holds a fixed-size stack (no heap).
pub struct Overlaps<'a, V> {
    tree: &'a IntervalTree<V>,
    start: u64,
    last: u64,
    /// Nodes whose left subtree is done and which, with their right
    /// subtrees, remain to be visited; all have `start <= self.last`.
    stack: [u32; STACK_CAP],
    depth: usize,
}

impl<V> Clone for Overlaps<'_, V> {
    fn clone(&self) -> Self {
        Self {
            tree: self.tree,
            start: self.start,
            last: self.last,
            stack: self.stack,
            depth: self.depth,
        }
    }
}

impl<V> fmt::Debug for Overlaps<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overlaps")
            .field("start", &self.start)
            .field("last", &self.last)
            .field("pending", &&self.stack[..self.depth.min(STACK_CAP)])
            .finish()
    }
}

impl<V> Overlaps<'_, V> {
    /// Pushes the left spine of subtree `n`, skipping subtrees that end
    /// before the query and nodes that start after it.
    #[inline]
    fn descend(&mut self, mut n: u32) {
        let tree = self.tree;
        while n != NIL {
            let link = &tree.links[n as usize];
            if link.subtree_last < self.start {
                return;
            }
            if link.start <= self.last {
                // Cannot overflow: at most one node per level is pending
                // (see STACK_CAP). `get_mut` keeps this panic-free anyway.
                debug_assert!(self.depth < STACK_CAP);
                if let Some(top) = self.stack.get_mut(self.depth) {
                    *top = n;
                    self.depth += 1;
                }
            }
            // A node starting after the query has its right subtree after
            // it too: only its left subtree can still match.
            n = link.left;
        }
    }
}

impl<'a, V> Iterator for Overlaps<'a, V> {
    type Item = (NodeId, u64, u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let tree = self.tree;
        while self.depth > 0 {
            self.depth -= 1;
            let n = self.stack[self.depth];
            let link = &tree.links[n as usize];
            self.descend(link.right);
            if link.last >= self.start {
                let slot = &tree.slots[n as usize];
                if let Some(v) = slot.value.as_ref() {
                    let id = NodeId {
                        index: n,
                        generation: slot.generation,
                    };
                    return Some((id, link.start, link.last, v));
                }
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.depth == 0 {
            (0, Some(0))
        } else {
            (0, Some(self.tree.len))
        }
    }
}

impl<V> FusedIterator for Overlaps<'_, V> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(t: &IntervalTree<u32>, s: u64, l: u64) -> Vec<(u64, u64, u32)> {
        t.overlaps(s, l).map(|(_, s, l, v)| (s, l, *v)).collect()
    }

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<Link>(), 32);
        assert_eq!(core::mem::align_of::<Link>(), 32);
        assert_eq!(core::mem::size_of::<NodeId>(), 8);
    }

    #[test]
    fn empty() {
        let t: IntervalTree<u32> = IntervalTree::default();
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert_eq!(t.first_overlap(0, u64::MAX), None);
        assert_eq!(t.overlaps(0, u64::MAX).count(), 0);
        assert_eq!(t.iter().count(), 0);
        t.validate().unwrap();
        let bogus = NodeId {
            index: 7,
            generation: 0,
        };
        assert!(!t.contains(bogus));
        assert_eq!(t.get(bogus), None);
        assert_eq!(t.interval(bogus), None);
    }

    #[test]
    fn single() {
        let mut t = IntervalTree::with_capacity(4);
        let a = t.insert(10, 20, 1u32);
        t.validate().unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.interval(a), Some((10, 20)));
        assert_eq!(t.get(a), Some(&1));
        *t.get_mut(a).unwrap() = 2;
        for (s, l, hit) in [
            (0, 9, false),
            (0, 10, true),
            (20, 30, true),
            (21, 30, false),
            (12, 13, true),
            (0, u64::MAX, true),
            (15, 14, false), // inverted query
        ] {
            assert_eq!(t.first_overlap(s, l) == Some(a), hit, "[{s}, {l}]");
            assert_eq!(collect(&t, s, l).len(), usize::from(hit), "[{s}, {l}]");
        }
        assert_eq!(t.remove(a), Some(2));
        assert!(t.is_empty());
        t.validate().unwrap();
    }

    #[test]
    fn duplicates_keep_insertion_order() {
        let mut t = IntervalTree::new();
        let ids: Vec<_> = (0..100u32)
            .map(|i| t.insert(5, 5 + u64::from(i % 3), i))
            .collect();
        t.validate().unwrap();
        let got: Vec<u32> = collect(&t, 5, 5).iter().map(|x| x.2).collect();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        // Remove every other one; the rest keep their relative order.
        for id in ids.iter().step_by(2) {
            t.remove(*id).unwrap();
            t.validate().unwrap();
        }
        let got: Vec<u32> = collect(&t, 0, 100).iter().map(|x| x.2).collect();
        assert_eq!(got, (1..100).step_by(2).collect::<Vec<_>>());
        assert_eq!(t.first_overlap(7, 7), Some(ids[5]));
        // A newer duplicate goes last.
        t.insert(5, 5, 1000);
        assert_eq!(collect(&t, 5, 5).last().unwrap().2, 1000);
        t.validate().unwrap();
    }

    #[test]
    fn max_endpoints() {
        let mut t = IntervalTree::new();
        let a = t.insert(u64::MAX, u64::MAX, 1u32);
        let b = t.insert(0, u64::MAX, 2);
        let c = t.insert(0, 0, 3);
        let d = t.insert(u64::MAX - 1, u64::MAX, 4);
        t.validate().unwrap();
        assert_eq!(
            collect(&t, u64::MAX, u64::MAX),
            [
                (0, u64::MAX, 2),
                (u64::MAX - 1, u64::MAX, 4),
                (u64::MAX, u64::MAX, 1)
            ]
        );
        assert_eq!(t.first_overlap(u64::MAX, u64::MAX), Some(b));
        assert_eq!(collect(&t, 0, 0), [(0, u64::MAX, 2), (0, 0, 3)]);
        assert_eq!(collect(&t, 0, u64::MAX).len(), 4);
        t.remove(b);
        assert_eq!(t.first_overlap(1, u64::MAX), Some(d));
        assert_eq!(t.first_overlap(1, u64::MAX - 2), None);
        let _ = (a, c);
        t.validate().unwrap();
    }

    #[test]
    fn stale_ids() {
        let mut t = IntervalTree::new();
        let a = t.insert(1, 2, 1u32);
        assert_eq!(t.remove(a), Some(1));
        assert_eq!(t.remove(a), None);
        let b = t.insert(1, 2, 2u32);
        assert_eq!(b.index(), a.index(), "slot reused");
        assert_ne!(a, b);
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(a), None);
        assert_eq!(t.get_mut(a), None);
        assert_eq!(t.interval(a), None);
        assert!(!t.contains(a));
        assert!(t.contains(b));
        t.clear();
        assert!(!t.contains(b));
        assert_eq!(t.remove(b), None);
        let c = t.insert(3, 4, 3);
        assert!(t.contains(c) && !t.contains(b) && !t.contains(a));
        t.validate().unwrap();
    }

    #[test]
    fn retired_slot_not_reused() {
        let mut t = IntervalTree::new();
        let a = t.insert(1, 2, 1u32);
        t.slots[a.index as usize].generation = u32::MAX - 1;
        let a = t.id_of(a.index);
        assert_eq!(t.remove(a), Some(1));
        t.validate().unwrap();
        let b = t.insert(1, 2, 2);
        assert_ne!(b.index(), a.index());
        assert!(!t.contains(NodeId {
            index: a.index,
            generation: u32::MAX
        }));
        t.clear();
        t.validate().unwrap();
        let c = t.insert(1, 2, 3);
        assert_eq!(c.index(), b.index());
        t.validate().unwrap();
    }

    #[test]
    fn try_insert_rejects_inverted() {
        let mut t = IntervalTree::new();
        assert_eq!(t.try_insert(5, 4, 0u32), None);
        assert!(t.is_empty());
        assert!(t.try_insert(5, 5, 0u32).is_some());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn balanced_under_sequential_load() {
        let mut t = IntervalTree::new();
        let n = 1u32 << 14;
        let ids: Vec<_> = (0..n)
            .map(|i| t.insert(u64::from(i) * 10, u64::from(i) * 10 + 5, i))
            .collect();
        t.validate().unwrap();
        // AVL bound: height < 1.4405 * log2(n + 2).
        assert!(f64::from(t.height(t.root)) < 1.4405 * f64::from(n + 2).log2());
        assert_eq!(collect(&t, 13, 27), [(10, 15, 1), (20, 25, 2)]);
        for id in &ids[..(n as usize) / 2] {
            t.remove(*id).unwrap();
        }
        t.validate().unwrap();
        assert_eq!(t.len(), n as usize / 2);
        assert_eq!(t.iter().next().unwrap().3, &(n / 2));
    }

    #[test]
    fn early_break_and_nested() {
        let mut t = IntervalTree::new();
        // Nested intervals plus many non-matching short ones between.
        for i in 0..50u32 {
            t.insert(u64::from(i) * 2, 1000 - u64::from(i), i);
            t.insert(u64::from(i) * 2 + 1, u64::from(i) * 2 + 1, 100 + i);
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
        let first = t.first_overlap(500, 600).unwrap();
        assert_eq!(t.get(first), Some(&0));
    }

    #[test]
    fn debug_and_into_iter() {
        let mut t = IntervalTree::new();
        t.insert(2, 3, 'b');
        t.insert(1, 1, 'a');
        assert_eq!(format!("{t:?}"), "[(1, 1, 'a'), (2, 3, 'b')]");
        let v: Vec<char> = (&t).into_iter().map(|x| *x.3).collect();
        assert_eq!(v, ['a', 'b']);
        let it = t.overlaps(0, 9);
        assert_eq!(it.clone().count(), 2);
    }
}
