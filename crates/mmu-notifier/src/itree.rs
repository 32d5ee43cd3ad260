//! The interval-tree state of one address space (the kernel's `itree`, `invalidate_seq`,
//! `active_invalidate_ranges`, `deferred_list`, `lock` and `wq` of
//! `struct mmu_notifier_subscriptions`, plus the switch that turns interval mode on).
//!
//! It owns its lock, its wait queue and its enable flag, and offers the dispatch a narrow
//! API: [`Itree::start`] (`mn_itree_invalidate`), [`Itree::end`] (`mn_itree_inv_end`) and
//! [`Itree::release`] (`mn_itree_release`); interval handles use [`Itree::insert`],
//! [`Itree::remove`] and [`Itree::read_begin`]. It knows nodes only through [`Node`], so it
//! depends on nothing above it. The sequence scheme itself is explained in the `interval`
//! module.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::annotate::{self, lock_as, ContractLock};
use crate::diag::{Diagnostics, Warning};
use crate::interval_tree::{IntervalTree, NodeId};
use crate::primitive::{
    lock, wait, AtomicBool, AtomicU64, Condvar, Mutex,
    Ordering::{Acquire, Release, SeqCst},
};
use crate::srcu::Srcu;
use crate::tls;
use crate::{Error, Event, Range, WouldBlock};

/// What the tree holds: an interval subscription, as far as the tree needs to know it.
pub(crate) trait Node: Send + Sync + 'static {
    /// A number unique in this tree ([`Itree::next_id`]).
    fn id(&self) -> u64;
    /// First address.
    fn start(&self) -> u64;
    /// Last address, inclusive.
    fn last(&self) -> u64;
    /// Calls the subscriber's `invalidate` for `range` with the epoch's `cur_seq`.
    fn invalidate(&self, range: &Range, cur_seq: u64) -> bool;
    /// Sets the interval's own sequence (at insert, under the tree lock).
    fn set_seq(&self, seq: u64);
}

/// A node as the tree stores it (two words, so the tree's nodes stay small).
pub(crate) type Entry = Arc<dyn Node>;

/// The state under the tree lock (the kernel's spinlock).
struct State {
    seq: u64,
    active: u64,
    tree: IntervalTree<Entry>,
    nodes: HashMap<u64, NodeId>,
    /// Queued while the tree is frozen: insert if not in `nodes`, else remove.
    deferred: Vec<Entry>,
    next_id: u64,
    /// Threads waiting in `wait_seq_change`: the end of an epoch wakes only when there are
    /// any (a condition-variable notify is a futex system call even with nobody waiting).
    waiters: u64,
}

impl State {
    fn invalidating(&self) -> bool {
        self.seq & 1 == 1
    }

    fn tree_insert(&mut self, e: &Entry) {
        let id = self.tree.insert(e.start(), e.last(), e.clone());
        self.nodes.insert(e.id(), id);
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

type Hits = SmallVec<[Entry; 8]>;

/// One address space's interval tree, its epoch, its wait queue and its enable flag.
pub(crate) struct Itree {
    mm_id: u64,
    diag: Arc<Diagnostics>,
    /// Interval mode is on: invalidations count themselves here.
    enabled: AtomicBool,
    /// Serialises switching interval mode on.
    enable_lock: Mutex<()>,
    state: Mutex<State>,
    wq: Condvar,
    /// `State::seq`, stored under the lock each time it changes, so that `read_begin` can
    /// check it without the lock (see there).
    published_seq: AtomicU64,
}

impl Itree {
    pub(crate) fn new(mm_id: u64, diag: Arc<Diagnostics>) -> Itree {
        Itree {
            mm_id,
            diag,
            enabled: AtomicBool::new(false),
            enable_lock: Mutex::new(()),
            state: Mutex::new(State {
                seq: 2,
                active: 0,
                tree: IntervalTree::new(),
                nodes: HashMap::new(),
                deferred: Vec::new(),
                next_id: 1,
                waiters: 0,
            }),
            wq: Condvar::new(),
            published_seq: AtomicU64::new(2),
        }
    }

    /// Whether interval mode is on. `SeqCst`: loaded inside the dispatch's read section,
    /// stored before [`enable`](Self::enable)'s grace period (srcu.rs, "Memory ordering").
    #[inline]
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(SeqCst)
    }

    /// Turns interval mode on (`mmu_notifier_register(NULL, mm)`); waits until every
    /// invalidation that began before it has ended, so none of them can have missed the tree.
    pub(crate) fn enable(&self, srcu: &Srcu) -> Result<(), Error> {
        if self.is_enabled() {
            return Ok(());
        }
        if tls::inside(self.mm_id) {
            self.diag.report(Warning::CalledFromCallback {
                api: "interval_notifier_insert",
            });
            return Err(Error::InCallback("the first interval_notifier_insert"));
        }
        let _g = lock_as(&self.enable_lock, ContractLock::ItreeEnable);
        if !self.is_enabled() {
            self.enabled.store(true, SeqCst);
            srcu.synchronize();
        }
        Ok(())
    }

    /// `mn_itree_inv_start_range` plus collecting the hit intervals, in ascending start order.
    /// Fills `hits` in place: the collection is not moved (its inline buffer is 128 bytes).
    #[inline]
    fn start_range(&self, range: &Range, hits: &mut Hits) -> u64 {
        let mut st = lock_as(&self.state, ContractLock::Itree);
        st.active += 1;
        st.tree
            .for_each_overlap(range.start(), range.last(), |_, _, _, e| {
                hits.push(e.clone());
                ControlFlow::Continue(())
            });
        if !hits.is_empty() {
            st.seq |= 1;
            self.published_seq.store(st.seq, Release);
        }
        st.seq
    }

    /// The start side (`mn_itree_invalidate`): opens this invalidation's share of the epoch
    /// and calls every hit interval; a refusal in a non-blockable range closes that share and
    /// fails.
    pub(crate) fn start(&self, range: &Range) -> Result<(), WouldBlock> {
        let mut hits = Hits::new();
        let cur_seq = self.start_range(range, &mut hits);
        let blockable = range.is_blockable();
        for e in &hits {
            // Unlike `mn_itree_invalidate` in Linux, which leaves interval callbacks outside
            // `non_block_start()`, a non-blockable range checks them for sleeping exactly as it
            // checks list callbacks: the section is opened here, the dispatch's own call site.
            let ok = {
                let _nb = if blockable {
                    None
                } else {
                    Some(annotate::non_block())
                };
                e.invalidate(range, cur_seq)
            };
            if !ok {
                if blockable {
                    self.diag
                        .report(Warning::BlockableIntervalRefused { start: e.start() });
                    continue;
                }
                drop(hits);
                self.end();
                return Err(WouldBlock);
            }
        }
        Ok(())
    }

    /// The end side (`mn_itree_inv_end`): the last active invalidation closes the epoch,
    /// applies the deferred list and wakes waiters.
    pub(crate) fn end(&self) {
        let mut dropped: Hits = Hits::new();
        let wake;
        {
            let mut st = lock_as(&self.state, ContractLock::Itree);
            st.active = st.active.saturating_sub(1);
            if st.active != 0 || !st.invalidating() {
                return;
            }
            // Waiters register under this lock before they sleep, and `seq` changes under it,
            // so none can be missed.
            wake = st.waiters != 0;
            st.seq = st.seq.wrapping_add(1);
            self.published_seq.store(st.seq, Release);
            for e in std::mem::take(&mut st.deferred) {
                match st.nodes.remove(&e.id()) {
                    Some(node) => dropped.extend(st.tree.remove(node)),
                    None => st.tree_insert(&e),
                }
                dropped.push(e);
            }
        }
        if wake {
            self.wq.notify_all();
        }
        // Interval handles may drop here, outside the lock.
        drop(dropped);
    }

    /// The teardown invalidation (`mn_itree_release`), which nobody may refuse.
    pub(crate) fn release(&self) {
        let range = Range::whole(Event::Release);
        let mut hits = Hits::new();
        let cur_seq = self.start_range(&range, &mut hits);
        {
            let _mark = tls::enter(self.mm_id);
            for e in &hits {
                if !e.invalidate(&range, cur_seq) {
                    self.diag
                        .report(Warning::ReleaseInvalidateRefused { start: e.start() });
                }
            }
        }
        drop(hits);
        self.end();
    }

    /// A fresh node id.
    pub(crate) fn next_id(&self) -> u64 {
        let mut st = lock_as(&self.state, ContractLock::Itree);
        st.next_id += 1;
        st.next_id - 1
    }

    /// Links `e` (`mmu_interval_notifier_insert`'s second half): into the tree, or onto the
    /// deferred list while the tree is frozen; its sequence is set so that its first
    /// `read_begin` waits for an invalidation in flight, since nobody knows whether that one
    /// covered it.
    pub(crate) fn insert(&self, e: Entry) {
        let mut st = lock_as(&self.state, ContractLock::Itree);
        if st.active != 0 {
            if st.invalidating() {
                st.deferred.push(e.clone());
            } else {
                st.seq |= 1;
                self.published_seq.store(st.seq, Release);
                st.tree_insert(&e);
            }
            e.set_seq(st.seq);
        } else {
            if st.invalidating() {
                self.diag
                    .report(Warning::OddSequenceWhileIdle { seq: st.seq });
            }
            e.set_seq(st.seq.wrapping_sub(1));
            st.tree_insert(&e);
        }
    }

    /// Unlinks the node `id` (`mmu_interval_notifier_remove`): at once when the tree is not
    /// frozen; otherwise queued, and then waits for the epoch to end, unless called from a
    /// callback of this address space, where it reports and returns [`Error::InCallback`].
    pub(crate) fn remove(&self, me: &Entry) -> Result<(), Error> {
        let (id, start) = (me.id(), me.start());
        let in_callback = tls::inside(self.mm_id);
        let mut wait_seq = None;
        let dropped;
        {
            let mut st = lock_as(&self.state, ContractLock::Itree);
            if st.invalidating() {
                if st.nodes.contains_key(&id) {
                    // Frozen tree: queue the removal and wait for the epoch to end.
                    st.deferred.push(me.clone());
                    wait_seq = Some(st.seq);
                } else {
                    // Its insert is still queued: cancel it.
                    let before = st.deferred.len();
                    st.deferred.retain(|d| d.id() != id);
                    if st.deferred.len() == before {
                        self.diag.report(Warning::RemoveNotInTree { start });
                    }
                }
                dropped = None;
            } else {
                dropped = match st.nodes.remove(&id) {
                    Some(node) => st.tree.remove(node),
                    None => {
                        self.diag.report(Warning::RemoveNotInTree { start });
                        None
                    }
                };
            }
        }
        drop(dropped);
        if in_callback && wait_seq.is_some() {
            self.diag.report(Warning::CalledFromCallback {
                api: "interval remove",
            });
            return Err(Error::InCallback("IntervalNotifier::remove"));
        }
        annotate::might_sleep();
        annotate::invalidate_map_might_lock();
        if let Some(seq) = wait_seq {
            self.wait_seq_change(seq);
        }
        Ok(())
    }

    /// `mmu_interval_read_begin`: the interval's sequence (read by `load`, an `Acquire` load),
    /// after waiting for the epoch that hit it, if one is open.
    ///
    /// Without the tree lock, which Linux takes here: one load of the interval's sequence and
    /// one of `published_seq`, and no wait unless they are equal. Sound because the only
    /// value that calls for a wait is the `cur_seq` of an epoch still open, and an interval
    /// gets that value (`set_seq`, `Release`, from the epoch's callback or from `insert`, both
    /// after the epoch's `published_seq` store in the same thread, under the lock or before the
    /// callback) only after it was published: reading it with `Acquire` makes that store
    /// visible, so this load returns it or a later value, that is the epoch's end or beyond.
    /// Equal: the epoch may still be open, and `wait_seq_change` checks again under the lock.
    /// Not equal: the epoch that wrote `seq` has ended, or `seq` predates the open epoch,
    /// whose callback will then change it and make `read_retry` true, as with the lock. In
    /// the first case the reader goes on to look at the primary's page tables, so it must see
    /// every change made before that end: the store of the end's value is `Release` and this
    /// load `Acquire`, as the lock's unlock and lock were (the loom models caught a `Relaxed`
    /// pair here: a fault read the generation from before an epoch it saw ended).
    #[inline]
    pub(crate) fn read_begin(&self, load: impl FnOnce() -> u64) -> u64 {
        let seq = load();
        // `mmn_broken = "read_begin_relaxed"`: the pair made `Relaxed`, for the model tests.
        #[cfg(not(mmn_broken = "read_begin_relaxed"))]
        let hit = seq == self.published_seq.load(Acquire);
        #[cfg(mmn_broken = "read_begin_relaxed")]
        let hit = seq
            == self
                .published_seq
                .load(std::sync::atomic::Ordering::Relaxed);
        annotate::invalidate_map_might_lock();
        if hit {
            return self.read_begin_hit(seq);
        }
        seq
    }

    /// `read_begin` on an interval the open epoch hit: wait for its end (out of line, so the
    /// inlined fast path stays two loads).
    #[cold]
    #[inline(never)]
    fn read_begin_hit(&self, seq: u64) -> u64 {
        if tls::inside(self.mm_id) {
            self.diag
                .report(Warning::CalledFromCallback { api: "read_begin" });
            // Interval sequences are always odd: an even value never matches.
            return seq & !1;
        }
        self.wait_seq_change(seq);
        seq
    }

    fn wait_seq_change(&self, seq: u64) {
        // The kernel waits with `wait_event`, outside the tree lock; the condition variable
        // releases the lock while waiting, so the validator does not see it held here.
        annotate::might_sleep();
        let mut st = lock(&self.state);
        if st.seq == seq {
            st.waiters += 1;
            while st.seq == seq {
                st = wait(&self.wq, st);
            }
            st.waiters -= 1;
        }
    }

    /// A snapshot of the state.
    pub(crate) fn snapshot(&self) -> IntervalState {
        let st = lock_as(&self.state, ContractLock::Itree);
        IntervalState {
            seq: st.seq,
            active: st.active,
            intervals: st.tree.len(),
            deferred: st.deferred.len(),
        }
    }
}
