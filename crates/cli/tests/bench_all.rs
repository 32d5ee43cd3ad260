//! `mmnotify bench --all --quick`: the whole performance table runs, every row is there (or
//! marked skipped with a reason), and the JSON and Markdown forms agree. Bounded: the child is
//! killed after two minutes (a quick run takes about a second in a debug build).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// Every row `--all` must print, whatever the machine (more `scaling_N` rows on more cores).
const IDS: [&str; 16] = [
    "list_dispatch_1",
    "list_dispatch_4",
    "read_side",
    "invalidate_1_of_n",
    "interval_insert",
    "scaling_1",
    "scaling_2",
    "cache_hit",
    "wake_rtt",
    "wake_rtt_pinned",
    "munmap_uffd",
    "munmap_bracketed",
    "munmap_uffd_pinned",
    "munmap_bracketed_pinned",
    "validator_pair",
    "validator_pair_off",
];

fn bench_all(extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmnotify"))
        .args(["bench", "--all", "--quick"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > LIMIT {
            child.kill().unwrap();
            panic!("bench --all --quick ran past {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn bench_all_quick_json_has_every_row_measured_or_marked_skipped() {
    let out = bench_all(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["quick"], true);
    let rows = v["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    for id in IDS {
        assert!(ids.contains(&id), "row {id} missing: {ids:?}");
    }
    let threads = v["threads"].as_array().unwrap();
    assert_eq!(
        ids.iter().filter(|i| i.starts_with("scaling_")).count(),
        threads.len()
    );
    for r in rows {
        let path = r["path"].as_str().unwrap();
        assert!(r["target"].is_string(), "{r}");
        if path.contains("skipped (") {
            // Not measured here: said so, and never counted as met.
            assert!(r["value"].is_null() && r["met"].is_null(), "{r}");
            eprintln!("{path}");
            continue;
        }
        let value = r["value"].as_f64().unwrap_or_else(|| panic!("{r}"));
        assert!(value > 0.0, "{r}");
        if r["baseline"].is_string() {
            let base = r["baseline_value"].as_f64().unwrap();
            let ratio = r["ratio"].as_f64().unwrap();
            assert!(
                (ratio - value / base).abs() <= 1e-9 * ratio.abs().max(1.0),
                "{r}"
            );
        }
        if r["target"] != "report" {
            assert!(r["met"].is_boolean(), "a target is judged: {r}");
        }
    }
    // The uffd munmap is held to the wake round trip measured in the same run.
    let uffd = rows.iter().find(|r| r["id"] == "munmap_uffd").unwrap();
    let rtt = rows.iter().find(|r| r["id"] == "wake_rtt").unwrap();
    if let (Some(_), Some(floor)) = (uffd["value"].as_f64(), rtt["value"].as_f64()) {
        let target = uffd["target"].as_str().unwrap();
        assert!(
            target.contains(&format!("{floor:.2}")),
            "{target} vs {floor}"
        );
    }
}

#[test]
fn bench_all_quick_prints_one_markdown_table() {
    let out = bench_all(&[]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "| path | mmnotify | baseline, same run | ratio | target | met? |"
    );
    assert!(lines.iter().all(|l| l.starts_with('|') && l.ends_with('|')));
    assert!(lines.len() >= 2 + IDS.len(), "{stdout}");
}
