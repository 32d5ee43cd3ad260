//! The invalidation: start dispatch, the guard whose drop is the end dispatch, and the
//! callbacks that run under the primary's page-table lock (young, secondary TLBs).
//!
//! # The pairing rule
//!
//! Every subscriber whose `invalidate_range_start` ran and succeeded gets exactly one
//! `invalidate_range_end` for it, and no other. A blockable start cannot fail, so there every
//! started subscriber is ended when the guard drops. A non-blockable start
//! (`mmu_notifier_invalidate_range_start_nonblock`, the OOM reaper) can be refused by any
//! subscriber; Linux since 5.12 (`mn_hlist_invalidate_range_start` in `mm/mmu_notifier.c`)
//! then still calls every start and, before returning the error, calls the end of every
//! subscriber that has one, which is right only because a subscriber whose start may fail is
//! not allowed an end: so those are exactly the subscribers whose start succeeded. The same
//! holds here ([`Capabilities::validate`](crate::Capabilities::validate) enforces the "no
//! end" half at registration), and the interval epoch opened by the same invalidation is
//! closed too, which Linux leaves open. [`Profile::Pre5_12`] reproduces the old kernels,
//! where a refused start ends nobody (seed 004).

use std::marker::PhantomData;

use crate::annotate;
use crate::diag::Warning;
use crate::mm::Mm;
use crate::ops::Capabilities;
use crate::profile::Profile;
use crate::srcu::{ReadToken, Srcu};
use crate::subscribers::{SubList, Subscriber, Subscriptions};
use crate::{Range, WouldBlock};

/// An open invalidation: start has run; dropping it (or [`end`](Self::end)) runs the end side.
///
/// Between start and end the primary changes its page tables for [`range`](Self::range), and
/// subscribers create no new secondary mapping in it. The guard is not `Send`: start and end
/// happen on the same thread, as in the kernel.
#[must_use = "dropping the guard at once ends the invalidation before the page tables change"]
pub struct InvalidateGuard<'a> {
    range: Range,
    srcu: &'a Srcu,
    /// The read section held from start to end, subscribed or not; it also marks this thread
    /// as inside a dispatch of the address space (`tls::inside`).
    token: ReadToken,
    active: Option<Active<'a>>,
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

// Neither the drop nor the start is `#[inline]`: compiled in this crate, the read section's
// thread-local access is a plain `%fs`-relative load; inlined into a caller's crate, it became
// an indirect call through the thread-local's accessor on every invalidation.
impl Drop for InvalidateGuard<'_> {
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
            a.subs.itree.end();
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
                s.callbacks().invalidate_range_end(&self.range);
            }
        }
        // The token itself (the validator's view of the section) drops with the guard's
        // fields, right after this.
        self.srcu.read_unlock_in_place(&self.token);
    }
}

impl Mm {
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
    pub fn invalidate_range_start(&self, mut range: Range) -> InvalidateGuard<'_> {
        annotate::might_sleep();
        range.set_blockable(true);
        let srcu = &self.inner.srcu;
        let token = srcu.read_lock();
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
    // Its body repeats the blockable one's on purpose: one shared body (returning the guard
    // with the start's result) cost 14-25 instructions per invalidation (cachegrind).
    #[track_caller]
    pub fn invalidate_range_start_nonblock(
        &self,
        mut range: Range,
    ) -> Result<InvalidateGuard<'_>, WouldBlock> {
        range.set_blockable(false);
        let srcu = &self.inner.srcu;
        let token = srcu.read_lock();
        let active = match self.subs() {
            None => {
                let _map = annotate::invalidate_map_acquire();
                None
            }
            Some(subs) => match self.start_dispatch(subs, &range) {
                Ok(a) => Some(a),
                Err(e) => {
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
            _not_send: PhantomData,
        })
    }

    /// The start side, called inside the invalidation's read section, which the caller ends if
    /// this fails.
    #[inline(always)]
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
        if subs.itree.is_enabled() {
            subs.itree.start(range)?;
            // `mmn_broken = "end_before_start"`, a deliberately broken protocol for the model
            // tests (tests/loom_protocols.rs): the epoch ends before the primary has changed
            // anything.
            itree_active = cfg!(not(mmn_broken = "end_before_start"));
            #[cfg(mmn_broken = "end_before_start")]
            subs.itree.end();
        }
        let list = subs.list_ptr();
        // SAFETY: loaded inside the read section `token`, which is held until the list is no
        // longer used (end of this dispatch or the guard's drop).
        let subscribers = unsafe { &*list };
        // The pairing rule (see the module docs): every list subscriber gets its start, even
        // after one refused; a refusal is only remembered. If one did, every subscriber with an
        // end is ended below before the error returns: those are exactly the ones whose start
        // succeeded, because a start that can fail comes without an end (registration checks
        // it). The guard ends them all otherwise.
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
                s.callbacks().invalidate_range_start(range)
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
                        s.callbacks().invalidate_range_end(range);
                    }
                }
                if itree_active {
                    subs.itree.end();
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
        // SAFETY: read inside the read section `token`.
        let list = unsafe { &*subs.list_ptr() };
        let mut hit = false;
        for s in list {
            if s.caps.contains(cap) && f(s) {
                hit = true;
                break;
            }
        }
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
        self.young_any(Capabilities::CLEAR_FLUSH_YOUNG, |s| {
            s.ops.clear_flush_young(self, start, end)
        })
    }

    /// Calls `f` on every subscriber declaring `cap`, each in atomic context (the primary's
    /// page-table lock), and ORs the answers.
    fn young_any(&self, cap: Capabilities, mut f: impl FnMut(&Subscriber) -> bool) -> bool {
        let mut young = false;
        self.walk(cap, |s| {
            let _ptl = annotate::atomic_section();
            young |= f(s);
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
        self.young_any(Capabilities::CLEAR_YOUNG, |s| {
            s.ops.clear_young(self, start, end)
        })
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
}
