//! Physical memory: a fixed pool of page frames and their metadata.
//!
//! Linux describes every physical page with a `struct page` (64 bytes on x86-64) in the memory
//! map; the buddy allocator (`mm/page_alloc.c`) hands out free ones and takes them back when the
//! last reference goes (`put_page` → `free_unref_page`). A [`Frame`] is this simulator's
//! `struct page`: the counts Linux keeps (`_refcount`, `_mapcount`, the FOLL_PIN bias), the flags
//! reclaim reads (`PG_dirty`, `PG_lru`, `PG_active`, `PG_swapbacked`), plus two things Linux has
//! no need for and a simulator does:
//!
//! * a **content word**, written by simulated CPU and device stores, so a device access through a
//!   stale translation reads something other than what the CPU sees; and
//! * a **generation**, bumped every time the frame is freed, so a translation that recorded
//!   `(pfn, generation)` can tell that its frame was freed (and maybe reused) underneath it.
//!
//! Frames are conserved: at every quiescent point `free + used == total`
//! ([`FramePool::check_conservation`]). The pool itself is only the allocator of last resort:
//! watermarks, kswapd and direct reclaim sit above it in `alloc.rs`.
//!
//! Metadata is 48 bytes a frame (checked by a test), under Linux's 64.

use crate::primitive::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::error::VmError;

/// A page frame number: an index into the [`FramePool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u32);

impl Pfn {
    /// The frame index as `usize`.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for Pfn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

/// The "no frame" value of intrusive links.
pub(crate) const NIL: u32 = u32::MAX;

/// Page flags, as in `include/linux/page-flags.h` (the subset reclaim and migration read).
pub mod flags {
    /// The frame is on the free list (Linux: `PageBuddy`).
    pub const FREE: u32 = 1 << 0;
    /// The frame's content differs from its backing store (`PG_dirty`).
    pub const DIRTY: u32 = 1 << 1;
    /// The frame is on an LRU list (`PG_lru`).
    pub const LRU: u32 = 1 << 2;
    /// On the active rather than the inactive list (`PG_active`).
    pub const ACTIVE: u32 = 1 << 3;
    /// Anonymous or shmem memory backed by swap, not by a file (`PG_swapbacked`).
    pub const SWAPBACKED: u32 = 1 << 4;
    /// Seen referenced once by reclaim (`PG_referenced`): promoted on the second look.
    pub const REFERENCED: u32 = 1 << 5;
    /// Device-private memory (`ZONE_DEVICE`, `MEMORY_DEVICE_PRIVATE`): not CPU-addressable.
    pub const DEVICE_PRIVATE: u32 = 1 << 6;
    /// Isolated from the LRU by reclaim or migration (`isolate_lru_folio`).
    pub const ISOLATED: u32 = 1 << 7;
    /// Locked for I/O or migration (`PG_locked`).
    pub const LOCKED: u32 = 1 << 8;
    /// Anonymous: `mapping` names an anon_vma, not a file (`PageAnon`, the low bit of
    /// `folio->mapping` in Linux).
    pub const ANON: u32 = 1 << 9;
    /// Lazily freeable (`MADV_FREE`): reclaim may drop it without swapping if still clean.
    pub const LAZYFREE: u32 = 1 << 10;
}

/// One frame's metadata: this simulator's `struct page`.
#[derive(Debug)]
pub struct Frame {
    refcount: AtomicU32,
    mapcount: AtomicU32,
    pincount: AtomicU32,
    flags: AtomicU32,
    generation: AtomicU32,
    /// Reverse-map hint: for anonymous memory the owning `anon_vma` id, for page-cache pages
    /// the file id (Linux: `folio->mapping`). 0 = none.
    mapping: AtomicU32,
    /// Offset of the page in its `mapping` (Linux: `folio->index`), in pages.
    index: AtomicU64,
    content: AtomicU64,
    /// LRU list links, `prev << 32 | next` (Linux: `folio->lru`), guarded by the LRU lock.
    lru: AtomicU64,
}

impl Frame {
    fn new() -> Frame {
        Frame {
            refcount: AtomicU32::new(0),
            mapcount: AtomicU32::new(0),
            pincount: AtomicU32::new(0),
            flags: AtomicU32::new(flags::FREE),
            generation: AtomicU32::new(0),
            mapping: AtomicU32::new(0),
            index: AtomicU64::new(0),
            content: AtomicU64::new(0),
            lru: AtomicU64::new(link(NIL, NIL)),
        }
    }

    /// References (`page_ref_count`): mappings, pins, page cache, swap cache, isolation.
    pub fn refcount(&self) -> u32 {
        self.refcount.load(Ordering::Acquire)
    }
    /// Page-table entries mapping the frame (`folio_mapcount`).
    pub fn mapcount(&self) -> u32 {
        self.mapcount.load(Ordering::Acquire)
    }
    /// FOLL_PIN pins (`folio_maybe_dma_pinned` is `pincount > 0` here, exactly).
    pub fn pincount(&self) -> u32 {
        self.pincount.load(Ordering::Acquire)
    }
    /// The page flags ([`flags`]).
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }
    /// Whether every bit of `f` is set.
    pub fn test(&self, f: u32) -> bool {
        self.flags() & f == f
    }
    /// Sets the bits of `f`; returns the previous flags.
    pub fn set(&self, f: u32) -> u32 {
        self.flags.fetch_or(f, Ordering::AcqRel)
    }
    /// Clears the bits of `f`; returns the previous flags.
    pub fn clear(&self, f: u32) -> u32 {
        self.flags.fetch_and(!f, Ordering::AcqRel)
    }
    /// How many times the frame has been freed.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }
    /// The content word.
    pub fn content(&self) -> u64 {
        self.content.load(Ordering::Acquire)
    }
    /// Stores the content word (a simulated CPU or device store).
    pub fn set_content(&self, v: u64) {
        self.content.store(v, Ordering::Release)
    }
    /// The reverse-map owner id (0 = none) and page offset.
    pub fn mapping(&self) -> (u32, u64) {
        (
            self.mapping.load(Ordering::Acquire),
            self.index.load(Ordering::Acquire),
        )
    }
    /// Sets the reverse-map owner and page offset (`folio_add_new_anon_rmap`,
    /// `filemap_add_folio`).
    pub fn set_mapping(&self, owner: u32, index: u64) {
        self.index.store(index, Ordering::Release);
        self.mapping.store(owner, Ordering::Release);
    }

    /// `folio_get`: one more reference. The frame must be in use.
    pub fn get(&self) {
        self.refcount.fetch_add(1, Ordering::AcqRel);
    }
    /// `folio_try_get`: a reference only if the frame is still in use (speculative lookups).
    pub fn try_get(&self) -> bool {
        self.refcount
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c != 0).then_some(c + 1)
            })
            .is_ok()
    }
    /// `folio_add_*_rmap`: one more page-table mapping.
    pub fn map(&self) {
        self.mapcount.fetch_add(1, Ordering::AcqRel);
    }
    /// `folio_remove_rmap_*`: one mapping fewer. Returns the mapcount left.
    pub(crate) fn unmap(&self) -> Result<u32, VmError> {
        dec_nonzero(&self.mapcount).ok_or_else(|| crate::error::invariant("mapcount underflow"))
    }
    /// A FOLL_PIN pin: a reference plus the pin count. (Linux folds pins into the refcount
    /// with `GUP_PIN_COUNTING_BIAS` and guesses; a separate count lets reclaim know exactly.)
    pub(crate) fn pin(&self) {
        self.refcount.fetch_add(1, Ordering::AcqRel);
        self.pincount.fetch_add(1, Ordering::AcqRel);
    }
    /// Drops one pin count (the caller then drops the reference through the pool).
    pub(crate) fn unpin(&self) -> Result<(), VmError> {
        dec_nonzero(&self.pincount)
            .map(drop)
            .ok_or_else(|| crate::error::invariant("unpin of an unpinned frame"))
    }
    pub(crate) fn lru_links(&self) -> (u32, u32) {
        let v = self.lru.load(Ordering::Relaxed);
        ((v >> 32) as u32, v as u32)
    }
    pub(crate) fn set_lru_links(&self, prev: u32, next: u32) {
        self.lru.store(link(prev, next), Ordering::Relaxed)
    }
}

/// Decrements a count that must not go below zero; returns what is left, or `None` (and
/// leaves it at zero) if it was already zero.
fn dec_nonzero(count: &AtomicU32) -> Option<u32> {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
        .ok()
        .map(|before| before - 1)
}

fn link(prev: u32, next: u32) -> u64 {
    ((prev as u64) << 32) | next as u64
}

/// Counters of the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Frames in the pool.
    pub total: usize,
    /// Frames on the free list.
    pub free: usize,
    /// Frames handed out and not yet freed.
    pub used: usize,
}

/// The memory map and the free list (the buddy allocator, order 0 only).
pub struct FramePool {
    frames: Box<[Frame]>,
    /// Free frame numbers (a stack: recently freed frames are reused first, as the per-CPU
    /// page lists do, which makes use-after-free of a stale translation likely to be seen).
    free: lockdep::SpinLock<Vec<u32>>,
    nr_free: AtomicUsize,
    used: AtomicUsize,
}

static ZONE_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("zone->lock");

impl FramePool {
    /// A pool of `total` frames, all free. At most `u32::MAX - 1` frames.
    pub fn new(total: usize) -> Result<FramePool, VmError> {
        if total == 0 || total >= NIL as usize {
            return Err(VmError::InvalidArgument(format!(
                "a machine needs between 1 and {} frames, not {total}",
                NIL - 1
            )));
        }
        let frames: Box<[Frame]> = (0..total).map(|_| Frame::new()).collect();
        // Pop order: low frame numbers first.
        let free: Vec<u32> = (0..total as u32).rev().collect();
        Ok(FramePool {
            frames,
            free: lockdep::SpinLock::new(free, &ZONE_LOCK),
            nr_free: AtomicUsize::new(total),
            used: AtomicUsize::new(0),
        })
    }

    /// Frames in the pool.
    pub fn total(&self) -> usize {
        self.frames.len()
    }

    /// Frames free right now (racy, as `NR_FREE_PAGES` is).
    pub fn nr_free(&self) -> usize {
        self.nr_free.load(Ordering::Acquire)
    }

    /// The frame's metadata, or an error for a frame number outside the pool.
    pub fn frame(&self, pfn: Pfn) -> Result<&Frame, VmError> {
        self.frames.get(pfn.index()).ok_or(VmError::BadFrame(pfn.0))
    }

    /// The frame's metadata; `pfn` must come from this pool.
    #[inline]
    pub(crate) fn get(&self, pfn: Pfn) -> &Frame {
        &self.frames[pfn.index()]
    }

    /// Takes a free frame with one reference, zeroed content, no flags; `None` if none is free.
    /// Never blocks and never reclaims: that is the caller's policy.
    pub fn take(&self) -> Option<Pfn> {
        let pfn = self.free.lock().pop()?;
        self.nr_free.fetch_sub(1, Ordering::AcqRel);
        self.used.fetch_add(1, Ordering::AcqRel);
        let f = &self.frames[pfn as usize];
        f.flags.store(0, Ordering::Release);
        f.content.store(0, Ordering::Release);
        f.mapping.store(0, Ordering::Release);
        f.index.store(0, Ordering::Release);
        f.refcount.store(1, Ordering::Release);
        Some(Pfn(pfn))
    }

    /// `folio_put_testzero`: drops a reference; returns whether it was the last. The caller then
    /// takes the frame off its LRU list and calls [`FramePool::free`] (`__folio_put`).
    pub fn put_testzero(&self, pfn: Pfn) -> Result<bool, VmError> {
        let f = self.frame(pfn)?;
        dec_nonzero(&f.refcount)
            .map(|left| left == 0)
            .ok_or_else(|| crate::error::invariant(format!("put of a free frame ({pfn})")))
    }

    /// Returns a frame whose last reference is gone to the free list. A frame still mapped,
    /// pinned or listed is an invariant violation: it is reported and *not* freed (leaked rather
    /// than reused while something can still reach it).
    pub fn free(&self, pfn: Pfn) -> Result<(), VmError> {
        let f = self.frame(pfn)?;
        let (refs, mapped, pinned, fl) = (f.refcount(), f.mapcount(), f.pincount(), f.flags());
        if refs != 0 || mapped != 0 || pinned != 0 || fl & (flags::LRU | flags::FREE) != 0 {
            return Err(crate::error::invariant(format!(
                "{pfn} freed with refcount={refs} mapcount={mapped} pincount={pinned} \
                 flags={fl:#x}"
            )));
        }
        f.generation.fetch_add(1, Ordering::AcqRel);
        f.flags.store(flags::FREE, Ordering::Release);
        self.used.fetch_sub(1, Ordering::AcqRel);
        self.free.lock().push(pfn.0);
        self.nr_free.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// `folio_put` for a frame that is never on an LRU list: drops a reference and frees the
    /// frame with the last. Returns whether it was freed. Dropping the last reference of a
    /// frame that is still mapped or pinned is an invariant violation (the reference is kept).
    pub fn put(&self, pfn: Pfn) -> Result<bool, VmError> {
        let f = self.frame(pfn)?;
        if f.refcount() == 1 && (f.mapcount() != 0 || f.pincount() != 0 || f.test(flags::LRU)) {
            return Err(crate::error::invariant(format!(
                "last reference of {pfn} dropped while mapcount={} pincount={} flags={:#x}",
                f.mapcount(),
                f.pincount(),
                f.flags()
            )));
        }
        if !self.put_testzero(pfn)? {
            return Ok(false);
        }
        self.free(pfn)?;
        Ok(true)
    }

    /// The pool's counters.
    pub fn counts(&self) -> PoolCounts {
        let free = self.free.lock().len();
        PoolCounts {
            total: self.total(),
            free,
            used: self.used.load(Ordering::Acquire),
        }
    }

    /// Checks that frames are conserved: the free list holds exactly the frames marked free,
    /// each once, and `free + used == total`. Call it at a quiescent point.
    pub fn check_conservation(&self) -> Result<PoolCounts, VmError> {
        let free = self.free.lock();
        let mut seen = vec![false; self.total()];
        for &pfn in free.iter() {
            let i = pfn as usize;
            if i >= seen.len() || seen[i] {
                return Err(crate::error::invariant(format!(
                    "free list holds pfn {pfn:#x} twice or out of range"
                )));
            }
            seen[i] = true;
            let f = &self.frames[i];
            if !f.test(flags::FREE) || f.refcount() != 0 {
                return Err(crate::error::invariant(format!(
                    "pfn {pfn:#x} is on the free list with refcount {} flags {:#x}",
                    f.refcount(),
                    f.flags()
                )));
            }
        }
        let counts = PoolCounts {
            total: self.total(),
            free: free.len(),
            used: self.used.load(Ordering::Acquire),
        };
        for (i, f) in self.frames.iter().enumerate() {
            if !seen[i] && (f.test(flags::FREE) || f.refcount() == 0) {
                return Err(crate::error::invariant(format!(
                    "pfn {i:#x} is neither free nor referenced (refcount {}, flags {:#x})",
                    f.refcount(),
                    f.flags()
                )));
            }
        }
        if counts.free + counts.used != counts.total {
            return Err(crate::error::invariant(format!(
                "frames not conserved: free {} + used {} != total {}",
                counts.free, counts.used, counts.total
            )));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_metadata_fits_in_a_struct_page() {
        assert!(std::mem::size_of::<Frame>() <= 64);
        assert_eq!(std::mem::size_of::<Frame>(), 48);
    }

    #[test]
    fn take_and_put_conserve_frames_and_bump_the_generation() {
        let pool = FramePool::new(4).unwrap();
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.check_conservation().unwrap().used, 2);
        let g = pool.get(a).generation();
        pool.get(a).get();
        assert!(!pool.put(a).unwrap(), "one reference left");
        assert!(pool.put(a).unwrap(), "the last reference frees");
        assert_eq!(pool.get(a).generation(), g + 1);
        assert!(pool.get(a).test(flags::FREE));
        let c = pool.check_conservation().unwrap();
        assert_eq!((c.free, c.used, c.total), (3, 1, 4));
        // LIFO reuse: the frame just freed comes back first.
        assert_eq!(pool.take(), Some(a));
    }

    #[test]
    fn exhausting_the_pool_returns_none() {
        let pool = FramePool::new(2).unwrap();
        assert!(pool.take().is_some());
        assert!(pool.take().is_some());
        assert!(pool.take().is_none());
    }

    #[test]
    fn freeing_a_mapped_or_pinned_frame_is_an_invariant_error_and_keeps_it() {
        let pool = FramePool::new(2).unwrap();
        let a = pool.take().unwrap();
        pool.get(a).map();
        assert!(matches!(pool.put(a), Err(VmError::Invariant(_))));
        assert_eq!(pool.get(a).refcount(), 1, "the reference is kept");
        pool.get(a).unmap().unwrap();
        pool.get(a).pin();
        // Two references (the original + the pin), pincount 1: dropping to 1 is fine, the last
        // is refused while the pin count says the frame is pinned.
        assert!(!pool.put(a).unwrap());
        assert!(matches!(pool.put(a), Err(VmError::Invariant(_))));
        pool.get(a).unpin().unwrap();
        assert!(pool.put(a).unwrap());
        assert!(
            matches!(pool.put(a), Err(VmError::Invariant(_))),
            "double free"
        );
        pool.check_conservation().unwrap();
    }

    #[test]
    fn bad_sizes_and_frame_numbers_are_typed_errors() {
        assert!(matches!(
            FramePool::new(0),
            Err(VmError::InvalidArgument(_))
        ));
        let pool = FramePool::new(1).unwrap();
        assert!(matches!(pool.frame(Pfn(7)), Err(VmError::BadFrame(7))));
        assert!(matches!(pool.put(Pfn(7)), Err(VmError::BadFrame(7))));
    }

    #[test]
    fn try_get_fails_on_a_free_frame() {
        let pool = FramePool::new(1).unwrap();
        let a = pool.take().unwrap();
        assert!(pool.get(a).try_get());
        pool.put(a).unwrap();
        pool.put(a).unwrap();
        assert!(!pool.get(a).try_get());
    }
}
