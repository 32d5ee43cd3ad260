//! Purpose-built buggy secondary MMUs: each breaks one rule of the contract, and the
//! [`checker`](crate::checker) must catch each. Every one has a correct setting
//! ([`IntervalBug::None`], [`ListBug::None`]) that runs the same code with the rule kept, so a
//! test can show the same scenario clean.
//!
//! The interval mirrors expose their collision window: [`BuggyMirror::fault_with`] runs a
//! closure where a concurrent invalidation would land — after the pages were looked up, before
//! the user lock is taken — so the race is reproduced deterministically.

use std::sync::Arc;

use lockdep::{static_lock_class, Mutex};
use mmu_notifier::{
    Capabilities, Interval, IntervalNotifier, IntervalNotifierOps, Mm, MmuNotifierOps, Range,
    Subscription, WouldBlock,
};
use vmsim::pte::PAGE_SIZE;
use vmsim::{Process, Space, VmError, TASK_SIZE};

use crate::checker::{Access, Checker, Tracker, Translation};
use crate::devpt::{device_access, DevicePt, MAX_TRIES};
use crate::DriverError;

/// The bug of a [`BuggyMirror`] (an interval-notifier mirror in the style of `lib/test_hmm.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntervalBug {
    /// No bug: the reference protocol.
    None,
    /// The callback zaps but never calls `mmu_interval_set_seq`, so `read_retry` never says
    /// retry.
    SetSeqForgotten,
    /// The fault path checks `read_retry` before taking the user lock, so an invalidation can
    /// slip in between the check and the publish.
    RetryOutsideLock,
    /// The fault path publishes without `read_retry` at all.
    NoRetry,
}

struct MirrorState {
    space: Arc<Space>,
    pt: Mutex<DevicePt>,
    bug: IntervalBug,
    check: Tracker,
}

impl IntervalNotifierOps for MirrorState {
    fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
        let Some(mut pt) = range.lock_or_refuse(|| self.pt.lock(), || self.pt.try_lock()) else {
            self.check.interval(range, false);
            return false;
        };
        self.check.interval(range, true);
        if self.bug != IntervalBug::SetSeqForgotten {
            iv.set_seq(cur_seq);
        }
        pt.zap(range.start(), range.end());
        true
    }
}

/// An interval-notifier mirror with one of the [`IntervalBug`]s.
pub struct BuggyMirror {
    state: Arc<MirrorState>,
    notifier: IntervalNotifier,
}

impl BuggyMirror {
    /// Opens a mirror of the whole of `process`'s address space.
    pub fn open(
        process: &Process,
        checker: &Checker,
        bug: IntervalBug,
    ) -> Result<BuggyMirror, DriverError> {
        let state = Arc::new(MirrorState {
            space: process.space().clone(),
            pt: Mutex::new(DevicePt::new(), static_lock_class!("buggy mirror lock")),
            bug,
            check: checker.driver(format!("mirror({bug:?})")),
        });
        let notifier = process
            .mm()
            .interval_notifier_insert(0, TASK_SIZE, state.clone())?;
        Ok(BuggyMirror { state, notifier })
    }

    /// The checker's handle.
    pub fn tracker(&self) -> &Tracker {
        &self.state.check
    }

    /// A device fault on the page at `addr`, with `window` run where a concurrent invalidation
    /// would land (after the lookup, before the user lock). `window` runs on the first attempt
    /// only.
    pub fn fault_with(
        &self,
        process: &Process,
        addr: u64,
        write: bool,
        window: impl FnOnce(),
    ) -> Result<(), DriverError> {
        let mut window = Some(window);
        let iv: &Interval = &self.notifier;
        for _ in 0..MAX_TRIES {
            let seq = iv.read_begin();
            let pfns = match process.hmm_range_fault(iv, seq, addr, addr + PAGE_SIZE, write) {
                Err(VmError::Busy) => continue,
                r => r?,
            };
            let early_retry = self.state.bug == IntervalBug::RetryOutsideLock && iv.read_retry(seq);
            if let Some(w) = window.take() {
                w();
            }
            if early_retry {
                continue;
            }
            let mut pt = self.state.pt.lock();
            let retry = match self.state.bug {
                IntervalBug::None | IntervalBug::SetSeqForgotten => iv.read_retry(seq),
                IntervalBug::RetryOutsideLock | IntervalBug::NoRetry => false,
            };
            if retry {
                continue;
            }
            pt.insert(addr, crate::devpt::one(&pfns)?.into());
            return Ok(());
        }
        Err(DriverError::Busy {
            what: "buggy mirror fault",
            tries: MAX_TRIES,
        })
    }

    /// The device loads the page at `addr` through its page table, without faulting (`None`:
    /// not mapped).
    pub fn try_read(&self, addr: u64) -> Result<Option<u64>, DriverError> {
        let pt = self.state.pt.lock();
        device_access(
            &self.state.check,
            &self.state.space,
            &pt,
            addr,
            Access::Read,
            None,
        )
    }
}

/// The bug of a [`BuggyList`] (a list subscriber in the style of KVM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListBug {
    /// No bug: zap in start, everything dropped at release.
    None,
    /// The secondary mappings are dropped only in `invalidate_range_end`, after the primary
    /// changed its entries.
    ZapOnlyInEnd,
    /// `release` keeps the secondary mappings: the device goes on using frames that exit
    /// frees.
    ReleaseKeepsMappings,
}

struct ListState {
    space: Arc<Space>,
    pt: Mutex<DevicePt>,
    bug: ListBug,
    check: Tracker,
}

/// The notifier side of a [`BuggyList`].
pub struct ListOps(Arc<ListState>);

impl MmuNotifierOps for ListOps {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
            | Capabilities::INVALIDATE_RANGE_END
            | Capabilities::RELEASE
    }
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        let s = &self.0;
        let mut pt = range
            .lock_or_refuse(|| s.pt.lock(), || s.pt.try_lock())
            .ok_or(WouldBlock)?;
        s.check.start(range);
        if s.bug != ListBug::ZapOnlyInEnd {
            pt.zap(range.start(), range.end());
        }
        Ok(())
    }
    fn invalidate_range_end(&self, range: &Range) {
        let s = &self.0;
        let mut pt = s.pt.lock();
        s.check.end(range);
        if s.bug == ListBug::ZapOnlyInEnd {
            pt.zap(range.start(), range.end());
        }
    }
    fn release(&self, _mm: &Mm) {
        let s = &self.0;
        let mut pt = s.pt.lock();
        s.check.release();
        if s.bug != ListBug::ReleaseKeepsMappings {
            pt.zap(0, u64::MAX);
        }
    }
}

/// A list-subscriber mirror with one of the [`ListBug`]s. Its fault path looks a page up with
/// `pin_user_pages` and publishes it only if no invalidation ran meanwhile.
pub struct BuggyList {
    state: Arc<ListState>,
    sub: Option<Subscription<ListOps>>,
}

impl BuggyList {
    /// Registers on `process`.
    pub fn register(
        process: &Process,
        checker: &Checker,
        bug: ListBug,
    ) -> Result<BuggyList, DriverError> {
        let state = Arc::new(ListState {
            space: process.space().clone(),
            pt: Mutex::new(DevicePt::new(), static_lock_class!("buggy list lock")),
            bug,
            check: checker.driver(format!("list({bug:?})")),
        });
        let sub = process.mm().register(ListOps(state.clone()))?;
        Ok(BuggyList {
            state,
            sub: Some(sub),
        })
    }

    /// The checker's handle.
    pub fn tracker(&self) -> &Tracker {
        &self.state.check
    }

    /// Maps the page at `addr` (nothing may run concurrently in this simple fault path).
    pub fn fault(&self, process: &Process, addr: u64) -> Result<(), DriverError> {
        let pinned = process.pin_user_pages(addr, 1, true)?;
        let pfn = crate::devpt::one(&pinned)?;
        let m = self.state.space.machine();
        let t = Translation {
            pfn,
            generation: m.frames().frame(pfn)?.generation(),
            write: true,
        };
        self.state.pt.lock().insert(addr, t);
        process.unpin_user_pages(&pinned)?;
        Ok(())
    }

    /// The device loads the page at `addr` without faulting (`None`: not mapped).
    pub fn try_read(&self, addr: u64) -> Result<Option<u64>, DriverError> {
        let pt = self.state.pt.lock();
        device_access(
            &self.state.check,
            &self.state.space,
            &pt,
            addr,
            Access::Read,
            None,
        )
    }

    /// Unregisters (after exit, the subscription is already released).
    pub fn unregister(mut self) -> Result<(), DriverError> {
        if let Some(s) = self.sub.take() {
            s.unregister()?;
        }
        Ok(())
    }
}
