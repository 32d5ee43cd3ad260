//! An address space's notifier state, list subscribers and paired invalidations.
//!
//! A primary MMU (a simulated mm, the calling process) owns an [`Mm`] and calls its
//! invalidation API around every change of its page tables; secondary MMUs subscribe to it.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::annotate::{self, lock_as, ContractLock};
use crate::diag::{Diagnostics, Warning};
use crate::interval::ItreeState;
use crate::ops::{Capabilities, MmuNotifierOps};
use crate::primitive::{
    AtomicBool, AtomicPtr, AtomicU32, Condvar, Mutex,
    Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst},
};
use crate::srcu::{ReadToken, Srcu};
use crate::tls;
use crate::{Error, Range, WouldBlock};

/// Which kernel behaviour an [`Mm`] reproduces where Linux versions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Linux 5.12 and later, plus the fix Linux still lacks: when a non-blockable start is
    /// refused, every subscriber whose start succeeded gets its end (the pairing fix), and the
    /// interval epoch opened by the same invalidation is closed (reference §1.7).
    #[default]
    Current,
    /// Linux 4.19–5.11: a refused non-blockable start returns without ending anybody, and the
    /// interval epoch stays open. This is the seed-004 bug; use it to test drivers against the
    /// kernels they ship on. A subscriber whose start can fail may also have an end here (as
    /// KVM of that era had), with a [`Warning::FallibleStartWithEnd`] at registration.
    Pre5_12,
}

/// Builds an [`Mm`] with a [`Profile`] or a [`Diagnostics`] sink other than the defaults.
#[derive(Debug, Default)]
pub struct MmBuilder {
    profile: Profile,
    diag: Option<Arc<Diagnostics>>,
}

impl MmBuilder {
    /// The kernel behaviour to reproduce.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Where contract violations are reported (default: [`Diagnostics::global`]).
    pub fn diagnostics(mut self, diag: Arc<Diagnostics>) -> Self {
        self.diag = Some(diag);
        self
    }

    /// The address space.
    pub fn build(self) -> Mm {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Mm {
            inner: Arc::new(MmInner {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                srcu: Srcu::new(),
                subs: AtomicPtr::new(std::ptr::null_mut()),
                released: AtomicBool::new(false),
                profile: self.profile,
                diag: self.diag.unwrap_or_else(Diagnostics::global),
            }),
        }
    }
}

/// One address space's notifier state (the kernel's `mm->notifier_subscriptions`).
///
/// Cloning gives another handle to the same address space. The subscription state is created
/// on the first subscription; until then an invalidation costs one atomic load.
#[derive(Clone)]
pub struct Mm {
    inner: Arc<MmInner>,
}

struct MmInner {
    id: u64,
    /// The address space's grace-period domain. Every invalidation holds a read section of it
    /// from start to end, subscribed or not, so the first subscription's grace period waits
    /// for invalidations that began before anything was subscribed (see [`Mm::register`]).
    srcu: Srcu,
    /// Null until the first subscription; then an `Arc<Subscriptions>` turned into a raw
    /// pointer, owned by this struct and released in its `Drop`.
    subs: AtomicPtr<Subscriptions>,
    released: AtomicBool,
    profile: Profile,
    diag: Arc<Diagnostics>,
}

impl Drop for MmInner {
    fn drop(&mut self) {
        let p = self.subs.load(Acquire);
        if !p.is_null() {
            // SAFETY: `p` came from `Arc::into_raw` in `subs_or_create` and this struct owns
            // that strong count; it is given back exactly once, here.
            drop(unsafe { Arc::from_raw(p) });
        }
    }
}

impl std::fmt::Debug for Mm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mm")
            .field("id", &self.inner.id)
            .field("has_notifiers", &self.has_notifiers())
            .field("released", &self.is_released())
            .finish()
    }
}

impl Default for Mm {
    fn default() -> Self {
        Mm::new()
    }
}

/// The subscriber list: replaced wholesale on every change (copy-on-write), read inside an
/// SRCU read section without any lock.
pub(crate) type SubList = Vec<Arc<Subscriber>>;

/// A list subscriber (`struct mmu_notifier`).
pub(crate) struct Subscriber {
    pub(crate) id: u64,
    pub(crate) caps: Capabilities,
    pub(crate) ops: Box<dyn MmuNotifierOps>,
    /// For shared (get/put) subscriptions: the ops type, and a typed handle to hand out.
    shared: Option<(TypeId, Box<dyn std::any::Any + Send + Sync>)>,
    /// Users of a shared subscription; changed only under the list lock.
    users: AtomicU32,
    /// Set by whoever calls `release` (mm teardown or unregister), so it runs exactly once.
    release_claimed: AtomicBool,
}

impl Subscriber {
    fn claim_release(&self) -> bool {
        !self.release_claimed.swap(true, AcqRel)
    }
}

/// A retired subscriber list, freed once no reader can still be walking it.
struct RetiredList(*mut SubList);

// SAFETY: the pointer owns a `Box<SubList>`; `SubList` is `Send`.
unsafe impl Send for RetiredList {}

impl Drop for RetiredList {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` in `publish`, unlinked from `list` before it was
        // retired, and dropped only after a grace period (or when the subscriptions die), so no
        // reader holds it.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

struct ListState {
    next_id: u64,
    /// Unlinked lists and subscribers waiting for a grace period (the kernel's `call_srcu`).
    retired: Vec<Retired>,
}

enum Retired {
    List(#[allow(dead_code)] RetiredList),
    Sub(#[allow(dead_code)] Arc<Subscriber>),
}

/// The per-mm state behind [`Mm`] (`struct mmu_notifier_subscriptions`).
pub(crate) struct Subscriptions {
    pub(crate) mm_id: u64,
    pub(crate) profile: Profile,
    pub(crate) diag: Arc<Diagnostics>,
    /// Never null: the current `Box<SubList>`.
    list: AtomicPtr<SubList>,
    list_lock: Mutex<ListState>,
    /// Serialises `notifier_get` (the kernel holds the mmap write lock there).
    get_lock: Mutex<()>,
    /// Serialises switching interval mode on.
    itree_enable: Mutex<()>,
    pub(crate) has_itree: AtomicBool,
    pub(crate) itree: Mutex<ItreeState>,
    pub(crate) itree_wq: Condvar,
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        drop(RetiredList(self.list.load(Acquire)));
    }
}

impl Subscriptions {
    fn new(mm_id: u64, profile: Profile, diag: Arc<Diagnostics>) -> Subscriptions {
        Subscriptions {
            mm_id,
            profile,
            diag,
            list: AtomicPtr::new(Box::into_raw(Box::new(SubList::new()))),
            list_lock: Mutex::new(ListState {
                next_id: 1,
                retired: Vec::new(),
            }),
            get_lock: Mutex::new(()),
            itree_enable: Mutex::new(()),
            has_itree: AtomicBool::new(false),
            itree: Mutex::new(ItreeState::new()),
            itree_wq: Condvar::new(),
        }
    }

    /// The current list. Only valid to dereference inside a read section (or under the list
    /// lock).
    #[inline]
    fn list_ptr(&self) -> *const SubList {
        // SeqCst, not Acquire: with the SeqCst reader increment before it and the SeqCst
        // swap in `update_list`, this is the store-load pair the grace period relies on
        // (see srcu.rs, "Memory ordering").
        self.list.load(SeqCst)
    }

    /// Replaces the list with `f(current)` under the list lock and retires the old one.
    fn update_list(&self, st: &mut ListState, f: impl FnOnce(&SubList) -> SubList) {
        // SAFETY: under the list lock the current list cannot be retired, so it is live.
        let cur = unsafe { &*self.list_ptr() };
        let new = Box::into_raw(Box::new(f(cur)));
        let old = self.list.swap(new, SeqCst);
        st.retired.push(Retired::List(RetiredList(old)));
    }

    /// Waits for a grace period, then frees what was retired before it began.
    pub(crate) fn synchronize(&self, srcu: &Srcu) {
        let batch = std::mem::take(&mut lock_as(&self.list_lock, ContractLock::List).retired);
        srcu.synchronize();
        drop(batch);
    }

    /// Frees what was retired if a grace period can be had without waiting.
    fn try_reclaim(&self, srcu: &Srcu) {
        let batch = std::mem::take(&mut lock_as(&self.list_lock, ContractLock::List).retired);
        if batch.is_empty() {
            return;
        }
        if srcu.try_synchronize() {
            drop(batch);
        } else {
            lock_as(&self.list_lock, ContractLock::List)
                .retired
                .extend(batch);
        }
    }

    /// Enables interval mode (`mmu_notifier_register(NULL, mm)`); waits until every
    /// invalidation that began before it has ended, so none of them can have missed the
    /// interval tree.
    pub(crate) fn enable_itree(&self, srcu: &Srcu) -> Result<(), Error> {
        if self.has_itree.load(SeqCst) {
            return Ok(());
        }
        if tls::inside(self.mm_id) {
            self.diag.report(Warning::CalledFromCallback {
                api: "interval_notifier_insert",
            });
            return Err(Error::InCallback("the first interval_notifier_insert"));
        }
        let _g = lock_as(&self.itree_enable, ContractLock::ItreeEnable);
        if !self.has_itree.load(SeqCst) {
            self.has_itree.store(true, SeqCst);
            srcu.synchronize();
        }
        Ok(())
    }
}

/// An open invalidation: start has run; dropping it (or [`end`](Self::end)) runs the end side.
///
/// Between start and end the primary changes its page tables for [`range`](Self::range), and
/// subscribers create no new secondary mapping in it. The guard is not `Send`: start and end
/// happen on the same thread, as in the kernel.
#[must_use = "dropping the guard at once ends the invalidation before the page tables change"]
pub struct InvalidateGuard<'a> {
    range: Range,
    srcu: &'a Srcu,
    /// The read section held from start to end, subscribed or not.
    token: ReadToken,
    active: Option<Active<'a>>,
    _mark: tls::Mark,
    _not_send: PhantomData<*const ()>,
}

struct Active<'a> {
    subs: &'a Subscriptions,
    /// The list the start side walked; its subscribers get the end. Valid while the guard's
    /// read section is held.
    list: *const SubList,
    itree_active: bool,
}

impl InvalidateGuard<'_> {
    /// The range being invalidated (with its blockable flag as the subscribers saw it).
    pub fn range(&self) -> &Range {
        &self.range
    }

    /// Ends the invalidation now (same as dropping the guard).
    pub fn end(self) {}
}

impl Drop for InvalidateGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        let blockable = self.range.is_blockable();
        if blockable {
            annotate::might_sleep();
        }
        // Used in place, not moved out: moving the just-built guard through memory costs a
        // store-forwarding stall on every invalidation.
        let Some(a) = &self.active else {
            self.srcu.read_unlock_in_place(&self.token);
            return;
        };
        let _map = annotate::invalidate_map_acquire();
        if a.itree_active {
            a.subs.itree_inv_end();
        }
        // SAFETY: the read section opened at start (`self.token`) is still held, so the list
        // loaded then has not been freed.
        let list = unsafe { &*a.list };
        for s in list {
            if s.caps.contains(Capabilities::INVALIDATE_RANGE_END) {
                let _nb = if blockable {
                    None
                } else {
                    Some(annotate::non_block())
                };
                s.ops.invalidate_range_end(&self.range);
            }
        }
        // The token itself (the validator's view of the section) and the dispatch mark drop
        // with the guard's fields, right after this.
        self.srcu.read_unlock_in_place(&self.token);
    }
}

impl Mm {
    /// A new address space with the default [`Profile`] and diagnostics sink.
    pub fn new() -> Mm {
        MmBuilder::default().build()
    }

    /// A builder for a non-default profile or diagnostics sink.
    pub fn builder() -> MmBuilder {
        MmBuilder::default()
    }

    /// The grace-period domain every invalidation of this address space reads.
    pub(crate) fn srcu(&self) -> &Srcu {
        &self.inner.srcu
    }

    /// A process-unique id for this address space.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The kernel behaviour this address space reproduces.
    pub fn profile(&self) -> Profile {
        self.inner.profile
    }

    /// Where this address space reports contract violations.
    pub fn diagnostics(&self) -> &Arc<Diagnostics> {
        &self.inner.diag
    }

    /// Whether anything ever subscribed (`mm_has_notifiers`).
    #[inline]
    pub fn has_notifiers(&self) -> bool {
        !self.inner.subs.load(Acquire).is_null()
    }

    /// Whether [`release`](Self::release) has run.
    pub fn is_released(&self) -> bool {
        self.inner.released.load(Acquire)
    }

    /// The subscription state, if anything ever subscribed.
    ///
    /// `SeqCst`, paired with the `SeqCst` publication in `subs_or_create`: an invalidation
    /// enters its read section and then loads this; registration publishes and then waits for
    /// a grace period. Either the invalidation sees the state or the grace period sees its
    /// read section (the store-load pair of srcu.rs, "Memory ordering").
    #[inline]
    pub(crate) fn subs(&self) -> Option<&Subscriptions> {
        let p = self.inner.subs.load(SeqCst);
        // SAFETY: a non-null pointer was published by `subs_or_create` from `Arc::into_raw`
        // and stays valid until `MmInner` drops, which cannot happen while `self` is borrowed.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    pub(crate) fn subs_arc(&self) -> Arc<Subscriptions> {
        let s = self.subs_or_create() as *const Subscriptions;
        // SAFETY: `s` came from `Arc::into_raw` and is kept alive by `MmInner`'s count;
        // incrementing first makes the `from_raw` below own a fresh count of its own.
        unsafe {
            Arc::increment_strong_count(s);
            Arc::from_raw(s)
        }
    }

    pub(crate) fn subs_or_create(&self) -> &Subscriptions {
        if let Some(s) = self.subs() {
            return s;
        }
        let new = Arc::into_raw(Arc::new(Subscriptions::new(
            self.inner.id,
            self.inner.profile,
            self.inner.diag.clone(),
        ))) as *mut Subscriptions;
        match self
            .inner
            .subs
            .compare_exchange(std::ptr::null_mut(), new, SeqCst, SeqCst)
        {
            // SAFETY: just published; owned by `MmInner` from now on.
            Ok(_) => unsafe { &*new },
            Err(cur) => {
                // SAFETY: `new` was never shared; take back the count we made.
                drop(unsafe { Arc::from_raw(new) });
                // SAFETY: `cur` was published by the winner and lives as long as `MmInner`.
                unsafe { &*cur }
            }
        }
    }

    /// Subscribes `ops` to this address space (`mmu_notifier_register`).
    ///
    /// Its declared [`Capabilities`] are checked first (against the address space's
    /// [`Profile`]). On return, no invalidation that began before the subscription is still
    /// running, so the subscriber cannot have missed the start of one it might map pages under
    /// — including one begun while nothing at all was subscribed. New list subscribers are
    /// called before older ones.
    ///
    /// # The first subscription
    ///
    /// Linux makes `__mmu_notifier_register` take `mm_take_all_locks()`, which the primary
    /// holds around every change, so no invalidation is open while a subscriber is added. Here
    /// every invalidation, subscribed or not, holds the address space's grace-period read
    /// section from start to end, and registration waits for a grace period after linking: the
    /// same exclusion, paid by the invalidation of an address space with no subscriber as one
    /// read section (two thread-local counter updates) instead of one atomic load.
    ///
    /// # Context
    ///
    /// May sleep (waits for a grace period, that is for every open invalidation and running
    /// callback of this address space); allocates; must not be called with a lock held that an
    /// invalidation of this address space, or one of its callbacks, takes. Fails with a typed
    /// error, never panics.
    ///
    /// Errors: [`Error::InvalidOps`] for a forbidden combination of callbacks,
    /// [`Error::Released`] after [`release`](Self::release), [`Error::InCallback`] when called
    /// from a callback of this address space (it would wait for itself; nothing is registered).
    pub fn register<T: MmuNotifierOps>(&self, ops: T) -> Result<Subscription<T>, Error> {
        annotate::might_sleep();
        let ops = Arc::new(ops);
        let sub = self.link(Box::new(ops.clone()), None)?;
        Ok(Subscription {
            mm: self.clone(),
            sub,
            ops,
            done: false,
        })
    }

    fn link(
        &self,
        ops: Box<dyn MmuNotifierOps>,
        shared: Option<(TypeId, Box<dyn std::any::Any + Send + Sync>)>,
    ) -> Result<Arc<Subscriber>, Error> {
        let caps = ops.capabilities();
        caps.validate_for(self.inner.profile)?;
        if self.is_released() {
            return Err(Error::Released);
        }
        if tls::inside(self.inner.id) {
            self.inner
                .diag
                .report(Warning::CalledFromCallback { api: "register" });
            return Err(Error::InCallback("register"));
        }
        let subs = self.subs_or_create();
        let sub = {
            let mut st = lock_as(&subs.list_lock, ContractLock::List);
            let sub = Arc::new(Subscriber {
                id: st.next_id,
                caps,
                ops,
                shared,
                users: AtomicU32::new(1),
                release_claimed: AtomicBool::new(false),
            });
            st.next_id += 1;
            subs.update_list(&mut st, |cur| {
                let mut v = Vec::with_capacity(cur.len() + 1);
                v.push(sub.clone());
                v.extend(cur.iter().cloned());
                v
            });
            sub
        };
        if caps.is_fallible_start_with_end() {
            // Only `Profile::Pre5_12` lets it through `validate_for`.
            self.inner
                .diag
                .report(Warning::FallibleStartWithEnd { subscriber: sub.id });
        }
        subs.synchronize(&self.inner.srcu);
        Ok(sub)
    }

    /// The shared subscription of type `T` to this address space, created by `alloc` if there
    /// is none (`mmu_notifier_get`): one per (address space, ops type), reference counted.
    ///
    /// The last [`SharedSubscription`] dropped unlinks it without calling `release` and frees
    /// it after a grace period (`mmu_notifier_put`); [`synchronize`](Self::synchronize) waits
    /// for such pending frees. `alloc` must not subscribe to this address space itself.
    pub fn notifier_get<T: MmuNotifierOps>(
        &self,
        alloc: impl FnOnce(&Mm) -> T,
    ) -> Result<SharedSubscription<T>, Error> {
        annotate::might_sleep();
        if self.is_released() {
            return Err(Error::Released);
        }
        let subs = self.subs_or_create();
        let _g = lock_as(&subs.get_lock, ContractLock::Get);
        {
            let _l = lock_as(&subs.list_lock, ContractLock::List);
            // SAFETY: under the list lock the current list is live.
            let list = unsafe { &*subs.list_ptr() };
            for s in list {
                if let Some((tid, any)) = &s.shared {
                    if *tid == TypeId::of::<T>() {
                        let Some(ops) = any.downcast_ref::<Arc<T>>() else {
                            continue;
                        };
                        let users = s.users.load(Relaxed);
                        if users == u32::MAX {
                            return Err(Error::TooManyUsers);
                        }
                        s.users.store(users + 1, Relaxed);
                        return Ok(SharedSubscription {
                            mm: self.clone(),
                            sub: s.clone(),
                            ops: ops.clone(),
                            done: false,
                        });
                    }
                }
            }
        }
        let ops = Arc::new(alloc(self));
        let sub = self.link(
            Box::new(ops.clone()),
            Some((TypeId::of::<T>(), Box::new(ops.clone()))),
        )?;
        Ok(SharedSubscription {
            mm: self.clone(),
            sub,
            ops,
            done: false,
        })
    }

    /// Waits for a grace period of this address space: every callback running now has
    /// returned, and every shared subscription already put has been freed
    /// (`mmu_notifier_synchronize`). Grace periods are per address space, so a slow callback
    /// elsewhere does not delay this one.
    pub fn synchronize(&self) {
        if let Some(s) = self.subs() {
            if tls::inside(self.inner.id) {
                self.inner
                    .diag
                    .report(Warning::CalledFromCallback { api: "synchronize" });
                return;
            }
            s.synchronize(&self.inner.srcu);
        }
    }

    /// Starts a blockable invalidation of `range` (`mmu_notifier_invalidate_range_start`).
    ///
    /// Never fails: subscribers may sleep, and a subscriber that refuses anyway is reported and
    /// ignored, as in the kernel. Dispatch order: interval subscribers hit by the range, by
    /// ascending start, then list subscribers, newest first.
    #[track_caller]
    #[inline]
    pub fn invalidate_range_start(&self, mut range: Range) -> InvalidateGuard<'_> {
        annotate::might_sleep();
        range.set_blockable(true);
        let srcu = &self.inner.srcu;
        let token = srcu.read_lock();
        let mark = tls::enter(self.inner.id);
        let active = match self.subs() {
            None => {
                // As in Linux, the map is taken whether or not anyone is subscribed.
                let _map = annotate::invalidate_map_acquire();
                None
            }
            Some(subs) => self.start_dispatch(subs, &range).ok(),
        };
        InvalidateGuard {
            range,
            srcu,
            token,
            active,
            _mark: mark,
            _not_send: PhantomData,
        }
    }

    /// Starts a non-blockable invalidation of `range`
    /// (`mmu_notifier_invalidate_range_start_nonblock`), as the OOM reaper does.
    ///
    /// Subscribers must not sleep; one that would have to refuses, and then the whole start
    /// fails with [`WouldBlock`]: the caller must leave the range alone and may retry later.
    /// Every list subscriber still gets its start; before the error is returned, every
    /// subscriber whose start succeeded has already been ended and the interval epoch is
    /// closed (unless the [`Profile::Pre5_12`] profile asks for the old, unpaired behaviour).
    /// An interval subscriber that refuses stops dispatch before the list subscribers.
    #[track_caller]
    pub fn invalidate_range_start_nonblock(
        &self,
        mut range: Range,
    ) -> Result<InvalidateGuard<'_>, WouldBlock> {
        range.set_blockable(false);
        let srcu = &self.inner.srcu;
        let token = srcu.read_lock();
        let mark = tls::enter(self.inner.id);
        let active = match self.subs() {
            None => {
                let _map = annotate::invalidate_map_acquire();
                None
            }
            Some(subs) => match self.start_dispatch(subs, &range) {
                Ok(a) => Some(a),
                Err(e) => {
                    drop(mark);
                    srcu.read_unlock(token);
                    return Err(e);
                }
            },
        };
        Ok(InvalidateGuard {
            range,
            srcu,
            token,
            active,
            _mark: mark,
            _not_send: PhantomData,
        })
    }

    /// The start side, called inside the invalidation's read section and dispatch mark, which
    /// the caller ends if this fails.
    #[inline]
    fn start_dispatch<'a>(
        &'a self,
        subs: &'a Subscriptions,
        range: &Range,
    ) -> Result<Active<'a>, WouldBlock> {
        let blockable = range.is_blockable();
        // Inside the read section, so the validator records map → callback locks directly
        // (a recursive-read section between them would hide those edges).
        let _map = annotate::invalidate_map_acquire();
        let mut itree_active = false;
        if subs.has_itree.load(SeqCst) {
            subs.itree_invalidate(range)?;
            itree_active = true;
        }
        let list = subs.list_ptr();
        // SAFETY: loaded inside the read section `token`, which is held until the list is no
        // longer used (end of this dispatch or the guard's drop).
        let subscribers = unsafe { &*list };
        let mut failed = false;
        for s in subscribers {
            if !s.caps.contains(Capabilities::INVALIDATE_RANGE_START) {
                continue;
            }
            let r = {
                let _nb = if blockable {
                    None
                } else {
                    Some(annotate::non_block())
                };
                s.ops.invalidate_range_start(range)
            };
            if r.is_err() {
                if !s.caps.contains(Capabilities::START_CAN_FAIL) {
                    self.inner
                        .diag
                        .report(Warning::UndeclaredStartFailure { subscriber: s.id });
                }
                if blockable {
                    self.inner.diag.report(Warning::BlockableStartFailed {
                        subscriber: s.id,
                        event: range.event(),
                    });
                } else {
                    failed = true;
                }
            }
        }
        if failed {
            if subs.profile == Profile::Current {
                // Every subscriber with an end had a start that cannot fail, so these are
                // exactly the ones whose start succeeded. Not inside non_block, as in Linux.
                for s in subscribers {
                    if s.caps.contains(Capabilities::INVALIDATE_RANGE_END) {
                        s.ops.invalidate_range_end(range);
                    }
                }
                if itree_active {
                    subs.itree_inv_end();
                }
            }
            return Err(WouldBlock);
        }
        Ok(Active {
            subs,
            list,
            itree_active,
        })
    }

    /// Runs `f` on every list subscriber declaring `cap`, inside a read section, until it
    /// returns true; returns whether one did.
    fn walk(&self, cap: Capabilities, mut f: impl FnMut(&Subscriber) -> bool) -> bool {
        let Some(subs) = self.subs() else {
            return false;
        };
        let token = self.inner.srcu.read_lock();
        let _mark = tls::enter(self.inner.id);
        // SAFETY: read inside the read section `token`.
        let list = unsafe { &*subs.list_ptr() };
        let mut hit = false;
        for s in list {
            if s.caps.contains(cap) && f(s) {
                hit = true;
                break;
            }
        }
        drop(_mark);
        self.inner.srcu.read_unlock(token);
        hit
    }

    /// Tests and clears the secondary accessed bits in `[start, end)`, flushing secondary
    /// TLBs; the OR of every subscriber's answer (`mmu_notifier_clear_flush_young`).
    pub fn clear_flush_young(&self, start: u64, end: u64) -> bool {
        let mut young = false;
        self.walk(Capabilities::CLEAR_FLUSH_YOUNG, |s| {
            young |= s.ops.clear_flush_young(self, start, end);
            false
        });
        young
    }

    /// Like [`clear_flush_young`](Self::clear_flush_young) without the flush
    /// (`mmu_notifier_clear_young`).
    pub fn clear_young(&self, start: u64, end: u64) -> bool {
        let mut young = false;
        self.walk(Capabilities::CLEAR_YOUNG, |s| {
            young |= s.ops.clear_young(self, start, end);
            false
        });
        young
    }

    /// Whether any subscriber saw `address` accessed; stops at the first that did
    /// (`mmu_notifier_test_young`).
    pub fn test_young(&self, address: u64) -> bool {
        self.walk(Capabilities::TEST_YOUNG, |s| {
            s.ops.test_young(self, address)
        })
    }

    /// Invalidates hardware secondary TLBs for `[start, end)`, from the primary's TLB flush
    /// (`mmu_notifier_arch_invalidate_secondary_tlbs`). Callbacks run in atomic context.
    pub fn arch_invalidate_secondary_tlbs(&self, start: u64, end: u64) {
        self.walk(Capabilities::ARCH_INVALIDATE_SECONDARY_TLBS, |s| {
            let _atomic = annotate::atomic_section();
            s.ops.arch_invalidate_secondary_tlbs(self, start, end);
            false
        });
    }

    /// Tears the address space down (`mmu_notifier_release`, from `exit_mmap`).
    ///
    /// Interval subscribers get a blockable [`Event::Release`](crate::Event::Release)
    /// invalidation of the whole space, which they must not refuse; list subscribers get
    /// `release` once (unless their unregister already called it) and are unlinked. Returns
    /// after a grace period, so no `release` started by a concurrent unregister is still
    /// running. A second call is reported and does nothing.
    pub fn release(&self) {
        if self.inner.released.swap(true, AcqRel) {
            self.inner.diag.report(Warning::DoubleRelease);
            return;
        }
        let Some(subs) = self.subs() else {
            return;
        };
        annotate::might_sleep();
        if subs.has_itree.load(SeqCst) {
            subs.itree_release();
        }
        let token = self.inner.srcu.read_lock();
        let mark = tls::enter(self.inner.id);
        // SAFETY: read inside the read section `token`.
        let list = unsafe { &*subs.list_ptr() };
        for s in list {
            if s.claim_release() && s.caps.contains(Capabilities::RELEASE) {
                s.ops.release(self);
            }
        }
        {
            let mut st = lock_as(&subs.list_lock, ContractLock::List);
            subs.update_list(&mut st, |_| SubList::new());
        }
        drop(mark);
        self.inner.srcu.read_unlock(token);
        if tls::inside(self.inner.id) {
            self.inner
                .diag
                .report(Warning::CalledFromCallback { api: "release" });
            return;
        }
        subs.synchronize(&self.inner.srcu);
    }

    /// Unlinks `sub` (unregister or last put) and retires it.
    fn unlink(&self, sub: &Arc<Subscriber>) {
        if let Some(subs) = self.subs() {
            let mut st = lock_as(&subs.list_lock, ContractLock::List);
            // SAFETY: under the list lock the current list is live.
            let linked = unsafe { &*subs.list_ptr() }
                .iter()
                .any(|s| Arc::ptr_eq(s, sub));
            if linked {
                subs.update_list(&mut st, |cur| {
                    cur.iter()
                        .filter(|s| !Arc::ptr_eq(s, sub))
                        .cloned()
                        .collect()
                });
            }
            st.retired.push(Retired::Sub(sub.clone()));
        }
    }

    fn unregister_sub(&self, sub: &Arc<Subscriber>) -> Result<(), Error> {
        let Some(subs) = self.subs() else {
            return Ok(());
        };
        if sub.claim_release() && sub.caps.contains(Capabilities::RELEASE) {
            let token = self.inner.srcu.read_lock();
            {
                let _mark = tls::enter(self.inner.id);
                sub.ops.release(self);
            }
            self.inner.srcu.read_unlock(token);
        }
        self.unlink(sub);
        if tls::inside(self.inner.id) {
            self.inner
                .diag
                .report(Warning::CalledFromCallback { api: "unregister" });
            subs.try_reclaim(&self.inner.srcu);
            return Err(Error::InCallback("unregister"));
        }
        subs.synchronize(&self.inner.srcu);
        Ok(())
    }

    fn put_sub(&self, sub: &Arc<Subscriber>) {
        let Some(subs) = self.subs() else {
            return;
        };
        let last = {
            let _l = lock_as(&subs.list_lock, ContractLock::List);
            let users = sub.users.load(Relaxed);
            if users == 0 {
                // Unreachable through the API (one handle per user); kept as the kernel's WARN.
                self.inner.diag.report(Warning::PutWithoutUsers);
                return;
            }
            sub.users.store(users - 1, Relaxed);
            users == 1
        };
        if last {
            self.unlink(sub);
            subs.try_reclaim(&self.inner.srcu);
        }
    }
}

/// A list subscription made by [`Mm::register`]. Gives access to the subscriber (`Deref`).
///
/// [`unregister`](Self::unregister) it when done; dropping it unregisters too (ignoring the
/// error).
pub struct Subscription<T: MmuNotifierOps> {
    mm: Mm,
    sub: Arc<Subscriber>,
    ops: Arc<T>,
    done: bool,
}

impl<T: MmuNotifierOps> Subscription<T> {
    /// Unsubscribes (`mmu_notifier_unregister`): calls `release` if the address space has not
    /// already done so, unlinks, and waits until no callback of this subscription is running or
    /// can run.
    ///
    /// Called from inside a callback of the same address space it cannot wait for itself: it
    /// still calls `release` and unlinks, reports the misuse and returns
    /// [`Error::InCallback`].
    pub fn unregister(mut self) -> Result<(), Error> {
        self.done = true;
        self.mm.unregister_sub(&self.sub)
    }

    /// The address space.
    pub fn mm(&self) -> &Mm {
        &self.mm
    }

    /// This subscriber's id (as named in diagnostics).
    pub fn id(&self) -> u64 {
        self.sub.id
    }
}

impl<T: MmuNotifierOps> std::ops::Deref for Subscription<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

impl<T: MmuNotifierOps> Drop for Subscription<T> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.mm.unregister_sub(&self.sub);
        }
    }
}

/// One user's reference to a shared subscription made by [`Mm::notifier_get`].
///
/// Dropping it (or [`put`](Self::put)) is `mmu_notifier_put`: the last put unlinks the
/// subscriber without calling `release` and frees it after a grace period. The user must have
/// dropped every secondary mapping before the last put.
pub struct SharedSubscription<T: MmuNotifierOps> {
    mm: Mm,
    sub: Arc<Subscriber>,
    ops: Arc<T>,
    done: bool,
}

impl<T: MmuNotifierOps> SharedSubscription<T> {
    /// Drops this user's reference. Never waits, so it may be called from a callback.
    pub fn put(mut self) {
        self.done = true;
        self.mm.put_sub(&self.sub);
    }

    /// How many users hold the subscription.
    pub fn users(&self) -> u32 {
        self.sub.users.load(Relaxed)
    }

    /// The address space.
    pub fn mm(&self) -> &Mm {
        &self.mm
    }

    /// Whether `self` and `other` are the same subscription.
    pub fn same_as(&self, other: &SharedSubscription<T>) -> bool {
        Arc::ptr_eq(&self.sub, &other.sub)
    }
}

impl<T: MmuNotifierOps> std::ops::Deref for SharedSubscription<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.ops
    }
}

impl<T: MmuNotifierOps> Drop for SharedSubscription<T> {
    fn drop(&mut self) {
        if !self.done {
            self.mm.put_sub(&self.sub);
        }
    }
}

/// A subscriber shared through an `Arc` is a subscriber.
impl<T: MmuNotifierOps> MmuNotifierOps for Arc<T> {
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn release(&self, mm: &Mm) {
        (**self).release(mm)
    }
    fn clear_flush_young(&self, mm: &Mm, start: u64, end: u64) -> bool {
        (**self).clear_flush_young(mm, start, end)
    }
    fn clear_young(&self, mm: &Mm, start: u64, end: u64) -> bool {
        (**self).clear_young(mm, start, end)
    }
    fn test_young(&self, mm: &Mm, address: u64) -> bool {
        (**self).test_young(mm, address)
    }
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        (**self).invalidate_range_start(range)
    }
    fn invalidate_range_end(&self, range: &Range) {
        (**self).invalidate_range_end(range)
    }
    fn arch_invalidate_secondary_tlbs(&self, mm: &Mm, start: u64, end: u64) {
        (**self).arch_invalidate_secondary_tlbs(mm, start, end)
    }
}

#[doc(hidden)]
impl<T: MmuNotifierOps> SharedSubscription<T> {
    /// Test hook: pretend the subscription has `n` users, to exercise the overflow check
    /// without four billion handles.
    pub fn __set_users_for_test(&self, n: u32) {
        self.sub.users.store(n, Release);
    }
}
