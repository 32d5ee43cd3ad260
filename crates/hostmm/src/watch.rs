//! Coarse userfaultfd registration: whole mappings, deduplicated and refcounted.
//!
//! Registering every cache entry separately splits a VMA per entry and exhausts
//! `vm.max_map_count` (libfabric: 32 754 registrations are enough to make unrelated `mmap` and
//! `malloc` fail). Here a watch on a range registers the *whole mappings* covering it, once; later
//! watches inside a live region only take a reference; the region is unregistered when its last
//! reference is dropped.
//!
//! The set of *live pieces* mirrors what is registered in the kernel: pieces are disjoint across
//! regions. A new registration takes ownership of any piece it overlaps (the kernel registration
//! of that memory is now the new region's), and an `UNMAP`/`REMAP` event removes the vanished
//! part, since Linux drops the registration with the VMA. Unregistering a region touches only its
//! own live pieces, so it can never remove a registration someone else relies on.
//!
//! The set may lag behind the kernel (an unmap whose event is not processed yet). The cache
//! copes: it watches *after* `read_begin`, and the monitor trims pieces *before* it invalidates,
//! so a watch that trusted a stale piece always collides with that invalidation and retries.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::primitive::lock;

use crate::error::{Error, Result};
use crate::uffd::{RegisterMode, Userfaultfd};
use crate::va::VaRange;

struct Region {
    refs: usize,
    pieces: usize,
}

/// Where registered memory is and who owns it.
pub(crate) struct WatchSet {
    /// Disjoint live pieces: start → (end, region id).
    pieces: BTreeMap<u64, (u64, u64)>,
    regions: BTreeMap<u64, Region>,
    next_id: u64,
    max_regions: usize,
    /// Registrations made (for statistics and tests).
    pub(crate) registers: u64,
    /// Unregistrations made.
    pub(crate) unregisters: u64,
}

impl WatchSet {
    pub(crate) fn new(max_regions: usize) -> Self {
        Self {
            pieces: BTreeMap::new(),
            regions: BTreeMap::new(),
            next_id: 1,
            max_regions,
            registers: 0,
            unregisters: 0,
        }
    }

    pub(crate) fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// The live registered pieces, for tests and diagnostics.
    pub(crate) fn pieces(&self) -> Vec<VaRange> {
        self.pieces
            .iter()
            .filter_map(|(s, (e, _))| VaRange::from_bounds(*s, *e))
            .collect()
    }

    fn covering_piece(&self, want: VaRange) -> Option<u64> {
        let (_, &(end, id)) = self.pieces.range(..=want.start()).next_back()?;
        (end >= want.end()).then_some(id)
    }

    /// Takes a reference on a region covering `want`, registering whole mappings if none does.
    /// `extent` finds the mappings around `want` (normally `/proc/self/maps`).
    pub(crate) fn watch(
        &mut self,
        uffd: &Userfaultfd,
        mode: RegisterMode,
        want: VaRange,
        extent: impl FnOnce(VaRange) -> Result<VaRange>,
    ) -> Result<u64> {
        if let Some(id) = self.covering_piece(want) {
            if let Some(r) = self.regions.get_mut(&id) {
                r.refs += 1;
                return Ok(id);
            }
        }
        if self.regions.len() >= self.max_regions {
            return Err(Error::TooManyRegions(self.regions.len()));
        }
        let ext = extent(want)?;
        uffd.register(ext, mode)?;
        self.registers += 1;
        self.trim(ext);
        let id = self.next_id;
        self.next_id += 1;
        self.pieces.insert(ext.start(), (ext.end(), id));
        self.regions.insert(id, Region { refs: 1, pieces: 1 });
        Ok(id)
    }

    /// Drops a reference; the last one unregisters what the region still owns.
    pub(crate) fn unwatch(&mut self, uffd: &Userfaultfd, id: u64) {
        let Some(r) = self.regions.get_mut(&id) else {
            return;
        };
        r.refs -= 1;
        if r.refs > 0 {
            return;
        }
        self.regions.remove(&id);
        let mine: Vec<(u64, u64)> = self
            .pieces
            .iter()
            .filter(|(_, (_, owner))| *owner == id)
            .map(|(s, (e, _))| (*s, *e))
            .collect();
        for (s, e) in mine {
            self.pieces.remove(&s);
            if let Some(piece) = VaRange::from_bounds(s, e) {
                // The piece may have been unmapped and its event not processed yet: then there
                // is nothing left to unregister and the kernel says so; nothing to do about it.
                let _ = uffd.unregister(piece);
                self.unregisters += 1;
            }
        }
    }

    /// Forgets every piece (their regions stay, and are never unregistered): used when the
    /// unmap queue overflowed and the set can no longer tell what the kernel still has.
    pub(crate) fn forget_all(&mut self) {
        self.pieces.clear();
        for r in self.regions.values_mut() {
            r.pieces = 0;
        }
    }

    /// The kernel dropped the registration of `gone` (munmap, moving mremap).
    pub(crate) fn on_unmap(&mut self, gone: VaRange) {
        self.trim(gone);
    }

    /// Removes `cut` from every live piece, keeping the parts outside it with their owners.
    fn trim(&mut self, cut: VaRange) {
        let mut hit = Vec::new();
        if let Some((&s, &(e, id))) = self.pieces.range(..cut.start()).next_back() {
            if e > cut.start() {
                hit.push((s, e, id));
            }
        }
        for (&s, &(e, id)) in self.pieces.range(cut.start()..cut.end()) {
            hit.push((s, e, id));
        }
        for (s, e, id) in hit {
            self.pieces.remove(&s);
            let mut kept = 0;
            if s < cut.start() {
                self.pieces.insert(s, (cut.start(), id));
                kept += 1;
            }
            if e > cut.end() {
                self.pieces.insert(cut.end(), (e, id));
                kept += 1;
            }
            if let Some(r) = self.regions.get_mut(&id) {
                r.pieces = r.pieces + kept - 1;
            }
        }
    }
}

/// Queued ranges, how many are used, and whether one was lost.
type QueueState = ([(u64, u64); QUEUE], usize, bool);

/// Capacity of the unmap queue between the monitor thread and the watch set.
const QUEUE: usize = 256;

/// Unmapped ranges reported by the monitor thread, applied to the [`WatchSet`] by the next
/// thread that uses it. The monitor thread must not allocate or free (a `free` can `madvise` or
/// `munmap` memory that only it could acknowledge), and the watch set's tree does; this queue
/// is a fixed array behind a mutex that is only ever held for a copy.
pub(crate) struct UnmapQueue {
    q: Mutex<QueueState>,
}

impl UnmapQueue {
    pub(crate) fn new() -> Self {
        Self {
            q: Mutex::new(([(0, 0); QUEUE], 0, false)),
        }
    }

    /// Records that the kernel dropped the registration of `gone`. Never allocates. On
    /// overflow the watch set will forget every piece (safe: it re-registers on next use).
    pub(crate) fn push(&self, gone: VaRange) {
        let mut g = lock(&self.q);
        let (buf, len, overflow) = &mut *g;
        if *len < QUEUE {
            buf[*len] = (gone.start(), gone.end());
            *len += 1;
        } else {
            *overflow = true;
        }
    }

    /// Applies the queued unmaps to `set`.
    pub(crate) fn drain_into(&self, set: &mut WatchSet) {
        let (buf, len, overflow) = {
            let mut g = lock(&self.q);
            let out = (g.0, g.1, g.2);
            g.1 = 0;
            g.2 = false;
            out
        };
        if overflow {
            set.forget_all();
        }
        for &(s, e) in &buf[..len] {
            if let Some(r) = VaRange::from_bounds(s, e) {
                set.on_unmap(r);
            }
        }
    }
}
