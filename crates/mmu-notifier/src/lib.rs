//! The Linux MMU-notifier contract, in user space.
//!
//! # The problem
//!
//! A *secondary MMU* — a KVM guest's shadow page tables, an RDMA NIC doing on-demand paging, a
//! GPU mirroring a process, an IOMMU walking CPU page tables, a user-space registration cache —
//! keeps its own translations of an address space's memory. Whenever the *primary* MMU changes
//! or frees a mapping, every such mirror must stop using it first, and may map it again only
//! once the change is complete, without ever publishing a translation it looked up before the
//! change. Linux's answer is the MMU-notifier contract: paired `invalidate_range_start` /
//! `invalidate_range_end` callbacks, a non-blockable variant for the OOM reaper that
//! subscribers may refuse, interval subscriptions with a sequence-count collision-retry
//! protocol, teardown, and unregistration that waits for running callbacks.
//!
//! # The mechanism
//!
//! * An [`Mm`] is one address space's notifier state, as a reference (`mm_count`); an
//!   [`MmUser`] is a user (`mm_users`), and the last user gone tears the address space down
//!   ([`Mm::release`], once). Its primary calls
//!   [`Mm::invalidate_range_start`] (or [`Mm::invalidate_range_start_nonblock`]) around every
//!   change; the returned [`InvalidateGuard`] runs the end side when dropped, so start and end
//!   always pair.
//! * *List subscribers* implement [`MmuNotifierOps`] and [`Mm::register`]; they see every
//!   invalidation. The list is read without a lock inside a per-address-space grace-period
//!   domain (a small SRCU), so unregister can wait for running callbacks.
//! * *Interval subscribers* implement [`IntervalNotifierOps`] and
//!   [`Mm::interval_notifier_insert`] one range; they see only overlapping invalidations and use
//!   [`Interval::read_begin`] / [`Interval::read_retry`] to publish secondary mappings safely
//!   (see the [`interval`] module for the sequence scheme).
//! * Every kernel `WARN`/`BUG` of the contract is a typed [`Error`] at the call, or a
//!   [`Warning`] through one [`Diagnostics`] sink; no misuse is undefined behaviour.
//!
//! # Validating a driver
//!
//! With the crate feature `lockdep`, the contract is annotated with the `lockdep` validator
//! where Linux annotates it (the notifier map across start/end dispatch, `might_lock` in
//! `read_begin` and interval `remove`, `non_block` sections in non-blockable ranges,
//! `might_sleep`, atomic context for `arch_invalidate_secondary_tlbs`, the SRCU read side and
//! grace periods, the contract's own locks). A driver's lock-order and context bugs are then
//! reported from a run that never deadlocks. Without the feature the annotations compile to
//! nothing.
//!
//! # Which API to reach for
//!
//! * Writing a secondary MMU that mirrors ranges on demand: interval notifiers.
//! * One that must see every change of the address space (KVM-style), or age pages: a list
//!   subscriber; [`Mm::notifier_get`] for one shared per address space.
//! * Writing a primary: [`Mm`], [`Range`], [`Event`], and the guard.
//!
//! ```
//! use mmu_notifier::{Event, Interval, IntervalNotifierOps, Mm, Range};
//! use std::sync::Mutex;
//!
//! /// A device page table mirroring one buffer; the mutex is the driver's "user lock".
//! struct Mirror(Mutex<Vec<u64>>);
//!
//! impl IntervalNotifierOps for Mirror {
//!     fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
//!         // Blockable: take the lock; non-blockable: only try it, and refuse if that fails.
//!         let Some(mut pt) =
//!             range.lock_or_refuse(|| self.0.lock().unwrap(), || self.0.try_lock().ok())
//!         else {
//!             return false;
//!         };
//!         iv.set_seq(cur_seq);
//!         pt.clear();
//!         true
//!     }
//! }
//!
//! let mm = Mm::new();
//! let mirror = std::sync::Arc::new(Mirror(Mutex::new(Vec::new())));
//! // An `Arc` of a subscriber is a subscriber: the driver keeps its own handle to the state.
//! let sub = mm.interval_notifier_insert(0x10000, 0x4000, mirror.clone()).unwrap();
//!
//! // The device faults: collision-retry until nothing changed underneath.
//! loop {
//!     let seq = sub.read_begin();
//!     let frames = vec![42, 43, 44, 45]; // look up the primary's pages here
//!     let mut pt = mirror.0.lock().unwrap();
//!     if sub.read_retry(seq) { continue; }
//!     *pt = frames;
//!     break;
//! }
//!
//! // The primary unmaps part of it: the mirror is emptied before the guard exists.
//! let guard = mm.invalidate_range_start(Range::new(0x11000, 0x12000, Event::Unmap).unwrap());
//! assert!(mirror.0.lock().unwrap().is_empty());
//! drop(guard);
//! sub.remove().unwrap();
//! ```
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod annotate;
pub mod diag;
mod error;
pub mod interval;
// The interval index is an implementation detail; `bench-internals` opens it (hidden from the
// docs) to the benchmarks and the index's model test.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod interval_tree;
#[cfg(not(feature = "bench-internals"))]
#[allow(dead_code)]
mod interval_tree;
mod invalidate;
mod itree;
mod mm;
mod ops;
mod primitive;
mod profile;
mod range;
mod srcu;
mod subscribers;
mod subscription;
mod tls;

#[cfg(feature = "lockdep")]
pub use annotate::{Finding, Findings};
pub use diag::{DiagMode, Diagnostics, Warning};
pub use error::{Error, WouldBlock};
pub use interval::{Interval, IntervalNotifier, IntervalNotifierOps, IntervalRef, IntervalState};
pub use invalidate::InvalidateGuard;
pub use mm::{Mm, MmBuilder, MmUser, MmapLock, Teardown};
pub use ops::{Capabilities, MmuNotifierOps};
pub use profile::Profile;
pub use range::{Event, Owner, Range};
pub use subscription::{SharedSubscription, Subscription};
