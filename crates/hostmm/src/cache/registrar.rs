//! Registrars: what a cache entry *is* on the device side (an RDMA memory region, a GPU host
//! registration, a DMA map). The cache calls `register` on a miss and `deregister` when the
//! entry dies, never on the invalidation path.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use crate::error::RegistrarError;
use crate::primitive::lock;
use crate::sys::ranges::RangeCounts;
use crate::sys::va::{page_size, VaRange};

/// Registers and deregisters ranges with a secondary MMU (`ibv_reg_mr`/`ibv_dereg_mr`,
/// `cudaHostRegister`/`cudaHostUnregister`, ...).
///
/// Contract: a registration that depends on the pages (their frames, a device pin) must pin
/// them with [`MlockRegistrar`] *before* it records them, and release that pin after it
/// deregisters: the pin is what keeps `MADV_DONTNEED` (whose userfaultfd `REMOVE` event comes
/// before the zap) and a `fork` followed by a write from moving registered pages with no
/// invalidation. [`PagemapRegistrar`] is built that way.
///
/// `register` may be slow and may fail (the range may be unmapped concurrently);
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
    /// Whether a registration depends on the pages behind its range (records frames, holds a
    /// device pin). Such a registration must be made under hostmm's pin ([`MlockRegistrar`]):
    /// the cache checks, when `register` returns, that the pin covers the whole range, and
    /// refuses the registration ([`Error::Unpinned`](crate::Error::Unpinned), after
    /// deregistering it) if not. Without the pin, `MADV_DONTNEED` and fork + write move
    /// registered pages with no event from either source.
    ///
    /// `true` unless overridden: a registrar that records nothing of the pages (a key, a
    /// counter, [`NoopRegistrar`]) says `false`.
    fn needs_pin(&self) -> bool {
        true
    }
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
    fn needs_pin(&self) -> bool {
        false
    }
}

/// Every pin made through hostmm in this process. `mlock` and `MADV_DONTFORK` are per-VMA
/// flags the kernel does not count, so overlapping pins — of one registrar or of several — must
/// share one count: a flag is cleared only on bytes no pin needs any more.
static PINS: Mutex<RangeCounts> = Mutex::new(RangeCounts::new());

/// Pins the way a long-term device pin must, before anything records what backs the range:
///
/// * `mlock(2)`: populates every page and, on a private writable mapping, write-faults it
///   (`populate_vma_page_range` in `mm/gup.c` adds `FOLL_WRITE` there), so a page still shared
///   copy-on-write with a child forked earlier is copied now, before its frame is recorded.
///   The range becomes `VM_LOCKED`, which `MADV_DONTNEED`/`MADV_FREE` refuse (`EINVAL`) — and
///   they check it again after the userfaultfd `REMOVE` event, when they take the mmap lock back
///   to zap (`madvise_dontneed_free` in `mm/madvise.c`), so no zap can follow a pin that was
///   made between the event and the zap.
/// * `MADV_DONTFORK` (what `ibv_fork_init` does): a later `fork` does not share the range with
///   the child, so a write in the parent after a fork cannot move it to a new frame.
///
/// Returns the error of the first call that failed, with nothing left pinned by this call.
fn pin(range: VaRange) -> Result<(), RegistrarError> {
    let mut pins = lock(&PINS);
    // SAFETY: mlock only changes residency (it faults pages in); it fails cleanly (ENOMEM) on
    // unmapped memory.
    if let Err(errno) = unsafe { rustix::mm::mlock(range.as_ptr(), range.len_usize()) } {
        // mlock may have locked the mappings before a hole: undo that on bytes nobody pins.
        pins.add(range);
        for r in pins.remove(range) {
            unpin_flags(r);
        }
        return Err(RegistrarError::Sys {
            call: "mlock",
            errno,
        });
    }
    pins.add(range);
    // The whole range, not only the bytes this pin made fresh: a pin still counted here may
    // belong to a registration of a mapping that has since been replaced (unmapped and mapped
    // again while a handle kept the dead registration alive), and the flag went with the old
    // mapping; the new one must not be shared with a child forked later.
    // SAFETY: MADV_DONTFORK only changes what a future fork copies; no memory changes.
    if let Err(errno) = unsafe {
        rustix::mm::madvise(
            range.as_ptr(),
            range.len_usize(),
            rustix::mm::Advice::LinuxDontFork,
        )
    } {
        for r in pins.remove(range) {
            unpin_flags(r);
        }
        return Err(RegistrarError::Sys {
            call: "madvise(MADV_DONTFORK)",
            errno,
        });
    }
    Ok(())
}

/// Bytes of `range` that hostmm's pin (of any registrar in this process) does not cover.
pub(crate) fn unpinned_bytes(range: VaRange) -> u64 {
    lock(&PINS)
        .unheld_within(range)
        .iter()
        .map(|r| r.len())
        .sum()
}

/// Drops one pin of `range`; clears the flags on bytes no other pin holds.
fn unpin(range: VaRange) {
    let mut pins = lock(&PINS);
    for r in pins.remove(range) {
        unpin_flags(r);
    }
}

fn unpin_flags(r: VaRange) {
    // SAFETY: munlock and MADV_DOFORK only change residency and what a future fork copies; on
    // memory unmapped meanwhile they fail with ENOMEM, which leaves nothing to undo.
    unsafe {
        let _ = rustix::mm::munlock(r.as_ptr(), r.len_usize());
        let _ = rustix::mm::madvise(r.as_ptr(), r.len_usize(), rustix::mm::Advice::LinuxDoFork);
    }
}

/// Pins with `mlock(2)` and `MADV_DONTFORK` (see the crate's rules): the pages are resident,
/// copy-on-write is broken, `MADV_DONTNEED` cannot zap them and a `fork` does not share them,
/// until the last overlapping pin is released. Build a device registrar on it: pin first, then
/// register with the device (`ibv_reg_mr`), and deregister before unpinning.
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

impl Registrar for MlockRegistrar {
    type Registration = ();
    fn register(&self, range: VaRange) -> Result<(), RegistrarError> {
        pin(range)?;
        lock(&self.counts).add(range);
        Ok(())
    }
    fn deregister(&self, range: VaRange, _registration: &()) {
        lock(&self.counts).remove(range);
        unpin(range);
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
    use rustix::mm::{MapFlags, ProtFlags};

    /// Whether `/proc/self/smaps` shows `VmFlags: … dc` (`VM_DONTCOPY`, set by
    /// `MADV_DONTFORK`) on the mapping that holds `addr`.
    fn dontfork(addr: u64) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
                    {
                        inside = lo <= addr && addr < hi;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.split_whitespace().any(|f| f == "dc");
                }
            }
        }
        panic!("no mapping at {addr:#x} in smaps");
    }

    fn map(at: Option<u64>, len: usize) -> u64 {
        let (hint, flags) = match at {
            Some(a) => (
                a as *mut core::ffi::c_void,
                MapFlags::PRIVATE | MapFlags::FIXED,
            ),
            None => (core::ptr::null_mut(), MapFlags::PRIVATE),
        };
        // SAFETY: a fresh anonymous mapping, or one replacing this test's own mapping.
        let p = unsafe {
            rustix::mm::mmap_anonymous(hint, len, ProtFlags::READ | ProtFlags::WRITE, flags)
        }
        .expect("mmap");
        p as u64
    }

    /// The hole behind a rare stale lookup in the fork-write race: a registration of a
    /// mapping since replaced still holds its pin when the new mapping at the same address is
    /// registered; the new pin found its bytes counted already and set `MADV_DONTFORK` on
    /// nothing, so a later fork shared the new mapping and a write in the parent moved its
    /// pages away from the registration. (Checked: with the flag set on fresh bytes only, the
    /// last assertion fails.)
    #[test]
    fn a_pin_over_a_replaced_mapping_still_counted_marks_the_new_mapping_dontfork() {
        let page = crate::sys::va::page_size() as usize;
        let len = 2 * page;
        let addr = map(None, len);
        let range = VaRange::covering(addr, len as u64).unwrap();
        let r = MlockRegistrar::new();
        r.register(range).expect("pin");
        assert!(dontfork(addr));
        // Replace the mapping while the first registration is still alive.
        assert_eq!(map(Some(addr), len), addr);
        assert!(!dontfork(addr), "a new mapping starts without the flag");
        r.register(range).expect("second pin");
        assert!(dontfork(addr), "the second pin must mark the new mapping");
        r.deregister(range, &());
        assert!(dontfork(addr), "still pinned once");
        r.deregister(range, &());
        assert!(!dontfork(addr), "the last unpin clears it");
        // SAFETY: this test's own mapping.
        unsafe { rustix::mm::munmap(addr as *mut core::ffi::c_void, len) }.unwrap();
    }
}
