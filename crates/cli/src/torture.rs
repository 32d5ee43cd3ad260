//! `mmnotify torture`: the randomized soak of the simulated system (crate `scenario`,
//! module `torture`), with a live progress line and a summary that says how to replay.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::ValueEnum;
use drivers::buggy::IntervalBug;
use scenario::torture::{Snapshot, TortureConfig, TortureReport};

/// A deliberately buggy mirror to attach to every process (the soak must catch it).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuggyArg {
    /// Never calls `mmu_interval_set_seq`.
    SetSeqForgotten,
    /// Publishes without `mmu_interval_read_retry`.
    NoRetry,
    /// Checks `read_retry` before taking its lock.
    RetryOutsideLock,
}

/// Arguments of `mmnotify torture`.
#[derive(clap::Args, Debug)]
pub struct TortureArgs {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Seed of every random choice (each worker's operations, the injected faults). Real
    /// threads: the same seed replays the same workload, not the same interleaving.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Processes, each with every reference driver attached.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    processes: u64,
    /// Physical frames of the simulated machine (swap: twice as many slots).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(256..=4_194_304))]
    frames: u64,
    /// Attach a deliberately buggy mirror to every process, to see the soak catch it.
    #[arg(long, value_enum)]
    buggy: Option<BuggyArg>,
    /// Keep the SVA IOMMU off the processes whose dmirror migrates to device memory (by
    /// default they meet: the combination found the bug of scenarios/sva-device-private.toml).
    #[arg(long)]
    sva_apart: bool,
    /// Fail one page allocation in N on purpose (0: never), as Linux's `fail_page_alloc`.
    #[arg(long, default_value_t = 1000)]
    fail_alloc_one_in: u64,
    /// Run the whole time even after a failure (default: stop at the first).
    #[arg(long)]
    keep_going: bool,
    /// Machine-readable output: one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn line(s: &Snapshot) -> String {
    format!(
        "{:>6.1}s ops {} ({:.0}/s) invalidations {} device accesses {} oom kills {} reports {} violations {}",
        s.elapsed_s,
        s.ops,
        s.ops as f64 / s.elapsed_s.max(1e-9),
        s.invalidations,
        s.device_accesses,
        s.oom_kills,
        s.reports,
        s.violations
    )
}

fn replay(a: &TortureArgs) -> String {
    let mut s = format!(
        "mmnotify torture --seconds {} --threads {} --seed {} --processes {} --frames {}",
        a.seconds, a.threads, a.seed, a.processes, a.frames
    );
    if a.sva_apart {
        s.push_str(" --sva-apart");
    }
    if a.fail_alloc_one_in != 1000 {
        s.push_str(&format!(" --fail-alloc-one-in {}", a.fail_alloc_one_in));
    }
    if let Some(b) = a.buggy {
        if let Some(v) = b.to_possible_value() {
            s.push_str(&format!(" --buggy {}", v.get_name()));
        }
    }
    s
}

fn summary(a: &TortureArgs, r: &TortureReport) {
    println!(
        "{}: {:.1} s, {} ops ({:.0} ops/s), {} threads, {} processes, seed {}",
        if r.passed { "PASS" } else { "FAIL" },
        r.elapsed_s,
        r.counters.get("ops").copied().unwrap_or(0),
        r.ops_per_s,
        r.threads,
        r.processes,
        r.seed
    );
    for (k, v) in &r.counters {
        println!("  {k:<26} {v}");
    }
    println!(
        "  peak RSS {} KiB (RSS after a quarter of the run {} KiB, at the end {} KiB)",
        r.peak_rss_kib, r.rss_quarter_kib, r.rss_end_kib
    );
    for v in &r.violations {
        println!("  violation: {v}");
    }
    for x in &r.reports {
        println!("  report: {x}");
    }
    for f in &r.failures {
        println!("  failure: {f}");
    }
    for u in &r.unbalanced {
        println!("  unbalanced: {u}");
    }
    if let Some(t) = r.first_failure_s {
        println!("  first failure after {t:.2} s");
    }
    println!("  replay: {}", replay(a));
}

/// Runs `mmnotify torture`: exit status 0 when nothing was violated or reported.
pub fn run(a: TortureArgs) -> Result<()> {
    let cfg = TortureConfig {
        duration: Duration::from_secs(a.seconds),
        threads: a.threads as usize,
        seed: a.seed,
        processes: a.processes as usize,
        frames: a.frames as usize,
        buggy: a.buggy.map(|b| match b {
            BuggyArg::SetSeqForgotten => IntervalBug::SetSeqForgotten,
            BuggyArg::NoRetry => IntervalBug::NoRetry,
            BuggyArg::RetryOutsideLock => IntervalBug::RetryOutsideLock,
        }),
        fail_fast: !a.keep_going,
        sva_over_device_memory: !a.sva_apart,
        fail_alloc_one_in: a.fail_alloc_one_in,
    };
    let tty = !a.json && std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let pb = indicatif::ProgressBar::new(a.seconds * 10);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
        {
            pb.set_style(style);
        }
        pb
    });
    let every = Duration::from_secs((a.seconds / 20).clamp(5, 60));
    let mut last = Instant::now();
    let report = scenario::torture::run(&cfg, |s| {
        if let Some(pb) = &bar {
            pb.set_position((s.elapsed_s * 10.0) as u64);
            pb.set_message(line(s));
        } else if !a.json && last.elapsed() >= every {
            last = Instant::now();
            eprintln!("{}", line(s));
        }
    });
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        summary(&a, &report);
    }
    if !report.passed {
        bail!("the torture failed (replay: {})", replay(&a));
    }
    Ok(())
}
