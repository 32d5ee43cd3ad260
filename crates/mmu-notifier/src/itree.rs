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
//!
//! # An invalidation takes no lock
//!
//! Linux takes `subscriptions->lock` twice per interval invalidation (`mn_itree_inv_start_range`
//! and `mn_itree_inv_end`), so two threads invalidating disjoint intervals of one address
//! space serialise on it. Here the common path takes no lock and writes no line another
//! invalidating thread writes, except the sequence word when an epoch opens or closes:
//!
//! * `active_invalidate_ranges` is striped: each thread counts its invalidations in its own
//!   cache line ([`Stripe`]); the count is the sum. A stripe also counts *pins*: the
//!   invalidations searching the tree at this moment.
//! * The sequence lives alone on its line, with two more bits: the **gate**, which only a
//!   holder of the state lock sets (and clears before unlocking), and the close request
//!   (below).
//! * The start side increments its stripe (active and pinned), then loads the sequence word. If
//!   the gate is down, it searches the tree without the lock, makes the sequence odd if it hit
//!   an interval, and unpins. If the gate is up, it backs out and enters under the lock
//!   instead (the lock holder clears the gate before unlocking).
//! * Whoever changes the tree or closes an epoch holds the lock, raises the gate, then sums the
//!   stripes: it changes the tree only with no pin, and closes the epoch only with no
//!   invalidation active. Raising the gate and the starter's increment are both `SeqCst`
//!   read-modify-writes, each followed by a `SeqCst` load of the other's word, so at least one
//!   sees the other: a starter either sees the gate and backs out, or is seen by the gate
//!   holder, which then neither changes the tree under its search nor closes the epoch it may
//!   have joined.
//! * The end side decrements its stripe and loads the sequence word. With the gate down and
//!   no close request (below) it needs nothing more. Otherwise it sums the stripes: if
//!   another invalidation is still active, that one's end will do the closing (two enders
//!   each decrement, then sum, so the last one sees every decrement); else it takes the lock
//!   and closes the epoch: applies the deferred inserts and removes, makes the sequence even,
//!   wakes the waiters.
//!
//! # Lazy closing
//!
//! Linux closes the epoch in `mn_itree_inv_end` as soon as `active_invalidate_ranges` drops to
//! zero, under the lock. Here an epoch whose invalidations have all ended stays open until
//! somebody needs it closed, and only that somebody pays for the close:
//!
//! * a `read_begin` on an interval the epoch hit (its sequence equals the open one): it takes
//!   the lock, raises the gate and closes the epoch at once if no invalidation is active;
//! * a remove that must wait for the epoch, or an insert or remove queued behind it;
//! * a snapshot ([`Itree::snapshot`]), which closes an idle epoch so that it shows what Linux
//!   would.
//!
//! If invalidations are still active, the one who needs the close sets the **close request**
//! bit of the sequence word (with the gate up, so the argument above covers the enders racing
//! it), and the last active invalidation's end sees the bit and closes the epoch. So an
//! invalidation that meets an open epoch joins it without writing the sequence word, and its
//! end writes nothing but its own stripe: a thread invalidating its own intervals writes no
//! line that another invalidating thread writes, and one thread alone no longer takes the
//! lock twice per invalidation.
//!
//! What a reader may observe differs from Linux in one way, and only towards more waiting:
//! a `read_begin` on an interval hit since the epoch last closed waits (as in Linux) only if
//! that hit's epoch is still open, but the epoch now stays open until *every* invalidation
//! active at the reader's close request has ended, including invalidations that began after
//! the hitting one had ended and did not hit this interval (Linux would have closed the epoch
//! in between, and such an invalidation would have opened a new one or, hitting nothing, none).
//! When nothing is active, the reader closes the epoch itself and does not wait at all. The
//! sequence values differ too (one epoch spans every invalidation until the next close), which
//! nobody may rely on: the contract promises only that `read_retry` sees a change. And a
//! `read_begin` *from inside a callback* of this address space, on an interval hit since the
//! last close, is reported (`CalledFromCallback`) even if the invalidation that hit it has
//! ended; Linux would not wait then, though it would have deadlocked had that invalidation
//! still been running, the case the report is for. Waiting longer is never unsafe: the
//! staleness argument (the reader sees the primary's change made before the close) is the
//! same as for an eager close. Keeping Linux's exact waits while scaling needs an epoch per
//! stripe with cross-stripe joins when two threads hit the same interval (not done). The
//! model variant `mmn_broken = "lazy_no_close"` (an end that ignores the close request)
//! must hang readers and removes in `tests/loom_protocols.rs`, and does.
//!
//! The search needs the tree not to change under it, and the pin guarantees that. The hit
//! intervals are then called without the tree: a hit makes the sequence odd, which freezes the
//! tree (changes are deferred) until the epoch closes, which needs every invalidation to have
//! ended, so the hit intervals
//! stay linked (and alive) until this invalidation's own end. The model
//! `tests/loom_protocols.rs` checks the protocol (loom's cell reports a tree change racing a
//! search), and the real-thread stress in `tests/stress.rs` runs it. Loom models `SeqCst`
//! accesses as `AcqRel`, too weak for the store-load pairs above, so under `--cfg loom` a
//! `SeqCst` fence sits between the two halves of each pair (`primitive::model_fence`); on
//! x86-64 the read-modify-writes already are full barriers and a `SeqCst` load is a plain
//! load.

use std::ops::ControlFlow;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::annotate::{self, lock_as, ContractLock, Held};
use crate::diag::{Diagnostics, Warning};
use crate::interval_tree::{prefetch_lines, IntervalTree};
use crate::primitive::{
    lock, model_fence, spin, thread_stripe, wait, AtomicBool, AtomicU64, Condvar, Mutex,
    Ordering::{Acquire, Relaxed, SeqCst},
    UnsafeCell,
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

/// The sequence word's gate bit (see the module documentation).
const GATE: u64 = 1 << 63;
/// The sequence word's close-request bit: somebody waits for the open epoch to close (a
/// `read_begin` on an interval it hit, a remove) or queued a tree change behind it. Set
/// only while the epoch is open; closing the epoch (a store of the next, even sequence)
/// clears it.
const WANT: u64 = 1 << 62;
/// The sequence itself: the word without its two flag bits.
const SEQ: u64 = !(GATE | WANT);
/// A stripe counts active invalidations in its upper half and pins in its lower half.
const ONE_ACTIVE: u64 = 1 << 32;
const ONE_PIN: u64 = 1;
const PINS: u64 = ONE_ACTIVE - 1;

/// Stripes of the active count (a thread's is `thread_stripe`). Under the model checkers:
/// one (`thread_stripe` is always 0 there). With two, loom 0.7 also trips an internal assertion
/// of its own ("TODO: this sometimes fails" in `rt/atomic.rs`, tokio-rs/loom#252) in the
/// insert/remove model; the argument for the sum over stripes (each a `SeqCst` load after a
/// `SeqCst` read-modify-write) is the same for one stripe or eight, and the real-thread
/// stress runs eight.
#[cfg(not(any(loom, shuttle)))]
const STRIPES: usize = 8;
#[cfg(any(loom, shuttle))]
const STRIPES: usize = 1;

/// One stripe of the active count, alone on its cache lines.
#[repr(align(128))]
struct Stripe(AtomicU64);

/// The sequence word, alone on its cache lines (read by every invalidation, written when an
/// epoch opens or closes and by the gate).
#[repr(align(128))]
struct SeqWord(AtomicU64);

/// The tree, alone on its cache lines (read by every search, written under the gate).
#[repr(align(128))]
struct Tree(UnsafeCell<IntervalTree<Entry>>);

/// The state under the tree lock (the kernel's spinlock).
struct State {
    /// Queued while the tree is frozen: insert if not in the tree, else remove.
    deferred: Vec<Entry>,
    /// Threads waiting in `wait_seq_change`: the end of an epoch wakes only when there are
    /// any (a condition-variable notify is a futex system call even with nobody waiting).
    waiters: u64,
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

/// Entries dropped after the tree lock is released.
type Dropped = SmallVec<[Entry; 8]>;

/// The intervals an invalidation hit, as pointers into the tree's entries.
///
/// No reference count is taken (that would be two read-modify-writes on each hit interval):
/// a non-empty hit list makes the sequence odd, which freezes the tree until this
/// invalidation's share of the epoch ends in [`Itree::end`], and only the tree's own removal
/// (immediate when not frozen, deferred to the end of the epoch otherwise) could drop the
/// entries. So they live at least until the caller calls `end`, which it does only once it
/// is done with them.
struct Hits(SmallVec<[*const dyn Node; 8]>);

impl Hits {
    fn new() -> Hits {
        Hits(SmallVec::new())
    }

    fn iter(&self) -> impl Iterator<Item = &dyn Node> {
        // SAFETY: see the type's documentation: every pointer came from an `Entry` held by
        // the tree, which cannot drop it before this invalidation's `end`, and the list is
        // used only between `start_range` and that `end`.
        self.0.iter().map(|&p| unsafe { &*p })
    }
}

/// One address space's interval tree, its epoch, its wait queue and its enable flag.
pub(crate) struct Itree {
    mm_id: u64,
    diag: Arc<Diagnostics>,
    /// Interval mode is on: invalidations count themselves here.
    enabled: AtomicBool,
    /// Serialises switching interval mode on.
    enable_lock: Mutex<()>,
    /// The next node id (ids only need to be unique).
    next_id: AtomicU64,
    /// The sequence and the gate.
    seq: SeqWord,
    /// The active count and pins.
    stripes: [Stripe; STRIPES],
    /// Searched without the lock (pinned), changed under the lock with the gate up and no pin.
    tree: Tree,
    state: Mutex<State>,
    wq: Condvar,
}

// SAFETY: the tree cell is read only by pinned searches and by holders of the state lock,
// and written only by a holder of the state lock that raised the gate and saw no pin (the
// module documentation gives the argument); its entries are `Send + Sync`.
unsafe impl Sync for Itree {}

/// The state lock held with the gate up: the sequence (gate bit cleared) and the active count
/// seen after raising it. Dropping it lowers the gate, unlocks, wakes the waiters if it closed
/// an epoch, and drops the entries it unlinked.
struct Gated<'a> {
    it: &'a Itree,
    st: Held<'a, State>,
    seq: u64,
    active: u64,
    closed: bool,
    dropped: Dropped,
}

impl Drop for Gated<'_> {
    fn drop(&mut self) {
        // `fetch_and`, not a store: a pinned starter seen by the gate may still make the
        // sequence odd.
        self.it.seq.0.fetch_and(!GATE, SeqCst);
        if self.closed && self.st.waiters != 0 {
            self.it.wq.notify_all();
        }
        // Then the fields drop: the lock is released first, then the entries unlinked, so
        // interval handles drop outside the lock.
    }
}

impl Gated<'_> {
    /// Closes the epoch if it is open and no invalidation is active: applies the deferred
    /// inserts and removes and makes the sequence even (which clears the close request).
    fn close_if_idle(&mut self) {
        if self.seq & 1 == 0 || self.active != 0 {
            return;
        }
        // Nobody active means nobody pinned, and the gate keeps newcomers out.
        for e in std::mem::take(&mut self.st.deferred) {
            match self.with_tree(|t| t.remove(e.start(), e.id())) {
                Some(old) => self.dropped.push(old),
                None => self.tree_insert(&e),
            }
            self.dropped.push(e);
        }
        self.seq = self.seq.wrapping_add(1);
        self.it.seq.0.store(self.seq | GATE, SeqCst);
        self.closed = true;
    }

    /// Queues a tree change behind the open epoch, and asks for the close that applies it
    /// (every queued change comes with its request: the last end then closes the epoch).
    fn defer(&mut self, e: Entry) {
        self.st.deferred.push(e);
        self.it.request_close();
    }

    /// Changes the tree. Only with no pin: the caller saw `active == 0` or waited in
    /// [`Itree::unpinned`].
    fn with_tree<R>(&mut self, f: impl FnOnce(&mut IntervalTree<Entry>) -> R) -> R {
        // SAFETY: the state lock is held and the gate is up, and no search is pinned (the
        // caller's precondition): nobody else reads or writes the tree.
        self.it.tree.0.with_mut(|t| f(unsafe { &mut *t }))
    }

    fn tree_insert(&mut self, e: &Entry) {
        // Ids are unique, so `(start, id)` is never present already.
        let _ = self.with_tree(|t| t.insert(e.start(), e.last(), e.id(), e.clone()));
    }
}

impl Itree {
    pub(crate) fn new(mm_id: u64, diag: Arc<Diagnostics>) -> Itree {
        Itree {
            mm_id,
            diag,
            enabled: AtomicBool::new(false),
            enable_lock: Mutex::new(()),
            next_id: AtomicU64::new(1),
            seq: SeqWord(AtomicU64::new(2)),
            stripes: std::array::from_fn(|_| Stripe(AtomicU64::new(0))),
            tree: Tree(UnsafeCell::new(IntervalTree::new())),
            state: Mutex::new(State {
                deferred: Vec::new(),
                waiters: 0,
            }),
            wq: Condvar::new(),
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

    #[inline]
    fn stripe(&self) -> &AtomicU64 {
        &self.stripes[thread_stripe(STRIPES)].0
    }

    /// The stripes summed: active invalidations in the upper half, pins in the lower.
    fn counts(&self) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(SeqCst)))
    }

    /// Takes the state lock and raises the gate; closes an epoch whose invalidations have all
    /// ended (left open by lazy closing, or its last one on its way to the lock to close it).
    fn gate(&self) -> Gated<'_> {
        let mut g = self.raise_gate();
        g.close_if_idle();
        g
    }

    /// Takes the state lock and raises the gate, and sums the stripes.
    fn raise_gate(&self) -> Gated<'_> {
        let st = lock_as(&self.state, ContractLock::Itree);
        let seq = self.seq.0.fetch_or(GATE, SeqCst) & SEQ;
        model_fence();
        let active = self.counts() >> 32;
        Gated {
            it: self,
            st,
            seq,
            active,
            closed: false,
            dropped: Dropped::new(),
        }
    }

    /// Asks the open epoch to be closed by its last invalidation's end (see "Lazy closing"
    /// in the module documentation). Called with the gate up, after the caller saw an
    /// invalidation active: an ender that decremented before the gate went up was counted,
    /// one that did after sees the gate or this bit, and takes the slow path.
    fn request_close(&self) {
        self.seq.0.fetch_or(WANT, SeqCst);
    }

    /// With the gate up and invalidations active on an even sequence: waits until no search
    /// is pinned (a search is short and takes no lock), then returns the sequence; odd if a
    /// search hit an interval meanwhile (the tree is then frozen).
    fn unpinned(&self) -> u64 {
        let mut step = 0;
        loop {
            // Pins first: a search makes the sequence odd before it unpins.
            let pins = self.counts() & PINS;
            let seq = self.seq.0.load(SeqCst) & SEQ;
            if pins == 0 || seq & 1 == 1 {
                return seq;
            }
            spin(step);
            step = step.saturating_add(1);
        }
    }

    /// `mn_itree_inv_start_range` plus collecting the hit intervals, in ascending start order.
    /// Fills `hits` in place: the collection is not moved (its inline buffer is 128 bytes).
    #[inline]
    fn start_range(&self, range: &Range, hits: &mut Hits) -> u64 {
        let stripe = self.stripe();
        stripe.fetch_add(ONE_ACTIVE | ONE_PIN, SeqCst);
        model_fence();
        let mut seq = self.seq.0.load(SeqCst);
        // `mmn_broken = "skip_gate"`: a deliberately broken protocol for the model tests,
        // where the search ignores the gate (tests/loom_protocols.rs must catch it).
        if seq & GATE != 0 && cfg!(not(mmn_broken = "skip_gate")) {
            // A lock holder is changing the tree or closing the epoch: back out, and enter
            // under the lock, where the gate is down.
            stripe.fetch_sub(ONE_ACTIVE | ONE_PIN, SeqCst);
            let _st = lock_as(&self.state, ContractLock::Itree);
            stripe.fetch_add(ONE_ACTIVE | ONE_PIN, SeqCst);
            seq = self.seq.0.load(SeqCst);
        }
        self.tree.0.with(|t| {
            // SAFETY: pinned, with the gate seen down (or under the lock): a gate holder sees
            // the pin and changes nothing until it is gone.
            let t = unsafe { &*t };
            t.for_each_overlap(range.start(), range.last(), |_, _, _, e| {
                // The hit interval is called once the search is over: start fetching it now
                // (in a large tree it is a cache miss as costly as the search itself).
                prefetch_lines(Arc::as_ptr(e).cast(), 128);
                hits.0.push(Arc::as_ptr(e));
                ControlFlow::Continue(())
            });
        });
        if !hits.0.is_empty() && seq & 1 == 0 {
            // The epoch cannot close while this invalidation is active: this opens it, or
            // finds it opened by another.
            seq = self.seq.0.fetch_or(1, SeqCst) | 1;
        }
        stripe.fetch_sub(ONE_PIN, SeqCst);
        seq & SEQ
    }

    /// The start side (`mn_itree_invalidate`): opens this invalidation's share of the epoch
    /// and calls every hit interval; a refusal in a non-blockable range closes that share and
    /// fails.
    pub(crate) fn start(&self, range: &Range) -> Result<(), WouldBlock> {
        let mut hits = Hits::new();
        let cur_seq = self.start_range(range, &mut hits);
        let blockable = range.is_blockable();
        for e in hits.iter() {
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
                // The hit list is not used past this point.
                self.end();
                return Err(WouldBlock);
            }
        }
        Ok(())
    }

    /// The end side (`mn_itree_inv_end`): when the closing of the epoch was requested, the
    /// last active invalidation closes it, applies the deferred list and wakes the waiters.
    /// Otherwise the epoch stays open (lazy closing, see the module documentation).
    #[inline]
    pub(crate) fn end(&self) {
        self.stripe().fetch_sub(ONE_ACTIVE, SeqCst);
        model_fence();
        let seq = self.seq.0.load(SeqCst);
        if seq & (GATE | WANT) == 0 || cfg!(mmn_broken = "lazy_no_close") {
            // Nobody asked for the epoch to close, and no lock holder is busy: leave it.
            return;
        }
        if seq & GATE == 0 && self.counts() >> 32 != 0 {
            // Another invalidation is active: its end closes the epoch.
            return;
        }
        // The last one (or a lock holder is busy): close the epoch under the lock.
        drop(self.gate());
    }

    /// The teardown invalidation (`mn_itree_release`), which nobody may refuse.
    pub(crate) fn release(&self) {
        let range = Range::whole(Event::Release);
        let mut hits = Hits::new();
        let cur_seq = self.start_range(&range, &mut hits);
        {
            let _mark = tls::enter(self.mm_id);
            for e in hits.iter() {
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
        self.next_id.fetch_add(1, Relaxed)
    }

    /// Links `e` (`mmu_interval_notifier_insert`'s second half): into the tree, or onto the
    /// deferred list while the tree is frozen; its sequence is set so that its first
    /// `read_begin` waits for an invalidation in flight, since nobody knows whether that one
    /// covered it.
    pub(crate) fn insert(&self, e: Entry) {
        let mut g = self.gate();
        if g.active == 0 {
            e.set_seq(g.seq.wrapping_sub(1));
            g.tree_insert(&e);
            return;
        }
        let seq = if g.seq & 1 == 1 {
            g.seq
        } else {
            self.unpinned()
        };
        if seq & 1 == 1 {
            g.defer(e.clone());
            e.set_seq(seq);
        } else {
            // Partially excluded: linked now, and the epoch opened so that its first reader
            // waits for the invalidations in flight.
            g.tree_insert(&e);
            let odd = (self.seq.0.fetch_or(1, SeqCst) & SEQ) | 1;
            e.set_seq(odd);
        }
    }

    /// Unlinks the node `id` (`mmu_interval_notifier_remove`): at once when the tree is not
    /// frozen; otherwise queued, and then waits for the epoch to end, unless called from a
    /// callback of this address space, where it reports and returns [`Error::InCallback`].
    pub(crate) fn remove(&self, me: &Entry) -> Result<(), Error> {
        let (id, start) = (me.id(), me.start());
        let in_callback = tls::inside(self.mm_id);
        let mut wait_seq = None;
        {
            let mut g = self.gate();
            let seq = if g.active == 0 || g.seq & 1 == 1 {
                g.seq
            } else {
                self.unpinned()
            };
            if seq & 1 == 1 {
                // SAFETY: a read under the lock: only readers (pinned searches) run
                // concurrently.
                if self.tree.0.with(|t| unsafe { &*t }.contains(start, id)) {
                    // Frozen tree: queue the removal and wait for the epoch to end.
                    g.defer(me.clone());
                    wait_seq = Some(seq);
                } else {
                    // Its insert is still queued: cancel it.
                    let deferred = &mut g.st.deferred;
                    let before = deferred.len();
                    deferred.retain(|d| d.id() != id);
                    if deferred.len() == before {
                        self.diag.report(Warning::RemoveNotInTree { start });
                    }
                }
            } else {
                match g.with_tree(|t| t.remove(start, id)) {
                    Some(old) => g.dropped.push(old),
                    None => self.diag.report(Warning::RemoveNotInTree { start }),
                }
            }
        }
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
    /// one of the sequence word, and no wait unless they are equal. Sound because the only
    /// value that calls for a wait is the `cur_seq` of an epoch still open, and an interval
    /// gets that value (`set_seq`, `Release`, from the epoch's callback or from `insert`) only
    /// after the epoch was opened by a `SeqCst` read-modify-write of the sequence word that
    /// the setting thread performed or read: reading it with `Acquire` makes that visible, so
    /// this load returns the epoch's value or a later one, that is the epoch's end or beyond.
    /// Equal: the epoch may still be open, and `wait_seq_change` checks again under the lock.
    /// Not equal: the epoch that wrote `seq` has ended, or `seq` predates the open epoch,
    /// whose callback will then change it and make `read_retry` true, as with the lock. In
    /// the first case the reader goes on to look at the primary's page tables, so it must see
    /// every change made before that end: the closing store is `SeqCst` (a release) and this
    /// load `Acquire`, as the lock's unlock and lock were (the loom models catch a `Relaxed`
    /// load here, `mmn_broken = "read_begin_relaxed"`).
    #[inline]
    pub(crate) fn read_begin(&self, load: impl FnOnce() -> u64) -> u64 {
        let seq = load();
        #[cfg(not(mmn_broken = "read_begin_relaxed"))]
        let hit = seq == self.seq.0.load(Acquire) & SEQ;
        #[cfg(mmn_broken = "read_begin_relaxed")]
        let hit = seq == self.seq.0.load(Relaxed) & SEQ;
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
        {
            // Close the epoch now if it is idle (lazy closing left it open); else ask its
            // last invalidation to close it, and count as a waiter before the gate goes down,
            // so that the closer (under this lock) wakes us.
            let mut g = self.gate();
            if g.seq != seq {
                return;
            }
            self.request_close();
            g.st.waiters += 1;
        }
        let mut st = lock(&self.state);
        // The waited-for sequence is odd, and an odd sequence changes only under this lock
        // (when its epoch closes): no wake-up can be missed.
        while self.seq.0.load(Acquire) & SEQ == seq {
            st = wait(&self.wq, st);
        }
        st.waiters -= 1;
    }

    /// A snapshot of the state. An epoch left open by lazy closing with no invalidation
    /// active is closed first, so the snapshot shows what Linux would (an even sequence once
    /// every invalidation has ended), unless tree changes are queued behind it: those must
    /// have been applied by the last end (a close request was made when they were queued),
    /// so an idle epoch with a non-empty deferred list is shown as it is, a lost close.
    pub(crate) fn snapshot(&self) -> IntervalState {
        let mut g = self.raise_gate();
        if g.st.deferred.is_empty() {
            g.close_if_idle();
        }
        IntervalState {
            seq: g.seq,
            active: g.active,
            // SAFETY: under the lock, only pinned searches (readers) run concurrently.
            intervals: self.tree.0.with(|t| unsafe { &*t }.len()),
            deferred: g.st.deferred.len(),
        }
    }
}
