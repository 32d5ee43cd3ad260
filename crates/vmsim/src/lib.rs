//! A simulated Linux memory manager that drives the MMU-notifier contract where and how Linux
//! does.
//!
//! The seeds of this project are bugs where the notifier contract meets reclaim, the OOM reaper,
//! page-table locks and allocation. `vmsim` is the primary MMU they need: physical frames with
//! Linux's counts ([`frame`]), address spaces with VMAs ([`vma`]), page tables with split
//! page-table locks ([`pte`]), reverse maps ([`rmap`]), the LRU ([`lru`]), swap, faults with
//! copy-on-write, mmap/munmap/mremap, exit, reclaim (kswapd and direct) and the OOM killer and
//! reaper — each calling the notifiers with the event, range, blockability and locks Linux uses
//! at that call site (cited in each module). Every lock is a `lockdep` lock, every allocation
//! goes through its allocation hook, so a driver's lock-order or context bug is reported from
//! a run that never hangs.
//!
//! ```
//! use vmsim::{Config, Machine, MapRequest};
//! let m = Machine::new(Config::new(1024).swap(1024)).unwrap();
//! let p = m.spawn(); // a process with an empty address space
//! let a = p.mmap(MapRequest::anon(16 * 4096)).unwrap();
//! p.write(a, 42).unwrap(); // faults a page in
//! let child = p.fork().unwrap(); // copy-on-write
//! p.write(a, 43).unwrap(); // COW break: a Clear invalidation
//! assert_eq!(child.read(a).unwrap(), 42);
//! m.reclaim(8); // LRU scan, rmap, swap-out
//! m.check().unwrap(); // invariants hold
//! ```
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]

mod alloc;
mod boot;
pub mod check;
pub mod error;
mod exit;
pub mod fault;
mod file;
mod fork;
pub mod frame;
pub mod gup;
mod kswapd;
pub mod lru;
pub mod machine;
pub mod madvise;
pub mod migrate;
pub mod mmap;
pub mod mprotect;
pub mod oom;
mod oom_report;
mod primitive;
mod process;
pub mod pte;
pub mod reclaim;
pub mod rmap;
mod rmap_walk;
mod shrinker;
pub mod swap;
mod task;
pub mod vma;
pub mod watchdog;
mod zap;

pub use error::VmError;
pub use frame::{Frame, FramePool, Pfn};
pub use gup::HmmPfn;
pub use machine::{mmap_lock_class, mmf, Space};
pub use machine::{Config, Machine, Stats};
pub use madvise::Advice;
pub use migrate::MigrateReport;
pub use mmap::{MapKind, MapRequest};
pub use oom_report::ReapReport;
pub use process::Process;
pub use shrinker::Shrinker;
pub use task::TaskGuard;
pub use vma::vm;
pub use watchdog::{HungTask, Watchdog};

/// The lowest address a mapping may use (`mmap_min_addr`).
pub const MMAP_MIN_ADDR: u64 = 0x10000;
/// One past the highest user address (x86-64 with 4-level paging: `TASK_SIZE`).
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
