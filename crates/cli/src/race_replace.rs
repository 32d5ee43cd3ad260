//! The race: the registration cache against the real kernel.
//!
//! One thread (the *mutator*) repeatedly unmaps and maps the same virtual range, each new
//! mapping carrying a fresh generation word; another (the *looker*) looks the range up in a
//! [`RegCache`] and registers it. After each round both stop and the looker checks the
//! registration still cached for the range against what is mapped there now: the generation
//! word, and, when `/proc/self/pagemap` shows frame numbers (root), the physical frames. A
//! registration of an earlier mapping is *stale*. The claim is `stale = 0`.
//!
//! Rounds alternate two ways of replacing the mapping:
//! * `munmap` then `mmap(MAP_FIXED_NOREPLACE)` at the same address, then the generation write
//!   (the registrar refuses pages whose generation is not written yet, as a NIC driver would
//!   refuse memory that is not ready);
//! * a new mapping prepared elsewhere with its generation, moved over the range with
//!   `mremap(MREMAP_FIXED)` — an atomic replace, so the range is never unmapped in between.
//!
//! With the uffd source the mutator uses plain system calls (the monitor sees them); with the
//! bracketed source it uses the [`HostMm`] wrappers.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::mm::MremapFlags;

use hostmm::{
    page_size, CacheConfig, CacheStats, Error, FrameRegistration, HostMm, Mapping, MlockRegistrar,
    MonitorConfig, PagemapRegistrar, RegCache, Registrar, RegistrarError, Result, UffdMonitor,
    VaRange,
};

use crate::sys::{as_ptr, lock, sys};

/// Which invalidation source the race runs against.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RaceSource {
    /// A [`UffdMonitor`]; the mutator uses plain syscalls.
    Uffd,
    /// Bracketed wrappers; the mutator calls them.
    Bracketed,
}

impl RaceSource {
    /// `"uffd"` or `"bracketed"`.
    pub fn name(self) -> &'static str {
        match self {
            RaceSource::Uffd => "uffd",
            RaceSource::Bracketed => "bracketed",
        }
    }
}

/// Parameters of a race.
#[derive(Clone, Debug)]
pub struct RaceConfig {
    /// Rounds to run (at least 1).
    pub rounds: u64,
    /// The invalidation source.
    pub source: RaceSource,
    /// Seed of the jitter that varies the interleavings.
    pub seed: u64,
    /// Pages in the raced range (at least 1).
    pub pages: u64,
    /// Extra time each registration takes (a slow `ibv_reg_mr`), widening the race window.
    pub register_delay: Duration,
    /// Most jitter, in nanoseconds of spinning, before each operation of either thread.
    pub max_jitter_ns: u32,
    /// Unmap/map operations per round (at least 1); more than one lets a registration started
    /// after one replacement collide with the next.
    pub ops_per_round: u32,
}

impl Default for RaceConfig {
    fn default() -> Self {
        Self {
            rounds: 1000,
            source: RaceSource::Bracketed,
            seed: 1,
            pages: 1,
            register_delay: Duration::ZERO,
            max_jitter_ns: 50_000,
            ops_per_round: 3,
        }
    }
}

/// What a race found.
#[derive(Clone, Debug, PartialEq)]
pub struct RaceReport {
    /// The source raced.
    pub source: &'static str,
    /// Rounds run.
    pub rounds: u64,
    /// Rounds whose cached registration belonged to an earlier mapping.
    pub stale: u64,
    /// Rounds where a registration was cached at the check (the others had none to check).
    pub checked: u64,
    /// Of those, how many were also compared by physical frame.
    pub frame_checked: u64,
    /// Unmap/map replacements the mutator made.
    pub replacements: u64,
    /// Lookups made by the looker during the rounds.
    pub lookups: u64,
    /// Lookups that failed (range unmapped or not ready at registration: expected).
    pub failed_lookups: u64,
    /// The cache's counters at the end.
    pub cache: CacheStats,
    /// Wall time.
    pub elapsed: Duration,
    /// The seed used.
    pub seed: u64,
}

/// What the race's registrar records: the generation seen, and the frames when visible.
#[derive(Clone, Debug)]
pub struct GenRegistration {
    /// The generation word of the mapping that was registered.
    pub generation: u64,
    /// Its physical frames (root only).
    pub frames: Option<Vec<u64>>,
}

enum Pin {
    Frames(PagemapRegistrar),
    Mlock(MlockRegistrar),
}

/// Pins (mlock, plus frames when visible) and records the generation word, read through
/// `/proc/self/mem` so that a concurrent unmap makes the read fail instead of faulting.
pub struct GenRegistrar {
    pin: Pin,
    mem: File,
    delay: Duration,
}

impl GenRegistrar {
    /// Frames are recorded when `/proc/self/pagemap` shows them.
    pub fn new(delay: Duration) -> Result<Self> {
        let pin = match PagemapRegistrar::new() {
            Ok(p) => Pin::Frames(p),
            Err(_) => Pin::Mlock(MlockRegistrar::new()),
        };
        let mem = File::open("/proc/self/mem").map_err(|source| Error::Io {
            what: "opening /proc/self/mem",
            source,
        })?;
        Ok(Self { pin, mem, delay })
    }

    /// The word at `addr`, or `None` if it is not mapped.
    pub fn read_word(&self, addr: u64) -> Option<u64> {
        let mut w = [0u8; 8];
        self.mem.read_exact_at(&mut w, addr).ok()?;
        Some(u64::from_ne_bytes(w))
    }

    /// The frames mapped at `range` now, if recorded.
    pub fn frames_now(&self, range: VaRange) -> Option<Vec<u64>> {
        match &self.pin {
            Pin::Frames(p) => p.frames(range).ok(),
            Pin::Mlock(_) => None,
        }
    }
}

fn spin_for(d: Duration) {
    if d.is_zero() {
        return;
    }
    let t = Instant::now();
    while t.elapsed() < d {
        core::hint::spin_loop();
    }
}

impl Registrar for GenRegistrar {
    type Registration = GenRegistration;
    fn register(&self, range: VaRange) -> Result<GenRegistration, RegistrarError> {
        // Pin and snapshot what is mapped (frames, generation), then take the rest of the
        // registration's time: like a NIC driver that pins, then programs the device.
        let frames = match &self.pin {
            Pin::Frames(p) => Some(p.register(range)?.frames),
            Pin::Mlock(m) => {
                m.register(range)?;
                None
            }
        };
        let generation = self.read_word(range.start()).unwrap_or(0);
        let reg = GenRegistration { generation, frames };
        if generation == 0 {
            self.deregister(range, &reg);
            return Err(RegistrarError::Other(
                "memory not ready (generation word not written yet)".into(),
            ));
        }
        spin_for(self.delay);
        Ok(reg)
    }
    fn deregister(&self, range: VaRange, registration: &GenRegistration) {
        match &self.pin {
            Pin::Frames(p) => p.deregister(range, &FrameRegistration { frames: Vec::new() }),
            Pin::Mlock(m) => m.deregister(range, &()),
        }
        let _ = registration;
    }
}

/// A small, seedable generator for jitter (xorshift64*).
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded; any seed works.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next value below `bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        if bound == 0 {
            0
        } else {
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as u32 % bound
        }
    }
    fn spin(&mut self, max_ns: u32) {
        spin_for(Duration::from_nanos(u64::from(self.below(max_ns))));
    }
}

/// A two-party barrier that spins (then yields), so both threads leave it within nanoseconds
/// of each other: a futex barrier wakes the sleeper tens of microseconds late, and the other
/// thread would finish its whole round before the race even starts.
struct SpinBarrier {
    arrived: AtomicU64,
}

impl SpinBarrier {
    fn new() -> Self {
        Self {
            arrived: AtomicU64::new(0),
        }
    }
    fn wait(&self) {
        let ticket = self.arrived.fetch_add(1, Ordering::AcqRel);
        let target = (ticket / 2 + 1) * 2;
        let mut i = 0u32;
        while self.arrived.load(Ordering::Acquire) < target {
            if i < 200 {
                core::hint::spin_loop();
                i += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

struct Target {
    range: VaRange,
}

impl Target {
    /// One round of the mutator: replace the mapping and return the generation now there.
    fn replace(&self, host: &HostMm, bracketed: bool, generation: u64, atomic: bool) -> Result<()> {
        let (addr, len) = (self.range.start(), self.range.len());
        if atomic {
            let fresh = Mapping::anonymous(len)?;
            fresh.write_u64(0, generation);
            let from = fresh.into_raw();
            if bracketed {
                // SAFETY: `from` is ours; the target range is owned by the race and only
                // reached by the looker through the cache and /proc/self/mem.
                unsafe { host.mremap(from.start(), len, len, MremapFlags::MAYMOVE, Some(addr)) }?;
            } else {
                // SAFETY: as above.
                unsafe {
                    rustix::mm::mremap_fixed(
                        as_ptr(&from),
                        len as usize,
                        len as usize,
                        MremapFlags::MAYMOVE,
                        as_ptr(&self.range),
                    )
                }
                .map_err(sys("mremap"))?;
            }
        } else {
            if bracketed {
                // SAFETY: as above.
                unsafe { host.munmap(addr, len) }?;
            } else {
                // SAFETY: as above.
                unsafe { rustix::mm::munmap(as_ptr(&self.range), len as usize) }
                    .map_err(sys("munmap"))?;
            }
            let m = Mapping::anonymous_at(addr, len)?;
            m.write_u64(0, generation);
            m.into_raw();
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // SAFETY: the race owns the target range and both threads are done with it.
        let _ = unsafe { rustix::mm::munmap(as_ptr(&self.range), self.range.len() as usize) };
    }
}

/// Runs the race. `progress` is called with the number of rounds done, every 256 rounds.
pub fn run(config: &RaceConfig, mut progress: impl FnMut(u64)) -> Result<RaceReport> {
    if config.rounds == 0 {
        return Err(Error::Config("race: rounds must be at least 1"));
    }
    if config.ops_per_round == 0 {
        return Err(Error::Config("race: ops_per_round must be at least 1"));
    }
    if config.pages == 0 || config.pages > 1 << 20 {
        return Err(Error::Config("race: pages must be between 1 and 1048576"));
    }
    let host = HostMm::new();
    let monitor = match config.source {
        RaceSource::Uffd => Some(UffdMonitor::start(&host, MonitorConfig::default())?),
        RaceSource::Bracketed => None,
    };
    let registrar = GenRegistrar::new(config.register_delay)?;
    let cache = RegCache::new(
        &host,
        registrar,
        CacheConfig {
            monitor,
            ..Default::default()
        },
    )?;
    let len = config.pages * page_size();
    let initial = Mapping::anonymous(len)?;
    initial.write_u64(0, 1);
    let target = Target {
        range: initial.into_raw(),
    };
    let (addr, bracketed) = (target.range.start(), config.source == RaceSource::Bracketed);

    let current = AtomicU64::new(1);
    let replacements = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let barrier = SpinBarrier::new();
    let failure: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
    let stop = AtomicBool::new(false);
    let (mut stale, mut checked, mut frame_checked, mut lookups, mut failed) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();

    std::thread::scope(|s| {
        let mutator = s.spawn(|| {
            let mut jitter = Jitter::new(config.seed ^ 0xA5A5);
            for round in 0..config.rounds {
                barrier.wait();
                for op in 0..u64::from(config.ops_per_round) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    jitter.spin(config.max_jitter_ns);
                    let generation = 2 + round * u64::from(config.ops_per_round) + op;
                    match target.replace(&host, bracketed, generation, jitter.below(2) == 1) {
                        Ok(()) => {
                            current.store(generation, Ordering::SeqCst);
                            replacements.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            *lock(&failure) = Some(e);
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
                done.store(true, Ordering::SeqCst);
                barrier.wait();
                // The looker reads the same flag after the same barrier and stops too.
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
        });

        let mut jitter = Jitter::new(config.seed);
        for round in 0..config.rounds {
            done.store(false, Ordering::SeqCst);
            barrier.wait();
            loop {
                let finished = done.load(Ordering::SeqCst);
                jitter.spin(config.max_jitter_ns / 4);
                lookups += 1;
                if cache.get(addr, len).is_err() {
                    failed += 1;
                }
                if finished {
                    break;
                }
            }
            barrier.wait();
            if stop.load(Ordering::SeqCst) {
                break;
            }
            // The check: whatever the cache would hand out now must describe the mapping now.
            if let Ok(Some(h)) = cache.lookup(addr, len) {
                checked += 1;
                let reg = h.registration();
                let mut is_stale = reg.generation != current.load(Ordering::SeqCst);
                if let (Some(old), Some(now)) =
                    (&reg.frames, cache.registrar().frames_now(target.range))
                {
                    frame_checked += 1;
                    is_stale |= *old != now;
                }
                if is_stale {
                    stale += 1;
                }
            }
            if round % 256 == 255 {
                progress(round + 1);
            }
        }
        let _ = mutator.join();
    });
    if let Some(e) = lock(&failure).take() {
        return Err(e);
    }
    progress(config.rounds);
    let report = RaceReport {
        source: config.source.name(),
        rounds: config.rounds,
        stale,
        checked,
        frame_checked,
        replacements: replacements.load(Ordering::Relaxed),
        lookups,
        failed_lookups: failed,
        cache: cache.stats(),
        elapsed: start.elapsed(),
        seed: config.seed,
    };
    drop(cache);
    drop(target);
    Ok(report)
}
