//! The one place that picks synchronization primitives.
//!
//! Normal builds use `std`'s atomics, locks, channels and threads. Under `--cfg shuttle` the
//! same names resolve to shuttle's, and `lockdep` and `mmu-notifier` follow through their own
//! `primitive` modules, so a whole simulated machine runs under shuttle's scheduler: one
//! execution is one interleaving, and a seed replays it exactly (`tests/shuttle_replay.rs`).

#[cfg(not(shuttle))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(shuttle))]
pub(crate) use std::sync::{mpsc, Condvar, Mutex};
#[cfg(not(shuttle))]
pub(crate) use std::thread_local;

#[cfg(shuttle)]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(shuttle)]
pub(crate) use shuttle::sync::{mpsc, Condvar, Mutex};
#[cfg(shuttle)]
pub(crate) use shuttle::thread_local;

pub(crate) use std::sync::atomic::Ordering;

/// Threads: spawning kswapd, the OOM reaper and the watchdog, yielding, sleeping.
pub(crate) mod thread {
    #[cfg(not(shuttle))]
    pub(crate) use std::thread::{current, sleep, yield_now, Builder, JoinHandle};

    #[cfg(shuttle)]
    pub(crate) use shuttle::thread::{current, sleep, yield_now, Builder, JoinHandle};
}
