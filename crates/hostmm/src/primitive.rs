//! Atomics and blocking primitives, from `sync-prims`: `std`'s normally, loom's under
//! `cfg(loom)` (shuttle's under `cfg(shuttle)`, as for every crate of the build), so the model tests in `tests/loom_*.rs` exercise the real protocol code.
//!
//! [`lock`] takes a `std` mutex or a model-checked one ignoring poisoning: every structure
//! guarded here stays consistent across a panic (updates are single assignments), and library
//! code must not panic on another's panic.

pub(crate) use sync_prims::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
pub(crate) use sync_prims::sync::{Condvar, Mutex};
pub(crate) use sync_prims::{lock, spin, wait};
