//! Bracketed system calls: `invalidate_range_start` → syscall → `invalidate_range_end`.
//!
//! The explicit source, and the fallback where userfaultfd is unavailable (sandbox, EPERM,
//! ENOSYS) or the memory belongs to another uffd (EBUSY). Unlike uffd, which reports an unmap
//! after the fact, these give a true invalidation window: every subscriber has dropped its
//! translations before the kernel changes the mapping, and none can re-establish one until the
//! call has returned. They only see calls made through them: memory unmapped by other code
//! (a library's `free`) needs uffd or an [`Importer`](crate::Importer).

use core::ffi::c_void;

use mmu_notifier::{Event, Range};
use rustix::mm::{Advice, MapFlags, MprotectFlags, MremapFlags, ProtFlags};

use crate::error::{sys, Result};
use crate::primary::host::HostMm;
use crate::sys::va::VaRange;

/// Whether an `madvise` advice changes which pages back a range (and so must invalidate).
pub fn advice_invalidates(advice: Advice) -> bool {
    #[allow(unreachable_patterns)]
    match advice {
        Advice::LinuxDontNeed | Advice::LinuxFree | Advice::LinuxRemove => true,
        // MADV_DONTNEED_LOCKED has no rustix variant; it would be passed as DontNeed.
        _ => false,
    }
}

impl HostMm {
    fn bracket<T>(&self, r: VaRange, event: Event, call: impl FnOnce() -> T) -> Result<T> {
        let range = Range::new(r.start(), r.end(), event)?;
        let guard = self.mm().invalidate_range_start(range);
        let out = call();
        drop(guard);
        Ok(out)
    }

    /// `munmap(start, len)` inside an `Unmap` invalidation window.
    ///
    /// # Safety
    /// As for `munmap(2)`: no Rust reference may point into the range, and nothing may use it
    /// afterwards.
    pub unsafe fn munmap(&self, start: u64, len: u64) -> Result<()> {
        let r = VaRange::new(start, len)?;
        // SAFETY: the caller upholds munmap's contract for `r`.
        self.bracket(r, Event::Unmap, || unsafe {
            rustix::mm::munmap(r.as_ptr(), r.len_usize())
        })?
        .map_err(sys("munmap"))
    }

    /// Anonymous private `mmap` at exactly `start` (`MAP_FIXED`), inside an `Unmap` window
    /// for whatever was mapped there before.
    ///
    /// # Safety
    /// As for `mmap(MAP_FIXED)`: whatever was mapped at the range is replaced, so no Rust
    /// reference may point into it.
    pub unsafe fn mmap_anonymous_fixed(&self, start: u64, len: u64, prot: ProtFlags) -> Result<()> {
        let r = VaRange::new(start, len)?;
        let out = self.bracket(r, Event::Unmap, || {
            // SAFETY: the caller upholds mmap(MAP_FIXED)'s contract for `r`.
            unsafe {
                rustix::mm::mmap_anonymous(
                    r.as_ptr(),
                    r.len_usize(),
                    prot,
                    MapFlags::PRIVATE | MapFlags::FIXED,
                )
            }
        })?;
        out.map(|_| ()).map_err(sys("mmap"))
    }

    /// `mremap` of `[old, old + old_len)` to `new_len` bytes, inside an `Unmap` window for the
    /// old range (the pages may move), and, with `fixed_to`, for the destination it replaces.
    /// Returns the new address.
    ///
    /// # Safety
    /// As for `mremap(2)`: no Rust reference may point into either range.
    pub unsafe fn mremap(
        &self,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: MremapFlags,
        fixed_to: Option<u64>,
    ) -> Result<u64> {
        let old_r = VaRange::new(old, old_len)?;
        let new_r = match fixed_to {
            Some(to) => Some(VaRange::new(to, new_len)?),
            None => {
                VaRange::new(old, new_len)?;
                None
            }
        };
        let old_guard =
            self.mm()
                .invalidate_range_start(Range::new(old_r.start(), old_r.end(), Event::Unmap)?);
        let dest_guard = match new_r {
            Some(d) if !d.overlaps(&old_r) => Some(self.mm().invalidate_range_start(Range::new(
                d.start(),
                d.end(),
                Event::Unmap,
            )?)),
            _ => None,
        };
        let out = match new_r {
            // SAFETY: the caller upholds mremap's contract for both ranges.
            Some(d) => unsafe {
                rustix::mm::mremap_fixed(
                    old_r.as_ptr(),
                    old_r.len_usize(),
                    d.len_usize(),
                    flags,
                    d.as_ptr(),
                )
            },
            // SAFETY: as above.
            None => unsafe {
                rustix::mm::mremap(old_r.as_ptr(), old_r.len_usize(), new_len as usize, flags)
            },
        };
        drop(dest_guard);
        drop(old_guard);
        out.map(|p: *mut c_void| p as u64).map_err(sys("mremap"))
    }

    /// `madvise`, inside a `Clear` window when the advice drops pages (DONTNEED, FREE, REMOVE);
    /// other advice cannot move a pinned page and is passed through without an invalidation.
    /// `MADV_REMOVE` frees the file's pages in every mapping of them, so its window covers every
    /// mapping of that file range in this process (see [`HostMm::punch_hole`]).
    ///
    /// # Safety
    /// As for `madvise(2)`: advice that drops pages makes their contents zero (or undefined for
    /// FREE), so no Rust reference may rely on them.
    pub unsafe fn madvise(&self, start: u64, len: u64, advice: Advice) -> Result<()> {
        let r = VaRange::new(start, len)?;
        // SAFETY: the caller upholds madvise's contract for `r`.
        let call = || unsafe { rustix::mm::madvise(r.as_ptr(), r.len_usize(), advice) };
        let out = if advice == Advice::LinuxRemove {
            // MADV_REMOVE punches the file: every mapping of those file pages loses them.
            let find = || {
                let mut ranges = vec![r];
                if let Some(((dev, inode), off)) = crate::sys::maps::file_at(r.start())? {
                    ranges.extend(crate::sys::maps::mappings_of_file(
                        dev,
                        inode,
                        off,
                        off + r.len(),
                    )?);
                }
                Ok(ranges)
            };
            self.around_file_change(find, Event::Clear, call)?
        } else if advice_invalidates(advice) {
            self.bracket(r, Event::Clear, call)?
        } else {
            call()
        };
        out.map_err(sys("madvise"))
    }

    /// `mprotect`, inside a `ProtectionVma` window. Registration caches do not drop pinned
    /// registrations for it (the pages cannot move), but other subscribers may.
    ///
    /// # Safety
    /// As for `mprotect(2)`: removing access while Rust references point into the range makes
    /// their use fault.
    pub unsafe fn mprotect(&self, start: u64, len: u64, prot: MprotectFlags) -> Result<()> {
        let r = VaRange::new(start, len)?;
        // SAFETY: the caller upholds mprotect's contract for `r`.
        self.bracket(r, Event::ProtectionVma, || unsafe {
            rustix::mm::mprotect(r.as_ptr(), r.len_usize(), prot)
        })?
        .map_err(sys("mprotect"))
    }
}
