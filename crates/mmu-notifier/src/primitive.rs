//! The synchronization primitives the crate is built from, all from `sync-prims`.
//!
//! Under `--cfg loom` they are loom's, so the model tests in `tests/loom_*.rs` exercise the real
//! protocol code. Under `--cfg shuttle` (and not loom) they are shuttle's: a simulation built on
//! this crate then runs under shuttle's scheduler, one interleaving per execution, and a seed
//! replays it (`tests/shuttle_model.rs`). Otherwise `std`'s. Nothing else in the crate names
//! `std::sync` directly.

pub(crate) use std::sync::atomic::Ordering;
pub(crate) use sync_prims::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
};
pub(crate) use sync_prims::sync::{Condvar, Mutex, MutexGuard};
pub(crate) use sync_prims::thread_local;
/// Locks and condition-variable waits ignore poisoning: the crate never runs user callbacks
/// while holding one of its own mutexes, so a poisoned lock can only come from a panic inside
/// the crate's own short critical sections, whose state updates are written to be complete
/// before anything that can panic.
pub(crate) use sync_prims::{lock, spin, wait};
