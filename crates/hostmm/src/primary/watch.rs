//! Coarse userfaultfd registration that tracks what the kernel really registered.
//!
//! Registering every cache entry separately splits a VMA per entry and exhausts
//! `vm.max_map_count` (libfabric: 32 754 registrations are enough to make unrelated `mmap` and
//! `malloc` fail). Here a watch registers the *whole mappings* overlapping its range, once;
//! later watches inside registered memory only take references.
//!
//! # What is tracked, and why it cannot drift
//!
//! * `registered` is a set of ranges that is always a **subset of what the kernel has
//!   registered** for this descriptor. Ranges enter it only after `UFFDIO_REGISTER` returned
//!   *and* `/proc/self/smaps` showed their `VmFlags` with the registration (`uw`/`um`):
//!   `UFFDIO_REGISTER` over a range with a hole succeeds and registers only what is mapped when
//!   it runs (`userfaultfd_register` in `fs/userfaultfd.c` walks the VMAs present), so a mapping
//!   created in the hole later is not registered, and its unmap raises no event. Ranges leave it
//!   on an `UNMAP`/`REMAP` event (Linux drops the registration with the VMA) and when unregistered.
//! * A watch succeeds only if **all of its range** is in `registered`; otherwise it registers,
//!   verifies, and fails with [`Error::NotMapped`] (a hole) or [`Error::WatchUnverified`] (the
//!   range kept changing) rather than trusting memory that raises no event.
//! * `refs` counts, per byte, the watches that need the registration (each watch holds the
//!   registered runs it relied on). A byte is unregistered only when its count reaches zero, so
//!   a watch going away never unregisters memory another live watch relies on, whichever watch
//!   registered it first.
//!
//! The set may lag behind the kernel by an event read but not yet applied. The cache copes: it
//! watches *after* `read_begin`, the monitor queues the unmap *before* it invalidates, and a
//! lookup or miss passes the pending gate, so a watch that trusted a range the kernel had
//! already dropped always collides with that invalidation and retries.

use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::primitive::lock;
use crate::sys::ranges::{RangeCounts, RangeSet};
use crate::sys::uffd::{RegisterMode, Userfaultfd};
use crate::sys::va::VaRange;

/// How often a watch registers again when verification finds the range changed meanwhile.
const VERIFY_TRIES: u32 = 3;

/// What the kernel has registered for this descriptor, and who needs it.
pub(crate) struct WatchSet {
    registered: RangeSet,
    refs: RangeCounts,
    max_regions: usize,
    /// `UFFDIO_REGISTER` calls made (for statistics and tests).
    pub(crate) registers: u64,
    /// `UFFDIO_UNREGISTER` calls made.
    pub(crate) unregisters: u64,
}

/// How a watch finds and checks mappings: `/proc/self/maps` and `/proc/self/smaps` normally.
pub(crate) trait Probe {
    /// The whole mappings overlapping `want` (typed errors for holes and uncovered kinds).
    fn extent(&self, want: VaRange) -> Result<VaRange>;
    /// The parts of `within` the kernel shows registered now.
    fn registered(&self, within: VaRange) -> Result<Vec<VaRange>>;
}

impl WatchSet {
    pub(crate) fn new(max_regions: usize) -> Self {
        Self {
            registered: RangeSet::default(),
            refs: RangeCounts::new(),
            max_regions,
            registers: 0,
            unregisters: 0,
        }
    }

    /// Registered runs (for statistics).
    pub(crate) fn region_count(&self) -> usize {
        self.registered.len()
    }

    /// The registered runs, for tests and diagnostics.
    pub(crate) fn pieces(&self) -> Vec<VaRange> {
        self.registered.runs()
    }

    /// Makes sure all of `want` is registered (whole mappings), and takes references on the
    /// registered runs it relies on; returns them (give them back to [`unwatch`](Self::unwatch)).
    pub(crate) fn watch(
        &mut self,
        uffd: &Userfaultfd,
        mode: RegisterMode,
        want: VaRange,
        probe: &impl Probe,
    ) -> Result<Vec<VaRange>> {
        if let Some(run) = self.registered.run_containing(want) {
            self.refs.add(run);
            return Ok(vec![run]);
        }
        if self.registered.len() >= self.max_regions {
            return Err(Error::TooManyRegions(self.registered.len()));
        }
        for _ in 0..VERIFY_TRIES {
            let ext = probe.extent(want)?;
            uffd.register(ext, mode)?;
            self.registers += 1;
            let confirmed = probe.registered(ext)?;
            for r in &confirmed {
                self.registered.insert(*r);
            }
            if let Some(run) = self.registered.run_containing(want) {
                // Hold every run of what was just registered, so none of it stays registered
                // with nobody to unregister it.
                debug_assert!(run.contains(&want));
                let held: Vec<VaRange> = self.registered.within(ext);
                for r in &held {
                    self.refs.add(*r);
                }
                return Ok(held);
            }
            // A hole, or a mapping that appeared in one after the register ran: release what
            // nobody holds and look again.
            for r in self.registered.within(ext) {
                self.release_unheld(uffd, r);
            }
        }
        Err(Error::WatchUnverified {
            start: want.start(),
            end: want.end(),
            tries: VERIFY_TRIES,
        })
    }

    /// Drops the references a watch took; unregisters the bytes nobody needs any more.
    pub(crate) fn unwatch(&mut self, uffd: &Userfaultfd, held: &[VaRange]) {
        for r in held {
            for freed in self.refs.remove(*r) {
                self.release_unheld(uffd, freed);
            }
        }
    }

    /// Unregisters what of `r` is registered and held by no watch.
    fn release_unheld(&mut self, uffd: &Userfaultfd, r: VaRange) {
        let pieces: Vec<VaRange> = self
            .registered
            .within(r)
            .into_iter()
            .flat_map(|p| self.refs.unheld_within(p))
            .collect();
        for piece in pieces {
            self.registered.remove(piece);
            // The piece may have been unmapped and its event not applied yet: then there is
            // nothing left to unregister and the kernel says so; nothing to do about it.
            let _ = uffd.unregister(piece);
            self.unregisters += 1;
        }
    }

    /// Forgets every registered range: used when the unmap queue overflowed and the set can no
    /// longer tell what the kernel still has (safe: a forgotten range is registered again and
    /// verified on its next watch; what stays registered meanwhile only costs events).
    pub(crate) fn forget_all(&mut self) {
        self.registered.clear();
    }

    /// The kernel dropped the registration of `gone` (munmap, moving mremap).
    pub(crate) fn on_unmap(&mut self, gone: VaRange) {
        self.registered.remove(gone);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::mapping::Mapping;
    use crate::sys::uffd::CreateSeam;

    /// Reports `extent` as mapped and only `shown` as registered afterwards, as smaps would
    /// when a page was replaced while the register ran.
    struct Fake {
        extent: VaRange,
        shown: Vec<VaRange>,
    }

    impl Probe for Fake {
        fn extent(&self, _want: VaRange) -> Result<VaRange> {
            Ok(self.extent)
        }
        fn registered(&self, within: VaRange) -> Result<Vec<VaRange>> {
            Ok(self
                .shown
                .iter()
                .filter(|r| r.overlaps(&within))
                .copied()
                .collect())
        }
    }

    #[test]
    fn a_registration_smaps_does_not_confirm_is_never_trusted() {
        let page = crate::sys::va::page_size();
        let m = Mapping::anonymous(4 * page).unwrap();
        // Declared after the mapping, so it is closed first: nobody reads its events, and an
        // unmap of memory it still had registered would wait for a reader forever.
        let Ok(uffd) = Userfaultfd::new_monitor(CreateSeam::Real) else {
            eprintln!("skipping: no userfaultfd");
            return;
        };
        let half = VaRange::new(m.addr(), 2 * page).unwrap();
        let probe = Fake {
            extent: m.range(),
            shown: vec![half],
        };
        let mut set = WatchSet::new(16);
        assert!(matches!(
            set.watch(&uffd, RegisterMode::WriteProtect, m.range(), &probe),
            Err(Error::WatchUnverified {
                tries: VERIFY_TRIES,
                ..
            })
        ));
        assert!(set.pieces().is_empty(), "unverified memory left in the set");
        // The confirmed half is usable on its own.
        let held = set
            .watch(&uffd, RegisterMode::WriteProtect, half, &probe)
            .unwrap();
        assert_eq!(held, vec![half]);
        set.unwatch(&uffd, &held);
        assert!(set.pieces().is_empty());
    }

    #[test]
    fn overlapping_watches_unregister_only_with_the_last_holder() {
        let page = crate::sys::va::page_size();
        let m = Mapping::anonymous(4 * page).unwrap();
        // Declared after the mapping, so it is closed first: nobody reads its events, and an
        // unmap of memory it still had registered would wait for a reader forever.
        let Ok(uffd) = Userfaultfd::new_monitor(CreateSeam::Real) else {
            eprintln!("skipping: no userfaultfd");
            return;
        };
        let probe = Fake {
            extent: m.range(),
            shown: vec![m.range()],
        };
        let mut set = WatchSet::new(16);
        let one = VaRange::new(m.addr(), page).unwrap();
        let a = set
            .watch(&uffd, RegisterMode::WriteProtect, one, &probe)
            .unwrap();
        let b = set
            .watch(&uffd, RegisterMode::WriteProtect, m.range(), &probe)
            .unwrap();
        assert_eq!(set.registers, 1);
        set.unwatch(&uffd, &a);
        assert_eq!(set.pieces(), vec![m.range()]);
        assert_eq!(set.unregisters, 0);
        set.unwatch(&uffd, &b);
        assert!(set.pieces().is_empty());
        assert_eq!(set.unregisters, 1);
    }
}
