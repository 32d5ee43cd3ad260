//! The torture: a randomized concurrent workload over the simulated system — many processes,
//! every reference driver attached to each, memory pressure (kswapd, direct reclaim, a memory
//! hog), OOM kills (injected, and the allocator's own), subscribers joining and leaving, forks,
//! migrations (NUMA and to device memory), every device access through the coherence checker,
//! and fault injection: refused non-blockable starts and slow callbacks (a subscriber on every
//! process), and failing allocations (the hog takes frames with `GFP_NOWAIT` until they fail, and
//! one page allocation in `fail_alloc_one_in` fails on purpose, as `fail_page_alloc` does).
//!
//! Pass: no coherence violation, no validator report, no invariant violated, starts and ends
//! paired at the end. Real threads: the seed fixes each worker's sequence of choices (and the
//! injector's), not the OS scheduler's interleaving, so a failure replays its workload, not
//! necessarily its exact interleaving.

mod inject;
mod ops;
mod slot;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drivers::buggy::IntervalBug;
use drivers::Checker;
use lockdep::scope::Scope;
use lockdep::Context;
use serde::Serialize;
use vmsim::{Config, Machine};

pub use inject::InjectStats;

/// What to run.
#[derive(Clone, Debug)]
pub struct TortureConfig {
    /// How long.
    pub duration: Duration,
    /// Worker threads.
    pub threads: usize,
    /// Seed of every choice.
    pub seed: u64,
    /// Processes (slots), each with every reference driver.
    pub processes: usize,
    /// Physical frames of the machine (swap: twice as many slots).
    pub frames: usize,
    /// Attach a deliberately buggy mirror to every process (the soak must catch it).
    pub buggy: Option<IntervalBug>,
    /// Stop at the first violation, report or invariant failure.
    pub fail_fast: bool,
    /// Let the SVA IOMMU and dmirror's device memory meet on the same process (the default).
    /// The combination found `drivers::sva` caching the frame of a device-private entry, which
    /// `migrate_to_ram` frees (`scenarios/sva-device-private.toml`, now a regression test).
    pub sva_over_device_memory: bool,
    /// Fail one page allocation in this many on purpose (`vmsim::Machine::inject_alloc_failures`,
    /// Linux's `fail_page_alloc`); 0: only the real failures of the memory hog.
    pub fail_alloc_one_in: u64,
}

impl Default for TortureConfig {
    fn default() -> TortureConfig {
        TortureConfig {
            duration: Duration::from_secs(10),
            threads: 4,
            seed: 1,
            processes: 8,
            frames: 1024,
            buggy: None,
            fail_fast: true,
            sva_over_device_memory: true,
            fail_alloc_one_in: 1000,
        }
    }
}

/// The torture's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Counter {
    Ops,
    OpErrors,
    CpuAccesses,
    DeviceOps,
    Madvises,
    Mprotects,
    Munmaps,
    Migrations,
    DeviceMigrations,
    Forks,
    Reclaims,
    SubscribersJoined,
    SubscribersLeft,
    Hogs,
    HogFailures,
    Holds,
    OomKillsInjected,
    SlotsRebuilt,
}

const COUNTERS: [(Counter, &str); 18] = [
    (Counter::Ops, "ops"),
    (Counter::OpErrors, "op_errors"),
    (Counter::CpuAccesses, "cpu_accesses"),
    (Counter::DeviceOps, "device_ops"),
    (Counter::Madvises, "madvises"),
    (Counter::Mprotects, "mprotects"),
    (Counter::Munmaps, "munmap_remaps"),
    (Counter::Migrations, "numa_migrations"),
    (Counter::DeviceMigrations, "device_migrations"),
    (Counter::Forks, "forks"),
    (Counter::Reclaims, "reclaim_calls"),
    (Counter::SubscribersJoined, "subscribers_joined"),
    (Counter::SubscribersLeft, "subscribers_left"),
    (Counter::Hogs, "hogs"),
    (Counter::HogFailures, "hog_alloc_failures"),
    (Counter::Holds, "odp_mutex_holds"),
    (Counter::OomKillsInjected, "oom_kills_injected"),
    (Counter::SlotsRebuilt, "processes_rebuilt"),
];

/// State every worker shares.
pub(crate) struct Shared {
    pub(crate) m: Machine,
    /// What the checkers of retired processes found (each process has its own checker, dropped
    /// with it, so the checker's per-driver records stay bounded over a long run).
    pub(crate) retired: Mutex<Retired>,
    pub(crate) inject: Arc<InjectStats>,
    pub(crate) seed: u64,
    pub(crate) buggy: Option<IntervalBug>,
    pub(crate) sva_over_device_memory: bool,
    counters: Vec<AtomicU64>,
    failures: Mutex<Vec<String>>,
    failed: AtomicBool,
}

impl Shared {
    pub(crate) fn count(&self, c: Counter) {
        self.add(c, 1);
    }
    pub(crate) fn add(&self, c: Counter, n: u64) {
        self.counters[c as usize].fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn counter(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }
    pub(crate) fn failure(&self, what: String) {
        eprintln!("torture: {what}");
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// The findings of retired processes' checkers.
#[derive(Default)]
pub(crate) struct Retired {
    pub(crate) violations: Vec<drivers::Violation>,
    pub(crate) unbalanced: Vec<String>,
    pub(crate) accesses: u64,
}

impl Shared {
    /// Folds a retired process's checker (its drivers all closed) into the totals.
    pub(crate) fn retire_checker(&self, c: &Checker) {
        let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        r.violations.extend(c.take_violations());
        r.unbalanced
            .extend(c.unbalanced().iter().map(|u| u.to_string()));
        r.accesses += c.accesses();
    }
}

/// Live figures, handed to the progress callback a few times a second.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Time since the start.
    pub elapsed_s: f64,
    /// Operations done.
    pub ops: u64,
    /// Invalidations (starts seen by the injecting subscriber, every process).
    pub invalidations: u64,
    /// Validator reports so far.
    pub reports: u64,
    /// Coherence violations (and invariant failures) so far.
    pub violations: u64,
    /// OOM kills (injected and the allocator's).
    pub oom_kills: u64,
    /// Device accesses the checker saw.
    pub device_accesses: u64,
}

/// The result of a torture run.
#[derive(Clone, Debug, Serialize)]
pub struct TortureReport {
    /// Zero violations, zero reports, invariants held, starts and ends paired.
    pub passed: bool,
    /// The seed.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
    /// Processes.
    pub processes: usize,
    /// The buggy driver attached, if any.
    pub buggy: Option<String>,
    /// Seconds asked for.
    pub seconds: f64,
    /// Seconds run (less when it stopped at the first failure).
    pub elapsed_s: f64,
    /// Seconds until the first failure, if any.
    pub first_failure_s: Option<f64>,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Every counter: the torture's, the machine's, the injector's, the checker's.
    pub counters: BTreeMap<String, u64>,
    /// Coherence violations (first line of each, at most 20).
    pub violations: Vec<String>,
    /// Validator reports (headline and classes, at most 20).
    pub reports: Vec<String>,
    /// Invariant failures and other errors that must not happen.
    pub failures: Vec<String>,
    /// Drivers whose starts and ends do not pair at the end.
    pub unbalanced: Vec<String>,
    /// Peak resident set of this process (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Resident set after a quarter of the run and at the end (KiB): bounded memory shows as
    /// the second not growing with the run's length.
    pub rss_quarter_kib: u64,
    /// See `rss_quarter_kib`.
    pub rss_end_kib: u64,
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Runs the torture; `progress` is called a few times a second from the calling thread.
pub fn run(cfg: &TortureConfig, mut progress: impl FnMut(&Snapshot)) -> TortureReport {
    let _ctx = Context::new().enter();
    let scope = Scope::new();
    let started = Instant::now();
    let frames = cfg.frames.max(256);
    let machine = Machine::new(Config::new(frames).swap(2 * frames as u32).kswapd(true));
    let m = match machine {
        Ok(m) => m,
        Err(e) => {
            return TortureReport {
                passed: false,
                failures: vec![format!("machine: {e}")],
                ..empty(cfg)
            }
        }
    };
    m.inject_alloc_failures(cfg.fail_alloc_one_in);
    let sh = Arc::new(Shared {
        m,
        retired: Mutex::new(Retired::default()),
        inject: Arc::new(InjectStats::default()),
        seed: cfg.seed,
        buggy: cfg.buggy,
        sva_over_device_memory: cfg.sva_over_device_memory,
        counters: COUNTERS.iter().map(|_| AtomicU64::new(0)).collect(),
        failures: Mutex::new(Vec::new()),
        failed: AtomicBool::new(false),
    });
    let slots: Arc<Vec<Arc<slot::Slot>>> =
        Arc::new((0..cfg.processes.max(1)).map(slot::Slot::new).collect());
    for s in slots.iter() {
        *s.live.write().unwrap_or_else(|e| e.into_inner()) = slot::build(&sh.m, &sh, s.index);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..cfg.threads.max(1))
        .map(|i| {
            let (sh, slots, stop) = (sh.clone(), slots.clone(), stop.clone());
            let mut rng = crate::rng::Rng::new(cfg.seed ^ crate::rng::hash(&format!("w{i}")));
            let inherit = lockdep::scope::inherited();
            std::thread::Builder::new()
                .name(format!("torture-{i}"))
                .spawn(move || {
                    inherit.apply();
                    while !stop.load(Ordering::Relaxed) {
                        ops::one(&sh, &slots, &mut rng);
                    }
                })
        })
        .collect();
    let mut first_failure = None;
    let mut rss_quarter = 0;
    let snapshot = |scope: &Scope| {
        let (mut violations, mut accesses) = {
            let r = sh.retired.lock().unwrap_or_else(|e| e.into_inner());
            (r.violations.len() as u64, r.accesses)
        };
        for s in slots.iter() {
            // A slot being rebuilt is counted in the next snapshot.
            if let Ok(live) = s.live.try_read() {
                if let Some(l) = &*live {
                    violations += l.checker.violations().len() as u64;
                    accesses += l.checker.accesses();
                }
            }
        }
        Snapshot {
            elapsed_s: started.elapsed().as_secs_f64(),
            ops: sh.counter(Counter::Ops),
            invalidations: sh.inject.invalidations.load(Ordering::Relaxed),
            reports: scope.reports().len() as u64,
            violations: violations + sh.failures.lock().map(|f| f.len()).unwrap_or(0) as u64,
            oom_kills: sh.m.stats().oom_kills,
            device_accesses: accesses,
        }
    };
    while started.elapsed() < cfg.duration {
        std::thread::sleep(Duration::from_millis(100));
        let snap = snapshot(&scope);
        if rss_quarter == 0 && started.elapsed() >= cfg.duration / 4 {
            rss_quarter = status_kib("VmRSS:");
        }
        progress(&snap);
        if first_failure.is_none() && (snap.reports > 0 || snap.violations > 0) {
            first_failure = Some(snap.elapsed_s);
            if cfg.fail_fast {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut hung = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        match w {
            Ok(h) => {
                let end = Instant::now() + Duration::from_secs(30);
                while !h.is_finished() && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if h.is_finished() {
                    if h.join().is_err() {
                        sh.failure(format!("worker {i} panicked"));
                    }
                } else {
                    hung.push(i);
                    std::mem::forget(h);
                }
            }
            Err(e) => sh.failure(format!("worker {i} did not start: {e}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress(&snapshot(&scope));
    if !hung.is_empty() {
        sh.failure(format!("workers {hung:?} did not stop within 30 s (hung)"));
        std::mem::forget(slots);
        std::mem::forget(sh.clone());
    } else {
        for s in slots.iter() {
            if let Some(l) = s.live.write().unwrap_or_else(|e| e.into_inner()).take() {
                let errors = slot::retire(&sh, l);
                if errors > 0 {
                    sh.failure(format!(
                        "process {}: {errors} driver(s) failed to close",
                        s.index
                    ));
                }
            }
        }
        if let Err(e) = sh.m.check() {
            sh.failure(format!("the machine's invariants at the end: {e}"));
        }
    }
    let (violations, unbalanced, accesses) = {
        let mut r = sh.retired.lock().unwrap_or_else(|e| e.into_inner());
        (
            std::mem::take(&mut r.violations),
            std::mem::take(&mut r.unbalanced),
            r.accesses,
        )
    };
    let mut reports = scope.reports();
    reports.extend(scope.orphans());
    let stats = sh.m.stats();
    let mut counters: BTreeMap<String, u64> = COUNTERS
        .iter()
        .map(|(c, n)| ((*n).to_owned(), sh.counter(*c)))
        .collect();
    for (k, v) in [
        (
            "invalidations",
            sh.inject.invalidations.load(Ordering::Relaxed),
        ),
        (
            "injected_refusals",
            sh.inject.refused.load(Ordering::Relaxed),
        ),
        (
            "injected_slow_callbacks",
            sh.inject.slowed.load(Ordering::Relaxed),
        ),
        ("device_accesses_checked", accesses),
        ("faults", stats.faults),
        ("cow", stats.cow),
        ("swap_out", stats.swap_out),
        ("swap_in", stats.swap_in),
        ("reclaimed", stats.reclaimed),
        ("direct_reclaim", stats.direct_reclaim),
        ("kswapd_runs", stats.kswapd_runs),
        ("oom_kills", stats.oom_kills),
        ("alloc_failures", stats.alloc_failures),
        ("injected_alloc_failures", stats.injected_alloc_failures),
        (
            "oom_reaper_gave_up",
            sh.m.oom_reports().iter().filter(|r| r.gave_up).count() as u64,
        ),
        (
            "oom_reap_attempts",
            sh.m.oom_reports()
                .iter()
                .map(|r| u64::from(r.attempts))
                .sum(),
        ),
    ] {
        counters.insert(k.to_owned(), v);
    }
    let failures = sh.failures.lock().map(|f| f.clone()).unwrap_or_default();
    let passed =
        violations.is_empty() && reports.is_empty() && failures.is_empty() && unbalanced.is_empty();
    if first_failure.is_none() && !passed {
        first_failure = Some(elapsed);
    }
    sh.m.shutdown();
    TortureReport {
        passed,
        elapsed_s: elapsed,
        first_failure_s: first_failure,
        ops_per_s: counters["ops"] as f64 / elapsed.max(1e-9),
        counters,
        violations: violations
            .iter()
            .take(20)
            .map(|v| v.to_string().lines().next().unwrap_or("").to_owned())
            .collect(),
        reports: reports
            .iter()
            .take(20)
            .map(|r| format!("{}: {}", r.kind.title(), r.classes().join(" -> ")))
            .collect(),
        failures,
        unbalanced,
        peak_rss_kib: status_kib("VmHWM:"),
        rss_quarter_kib: rss_quarter,
        rss_end_kib: status_kib("VmRSS:"),
        ..empty(cfg)
    }
}

fn empty(cfg: &TortureConfig) -> TortureReport {
    TortureReport {
        passed: false,
        seed: cfg.seed,
        threads: cfg.threads,
        processes: cfg.processes,
        buggy: cfg.buggy.map(|b| format!("{b:?}")),
        seconds: cfg.duration.as_secs_f64(),
        elapsed_s: 0.0,
        first_failure_s: None,
        ops_per_s: 0.0,
        counters: BTreeMap::new(),
        violations: Vec::new(),
        reports: Vec::new(),
        failures: Vec::new(),
        unbalanced: Vec::new(),
        peak_rss_kib: 0,
        rss_quarter_kib: 0,
        rss_end_kib: 0,
    }
}
