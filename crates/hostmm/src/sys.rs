//! The bottom layer: what the kernel offers, wrapped. System calls (`userfaultfd(2)`), the
//! `/proc/self/maps` and `smaps` readers, page arithmetic, and the per-byte bookkeeping of kernel
//! state the kernel itself does not count (uffd registration, `mlock`, `MADV_DONTFORK`).
//!
//! Nothing here knows of notifiers, sources or caches.

pub(crate) mod maps;
pub(crate) mod ranges;
pub mod uffd;
pub(crate) mod va;
