//! `mmnotify run` and `mmnotify torture` from the outside: exit status, the failed expectation
//! and what was observed, JSON, SVG pictures, load errors with their position, clap's errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mmnotify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmnotify"))
        .args(args)
        .current_dir(root())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mmn-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn a_passing_file_exits_0_and_a_failing_one_1_with_what_was_observed() {
    let ok = mmnotify(&["run", "scenarios/seed-001-odp-gfp-kernel-buggy.toml"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stdout));
    assert!(text(&ok.stdout).contains("PASS seed-001-odp-gfp-kernel-buggy"));
    let src = std::fs::read_to_string(root().join("scenarios/seed-001-odp-gfp-kernel-buggy.toml"))
        .unwrap()
        .replace("must = \"report\"", "must_not = \"report\"");
    let bad = temp("wrong.toml", &src);
    let out = mmnotify(&["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out.stdout);
    assert!(
        s.contains("FAIL line") && s.contains("must not report kind=cycle"),
        "{s}"
    );
    assert!(s.contains("observed: 1 matching"), "{s}");
}

#[test]
fn json_and_svg_pictures() {
    let dir = std::env::temp_dir().join(format!("mmn-svg-{}", std::process::id()));
    let out = mmnotify(&[
        "run",
        "--json",
        "--svg-dir",
        dir.to_str().unwrap(),
        "scenarios/seed-000-gntdev-4.12-buggy.toml",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["passed"], true);
    assert!(v[0]["observed"]["reports"].as_array().unwrap().len() >= 2);
    let svgs: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert!(svgs.len() >= 2, "{svgs:?}");
    let first = std::fs::read_to_string(svgs[0].path()).unwrap();
    assert!(
        first.starts_with("<svg") || first.starts_with("<?xml"),
        "{first:.80}"
    );
}

#[test]
fn a_bad_file_names_its_line_and_column() {
    let bad = temp(
        "bad.toml",
        "name = \"x\"\n[machine]\nframes = 64\nturbo = true\n",
    );
    let out = mmnotify(&["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("bad.toml:4:1: error: unknown field `turbo`"),
        "{e}"
    );
}

#[test]
fn bad_arguments_get_clap_errors() {
    assert_eq!(mmnotify(&["run"]).status.code(), Some(2));
    assert_eq!(
        mmnotify(&["torture", "--seconds", "0"]).status.code(),
        Some(2)
    );
    assert_eq!(
        mmnotify(&["torture", "--buggy", "nope"]).status.code(),
        Some(2)
    );
}

#[test]
fn a_short_torture_passes_and_a_buggy_one_fails_with_its_replay_command() {
    let out = mmnotify(&["torture", "--seconds", "2", "--threads", "2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], true);
    assert!(v["counters"]["ops"].as_u64().unwrap() > 0);
    assert!(v["peak_rss_kib"].as_u64().unwrap() > 0);
    let out = mmnotify(&[
        "torture",
        "--seconds",
        "20",
        "--threads",
        "2",
        "--seed",
        "5",
        "--buggy",
        "set-seq-forgotten",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out.stdout);
    assert!(
        s.contains("FAIL") && s.contains("violation: BUG: stale secondary translation"),
        "{s}"
    );
    assert!(
        s.contains("replay: mmnotify torture --seconds 20 --threads 2 --seed 5 --processes 8 --frames 1024 --buggy set-seq-forgotten"),
        "{s}"
    );
}
