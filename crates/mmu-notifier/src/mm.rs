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
    AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Condvar, Mutex,
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
#[derive(Default)]
pub struct MmBuilder {
    profile: Profile,
    diag: Option<Arc<Diagnostics>>,
    mmap_lock: Option<Arc<dyn MmapLock>>,
}

impl std::fmt::Debug for MmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmBuilder")
            .field("profile", &self.profile)
            .field("mmap_lock", &self.mmap_lock.is_some())
            .finish_non_exhaustive()
    }
}

/// The primary's `mmap_lock`, as the contract sees it.
///
/// Linux's `mmu_interval_notifier_insert` and `mmu_notifier_register` take `mm->mmap_lock`
/// for write (so `might_lock(&mm->mmap_lock)`), and their `_locked` variants assert that the
/// caller holds it (`mmap_assert_write_locked`). Here the primary owns its lock and hands it to
/// [`MmBuilder::mmap_lock`]; the contract never takes it, but with the `lockdep` feature it
/// records the dependency of taking it ([`might_lock`](Self::might_lock)) in every unlocked
/// variant and checks [`is_held`](Self::is_held) in every `_locked` one. With the `lockdep`
/// feature, `lockdep::RwLock<T>` implements it.
pub trait MmapLock: Send + Sync + 'static {
    /// Record the dependencies of taking the lock for write, without taking it
    /// (`might_lock`). Never sleeps.
    fn might_lock(&self);
    /// Whether the calling thread holds the lock (`lockdep_is_held`). An implementation that
    /// cannot know returns true, as the kernel's does with lockdep off.
    fn is_held(&self) -> bool;
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

    /// The primary's `mmap_lock` (see [`MmapLock`]). Without one, the unlocked variants record
    /// nothing and the `_locked` ones check nothing.
    pub fn mmap_lock(mut self, lock: Arc<dyn MmapLock>) -> Self {
        self.mmap_lock = Some(lock);
        self
    }

    /// The address space and its first user (`mm_alloc`: `mm_users == 1`): dropping the last
    /// [`MmUser`] tears the address space down ([`Mm::release`], as `exit_mmap` does).
    pub fn build_user(self) -> MmUser {
        let mm = self.build();
        mm.inner.users.store(1, SeqCst);
        MmUser { mm }
    }

    /// The address space with no user: nothing tears it down but an explicit
    /// [`Mm::release`] (a primary that manages its own lifetime, or a test).
    pub fn build(self) -> Mm {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Mm {
            inner: Arc::new(MmInner {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                srcu: Srcu::new(),
                subs: AtomicPtr::new(std::ptr::null_mut()),
                released: AtomicBool::new(false),
                users: AtomicUsize::new(0),
                profile: self.profile,
                diag: self.diag.unwrap_or_else(Diagnostics::global),
                mmap_lock: self.mmap_lock,
            }),
        }
    }
}

/// One address space's notifier state (the kernel's `mm->notifier_subscriptions`): a
/// *reference* to it (Linux's `mmgrab`/`mm_count`).
///
/// Cloning gives another reference to the same address space. References keep the state
/// alive; they do not keep the address space in use: that is what an [`MmUser`] does
/// (`mm_users`). Subscriptions and intervals hold references, never users, so they cannot keep
/// their own address space from being torn down. The subscription state is created on the
/// first subscription.
#[derive(Clone)]
pub struct Mm {
    inner: Arc<MmInner>,
}

/// A *user* of an address space (Linux's `mmget`/`mm_users`; Rust-for-Linux's `MmWithUser`).
///
/// Derefs to its [`Mm`]. Cloning adds a user; dropping the last one tears the address space
/// down exactly once ([`Mm::release`], as `mmput` → `exit_mmap` → `mmu_notifier_release`):
/// every list subscriber still registered gets `release`, every interval the teardown
/// invalidation. Subscriptions made through it live on as references until their handles
/// go, but no subscriber is ever freed without `release` having run.
pub struct MmUser {
    mm: Mm,
}

impl MmUser {
    /// A new address space with the default profile, and its first user.
    pub fn new() -> MmUser {
        MmBuilder::default().build_user()
    }

    /// The address space, as a reference that does not keep it in use (`mmgrab`).
    pub fn mm(&self) -> &Mm {
        &self.mm
    }
}

impl Default for MmUser {
    fn default() -> Self {
        MmUser::new()
    }
}

impl std::ops::Deref for MmUser {
    type Target = Mm;
    fn deref(&self) -> &Mm {
        &self.mm
    }
}

impl Clone for MmUser {
    /// `mmget`: one more user.
    fn clone(&self) -> Self {
        self.mm.inner.users.fetch_add(1, SeqCst);
        MmUser {
            mm: self.mm.clone(),
        }
    }
}

impl Drop for MmUser {
    /// `mmput`: the last user tears the address space down.
    fn drop(&mut self) {
        if self.mm.inner.users.fetch_sub(1, SeqCst) == 1 {
            self.mm.release();
        }
    }
}

impl std::fmt::Debug for MmUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MmUser").field(&self.mm).finish()
    }
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
    /// `mm_users`: the [`MmUser`] handles. Every [`Mm`] handle is a reference (`mm_count`).
    users: AtomicUsize,
    profile: Profile,
    diag: Arc<Diagnostics>,
    mmap_lock: Option<Arc<dyn MmapLock>>,
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
        // With the grace period broken on purpose (model tests), keep what a reader may still
        // be walking until the address space itself goes, rather than free it: the model must
        // fail on the protocol, not on a use-after-free it cannot see.
        #[cfg(mmn_broken = "skip_grace_period")]
        lock_as(&self.list_lock, ContractLock::List)
            .retired
            .extend(batch);
        #[cfg(not(mmn_broken = "skip_grace_period"))]
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
    ///
    /// # Context
    ///
    /// Any context; never sleeps, allocates or fails.
    pub fn range(&self) -> &Range {
        &self.range
    }

    /// Ends the invalidation now (same as dropping the guard).
    ///
    /// # Context
    ///
    /// As the start it pairs with: may sleep after a blockable start (`might_sleep`, and the
    /// end callbacks may sleep), must not after a non-blockable one. Allocates nothing; never
    /// fails. On the thread that started it.
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
        let _map = annotate::invalidate_map_end();
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
    ///
    /// # Context
    ///
    /// Any context; allocates (the grace-period domain); never sleeps or fails.
    pub fn new() -> Mm {
        MmBuilder::default().build()
    }

    /// A builder for a non-default profile or diagnostics sink.
    ///
    /// # Context
    ///
    /// Any context; never sleeps, allocates or fails.
    pub fn builder() -> MmBuilder {
        MmBuilder::default()
    }

    /// The grace-period domain every invalidation of this address space reads.
    pub(crate) fn srcu(&self) -> &Srcu {
        &self.inner.srcu
    }

    /// A process-unique id for this address space.
    ///
    /// # Context
    ///
    /// Any context; never sleeps, allocates or fails.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The kernel behaviour this address space reproduces.
    ///
    /// # Context
    ///
    /// Any context; never sleeps, allocates or fails.
    pub fn profile(&self) -> Profile {
        self.inner.profile
    }

    /// Where this address space reports contract violations.
    ///
    /// # Context
    ///
    /// Any context; never sleeps, allocates or fails.
    pub fn diagnostics(&self) -> &Arc<Diagnostics> {
        &self.inner.diag
    }

    /// Whether anything ever subscribed (`mm_has_notifiers`).
    ///
    /// # Context
    ///
    /// Any context, callbacks included; one atomic load; never sleeps, allocates or fails.
    #[inline]
    pub fn has_notifiers(&self) -> bool {
        !self.inner.subs.load(Acquire).is_null()
    }

    /// Whether [`release`](Self::release) has run.
    ///
    /// # Context
    ///
    /// Any context; one atomic load; never sleeps, allocates or fails.
    pub fn is_released(&self) -> bool {
        self.inner.released.load(Acquire)
    }

    /// How many [`MmUser`]s the address space has (`mm_users`).
    ///
    /// # Context
    ///
    /// Any context; one atomic load; never sleeps, allocates or fails.
    pub fn users(&self) -> usize {
        self.inner.users.load(SeqCst)
    }

    /// A new user of the address space, unless it has none left (`mmget_not_zero`): an
    /// address space whose last user is gone, or that was built without one, stays torn down
    /// or unmanaged.
    ///
    /// # Context
    ///
    /// Any context; never sleeps or allocates; `None` when the address space has no user left.
    /// Dropping the user it returns may tear the address space down, which sleeps (see
    /// `MmUser`).
    pub fn get_user(&self) -> Option<MmUser> {
        let mut n = self.inner.users.load(SeqCst);
        while n != 0 {
            match self
                .inner
                .users
                .compare_exchange_weak(n, n + 1, SeqCst, SeqCst)
            {
                Ok(_) => {
                    return Some(MmUser { mm: self.clone() });
                }
                Err(cur) => n = cur,
            }
        }
        None
    }

    /// `might_lock(&mm->mmap_lock)`: the unlocked variants of registration would take it.
    #[track_caller]
    pub(crate) fn might_lock_mmap(&self) {
        if let Some(l) = &self.inner.mmap_lock {
            l.might_lock();
        }
    }

    /// `mmap_assert_write_locked(mm)` for the `_locked` variants: reported, not fatal, as the
    /// kernel's `WARN` is.
    pub(crate) fn assert_mmap_locked(&self, api: &'static str) {
        if let Some(l) = &self.inner.mmap_lock {
            if !l.is_held() {
                self.inner.diag.report(Warning::MmapLockNotHeld { api });
            }
        }
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
        self.might_lock_mmap();
        self.register_inner(ops)
    }

    /// [`register`](Self::register) for a caller that already holds the primary's
    /// `mmap_lock` for write (`__mmu_notifier_register`).
    ///
    /// # Context
    ///
    /// As [`register`](Self::register), with the [`MmapLock`] given to the builder held by the
    /// caller: a lock that is not held is reported
    /// ([`Warning::MmapLockNotHeld`]) and the registration goes on, as the kernel's `WARN`
    /// does.
    pub fn register_locked<T: MmuNotifierOps>(&self, ops: T) -> Result<Subscription<T>, Error> {
        annotate::might_sleep();
        self.assert_mmap_locked("register_locked");
        self.register_inner(ops)
    }

    fn register_inner<T: MmuNotifierOps>(&self, ops: T) -> Result<Subscription<T>, Error> {
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
    ///
    /// # Context
    ///
    /// May sleep (a new subscription waits for a grace period); allocates; records `might_lock`
    /// of the primary's `MmapLock` when the builder was given one; `alloc` runs with the
    /// contract's get lock held and must not subscribe to this address space. Fails with a
    /// typed error (`Released`, `TooManyUsers`, `InvalidOps`, `InCallback`), never panics.
    pub fn notifier_get<T: MmuNotifierOps>(
        &self,
        alloc: impl FnOnce(&Mm) -> T,
    ) -> Result<SharedSubscription<T>, Error> {
        annotate::might_sleep();
        self.might_lock_mmap();
        self.notifier_get_inner(alloc)
    }

    /// [`notifier_get`](Self::notifier_get) for a caller that already holds the primary's
    /// `mmap_lock` for write (`mmu_notifier_get_locked`).
    ///
    /// # Context
    ///
    /// As [`notifier_get`](Self::notifier_get), with the [`MmapLock`] given to the builder
    /// held by the caller (not held: [`Warning::MmapLockNotHeld`], and it goes on).
    pub fn notifier_get_locked<T: MmuNotifierOps>(
        &self,
        alloc: impl FnOnce(&Mm) -> T,
    ) -> Result<SharedSubscription<T>, Error> {
        annotate::might_sleep();
        self.assert_mmap_locked("notifier_get_locked");
        self.notifier_get_inner(alloc)
    }

    fn notifier_get_inner<T: MmuNotifierOps>(
        &self,
        alloc: impl FnOnce(&Mm) -> T,
    ) -> Result<SharedSubscription<T>, Error> {
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
    ///
    /// # Context
    ///
    /// May sleep: waits for every open invalidation and running callback of this address space.
    /// Must not be called with a lock held that a callback takes; from inside a callback of
    /// this address space it reports the misuse and returns without waiting. Allocates nothing;
    /// never fails.
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
    ///
    /// # Context
    ///
    /// May sleep (`might_sleep`), and so may the callbacks it runs; the primary calls it with
    /// its own locks held (the mmap lock or the rmap locks, in Linux), which callbacks must
    /// then not take. Allocates nothing of its own; never fails. The guard must be dropped on
    /// the same thread. With nobody subscribed it costs one grace-period read section.
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
    ///
    /// # Context
    ///
    /// Must not sleep, and neither may the callbacks (they run inside
    /// `non_block_start()/_end()`, list and interval callbacks alike); for the OOM reaper,
    /// which holds the mmap lock for read. Allocates nothing of its own; fails with
    /// `WouldBlock` when a subscriber refuses, after ending every start that succeeded
    /// (`Profile::Current`).
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
            // A deliberately broken protocol for the model tests (tests/loom_protocols.rs):
            // the epoch ends before the primary has changed anything.
            #[cfg(mmn_broken = "end_before_start")]
            {
                subs.itree_inv_end();
                itree_active = false;
            }
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
            // `mmn_broken = "skip_pairing"`: the pre-5.12 bug under the current profile, for
            // the model tests.
            if subs.profile == Profile::Current && cfg!(not(mmn_broken = "skip_pairing")) {
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
    ///
    /// # Context
    ///
    /// Called by the primary with its page-table lock held (`ptep_clear_flush_young_notify`
    /// under the PTL in Linux), so each callback runs in atomic context: it must not sleep,
    /// and with the `lockdep` feature a sleeping call inside it is reported. Allocates
    /// nothing; never fails.
    pub fn clear_flush_young(&self, start: u64, end: u64) -> bool {
        let mut young = false;
        self.walk(Capabilities::CLEAR_FLUSH_YOUNG, |s| {
            let _ptl = annotate::atomic_section();
            young |= s.ops.clear_flush_young(self, start, end);
            false
        });
        young
    }

    /// Like [`clear_flush_young`](Self::clear_flush_young) without the flush
    /// (`mmu_notifier_clear_young`).
    ///
    /// # Context
    ///
    /// As [`clear_flush_young`](Self::clear_flush_young): callbacks run in atomic context
    /// (under the primary's page-table lock).
    pub fn clear_young(&self, start: u64, end: u64) -> bool {
        let mut young = false;
        self.walk(Capabilities::CLEAR_YOUNG, |s| {
            let _ptl = annotate::atomic_section();
            young |= s.ops.clear_young(self, start, end);
            false
        });
        young
    }

    /// Whether any subscriber saw `address` accessed; stops at the first that did
    /// (`mmu_notifier_test_young`).
    ///
    /// # Context
    ///
    /// As [`clear_flush_young`](Self::clear_flush_young): callbacks run in atomic context
    /// (under the primary's page-table lock).
    pub fn test_young(&self, address: u64) -> bool {
        self.walk(Capabilities::TEST_YOUNG, |s| {
            let _ptl = annotate::atomic_section();
            s.ops.test_young(self, address)
        })
    }

    /// Invalidates hardware secondary TLBs for `[start, end)`, from the primary's TLB flush
    /// (`mmu_notifier_arch_invalidate_secondary_tlbs`). Callbacks run in atomic context.
    ///
    /// # Context
    ///
    /// Called from the primary's TLB flush, with the page-table lock held: callbacks run in
    /// atomic context and must not sleep (reported with the `lockdep` feature). Allocates
    /// nothing; never fails.
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
    ///
    /// # Context
    ///
    /// May sleep: waits for a grace period, so it must not be called with a lock held that a
    /// callback takes; from inside a callback it reports the misuse and does not wait.
    /// Allocates nothing of its own; never fails; a second call is reported
    /// (`Warning::DoubleRelease`) and does nothing. Called by the last `MmUser`'s drop.
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
    ///
    /// # Context
    ///
    /// May sleep (waits for a grace period): must not be called with a lock held that a
    /// callback of this subscription takes. From a callback of the same address space it does
    /// not wait and returns `Error::InCallback`. Allocates nothing; never panics.
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
    ///
    /// # Context
    ///
    /// Any context that may take a mutex, callbacks included: never waits for a grace period
    /// (the free is deferred). Allocates nothing; never fails.
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
