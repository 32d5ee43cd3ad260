//! A simulated Linux memory manager that drives the MMU-notifier contract where and how Linux
//! does.
//!
//! Work in progress: the physical memory ([`frame`]), page tables ([`pte`]), VMAs ([`vma`]) and
//! reverse maps ([`rmap`]) are here; processes, operations, reclaim and the OOM reaper follow.
#![warn(missing_docs, unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]

pub mod error;
pub mod frame;
pub mod lru;
pub mod pte;
pub mod rmap;
pub mod vma;

pub use error::VmError;
pub use frame::{Frame, FramePool, Pfn};

/// The lowest address a mapping may use (`mmap_min_addr`).
pub const MMAP_MIN_ADDR: u64 = 0x10000;
/// One past the highest user address (x86-64 with 4-level paging: `TASK_SIZE`).
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
