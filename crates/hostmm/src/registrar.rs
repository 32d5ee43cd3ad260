//! Registrars: what a cache entry *is* on the device side (an RDMA memory region, a GPU host
//! registration, a DMA map). The cache calls `register` on a miss and `deregister` when the
//! entry dies, never on the invalidation path.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use crate::error::RegistrarError;
use crate::primitive::lock;
use crate::va::{page_size, VaRange};

/// Registers and deregisters ranges with a secondary MMU (`ibv_reg_mr`/`ibv_dereg_mr`,
/// `cudaHostRegister`/`cudaHostUnregister`, ...).
///
/// Contract: `register` may be slow and may fail (the range may be unmapped concurrently);
/// `deregister` must not fail and must not unmap memory the cache's monitor watches *while
/// holding anything the monitor needs* — the cache calls it with no lock held, on the thread of
/// a cache operation, never from an invalidation callback.
pub trait Registrar: Send + Sync + 'static {
    /// What a registration holds (keys, handles, recorded frames).
    type Registration: Send + Sync + 'static;
    /// Registers the page-aligned range.
    fn register(&self, range: VaRange) -> Result<Self::Registration, RegistrarError>;
    /// Releases a registration made by `register`.
    fn deregister(&self, range: VaRange, registration: &Self::Registration);
}

/// Registers nothing: measures the cache itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopRegistrar;

impl Registrar for NoopRegistrar {
    type Registration = ();
    fn register(&self, _range: VaRange) -> Result<(), RegistrarError> {
        Ok(())
    }
    fn deregister(&self, _range: VaRange, _registration: &()) {}
}

/// Reference counts over byte ranges, so overlapping pins compose: `munlock` only runs on bytes
/// whose last pin went away (mlock itself is not counted by the kernel).
#[derive(Debug, Default)]
pub struct RangeCounts {
    /// Disjoint segments: start → (end, count ≥ 1).
    segs: BTreeMap<u64, (u64, u32)>,
}

impl RangeCounts {
    fn split_at(&mut self, at: u64) {
        if let Some((&s, &(e, c))) = self.segs.range(..at).next_back() {
            if e > at {
                self.segs.insert(s, (at, c));
                self.segs.insert(at, (e, c));
            }
        }
    }

    /// Adds one reference on `r`.
    pub fn add(&mut self, r: VaRange) {
        self.split_at(r.start());
        self.split_at(r.end());
        let mut cur = r.start();
        let existing: Vec<(u64, u64, u32)> = self
            .segs
            .range(r.start()..r.end())
            .map(|(&s, &(e, c))| (s, e, c))
            .collect();
        for (s, e, c) in existing {
            if s > cur {
                self.segs.insert(cur, (s, 1));
            }
            self.segs.insert(s, (e, c + 1));
            cur = e;
        }
        if cur < r.end() {
            self.segs.insert(cur, (r.end(), 1));
        }
    }

    /// Drops one reference on `r`; returns the sub-ranges whose count reached zero.
    pub fn remove(&mut self, r: VaRange) -> Vec<VaRange> {
        self.split_at(r.start());
        self.split_at(r.end());
        let existing: Vec<(u64, u64, u32)> = self
            .segs
            .range(r.start()..r.end())
            .map(|(&s, &(e, c))| (s, e, c))
            .collect();
        let mut freed: Vec<VaRange> = Vec::new();
        for (s, e, c) in existing {
            if c <= 1 {
                self.segs.remove(&s);
                match freed.last_mut() {
                    Some(last) if last.end() == s => {
                        *last = VaRange::from_bounds(last.start(), e).unwrap_or(*last)
                    }
                    _ => freed.extend(VaRange::from_bounds(s, e)),
                }
            } else {
                self.segs.insert(s, (e, c - 1));
            }
        }
        freed
    }

    /// Number of bytes with at least one reference.
    pub fn bytes(&self) -> u64 {
        self.segs.iter().map(|(s, (e, _))| e - s).sum()
    }
}

/// Pins with `mlock(2)`: the pages are resident and stay so until the last overlapping
/// registration is released.
#[derive(Debug, Default)]
pub struct MlockRegistrar {
    counts: Mutex<RangeCounts>,
}

impl MlockRegistrar {
    /// A registrar with no pins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes currently pinned through this registrar.
    pub fn pinned_bytes(&self) -> u64 {
        lock(&self.counts).bytes()
    }
}

fn mlock(r: VaRange) -> Result<(), RegistrarError> {
    // SAFETY: mlock only changes residency; it fails cleanly (ENOMEM) on unmapped memory.
    unsafe { rustix::mm::mlock(r.as_ptr(), r.len_usize()) }.map_err(|errno| RegistrarError::Sys {
        call: "mlock",
        errno,
    })
}

fn munlock(r: VaRange) {
    // SAFETY: munlock only changes residency; on memory unmapped meanwhile it fails with
    // ENOMEM, which leaves nothing to undo.
    let _ = unsafe { rustix::mm::munlock(r.as_ptr(), r.len_usize()) };
}

impl Registrar for MlockRegistrar {
    type Registration = ();
    fn register(&self, range: VaRange) -> Result<(), RegistrarError> {
        let mut counts = lock(&self.counts);
        mlock(range)?;
        counts.add(range);
        Ok(())
    }
    fn deregister(&self, range: VaRange, _registration: &()) {
        let mut counts = lock(&self.counts);
        for r in counts.remove(range) {
            munlock(r);
        }
    }
}

/// What the [`PagemapRegistrar`] records: the physical frame of every page at registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRegistration {
    /// Page frame numbers, one per page of the range.
    pub frames: Vec<u64>,
}

/// Pins with `mlock` and records the physical frames from `/proc/self/pagemap` (needs
/// CAP_SYS_ADMIN, i.e. root, to see frame numbers), so a test can check that a registration
/// still points at the memory now mapped at its address.
#[derive(Debug)]
pub struct PagemapRegistrar {
    mlock: MlockRegistrar,
    pagemap: File,
}

const PM_PRESENT: u64 = 1 << 63;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

impl PagemapRegistrar {
    /// Opens `/proc/self/pagemap` and checks that frame numbers are visible.
    pub fn new() -> Result<Self, RegistrarError> {
        let pagemap = File::open("/proc/self/pagemap")?;
        let me = Self {
            mlock: MlockRegistrar::new(),
            pagemap,
        };
        // A page of our own stack is present; a zero frame number means they are hidden.
        let probe = 0u64;
        let addr = &probe as *const u64 as u64;
        match me.frame_of(addr & !(page_size() - 1))? {
            Some(0) | None => Err(RegistrarError::NoFramePrivilege),
            Some(_) => Ok(me),
        }
    }

    /// The frame currently mapped at the page `addr` (`None` if not present).
    pub fn frame_of(&self, addr: u64) -> Result<Option<u64>, RegistrarError> {
        let mut w = [0u8; 8];
        self.pagemap
            .read_exact_at(&mut w, (addr / page_size()) * 8)?;
        let e = u64::from_ne_bytes(w);
        Ok((e & PM_PRESENT != 0).then_some(e & PM_PFN_MASK))
    }

    /// The frames currently mapped at `range`; `NotPresent` for a hole.
    pub fn frames(&self, range: VaRange) -> Result<Vec<u64>, RegistrarError> {
        let pages = (range.len() / page_size()) as usize;
        let mut raw = vec![0u8; pages * 8];
        self.pagemap
            .read_exact_at(&mut raw, (range.start() / page_size()) * 8)?;
        raw.chunks_exact(8)
            .enumerate()
            .map(|(i, c)| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                let e = u64::from_ne_bytes(w);
                if e & PM_PRESENT == 0 {
                    Err(RegistrarError::NotPresent(
                        range.start() + i as u64 * page_size(),
                    ))
                } else {
                    Ok(e & PM_PFN_MASK)
                }
            })
            .collect()
    }
}

impl Registrar for PagemapRegistrar {
    type Registration = FrameRegistration;
    fn register(&self, range: VaRange) -> Result<FrameRegistration, RegistrarError> {
        self.mlock.register(range)?;
        match self.frames(range) {
            Ok(frames) => Ok(FrameRegistration { frames }),
            Err(e) => {
                self.mlock.deregister(range, &());
                Err(e)
            }
        }
    }
    fn deregister(&self, range: VaRange, _registration: &FrameRegistration) {
        self.mlock.deregister(range, &());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u64, e: u64) -> VaRange {
        VaRange::from_bounds(s, e).unwrap()
    }

    #[test]
    fn overlapping_pins_release_only_unshared_bytes() {
        let mut c = RangeCounts::default();
        c.add(r(0x1000, 0x3000));
        c.add(r(0x2000, 0x5000));
        assert_eq!(c.bytes(), 0x4000);
        assert_eq!(c.remove(r(0x1000, 0x3000)), vec![r(0x1000, 0x2000)]);
        assert_eq!(c.bytes(), 0x3000);
        assert_eq!(c.remove(r(0x2000, 0x5000)), vec![r(0x2000, 0x5000)]);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn same_range_twice_needs_two_releases() {
        let mut c = RangeCounts::default();
        c.add(r(0x1000, 0x2000));
        c.add(r(0x1000, 0x2000));
        assert!(c.remove(r(0x1000, 0x2000)).is_empty());
        assert_eq!(c.remove(r(0x1000, 0x2000)), vec![r(0x1000, 0x2000)]);
    }
}
