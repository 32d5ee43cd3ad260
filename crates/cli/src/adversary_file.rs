//! The adversary's file backing: one memfd mapped twice, `MAP_SHARED`.
//!
//! The cache and the lookers use the first mapping; the changes free the file's pages, which
//! frees them in *every* mapping of the file (`unmap_mapping_range` in `mm/memory.c`):
//! `fallocate(PUNCH_HOLE)` and `ftruncate` on the descriptor, and `madvise(MADV_REMOVE)` through
//! the *second* mapping — so no change is ever made through the range the cache holds. Under
//! the bracketed source each goes through its `HostMm` wrapper, which invalidates every mapping
//! of the file range in the process; with `plain` the bare call, which nothing sees — except
//! `MADV_REMOVE`, which then gets a window over the range it is called on only (the wrapper as
//! it was before issue 9), so its run shows that the *other* mappings must be invalidated.

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use hostmm::{HostMm, VaRange};
use mmu_notifier::{Event, Range};
use rustix::fs::{FallocateFlags, MemfdFlags};
use rustix::mm::{Advice, MapFlags, ProtFlags};

/// How a file pattern frees the pages of the file behind the cached mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileChange {
    /// `fallocate(PUNCH_HOLE)` over the range.
    PunchHole,
    /// `ftruncate` to the range's start, then back to the file's size.
    Truncate,
    /// `madvise(MADV_REMOVE)` through the other mapping.
    Remove,
}

/// A memfd of `len` bytes and its two shared mappings.
pub(crate) struct TwoMappings {
    fd: OwnedFd,
    len: u64,
    cached: u64,
    other: u64,
}

impl TwoMappings {
    /// Creates the memfd and maps it twice.
    pub(crate) fn new(len: u64) -> Result<Self> {
        let fd = rustix::fs::memfd_create("mmnotify-adversary", MemfdFlags::CLOEXEC)
            .context("memfd_create")?;
        rustix::fs::ftruncate(&fd, len).context("ftruncate of the new memfd")?;
        let map = || -> Result<u64> {
            // SAFETY: a new mapping at an address the kernel chooses aliases nothing.
            let p = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED,
                    &fd,
                    0,
                )
            }
            .context("mmap(MAP_SHARED) of the memfd")?;
            Ok(p as u64)
        };
        let cached = map()?;
        let other = match map() {
            Ok(o) => o,
            Err(e) => {
                // SAFETY: the mapping just made; nothing uses it yet.
                let _ = unsafe { rustix::mm::munmap(cached as usize as *mut _, len as usize) };
                return Err(e);
            }
        };
        Ok(Self {
            fd,
            len,
            cached,
            other,
        })
    }

    /// The mapping the cache holds.
    pub(crate) fn cached(&self) -> u64 {
        self.cached
    }

    /// Frees the file pages behind `r` (a range of the cached mapping) with `change`'s call:
    /// the hole punched, the file truncated at `r`'s start and grown back, or `MADV_REMOVE`
    /// through the other mapping.
    pub(crate) fn change(
        &self,
        host: &HostMm,
        change: FileChange,
        r: VaRange,
        plain: bool,
    ) -> Result<()> {
        let off = r.start() - self.cached;
        match (change, plain) {
            (FileChange::PunchHole, false) => host.punch_hole(&self.fd, off, r.len())?,
            (FileChange::PunchHole, true) => rustix::fs::fallocate(
                &self.fd,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                off,
                r.len(),
            )
            .context("fallocate(PUNCH_HOLE)")?,
            (FileChange::Truncate, false) => {
                host.truncate(&self.fd, off)?;
                host.truncate(&self.fd, self.len)?;
            }
            (FileChange::Truncate, true) => {
                rustix::fs::ftruncate(&self.fd, off).context("ftruncate")?;
                rustix::fs::ftruncate(&self.fd, self.len).context("ftruncate")?;
            }
            (FileChange::Remove, false) => {
                // SAFETY: the other mapping is only ever changed here, under the mutator's
                // page locks; no reference points into it.
                unsafe { host.madvise(self.other + off, r.len(), Advice::LinuxRemove) }?
            }
            (FileChange::Remove, true) => {
                // The wrapper as it was before issue 9: a window over the madvised range only,
                // none over the other mappings of the file (here: the cached one).
                let other = VaRange::new(self.other + off, r.len())?;
                let _window = host.mm().invalidate_range_start(Range::new(
                    other.start(),
                    other.end(),
                    Event::Clear,
                )?);
                // SAFETY: as above.
                unsafe {
                    rustix::mm::madvise(
                        (self.other + off) as usize as *mut _,
                        r.len() as usize,
                        Advice::LinuxRemove,
                    )
                }
                .context("madvise(MADV_REMOVE)")?
            }
        }
        Ok(())
    }
}

impl Drop for TwoMappings {
    fn drop(&mut self) {
        for base in [self.cached, self.other] {
            // SAFETY: both mappings are this arena's; every thread of the run is done with them.
            let _ = unsafe { rustix::mm::munmap(base as usize as *mut _, self.len as usize) };
        }
    }
}
