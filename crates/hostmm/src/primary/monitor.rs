//! The userfaultfd monitor: one thread that turns `UNMAP`, `REMOVE` and `REMAP` events into
//! invalidations of a [`HostMm`].
//!
//! # Rules the thread keeps
//!
//! * **It never blocks holding a lock.** It waits in `poll(2)` holding nothing; `read(2)` is
//!   non-blocking and only called after `poll` reported data. The locks it takes while
//!   processing (the watch set, each cache's lock inside the notifier callbacks) are only ever
//!   held briefly by other threads, never across a system call that can wait for this thread.
//! * **It opens the pending window before `read()`.** Linux lets the unmapping thread return as
//!   soon as the event is read, before it is processed; the [window](crate::primary::gate) makes every
//!   lookup that starts after that return wait for the invalidation.
//! * **It never unmaps monitored memory.** Its event buffer is on its stack, it does not
//!   deregister anything (caches defer deregistration to their callers' threads), and it frees
//!   nothing in its loop, so it cannot raise an event that only it could read.
//! * **It survives `EINTR`**, and stops on an eventfd when the last handle goes away.
//! * **It may spin, briefly, on the descriptor** ([`MonitorConfig::spin`]): after each batch of
//!   events it polls with a zero timeout for that long before sleeping in `poll` again, so the
//!   next event of a burst of unmaps is read without waking the monitor (the unmapping thread
//!   still sleeps until its event is read: that wake remains). Spinning holds no lock and opens
//!   no window (a window opens only once `poll` reports an event), so lookups are not slowed;
//!   it costs this thread's CPU for `spin` after every event, counted in
//!   [`MonitorStats::cpu_ns`]. It is turned off when the thread may run on one CPU only, where
//!   it would only delay the thread it waits for.
//! * **It fails safe.** On an unexpected error it invalidates the whole address space and
//!   makes further watches fail, instead of silently going deaf.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mmu_notifier::{Event, Mm, Range};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::primary::gate::Opener;
use crate::primary::host::HostMm;
use crate::primary::watch::{UnmapQueue, WatchSet};
use crate::primitive::lock;
use crate::sys::uffd::{CreateSeam, RegisterMode, UffdEvent, Userfaultfd};
use crate::sys::va::VaRange;

/// How a [`UffdMonitor`] is set up.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    /// Registration mode; [`RegisterMode::WriteProtect`] (no faults ever) unless the kernel
    /// lacks WP support.
    pub mode: RegisterMode,
    /// Cap on coarse regions (each may add VMAs); watches beyond it fail with
    /// [`Error::TooManyRegions`].
    pub max_regions: usize,
    /// Test seam for the creation of the descriptor.
    pub seam: CreateSeam,
    /// How long the thread keeps polling the descriptor without sleeping after each batch of
    /// events; `Duration::ZERO` turns spinning off. Ignored when the thread may run on one CPU
    /// only. Default [`DEFAULT_SPIN`].
    pub spin: Duration,
}

/// The default [`MonitorConfig::spin`]: off. Spinning halves the wake cost of a munmap only
/// inside a burst and costs the monitor's CPU for the whole spin after every event (see the
/// crate README's figures); turn it on where unmaps come in bursts and a core can be spared.
pub const DEFAULT_SPIN: Duration = Duration::ZERO;

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            mode: RegisterMode::WriteProtect,
            max_regions: 4096,
            seam: CreateSeam::Real,
            spin: DEFAULT_SPIN,
        }
    }
}

/// Counters of a monitor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorStats {
    /// `UNMAP` events.
    pub unmaps: u64,
    /// `REMOVE` events.
    pub removes: u64,
    /// `REMAP` events.
    pub remaps: u64,
    /// Page faults resolved (MISSING mode only).
    pub faults: u64,
    /// Other events (ignored).
    pub other: u64,
    /// Pending windows opened.
    pub windows: u64,
    /// Coarse regions currently watched.
    pub regions: usize,
    /// UFFDIO_REGISTER calls made.
    pub registers: u64,
    /// UFFDIO_UNREGISTER calls made.
    pub unregisters: u64,
    /// Zero-timeout polls made while spinning.
    pub spin_polls: u64,
    /// Windows opened for events found while spinning (each saved the monitor a wake-up).
    pub spin_catches: u64,
    /// CPU time of the monitor thread so far, in nanoseconds (updated before each sleep).
    pub cpu_ns: u64,
}

#[derive(Default)]
struct Counters {
    unmaps: AtomicU64,
    removes: AtomicU64,
    remaps: AtomicU64,
    faults: AtomicU64,
    other: AtomicU64,
    windows: AtomicU64,
    spin_polls: AtomicU64,
    spin_catches: AtomicU64,
    cpu_ns: AtomicU64,
}

struct Shared {
    uffd: Userfaultfd,
    watches: Mutex<WatchSet>,
    unmapped: UnmapQueue,
    failed: Mutex<Option<String>>,
    /// The mapping holding the monitor thread's own stack: never registered, because glibc
    /// `madvise`s a dying thread's stack and only this thread could read that event.
    own_stack: Mutex<Option<VaRange>>,
    counters: Counters,
    mode: RegisterMode,
}

struct Inner {
    shared: Arc<Shared>,
    wake: Arc<OwnedFd>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A running userfaultfd monitor feeding one [`HostMm`]. Cloning is cheap; the thread stops
/// when the last clone and the last [`Watch`] are gone.
#[derive(Clone)]
pub struct UffdMonitor {
    inner: Arc<Inner>,
}

/// A reference on a coarse registration; dropping it may unregister the mapping.
pub struct Watch {
    inner: Arc<Inner>,
    /// The registered runs this watch holds references on.
    held: Vec<VaRange>,
}

impl UffdMonitor {
    /// Creates the descriptor and starts the monitor thread.
    ///
    /// Errors: [`Error::UffdPermission`] (EPERM: sandbox, seccomp, LSM),
    /// [`Error::UffdUnavailable`] (ENOSYS), [`Error::UffdFeatures`]. In all of them the
    /// documented fallback is the [bracketed wrappers](HostMm::munmap) or an
    /// [`Importer`](crate::Importer): see [`crate::Source::auto`].
    pub fn start(host: &HostMm, config: MonitorConfig) -> Result<Self> {
        if config.max_regions == 0 {
            return Err(Error::Config(
                "MonitorConfig::max_regions must be at least 1",
            ));
        }
        let uffd = Userfaultfd::new_monitor(config.seam)?;
        let opener = host.gate().opener().ok_or(Error::Config(
            "too many pending-window sources on one HostMm",
        ))?;
        let wake = Arc::new(
            rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(
                |errno| Error::Sys {
                    call: "eventfd",
                    errno,
                },
            )?,
        );
        let shared = Arc::new(Shared {
            uffd,
            watches: Mutex::new(WatchSet::new(config.max_regions)),
            unmapped: UnmapQueue::new(),
            failed: Mutex::new(None),
            own_stack: Mutex::new(None),
            counters: Counters::default(),
            mode: config.mode,
        });
        let (s2, w2, mm) = (shared.clone(), wake.clone(), host.mm().clone());
        let spin = config.spin;
        let thread = std::thread::Builder::new()
            .name("hostmm-uffd".into())
            .spawn(move || run(&s2, &w2, &mm, opener, spin))
            .map_err(|source| Error::Io {
                what: "spawning the uffd monitor thread",
                source,
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                wake,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Makes sure every mapping covering `[start, start + len)` is registered (whole mappings,
    /// once) — verified in `/proc/self/smaps` after registering — and takes a reference on the
    /// registration. Unaligned ranges are widened to pages.
    ///
    /// Errors: [`Error::NotMapped`] (a byte of the range is unmapped),
    /// [`Error::UncoveredMapping`] (shared or file-backed memory, whose pages change with no
    /// event), [`Error::WatchUnverified`] (the range kept changing while it was registered),
    /// [`Error::UffdBusy`] (another uffd owns the mapping), [`Error::UffdUnsupportedMapping`],
    /// [`Error::TooManyRegions`], [`Error::MonitorFailed`].
    pub fn watch(&self, start: u64, len: u64) -> Result<Watch> {
        self.watch_range(VaRange::covering(start, len)?)
    }

    pub(crate) fn watch_range(&self, want: VaRange) -> Result<Watch> {
        let sh = &self.inner.shared;
        if let Some(why) = lock(&sh.failed).clone() {
            return Err(Error::MonitorFailed(why));
        }
        let mut ws = lock(&sh.watches);
        sh.unmapped.drain_into(&mut ws);
        let probe = ProcProbe {
            own_stack: *lock(&sh.own_stack),
            mode: sh.mode,
        };
        let held = ws.watch(&sh.uffd, sh.mode, want, &probe)?;
        Ok(Watch {
            inner: self.inner.clone(),
            held,
        })
    }

    /// The features the kernel granted (`UFFD_FEATURE_*`).
    pub fn features(&self) -> u64 {
        self.inner.shared.uffd.features()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MonitorStats {
        let sh = &self.inner.shared;
        let c = &sh.counters;
        let mut ws = lock(&sh.watches);
        sh.unmapped.drain_into(&mut ws);
        MonitorStats {
            unmaps: c.unmaps.load(Ordering::Relaxed),
            removes: c.removes.load(Ordering::Relaxed),
            remaps: c.remaps.load(Ordering::Relaxed),
            faults: c.faults.load(Ordering::Relaxed),
            other: c.other.load(Ordering::Relaxed),
            windows: c.windows.load(Ordering::Relaxed),
            spin_polls: c.spin_polls.load(Ordering::Relaxed),
            spin_catches: c.spin_catches.load(Ordering::Relaxed),
            cpu_ns: c.cpu_ns.load(Ordering::Relaxed),
            regions: ws.region_count(),
            registers: ws.registers,
            unregisters: ws.unregisters,
        }
    }

    /// The live registered pieces (whole mappings), for diagnostics.
    pub fn registered(&self) -> Vec<VaRange> {
        let sh = &self.inner.shared;
        let mut ws = lock(&sh.watches);
        sh.unmapped.drain_into(&mut ws);
        ws.pieces()
    }

    /// The monitor thread's pthread handle (tests interrupt it with signals to check `EINTR`
    /// handling). Only with the `test-seams` feature.
    #[doc(hidden)]
    #[cfg(feature = "test-seams")]
    pub fn pthread_for_tests(&self) -> Option<std::os::unix::thread::RawPthread> {
        use std::os::unix::thread::JoinHandleExt;
        lock(&self.inner.thread).as_ref().map(|t| t.as_pthread_t())
    }

    /// Why the monitor thread stopped, if it failed.
    pub fn failure(&self) -> Option<String> {
        lock(&self.inner.shared.failed).clone()
    }
}

impl std::fmt::Debug for UffdMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UffdMonitor")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let sh = &self.inner.shared;
        let mut ws = lock(&sh.watches);
        sh.unmapped.drain_into(&mut ws);
        ws.unwatch(&sh.uffd, &self.held);
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("held", &self.held).finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        if let Some(t) = lock(&self.thread).take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// `/proc/self/maps` and `/proc/self/smaps`, keeping the monitor thread's own stack out of every
/// extent.
struct ProcProbe {
    own_stack: Option<VaRange>,
    mode: RegisterMode,
}

impl crate::primary::watch::Probe for ProcProbe {
    fn extent(&self, want: VaRange) -> Result<VaRange> {
        let ext = crate::sys::maps::extent_of(want)?;
        Ok(match self.own_stack {
            Some(st) if st.overlaps(&ext) => clip_around(ext, st, want),
            _ => ext,
        })
    }
    fn registered(&self, within: VaRange) -> Result<Vec<VaRange>> {
        crate::sys::maps::registered_now(within, self.mode)
    }
}

/// The part of `ext` on `want`'s side of `hole` (`want` never overlaps the monitor's stack).
fn clip_around(ext: VaRange, hole: VaRange, want: VaRange) -> VaRange {
    if want.end() <= hole.start() {
        VaRange::from_bounds(ext.start(), hole.start().min(ext.end())).unwrap_or(want)
    } else if want.start() >= hole.end() {
        VaRange::from_bounds(hole.end().max(ext.start()), ext.end()).unwrap_or(want)
    } else {
        want
    }
}

fn invalidate(mm: &Mm, start: u64, end: u64, event: Event) {
    if let Ok(r) = Range::new(start, end, event) {
        drop(mm.invalidate_range_start(r));
    }
}

/// Turns one event into an invalidation. For unmaps, the vanished registration is queued for
/// the watch set *before* the invalidation runs (see `watch.rs` for why the order matters);
/// the queue, not the set, because this thread must not allocate.
fn process(sh: &Shared, mm: &Mm, ev: UffdEvent) -> Result<()> {
    let c = &sh.counters;
    match ev {
        UffdEvent::Unmap { start, end } => {
            c.unmaps.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = VaRange::from_bounds(start, end) {
                sh.unmapped.push(r);
            }
            invalidate(mm, start, end, Event::Unmap);
        }
        UffdEvent::Remove { start, end } => {
            c.removes.fetch_add(1, Ordering::Relaxed);
            invalidate(mm, start, end, Event::Clear);
        }
        UffdEvent::Remap { from, len, .. } => {
            c.remaps.fetch_add(1, Ordering::Relaxed);
            let end = from.saturating_add(len);
            if let Some(r) = VaRange::from_bounds(from, end) {
                sh.unmapped.push(r);
            }
            invalidate(mm, from, end, Event::Unmap);
        }
        UffdEvent::Pagefault { address, .. } => {
            c.faults.fetch_add(1, Ordering::Relaxed);
            let page = crate::sys::va::page_size();
            sh.uffd.zeropage(address & !(page - 1), page)?;
        }
        UffdEvent::Fork | UffdEvent::Unknown(_) => {
            c.other.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn run(sh: &Shared, wake: &OwnedFd, mm: &Mm, opener: Opener, spin: Duration) {
    // Spinning on the only CPU this thread may use would only delay the thread it waits for.
    let cpus = rustix::thread::sched_getaffinity(None).map_or(1, |set| set.count());
    let spin = if cpus > 1 { spin } else { Duration::ZERO };
    if let Err(e) = event_loop(sh, wake, mm, &opener, spin) {
        *lock(&sh.failed) = Some(e.to_string());
        // Fail safe: nothing cached against this address space can be trusted any more.
        invalidate(mm, 0, u64::MAX, Event::Release);
    }
}

/// Publishes this thread's CPU time (before it sleeps, so the figure is current when idle).
fn record_cpu(c: &Counters) {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let ns = (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64);
    c.cpu_ns.store(ns, Ordering::Relaxed);
}

fn event_loop(sh: &Shared, wake: &OwnedFd, mm: &Mm, opener: &Opener, spin: Duration) -> Result<()> {
    let mut buf = [UffdEvent::Fork; 16];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // While `Some`, poll without sleeping until that instant.
    let mut spin_until: Option<Instant> = None;
    record_cpu(&sh.counters);
    loop {
        let (uffd_ready, stop, bad) = {
            let mut fds = [
                PollFd::new(&sh.uffd, PollFlags::IN),
                PollFd::new(wake, PollFlags::IN),
            ];
            let timeout = spin_until.map(|_| &zero);
            match rustix::event::poll(&mut fds, timeout) {
                Ok(0) if spin_until.is_some() => {
                    sh.counters.spin_polls.fetch_add(1, Ordering::Relaxed);
                    if spin_until.is_some_and(|t| Instant::now() >= t) {
                        spin_until = None;
                        record_cpu(&sh.counters);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    return Err(Error::Sys {
                        call: "poll",
                        errno,
                    })
                }
            }
            let u = fds[0].revents();
            (
                u.contains(PollFlags::IN),
                fds[1].revents().contains(PollFlags::IN),
                u.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL),
            )
        };
        if stop {
            return Ok(());
        }
        if bad && !uffd_ready {
            return Err(Error::MonitorFailed(
                "userfaultfd reported POLLERR/POLLHUP".into(),
            ));
        }
        if !uffd_ready {
            continue;
        }
        if spin_until.is_some() {
            sh.counters.spin_catches.fetch_add(1, Ordering::Relaxed);
        }
        // The window opens before read(): read() is what lets the unmapping thread return.
        let window = opener.open();
        sh.counters.windows.fetch_add(1, Ordering::Relaxed);
        loop {
            let n = sh.uffd.read_events(&mut buf)?;
            if n == 0 {
                break;
            }
            for ev in &buf[..n] {
                process(sh, mm, *ev)?;
            }
        }
        drop(window);
        if spin.is_zero() {
            record_cpu(&sh.counters);
        } else {
            spin_until = Some(Instant::now() + spin);
        }
    }
}
