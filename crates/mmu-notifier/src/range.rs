//! The range handed to every invalidation: `struct mmu_notifier_range`.

use crate::Error;

/// Why the primary MMU is changing a range (`enum mmu_notifier_event`).
///
/// Subscribers use it to filter: a registration cache for pinned pages may ignore
/// [`Event::ProtectionVma`] or [`Event::SoftDirty`]; a device ignores [`Event::Migrate`] when the
/// range's [`Range::owner`] is itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Event {
    /// munmap, or the old range of an mremap move: the mapping goes away.
    Unmap = 0,
    /// Page-table entries cleared for another reason (madvise, page replacement, reclaim, ...).
    Clear = 1,
    /// mprotect: the new protection applies to the whole range.
    ProtectionVma = 2,
    /// Per-page read/write change; the end callback should look at the CPU entries.
    ProtectionPage = 3,
    /// Soft-dirty tracking reset.
    SoftDirty = 4,
    /// The address space is being torn down (interval notifiers at release).
    Release = 5,
    /// Pages migrate; [`Range::owner`] names the device-memory owner driving it.
    Migrate = 6,
    /// Device-exclusive access is created or revoked; [`Range::owner`] may be set.
    Exclusive = 7,
}

impl Event {
    /// Every event kind, in kernel order.
    pub const ALL: [Event; 8] = [
        Event::Unmap,
        Event::Clear,
        Event::ProtectionVma,
        Event::ProtectionPage,
        Event::SoftDirty,
        Event::Release,
        Event::Migrate,
        Event::Exclusive,
    ];

    /// The kernel's name for it (`MMU_NOTIFY_UNMAP`, ...).
    pub fn kernel_name(self) -> &'static str {
        match self {
            Event::Unmap => "MMU_NOTIFY_UNMAP",
            Event::Clear => "MMU_NOTIFY_CLEAR",
            Event::ProtectionVma => "MMU_NOTIFY_PROTECTION_VMA",
            Event::ProtectionPage => "MMU_NOTIFY_PROTECTION_PAGE",
            Event::SoftDirty => "MMU_NOTIFY_SOFT_DIRTY",
            Event::Release => "MMU_NOTIFY_RELEASE",
            Event::Migrate => "MMU_NOTIFY_MIGRATE",
            Event::Exclusive => "MMU_NOTIFY_EXCLUSIVE",
        }
    }
}

/// An opaque owner token (the kernel's `void *owner`): the device-memory owner for
/// [`Event::Migrate`] and [`Event::Exclusive`], so a driver can ignore its own invalidations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(pub u64);

/// A half-open address range `[start, end)` being invalidated, with its event, whether the
/// subscribers may sleep, and an optional owner.
///
/// Primaries build it with [`Range::new`]; [`Mm::invalidate_range_start`](crate::Mm::invalidate_range_start)
/// and [`Mm::invalidate_range_start_nonblock`](crate::Mm::invalidate_range_start_nonblock) set
/// the blockable flag themselves, as the kernel's wrappers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Range {
    start: u64,
    end: u64,
    event: Event,
    blockable: bool,
    owner: Option<Owner>,
}

impl Range {
    /// A range `[start, end)` for `event`. An empty or inverted range is an error.
    pub fn new(start: u64, end: u64, event: Event) -> Result<Range, Error> {
        if start >= end {
            return Err(Error::EmptyRange { start, end });
        }
        Ok(Range {
            start,
            end,
            event,
            blockable: true,
            owner: None,
        })
    }

    /// The whole address space `[0, u64::MAX)`.
    pub fn whole(event: Event) -> Range {
        Range {
            start: 0,
            end: u64::MAX,
            event,
            blockable: true,
            owner: None,
        }
    }

    /// The same range carrying an owner token (`mmu_notifier_range_init_owner`).
    pub fn with_owner(mut self, owner: Owner) -> Range {
        self.owner = Some(owner);
        self
    }

    /// First address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The last address, inclusive (`end - 1`).
    pub fn last(&self) -> u64 {
        self.end - 1
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Always false: a `Range` is never empty (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Why the range changes.
    pub fn event(&self) -> Event {
        self.event
    }

    /// Whether subscribers may sleep (`mmu_notifier_range_blockable`). When false, a
    /// subscriber that would have to sleep must refuse with [`WouldBlock`](crate::WouldBlock)
    /// (list subscribers) or return `false` (interval subscribers).
    pub fn is_blockable(&self) -> bool {
        self.blockable
    }

    /// The driver-side idiom of every callback that takes a sleeping lock: in a blockable range
    /// take it (`lock`, which may sleep); in a non-blockable one only try it (`try_lock`), and
    /// `None` means refuse — return [`WouldBlock`](crate::WouldBlock) from a list start
    /// (`.ok_or(WouldBlock)?`) or `false` from an interval callback. This is how amdgpu,
    /// nouveau and KVM write it (`if (blockable) mutex_lock(); else if (!mutex_trylock())
    /// return -EAGAIN;`).
    ///
    /// ```
    /// # use mmu_notifier::{Event, Range, WouldBlock};
    /// # use std::sync::Mutex;
    /// let lock = Mutex::new(0u64);
    /// let range = Range::new(0, 4096, Event::Unmap).unwrap();
    /// let guard = range.lock_or_refuse(|| lock.lock().unwrap(), || lock.try_lock().ok());
    /// assert!(guard.is_some());
    /// ```
    ///
    /// # Context
    ///
    /// From a callback. Sleeps only inside `lock`, and only when the range is blockable;
    /// allocates nothing; "fails" by returning `None`, only in a non-blockable range.
    #[inline]
    pub fn lock_or_refuse<G>(
        &self,
        lock: impl FnOnce() -> G,
        try_lock: impl FnOnce() -> Option<G>,
    ) -> Option<G> {
        if self.blockable {
            Some(lock())
        } else {
            try_lock()
        }
    }

    /// The owner token, if any.
    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// Whether `[start, end)` overlaps this range.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end && self.start < end
    }

    pub(crate) fn set_blockable(&mut self, blockable: bool) {
        self.blockable = blockable;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_or_inverted_range_is_rejected() {
        assert_eq!(
            Range::new(10, 10, Event::Unmap),
            Err(Error::EmptyRange { start: 10, end: 10 })
        );
        assert!(Range::new(11, 10, Event::Clear).is_err());
        let r = Range::new(0x1000, 0x3000, Event::Clear).unwrap();
        assert_eq!(
            (r.start(), r.end(), r.last(), r.len()),
            (0x1000, 0x3000, 0x2fff, 0x2000)
        );
        assert!(r.overlaps(0x2fff, 0x4000));
        assert!(!r.overlaps(0x3000, 0x4000));
    }

    #[test]
    fn every_event_has_its_kernel_name() {
        let names: Vec<_> = Event::ALL.iter().map(|e| e.kernel_name()).collect();
        assert_eq!(names.len(), 8);
        assert_eq!(Event::ALL[6] as u8, 6);
        assert!(names.iter().all(|n| n.starts_with("MMU_NOTIFY_")));
    }
}
