//! `mmnotify bench --all`: the whole performance table in one run, every figure next to its
//! baseline from the same run and its target, as one Markdown table or one JSON object.
//!
//! A row that cannot be measured here (no userfaultfd, pinning refused) is kept, marked
//! skipped with the reason, never left out.

use serde::Serialize;

use std::time::Duration;

use super::{
    hit_latency, hit_latency_interior, munmap_burst, munmap_costs, notifier, validator, wake,
    BenchConfig, BenchRow, BURST_SPIN,
};

/// What a row is held to.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// `value / baseline` at most this.
    RatioAtMost(f64),
    /// `value / baseline` at least this (throughputs).
    RatioAtLeast(f64),
    /// `value` at most this, in the row's unit.
    AtMost(f64),
    /// `value` at most the baseline plus `factor` times a floor measured in the same run.
    BaselinePlus {
        /// How many floors are allowed.
        factor: f64,
        /// What the floor is.
        floor: String,
        /// Its median, in the row's unit.
        floor_value: f64,
    },
    /// Reported for context, no target.
    Report,
}

impl Target {
    /// Whether `row` meets it: `None` when there is no target or nothing was measured.
    pub fn met(&self, row: &BenchRow) -> Option<bool> {
        if !row.value.is_finite() {
            return None;
        }
        let base = row.baseline.as_ref().map(|b| b.1).filter(|b| b.is_finite());
        match self {
            Target::RatioAtMost(x) => row.ratio().filter(|r| r.is_finite()).map(|r| r <= *x),
            Target::RatioAtLeast(x) => row.ratio().filter(|r| r.is_finite()).map(|r| r >= *x),
            Target::AtMost(x) => Some(row.value <= *x),
            Target::BaselinePlus {
                factor,
                floor_value,
                ..
            } => base
                .filter(|_| floor_value.is_finite())
                .map(|b| row.value <= b + factor * floor_value),
            Target::Report => None,
        }
    }

    /// The target in words, with the row's unit.
    pub fn describe(&self, unit: &str) -> String {
        match self {
            Target::RatioAtMost(x) => format!("≤ {x}× baseline"),
            Target::RatioAtLeast(x) => format!("≥ {x}× baseline"),
            Target::AtMost(x) => format!("≤ {x} {unit}"),
            Target::BaselinePlus {
                factor,
                floor,
                floor_value,
            } => format!("≤ baseline + {factor} × {floor} ({floor_value:.2} {unit})"),
            Target::Report => "report".into(),
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct TableRow {
    /// A stable key (`list_dispatch_1`, `munmap_uffd`, ...), for scripts and tests.
    pub id: String,
    /// The measurement.
    pub row: BenchRow,
    /// What it is held to.
    pub target: Target,
}

/// How much `--all` measures.
#[derive(Clone, Debug)]
pub struct AllConfig {
    /// Batches and operations per figure.
    pub bench: BenchConfig,
    /// Intervals in the address space of the one-among-many and insert rows.
    pub intervals: usize,
    /// Thread counts of the scaling rows.
    pub threads: Vec<usize>,
}

impl AllConfig {
    /// The full run (`quick = false`) or the CI one; thread counts 1, 2, 4, … up to the cores
    /// this process may use (at least 1 and 2).
    pub fn new(quick: bool) -> AllConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = vec![1, 2];
        while threads[threads.len() - 1] * 2 <= cores {
            threads.push(threads[threads.len() - 1] * 2);
        }
        AllConfig {
            bench: if quick {
                BenchConfig::quick()
            } else {
                BenchConfig::default()
            },
            intervals: if quick { 10_000 } else { 1_000_000 },
            threads,
        }
    }
}

fn skipped(id: &str, what: &str, unit: &'static str, err: impl std::fmt::Display) -> TableRow {
    TableRow {
        id: id.into(),
        row: BenchRow {
            name: format!("{what}: skipped ({err})"),
            value: f64::NAN,
            unit,
            baseline: None,
        },
        target: Target::Report,
    }
}

fn row(id: impl Into<String>, row: BenchRow, target: Target) -> TableRow {
    TableRow {
        id: id.into(),
        row,
        target,
    }
}

/// The munmap rows of `rows` (from [`munmap_costs`]), the uffd one held to the bare munmap
/// plus 1.2 wake round trips of `floor`.
fn munmap_rows(
    out: &mut Vec<TableRow>,
    rows: hostmm::Result<Vec<BenchRow>>,
    suffix: &str,
    floor: (&str, Option<f64>),
) {
    let id = |kind: &str| format!("munmap_{kind}{suffix}");
    match rows {
        Ok(rows) => {
            for mut r in rows {
                if !suffix.is_empty() {
                    r.name.push_str(", pinned to one core");
                }
                if r.name.contains("uffd") {
                    let target = match floor.1 {
                        Some(v) => Target::BaselinePlus {
                            factor: 1.2,
                            floor: floor.0.into(),
                            floor_value: v,
                        },
                        None => Target::Report,
                    };
                    out.push(row(id("uffd"), r, target));
                } else {
                    out.push(row(id("bracketed"), r, Target::Report));
                }
            }
        }
        Err(e) => {
            out.push(skipped(&id("uffd"), "munmap 4 KiB, uffd", "us", &e));
            out.push(skipped(
                &id("bracketed"),
                "munmap 4 KiB, bracketed",
                "us",
                e,
            ));
        }
    }
}

/// The burst rows: back-to-back munmaps bare, under uffd with the monitor sleeping between
/// events, and with it spinning [`BURST_SPIN`]; plus the monitor's CPU per munmap in each.
fn burst_rows(out: &mut Vec<TableRow>, b: &BenchConfig, rtt: Option<f64>) {
    let n = b.slow_ops;
    let bare = match munmap_burst(b, None) {
        Ok(r) => r.per_munmap,
        Err(e) => {
            out.push(skipped("munmap_burst_bare", "munmap burst, bare", "us", e));
            return;
        }
    };
    out.push(row(
        "munmap_burst_bare",
        BenchRow {
            name: format!("munmap 4 KiB in a burst of {n}, bare"),
            value: bare,
            unit: "us",
            baseline: None,
        },
        Target::Report,
    ));
    let spin_us = BURST_SPIN.as_micros();
    for (id, spin, what) in [
        (
            "off",
            Duration::ZERO,
            "monitor sleeps between events".to_string(),
        ),
        ("spin", BURST_SPIN, format!("monitor spins {spin_us} us")),
    ] {
        let rid = format!("munmap_burst_uffd_{id}");
        match munmap_burst(b, Some(spin)) {
            Ok(r) => {
                let target = match rtt {
                    Some(v) => Target::BaselinePlus {
                        factor: 1.2,
                        floor: "wake round trip".into(),
                        floor_value: v,
                    },
                    None => Target::Report,
                };
                out.push(row(
                    rid,
                    BenchRow {
                        name: format!("munmap 4 KiB in a burst of {n}, uffd, {what}"),
                        value: r.per_munmap,
                        unit: "us",
                        baseline: Some(("bare munmap in a burst".into(), bare)),
                    },
                    target,
                ));
                out.push(row(
                    format!("monitor_cpu_burst_{id}"),
                    BenchRow {
                        name: format!("uffd monitor CPU per munmap in the burst, {what}"),
                        value: r.monitor_cpu,
                        unit: "us",
                        baseline: None,
                    },
                    Target::Report,
                ));
            }
            Err(e) => out.push(skipped(&rid, "munmap burst, uffd", "us", e)),
        }
    }
}

/// Runs the whole table, in the order. Errors of one row become a skipped row.
pub fn run(cfg: &AllConfig) -> Vec<TableRow> {
    let b = &cfg.bench;
    let mut out = Vec::new();
    for n in [1, 4] {
        let id = format!("list_dispatch_{n}");
        out.push(match notifier::list_dispatch(b, n) {
            Ok(r) => row(id, r, Target::RatioAtMost(1.5)),
            Err(e) => skipped(&id, "list dispatch", "ns", e),
        });
    }
    out.push(match notifier::read_side(b) {
        Ok(r) => row("read_side", r, Target::RatioAtMost(1.5)),
        Err(e) => skipped("read_side", "read side", "ns", e),
    });
    match notifier::ManyIntervals::new(cfg.intervals) {
        Ok(many) => {
            out.push(match many.invalidate_one(b) {
                Ok(r) => row("invalidate_1_of_n", r, Target::AtMost(500.0)),
                Err(e) => skipped("invalidate_1_of_n", "one invalidation", "ns", e),
            });
            out.push(match many.insert(b) {
                Ok(r) => row("interval_insert", r, Target::AtMost(300.0)),
                Err(e) => skipped("interval_insert", "interval insert", "ns", e),
            });
            if let Err(e) = many.teardown() {
                out.push(skipped("teardown", "removing the intervals", "ns", e));
            }
        }
        Err(e) => {
            out.push(skipped("invalidate_1_of_n", "one invalidation", "ns", &e));
            out.push(skipped("interval_insert", "interval insert", "ns", e));
        }
    }
    match notifier::interval_scaling(b, &cfg.threads) {
        Ok(rows) => {
            for (r, t) in rows.into_iter().zip(&cfg.threads) {
                let target = if *t == 2 {
                    Target::RatioAtLeast(1.8)
                } else {
                    Target::Report
                };
                out.push(row(format!("scaling_{t}"), r, target));
            }
        }
        Err(e) => out.push(skipped("scaling_1", "interval scaling", "Mops/s", e)),
    }
    out.push(match hit_latency(b) {
        Ok(r) => row("cache_hit", r, Target::RatioAtMost(0.7)),
        Err(e) => skipped("cache_hit", "cache hit", "ns", e),
    });
    out.push(match hit_latency_interior(b) {
        Ok(r) => row("cache_hit_interior", r, Target::Report),
        Err(e) => skipped("cache_hit_interior", "cache hit inside a range", "ns", e),
    });

    let rtt = |pinned: bool| {
        if pinned {
            wake::on_one_core(|| wake::round_trip(b))
        } else {
            wake::round_trip(b)
        }
    };
    let mut floors = [None, None];
    for (i, (pinned, id, what)) in [
        (
            false,
            "wake_rtt",
            "thread wake round trip (pipe ping-pong, poll)",
        ),
        (
            true,
            "wake_rtt_pinned",
            "thread wake round trip, both threads pinned to one core",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(match rtt(pinned) {
            Ok(v) => {
                floors[i] = Some(v);
                let r = BenchRow {
                    name: what.into(),
                    value: v,
                    unit: "us",
                    baseline: None,
                };
                row(id, r, Target::Report)
            }
            Err(e) => skipped(id, what, "us", e),
        });
    }
    munmap_rows(
        &mut out,
        munmap_costs(b),
        "",
        ("wake round trip", floors[0]),
    );
    munmap_rows(
        &mut out,
        wake::on_one_core(|| munmap_costs(b)),
        "_pinned",
        ("pinned wake round trip", floors[1]),
    );

    burst_rows(&mut out, b, floors[0]);

    let mut pair = validator::nested_pair(b).into_iter();
    if let Some(r) = pair.next() {
        out.push(row("validator_pair", r, Target::RatioAtMost(1.5)));
    }
    for r in pair {
        out.push(row("validator_pair_off", r, Target::Report));
    }
    out
}

fn fmt_value(v: f64, unit: &str) -> String {
    if v.is_finite() {
        format!("{v:.2} {unit}")
    } else {
        "—".into()
    }
}

/// The table in Markdown: path, mmnotify, baseline (same run), ratio, target, met?
pub fn markdown(rows: &[TableRow]) -> String {
    let mut s = String::from(
        "| path | mmnotify | baseline, same run | ratio | target | met? |\n|---|---|---|---|---|---|\n",
    );
    for t in rows {
        let r = &t.row;
        let base = match &r.baseline {
            Some((name, v)) => format!("{name} {}", fmt_value(*v, r.unit)),
            None => "—".into(),
        };
        let ratio = r
            .ratio()
            .filter(|x| x.is_finite())
            .map_or("—".into(), |x| format!("{x:.2}×"));
        let met = match t.target.met(r) {
            Some(true) => "yes",
            Some(false) => "**no**",
            None if !r.value.is_finite() => "skipped",
            None => "—",
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.name,
            fmt_value(r.value, r.unit),
            base,
            ratio,
            t.target.describe(r.unit),
            met
        ));
    }
    s
}

/// One row as `--json` prints it (non-finite figures are `null`).
#[derive(Serialize)]
struct RowJson<'a> {
    id: &'a str,
    path: &'a str,
    value: Option<f64>,
    unit: &'a str,
    baseline: Option<&'a str>,
    baseline_value: Option<f64>,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

/// The table as one JSON object: `{"quick", "threads", "intervals", "rows": [...]}`.
pub fn json(cfg: &AllConfig, quick: bool, rows: &[TableRow]) -> serde_json::Result<String> {
    let finite = |v: f64| Some(v).filter(|v| v.is_finite());
    let rows: Vec<RowJson> = rows
        .iter()
        .map(|t| RowJson {
            id: &t.id,
            path: &t.row.name,
            value: finite(t.row.value),
            unit: t.row.unit,
            baseline: t.row.baseline.as_ref().map(|b| b.0.as_str()),
            baseline_value: t.row.baseline.as_ref().and_then(|b| finite(b.1)),
            ratio: t.row.ratio().and_then(finite),
            target: t.target.describe(t.row.unit),
            met: t.target.met(&t.row),
        })
        .collect();
    serde_json::to_string(&serde_json::json!({
        "quick": quick,
        "threads": cfg.threads,
        "intervals": cfg.intervals,
        "rows": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(value: f64, base: Option<f64>) -> BenchRow {
        BenchRow {
            name: "x".into(),
            value,
            unit: "ns",
            baseline: base.map(|b| ("b".into(), b)),
        }
    }

    #[test]
    fn targets_judge_ratios_bounds_and_floors() {
        assert_eq!(
            Target::RatioAtMost(1.5).met(&r(15.0, Some(10.0))),
            Some(true)
        );
        assert_eq!(
            Target::RatioAtMost(1.5).met(&r(16.0, Some(10.0))),
            Some(false)
        );
        assert_eq!(
            Target::RatioAtLeast(1.8).met(&r(17.0, Some(10.0))),
            Some(false)
        );
        assert_eq!(Target::AtMost(500.0).met(&r(499.0, None)), Some(true));
        let plus = Target::BaselinePlus {
            factor: 1.2,
            floor: "f".into(),
            floor_value: 10.0,
        };
        assert_eq!(plus.met(&r(14.0, Some(2.0))), Some(true));
        assert_eq!(plus.met(&r(14.1, Some(2.0))), Some(false));
        // Nothing measured is never "met".
        assert_eq!(Target::AtMost(500.0).met(&r(f64::NAN, None)), None);
        assert_eq!(Target::RatioAtMost(1.5).met(&r(1.0, None)), None);
    }

    #[test]
    fn thread_counts_double_up_to_the_cores() {
        let t = AllConfig::new(true).threads;
        assert_eq!(&t[..2], &[1, 2]);
        assert!(t.windows(2).all(|w| w[1] == 2 * w[0]));
    }
}
