//! `mmnotify`: the mmnotify command line.
//!
//! `tour` reproduces every seed scenario through the real crates and checks it; `race` runs the
//! registration-cache race and the adversary (`adversary.rs`) against the real kernel; `bench` measures the host cache and
//! invalidation sources against their baselines, and `bench --all` the whole performance table.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use hostmm::{MonitorConfig, Source};
use serde::Serialize;

// The tools the tests call too live in the library; `crate::race_replace` and `crate::sys`
// resolve through these imports.
use mmnotify_cli::race_replace::{self, RaceConfig, RaceSource};
use mmnotify_cli::sys;

mod adversary;
mod adversary_brk;
mod adversary_file;
mod bench;
mod run;
mod torture;
mod tour;

#[derive(Parser, Debug)]
#[command(
    name = "mmnotify",
    version,
    about = "MMU notifiers, their validator, and a registration cache that is never stale"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The guided tour, the project's main job: every seed scenario reproduced through the
    /// real crates, checked and explained, then the registration-cache race.
    ///
    /// Runs the five mailing-list seeds (000-004) and the interval-epoch hole through
    /// mmu-notifier with its lockdep annotations, and hostmm's race against the real kernel;
    /// each step checks itself. A few seconds in a release build; the race step dominates.
    #[command(after_long_help = tour::AFTER_HELP)]
    Tour(tour::TourArgs),
    /// Race a registration cache against concurrent changes of the address space; reports stale
    /// registrations (must be 0). `--pattern replace` (default): one mutator, one looker;
    /// `--pattern all` or one pattern: the adversary, N mutators x M lookers, every lookup checked.
    Race(RaceArgs),
    /// Benchmarks of the host cache and invalidation sources, each next to its baseline.
    Bench(BenchArgs),
    /// Run scenario files (scenarios/*.toml) and check their expectations (exit 1 if any fails).
    Run(run::RunArgs),
    /// A randomized concurrent workload over the simulated system with every driver attached.
    Torture(torture::TortureArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SourceArg {
    /// userfaultfd monitor thread; the mutator uses plain syscalls.
    Uffd,
    /// Bracketed munmap/mremap wrappers.
    Bracketed,
    /// uffd when this process may use it, bracketed otherwise.
    Auto,
}

#[derive(clap::Args, Debug)]
struct RaceArgs {
    /// Rounds to run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Invalidation source.
    #[arg(long, value_enum, default_value_t = SourceArg::Uffd)]
    source: SourceArg,
    /// Seed of the interleaving jitter (the run is repeatable in its choices, not in the
    /// kernel's scheduling).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Pages in the raced range.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pages: u64,
    /// Extra microseconds each registration takes (a slow ibv_reg_mr widens the race window).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    register_delay_us: u64,
    /// Machine-readable output (one JSON object on stdout).
    #[arg(long)]
    json: bool,
    /// Make userfaultfd fail with EPERM in this process first (as a sandbox would), to show the
    /// fallback of `--source auto`.
    #[arg(long)]
    deny_uffd: bool,
    /// The change the cache races: `replace` (one mutator, one looker, whole-range munmap+mmap
    /// or mremap, checked after each round), or an adversary pattern run by --mutators x
    /// --lookers threads on overlapping ranges, each lookup checked: unmap-map, map-fixed,
    /// mremap, dontneed, fork-write, mprotect, brk (uffd only; in a child process), punch-hole,
    /// truncate, remove (memfd changes; bracketed only), or `all` that the source covers, in turn.
    #[arg(long, default_value = "replace", value_parser = parse_patterns)]
    pattern: Patterns,
    /// Adversary: mutator threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    mutators: u64,
    /// Adversary: looker threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    lookers: u64,
    /// Adversary: stop each pattern after this many seconds even if --rounds (mutator
    /// operations) are not done.
    #[arg(long)]
    seconds: Option<f64>,
    /// Adversary: no thread progressing for this many seconds is a hang: print where every
    /// thread is and exit with status 3.
    #[arg(long, default_value_t = 20)]
    hang_secs: u64,
    /// Adversary, bracketed source: make every change with the plain system call, which the
    /// source cannot see (remove: invalidating only the madvised mapping, not the file's other
    /// mappings). Such a run must report stale lookups: it shows the check has teeth.
    #[arg(long)]
    bypass: bool,
}

/// Which patterns `race` runs.
#[derive(Clone, Debug)]
enum Patterns {
    /// The classic two-thread race.
    Replace,
    /// Adversary patterns, in turn.
    Adversary(Vec<adversary::Pattern>),
    /// Every adversary pattern the source covers.
    All,
}

fn parse_patterns(s: &str) -> std::result::Result<Patterns, String> {
    match s {
        "replace" => Ok(Patterns::Replace),
        "all" => Ok(Patterns::All),
        other => <adversary::Pattern as ValueEnum>::from_str(other, false)
            .map(|p| Patterns::Adversary(vec![p]))
            .map_err(|_| {
                format!(
                    "unknown pattern {other:?}: replace, all, {}",
                    adversary::Pattern::ALL.map(|p| p.name()).join(", ")
                )
            }),
    }
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// The whole performance table (dispatch, read side, interval index, scaling, cache hit,
    /// munmap with its wake-round-trip floor, validator), each row with its baseline from the
    /// same run, its target and whether it is met. Without it: the host cache's figures.
    #[arg(long)]
    all: bool,
    /// A short run (seconds), less precise; with --all, 10,000 intervals instead of 1M.
    #[arg(long)]
    quick: bool,
    /// Machine-readable output (one JSON object on stdout).
    #[arg(long)]
    json: bool,
}

/// The race's figures, as `race --json` prints them and `tour --json` embeds them.
#[derive(Serialize, Clone)]
struct RaceJson {
    source: &'static str,
    fallback_reason: Option<String>,
    rounds: u64,
    stale: u64,
    checked: u64,
    frame_checked: u64,
    replacements: u64,
    lookups: u64,
    failed_lookups: u64,
    hits: u64,
    misses: u64,
    invalidations: u64,
    retries: u64,
    elapsed_s: f64,
    seed: u64,
}

impl RaceJson {
    fn new(report: &race_replace::RaceReport, fallback_reason: Option<String>) -> RaceJson {
        RaceJson {
            source: report.source,
            fallback_reason,
            rounds: report.rounds,
            stale: report.stale,
            checked: report.checked,
            frame_checked: report.frame_checked,
            replacements: report.replacements,
            lookups: report.lookups,
            failed_lookups: report.failed_lookups,
            hits: report.cache.hits,
            misses: report.cache.misses,
            invalidations: report.cache.invalidations,
            retries: report.cache.retries,
            elapsed_s: report.elapsed.as_secs_f64(),
            seed: report.seed,
        }
    }
}

#[derive(Serialize)]
struct BenchJson {
    name: String,
    value: f64,
    unit: &'static str,
    baseline: Option<String>,
    baseline_value: Option<f64>,
    ratio: Option<f64>,
}

fn progress_bar(len: u64, quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rounds ({eta})",
    ) {
        pb.set_style(style);
    }
    Some(pb)
}

fn race(args: RaceArgs) -> Result<()> {
    if args.deny_uffd {
        hostmm::testing::deny_userfaultfd_in_this_thread(libc_eperm())
            .context("installing the seccomp filter for --deny-uffd")?;
    }
    let (source, fallback_reason) = match args.source {
        SourceArg::Uffd => (RaceSource::Uffd, None),
        SourceArg::Bracketed => (RaceSource::Bracketed, None),
        SourceArg::Auto => {
            let host = hostmm::HostMm::new();
            match Source::auto(&host, MonitorConfig::default()).context("probing userfaultfd")? {
                (Source::Uffd(_), _) => (RaceSource::Uffd, None),
                (Source::Bracketed, why) => {
                    let why = why.map(|e| e.to_string());
                    if !args.json {
                        eprintln!(
                            "note: falling back to the bracketed source: {}",
                            why.as_deref().unwrap_or("uffd unavailable")
                        );
                    }
                    (RaceSource::Bracketed, why)
                }
            }
        }
    };
    let uffd = source == RaceSource::Uffd;
    match &args.pattern {
        Patterns::Adversary(patterns) => {
            return run_adversary(&args, patterns, uffd, fallback_reason)
        }
        Patterns::All => {
            let covered: Vec<_> = adversary::Pattern::ALL
                .into_iter()
                .filter(|p| p.covered_by(uffd))
                .collect();
            return run_adversary(&args, &covered, uffd, fallback_reason);
        }
        Patterns::Replace => {}
    }
    let config = RaceConfig {
        rounds: args.rounds,
        source,
        seed: args.seed,
        pages: args.pages,
        register_delay: Duration::from_micros(args.register_delay_us),
        ..RaceConfig::default()
    };
    let pb = progress_bar(args.rounds, args.json);
    let report = race_replace::run(&config, |done| {
        if let Some(pb) = &pb {
            pb.set_position(done);
        }
    })
    .with_context(|| match source {
        RaceSource::Uffd => "race with the uffd source failed (use --source auto to fall back to bracketed calls where uffd is not allowed)",
        RaceSource::Bracketed => "race with the bracketed source failed",
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if args.json {
        let j = RaceJson::new(&report, fallback_reason);
        println!("{}", serde_json::to_string(&j)?);
    } else {
        println!("rounds={} stale={}", report.rounds, report.stale);
        println!(
            "source={} replacements={} checked={} (by frame: {}) lookups={} failed_lookups={} hits={} misses={} invalidations={} retries={} time={:.2}s seed={}",
            report.source,
            report.replacements,
            report.checked,
            report.frame_checked,
            report.lookups,
            report.failed_lookups,
            report.cache.hits,
            report.cache.misses,
            report.cache.invalidations,
            report.cache.retries,
            report.elapsed.as_secs_f64(),
            report.seed
        );
    }
    if report.stale > 0 {
        bail!(
            "{} of {} rounds left a stale registration in the cache",
            report.stale,
            report.rounds
        );
    }
    Ok(())
}

/// `race --pattern P`: the adversary, one pattern after another.
fn run_adversary(
    args: &RaceArgs,
    patterns: &[adversary::Pattern],
    uffd: bool,
    fallback_reason: Option<String>,
) -> Result<()> {
    let mut reports = Vec::new();
    for &pattern in patterns {
        let cfg = adversary::Config {
            pattern,
            uffd,
            bypass: args.bypass,
            mutators: args.mutators as usize,
            lookers: args.lookers as usize,
            ops: args.rounds,
            seconds: args.seconds,
            pages: args.pages.max(2),
            seed: args.seed,
            hang: Duration::from_secs(args.hang_secs.max(1)),
        };
        let pb = progress_bar(args.rounds, args.json);
        if let Some(pb) = &pb {
            pb.set_message(pattern.name());
        }
        let r = adversary::run(&cfg, |done| {
            if let Some(pb) = &pb {
                pb.set_position(done);
            }
        })
        .with_context(|| format!("adversary pattern {}", pattern.name()))?;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        if !args.json {
            println!(
                "pattern={} source={} threads={}x{} ops={} stale={} checked={} (by frame: {}) refused_ops={} lookups={} failed_lookups={} hits={} misses={} invalidations={} retries={} registrations={} deregistrations={} time={:.2}s seed={}",
                r.pattern.name(), r.source, r.mutators, r.lookers, r.ops, r.stale, r.checked,
                r.frame_checked, r.refused_ops, r.lookups, r.failed_lookups, r.hits, r.misses,
                r.invalidations, r.retries, r.registrations, r.deregistrations, r.elapsed_s, r.seed
            );
        }
        reports.push(r);
    }
    let stale: u64 = reports.iter().map(|r| r.stale).sum();
    let leaked: Vec<_> = reports
        .iter()
        .filter(|r| r.registrations != r.deregistrations)
        .map(|r| r.pattern.name())
        .collect();
    if args.json {
        #[derive(Serialize)]
        struct Out<'a> {
            source: &'static str,
            fallback_reason: Option<String>,
            stale: u64,
            patterns: &'a [adversary::Report],
        }
        let out = Out {
            source: if uffd { "uffd" } else { "bracketed" },
            fallback_reason,
            stale,
            patterns: &reports,
        };
        println!("{}", serde_json::to_string(&out)?);
    }
    if stale > 0 {
        bail!("{stale} lookups returned a stale registration");
    }
    if !leaked.is_empty() {
        bail!("registrations leaked (registered != deregistered) in {leaked:?}");
    }
    Ok(())
}

fn libc_eperm() -> i32 {
    1 // EPERM on every Linux architecture
}

fn bench(args: BenchArgs) -> Result<()> {
    // The tour needs mmu-notifier's lockdep annotations compiled into this binary; measure the
    // cache, not the validator.
    lockdep::set_enabled(false);
    if args.all {
        return bench_all(&args);
    }
    let cfg = if args.quick {
        bench::BenchConfig::quick()
    } else {
        bench::BenchConfig::default()
    };
    if !args.json && std::io::stderr().is_terminal() {
        eprintln!("measuring (medians of {} batches)...", cfg.batches);
    }
    let rows = bench::all(&cfg).context("running the benchmarks")?;
    if args.json {
        let out: Vec<BenchJson> = rows
            .iter()
            .map(|r| BenchJson {
                name: r.name.clone(),
                value: r.value,
                unit: r.unit,
                baseline: r.baseline.as_ref().map(|b| b.0.clone()),
                baseline_value: r.baseline.as_ref().map(|b| b.1),
                ratio: r.ratio(),
            })
            .collect();
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("| benchmark | median | baseline (same run) | baseline median | ratio |");
        println!("|---|---|---|---|---|");
        for r in &rows {
            let (b, bv) = match &r.baseline {
                Some((n, v)) => (n.as_str(), format!("{v:.3} {}", r.unit)),
                None => ("-", "-".into()),
            };
            let ratio = r
                .ratio()
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "| {} | {:.3} {} | {} | {} | {} |",
                r.name, r.value, r.unit, b, bv, ratio
            );
        }
    }
    Ok(())
}

/// `bench --all`: the whole table, Markdown or JSON.
fn bench_all(args: &BenchArgs) -> Result<()> {
    let cfg = bench::all::AllConfig::new(args.quick);
    if !args.json && std::io::stderr().is_terminal() {
        eprintln!(
            "measuring the whole table (medians of {} batches, {} intervals, threads {:?})...",
            cfg.bench.batches, cfg.intervals, cfg.threads
        );
    }
    let rows = bench::all::run(&cfg);
    if args.json {
        println!("{}", bench::all::json(&cfg, args.quick, &rows)?);
    } else {
        print!("{}", bench::all::markdown(&rows));
    }
    Ok(())
}

fn main() -> Result<()> {
    // The adversary's brk race re-runs this program as its child (adversary_brk.rs).
    if let Some(cfg) = std::env::var_os(adversary_brk::CHILD_ENV) {
        return adversary_brk::child_main(&cfg, |c: &adversary::Config| {
            adversary::run_here(c, |_| {})
        });
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Tour(a) => tour::run(a),
        Command::Race(a) => race(a),
        Command::Bench(a) => bench(a),
        Command::Run(a) => run::run(a),
        Command::Torture(a) => torture::run(a),
    }
}
