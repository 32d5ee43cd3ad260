//! Checking a run's observations against the scenario's expectations, and finding what no
//! expectation allows.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use drivers::checker::Unbalanced;
use drivers::Violation;
use lockdep::{Report, ReportKind};
use vmsim::HungTask;

use crate::load::Loaded;
use crate::outcome::{
    ExpectationResult, HangSummary, Observed, Outcome, ReportSummary, UnbalancedSummary,
    ViolationSummary,
};
use crate::schema::{CounterName, Expect, KindName, Subject};
use crate::world::{Drv, World};
use sync_prims::lock;

/// What a run observed, before judging.
#[derive(Default)]
pub(crate) struct Raw {
    pub(crate) reports: Vec<Report>,
    pub(crate) hangs: Vec<HungTask>,
    pub(crate) leaked: Vec<String>,
    pub(crate) violations: Vec<Violation>,
    pub(crate) unbalanced: Vec<Unbalanced>,
    pub(crate) counters: BTreeMap<String, u64>,
    pub(crate) invariant: Option<String>,
}

/// The name of a counter in files and output.
pub fn counter_name(c: CounterName) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The scenario-file name of a report kind.
pub fn kind_name(k: ReportKind) -> &'static str {
    match k {
        ReportKind::PossibleCircularLockingDependency => "circular-locking",
        ReportKind::ReclaimInversion => "reclaim-inversion",
        ReportKind::RecursiveLocking => "recursive-locking",
        ReportKind::ReclaimRecursion => "reclaim-recursion",
        ReportKind::SleepingInInvalidContext => "sleeping-in-invalid-context",
        ReportKind::BadUnlock => "bad-unlock",
        ReportKind::HeldAtExit => "held-at-exit",
        ReportKind::UnbalancedNonBlockEnd => "unbalanced-non-block-end",
        ReportKind::ChainTableFull => "chain-table-full",
    }
}

pub(crate) fn counters(w: &World) -> BTreeMap<String, u64> {
    let s = w.m.stats();
    let reaps = w.m.oom_reports();
    let kvm: i64 = lock(&w.drivers)
        .values()
        .map(|d| match &d.drv {
            Drv::Kvm(k) => k.in_progress(),
            _ => 0,
        })
        .sum();
    let values = [
        (CounterName::Faults, s.faults),
        (CounterName::Cow, s.cow),
        (CounterName::SwapOut, s.swap_out),
        (CounterName::SwapIn, s.swap_in),
        (CounterName::Reclaimed, s.reclaimed),
        (CounterName::DirectReclaim, s.direct_reclaim),
        (CounterName::Referenced, s.referenced),
        (CounterName::OomKills, s.oom_kills),
        (CounterName::AllocFailures, s.alloc_failures),
        (
            CounterName::OomReapAttempts,
            reaps.iter().map(|r| u64::from(r.attempts)).sum(),
        ),
        (
            CounterName::OomReapedPages,
            reaps.iter().map(|r| r.reaped_pages as u64).sum(),
        ),
        (
            CounterName::OomGaveUp,
            reaps.iter().filter(|r| r.gave_up).count() as u64,
        ),
        (CounterName::Refusals, w.refusals()),
        (CounterName::KvmInProgress, kvm.max(0) as u64),
        (CounterName::DeviceAccesses, w.checker.accesses()),
        (
            CounterName::ThreadErrors,
            w.thread_errors.load(Ordering::Relaxed),
        ),
        (
            CounterName::AllowedErrors,
            w.allowed_errors.load(Ordering::Relaxed),
        ),
    ];
    values
        .into_iter()
        .map(|(k, v)| (counter_name(k), v))
        .collect()
}

fn kind_matches(want: Option<KindName>, k: ReportKind) -> bool {
    match want {
        None | Some(KindName::Any) => true,
        Some(KindName::Cycle) => k.is_cycle() || k == ReportKind::RecursiveLocking,
        Some(w) => {
            let name = serde_json::to_value(w).ok();
            name.as_ref().and_then(|v| v.as_str()) == Some(kind_name(k))
        }
    }
}

fn report_matches(e: &Expect, r: &Report) -> bool {
    kind_matches(e.kind, r.kind)
        && e.lock.as_ref().is_none_or(|l| r.involves(l))
        && e.file.as_ref().is_none_or(|f| {
            r.location
                .as_ref()
                .is_some_and(|l| l.file.ends_with(f.as_str()))
        })
        && e.contains
            .as_ref()
            .is_none_or(|c| r.to_string().contains(c.as_str()))
}

fn hang_matches(e: &Expect, h: &HangSummary) -> bool {
    e.thread.as_ref().is_none_or(|t| &h.thread == t)
        && e.contains
            .as_ref()
            .is_none_or(|c| h.text.contains(c.as_str()))
}

fn violation_matches(e: &Expect, v: &ViolationSummary) -> bool {
    e.driver.as_ref().is_none_or(|d| &v.driver == d)
        && e.contains
            .as_ref()
            .is_none_or(|c| v.text.contains(c.as_str()))
}

fn unbalanced_matches(e: &Expect, u: &UnbalancedSummary) -> bool {
    e.driver.as_ref().is_none_or(|d| &u.driver == d)
}

/// The expectation in words.
pub fn describe(e: &Expect) -> String {
    let (verb, subject) = match (e.must, e.must_not, e.may) {
        (Some(s), _, _) => ("must", s),
        (_, Some(s), _) => ("must not", s),
        (_, _, Some(s)) => ("may", s),
        _ => ("?", Subject::Report),
    };
    let mut s = format!("{verb} {}", format!("{subject:?}").to_lowercase());
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            s.push_str(&format!(" {k}={v}"));
        }
    };
    add(
        "kind",
        e.kind
            .and_then(|k| serde_json::to_value(k).ok())
            .and_then(|v| v.as_str().map(str::to_owned)),
    );
    add("lock", e.lock.as_ref().map(|l| format!("`{l}`")));
    add("file", e.file.clone());
    add("contains", e.contains.as_ref().map(|c| format!("{c:?}")));
    add("thread", e.thread.clone());
    add("driver", e.driver.clone());
    add("counter", e.counter.map(counter_name));
    add("equals", e.equals.map(|v| v.to_string()));
    add("at_least", e.at_least.map(|v| v.to_string()));
    add("at_most", e.at_most.map(|v| v.to_string()));
    s
}

fn count_ok(e: &Expect, n: u64) -> bool {
    if let Some(eq) = e.equals {
        return n == eq;
    }
    n >= e.at_least.unwrap_or(1) && e.at_most.is_none_or(|hi| n <= hi)
}

fn summarize(raw: &Raw) -> Observed {
    let mut hangs: Vec<HangSummary> = raw
        .hangs
        .iter()
        .map(|h| HangSummary {
            thread: h.thread.clone(),
            text: h.to_string(),
        })
        .collect();
    for t in &raw.leaked {
        if !hangs.iter().any(|h| &h.thread == t) {
            hangs.push(HangSummary {
                thread: t.clone(),
                text: format!("thread {t} never finished (not reported by the watchdog)"),
            });
        }
    }
    Observed {
        reports: raw
            .reports
            .iter()
            .map(|r| ReportSummary {
                kind: kind_name(r.kind).to_owned(),
                title: r.kind.title().to_owned(),
                classes: r.classes().into_iter().map(str::to_owned).collect(),
                thread: r.thread.name.clone(),
                location: r.location.as_ref().map(|l| l.to_string()),
                text: r.to_string(),
            })
            .collect(),
        hangs,
        violations: raw
            .violations
            .iter()
            .map(|v| ViolationSummary {
                driver: v.driver.clone(),
                addr: v.addr,
                text: v.to_string(),
            })
            .collect(),
        unbalanced: raw
            .unbalanced
            .iter()
            .map(|u| UnbalancedSummary {
                driver: u.driver.clone(),
                outstanding: u.outstanding,
            })
            .collect(),
        counters: raw.counters.clone(),
        invariant: raw.invariant.clone(),
    }
}

fn short_report(r: &ReportSummary) -> String {
    format!(
        "{} [{}] on {}{}",
        r.kind,
        r.classes.join(" -> "),
        r.thread,
        r.location
            .as_ref()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default()
    )
}

pub(crate) fn evaluate(
    loaded: &Loaded,
    raw: Raw,
    seed: u64,
    step_error: Option<String>,
    elapsed: Duration,
) -> Outcome {
    let observed = summarize(&raw);
    let mut results = Vec::new();
    let allows = |e: &Expect, s: Subject| e.must == Some(s) || e.may == Some(s);
    let expects: Vec<(usize, &Expect)> = loaded
        .scenario
        .expects
        .iter()
        .map(|e| (loaded.position(&e.span()).0, e.get_ref()))
        .collect();
    for &(line, e) in &expects {
        let subject = e.must.or(e.must_not).or(e.may).unwrap_or(Subject::Report);
        let (n, seen): (u64, String) = match subject {
            Subject::Report => {
                let m: Vec<String> = raw
                    .reports
                    .iter()
                    .zip(&observed.reports)
                    .filter(|(r, _)| report_matches(e, r))
                    .map(|(_, s)| short_report(s))
                    .collect();
                let all: Vec<String> = observed.reports.iter().map(short_report).collect();
                (
                    m.len() as u64,
                    format!(
                        "{} matching of {} report(s){}",
                        m.len(),
                        all.len(),
                        if all.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", all.join("; "))
                        }
                    ),
                )
            }
            Subject::Hang => {
                let m = observed.hangs.iter().filter(|h| hang_matches(e, h)).count();
                let all: Vec<&str> = observed.hangs.iter().map(|h| h.text.as_str()).collect();
                (
                    m as u64,
                    format!(
                        "{m} matching of {} hung task(s){}",
                        all.len(),
                        if all.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", all.join("; "))
                        }
                    ),
                )
            }
            Subject::Violation => {
                let m = observed
                    .violations
                    .iter()
                    .filter(|v| violation_matches(e, v))
                    .count();
                let first = observed
                    .violations
                    .first()
                    .map(|v| format!(", first: {}", v.text.lines().next().unwrap_or("")))
                    .unwrap_or_default();
                (
                    m as u64,
                    format!(
                        "{m} matching of {} violation(s){first}",
                        observed.violations.len()
                    ),
                )
            }
            Subject::Unbalanced => {
                let m: Vec<&UnbalancedSummary> = observed
                    .unbalanced
                    .iter()
                    .filter(|u| unbalanced_matches(e, u))
                    .collect();
                let n = m.iter().map(|u| u.outstanding.unsigned_abs()).max();
                (
                    m.len() as u64,
                    format!(
                        "{} unbalanced subscriber(s) match (largest count {})",
                        m.len(),
                        n.unwrap_or(0)
                    ),
                )
            }
            Subject::Counter => {
                let name = e.counter.map(counter_name).unwrap_or_default();
                let v = observed.counters.get(&name).copied().unwrap_or(0);
                (v, format!("{name} = {v}"))
            }
        };
        let passed = if e.must.is_some() {
            count_ok(e, n)
        } else if e.must_not.is_some() {
            n == 0
        } else {
            true
        };
        results.push(ExpectationResult {
            line,
            expectation: describe(e),
            passed,
            observed: seen,
        });
    }
    let mut unexpected = Vec::new();
    let allowed =
        |s: Subject, f: &dyn Fn(&Expect) -> bool| expects.iter().any(|(_, e)| allows(e, s) && f(e));
    for (r, s) in raw.reports.iter().zip(&observed.reports) {
        if !allowed(Subject::Report, &|e| report_matches(e, r)) {
            unexpected.push(format!("report: {}", short_report(s)));
        }
    }
    for h in &observed.hangs {
        if !allowed(Subject::Hang, &|e| hang_matches(e, h)) {
            unexpected.push(format!("hang: {}", h.text));
        }
    }
    for v in &observed.violations {
        if !allowed(Subject::Violation, &|e| violation_matches(e, v)) {
            unexpected.push(format!(
                "violation: {}",
                v.text.lines().next().unwrap_or("")
            ));
        }
    }
    for u in &observed.unbalanced {
        if !allowed(Subject::Unbalanced, &|e| unbalanced_matches(e, u)) {
            unexpected.push(format!(
                "unbalanced: driver {} has {} start(s) without an end",
                u.driver, u.outstanding
            ));
        }
    }
    let passed = step_error.is_none()
        && results.iter().all(|r| r.passed)
        && unexpected.is_empty()
        && observed.invariant.is_none();
    Outcome {
        name: loaded.scenario.name.clone(),
        file: loaded.file.clone(),
        passed,
        seed,
        step_error,
        expectations: results,
        unexpected,
        leaked_threads: raw.leaked.clone(),
        observed,
        duration_ms: elapsed.as_millis() as u64,
        reports: raw.reports,
    }
}
