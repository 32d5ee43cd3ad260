//! Validated virtual ranges of this process.

use crate::error::{Error, Result};

/// The base page size of this process (4 KiB on x86-64).
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// A non-empty, page-aligned, half-open virtual range `[start, end)` of this process.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VaRange {
    start: u64,
    end: u64,
}

impl VaRange {
    /// Checks `[start, start + len)`: non-empty, page-aligned, no overflow.
    pub fn new(start: u64, len: u64) -> Result<Self> {
        let bad = |why| Error::BadRange { start, len, why };
        if len == 0 {
            return Err(bad("empty range"));
        }
        let page = page_size();
        if start % page != 0 {
            return Err(bad("start is not page-aligned"));
        }
        if len % page != 0 {
            return Err(bad("length is not a multiple of the page size"));
        }
        let end = start
            .checked_add(len)
            .ok_or_else(|| bad("range overflows the address space"))?;
        Ok(Self { start, end })
    }

    /// Like [`new`](Self::new) but widens an unaligned range to whole pages (what a registration covers).
    pub fn covering(start: u64, len: u64) -> Result<Self> {
        if len == 0 {
            return Err(Error::BadRange {
                start,
                len,
                why: "empty range",
            });
        }
        let page = page_size();
        let end = start.checked_add(len).ok_or(Error::BadRange {
            start,
            len,
            why: "range overflows the address space",
        })?;
        let s = start & !(page - 1);
        let e = end.checked_add(page - 1).ok_or(Error::BadRange {
            start,
            len,
            why: "range overflows the address space",
        })? & !(page - 1);
        Self::new(s, e - s)
    }

    /// Internal constructor for kernel-reported ranges (already checked by the kernel).
    pub(crate) fn from_bounds(start: u64, end: u64) -> Option<Self> {
        (start < end).then_some(Self { start, end })
    }

    /// First byte.
    pub fn start(&self) -> u64 {
        self.start
    }
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.end
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// Always false (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &VaRange) -> bool {
        self.start < other.end && other.start < self.end
    }
    /// Whether `other` lies inside `self`.
    pub fn contains(&self, other: &VaRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
    pub(crate) fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.start as usize as *mut core::ffi::c_void
    }
    pub(crate) fn len_usize(&self) -> usize {
        self.len() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ranges_are_typed_errors() {
        assert!(matches!(
            VaRange::new(0x1000, 0),
            Err(Error::BadRange { .. })
        ));
        assert!(matches!(
            VaRange::new(0x1001, 0x1000),
            Err(Error::BadRange { .. })
        ));
        assert!(matches!(
            VaRange::new(0x1000, 0x10),
            Err(Error::BadRange { .. })
        ));
        assert!(matches!(
            VaRange::new(u64::MAX - 0xfff, 0x2000),
            Err(Error::BadRange { .. })
        ));
        assert!(matches!(
            VaRange::covering(u64::MAX - 5, 3),
            Err(Error::BadRange { .. })
        ));
    }

    #[test]
    fn covering_widens_to_pages() {
        let r = VaRange::covering(0x1010, 0x10).unwrap();
        assert_eq!((r.start(), r.end()), (0x1000, 0x2000));
        let r = VaRange::covering(0x1ff0, 0x20).unwrap();
        assert_eq!((r.start(), r.end()), (0x1000, 0x3000));
    }
}
