//! The adversary: `mmnotify race --pattern P` with N mutator and M looker threads on
//! overlapping ranges of one arena, each lookup checked against physical frames and a
//! generation word, and a watchdog that reports a hang with where every thread is.
//!
//! # The check
//!
//! Every page of the arena carries a generation word at its start. A mutator locks the pages of
//! its range (mutators never change a page at the same time), changes the range with the
//! pattern's system calls, writes a fresh generation into every page the change replaced, and
//! then *publishes* each page's `(generation, frame)` (a per-page seqlock). A looker snapshots
//! the published records of its range, then looks the range up in the cache. The registration
//! it gets recorded, per page, the generation and frame it saw when it was made. It is **stale**
//! if, for some page, it describes memory older than the snapshot: with frame numbers (root),
//! `frame != published frame && generation <= published generation`; without them,
//! `generation < published generation`. A change completed before the lookup began is in the
//! snapshot, so a stale result is exactly a broken promise.
//!
//! # Backings
//!
//! The anonymous patterns change a private anonymous arena. The file patterns (`punch-hole`,
//! `truncate`, `remove`) change a memfd mapped twice: the cache and the lookers use one mapping,
//! `remove` goes through the other, and every change frees the file's pages in both
//! (`adversary_file.rs`). `brk` moves the program break over an arena at the top of `[heap]`, in
//! a child process whose allocator is kept off the break (`adversary_brk.rs`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hostmm::{
    CacheConfig, HostMm, Mapping, MlockRegistrar, MonitorConfig, PagemapRegistrar, RegCache,
    Registrar, RegistrarError, UffdMonitor, VaRange,
};
use rustix::mm::{Advice, MapFlags, MprotectFlags, MremapFlags, ProtFlags};
use serde::{Deserialize, Serialize};

use crate::adversary_brk;
use crate::adversary_file::{self, FileChange};

/// One way of changing the address space under the cache.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Pattern {
    /// munmap a random sub-range (often part of a cached range), then map it again.
    UnmapMap,
    /// mmap(MAP_FIXED) over a random sub-range (an atomic replace).
    MapFixed,
    /// mremap(MREMAP_FIXED) a prepared mapping over a random sub-range.
    Mremap,
    /// madvise(MADV_DONTNEED): refused (EINVAL) where pinned, zaps the rest.
    Dontneed,
    /// fork a child that lives ~1 ms, then write every page of the range in the parent.
    ForkWrite,
    /// mprotect(PROT_NONE) and back: must invalidate nothing and leave nothing stale.
    Mprotect,
    /// Shrink the program break into the arena, then grow it back (a child process; uffd only:
    /// there is no bracketed brk wrapper).
    Brk,
    /// fallocate(PUNCH_HOLE) of a random file range of a memfd mapped twice (bracketed only).
    PunchHole,
    /// ftruncate the memfd into the arena, then back to its size (bracketed only).
    Truncate,
    /// madvise(MADV_REMOVE) through the memfd's *other* mapping (bracketed only).
    Remove,
}

impl Pattern {
    pub(crate) const ALL: [Pattern; 10] = [
        Pattern::UnmapMap,
        Pattern::MapFixed,
        Pattern::Mremap,
        Pattern::Dontneed,
        Pattern::ForkWrite,
        Pattern::Mprotect,
        Pattern::Brk,
        Pattern::PunchHole,
        Pattern::Truncate,
        Pattern::Remove,
    ];

    /// Whether the pattern changes a memfd (a shared mapping) rather than anonymous memory.
    pub(crate) fn is_file(self) -> bool {
        matches!(
            self,
            Pattern::PunchHole | Pattern::Truncate | Pattern::Remove
        )
    }

    /// Whether the source claims to cover the pattern (what `--pattern all` runs). The file
    /// patterns under uffd are not: the cache refuses shared mappings there, which `run` shows
    /// by asking it. brk under bracketed is not: nothing brackets the break.
    pub(crate) fn covered_by(self, uffd: bool) -> bool {
        match self {
            Pattern::Brk => uffd,
            p if p.is_file() => !uffd,
            _ => true,
        }
    }

    /// Whether a mutator's change runs from a random page to the end of the arena (the break
    /// and the file size are single edges).
    fn to_the_end(self) -> bool {
        matches!(self, Pattern::Brk | Pattern::Truncate)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Pattern::UnmapMap => "unmap-map",
            Pattern::MapFixed => "map-fixed",
            Pattern::Mremap => "mremap",
            Pattern::Dontneed => "dontneed",
            Pattern::ForkWrite => "fork-write",
            Pattern::Mprotect => "mprotect",
            Pattern::Brk => "brk",
            Pattern::PunchHole => "punch-hole",
            Pattern::Truncate => "truncate",
            Pattern::Remove => "remove",
        }
    }
}

/// Parameters of one adversary run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Config {
    pub pattern: Pattern,
    /// uffd (plain system calls) or bracketed (the `HostMm` wrappers).
    pub uffd: bool,
    /// Bracketed source, but every change made with the plain call the source cannot see
    /// (`remove`: bracketing only the madvised mapping, `adversary_file.rs`): a run that must
    /// report stale lookups (the check's teeth). Refused with uffd.
    pub bypass: bool,
    pub mutators: usize,
    pub lookers: usize,
    /// Stop after this many mutator operations ...
    pub ops: u64,
    /// ... or after this long, whichever comes first.
    pub seconds: Option<f64>,
    /// Pages in the arena.
    pub pages: u64,
    pub seed: u64,
    /// No progress for this long is a hang.
    pub hang: Duration,
}

/// What a run found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Report {
    pub pattern: Pattern,
    pub source: String,
    /// The changes bypassed the source (`Config::bypass`).
    pub bypass: bool,
    pub mutators: usize,
    pub lookers: usize,
    /// Mutator operations made.
    pub ops: u64,
    /// Operations the kernel refused (DONTNEED on pinned pages: EINVAL).
    pub refused_ops: u64,
    pub lookups: u64,
    /// Lookups that returned a registration (each one checked).
    pub checked: u64,
    /// Of those, compared by physical frame too.
    pub frame_checked: u64,
    pub stale: u64,
    /// Lookups that failed (range changing or not ready: expected).
    pub failed_lookups: u64,
    pub hits: u64,
    pub misses: u64,
    pub invalidations: u64,
    pub retries: u64,
    /// Registrations made and released by the registrar; equal at the end, or it leaked.
    pub registrations: u64,
    pub deregistrations: u64,
    pub elapsed_s: f64,
    pub seed: u64,
}

/// What a registration recorded, per page.
struct Rec {
    gens: Vec<u64>,
    frames: Option<Vec<u64>>,
}

/// Pins (mlock + MADV_DONTFORK, via hostmm), records frames when visible, and the generation
/// of every page, read through `/proc/self/mem` so a concurrent unmap fails the read instead of
/// faulting. Counts registrations and deregistrations.
struct Recorder {
    frames: Option<PagemapRegistrar>,
    pins: MlockRegistrar,
    mem: File,
    /// Registrations made and released.
    counts: Arc<(AtomicU64, AtomicU64)>,
}

impl Recorder {
    fn gens(&self, range: VaRange) -> Option<Vec<u64>> {
        let page = hostmm::page_size();
        let mut buf = vec![0u8; range.len() as usize];
        self.mem.read_exact_at(&mut buf, range.start()).ok()?;
        Some(
            buf.chunks_exact(page as usize)
                .map(|c| u64::from_ne_bytes(c[..8].try_into().unwrap_or([0; 8])))
                .collect(),
        )
    }
    fn frames_now(&self, range: VaRange) -> Option<Vec<u64>> {
        self.frames.as_ref()?.frames(range).ok()
    }
}

impl Registrar for Recorder {
    type Registration = Rec;
    fn register(&self, range: VaRange) -> Result<Rec, RegistrarError> {
        let frames = match &self.frames {
            Some(p) => Some(p.register(range)?.frames),
            None => {
                self.pins.register(range)?;
                None
            }
        };
        let rec = Rec {
            gens: self.gens(range).unwrap_or_default(),
            frames,
        };
        if rec.gens.is_empty() || rec.gens.contains(&0) {
            self.release(range);
            return Err(RegistrarError::Other("generation not written yet".into()));
        }
        self.counts.0.fetch_add(1, Ordering::Relaxed);
        Ok(rec)
    }
    fn deregister(&self, range: VaRange, _rec: &Rec) {
        self.counts.1.fetch_add(1, Ordering::Relaxed);
        self.release(range);
    }
}

impl Recorder {
    fn release(&self, range: VaRange) {
        match &self.frames {
            Some(p) => p.deregister(range, &hostmm::FrameRegistration { frames: Vec::new() }),
            None => self.pins.deregister(range, &()),
        }
    }
}

/// The published state of one page.
#[derive(Default)]
struct PageRec {
    lock: Mutex<()>,
    seq: AtomicU64,
    generation: AtomicU64,
    frame: AtomicU64,
}

impl PageRec {
    fn publish(&self, generation: u64, frame: u64) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        self.generation.store(generation, Ordering::SeqCst);
        self.frame.store(frame, Ordering::SeqCst);
        self.seq.fetch_add(1, Ordering::SeqCst);
    }
    fn snapshot(&self) -> (u64, u64) {
        loop {
            let s = self.seq.load(Ordering::SeqCst);
            if s % 2 == 0 {
                let v = (
                    self.generation.load(Ordering::SeqCst),
                    self.frame.load(Ordering::SeqCst),
                );
                if self.seq.load(Ordering::SeqCst) == s {
                    return v;
                }
            }
            std::hint::spin_loop();
        }
    }
}

/// Where a thread is, for the watchdog.
#[derive(Default)]
struct Beat {
    count: AtomicU64,
    at: AtomicU8,
}

const PLACES: [&str; 7] = [
    "idle",
    "locking its pages",
    "in the change's system calls",
    "publishing generations",
    "snapshotting",
    "in RegCache::get",
    "checking",
];

impl Beat {
    fn at(&self, place: u8) {
        self.at.store(place, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// xorshift64*: seedable jitter and range choice.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) % n.max(1)
    }
    /// A random run of pages `[first, first + n)` within `pages`.
    fn run(&mut self, pages: u64) -> (u64, u64) {
        let first = self.below(pages);
        let n = 1 + self.below(pages - first);
        (first, n)
    }
}

struct Arena {
    base: u64,
    pages: u64,
    page: u64,
    recs: Vec<PageRec>,
    next_gen: AtomicU64,
    backing: Backing,
}

/// What the arena is.
enum Backing {
    /// A private anonymous mapping (unmapped at the end of the run).
    Anon,
    /// A memfd mapped twice; the arena is its first mapping.
    File(adversary_file::TwoMappings),
    /// The top of `[heap]`, above the break the run began with.
    Brk(adversary_brk::Break),
}

impl Arena {
    fn range(&self, first: u64, n: u64) -> VaRange {
        VaRange::new(self.base + first * self.page, n * self.page).expect("inside the arena")
    }
    fn word(&self, p: u64) -> *mut u64 {
        (self.base + p * self.page) as usize as *mut u64
    }
    /// Writes a fresh generation into page `p` (mapped read/write, locked by the caller) and
    /// publishes it with its frame.
    fn renew(&self, rec: &Recorder, p: u64) {
        let g = self.next_gen.fetch_add(1, Ordering::SeqCst);
        // SAFETY: page `p` is mapped read/write and its mutator lock is held; nothing else
        // writes it (lookers only read it through /proc/self/mem).
        unsafe { self.word(p).write_volatile(g) };
        let frame = rec
            .frames_now(self.range(p, 1))
            .and_then(|f| f.first().copied())
            .unwrap_or(0);
        self.recs[p as usize].publish(g, frame);
    }
}

fn sys<T>(r: rustix::io::Result<T>, call: &'static str) -> Result<T> {
    r.with_context(|| format!("{call} in the adversary"))
}

/// One mutator operation on pages `[first, first + n)`; returns whether the kernel refused it.
fn mutate(
    cfg: &Config,
    host: &HostMm,
    arena: &Arena,
    rec: &Recorder,
    beat: &Beat,
    first: u64,
    n: u64,
) -> Result<bool> {
    let r = arena.range(first, n);
    let (addr, len) = (r.start(), r.len());
    beat.at(1);
    // The break is one edge of the whole process: mutators take turns on it (before their
    // pages, so the lock order is the same for all).
    let _edge = match &arena.backing {
        Backing::Brk(b) => Some(b.edge()),
        _ => None,
    };
    let _locks: Vec<_> = (first..first + n)
        .map(|p| {
            arena.recs[p as usize]
                .lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        })
        .collect();
    beat.at(2);
    let ptr = addr as usize as *mut core::ffi::c_void;
    let rw = ProtFlags::READ | ProtFlags::WRITE;
    let mut refused = false;
    let mut renew_all = true;
    // Under uffd, or to bypass the bracketed source: the plain system call.
    let plain = cfg.uffd || cfg.bypass;
    // SAFETY (every call below): the arena is owned by this run; the range's pages are locked
    // by this mutator, and lookers reach them only through the cache and /proc/self/mem.
    match cfg.pattern {
        Pattern::UnmapMap => {
            if plain {
                sys(unsafe { rustix::mm::munmap(ptr, len as usize) }, "munmap")?;
            } else {
                unsafe { host.munmap(addr, len) }?;
            }
            match Mapping::anonymous_at(addr, len) {
                Ok(m) => {
                    m.into_raw();
                }
                Err(e) => {
                    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
                    let near: Vec<&str> = maps
                        .lines()
                        .filter(|l| {
                            l.split('-')
                                .next()
                                .and_then(|a| u64::from_str_radix(a, 16).ok())
                                .is_some_and(|a| a + (1 << 20) > addr && a < addr + len + (1 << 20))
                        })
                        .collect();
                    bail!("{e}: at {addr:#x}+{len:#x}, mapped around it: {near:#?}");
                }
            }
        }
        Pattern::MapFixed => {
            if plain {
                sys(
                    unsafe {
                        rustix::mm::mmap_anonymous(
                            ptr,
                            len as usize,
                            rw,
                            MapFlags::PRIVATE | MapFlags::FIXED,
                        )
                    },
                    "mmap(MAP_FIXED)",
                )?;
            } else {
                unsafe { host.mmap_anonymous_fixed(addr, len, rw) }?;
            }
        }
        Pattern::Mremap => {
            // Populated, so the move carries pages; generations are written after it lands.
            let fresh = Mapping::anonymous(len)?;
            for i in 0..n {
                fresh.write_u64(i * arena.page, 0);
            }
            let from = fresh.into_raw();
            if plain {
                sys(
                    unsafe {
                        rustix::mm::mremap_fixed(
                            from.start() as usize as *mut _,
                            len as usize,
                            len as usize,
                            MremapFlags::MAYMOVE,
                            ptr,
                        )
                    },
                    "mremap",
                )?;
            } else {
                unsafe { host.mremap(from.start(), len, len, MremapFlags::MAYMOVE, Some(addr)) }?;
            }
        }
        Pattern::Dontneed => {
            let out = if plain {
                unsafe { rustix::mm::madvise(ptr, len as usize, Advice::LinuxDontNeed) }.map_err(
                    |e| hostmm::Error::Sys {
                        call: "madvise",
                        errno: e,
                    },
                )
            } else {
                unsafe { host.madvise(addr, len, Advice::LinuxDontNeed) }
            };
            match out {
                Ok(()) => {}
                Err(hostmm::Error::Sys {
                    errno: rustix::io::Errno::INVAL,
                    ..
                }) => refused = true,
                Err(e) => return Err(e.into()),
            }
            // Renew exactly the pages that were zapped (EINVAL may come after some were).
            renew_all = false;
            beat.at(3);
            for p in first..first + n {
                // SAFETY: mapped read/write, locked by this mutator.
                if unsafe { arena.word(p).read_volatile() } == 0 {
                    arena.renew(rec, p);
                }
            }
        }
        Pattern::ForkWrite => {
            // SAFETY: the child calls only async-signal-safe functions (nanosleep, _exit).
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                bail!("fork failed");
            }
            if pid == 0 {
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 1_000_000,
                };
                // SAFETY: plain system calls in the child.
                unsafe {
                    libc::nanosleep(&ts, std::ptr::null_mut());
                    libc::_exit(0);
                }
            }
            beat.at(3);
            for p in first..first + n {
                arena.renew(rec, p);
            }
            renew_all = false;
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
        Pattern::Mprotect => {
            for prot in [
                MprotectFlags::empty(),
                MprotectFlags::READ | MprotectFlags::WRITE,
            ] {
                if plain {
                    sys(
                        unsafe { rustix::mm::mprotect(ptr, len as usize, prot) },
                        "mprotect",
                    )?;
                } else {
                    unsafe { host.mprotect(addr, len, prot) }?;
                }
            }
            renew_all = false;
        }
        Pattern::Brk => {
            let Backing::Brk(b) = &arena.backing else {
                bail!("the brk pattern runs on the heap arena");
            };
            b.shrink_and_regrow(addr)?;
        }
        Pattern::PunchHole | Pattern::Truncate | Pattern::Remove => {
            let Backing::File(f) = &arena.backing else {
                bail!("the file patterns run on the memfd arena");
            };
            let change = match cfg.pattern {
                Pattern::PunchHole => FileChange::PunchHole,
                Pattern::Truncate => FileChange::Truncate,
                _ => FileChange::Remove,
            };
            f.change(host, change, r, plain)?;
        }
    }
    if renew_all {
        beat.at(3);
        for p in first..first + n {
            arena.renew(rec, p);
        }
    }
    beat.at(0);
    Ok(refused)
}

/// Runs one pattern (`brk` in a child process: `adversary_brk.rs`). `tick` is called from the
/// calling thread about every 100 ms with the ops done so far; a hang (no thread progresses for
/// `cfg.hang`) prints where every thread is and exits the process with status 3.
pub(crate) fn run(cfg: &Config, tick: impl FnMut(u64)) -> Result<Report> {
    if cfg.mutators == 0 || cfg.lookers == 0 || cfg.pages == 0 || cfg.ops == 0 {
        bail!("the adversary needs at least one mutator, one looker, one page and one op");
    }
    if cfg.bypass && cfg.uffd {
        bail!("--bypass makes changes the bracketed source cannot see; uffd sees plain calls");
    }
    if cfg.pattern == Pattern::Brk && !cfg.uffd && !cfg.bypass {
        bail!(
            "brk is not covered by the bracketed source: nothing brackets the program break \
             (there is no HostMm wrapper for brk/sbrk), so a shrink is never invalidated; use the \
             uffd source (--bypass runs it anyway and must report stale lookups)"
        );
    }
    if cfg.pattern == Pattern::Brk {
        return adversary_brk::run_in_child(cfg);
    }
    run_here(cfg, tick)
}

/// Runs one pattern in this process (`run` has checked the configuration).
pub(crate) fn run_here(cfg: &Config, mut tick: impl FnMut(u64)) -> Result<Report> {
    let host = HostMm::new();
    let monitor = if cfg.uffd {
        Some(UffdMonitor::start(&host, MonitorConfig::default())?)
    } else {
        None
    };
    let frames = PagemapRegistrar::new().ok();
    if frames.is_none() && cfg.pattern == Pattern::ForkWrite {
        bail!("fork-write can only be judged by physical frame (run as root)");
    }
    let rec = Recorder {
        frames,
        pins: MlockRegistrar::new(),
        mem: File::open("/proc/self/mem").context("opening /proc/self/mem")?,
        counts: Arc::new((AtomicU64::new(0), AtomicU64::new(0))),
    };
    let cache = RegCache::new(
        &host,
        rec,
        CacheConfig {
            monitor,
            // Few entries: evictions release pins, so DONTNEED and fork meet unpinned pages
            // too, and the flush path runs under the race.
            max_entries: 8,
            // dontneed: a byte limit of half the arena, so pins keep being released and
            // DONTNEED keeps meeting unpinned pages (and the REMOVE window) under the race.
            max_bytes: if cfg.pattern == Pattern::Dontneed {
                (cfg.pages / 2).max(1) * hostmm::page_size()
            } else {
                CacheConfig::default().max_bytes
            },
            ..Default::default()
        },
    )?;
    let page = hostmm::page_size();
    let len = cfg.pages * page;
    let (base, backing) = match cfg.pattern {
        Pattern::Brk => {
            let b = adversary_brk::Break::new(len)?;
            (b.base(), Backing::Brk(b))
        }
        p if p.is_file() => {
            let f = adversary_file::TwoMappings::new(len)?;
            (f.cached(), Backing::File(f))
        }
        _ => (Mapping::anonymous(len)?.into_raw().start(), Backing::Anon),
    };
    let arena = Arena {
        base,
        pages: cfg.pages,
        page,
        recs: (0..cfg.pages).map(|_| PageRec::default()).collect(),
        next_gen: AtomicU64::new(1),
        backing,
    };
    if cfg.uffd && cfg.pattern.is_file() {
        // Not covered: the cache itself must refuse the shared mapping.
        return match cache.get(base, len) {
            Err(e @ hostmm::Error::UncoveredMapping { .. }) => {
                Err(anyhow::Error::new(e).context(format!(
                "pattern {} is not covered by the uffd source: the cache refuses the memfd mapping",
                cfg.pattern.name()
            )))
            }
            Err(e) => Err(anyhow::Error::new(e).context("probing the memfd mapping under uffd")),
            Ok(_) => {
                bail!("the uffd source cached a shared mapping whose pages it cannot see change")
            }
        };
    }
    for p in 0..arena.pages {
        arena.renew(cache.registrar(), p);
    }
    let beats: Vec<Beat> = (0..cfg.mutators + cfg.lookers)
        .map(|_| Beat::default())
        .collect();
    let (ops, refused, stop) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let totals = Mutex::new([0u64; 4]); // lookups, checked, frame_checked, stale
    let failed = AtomicU64::new(0);
    // Every thread maps its signal stack when it starts (Rust's stack-overflow handler): they
    // all start before the first change, so none lands in a hole a mutator made in the arena.
    let ready = std::sync::Barrier::new(cfg.mutators + cfg.lookers + 1);
    let start = Instant::now();

    std::thread::scope(|s| {
        for (m, beat) in beats[..cfg.mutators].iter().enumerate() {
            let (arena, cache) = (&arena, &cache);
            let (ops, refused, stop, failure, host) = (&ops, &refused, &stop, &failure, &host);
            let ready = &ready;
            s.spawn(move || {
                ready.wait();
                let mut rng = Rng::new(cfg.seed ^ ((m as u64 + 1) * 0x51));
                while !stop.load(Ordering::Relaxed) {
                    if ops.fetch_add(1, Ordering::Relaxed) >= cfg.ops {
                        break;
                    }
                    let (first, mut n) = rng.run(arena.pages);
                    if cfg.pattern.to_the_end() {
                        n = arena.pages - first;
                    }
                    // A few microseconds between changes, so lookers register in between.
                    let spin = Instant::now();
                    let wait = Duration::from_nanos(rng.below(20_000));
                    while spin.elapsed() < wait {
                        std::hint::spin_loop();
                    }
                    match mutate(cfg, host, arena, cache.registrar(), beat, first, n) {
                        Ok(true) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
        for l in 0..cfg.lookers {
            let (arena, cache, beat) = (&arena, &cache, &beats[cfg.mutators + l]);
            let (stop, totals, failed, ready) = (&stop, &totals, &failed, &ready);
            s.spawn(move || {
                ready.wait();
                let mut rng = Rng::new(cfg.seed.wrapping_add(0x1000 + l as u64));
                let mut t = [0u64; 4];
                let debug = std::env::var_os("MMNOTIFY_RACE_DEBUG").is_some();
                while !stop.load(Ordering::Relaxed) {
                    let (first, mut n) = rng.run(arena.pages);
                    if cfg.pattern == Pattern::Dontneed {
                        n = n.min((arena.pages / 4).max(1));
                    }
                    beat.at(4);
                    let snap: Vec<(u64, u64)> = (first..first + n)
                        .map(|p| arena.recs[p as usize].snapshot())
                        .collect();
                    beat.at(5);
                    t[0] += 1;
                    let r = arena.range(first, n);
                    let h = match cache.get(r.start(), r.len()) {
                        Ok(h) => h,
                        Err(e) => {
                            if debug && failed.load(Ordering::Relaxed) % 5000 == 0 {
                                eprintln!("failed lookup: {e}");
                            }
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    beat.at(6);
                    t[1] += 1;
                    let reg = h.registration();
                    let off = ((r.start() - h.range().start()) / arena.page) as usize;
                    let mut stale = false;
                    for (i, &(g, f)) in snap.iter().enumerate() {
                        let rg = reg.gens.get(off + i).copied().unwrap_or(0);
                        // Older than the snapshot: for a pattern that replaces memory that
                        // is stale whatever the frames say (a freed frame is often reused by
                        // the next mapping). fork-write rewrites pages in place, so there it
                        // is stale only if the page also moved to another frame. (The same
                        // generation in another frame is the pin's own copy-on-write break:
                        // the registration has the page the process has now.)
                        let moved = reg
                            .frames
                            .as_ref()
                            .is_some_and(|fr| fr.get(off + i).is_some_and(|&rf| rf != f));
                        let bad = rg < g && (cfg.pattern != Pattern::ForkWrite || moved);
                        if bad && debug {
                            eprintln!(
                                "stale: page {} registered (gen {rg}, frame {:?}) snapshot (gen {g}, frame {f:#x}) entry {:?}",
                                first + i as u64,
                                reg.frames.as_ref().and_then(|fr| fr.get(off + i)),
                                h.range()
                            );
                        }
                        stale |= bad;
                    }
                    t[2] += u64::from(reg.frames.is_some());
                    t[3] += u64::from(stale);
                    beat.at(0);
                }
                let mut all = totals.lock().unwrap_or_else(|e| e.into_inner());
                for (a, b) in all.iter_mut().zip(t) {
                    *a += b;
                }
            });
        }
        ready.wait();
        // The calling thread: progress, the time limit, the end, and the watchdog.
        let mut last = (Instant::now(), 0u64);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let done = ops.load(Ordering::Relaxed).min(cfg.ops);
            tick(done);
            let timed_out = cfg
                .seconds
                .is_some_and(|s| start.elapsed().as_secs_f64() >= s);
            if done >= cfg.ops || timed_out {
                stop.store(true, Ordering::SeqCst);
                break;
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let progress: u64 = beats.iter().map(|b| b.count.load(Ordering::Relaxed)).sum();
            if progress != last.1 {
                last = (Instant::now(), progress);
            } else if last.0.elapsed() >= cfg.hang {
                eprintln!(
                    "HANG: no thread progressed for {:?} ({} {}):",
                    cfg.hang,
                    cfg.pattern.name(),
                    if cfg.uffd { "uffd" } else { "bracketed" }
                );
                for (i, b) in beats.iter().enumerate() {
                    let who = if i < cfg.mutators {
                        format!("mutator {i}")
                    } else {
                        format!("looker {}", i - cfg.mutators)
                    };
                    let at = PLACES
                        .get(b.at.load(Ordering::Relaxed) as usize)
                        .unwrap_or(&"?");
                    eprintln!("  {who}: {at} (step {})", b.count.load(Ordering::Relaxed));
                }
                std::process::exit(3);
            }
        }
    });
    if let Some(e) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    let elapsed = start.elapsed();
    let s = cache.stats();
    let t = *totals.lock().unwrap_or_else(|e| e.into_inner());
    let counts = cache.registrar().counts.clone();
    // Dropping the cache deregisters every registration it still holds.
    drop(cache);
    let (registrations, deregistrations) = (
        counts.0.load(Ordering::Relaxed),
        counts.1.load(Ordering::Relaxed),
    );
    if let Backing::Anon = arena.backing {
        // SAFETY: the arena is ours and every thread is done with it.
        let _ = unsafe { rustix::mm::munmap(base as usize as *mut _, len as usize) };
    }
    // The other backings give their memory back when they drop.
    drop(arena);
    Ok(Report {
        pattern: cfg.pattern,
        source: if cfg.uffd { "uffd" } else { "bracketed" }.into(),
        bypass: cfg.bypass,
        mutators: cfg.mutators,
        lookers: cfg.lookers,
        ops: ops.load(Ordering::Relaxed).min(cfg.ops),
        refused_ops: refused.load(Ordering::Relaxed),
        lookups: t[0],
        checked: t[1],
        frame_checked: t[2],
        stale: t[3],
        failed_lookups: failed.load(Ordering::Relaxed),
        hits: s.hits,
        misses: s.misses,
        invalidations: s.invalidations,
        retries: s.retries,
        registrations,
        deregistrations,
        elapsed_s: elapsed.as_secs_f64(),
        seed: cfg.seed,
    })
}
