//! An owned anonymous mapping, for tests, examples, the race and the benchmarks.

use rustix::mm::{MapFlags, ProtFlags};

use crate::error::{sys, Result};
use crate::primary::host::HostMm;
use crate::sys::va::VaRange;

/// Private anonymous read/write memory, unmapped on drop (with a plain `munmap`).
#[derive(Debug)]
pub struct Mapping {
    range: VaRange,
}

impl Mapping {
    /// Maps `len` bytes (rounded up to pages) anywhere.
    pub fn anonymous(len: u64) -> Result<Self> {
        let r = VaRange::covering(0, len)?;
        // SAFETY: a new mapping at an address the kernel chooses aliases nothing.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                core::ptr::null_mut(),
                r.len_usize(),
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(sys("mmap"))?;
        Ok(Self {
            range: VaRange::new(p as u64, r.len())?,
        })
    }

    /// Maps `len` bytes exactly at `addr`, failing (EEXIST) rather than replacing anything.
    pub fn anonymous_at(addr: u64, len: u64) -> Result<Self> {
        let r = VaRange::new(addr, len)?;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                r.as_ptr(),
                r.len_usize(),
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED_NOREPLACE,
            )
        }
        .map_err(sys("mmap(MAP_FIXED_NOREPLACE)"))?;
        if p as u64 != addr {
            // Pre-4.17 kernels treat the flag as a hint.
            // SAFETY: `p` is the mapping just created, referenced by nothing.
            let _ = unsafe { rustix::mm::munmap(p, r.len_usize()) };
            return Err(crate::error::Error::Sys {
                call: "mmap(MAP_FIXED_NOREPLACE)",
                errno: rustix::io::Errno::EXIST,
            });
        }
        Ok(Self { range: r })
    }

    /// Takes ownership of memory now mapped at `range` (e.g. after an `mremap` onto it).
    ///
    /// # Safety
    /// `range` must be a private anonymous read/write mapping that nothing else owns.
    pub unsafe fn from_raw(range: VaRange) -> Self {
        Self { range }
    }

    /// First byte.
    pub fn addr(&self) -> u64 {
        self.range.start()
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.range.len()
    }
    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The range.
    pub fn range(&self) -> VaRange {
        self.range
    }

    fn word(&self, offset: u64) -> *mut u64 {
        let off = offset.min(self.len() - 8) & !7;
        (self.addr() + off) as usize as *mut u64
    }

    /// Writes a word at `offset` (clamped into the mapping, aligned down).
    pub fn write_u64(&self, offset: u64, v: u64) {
        // SAFETY: the word lies inside memory this value owns, mapped read/write; volatile
        // because devices (and tests reading /proc/self/mem) observe it outside Rust's model.
        unsafe { self.word(offset).write_volatile(v) }
    }

    /// Reads a word at `offset` (clamped, aligned down).
    pub fn read_u64(&self, offset: u64) -> u64 {
        // SAFETY: as in `write_u64`.
        unsafe { self.word(offset).read_volatile() }
    }

    /// Gives up ownership without unmapping; returns the range.
    pub fn into_raw(self) -> VaRange {
        let r = self.range;
        core::mem::forget(self);
        r
    }

    /// Unmaps through the bracketed wrapper, invalidating every subscriber of `host` first.
    pub fn unmap_via(self, host: &HostMm) -> Result<()> {
        let r = self.into_raw();
        // SAFETY: we owned the mapping; no reference into it survives `self`.
        unsafe { host.munmap(r.start(), r.len()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.range.as_ptr(), self.range.len_usize()) };
    }
}
