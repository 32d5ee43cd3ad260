//! Bracketed file operations: changes to a file that free pages of every mapping of it.
//!
//! A shared mapping's pages belong to its file. `fallocate(FALLOC_FL_PUNCH_HOLE)`, `ftruncate`
//! and `madvise(MADV_REMOVE)` through *any* mapping free them in *every* mapping of that file
//! range (`unmap_mapping_range` in `mm/memory.c`), and userfaultfd reports nothing on the other
//! mappings. These wrappers find every mapping of the file range in this process
//! (`/proc/self/maps`: device, inode, offset) and invalidate all of them around the call, as
//! the bracketed [`HostMm::munmap`] does for one range. Changes made to the file by other
//! processes, or by other code without these wrappers, are not seen: cache such mappings only
//! with the bracketed source and only when every change to the file goes through here.

use std::os::fd::AsFd;

use mmu_notifier::{Event, InvalidateGuard, Range};
use rustix::fs::FallocateFlags;

use crate::error::{sys, Error, Result};
use crate::primary::host::HostMm;
use crate::sys::maps;
use crate::sys::va::{page_size, VaRange};

impl HostMm {
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` of `[offset, offset + len)` of `fd`, inside a `Clear`
    /// window over every mapping of that file range in this process.
    pub fn punch_hole(&self, fd: impl AsFd, offset: u64, len: u64) -> Result<()> {
        let end = offset.checked_add(len).ok_or(Error::BadRange {
            start: offset,
            len,
            why: "file range overflows",
        })?;
        let guards = self.file_window(fd.as_fd(), offset, end, Event::Clear)?;
        let out = rustix::fs::fallocate(
            fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        );
        drop(guards);
        out.map_err(sys("fallocate(PUNCH_HOLE)"))
    }

    /// `ftruncate(fd, len)`, inside an `Unmap` window over every mapping of the file beyond
    /// the new size in this process (pages past the end are unmapped, even private copies).
    pub fn truncate(&self, fd: impl AsFd, len: u64) -> Result<()> {
        let from = len & !(page_size() - 1);
        let guards = self.file_window(fd.as_fd(), from, u64::MAX, Event::Unmap)?;
        let out = rustix::fs::ftruncate(fd, len);
        drop(guards);
        out.map_err(sys("ftruncate"))
    }

    /// Opens an invalidation of every mapping of `[offset, end)` of the file behind `fd`.
    fn file_window(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        offset: u64,
        end: u64,
        event: Event,
    ) -> Result<Vec<InvalidateGuard<'_>>> {
        let st = rustix::fs::fstat(fd).map_err(sys("fstat"))?;
        let dev = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
        self.windows_over(&maps::mappings_of_file(dev, st.st_ino, offset, end)?, event)
    }

    /// Opens one invalidation per range; they close when the guards are dropped.
    pub(crate) fn windows_over(
        &self,
        ranges: &[VaRange],
        event: Event,
    ) -> Result<Vec<InvalidateGuard<'_>>> {
        ranges
            .iter()
            .map(|r| {
                Ok(self
                    .mm()
                    .invalidate_range_start(Range::new(r.start(), r.end(), event)?))
            })
            .collect()
    }
}
