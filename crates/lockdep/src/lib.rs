//! A lockdep-style lock-dependency and context validator for Rust programs.
//!
//! # The problem
//!
//! A deadlock needs an unlucky interleaving: thread 1 holds A and wants B at the moment
//! thread 2 holds B and wants A. Tests rarely hit that moment, so the bug ships, and hangs a
//! machine in production. Worse deadlocks go through things that are not locks at all: a
//! lock held across a memory allocation that enters reclaim, which invalidates mappings
//! through an MMU-notifier callback that takes the same lock (seed 001); a notifier that
//! sleeps on a mutex inside the OOM reaper, which must never block (seed 003); a mutex taken
//! in atomic context (seed 000). These need reclaim, an OOM kill, or two notifiers to line
//! up, and almost never do in a test.
//!
//! # The mechanism
//!
//! Linux's lockdep does not wait for the interleaving. It records, for every acquisition,
//! "B was taken while A was held" as an edge A → B between lock *classes* (all locks created
//! at one place in the code form one class), and reports the first edge that closes a cycle:
//! the *possibility* of the deadlock, from one run of code that did not deadlock, with the
//! threads never overlapping. This crate does the same in user space:
//!
//! - **Classes** ([`LockClassKey`], [`static_lock_class!`], [`DynamicKey`], subclasses for
//!   nesting): one per definition site.
//! - **A held-lock stack per task**, reached through a task-context abstraction that also
//!   works under the loom model checker.
//! - **A chain cache**: each distinct chain of held classes is validated once; afterwards an
//!   acquisition is a hash and a few atomic loads, with no global lock.
//! - **Cycle search** by breadth-first search over the graph, with lockdep's read/recursive-read
//!   rules, so cycles that cannot deadlock (recursive readers) are not reported.
//! - **Pseudo-locks** ([`LockMap`]) for things that behave like locks: reclaim
//!   ([`FS_RECLAIM_MAP`]), an upper layer's "callbacks are running" (registered with
//!   [`reclaim_primes!`] when reclaim may enter it), grace periods, flushes.
//! - **Contexts**: [`might_sleep`] reports sleeping in atomic context (a [`SpinLock`] held,
//!   an [`atomic_section`]) or in a [`non_block_start`] section, in the kernel's words.
//! - **A reclaim model** ([`Gfp`], [`might_alloc`], [`memalloc_nofs_save`] and friends) that
//!   primes every registered map ([`RECLAIM_MAPS`]) for each allocation that may enter direct
//!   reclaim.
//! - **Reports that are never lost** ([`scope`]): a thread's reports go to the scopes it is
//!   attached to; one attached to none is printed and fails every open scope of its context.
//! - **Validator contexts** ([`Context`]): a graph and chain cache per test.
//!
//! # Which API to use
//!
//! | you have | use |
//! |---|---|
//! | a lock | [`Mutex`], [`SpinLock`], [`RwLock`] (`read`, `read_recursive`, `write`, `try_*`), made with [`new_mutex!`] or `Mutex::new(v, static_lock_class!())` |
//! | two locks of one class in a defined order | `lock_nested(1)` on the inner one |
//! | a lock class per object created at run time | [`DynamicKey`] |
//! | a wait for an event | [`Completion`], [`WaitQueue`]; the signaller holds `signal_section()` |
//! | a grace period, flush or sequence wait of your own | a `static` [`LockMap`]: readers/workers hold [`LockMap::acquire`] / [`LockMap::acquire_read`], waiters call [`LockMap::wait`] or [`LockMap::sync`] |
//! | "this function may take that lock" | [`Mutex::might_lock`], [`LockMap::might_lock`] |
//! | code that may block | [`might_sleep`] |
//! | a section that must not block | [`non_block_section`] / [`NonBlockGuard`], or [`non_block_start`]/[`non_block_end`]; [`atomic_section`] for atomic context |
//! | an allocation | [`might_alloc`]`(gfp)`; reclaim code holds [`fs_reclaim_section`] |
//! | a pseudo-lock that direct reclaim may enter | a `static` [`LockMap`] plus [`reclaim_primes!`] |
//! | tests | a [`Context`] per test, a [`scope::Scope`] (or [`Scope::strict`](scope::Scope::strict)), threads started with [`scope::spawn`]; [`set_report_mode`]`(ReportMode::Strict)` to panic |
//!
//! # Example: seed 001 in miniature
//!
//! A driver lock held across a `GFP_NOIO` allocation, and taken in the driver's notifier
//! callback. Reclaim never runs and nothing deadlocks, yet the inversion is reported:
//!
//! ```
//! use lockdep::{might_alloc, reclaim_primes, scope::Scope, static_lock_class, Gfp, LockMap,
//!               Mutex, ReportKind};
//!
//! // The notifier layer's map, which direct reclaim may enter (the layer registers it).
//! static NOTIFIER: LockMap = LockMap::new("mmu_notifier_invalidate_range_start");
//! reclaim_primes!(NOTIFIER);
//!
//! let scope = Scope::new(); // collect this thread's reports instead of printing them
//! let driver_lock = Mutex::new(0u64, static_lock_class!("driver_lock"));
//!
//! // The invalidation callback: runs inside the notifier map and takes the driver lock.
//! {
//!     let _invalidating = NOTIFIER.acquire();
//!     *driver_lock.lock() += 1;
//! }
//! // Elsewhere: the driver allocates while holding its lock.
//! {
//!     let _g = driver_lock.lock();
//!     might_alloc(Gfp::NOIO); // may enter direct reclaim → may invalidate → notifier
//! }
//!
//! # #[cfg(feature = "enabled")] {
//! let reports = scope.of_kind(ReportKind::ReclaimInversion);
//! assert_eq!(reports.len(), 1);
//! assert!(reports[0].involves("mmu_notifier_invalidate_range_start"));
//! println!("{}", reports[0]); // the kernel-style splat; also to_json(), to_dot(), to_svg()
//! # }
//! ```
//!
//! # Cost, and turning it off
//!
//! The default feature `enabled` turns validation on. Without it (`default-features =
//! false`) every annotation is an inline no-op, every guard zero-sized, and the lock types
//! are `parking_lot` locks with a zero-sized field. [`set_enabled`]`(false)` switches
//! validation off at run time (one relaxed load per operation remains). Measured costs are in
//! the crate's README.

#![warn(missing_docs, unsafe_op_in_unsafe_fn)]
// One `unsafe` block in the crate: `task::with_task_fast`, the acquire/release fast path
// without the `RefCell` borrow flag's stores (measured: 1.6 ns of a 26 ns validated pair).
#![deny(unsafe_code)]

// From the bottom up: each module imports only modules above it in this list.
#[cfg_attr(not(feature = "enabled"), allow(dead_code))]
mod blocked;
#[cfg(feature = "enabled")]
mod chain;
mod class;
mod context;
#[cfg(feature = "enabled")]
mod domain;
mod gfp;
#[cfg(feature = "enabled")]
mod graph;
mod isolation;
mod lock;
mod map;
mod primitive;
mod render;
mod report;
pub mod scope;
mod sink;
#[cfg(feature = "enabled")]
mod task;
#[cfg_attr(not(feature = "enabled"), path = "validator_off.rs")]
mod validator;
mod wait;

/// The old name of [`scope`], kept so that code written against it still builds.
#[doc(hidden)]
pub use scope as testing;

#[doc(hidden)]
pub use linkme as __linkme;

#[cfg(loom)]
#[doc(hidden)]
pub mod loom_model;

use std::sync::atomic::{AtomicBool, Ordering};

pub use blocked::{blocked_tasks, BlockedTask};
pub use class::{DynamicKey, LockClass, LockClassKey, MAX_SUBCLASSES};
pub use context::{
    atomic_section, check_task_exit, held_lock_count, in_atomic, might_sleep, might_sleep_if,
    non_block_count, non_block_end, non_block_section, non_block_start, AtomicSection,
    NonBlockGuard,
};
pub use gfp::{
    current_gfp_context, fs_reclaim_acquire, fs_reclaim_release, fs_reclaim_section,
    memalloc_nofs_save, memalloc_noio_save, memalloc_noreclaim_save, might_alloc, FsReclaimGuard,
    Gfp, MemallocGuard, FS_RECLAIM_MAP,
};
pub use isolation::{Context, ContextGuard};
pub use lock::{
    Backend, Lock, LockGuard, Mutex, MutexBackend, MutexGuard, RwBackend, RwLock, RwLockReadGuard,
    RwLockWriteGuard, SpinBackend, SpinLock, SpinLockGuard,
};
pub use map::{wait_as_acquire, LockMap, LockMapGuard, RECLAIM_MAPS};
pub use report::{
    ClassRef, ContextInfo, Dependency, HeldLockInfo, Report, ReportKind, SourceLocation, ThreadInfo,
};
pub use scope::{collect_reports, spawn};
pub use sink::{
    report_mode, reports, set_report_hook, set_report_mode, take_reports, ReportHook, ReportMode,
};
pub use wait::{Completion, WaitQueue};

/// How a lock is held: the kernel's `held_lock.read` (0, 1, 2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Read {
    /// Exclusive (a mutex, a write lock).
    Exclusive = 0,
    /// Shared, not recursive: waits behind a waiting writer.
    Shared = 1,
    /// Shared and recursive: never waits behind a waiting writer.
    Recursive = 2,
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switches validation on or off at run time (process-wide). While off, acquisitions are not
/// recorded and contexts are not checked; locks recorded before are still released properly.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether validation is on: compiled in (feature `enabled`) and not switched off.
#[inline]
pub fn is_enabled() -> bool {
    cfg!(feature = "enabled") && ENABLED.load(Ordering::Relaxed)
}

/// Counters about the validator's work in the current thread's validator context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Chains validated under the graph lock (chain-cache misses) in this context. In the
    /// steady state this stops growing: every chain seen before is a lock-free cache hit.
    pub chains_validated: u64,
}

/// The validator's counters.
pub fn stats() -> Stats {
    #[cfg(feature = "enabled")]
    {
        Stats {
            chains_validated: validator::chains_validated(),
        }
    }
    #[cfg(not(feature = "enabled"))]
    Stats::default()
}
