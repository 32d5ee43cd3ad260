//! Bracketed file operations: changes to a file that free pages of every mapping of it.
//!
//! A shared mapping's pages belong to its file. `fallocate(FALLOC_FL_PUNCH_HOLE)`, `ftruncate`
//! and `madvise(MADV_REMOVE)` through *any* mapping free them in *every* mapping of that file
//! range (`unmap_mapping_range` in `mm/memory.c`), and userfaultfd reports nothing on the other
//! mappings. These wrappers find every mapping of the file range in this process
//! (`/proc/self/maps`: device, inode, offset) and invalidate all of them around the call, as
//! the bracketed [`HostMm::munmap`] does for one range.
//!
//! `/proc/self/maps` is a snapshot of one moment, and not even that: the kernel serves it in
//! chunks, and the address space may change between them. A mapping of the file created by
//! another thread after the read (and registered before the call) would get no window. So the
//! wrappers read the maps again after the call and run a complete invalidation over every
//! mapping of the file range the first read did not show, *before* returning: a lookup that
//! starts after the wrapper returned never sees such a registration (one that overlaps the call
//! is concurrent with it, as with any bracketed change). If that second read fails, the whole
//! address space is invalidated instead: nothing is missed silently. Changes made to the file by other
//! processes, or by other code without these wrappers, are not seen: cache such mappings only
//! with the bracketed source and only when every change to the file goes through here.

use std::os::fd::AsFd;

use mmu_notifier::{Event, InvalidateGuard, Range};
use rustix::fs::FallocateFlags;

use crate::error::{sys, Error, Result};
use crate::primary::host::HostMm;
use crate::sys::maps;
use crate::sys::va::{page_size, VaRange};

/// One past the last page-aligned address a range can name (the whole address space).
fn everything_end() -> u64 {
    !(page_size() - 1)
}

/// A finder of every mapping of `[offset, end)` of the file behind `fd` in this process.
fn file_finder(
    fd: std::os::fd::BorrowedFd<'_>,
    offset: u64,
    end: u64,
) -> Result<impl Fn() -> Result<Vec<VaRange>>> {
    let st = rustix::fs::fstat(fd).map_err(sys("fstat"))?;
    let dev = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let inode = st.st_ino;
    Ok(move || maps::mappings_of_file(dev, inode, offset, end))
}

impl HostMm {
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` of `[offset, offset + len)` of `fd`, inside a `Clear`
    /// window over every mapping of that file range in this process.
    pub fn punch_hole(&self, fd: impl AsFd, offset: u64, len: u64) -> Result<()> {
        let end = offset.checked_add(len).ok_or(Error::BadRange {
            start: offset,
            len,
            why: "file range overflows",
        })?;
        let fd = fd.as_fd();
        let find = file_finder(fd, offset, end)?;
        self.around_file_change(find, Event::Clear, || {
            rustix::fs::fallocate(
                fd,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                offset,
                len,
            )
        })?
        .map_err(sys("fallocate(PUNCH_HOLE)"))
    }

    /// `ftruncate(fd, len)`, inside an `Unmap` window over every mapping of the file beyond
    /// the new size in this process (pages past the end are unmapped, even private copies).
    pub fn truncate(&self, fd: impl AsFd, len: u64) -> Result<()> {
        let from = len & !(page_size() - 1);
        let fd = fd.as_fd();
        let find = file_finder(fd, from, u64::MAX)?;
        self.around_file_change(find, Event::Unmap, || rustix::fs::ftruncate(fd, len))?
            .map_err(sys("ftruncate"))
    }

    /// Runs `call` (a change to a file) inside a window over every range `find` returns, then
    /// completes an invalidation of every range a second `find` shows that the first did not
    /// (see the module docs), or of the whole address space if the second `find` fails.
    pub(crate) fn around_file_change<T>(
        &self,
        find: impl Fn() -> Result<Vec<VaRange>>,
        event: Event,
        call: impl FnOnce() -> T,
    ) -> Result<T> {
        let before = find()?;
        let guards = self.windows_over(&before, event)?;
        let out = call();
        let late = match find() {
            Ok(after) => after.into_iter().filter(|r| !before.contains(r)).collect(),
            Err(_) => vec![
                VaRange::from_bounds(0, everything_end()).ok_or(Error::BadRange {
                    start: 0,
                    len: everything_end(),
                    why: "the address space's bounds",
                })?,
            ],
        };
        drop(self.windows_over(&late, event)?);
        drop(guards);
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use mmu_notifier::{Interval, IntervalNotifierOps, Range};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Count(Arc<AtomicU32>);

    impl IntervalNotifierOps for Count {
        fn invalidate(&self, interval: &Interval, _range: &Range, seq: u64) -> bool {
            interval.set_seq(seq);
            self.0.fetch_add(1, Ordering::SeqCst);
            true
        }
    }

    #[test]
    fn a_mapping_the_first_read_missed_is_invalidated_before_the_change_returns() {
        let host = HostMm::new();
        let page = page_size();
        let late = VaRange::new(0x7000_0000_0000, 4 * page).unwrap();
        let early = VaRange::new(0x6000_0000_0000, 4 * page).unwrap();
        let (hits_late, hits_early) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let _a = host
            .mm()
            .interval_notifier_insert(late.start(), late.len(), Count(hits_late.clone()))
            .unwrap();
        let _b = host
            .mm()
            .interval_notifier_insert(early.start(), early.len(), Count(hits_early.clone()))
            .unwrap();
        // The first read shows only `early`; `late` appears by the second (mapped meanwhile).
        let reads = AtomicU32::new(0);
        let find = || {
            Ok(if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                vec![early]
            } else {
                vec![early, late]
            })
        };
        let seen_late_during_call = host
            .around_file_change(find, Event::Clear, || hits_late.load(Ordering::SeqCst))
            .unwrap();
        assert_eq!(
            seen_late_during_call, 0,
            "no window over `late` during the call"
        );
        assert_eq!(
            hits_late.load(Ordering::SeqCst),
            1,
            "`late` invalidated before returning"
        );
        assert_eq!(
            hits_early.load(Ordering::SeqCst),
            1,
            "`early` once, not twice"
        );
    }

    #[test]
    fn a_failed_second_read_invalidates_everything() {
        let host = HostMm::new();
        let r = VaRange::new(0x7000_0000_0000, page_size()).unwrap();
        let hits = Arc::new(AtomicU32::new(0));
        let _a = host
            .mm()
            .interval_notifier_insert(r.start(), r.len(), Count(hits.clone()))
            .unwrap();
        let reads = AtomicU32::new(0);
        let find = || {
            if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                Ok(vec![])
            } else {
                Err(Error::Config("maps unreadable (test)"))
            }
        };
        host.around_file_change(find, Event::Clear, || ()).unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
