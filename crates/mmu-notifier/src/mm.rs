//! The address space: its handles (references and users), its builder, and its lifecycle
//! (creating the subscription state, grace periods, teardown).
//!
//! A primary MMU (a simulated mm, the calling process) owns an [`Mm`] and calls its
//! invalidation API (`invalidate.rs`) around every change of its page tables; secondary MMUs
//! subscribe to it (`subscription.rs` for list subscribers, `interval.rs` for intervals).

use std::sync::Arc;

use crate::annotate;
use crate::diag::{Diagnostics, Warning};
use crate::ops::Capabilities;
use crate::primitive::{
    AtomicBool, AtomicPtr, AtomicUsize,
    Ordering::{AcqRel, Acquire, SeqCst},
};
use crate::profile::Profile;
use crate::srcu::Srcu;
use crate::subscribers::Subscriptions;
use crate::tls;

/// Builds an [`Mm`] with a [`Profile`] or a [`Diagnostics`] sink other than the defaults.
#[derive(Default)]
pub struct MmBuilder {
    pub(crate) profile: Profile,
    diag: Option<Arc<Diagnostics>>,
    pub(crate) mmap_lock: Option<Arc<dyn MmapLock>>,
    teardown: Option<Arc<dyn Teardown>>,
}

impl std::fmt::Debug for MmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmBuilder")
            .field("profile", &self.profile)
            .field("mmap_lock", &self.mmap_lock.is_some())
            .field("teardown", &self.teardown.is_some())
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

/// The primary's teardown of an address space: `exit_mmap`, which Linux's `mmput` runs when
/// the last user goes.
///
/// A primary with mappings of its own (a simulated kernel) gives one to
/// [`MmBuilder::teardown`]; the drop of the last [`MmUser`] then runs it, exactly once, instead
/// of a bare [`Mm::release`]. It must call [`Mm::release`] first, with no lock held, as
/// `exit_mmap` calls `mmu_notifier_release` before it unmaps anything; if it returns without
/// having done so, the contract releases the address space after it and reports
/// [`Warning::TeardownWithoutRelease`](crate::Warning::TeardownWithoutRelease).
pub trait Teardown: Send + Sync + 'static {
    /// Tears the address space down.
    fn exit_mmap(&self, mm: &Mm);
}

impl MmBuilder {
    /// The primary's teardown, run by the drop of the last [`MmUser`] (see [`Teardown`]).
    pub fn teardown(mut self, teardown: Arc<dyn Teardown>) -> Self {
        self.teardown = Some(teardown);
        self
    }

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
    /// [`MmUser`] tears the address space down (the [`Teardown`] given to the builder, or
    /// [`Mm::release`] alone).
    ///
    /// # Context
    ///
    /// Any context; allocates (the address space's grace-period domain); never sleeps or fails.
    pub fn build_user(self) -> MmUser {
        let mm = self.build();
        mm.inner.users.store(1, SeqCst);
        MmUser { mm }
    }

    /// The address space with no user: nothing tears it down but an explicit
    /// [`Mm::release`] (a primary that manages its own lifetime, or a test).
    ///
    /// # Context
    ///
    /// Any context; allocates (the address space's grace-period domain); never sleeps or fails.
    pub fn build(self) -> Mm {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Mm {
            inner: Arc::new(MmInner {
                id,
                srcu: Srcu::new(id),
                subs: AtomicPtr::new(std::ptr::null_mut()),
                released: AtomicBool::new(false),
                users: AtomicUsize::new(0),
                profile: self.profile,
                diag: self.diag.unwrap_or_else(Diagnostics::global),
                mmap_lock: self.mmap_lock,
                teardown: self.teardown,
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
    pub(crate) inner: Arc<MmInner>,
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
    ///
    /// # Context
    ///
    /// Any context; allocates; never sleeps or fails. Dropping the last user tears the address
    /// space down, which may sleep (see `Mm::release`).
    pub fn new() -> MmUser {
        MmBuilder::default().build_user()
    }

    /// The address space, as a reference that does not keep it in use (`mmgrab`).
    ///
    /// # Context
    ///
    /// Any context; never sleeps, allocates or fails.
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
        if self.mm.inner.users.fetch_sub(1, SeqCst) != 1 {
            return;
        }
        if let Some(t) = self.mm.inner.teardown.clone() {
            t.exit_mmap(&self.mm);
            if self.mm.is_released() {
                return;
            }
            self.mm.inner.diag.report(Warning::TeardownWithoutRelease);
        }
        self.mm.release();
    }
}

impl std::fmt::Debug for MmUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MmUser").field(&self.mm).finish()
    }
}

pub(crate) struct MmInner {
    pub(crate) id: u64,
    /// The address space's grace-period domain. Every invalidation holds a read section of it
    /// from start to end, subscribed or not, so the first subscription's grace period waits
    /// for invalidations that began before anything was subscribed (see [`Mm::register`]).
    pub(crate) srcu: Srcu,
    /// Null until the first subscription; then an `Arc<Subscriptions>` turned into a raw
    /// pointer, owned by this struct and released in its `Drop`.
    pub(crate) subs: AtomicPtr<Subscriptions>,
    pub(crate) released: AtomicBool,
    /// `mm_users`: the [`MmUser`] handles. Every [`Mm`] handle is a reference (`mm_count`).
    pub(crate) users: AtomicUsize,
    pub(crate) profile: Profile,
    pub(crate) diag: Arc<Diagnostics>,
    pub(crate) mmap_lock: Option<Arc<dyn MmapLock>>,
    /// The primary's `exit_mmap`, run by the last user's drop.
    teardown: Option<Arc<dyn Teardown>>,
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
    /// Paired with the publication in `subs_or_create`: an invalidation enters its read
    /// section and then loads this; registration publishes and then waits for a grace period.
    /// Either the invalidation sees the state or the grace period sees its read section (the
    /// store-load pair of srcu.rs, "Memory ordering", whose barriers order the two).
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
        if subs.itree.is_enabled() {
            subs.itree.release();
        }
        let token = self.inner.srcu.read_lock();
        // SAFETY: read inside the read section `token`.
        let list = unsafe { &*subs.list_ptr() };
        for s in list {
            if s.claim_release() && s.caps.contains(Capabilities::RELEASE) {
                s.ops.release(self);
            }
        }
        subs.unlink_all();
        self.inner.srcu.read_unlock(token);
        if tls::inside(self.inner.id) {
            self.inner
                .diag
                .report(Warning::CalledFromCallback { api: "release" });
            return;
        }
        subs.synchronize(&self.inner.srcu);
    }
}
