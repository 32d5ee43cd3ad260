//! The copy-on-write subscriber list and its grace periods (the kernel's `hlist` of
//! `struct mmu_notifier` under `subscriptions->lock`, read under SRCU, freed by `call_srcu`),
//! and the per-address-space state that holds it next to the interval tree.
//!
//! Writers replace the whole list under the list lock and retire the old one; readers walk the
//! current list inside a read section of the address space's grace-period domain, without a
//! lock. What was retired is freed only after a grace period.

use std::any::TypeId;
use std::sync::Arc;

use crate::annotate::{lock_as, ContractLock};
use crate::diag::Diagnostics;
use crate::itree::Itree;
use crate::ops::{Capabilities, MmuNotifierOps};
use crate::primitive::{
    AtomicBool, AtomicPtr, AtomicU32, Mutex,
    Ordering::{AcqRel, Acquire, SeqCst},
};
use crate::profile::Profile;
use crate::srcu::Srcu;

/// The subscriber list: replaced wholesale on every change (copy-on-write), read inside an
/// SRCU read section without any lock.
pub(crate) type SubList = Vec<SubEntry>;

/// One entry of the list, flat: what the dispatch reads (the capabilities and the callbacks'
/// object and vtable) sits in the list's own array, so calling a subscriber costs no load
/// through its `Arc`; the `Arc` (its `Deref` target) keeps the callbacks alive and holds the
/// rest.
pub(crate) struct SubEntry {
    pub(crate) caps: Capabilities,
    callbacks: *const dyn MmuNotifierOps,
    pub(crate) sub: Arc<Subscriber>,
}

// SAFETY: `callbacks` points into `sub.ops`, an `Arc<dyn MmuNotifierOps>`, and the trait
// requires `Send + Sync`; the rest is `Send + Sync` already.
unsafe impl Send for SubEntry {}
// SAFETY: as above.
unsafe impl Sync for SubEntry {}

impl SubEntry {
    pub(crate) fn new(sub: Arc<Subscriber>) -> SubEntry {
        SubEntry {
            caps: sub.caps,
            callbacks: &*sub.ops as *const dyn MmuNotifierOps,
            sub,
        }
    }

    /// The subscriber's callbacks.
    #[inline]
    pub(crate) fn callbacks(&self) -> &dyn MmuNotifierOps {
        // SAFETY: points into `self.sub.ops`, whose object never moves and lives as long as
        // the subscriber, which `self.sub` keeps alive for at least as long as `self`.
        unsafe { &*self.callbacks }
    }
}

impl Clone for SubEntry {
    fn clone(&self) -> SubEntry {
        SubEntry {
            caps: self.caps,
            callbacks: self.callbacks,
            sub: self.sub.clone(),
        }
    }
}

impl std::ops::Deref for SubEntry {
    type Target = Subscriber;
    fn deref(&self) -> &Subscriber {
        &self.sub
    }
}

/// A list subscriber (`struct mmu_notifier`).
pub(crate) struct Subscriber {
    pub(crate) id: u64,
    pub(crate) caps: Capabilities,
    /// The driver's own `Arc` (the one its handle derefs to), unsized: a call goes straight
    /// to its object, with no second pointer to follow.
    pub(crate) ops: Arc<dyn MmuNotifierOps>,
    /// For shared (get/put) subscriptions: the ops type, and a typed handle to hand out.
    pub(crate) shared: Option<(TypeId, Box<dyn std::any::Any + Send + Sync>)>,
    /// Users of a shared subscription; changed only under the list lock.
    pub(crate) users: AtomicU32,
    /// Set by whoever calls `release` (mm teardown or unregister), so it runs exactly once.
    pub(crate) release_claimed: AtomicBool,
}

impl Subscriber {
    pub(crate) fn claim_release(&self) -> bool {
        !self.release_claimed.swap(true, AcqRel)
    }
}

/// A retired subscriber list, freed once no reader can still be walking it.
pub(crate) struct RetiredList(*mut SubList);

// SAFETY: the pointer owns a `Box<SubList>`; `SubList` is `Send`.
unsafe impl Send for RetiredList {}

impl Drop for RetiredList {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` in `new` or `update_list`, unlinked from `list` before it was
        // retired, and dropped only after a grace period (or when the subscriptions die), so no
        // reader holds it.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

pub(crate) struct ListState {
    pub(crate) next_id: u64,
    /// Unlinked lists and subscribers waiting for a grace period (the kernel's `call_srcu`).
    pub(crate) retired: Vec<Retired>,
}

/// Something freed after a grace period.
pub(crate) enum Retired {
    List(#[allow(dead_code)] RetiredList),
    Sub(#[allow(dead_code)] Arc<Subscriber>),
}

/// The per-mm state behind [`Mm`] (`struct mmu_notifier_subscriptions`).
pub(crate) struct Subscriptions {
    pub(crate) profile: Profile,
    /// Never null: the current `Box<SubList>`.
    list: AtomicPtr<SubList>,
    pub(crate) list_lock: Mutex<ListState>,
    /// Serialises `notifier_get` (the kernel holds the mmap write lock there).
    pub(crate) get_lock: Mutex<()>,
    /// The interval subscribers.
    pub(crate) itree: Itree,
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        drop(RetiredList(self.list.load(Acquire)));
    }
}

impl Subscriptions {
    pub(crate) fn new(mm_id: u64, profile: Profile, diag: Arc<Diagnostics>) -> Subscriptions {
        Subscriptions {
            profile,
            list: AtomicPtr::new(Box::into_raw(Box::new(SubList::new()))),
            list_lock: Mutex::new(ListState {
                next_id: 1,
                retired: Vec::new(),
            }),
            get_lock: Mutex::new(()),
            itree: Itree::new(mm_id, diag),
        }
    }

    /// The current list. Only valid to dereference inside a read section (or under the list
    /// lock).
    #[inline]
    pub(crate) fn list_ptr(&self) -> *const SubList {
        // The reader's half of the store-load pair the grace period relies on (see srcu.rs,
        // "Memory ordering"): the read section's barrier orders it after the slot's tag.
        // `Acquire` for the list's contents, published by the swap in `update_list`.
        self.list.load(Acquire)
    }

    /// Replaces the list with `f(current)` under the list lock and retires the old one.
    pub(crate) fn update_list(&self, st: &mut ListState, f: impl FnOnce(&SubList) -> SubList) {
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
        #[cfg(any(mmn_broken = "skip_grace_period", mmn_broken = "no_reader_barrier"))]
        lock_as(&self.list_lock, ContractLock::List)
            .retired
            .extend(batch);
        #[cfg(not(any(mmn_broken = "skip_grace_period", mmn_broken = "no_reader_barrier")))]
        drop(batch);
    }

    /// Unlinks every subscriber (teardown); they are freed with the list after a grace period.
    pub(crate) fn unlink_all(&self) {
        let mut st = lock_as(&self.list_lock, ContractLock::List);
        self.update_list(&mut st, |_| SubList::new());
    }

    /// Frees what was retired if a grace period can be had without waiting.
    pub(crate) fn try_reclaim(&self, srcu: &Srcu) {
        let batch = std::mem::take(&mut lock_as(&self.list_lock, ContractLock::List).retired);
        if batch.is_empty() {
            return;
        }
        // (Under the broken variant of the model tests, never freed: see `synchronize`.)
        if srcu.try_synchronize() && cfg!(not(mmn_broken = "no_reader_barrier")) {
            drop(batch);
        } else {
            lock_as(&self.list_lock, ContractLock::List)
                .retired
                .extend(batch);
        }
    }
}
