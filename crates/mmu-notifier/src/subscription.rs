//! Subscription handles of list subscribers: [`Mm::register`] and its [`Subscription`],
//! [`Mm::notifier_get`] and its [`SharedSubscription`], and how each goes away (unregister,
//! put).

use std::any::TypeId;
use std::sync::Arc;

use crate::annotate::{self, lock_as, ContractLock};
use crate::diag::Warning;
use crate::mm::Mm;
use crate::ops::{Capabilities, MmuNotifierOps};
use crate::primitive::{
    AtomicBool, AtomicU32,
    Ordering::{Relaxed, Release},
};
use crate::subscribers::{Retired, SubEntry, Subscriber};
use crate::tls;
use crate::{Error, Range, WouldBlock};
#[cfg(doc)]
use crate::{MmapLock, Profile};

impl Mm {
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
        let sub = self.link(ops.clone(), None)?;
        Ok(Subscription {
            mm: self.clone(),
            sub,
            ops,
            done: false,
        })
    }

    fn link(
        &self,
        ops: Arc<dyn MmuNotifierOps>,
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
                v.push(SubEntry::new(sub.clone()));
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
                            sub: s.sub.clone(),
                            ops: ops.clone(),
                            done: false,
                        });
                    }
                }
            }
        }
        let ops = Arc::new(alloc(self));
        let sub = self.link(
            ops.clone(),
            Some((TypeId::of::<T>(), Box::new(ops.clone()))),
        )?;
        Ok(SharedSubscription {
            mm: self.clone(),
            sub,
            ops,
            done: false,
        })
    }

    /// Unlinks `sub` (unregister or last put) and retires it.
    fn unlink(&self, sub: &Arc<Subscriber>) {
        if let Some(subs) = self.subs() {
            let mut st = lock_as(&subs.list_lock, ContractLock::List);
            // SAFETY: under the list lock the current list is live.
            let linked = unsafe { &*subs.list_ptr() }
                .iter()
                .any(|s| Arc::ptr_eq(&s.sub, sub));
            if linked {
                subs.update_list(&mut st, |cur| {
                    cur.iter()
                        .filter(|s| !Arc::ptr_eq(&s.sub, sub))
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
            sub.ops.release(self);
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
