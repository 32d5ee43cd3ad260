//! The middle layer: Linux as the primary MMU of the `mmu-notifier` contract, and the sources
//! that turn its address-space changes into invalidations.
//!
//! [`HostMm`](host::HostMm) holds the contract's state; the pending [`gate`] closes the gap
//! between a change returning and its invalidation; the sources are the uffd
//! [`monitor`](monitor::UffdMonitor) with its [`watch`](watch) of registered memory, the
//! [`bracketed`] wrappers (and their [`file`] siblings), and the [`import`] of another monitor's
//! events. [`source`] chooses between them.

pub(crate) mod bracketed;
pub(crate) mod file;
pub mod gate;
pub(crate) mod host;
pub(crate) mod import;
pub(crate) mod mapping;
pub(crate) mod monitor;
pub(crate) mod source;
pub(crate) mod watch;
