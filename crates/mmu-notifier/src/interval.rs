//! Interval notifiers: subscriptions to one address range, with the collision-retry sequence.
//!
//! # The sequence scheme
//!
//! This is the kernel's "collision-retry read-side/write-side lock", a seqcount with many
//! concurrent writers. The address space keeps one sequence number, `seq`, starting at 2, and a
//! count of active invalidations, `active`:
//!
//! * **idle**: `active == 0`, `seq` even;
//! * **partially excluded**: `active > 0`, `seq` even — invalidations are running but none hit an
//!   interval, so the interval tree may still change;
//! * **fully excluded**: `active > 0`, `seq` odd — some invalidation hit an interval; the tree is
//!   frozen and inserts/removes are queued on the deferred list.
//!
//! An invalidation increments `active` and, if it overlaps any interval, makes `seq` odd; every
//! hit interval's `invalidate` receives that odd `cur_seq` and stores it with
//! [`Interval::set_seq`] under the driver's own lock. The last invalidation to end makes `seq`
//! even again, applies the deferred inserts and removes in order, and wakes the waiters.
//!
//! A reader (a driver about to map pages into its secondary MMU) takes
//! `seq = interval.read_begin()` first — waiting only if *this* interval was hit by the epoch
//! still open — then looks up the pages, takes its lock, and publishes only if
//! `!interval.read_retry(seq)`. Interval sequences are always odd and the address space's is even
//! when idle, so a stale equality never blocks a reader forever. `read_begin` does not loop:
//! the caller bounds its retries.
//!
//! An inserted interval starts with a sequence that forces its first `read_begin` to wait for
//! the invalidation in flight, if any, since nobody knows whether it covered the new range.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Weak};

use smallvec::SmallVec;

use crate::annotate::{self, lock_as, ContractLock};
use crate::diag::Warning;
use crate::interval_tree::{IntervalTree, NodeId};
use crate::mm::Subscriptions;
use crate::primitive::{
    lock, wait, AtomicU64,
    Ordering::{Acquire, Release},
};
use crate::tls;
use crate::{Error, Event, Mm, Range, WouldBlock};

/// An interval subscriber (`struct mmu_interval_notifier_ops`).
pub trait IntervalNotifierOps: Send + Sync + 'static {
    /// `range` overlaps `interval` and is about to change.
    ///
    /// Take the driver's user lock, call `interval.set_seq(cur_seq)` unconditionally, drop the
    /// secondary mappings in the overlap, unlock, return true. If the range is not blockable
    /// and the user lock cannot be had without sleeping (e.g. `try_lock` failed), return false
    /// without doing anything: the invalidation is then refused as a whole. Refusing a blockable
    /// range is a contract violation (reported and ignored). The callback may sleep when
    /// `range.is_blockable()`.
    ///
    /// # Context
    ///
    /// Called from the primary's invalidation, possibly with the primary's locks held (its mmap
    /// lock or rmap locks), concurrently with other callbacks. In a blockable range it may
    /// sleep and allocate (GFP_KERNEL-style allocations in reclaim paths are reported with the
    /// `lockdep` feature) and must return true; in a non-blockable range it runs inside
    /// `non_block_start()/_end()`: it must not sleep and returns false to refuse
    /// (`Range::lock_or_refuse`).
    fn invalidate(&self, interval: &Interval, range: &Range, cur_seq: u64) -> bool;
}

/// An interval subscriber shared through an `Arc` is an interval subscriber, so a driver keeps
/// its own `Arc` to the state its callback changes without a wrapper type.
impl<T: IntervalNotifierOps> IntervalNotifierOps for Arc<T> {
    fn invalidate(&self, interval: &Interval, range: &Range, cur_seq: u64) -> bool {
        (**self).invalidate(interval, range, cur_seq)
    }
}

/// The state under the address space's interval lock (the kernel's spinlock).
pub(crate) struct ItreeState {
    seq: u64,
    active: u64,
    tree: IntervalTree<Arc<Interval>>,
    nodes: HashMap<u64, NodeId>,
    /// Queued while the tree is frozen: insert if not in `nodes`, else remove.
    deferred: Vec<Arc<Interval>>,
    next_id: u64,
    /// Threads waiting in `wait_seq_change`: the end of an epoch wakes only when there are
    /// any (a condition-variable notify is a futex system call even with nobody waiting).
    waiters: u64,
}

impl ItreeState {
    pub(crate) fn new() -> ItreeState {
        ItreeState {
            seq: 2,
            active: 0,
            tree: IntervalTree::new(),
            nodes: HashMap::new(),
            deferred: Vec::new(),
            next_id: 1,
            waiters: 0,
        }
    }

    fn invalidating(&self) -> bool {
        self.seq & 1 == 1
    }

    fn tree_insert(&mut self, iv: &Arc<Interval>) {
        let id = self.tree.insert(iv.start, iv.last, iv.clone());
        self.nodes.insert(iv.id, id);
    }
}

/// A snapshot of an address space's interval state, for tests and tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalState {
    /// The address space's sequence number (odd while an interval is being invalidated).
    pub seq: u64,
    /// Invalidations started and not yet ended.
    pub active: u64,
    /// Intervals in the tree.
    pub intervals: usize,
    /// Inserts and removes waiting for the epoch to end.
    pub deferred: usize,
}

impl IntervalState {
    /// Whether an interval epoch is open (the sequence is odd).
    pub fn invalidating(&self) -> bool {
        self.seq & 1 == 1
    }
}

type Hits = SmallVec<[Arc<Interval>; 8]>;

impl Subscriptions {
    /// `mn_itree_inv_start_range` plus collecting the hit intervals, in ascending start order.
    fn itree_start_range(&self, range: &Range) -> (u64, Hits) {
        let mut st = lock_as(&self.itree, ContractLock::Itree);
        st.active += 1;
        let mut hits = Hits::new();
        st.tree
            .for_each_overlap(range.start(), range.last(), |_, _, _, iv| {
                hits.push(iv.clone());
                ControlFlow::Continue(())
            });
        if !hits.is_empty() {
            st.seq |= 1;
        }
        (st.seq, hits)
    }

    /// `mn_itree_invalidate`: calls every hit interval; a refusal in a non-blockable range
    /// closes this invalidation's share of the epoch and fails.
    pub(crate) fn itree_invalidate(&self, range: &Range) -> Result<(), WouldBlock> {
        let (cur_seq, hits) = self.itree_start_range(range);
        let blockable = range.is_blockable();
        for iv in &hits {
            // Unlike `mn_itree_invalidate` in Linux, which leaves interval callbacks outside
            // `non_block_start()`, a non-blockable range checks them for sleeping exactly as it
            // checks list callbacks: the section is opened here, the dispatch's own call site.
            let ok = {
                let _nb = if blockable {
                    None
                } else {
                    Some(annotate::non_block())
                };
                iv.ops.invalidate(iv, range, cur_seq)
            };
            if !ok {
                if blockable {
                    self.diag
                        .report(Warning::BlockableIntervalRefused { start: iv.start });
                    continue;
                }
                drop(hits);
                self.itree_inv_end();
                return Err(WouldBlock);
            }
        }
        Ok(())
    }

    /// `mn_itree_inv_end`: the last active invalidation closes the epoch, applies the deferred
    /// list and wakes waiters.
    pub(crate) fn itree_inv_end(&self) {
        let mut dropped: Hits = Hits::new();
        let wake;
        {
            let mut st = lock_as(&self.itree, ContractLock::Itree);
            st.active = st.active.saturating_sub(1);
            if st.active != 0 || !st.invalidating() {
                return;
            }
            // Waiters register under this lock before they sleep, and `seq` changes under it,
            // so none can be missed.
            wake = st.waiters != 0;
            st.seq = st.seq.wrapping_add(1);
            for iv in std::mem::take(&mut st.deferred) {
                match st.nodes.remove(&iv.id) {
                    Some(node) => dropped.extend(st.tree.remove(node)),
                    None => st.tree_insert(&iv),
                }
                dropped.push(iv);
            }
        }
        if wake {
            self.itree_wq.notify_all();
        }
        // Interval handles may drop here, outside the lock.
        drop(dropped);
    }

    /// `mn_itree_release`: the teardown invalidation, which nobody may refuse.
    pub(crate) fn itree_release(&self) {
        let range = Range::whole(Event::Release);
        let (cur_seq, hits) = self.itree_start_range(&range);
        {
            let _mark = tls::enter(self.mm_id);
            for iv in &hits {
                if !iv.ops.invalidate(iv, &range, cur_seq) {
                    self.diag
                        .report(Warning::ReleaseInvalidateRefused { start: iv.start });
                }
            }
        }
        drop(hits);
        self.itree_inv_end();
    }

    fn wait_seq_change(&self, seq: u64) {
        // The kernel waits with `wait_event`, outside the tree lock; the condition variable
        // releases the lock while waiting, so the validator does not see it held here.
        annotate::might_sleep();
        let mut st = lock(&self.itree);
        if st.seq == seq {
            st.waiters += 1;
            while st.seq == seq {
                st = wait(&self.itree_wq, st);
            }
            st.waiters -= 1;
        }
    }

    pub(crate) fn interval_state(&self) -> IntervalState {
        let st = lock_as(&self.itree, ContractLock::Itree);
        IntervalState {
            seq: st.seq,
            active: st.active,
            intervals: st.tree.len(),
            deferred: st.deferred.len(),
        }
    }
}

/// One subscribed interval `[start, last]` of an address space (`struct mmu_interval_notifier`).
///
/// Reached through its owning [`IntervalNotifier`] (which derefs to it) or in the
/// [`IntervalNotifierOps::invalidate`] callback.
pub struct Interval {
    start: u64,
    last: u64,
    id: u64,
    seq: AtomicU64,
    ops: Box<dyn IntervalNotifierOps>,
    subs: Arc<Subscriptions>,
    /// The address space (`notifier->mm`): a reference, not a user, as Linux's `mmgrab`.
    mm: Mm,
}

impl std::fmt::Debug for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interval")
            .field("start", &format_args!("{:#x}", self.start))
            .field("last", &format_args!("{:#x}", self.last))
            .field("seq", &self.seq.load(Acquire))
            .finish()
    }
}

impl Interval {
    /// First address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last address, inclusive.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The address space this interval is subscribed to (`notifier->mm`), so a helper in the
    /// style of `hmm_range_fault` can take the interval alone.
    ///
    /// # Context
    ///
    /// Any context; never sleeps, allocates or fails. The interval holds a reference to the
    /// address space (Linux's `mmgrab`), not a user: it keeps the notifier state alive, not
    /// the address space in use.
    pub fn mm(&self) -> &Mm {
        &self.mm
    }

    /// Begins a read side (`mmu_interval_read_begin`): returns the sequence to hand to
    /// [`read_retry`](Self::read_retry) later.
    ///
    /// Waits while an invalidation that hit this interval is still in flight (only then; other
    /// intervals' invalidations do not delay it). Does not loop: the result may already be
    /// stale, which `read_retry` will say.
    ///
    /// Called from inside a callback of the same address space while such an invalidation is in
    /// flight, waiting would wait for itself: it reports the misuse and returns a value that
    /// makes every `read_retry` true instead.
    ///
    /// # Context
    ///
    /// May sleep: waits while an invalidation that hit this interval is open (`might_lock` of
    /// the invalidation map with the `lockdep` feature). Must not be called under the driver
    /// lock the callback takes (that is an ABBA deadlock with the invalidation). Allocates
    /// nothing; never fails.
    pub fn read_begin(&self) -> u64 {
        let (seq, hit) = {
            let st = lock_as(&self.subs.itree, ContractLock::Itree);
            let seq = self.seq.load(Acquire);
            (seq, seq == st.seq)
        };
        annotate::invalidate_map_might_lock();
        if hit {
            if tls::inside(self.subs.mm_id) {
                self.subs
                    .diag
                    .report(Warning::CalledFromCallback { api: "read_begin" });
                // Interval sequences are always odd: an even value never matches.
                return seq & !1;
            }
            self.subs.wait_seq_change(seq);
        }
        seq
    }

    /// Whether the read side begun with `seq` must retry (`mmu_interval_read_retry`). Call it
    /// under the same user lock the `invalidate` callback holds when it calls
    /// [`set_seq`](Self::set_seq); if it returns false, publish the secondary mapping before
    /// dropping that lock.
    ///
    /// # Context
    ///
    /// Any context; call it under the driver lock the callback takes. One atomic load; never
    /// sleeps, allocates or fails.
    #[inline]
    pub fn read_retry(&self, seq: u64) -> bool {
        self.seq.load(Acquire) != seq
    }

    /// A lock-free hint that the read side begun with `seq` will have to retry
    /// (`mmu_interval_check_retry`): true is reliable, false is not. Use it to abandon long
    /// work early.
    ///
    /// # Context
    ///
    /// Any context, no lock needed; one atomic load; never sleeps, allocates or fails.
    #[inline]
    pub fn check_retry(&self, seq: u64) -> bool {
        self.seq.load(Acquire) != seq
    }

    /// Records the invalidation `cur_seq` (`mmu_interval_set_seq`). Call it from
    /// [`IntervalNotifierOps::invalidate`], under the user lock, unconditionally.
    ///
    /// # Context
    ///
    /// From `IntervalNotifierOps::invalidate`, under the driver lock; one atomic store; never
    /// sleeps, allocates or fails.
    #[inline]
    pub fn set_seq(&self, cur_seq: u64) {
        self.seq.store(cur_seq, Release);
    }

    fn remove(self: &Arc<Self>) -> Result<(), Error> {
        let subs = &self.subs;
        let in_callback = tls::inside(subs.mm_id);
        let mut wait_seq = None;
        let dropped;
        {
            let mut st = lock_as(&subs.itree, ContractLock::Itree);
            if st.invalidating() {
                if st.nodes.contains_key(&self.id) {
                    // Frozen tree: queue the removal and wait for the epoch to end.
                    st.deferred.push(self.clone());
                    wait_seq = Some(st.seq);
                } else {
                    // Its insert is still queued: cancel it.
                    let before = st.deferred.len();
                    st.deferred.retain(|d| !Arc::ptr_eq(d, self));
                    if st.deferred.len() == before {
                        subs.diag
                            .report(Warning::RemoveNotInTree { start: self.start });
                    }
                }
                dropped = None;
            } else {
                dropped = match st.nodes.remove(&self.id) {
                    Some(node) => st.tree.remove(node),
                    None => {
                        subs.diag
                            .report(Warning::RemoveNotInTree { start: self.start });
                        None
                    }
                };
            }
        }
        drop(dropped);
        if in_callback && wait_seq.is_some() {
            subs.diag.report(Warning::CalledFromCallback {
                api: "interval remove",
            });
            return Err(Error::InCallback("IntervalNotifier::remove"));
        }
        annotate::might_sleep();
        annotate::invalidate_map_might_lock();
        if let Some(seq) = wait_seq {
            subs.wait_seq_change(seq);
        }
        Ok(())
    }
}

/// A weak reference to an [`Interval`], handed to the constructor of
/// [`Mm::interval_notifier_insert_with`] so a driver's state can reach its own interval.
#[derive(Clone, Debug)]
pub struct IntervalRef(Weak<Interval>);

impl IntervalRef {
    /// The interval, while it exists (from the end of the insert until its handle is removed
    /// and the last callback has returned).
    ///
    /// # Context
    ///
    /// Any context; never sleeps or fails; `None` only before the insert has returned or after
    /// the interval is gone.
    pub fn upgrade(&self) -> Option<Arc<Interval>> {
        self.0.upgrade()
    }
}

/// The owning handle of an interval subscription made by [`Mm::interval_notifier_insert`].
///
/// Derefs to its [`Interval`] for the read side. [`remove`](Self::remove) it when done;
/// dropping it removes it too (ignoring the error).
pub struct IntervalNotifier {
    iv: Arc<Interval>,
    removed: bool,
}

impl std::fmt::Debug for IntervalNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.iv.fmt(f)
    }
}

impl std::ops::Deref for IntervalNotifier {
    type Target = Interval;
    fn deref(&self) -> &Interval {
        &self.iv
    }
}

impl IntervalNotifier {
    /// Unsubscribes (`mmu_interval_notifier_remove`). If an invalidation epoch is open it queues
    /// the removal and waits for the epoch to end; on return no callback of this interval is
    /// running or will run.
    ///
    /// Must not be called from a callback of the same address space (or while this thread holds
    /// an open invalidation of it) when it would have to wait: that is detected and reported,
    /// the removal is queued without waiting, and [`Error::InCallback`] is returned.
    ///
    /// # Context
    ///
    /// May sleep: waits for an open invalidation epoch to end (`might_lock` of the invalidation
    /// map); must not be called under the driver lock its callback takes. From a callback of
    /// the same address space it queues the removal, does not wait and returns
    /// `Error::InCallback`. Allocates nothing; never panics.
    pub fn remove(mut self) -> Result<(), Error> {
        self.removed = true;
        self.iv.remove()
    }
}

impl Drop for IntervalNotifier {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.iv.remove();
        }
    }
}

impl Mm {
    /// Subscribes `ops` to `[start, start + length - 1]` (`mmu_interval_notifier_insert`).
    ///
    /// The interval may not be in the tree yet when this returns (the insert is deferred while
    /// an epoch is open); establish secondary mappings only through
    /// [`read_begin`](Interval::read_begin) / [`read_retry`](Interval::read_retry). The first
    /// insert on an address space waits for every invalidation already open, subscribed or not
    /// (see [`Mm::register`], "The first subscription").
    ///
    /// Errors: [`Error::Overflow`] for a zero length or one that runs past `u64::MAX`;
    /// [`Error::Released`] after [`release`](Mm::release); [`Error::InCallback`] for the first
    /// insert on an address space made from one of its callbacks or while this thread holds
    /// an open invalidation of it.
    ///
    /// # Context
    ///
    /// May sleep (the first insert waits for a grace period); allocates; records
    /// `might_lock` of the primary's [`MmapLock`] when one was given to the builder; must not be
    /// called under the driver lock its callback takes. Fails with a typed error, never panics.
    pub fn interval_notifier_insert(
        &self,
        start: u64,
        length: u64,
        ops: impl IntervalNotifierOps,
    ) -> Result<IntervalNotifier, Error> {
        annotate::might_sleep();
        self.might_lock_mmap();
        self.insert_inner(start, length, |_| Box::new(ops))
    }

    /// [`interval_notifier_insert`](Self::interval_notifier_insert) for a caller that holds
    /// the primary's `mmap_lock` for write (`mmu_interval_notifier_insert_locked`).
    ///
    /// # Context
    ///
    /// As [`interval_notifier_insert`](Self::interval_notifier_insert), with the
    /// [`MmapLock`] given to the builder held by the caller (not held:
    /// [`Warning::MmapLockNotHeld`], and it goes on).
    pub fn interval_notifier_insert_locked(
        &self,
        start: u64,
        length: u64,
        ops: impl IntervalNotifierOps,
    ) -> Result<IntervalNotifier, Error> {
        annotate::might_sleep();
        self.assert_mmap_locked("interval_notifier_insert_locked");
        self.insert_inner(start, length, |_| Box::new(ops))
    }

    /// [`interval_notifier_insert`](Self::interval_notifier_insert) with the subscriber built
    /// by `make`, which is handed a weak reference to the interval being created (as
    /// `Arc::new_cyclic` does): a driver keeps it in its own state and reaches its interval
    /// from there, with no `Mutex<Option<…>>` filled in after the insert.
    ///
    /// # Context
    ///
    /// As [`interval_notifier_insert`](Self::interval_notifier_insert); `make` runs before the
    /// interval is linked, with no lock of the contract held, and must not upgrade the
    /// reference (it is not alive yet).
    pub fn interval_notifier_insert_with<T: IntervalNotifierOps>(
        &self,
        start: u64,
        length: u64,
        make: impl FnOnce(&IntervalRef) -> T,
    ) -> Result<IntervalNotifier, Error> {
        annotate::might_sleep();
        self.might_lock_mmap();
        self.insert_inner(start, length, |r| Box::new(make(r)))
    }

    fn insert_inner(
        &self,
        start: u64,
        length: u64,
        make: impl FnOnce(&IntervalRef) -> Box<dyn IntervalNotifierOps>,
    ) -> Result<IntervalNotifier, Error> {
        let last = length
            .checked_sub(1)
            .and_then(|l| start.checked_add(l))
            .ok_or(Error::Overflow { start, length })?;
        if self.is_released() {
            return Err(Error::Released);
        }
        let subs = self.subs_arc();
        subs.enable_itree(self.srcu())?;
        let id = {
            let mut st = lock_as(&subs.itree, ContractLock::Itree);
            st.next_id += 1;
            st.next_id - 1
        };
        // Built outside the tree lock: `make` is the driver's code.
        let iv = Arc::new_cyclic(|weak| Interval {
            start,
            last,
            id,
            seq: AtomicU64::new(0),
            ops: make(&IntervalRef(weak.clone())),
            subs: subs.clone(),
            mm: self.clone(),
        });
        let mut st = lock_as(&subs.itree, ContractLock::Itree);
        if st.active != 0 {
            if st.invalidating() {
                st.deferred.push(iv.clone());
            } else {
                st.seq |= 1;
                st.tree_insert(&iv);
            }
            iv.seq.store(st.seq, Release);
        } else {
            if st.invalidating() {
                subs.diag
                    .report(Warning::OddSequenceWhileIdle { seq: st.seq });
            }
            iv.seq.store(st.seq.wrapping_sub(1), Release);
            st.tree_insert(&iv);
        }
        drop(st);
        Ok(IntervalNotifier { iv, removed: false })
    }

    /// A snapshot of the interval state (`None` before the first interval insert).
    ///
    /// # Context
    ///
    /// Any context outside the interval callbacks; takes the interval-tree lock briefly (a
    /// spinlock in the kernel); never sleeps; allocates nothing; never fails.
    pub fn interval_state(&self) -> Option<IntervalState> {
        let subs = self.subs()?;
        if !subs.has_itree.load(Acquire) {
            return None;
        }
        Some(subs.interval_state())
    }
}
