//! `mmnotify run FILE...`: runs scenario files and checks their expectations.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use scenario::{Outcome, RunOptions, TraceEvent};

/// Arguments of `mmnotify run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Scenario files (TOML; see scenarios/README.md).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Seed of the runner's choices: the yields each scenario thread makes before each of its
    /// steps. Scenario threads are real threads: the seed makes a run repeatable in its
    /// choices, not in the OS scheduler's interleaving.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Machine-readable output: one JSON array of outcomes on stdout.
    #[arg(long)]
    json: bool,
    /// Write each validator report of a cycle as an SVG picture into this folder.
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    /// Print every notifier event (start, end, release) as it happens, on stderr.
    #[arg(long)]
    trace: bool,
}

/// Runs `mmnotify run`: exit status 0 when every expectation of every file holds.
pub fn run(args: RunArgs) -> Result<()> {
    let trace: Option<scenario::TraceSink> = args
        .trace
        .then(|| Arc::new(|e: &TraceEvent| eprintln!("trace: {e}")) as scenario::TraceSink);
    let opts = RunOptions {
        seed: args.seed,
        trace,
    };
    if let Some(dir) = &args.svg_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut failed = Vec::new();
    for file in &args.files {
        let outcome = match scenario::run_file(file, &opts) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{e}");
                failed.push(file.display().to_string());
                continue;
            }
        };
        if let Some(dir) = &args.svg_dir {
            write_svgs(dir, &outcome)?;
        }
        if !args.json {
            print!("{outcome}");
        }
        if !outcome.passed {
            failed.push(outcome.file.clone());
        }
        outcomes.push(outcome);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        println!(
            "{} of {} scenario file(s) passed (seed {})",
            args.files.len() - failed.len(),
            args.files.len(),
            args.seed
        );
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

fn write_svgs(dir: &std::path::Path, outcome: &Outcome) -> Result<()> {
    let stem: String = outcome
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    for (i, r) in outcome.reports.iter().enumerate() {
        let path = dir.join(format!("{stem}-{}.svg", i + 1));
        std::fs::write(&path, r.to_svg()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
