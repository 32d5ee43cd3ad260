//! What a run observed and how its expectations fared, as plain data (JSON via serde).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// The result of running one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The scenario's name.
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// Every expectation held, nothing unexpected was observed, every step went as judged.
    pub passed: bool,
    /// The seed of the runner's choices.
    pub seed: u64,
    /// A step that failed when it should not have (or succeeded when it should have failed);
    /// the steps after it did not run.
    pub step_error: Option<String>,
    /// Each expectation, in file order.
    pub expectations: Vec<ExpectationResult>,
    /// Observations that no `must` or `may` expectation allows.
    pub unexpected: Vec<String>,
    /// Everything observed.
    pub observed: Observed,
    /// Threads still running at the end (hung): they and the machine are left as a
    /// deadlocked kernel would leave them.
    pub leaked_threads: Vec<String>,
    /// Wall-clock time of the run.
    pub duration_ms: u64,
    /// The validator's reports, whole (for pictures).
    #[serde(skip)]
    pub reports: Vec<lockdep::Report>,
}

/// One expectation and what was found for it.
#[derive(Debug, Clone, Serialize)]
pub struct ExpectationResult {
    /// Line of the `[[expect]]` in the file.
    pub line: usize,
    /// The expectation, in words.
    pub expectation: String,
    /// Whether it held.
    pub passed: bool,
    /// What was observed for it.
    pub observed: String,
}

/// Everything a run observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    /// Validator reports.
    pub reports: Vec<ReportSummary>,
    /// Hung tasks (watchdog), and threads that never finished.
    pub hangs: Vec<HangSummary>,
    /// Coherence-checker violations.
    pub violations: Vec<ViolationSummary>,
    /// List subscribers whose starts and ends do not pair.
    pub unbalanced: Vec<UnbalancedSummary>,
    /// Counters at the end.
    pub counters: BTreeMap<String, u64>,
    /// The machine's invariants, if violated.
    pub invariant: Option<String>,
}

/// A validator report, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    /// The kind, as named in scenario files.
    pub kind: String,
    /// The kernel's headline.
    pub title: String,
    /// The lock classes of the cycle (or the lock concerned).
    pub classes: Vec<String>,
    /// The thread that hit it.
    pub thread: String,
    /// The offending call.
    pub location: Option<String>,
    /// The whole report as printed.
    pub text: String,
}

/// A hung task.
#[derive(Debug, Clone, Serialize)]
pub struct HangSummary {
    /// The thread.
    pub thread: String,
    /// The line printed.
    pub text: String,
}

/// A coherence violation.
#[derive(Debug, Clone, Serialize)]
pub struct ViolationSummary {
    /// The driver.
    pub driver: String,
    /// The page address.
    pub addr: u64,
    /// The whole violation as printed.
    pub text: String,
}

/// An unpaired list subscriber.
#[derive(Debug, Clone, Serialize)]
pub struct UnbalancedSummary {
    /// The driver.
    pub driver: String,
    /// Starts without an end.
    pub outstanding: i64,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {} ({}, {} ms)",
            if self.passed { "PASS" } else { "FAIL" },
            self.name,
            self.file,
            self.duration_ms
        )?;
        if let Some(e) = &self.step_error {
            writeln!(f, "  step failed: {e}")?;
        }
        for e in &self.expectations {
            writeln!(
                f,
                "  {} line {}: {}",
                if e.passed { "ok  " } else { "FAIL" },
                e.line,
                e.expectation
            )?;
            if !e.passed {
                writeln!(f, "       observed: {}", e.observed)?;
            }
        }
        for u in &self.unexpected {
            writeln!(f, "  FAIL unexpected: {u}")?;
        }
        if let Some(i) = &self.observed.invariant {
            writeln!(f, "  FAIL the machine's invariants: {i}")?;
        }
        if !self.leaked_threads.is_empty() {
            writeln!(
                f,
                "  hung threads left blocked: {}",
                self.leaked_threads.join(", ")
            )?;
        }
        Ok(())
    }
}
