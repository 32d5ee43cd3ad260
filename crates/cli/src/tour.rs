//! `mmnotify tour`: every seed scenario reproduced through the real crates, checked, and
//! explained.
//!
//! Each step builds the scenario from the public APIs of `mmu-notifier` (with its `lockdep`
//! annotations on), `lockdep` and `hostmm`, observes what happens, and checks it against what
//! the seed says should happen. A step prints what it shows, the evidence, the checks and
//! PASS/FAIL (or SKIP when the machine cannot run it, e.g. userfaultfd denied with
//! `--source uffd`); the command fails when any step fails.
//!
//! The `*-system` steps run the seeds as the whole system: first the seed's scenario files
//! (`scenarios/seed-*.toml`, the files `mmnotify run` runs, so the two cannot disagree), then
//! the simulated kernel (`vmsim`) with
//! the reference drivers and the coherence checker of `drivers` (`drivers::scenarios`), each
//! buggy then fixed; the steps before them stay as the validator's view in miniature.
//!
//! Lockdep findings are collected per scenario with a [`Scope`] (so they are not printed as
//! they happen), and every scenario makes its own lock classes with a [`DynamicKey`], so the
//! dependencies one step records never show up in another's report.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::race_replace::{RaceConfig, RaceSource};
use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use hostmm::{MonitorConfig, Source};
use lockdep::scope::Scope;
use lockdep::{might_alloc, DynamicKey, Gfp, Mutex, Report, ReportKind, ReportMode, SpinLock};
use mmu_notifier::{
    Capabilities, Diagnostics, Event, Interval, IntervalNotifier, IntervalNotifierOps, Mm,
    MmuNotifierOps, Profile, Range, WouldBlock,
};
use serde::Serialize;

use drivers::odp::NonBlock;
use drivers::scenarios;

use crate::SourceArg;

/// The lockdep class of the MMU-notifier pseudo-lock (`__mmu_notifier_invalidate_range_start_map`).
const NOTIFIER_MAP: &str = "mmu_notifier_invalidate_range_start";

/// The step list of `mmnotify tour --help`.
pub(crate) const AFTER_HELP: &str = "\
Steps, in order (select with --only):
  seed004-pairing            a refused non-blocking start ends every start that succeeded
                             (the 5.12 pairing fix), next to Profile::Pre5_12, where a
                             KVM-style in-progress counter stays raised
  epoch-hole                 the same refusal with an interval subscriber: no interval epoch
                             is left open and read_begin returns (Linux leaves it open,
                             reference \u{a7}1.7); Pre5_12 shows read_begin stuck
  seed001-reclaim            a lock taken in a notifier and held across a GFP_KERNEL or
                             GFP_NOIO allocation: lockdep reclaim inversion; GFP_ATOMIC clean
  seed002-alloc-in-notifier  a notifier allocating with GFP_KERNEL: reclaim recursion;
                             GFP_NOWAIT clean
  seed003-non-block          a mutex in the OOM reaper's non-blockable start: sleeping in
                             invalid context (non_block: 1); try_lock clean
  seed000-atomic             a mutex in arch_invalidate_secondary_tlbs: sleeping in atomic
                             context (in_atomic: 1); spinlock clean
  race                       hostmm's registration cache against real munmap/mmap/mremap:
                             0 stale registrations (--rounds, --source, --seed)
  seed000-system             the whole system (vmsim + crates/drivers): gntdev 4.12 reported
                             without pressure, hung under it (watchdog); current driver clean
  seed001-system             ODP's umem mutex across GFP_KERNEL / GFP_NOIO reported with no
                             reclaim; GFP_ATOMIC clean
  seed002-system             i915 userptr 5.7: reported, then hung under pressure; the current
                             design under the same pressure clean
  seed003-system             the OOM reaper and ODP: non_block report; trylock skipped,
                             retried, reaped
  seed004-system             KVM + ODP under the reaper: Pre5_12 leaves KVM's count raised and
                             the guest fault stuck; current pairs every start

Each step prints what it shows, what it expects, the evidence (for the lockdep steps the
first report as lockdep prints it), its checks, and PASS, FAIL or SKIP. SKIP is only for the
race with --source uffd where userfaultfd is not allowed; it does not fail the tour. The exit
status is non-zero when any step fails.

--json prints one JSON array of steps, each with name, seed, shows, expectation, observed,
checks, outcome (pass/fail/skip), passed, notes, lockdep_reports (variant, kind and the full
report as Report::to_json writes it), svg_files, race (the race's numbers) and elapsed_ms.

Examples:
  mmnotify tour
  mmnotify tour --only seed003-non-block,seed000-atomic --svg-dir reports/
  mmnotify tour --json --rounds 2000 --source bracketed";

/// Arguments of `mmnotify tour`.
#[derive(clap::Args, Debug)]
pub(crate) struct TourArgs {
    /// Run only these steps (repeat the option or give a comma-separated list); they run in
    /// tour order.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STEP")]
    only: Vec<Step>,
    /// Rounds of the `race` step.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Invalidation source of the `race` step. With `uffd`, a process that may not use
    /// userfaultfd skips the step (with a note); `auto` falls back to the bracketed source.
    #[arg(long, value_enum, default_value_t = SourceArg::Auto)]
    source: SourceArg,
    /// Seed of the `race` step's interleaving jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Machine-readable output: one JSON array of steps on stdout.
    #[arg(long)]
    json: bool,
    /// Write each lockdep report the tour finds as an SVG picture into this directory
    /// (created if missing), named `<step>-<variant>-<n>.svg`.
    #[arg(long, value_name = "DIR")]
    svg_dir: Option<PathBuf>,
    /// Make userfaultfd fail with EPERM in this process first (as a sandbox would), to show
    /// how the `race` step falls back (`--source auto`) or skips (`--source uffd`).
    #[arg(long)]
    deny_uffd: bool,
}

/// A step of the tour.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Step {
    /// Seed 004: a refused non-blocking start ends every start that succeeded (5.12), next to
    /// the pre-5.12 bug.
    #[value(name = "seed004-pairing")]
    Seed004Pairing,
    /// After a list subscriber refuses a non-blocking start, the interval epoch that
    /// `mn_itree_invalidate` opened is closed too (`__mmu_notifier_invalidate_range_start` in
    /// `mm/mmu_notifier.c` returns `-EAGAIN` without `mn_itree_inv_end`).
    #[value(name = "epoch-hole")]
    EpochHole,
    /// Seed 001: a driver lock taken in a notifier and held across an allocation.
    #[value(name = "seed001-reclaim")]
    Seed001Reclaim,
    /// Seed 002: a notifier callback allocating with direct reclaim.
    #[value(name = "seed002-alloc-in-notifier")]
    Seed002AllocInNotifier,
    /// Seed 003: a notifier sleeping in the OOM reaper's non-blockable range.
    #[value(name = "seed003-non-block")]
    Seed003NonBlock,
    /// Seed 000: a sleeping lock in arch_invalidate_secondary_tlbs (atomic context).
    #[value(name = "seed000-atomic")]
    Seed000Atomic,
    /// The registration cache against the real kernel: stale registrations must be 0.
    #[value(name = "race")]
    Race,
    /// Seed 000 as the whole system: the Xen grant device of 4.12 under memory pressure.
    #[value(name = "seed000-system")]
    Seed000System,
    /// Seed 001 as the whole system: RDMA ODP's lock across an allocation.
    #[value(name = "seed001-system")]
    Seed001System,
    /// Seed 002 as the whole system: i915 userptr populating under pressure.
    #[value(name = "seed002-system")]
    Seed002System,
    /// Seed 003 as the whole system: the OOM reaper and an ODP region.
    #[value(name = "seed003-system")]
    Seed003System,
    /// Seed 004 as the whole system: KVM and ODP under the OOM reaper.
    #[value(name = "seed004-system")]
    Seed004System,
}

impl Step {
    const ALL: [Step; 12] = [
        Step::Seed004Pairing,
        Step::EpochHole,
        Step::Seed001Reclaim,
        Step::Seed002AllocInNotifier,
        Step::Seed003NonBlock,
        Step::Seed000Atomic,
        Step::Race,
        Step::Seed000System,
        Step::Seed001System,
        Step::Seed002System,
        Step::Seed003System,
        Step::Seed004System,
    ];

    /// The name `--only` takes (the same as the `#[value(name)]` above).
    fn name(self) -> &'static str {
        match self {
            Step::Seed004Pairing => "seed004-pairing",
            Step::EpochHole => "epoch-hole",
            Step::Seed001Reclaim => "seed001-reclaim",
            Step::Seed002AllocInNotifier => "seed002-alloc-in-notifier",
            Step::Seed003NonBlock => "seed003-non-block",
            Step::Seed000Atomic => "seed000-atomic",
            Step::Race => "race",
            Step::Seed000System => "seed000-system",
            Step::Seed001System => "seed001-system",
            Step::Seed002System => "seed002-system",
            Step::Seed003System => "seed003-system",
            Step::Seed004System => "seed004-system",
        }
    }

    /// The mailing-list seed the step reproduces.
    fn seed(self) -> Option<&'static str> {
        match self {
            Step::Seed004Pairing => Some("004"),
            Step::EpochHole => None,
            Step::Seed001Reclaim => Some("001"),
            Step::Seed002AllocInNotifier => Some("002"),
            Step::Seed003NonBlock => Some("003"),
            Step::Seed000Atomic => Some("000"),
            Step::Race => None,
            Step::Seed000System => Some("000"),
            Step::Seed001System => Some("001"),
            Step::Seed002System => Some("002"),
            Step::Seed003System => Some("003"),
            Step::Seed004System => Some("004"),
        }
    }

    /// What the step shows.
    fn shows(self) -> &'static str {
        match self {
            Step::Seed004Pairing => {
                "When the OOM reaper's non-blocking invalidation is refused by one subscriber, \
                 every subscriber whose start succeeded must still get its end (the 5.12 pairing \
                 fix); before 5.12 a KVM-style in-progress counter was left raised forever."
            }
            Step::EpochHole => {
                "The same refusal with an interval subscriber present: the interval epoch that \
                 the refused invalidation opened must be closed as well, or read_begin, insert \
                 and remove wait forever (Linux still leaves it open: \
                 __mmu_notifier_invalidate_range_start in mm/mmu_notifier.c returns -EAGAIN \
                 from the list walk without mn_itree_inv_end)."
            }
            Step::Seed001Reclaim => {
                "A driver lock taken inside a notifier callback must not be held across an \
                 allocation that may enter direct reclaim: reclaim invalidates, the callback \
                 waits for the lock, deadlock. Lockdep finds it from a run that never deadlocks."
            }
            Step::Seed002AllocInNotifier => {
                "A notifier callback must not allocate with direct reclaim allowed: reclaim calls \
                 notifiers, so the allocation can recurse into reclaim and into itself."
            }
            Step::Seed003NonBlock => {
                "In the OOM reaper's non-blockable range a notifier must not sleep on a mutex \
                 (non_block_start/end): it must try_lock and refuse instead."
            }
            Step::Seed000Atomic => {
                "arch_invalidate_secondary_tlbs runs in atomic context (under the page-table \
                 lock): a sleeping lock there is a bug, a spinlock is fine."
            }
            Step::Race => {
                "A user-space registration cache kept coherent by MMU-notifier-style \
                 invalidations races real munmap/mmap/mremap of the same range: it must never \
                 hand out a registration of a mapping that is gone."
            }
            Step::Seed000System => {
                "The whole system (vmsim + the gntdev driver of drivers/xen/gntdev.c): in 4.12 \
                 the per-page callback that try_to_unmap_one calls under the page-table lock \
                 takes priv->lock, which gntdev_mmap holds while it allocates and takes \
                 page-table locks. The bug is a notifier that blocks on something reclaim \
                 cannot guarantee, not only one that sleeps in atomic context (Michal Hocko)."
            }
            Step::Seed001System => {
                "The whole system (vmsim + RDMA ODP, umem_odp.c): the umem mutex its notifier \
                 takes, held across one GFP_KERNEL or GFP_NOIO allocation, is reported with no \
                 reclaim ever running; GFP_ATOMIC is clean."
            }
            Step::Seed002System => {
                "The whole system (vmsim + i915 userptr): the 5.7 design pins the object's pages \
                 one by one with the object lock held; under pressure reclaim picks the \
                 object's own pages and the notifier waits for the object. Notifiers are not \
                 for influencing the mm's policy (Jason Gunthorpe): the current design pins \
                 with no lock held and retries on the interval sequence."
            }
            Step::Seed003System => {
                "The whole system (vmsim's OOM reaper + RDMA ODP): a notifier that takes its \
                 mutex in the reaper's non-blockable range sleeps where it must not; with \
                 trylock the reaper skips the region while a device fault holds the mutex, \
                 retries, and reaps it."
            }
            Step::Seed004System => {
                "The whole system (vmsim's OOM reaper + KVM + RDMA ODP on one process): before \
                 5.12 a refused non-blocking start left KVM's mmu_invalidate_in_progress \
                 raised and the guest's faults retried forever; now every start is paired."
            }
        }
    }

    /// What must be observed for the step to pass.
    fn expectation(self) -> &'static str {
        match self {
            Step::Seed004Pairing => {
                "the non-blocking start is refused under both profiles; A's counter is 0 after it \
                 on the default profile (A got its end) and stays 1 on Profile::Pre5_12 (no end); \
                 no lockdep report, no contract warning"
            }
            Step::EpochHole => {
                "default profile: no epoch open after the refused start (active 0, even \
                 sequence) and read_begin returns at once; Profile::Pre5_12: the epoch stays \
                 open (active 1, odd sequence) and read_begin is still waiting"
            }
            Step::Seed001Reclaim => {
                "GFP_KERNEL and GFP_NOIO under the lock: a ReclaimInversion through \
                 mmu_notifier_invalidate_range_start and the driver lock; GFP_ATOMIC: no report"
            }
            Step::Seed002AllocInNotifier => {
                "GFP_KERNEL in the callback: possible recursive locking (RecursiveLocking) of \
                 mmu_notifier_invalidate_range_start; GFP_NOWAIT (no direct reclaim): no report"
            }
            Step::Seed003NonBlock => {
                "mutex in the non-blockable start: SleepingInInvalidContext with non_block: 1, \
                 in_atomic: 0; try_lock (free, then held by another thread so the start is \
                 refused): no report"
            }
            Step::Seed000Atomic => {
                "mutex in arch_invalidate_secondary_tlbs: SleepingInInvalidContext with \
                 in_atomic: 1; spinlock: no report"
            }
            Step::Race => "every round checked against the mapping in place: 0 stale registrations",
            Step::Seed000System => {
                "4.12 without pressure: sleeping in atomic context in the callback and a \
                 ptl/priv->lock cycle; 4.12 under pressure: the watchdog reports the ioctl \
                 thread hung; current driver under the same pressure: no hung task, no report, \
                 no stale device access"
            }
            Step::Seed001System => {
                "GFP_KERNEL and GFP_NOIO: a lock-order report through umem_mutex with 0 pages \
                 reclaimed; GFP_ATOMIC: nothing"
            }
            Step::Seed002System => {
                "5.7 design: a lock-order report on obj->mm.lock without pressure, the \
                 populating thread hung under pressure; current design under the same \
                 pressure: populated, the GPU reads the right data, nothing reported"
            }
            Step::Seed003System => {
                "mutex: SleepingInInvalidContext with non_block: 1; trylock: refused at least \
                 once, then reaped in a later attempt (8 pages), nothing reported"
            }
            Step::Seed004System => {
                "Profile::Pre5_12: mmu_invalidate_in_progress >= 1 after the reaper, the guest \
                 fault stuck, KVM's start unpaired; current: the 4.19 ODP cannot register, the \
                 count is 0, the guest fault completes (EFAULT: the memory was reaped), no \
                 report, no unpaired start"
            }
        }
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Pass,
    Fail,
    /// Could not run here (not a failure): see the step's notes.
    Skip,
}

/// One expectation checked by a step.
#[derive(Serialize)]
struct Check {
    what: String,
    ok: bool,
}

/// A lockdep report found by a step, with the scenario variant that produced it.
struct Found {
    variant: String,
    report: Report,
}

/// What a step observed.
#[derive(Default)]
struct Finding {
    evidence: Vec<String>,
    checks: Vec<Check>,
    notes: Vec<String>,
    reports: Vec<Found>,
    race: Option<RaceStats>,
    skipped: bool,
}

impl Finding {
    fn see(&mut self, line: impl Into<String>) {
        self.evidence.push(line.into());
    }

    fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.checks.push(Check {
            what: what.into(),
            ok,
        });
    }

    fn keep(&mut self, variant: &str, reports: &[Report]) {
        self.reports.extend(reports.iter().map(|r| Found {
            variant: variant.to_owned(),
            report: r.clone(),
        }));
    }
}

/// The race step's numbers: `race --json`'s, plus the rate and the validator's count.
#[derive(Serialize, Clone)]
struct RaceStats {
    #[serde(flatten)]
    race: crate::RaceJson,
    rounds_per_s: f64,
    lockdep_reports: u64,
}

/// A lockdep report in the JSON output.
#[derive(Serialize)]
struct ReportJson {
    variant: String,
    kind: String,
    /// The report as [`Report::to_json`] writes it.
    report: serde_json::Value,
}

/// One step in the JSON output.
#[derive(Serialize)]
struct StepJson {
    name: &'static str,
    seed: Option<&'static str>,
    shows: &'static str,
    expectation: &'static str,
    observed: String,
    checks: Vec<Check>,
    outcome: Outcome,
    passed: bool,
    notes: Vec<String>,
    lockdep_reports: Vec<ReportJson>,
    svg_files: Vec<String>,
    race: Option<RaceStats>,
    elapsed_ms: f64,
}

/// Runs the tour; fails when a step fails.
pub(crate) fn run(args: TourArgs) -> Result<()> {
    let started = Instant::now();
    // The tour provokes reports on purpose, into scopes. In strict mode (LOCKDEP_STRICT=1)
    // each of them would be a panic; reports outside the scopes are still printed.
    lockdep::set_report_mode(ReportMode::Print);
    if let Some(dir) = &args.svg_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the --svg-dir directory {}", dir.display()))?;
    }
    let steps: Vec<Step> = Step::ALL
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.contains(s))
        .collect();
    let total = steps.len();
    let mut out = Vec::with_capacity(total);
    if !args.json {
        println!(
            "mmnotify tour: {} step{} (the seeds through mmu-notifier + lockdep, the hostmm race, then the seeds as the whole system: vmsim + drivers)",
            total,
            if total == 1 { "" } else { "s" }
        );
    }
    for (i, &step) in steps.iter().enumerate() {
        if !args.json {
            print_header(i + 1, total, step);
        }
        let t0 = Instant::now();
        let result = match step {
            Step::Seed004Pairing => seed004_pairing(),
            Step::EpochHole => epoch_hole(),
            Step::Seed001Reclaim => seed001_reclaim(),
            Step::Seed002AllocInNotifier => seed002_alloc_in_notifier(),
            Step::Seed003NonBlock => seed003_non_block(),
            Step::Seed000Atomic => seed000_atomic(),
            Step::Race => race(&args),
            Step::Seed000System => seed000_system(),
            Step::Seed001System => seed001_system(),
            Step::Seed002System => seed002_system(),
            Step::Seed003System => seed003_system(),
            Step::Seed004System => seed004_system(),
        };
        let elapsed = t0.elapsed();
        let (finding, outcome) = match result {
            Ok(f) => {
                let outcome = if f.skipped {
                    Outcome::Skip
                } else if !f.checks.is_empty() && f.checks.iter().all(|c| c.ok) {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                };
                (f, outcome)
            }
            Err(e) => {
                let mut f = Finding::default();
                f.see(format!("error: {e:#}"));
                f.check("the scenario ran to completion", false);
                (f, Outcome::Fail)
            }
        };
        let svg_files = match &args.svg_dir {
            Some(dir) => write_svgs(dir, step, &finding.reports)?,
            None => Vec::new(),
        };
        if !args.json {
            print_result(step, &finding, outcome, &svg_files, elapsed);
        }
        out.push(StepJson {
            name: step.name(),
            seed: step.seed(),
            shows: step.shows(),
            expectation: step.expectation(),
            observed: finding.evidence.join("\n"),
            outcome,
            passed: outcome == Outcome::Pass,
            notes: finding.notes,
            lockdep_reports: finding
                .reports
                .iter()
                .map(|f| ReportJson {
                    variant: f.variant.clone(),
                    kind: format!("{:?}", f.report.kind),
                    report: serde_json::from_str(&f.report.to_json())
                        .unwrap_or_else(|_| serde_json::Value::String(f.report.to_json())),
                })
                .collect(),
            checks: finding.checks,
            svg_files,
            race: finding.race,
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
        });
    }
    let failed: Vec<&str> = out
        .iter()
        .filter(|s| s.outcome == Outcome::Fail)
        .map(|s| s.name)
        .collect();
    let skipped = out.iter().filter(|s| s.outcome == Outcome::Skip).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "\n{} step{}: {} passed, {} failed, {} skipped in {:.2}s",
            total,
            if total == 1 { "" } else { "s" },
            total - failed.len() - skipped,
            failed.len(),
            skipped,
            started.elapsed().as_secs_f64()
        );
    }
    std::io::stdout()
        .flush()
        .context("writing the tour to stdout")?;
    if !failed.is_empty() {
        bail!(
            "{} of {} tour steps failed: {}",
            failed.len(),
            total,
            failed.join(", ")
        );
    }
    Ok(())
}

fn print_header(i: usize, n: usize, step: Step) {
    let mut s = String::new();
    let seed = step
        .seed()
        .map(|x| format!(" (seed {x})"))
        .unwrap_or_default();
    let _ = writeln!(s, "\n== [{i}/{n}] {}{seed}", step.name());
    let _ = writeln!(s, "shows:    {}", wrap(step.shows(), 10));
    let _ = writeln!(s, "expect:   {}", wrap(step.expectation(), 10));
    print!("{s}");
    // Before a long step (the race) starts, not after.
    let _ = std::io::stdout().flush();
}

fn print_result(step: Step, f: &Finding, outcome: Outcome, svgs: &[String], elapsed: Duration) {
    let mut s = String::new();
    let _ = writeln!(s, "evidence:");
    for line in &f.evidence {
        let _ = writeln!(s, "  {}", wrap(line, 4));
    }
    for note in &f.notes {
        let _ = writeln!(s, "note:     {note}");
    }
    if let Some(first) = f.reports.first() {
        let _ = writeln!(
            s,
            "first finding ({}), as lockdep prints it:",
            first.variant
        );
        for line in first.report.to_string().lines() {
            let _ = writeln!(s, "  | {line}");
        }
    }
    for path in svgs {
        let _ = writeln!(s, "svg:      {path}");
    }
    if !f.checks.is_empty() {
        let _ = writeln!(s, "checks:");
        for c in &f.checks {
            let _ = writeln!(s, "  [{}] {}", if c.ok { "ok" } else { "FAILED" }, c.what);
        }
    }
    let verdict = match outcome {
        Outcome::Pass => "PASS",
        Outcome::Fail => "FAIL",
        Outcome::Skip => "SKIP",
    };
    let _ = writeln!(
        s,
        "{verdict} {} ({:.1} ms)",
        step.name(),
        elapsed.as_secs_f64() * 1e3
    );
    print!("{s}");
}

/// `text` wrapped at 100 columns, continuation lines indented by `indent`. Runs of spaces
/// (column padding) are kept.
fn wrap(text: &str, indent: usize) -> String {
    const WIDTH: usize = 100;
    let mut out = String::new();
    let mut col = indent;
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            if !word.is_empty() && col > indent && col + 1 + word.len() > WIDTH {
                out.push('\n');
                out.push_str(&" ".repeat(indent));
                col = indent;
            } else {
                out.push(' ');
                col += 1;
            }
        }
        out.push_str(word);
        col += word.len();
    }
    out
}

fn write_svgs(dir: &Path, step: Step, found: &[Found]) -> Result<Vec<String>> {
    let mut paths = Vec::new();
    for (n, f) in found.iter().enumerate() {
        let variant: String = f
            .variant
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let path = dir.join(format!("{}-{variant}-{}.svg", step.name(), n + 1));
        std::fs::write(&path, f.report.to_svg())
            .with_context(|| format!("writing {}", path.display()))?;
        paths.push(path.display().to_string());
    }
    Ok(paths)
}

// ------------------------------------------------------------------ shared scenario pieces

/// An address space whose contract warnings are collected (the tour reports them itself).
fn mm_with(profile: Profile) -> (Mm, Arc<Diagnostics>) {
    let diag = Diagnostics::collect();
    let mm = Mm::builder()
        .profile(profile)
        .diagnostics(diag.clone())
        .build();
    (mm, diag)
}

fn unmap(start: u64, end: u64) -> Result<Range> {
    Range::new(start, end, Event::Unmap).context("building the invalidation range")
}

/// The order in which callbacks ran, for the evidence.
#[derive(Clone, Default)]
struct CallLog(Arc<std::sync::Mutex<Vec<&'static str>>>);

impl CallLog {
    fn push(&self, what: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(what);
    }

    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Seed 004's "A", KVM's shape: an in-progress counter under a spinlock, raised in start and
/// dropped in end.
struct SpinCounter {
    count: SpinLock<i64>,
    log: CallLog,
}

impl MmuNotifierOps for SpinCounter {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        *self.count.lock() += 1;
        self.log.push("A:start");
        Ok(())
    }
    fn invalidate_range_end(&self, _range: &Range) {
        *self.count.lock() -= 1;
        self.log.push("A:end");
    }
}

/// Seed 004's "B", nouveau's shape: a sleeping driver lock it may only try in a non-blockable
/// range, refusing when it is busy; so it may not have an end.
struct TryLocker {
    lock: Arc<Mutex<()>>,
    log: CallLog,
}

impl MmuNotifierOps for TryLocker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::START_CAN_FAIL
    }
    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        if range.is_blockable() {
            drop(self.lock.lock());
            self.log.push("B:start");
            return Ok(());
        }
        match self.lock.try_lock() {
            Some(_g) => {
                self.log.push("B:start");
                Ok(())
            }
            None => {
                self.log.push("B:start(refused)");
                Err(WouldBlock)
            }
        }
    }
}

/// Runs a non-blockable invalidation of `range` on an "oom_reaper" thread (attached to
/// `scope`) while this thread holds `busy`; returns whether the start was refused.
fn reap_while_held(mm: &Mm, busy: &Mutex<()>, scope: &Scope, range: Range) -> Result<bool> {
    let _held = busy.lock();
    let handle = scope.handle();
    std::thread::scope(|s| {
        let reaper = std::thread::Builder::new()
            .name("oom_reaper".into())
            .spawn_scoped(s, move || {
                handle.attach();
                match mm.invalidate_range_start_nonblock(range) {
                    Ok(guard) => {
                        guard.end();
                        false
                    }
                    Err(WouldBlock) => true,
                }
            })
            .context("spawning the oom_reaper thread")?;
        reaper
            .join()
            .map_err(|_| anyhow!("the oom_reaper thread panicked"))
    })
}

fn describe_reports(reports: &[Report]) -> String {
    if reports.is_empty() {
        return "no lockdep report".to_owned();
    }
    let kinds: Vec<String> = reports.iter().map(|r| format!("{:?}", r.kind)).collect();
    format!(
        "{} lockdep report{}: {}",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" },
        kinds.join(", ")
    )
}

fn of_kind(reports: &[Report], kind: ReportKind) -> Vec<&Report> {
    reports.iter().filter(|r| r.kind == kind).collect()
}

// ------------------------------------------------------------------ 1. seed004-pairing

struct PairingRun {
    refused: bool,
    counter: i64,
    calls: Vec<&'static str>,
    warnings: usize,
}

fn pairing_under(profile: Profile, scope: &Scope, tag: &str) -> Result<PairingRun> {
    let a_key = DynamicKey::new(format!("kvm->mmu_lock[tour seed004 {tag}]"));
    let b_key = DynamicKey::new(format!("nouveau svmm->mutex[tour seed004 {tag}]"));
    let (mm, diag) = mm_with(profile);
    let log = CallLog::default();
    let b_lock = Arc::new(Mutex::new((), &b_key));
    // Registered first, called last: list subscribers are called newest first.
    let a = mm.register(SpinCounter {
        count: SpinLock::new(0, &a_key),
        log: log.clone(),
    })?;
    let b = mm.register(TryLocker {
        lock: b_lock.clone(),
        log: log.clone(),
    })?;
    // Someone holds B's lock while the OOM reaper tries the address space.
    let refused = reap_while_held(&mm, &b_lock, scope, unmap(0, 1 << 20)?)?;
    let counter = *a.count.lock();
    let run = PairingRun {
        refused,
        counter,
        calls: log.take(),
        warnings: diag.take().len(),
    };
    b.unregister()?;
    a.unregister()?;
    Ok(run)
}

fn seed004_pairing() -> Result<Finding> {
    let mut f = Finding::default();
    let scope = Scope::new();
    let cur = pairing_under(Profile::Current, &scope, "current")?;
    let old = pairing_under(Profile::Pre5_12, &scope, "pre-5.12")?;
    for (label, run) in [("default (5.12+)", &cur), ("Pre5_12 (4.19-5.11)", &old)] {
        f.see(format!(
            "{label:<20} nonblock start {}; callbacks: {}; A's counter = {}",
            if run.refused {
                "refused (WouldBlock)"
            } else {
                "succeeded"
            },
            run.calls.join(", "),
            run.counter
        ));
    }
    let reports = scope.take();
    f.see(format!(
        "lockdep: {}; contract warnings: {}",
        describe_reports(&reports),
        cur.warnings + old.warnings
    ));
    f.keep("unexpected", &reports);
    f.check(
        "the non-blocking start is refused (default profile)",
        cur.refused,
    );
    f.check("the non-blocking start is refused (Pre5_12)", old.refused);
    f.check(
        "B's refusal does not stop A's start (both profiles)",
        cur.calls.contains(&"A:start") && old.calls.contains(&"A:start"),
    );
    f.check(
        "default profile: A got its end, its counter is back to 0",
        cur.counter == 0 && cur.calls.contains(&"A:end"),
    );
    f.check(
        "Pre5_12: A got no end, its counter stays 1 (the seed-004 bug)",
        old.counter == 1 && !old.calls.contains(&"A:end"),
    );
    f.check(
        "no lockdep report and no contract warning",
        reports.is_empty() && cur.warnings + old.warnings == 0,
    );
    Ok(f)
}

// ------------------------------------------------------------------ 2. epoch-hole

/// An interval subscriber (hmm's dmirror shape): the device page table behind a user lock.
struct DeviceMirror {
    pt: Mutex<Option<u64>>,
}

impl IntervalNotifierOps for DeviceMirror {
    fn invalidate(&self, interval: &Interval, range: &Range, cur_seq: u64) -> bool {
        let mut pt = if range.is_blockable() {
            self.pt.lock()
        } else {
            match self.pt.try_lock() {
                Some(g) => g,
                None => return false,
            }
        };
        interval.set_seq(cur_seq);
        *pt = None;
        true
    }
}

/// What a device fault's `read_begin` did after the refused invalidation.
enum ReadBegin {
    /// Returned after this long; `retry` is what `read_retry` said of the sequence it gave.
    Returned { after: Duration, retry: bool },
    /// Still waiting after the timeout.
    Waiting(Duration),
}

/// Calls `read_begin` on a "device_fault" thread and waits at most `timeout` for it. Gives the
/// interval back if it returned; if not, the thread is left waiting for good (nothing will
/// close the epoch) and keeps the interval, whose removal would wait for the same epoch.
fn read_begin_within(
    iv: IntervalNotifier,
    timeout: Duration,
) -> Result<(ReadBegin, Option<IntervalNotifier>)> {
    let (tx, rx) = mpsc::channel();
    let fault = std::thread::Builder::new()
        .name("device_fault".into())
        .spawn(move || {
            let t0 = Instant::now();
            let seq = iv.read_begin();
            let retry = iv.read_retry(seq);
            let _ = tx.send((t0.elapsed(), retry));
            iv
        })
        .context("spawning the device_fault thread")?;
    match rx.recv_timeout(timeout) {
        Ok((after, retry)) => {
            let iv = fault
                .join()
                .map_err(|_| anyhow!("the device_fault thread panicked"))?;
            Ok((ReadBegin::Returned { after, retry }, Some(iv)))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Ok((ReadBegin::Waiting(timeout), None)),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            bail!("the device_fault thread ended without answering")
        }
    }
}

struct EpochRun {
    refused: bool,
    active: u64,
    seq: u64,
    invalidating: bool,
    read_begin: ReadBegin,
}

fn epoch_under(profile: Profile, scope: &Scope, tag: &str, timeout: Duration) -> Result<EpochRun> {
    let pt_key = DynamicKey::new(format!("dmirror->mutex[tour epoch-hole {tag}]"));
    let b_key = DynamicKey::new(format!("nouveau svmm->mutex[tour epoch-hole {tag}]"));
    let (mm, _diag) = mm_with(profile);
    let iv = mm.interval_notifier_insert(
        0x1000,
        0x1000,
        DeviceMirror {
            pt: Mutex::new(Some(42), &pt_key),
        },
    )?;
    let b_lock = Arc::new(Mutex::new((), &b_key));
    let b = mm.register(TryLocker {
        lock: b_lock.clone(),
        log: CallLog::default(),
    })?;
    // The interval is invalidated first (its epoch opens), then the list subscriber refuses.
    let refused = reap_while_held(&mm, &b_lock, scope, unmap(0, 0x10000)?)?;
    let st = mm
        .interval_state()
        .ok_or_else(|| anyhow!("no interval state after an interval insert"))?;
    let (read_begin, iv) = read_begin_within(iv, timeout)?;
    match iv {
        Some(iv) => iv.remove()?,
        // The mirror's lock lives on in the waiting thread; its class must too.
        None => std::mem::forget(pt_key),
    }
    b.unregister()?;
    Ok(EpochRun {
        refused,
        active: st.active,
        seq: st.seq,
        invalidating: st.invalidating(),
        read_begin,
    })
}

fn epoch_hole() -> Result<Finding> {
    let mut f = Finding::default();
    let scope = Scope::new();
    // Generous for "returns at once"; on the buggy profile this is how long we watch it wait.
    let cur = epoch_under(Profile::Current, &scope, "current", Duration::from_secs(2))?;
    let old = epoch_under(
        Profile::Pre5_12,
        &scope,
        "pre-5.12",
        Duration::from_millis(100),
    )?;
    for (label, run) in [
        ("default (5.12+ & fix)", &cur),
        ("Pre5_12 (like Linux)", &old),
    ] {
        let rb = match run.read_begin {
            ReadBegin::Returned { after, retry } => format!(
                "read_begin returned after {:.0} us{}",
                after.as_secs_f64() * 1e6,
                if retry { " (and asks for a retry)" } else { "" }
            ),
            ReadBegin::Waiting(t) => format!(
                "read_begin still waiting after {} ms (and forever: the epoch never ends)",
                t.as_millis()
            ),
        };
        f.see(format!(
            "{label:<22} nonblock start {}; interval_state: active={} seq={} ({}); {rb}",
            if run.refused { "refused" } else { "succeeded" },
            run.active,
            run.seq,
            if run.invalidating {
                "odd: epoch open"
            } else {
                "even: no epoch open"
            },
        ));
    }
    let reports = scope.take();
    f.see(format!("lockdep: {}", describe_reports(&reports)));
    f.keep("unexpected", &reports);
    f.check(
        "the non-blocking start is refused (both profiles)",
        cur.refused && old.refused,
    );
    f.check(
        "default profile: no epoch open (active 0, even sequence)",
        cur.active == 0 && !cur.invalidating,
    );
    f.check(
        "default profile: read_begin returns at once with a usable sequence",
        matches!(cur.read_begin, ReadBegin::Returned { retry: false, after } if after < Duration::from_secs(1)),
    );
    f.check(
        "Pre5_12: the epoch is left open (active 1, odd sequence) and read_begin waits",
        old.active == 1 && old.invalidating && matches!(old.read_begin, ReadBegin::Waiting(_)),
    );
    f.check("no lockdep report", reports.is_empty());
    Ok(f)
}

// ------------------------------------------------------------------ 3. seed001-reclaim

/// A driver whose list callbacks take its sleeping lock (KVM/ODP shape).
struct LockingDriver {
    lock: Arc<Mutex<u64>>,
}

impl MmuNotifierOps for LockingDriver {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        *self.lock.lock() += 1;
        Ok(())
    }
    fn invalidate_range_end(&self, _range: &Range) {
        *self.lock.lock() -= 1;
    }
}

/// The lock is taken in a callback (through a real invalidation) and, elsewhere, held across
/// an allocation with `gfp`. Nothing deadlocks and no reclaim runs. Returns the reports and
/// the lock's class name.
fn seed001_with(gfp: Gfp, label: &str) -> Result<(Vec<Report>, String)> {
    let scope = Scope::new();
    let name = format!("driver->lock[tour seed001 {label}]");
    let key = DynamicKey::new(name.clone());
    let lock = Arc::new(Mutex::new(0u64, &key));
    let (mm, _diag) = mm_with(Profile::Current);
    let sub = mm.register(LockingDriver { lock: lock.clone() })?;
    mm.invalidate_range_start(unmap(0x1000, 0x3000)?).end();
    {
        let _g = lock.lock();
        might_alloc(gfp);
    }
    sub.unregister()?;
    Ok((scope.take(), name))
}

fn seed001_reclaim() -> Result<Finding> {
    let mut f = Finding::default();
    for (gfp, label, bad) in [
        (Gfp::KERNEL, "GFP_KERNEL", true),
        (Gfp::NOIO, "GFP_NOIO", true),
        (Gfp::ATOMIC, "GFP_ATOMIC", false),
    ] {
        let (reports, class) = seed001_with(gfp, label)?;
        let inversions: Vec<&Report> = of_kind(&reports, ReportKind::ReclaimInversion)
            .into_iter()
            .filter(|r| r.involves(NOTIFIER_MAP) && r.involves(&class))
            .collect();
        f.see(format!(
            "{label:<10} allocation under the lock the callback takes: {}{}",
            describe_reports(&reports),
            match inversions.first() {
                Some(r) => format!(" (cycle: {})", r.classes().join(" -> ")),
                None => String::new(),
            }
        ));
        if bad {
            f.check(
                format!("{label}: a ReclaimInversion through {NOTIFIER_MAP} and the driver lock"),
                !inversions.is_empty(),
            );
        } else {
            f.check(format!("{label}: no report"), reports.is_empty());
        }
        f.keep(label, &reports);
    }
    Ok(f)
}

// ------------------------------------------------------------------ 4. seed002-alloc-in-notifier

/// A notifier callback that allocates.
struct Allocates {
    gfp: Gfp,
}

impl MmuNotifierOps for Allocates {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        might_alloc(self.gfp);
        Ok(())
    }
}

fn seed002_with(gfp: Gfp) -> Result<Vec<Report>> {
    let scope = Scope::new();
    let (mm, _diag) = mm_with(Profile::Current);
    let sub = mm.register(Allocates { gfp })?;
    mm.invalidate_range_start(unmap(0x1000, 0x3000)?).end();
    sub.unregister()?;
    Ok(scope.take())
}

fn seed002_alloc_in_notifier() -> Result<Finding> {
    let mut f = Finding::default();
    for (gfp, label, bad) in [
        (Gfp::KERNEL, "GFP_KERNEL", true),
        (Gfp::NOWAIT, "GFP_NOWAIT", false),
    ] {
        let reports = seed002_with(gfp)?;
        let recursion: Vec<&Report> = of_kind(&reports, ReportKind::RecursiveLocking)
            .into_iter()
            .filter(|r| r.involves(NOTIFIER_MAP))
            .collect();
        f.see(format!(
            "{label:<10} allocation in invalidate_range_start: {}",
            describe_reports(&reports)
        ));
        if bad {
            f.check(
                format!("{label}: possible recursive locking of {NOTIFIER_MAP}"),
                recursion.len() == 1,
            );
        } else {
            f.check(format!("{label}: no report"), reports.is_empty());
        }
        f.keep(label, &reports);
    }
    Ok(f)
}

// ------------------------------------------------------------------ 5. seed003-non-block

/// Sleeps on its mutex in every start, blockable or not (the bug of seed 003).
struct SleepsInStart {
    lock: Mutex<()>,
}

impl MmuNotifierOps for SleepsInStart {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
    }
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        drop(self.lock.lock());
        Ok(())
    }
}

fn seed003_non_block() -> Result<Finding> {
    let mut f = Finding::default();

    let (sleeping, uncontended_ok) = {
        let scope = Scope::new();
        let key = DynamicKey::new("driver->mutex[tour seed003 mutex]");
        let (mm, _diag) = mm_with(Profile::Current);
        let sub = mm.register(SleepsInStart {
            lock: Mutex::new((), &key),
        })?;
        // Uncontended: nothing blocks, yet the mutex could have.
        let ok = mm
            .invalidate_range_start_nonblock(unmap(0x1000, 0x3000)?)
            .map(|g| g.end())
            .is_ok();
        sub.unregister()?;
        (scope.take(), ok)
    };
    let bad = of_kind(&sleeping, ReportKind::SleepingInInvalidContext);
    let ctx = bad.first().and_then(|r| r.context.as_ref());
    f.see(format!(
        "mutex in the non-blockable start (uncontended, start {}): {}{}",
        if uncontended_ok {
            "succeeded"
        } else {
            "refused"
        },
        describe_reports(&sleeping),
        ctx.map(|c| format!(" (non_block: {}, in_atomic: {})", c.non_block, c.in_atomic))
            .unwrap_or_default()
    ));
    f.check(
        "mutex: one SleepingInInvalidContext with non_block: 1, in_atomic: 0",
        bad.len() == 1 && ctx.is_some_and(|c| c.non_block == 1 && c.in_atomic == 0),
    );
    f.keep("mutex", &sleeping);

    let (trying, free_ok, refused) = {
        let scope = Scope::new();
        let key = DynamicKey::new("driver->mutex[tour seed003 try_lock]");
        let (mm, _diag) = mm_with(Profile::Current);
        let lock = Arc::new(Mutex::new((), &key));
        let sub = mm.register(TryLocker {
            lock: lock.clone(),
            log: CallLog::default(),
        })?;
        let free_ok = mm
            .invalidate_range_start_nonblock(unmap(0x1000, 0x3000)?)
            .map(|g| g.end())
            .is_ok();
        let refused = reap_while_held(&mm, &lock, &scope, unmap(0x1000, 0x3000)?)?;
        sub.unregister()?;
        (scope.take(), free_ok, refused)
    };
    f.see(format!(
        "try_lock in the non-blockable start: lock free -> start {}, lock held by another thread -> start {}: {}",
        if free_ok { "succeeded" } else { "refused" },
        if refused { "refused" } else { "succeeded" },
        describe_reports(&trying)
    ));
    f.check(
        "try_lock: succeeds when free, refuses when held, no report",
        free_ok && refused && trying.is_empty(),
    );
    f.keep("try_lock", &trying);
    Ok(f)
}

// ------------------------------------------------------------------ 6. seed000-atomic

/// A hardware-TLB notifier (an IOMMU's shape).
struct Iommu {
    mutex: Mutex<u64>,
    spin: SpinLock<u64>,
    sleeps: bool,
}

impl MmuNotifierOps for Iommu {
    fn capabilities(&self) -> Capabilities {
        Capabilities::ARCH_INVALIDATE_SECONDARY_TLBS
    }
    fn arch_invalidate_secondary_tlbs(&self, _mm: &Mm, _start: u64, _end: u64) {
        if self.sleeps {
            *self.mutex.lock() += 1;
        } else {
            *self.spin.lock() += 1;
        }
    }
}

fn seed000_with(sleeps: bool, label: &str) -> Result<Vec<Report>> {
    let scope = Scope::new();
    let key = DynamicKey::new(format!("iommu->lock[tour seed000 {label}]"));
    let (mm, _diag) = mm_with(Profile::Current);
    let sub = mm.register(Iommu {
        mutex: Mutex::new(0, &key),
        spin: SpinLock::new(0, &key),
        sleeps,
    })?;
    mm.arch_invalidate_secondary_tlbs(0x1000, 0x2000);
    sub.unregister()?;
    Ok(scope.take())
}

fn seed000_atomic() -> Result<Finding> {
    let mut f = Finding::default();
    let sleeping = seed000_with(true, "mutex")?;
    let bad = of_kind(&sleeping, ReportKind::SleepingInInvalidContext);
    let ctx = bad.first().and_then(|r| r.context.as_ref());
    f.see(format!(
        "mutex    in arch_invalidate_secondary_tlbs: {}{}",
        describe_reports(&sleeping),
        ctx.map(|c| format!(" (in_atomic: {}, non_block: {})", c.in_atomic, c.non_block))
            .unwrap_or_default()
    ));
    f.check(
        "mutex: one SleepingInInvalidContext with in_atomic: 1",
        bad.len() == 1 && ctx.is_some_and(|c| c.in_atomic == 1),
    );
    f.keep("mutex", &sleeping);

    let spinning = seed000_with(false, "spinlock")?;
    f.see(format!(
        "spinlock in arch_invalidate_secondary_tlbs: {}",
        describe_reports(&spinning)
    ));
    f.check("spinlock: no report", spinning.is_empty());
    f.keep("spinlock", &spinning);
    Ok(f)
}

// ------------------------------------------------------------------ 7. race

/// The race step's source: `None` when the step must be skipped (the reason is in `f`).
fn race_source(arg: SourceArg, f: &mut Finding) -> Result<Option<(RaceSource, Option<String>)>> {
    if arg == SourceArg::Bracketed {
        return Ok(Some((RaceSource::Bracketed, None)));
    }
    let host = hostmm::HostMm::new();
    match Source::auto(&host, MonitorConfig::default()).context("probing userfaultfd")? {
        (Source::Uffd(_), _) => Ok(Some((RaceSource::Uffd, None))),
        (Source::Bracketed, why) => {
            let why = why.map_or_else(|| "uffd unavailable".to_owned(), |e| e.to_string());
            if arg == SourceArg::Auto {
                f.notes.push(format!(
                    "userfaultfd cannot be used here ({why}): falling back to the bracketed source"
                ));
                Ok(Some((RaceSource::Bracketed, Some(why))))
            } else {
                f.notes.push(format!(
                    "userfaultfd cannot be used here ({why}): race skipped (--source auto \
                     falls back to the bracketed source)"
                ));
                Ok(None)
            }
        }
    }
}

fn race(args: &TourArgs) -> Result<Finding> {
    let mut f = Finding::default();
    if args.deny_uffd {
        hostmm::testing::deny_userfaultfd_in_this_thread(crate::libc_eperm())
            .context("installing the seccomp filter for --deny-uffd")?;
    }
    let Some((source, fallback_reason)) = race_source(args.source, &mut f)? else {
        f.skipped = true;
        f.see("not run");
        return Ok(f);
    };
    let config = RaceConfig {
        rounds: args.rounds,
        source,
        seed: args.seed,
        ..RaceConfig::default()
    };
    // Any lockdep report from the race's threads (the notifier core is annotated) is counted
    // here; it is printed as well, since those threads are not in a scope.
    let lockdep_reports = Arc::new(AtomicU64::new(0));
    {
        let n = lockdep_reports.clone();
        lockdep::set_report_hook(Some(Box::new(move |_| {
            n.fetch_add(1, Ordering::Relaxed);
        })));
    }
    let pb = crate::progress_bar(args.rounds, args.json);
    let result = crate::race_replace::run(&config, |done| {
        if let Some(pb) = &pb {
            pb.set_position(done);
        }
    });
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    lockdep::set_report_hook(None);
    let report = result.with_context(|| format!("race with the {} source", source.name()))?;
    let lockdep_reports = lockdep_reports.load(Ordering::Relaxed);
    let secs = report.elapsed.as_secs_f64();
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    f.see(format!(
        "source {}: {} rounds, {} replacements (munmap+mmap / mremap), {} invalidations seen by the cache",
        report.source, report.rounds, report.replacements, report.cache.invalidations
    ));
    f.see(format!(
        "checked {} rounds against the mapping in place ({} also by physical frame): {} stale",
        report.checked, report.frame_checked, report.stale
    ));
    f.see(format!(
        "lookups {} (failed {}: range gone or not ready), hits {}, misses {}, retries {}",
        report.lookups,
        report.failed_lookups,
        report.cache.hits,
        report.cache.misses,
        report.cache.retries
    ));
    f.see(format!(
        "{secs:.2} s: {:.0} rounds/s, {:.0} replacements/s; lockdep reports during the race: {lockdep_reports}",
        per_s(report.rounds),
        per_s(report.replacements)
    ));
    f.check(
        format!("all {} rounds ran", args.rounds),
        report.rounds == args.rounds,
    );
    f.check(
        "at least one round had a registration to check",
        report.checked > 0,
    );
    f.check("0 stale registrations", report.stale == 0);
    f.race = Some(RaceStats {
        race: crate::RaceJson::new(&report, fallback_reason),
        rounds_per_s: per_s(report.rounds),
        lockdep_reports,
    });
    Ok(f)
}

// ------------------------------------------------------------------ the seeds as the whole system

fn hung_names(o: &scenarios::Outcome) -> String {
    if o.hung.is_empty() {
        return "no hung task".to_owned();
    }
    o.hung
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs a seed's scenario files — the very files `mmnotify run scenarios/*.toml` runs, compiled
/// into the binary — so the tour and `run` cannot disagree: each must hold.
fn run_files(f: &mut Finding, names: &[&str]) {
    for name in names {
        let file = format!("scenarios/{name}.toml");
        match scenario::builtin::run_named(name, &scenario::RunOptions::default()) {
            Ok(o) => {
                f.see(format!(
                    "{file}: {} ({} expectation(s), {} ms)",
                    if o.passed {
                        "every expectation holds"
                    } else {
                        "FAILED"
                    },
                    o.expectations.len(),
                    o.duration_ms
                ));
                for e in o.expectations.iter().filter(|e| !e.passed) {
                    f.see(format!(
                        "  line {}: {} (observed: {})",
                        e.line, e.expectation, e.observed
                    ));
                }
                for u in &o.unexpected {
                    f.see(format!("  unexpected: {u}"));
                }
                if let Some(e) = &o.step_error {
                    f.see(format!("  step: {e}"));
                }
                f.check(format!("{file} holds"), o.passed);
            }
            Err(e) => f.check(format!("{file} loads ({e})"), false),
        }
    }
}

fn seed000_system() -> Result<Finding> {
    let mut f = Finding::default();
    run_files(
        &mut f,
        &[
            "seed-000-gntdev-4.12-buggy",
            "seed-000-gntdev-4.12-buggy-pressure",
            "seed-000-gntdev-fixed",
        ],
    );
    let o = scenarios::seed000_validator()?;
    let atomic = o.sleeping_in("gntdev.rs");
    f.see(format!(
        "4.12, one gntdev_mmap and one reclaim pass, no pressure: {}",
        describe_reports(&o.reports)
    ));
    f.check(
        "4.12 without pressure: sleeping in atomic context in the per-page callback",
        atomic
            .first()
            .and_then(|r| r.context.as_ref())
            .is_some_and(|c| c.in_atomic >= 1),
    );
    f.check(
        "4.12 without pressure: the ptl / priv->lock cycle",
        !o.cycles("&priv->lock").is_empty(),
    );
    f.keep("4.12 without pressure", &o.reports);
    let o = scenarios::seed000_pressure(true, scenarios::HANG_LIMIT)?;
    f.see(format!(
        "4.12 under pressure ({} direct reclaims): {}",
        o.direct_reclaim,
        hung_names(&o)
    ));
    f.check(
        "4.12 under pressure: the ioctl thread holding priv->lock is reported hung",
        o.hung.iter().any(|h| h.thread == "gntdev-ioctl"),
    );
    let o = scenarios::seed000_pressure(false, scenarios::HANG_LIMIT)?;
    f.see(format!(
        "current driver under the same pressure ({} direct reclaims): {}, {}, {} stale access(es)",
        o.direct_reclaim,
        hung_names(&o),
        describe_reports(&o.reports),
        o.violations.len()
    ));
    f.check(
        "current driver: pressure, and nothing wrong",
        o.direct_reclaim > 0 && o.is_clean(),
    );
    f.notes.push(scenarios::HOCKO.to_owned());
    Ok(f)
}

fn seed001_system() -> Result<Finding> {
    let mut f = Finding::default();
    run_files(
        &mut f,
        &[
            "seed-001-odp-gfp-kernel-buggy",
            "seed-001-odp-gfp-noio-buggy",
            "seed-001-odp-gfp-atomic-fixed",
        ],
    );
    for (gfp, name) in [(Gfp::KERNEL, "GFP_KERNEL"), (Gfp::NOIO, "GFP_NOIO")] {
        let o = scenarios::seed001(gfp)?;
        f.see(format!(
            "{name} under umem_mutex: {} ({} pages reclaimed)",
            describe_reports(&o.reports),
            o.reclaimed
        ));
        f.check(
            format!("{name}: reported through umem_mutex, reclaim never ran"),
            !o.cycles("&umem_odp->umem_mutex").is_empty() && o.reclaimed == 0,
        );
        f.keep(name, &o.reports);
    }
    let o = scenarios::seed001(Gfp::ATOMIC)?;
    f.see(format!(
        "GFP_ATOMIC under umem_mutex: {}",
        describe_reports(&o.reports)
    ));
    f.check("GFP_ATOMIC: nothing", o.is_clean());
    Ok(f)
}

fn seed002_system() -> Result<Finding> {
    let mut f = Finding::default();
    run_files(
        &mut f,
        &[
            "seed-002-userptr-5.7-buggy",
            "seed-002-userptr-5.7-buggy-pressure",
            "seed-002-userptr-fixed",
        ],
    );
    let o = scenarios::seed002_validator()?;
    f.see(format!(
        "5.7 design, populate then DONTNEED, no pressure: {}",
        describe_reports(&o.reports)
    ));
    f.check(
        "5.7 design: a lock-order report on obj->mm.lock",
        !o.cycles("&obj->mm.lock").is_empty(),
    );
    f.keep("5.7 design", &o.reports);
    let o = scenarios::seed002_pressure(true, scenarios::HANG_LIMIT)?;
    f.see(format!(
        "5.7 design under pressure ({} direct reclaims): {}",
        o.direct_reclaim,
        hung_names(&o)
    ));
    f.check(
        "5.7 design under pressure: the populating thread waits for its own object",
        o.hung.iter().any(|h| h.thread == "i915-get-pages"),
    );
    let o = scenarios::seed002_pressure(false, scenarios::HANG_LIMIT)?;
    f.see(format!(
        "current design under the same pressure ({} direct reclaims): {}, {}, GPU read {}",
        o.direct_reclaim,
        hung_names(&o),
        describe_reports(&o.reports),
        o.guest_fault
            .as_ref()
            .map_or("right".to_owned(), |e| format!("{e:?}"))
    ));
    f.check(
        "current design: populated under pressure, nothing wrong",
        o.direct_reclaim > 0 && o.is_clean() && o.guest_fault.is_none(),
    );
    f.notes.push(drivers::userptr::GUNTHORPE.to_owned());
    Ok(f)
}

fn seed003_system() -> Result<Finding> {
    let mut f = Finding::default();
    run_files(
        &mut f,
        &["seed-003-odp-sleep-buggy", "seed-003-odp-trylock-fixed"],
    );
    let o = scenarios::seed003(NonBlock::Sleep)?;
    let bad = o.sleeping_in("odp.rs");
    f.see(format!(
        "mutex in the reaper's range: {}",
        describe_reports(&o.reports)
    ));
    f.check(
        "mutex: SleepingInInvalidContext with non_block: 1",
        bad.first()
            .and_then(|r| r.context.as_ref())
            .is_some_and(|c| c.non_block == 1),
    );
    f.keep("mutex", &o.reports);
    let o = scenarios::seed003(NonBlock::TryLock)?;
    let reap = o.reap.clone().unwrap_or_default();
    f.see(format!(
        "trylock, mutex held by a device fault: {} refusal(s); {reap}",
        o.refusals
    ));
    f.check(
        "trylock: refused, retried, reaped, nothing reported",
        o.refusals >= 1
            && reap.attempts >= 2
            && !reap.gave_up
            && reap.reaped_pages == 8
            && o.is_clean(),
    );
    Ok(f)
}

fn seed004_system() -> Result<Finding> {
    let mut f = Finding::default();
    run_files(
        &mut f,
        &[
            "seed-004-kvm-odp-pre-5.12-buggy",
            "seed-004-kvm-odp-current-fixed",
        ],
    );
    let o = scenarios::seed004(Profile::Pre5_12)?;
    f.see(format!(
        "Profile::Pre5_12, KVM 4.19 + ODP 4.19: {}; mmu_invalidate_in_progress {:?}; guest fault: {:?}; {}",
        o.reap.clone().unwrap_or_default(),
        o.kvm_in_progress,
        o.guest_fault,
        o.unbalanced
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    ));
    f.check(
        "pre-5.12: the count stays raised, the guest fault is stuck, KVM's start unpaired",
        o.kvm_in_progress.is_some_and(|n| n >= 1)
            && o.guest_fault_stuck
            && o.unbalanced.iter().any(|u| u.driver == "kvm-4.19"),
    );
    let o = scenarios::seed004(Profile::Current)?;
    f.see(format!(
        "current, KVM + ODP (interval): {}; mmu_invalidate_in_progress {:?}; guest fault: {:?}",
        o.reap.clone().unwrap_or_default(),
        o.kvm_in_progress,
        o.guest_fault
    ));
    f.check(
        "current: the 4.19 ODP cannot register, every start paired, the guest fault completes",
        o.registration_refused == Some(true)
            && o.kvm_in_progress == Some(0)
            && !o.guest_fault_stuck
            && o.guest_fault.is_some()
            && o.is_clean(),
    );
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_breaks_at_100_columns_and_keeps_padding() {
        let text = format!("{:<8}x {}", "a", "word ".repeat(30));
        let wrapped = wrap(text.trim_end(), 4);
        assert!(wrapped.starts_with("a       x word"), "{wrapped}");
        assert!(wrapped.lines().all(|l| l.len() <= 100), "{wrapped}");
        assert!(wrapped.lines().skip(1).all(|l| l.starts_with("    word")));
        assert_eq!(wrap("short", 10), "short");
    }

    #[test]
    fn step_names_are_the_ones_clap_accepts() {
        for step in Step::ALL {
            assert_eq!(Step::from_str(step.name(), false), Ok(step));
        }
        assert_eq!(Step::value_variants().len(), Step::ALL.len());
    }
}
