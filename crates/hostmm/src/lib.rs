//! # hostmm — the MMU-notifier contract with Linux itself as the primary MMU
//!
//! ## The problem
//!
//! User-space secondary MMUs — RDMA memory registrations, GPU host registrations, DMA maps,
//! io_uring fixed buffers — translate virtual ranges of this process into something a device
//! uses directly. When the process unmaps or remaps that memory, the translation is stale and
//! a device writing through it corrupts whatever is mapped there next. Libraries that cache
//! registrations (libfabric, UCX, Open MPI) learn about unmaps through code patching or
//! userfaultfd, and still hand out stale registrations under a concurrent unmap/remap, deadlock
//! when their monitor re-enters their locks, and exhaust `vm.max_map_count` by registering
//! every entry with userfaultfd.
//!
//! ## The mechanism
//!
//! A [`HostMm`] holds the notifier state of the [`mmu_notifier`] crate for this process.
//! Invalidations reach it from:
//!
//! * a [`UffdMonitor`] — userfaultfd in WP-only mode (no page faults ever), coarse registration
//!   of whole mappings, one thread that never blocks holding a lock and opens a
//!   [pending window](gate) before it acknowledges an event;
//! * [bracketed calls](HostMm::munmap) — `start → syscall → end`, a true invalidation window;
//! * an [`Importer`] — invalidations fed by another monitor.
//!
//! A [`RegCache`] keyed by virtual range sits on interval notifiers and publishes a
//! registration only if no invalidation hit its range while it was being made (the kernel's
//! `read_begin`/`read_retry`).
//!
//! ## What each source covers
//!
//! * **uffd**: private anonymous memory only. munmap, `MAP_FIXED` over, `mremap`, `brk` shrink
//!   raise `UNMAP`/`REMAP` before the call returns (the [pending window](gate) covers the gap
//!   after `read()`); the watch holds only what `/proc/self/smaps` shows registered after
//!   `UFFDIO_REGISTER` (which silently skips holes), so a range not wholly registered is refused
//!   ([`Error::NotMapped`], [`Error::WatchUnverified`]). Shared and private file mappings are
//!   refused ([`Error::UncoveredMapping`]): their file can free their pages with no event here.
//! * **bracketed**: only changes made through [`HostMm::munmap`] & co.; for shared files,
//!   [`HostMm::punch_hole`], [`HostMm::truncate`] and `madvise(MADV_REMOVE)` invalidate every
//!   mapping of the file range in this process (also one mapped by another thread during the
//!   call: the maps are read again before returning).
//! * **both**: `MADV_DONTNEED` (whose uffd `REMOVE` comes *before* the zap) and fork + write
//!   are covered by the pin a registrar must take before recording pages
//!   ([`MlockRegistrar`]: `mlock`, which `madvise_dontneed_free` refuses to zap and which breaks
//!   copy-on-write with `FOLL_WRITE`, and `MADV_DONTFORK`). Not covered: `MADV_DONTNEED_LOCKED`,
//!   migration of mlocked pages, changes by other processes.
//!
//! ## Which API to reach for
//!
//! * A registration cache: [`RegCache`] over your [`Registrar`], with [`Source::auto`].
//! * You already run a uffd or hook monitor: [`HostMm::importer`].
//! * You unmap memory yourself and uffd is not allowed: [`HostMm::munmap`] and friends.
//!
//! ```
//! use hostmm::{CacheConfig, HostMm, MonitorConfig, NoopRegistrar, RegCache, Source};
//!
//! let host = HostMm::new();
//! let (source, why_not_uffd) = Source::auto(&host, MonitorConfig::default())?;
//! if let Some(e) = why_not_uffd {
//!     eprintln!("falling back to bracketed calls: {e}");
//! }
//! let cache = RegCache::new(&host, NoopRegistrar, CacheConfig { monitor: source.monitor(), ..Default::default() })?;
//!
//! let buf = hostmm::Mapping::anonymous(4096)?;
//! let reg = cache.get(buf.addr(), 4096)?; // miss: registers
//! assert!(cache.get(buf.addr(), 4096)?.is_valid()); // hit
//! // Unmapping through the host (or, with uffd, by any means) invalidates the registration.
//! buf.unmap_via(&host)?;
//! assert!(!reg.is_valid());
//! assert!(cache.is_free(reg.range().start(), 4096)?);
//! # Ok::<(), hostmm::Error>(())
//! ```

#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

// The layers, bottom up: `sys` (system calls and /proc readers) ← `primary` (Linux as the
// primary MMU and the sources of invalidations) ← `cache` (the registration cache). `error` and
// `primitive` serve all three.
mod cache;
mod error;
mod primary;
mod primitive;
mod sys;
#[cfg(feature = "test-seams")]
pub mod testing;

/// The cache's read-copy-update publication, exposed for its model tests only.
#[cfg(loom)]
#[doc(hidden)]
pub use cache::index;
#[cfg(loom)]
#[doc(hidden)]
pub use cache::publish;
pub use cache::regcache::{CacheConfig, CacheStats, Handle, RegCache};
pub use cache::registrar::{
    FrameRegistration, MlockRegistrar, NoopRegistrar, PagemapRegistrar, Registrar,
};
pub use error::{Error, MappingKind, RegistrarError, Result};
pub use mmu_notifier::Event;
pub use primary::bracketed::advice_invalidates;
pub use primary::gate;
pub use primary::host::HostMm;
pub use primary::import::Importer;
pub use primary::mapping::Mapping;
pub use primary::monitor::{MonitorConfig, MonitorStats, UffdMonitor, Watch, DEFAULT_SPIN};
pub use primary::source::Source;
pub use sys::ranges::RangeCounts;
pub use sys::uffd;
pub use sys::uffd::RegisterMode;
pub use sys::va::{page_size, VaRange};
