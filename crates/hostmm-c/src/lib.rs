//! # libmmnotify — the C interface to `hostmm`
//!
//! Communication libraries written in C and C++ (libfabric, UCX, MPI implementations) keep
//! caches of memory registrations that go stale when the application unmaps or remaps memory.
//! This crate builds `libmmnotify.so` and `libmmnotify.a`, whose header
//! (`include/mmnotify.h`, generated from this crate by cbindgen) offers `hostmm`'s
//! invalidation sources and its registration cache in C conventions:
//!
//! * opaque handles (`mmn_monitor`, `mmn_importer`, `mmn_cache`, `mmn_reg`,
//!   `mmn_subscription`, `mmn_watch`), created and destroyed by pairs of functions;
//! * every function returns an `int` status (`MMN_OK` or a negative `MMN_ERR_*`), described by
//!   `mmn_strerror`, with the detailed message of the last failure on the calling thread in
//!   `mmn_last_error`;
//! * no Rust type crosses the boundary, and no panic does: every entry point catches a panic
//!   and returns `MMN_ERR_PANIC`;
//! * each function's documentation states whether it may block and whether it may be called
//!   from a callback of this library.
//!
//! The pieces, one per file: [`status`] (codes, messages, the panic guard), [`monitor`]
//! (choosing a source), [`wrappers`] (the bracketed system calls), [`import`] (invalidations
//! from the caller's own hooks), [`cache`] (a registration cache over C callbacks) and
//! [`subscribe`] (callbacks on invalidations of a range, and watches).

#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

pub mod cache;
pub mod import;
pub mod monitor;
pub mod status;
pub mod subscribe;
pub mod wrappers;

pub use cache::*;
pub use import::*;
pub use monitor::*;
pub use status::*;
pub use subscribe::*;
pub use wrappers::*;
