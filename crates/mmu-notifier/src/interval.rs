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

use std::sync::{Arc, Weak};

use crate::annotate;
use crate::itree::{Entry, Node};
use crate::primitive::{
    AtomicU64,
    Ordering::{Acquire, Release},
};
use crate::subscribers::Subscriptions;
use crate::{Error, Mm, Range};
#[cfg(doc)]
use crate::{MmapLock, Warning};

pub use crate::itree::IntervalState;

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
    #[inline]
    pub fn read_begin(&self) -> u64 {
        self.subs.itree.read_begin(|| self.seq.load(Acquire))
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

    fn entry(self: &Arc<Self>) -> Entry {
        self.clone()
    }
}

impl Node for Interval {
    fn id(&self) -> u64 {
        self.id
    }
    fn start(&self) -> u64 {
        self.start
    }
    fn last(&self) -> u64 {
        self.last
    }
    #[inline]
    fn invalidate(&self, range: &Range, cur_seq: u64) -> bool {
        self.ops.invalidate(self, range, cur_seq)
    }
    fn set_seq(&self, seq: u64) {
        self.seq.store(seq, Release);
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
        self.iv.subs.itree.remove(&self.iv.entry())
    }
}

impl Drop for IntervalNotifier {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.iv.subs.itree.remove(&self.iv.entry());
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
        subs.itree.enable(self.srcu())?;
        let id = subs.itree.next_id();
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
        subs.itree.insert(iv.entry());
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
        if !subs.itree.is_enabled() {
            return None;
        }
        Some(subs.itree.snapshot())
    }
}
