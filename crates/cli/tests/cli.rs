//! The `mmnotify` binary: arguments, output formats, the fallback.

use std::process::Command;

fn mmnotify(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mmnotify"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn race_prints_rounds_and_stale() {
    let out = mmnotify(&["race", "--rounds", "200", "--source", "bracketed"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().next().unwrap() == "rounds=200 stale=0",
        "{stdout}"
    );
}

#[test]
fn race_json_is_machine_readable() {
    let out = mmnotify(&[
        "race", "--rounds", "100", "--source", "auto", "--json", "--seed", "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rounds"], 100);
    assert_eq!(v["stale"], 0);
    assert_eq!(v["seed"], 3);
}

#[test]
fn a_process_without_uffd_falls_back_cleanly() {
    let out = mmnotify(&[
        "race",
        "--rounds",
        "100",
        "--source",
        "auto",
        "--deny-uffd",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "bracketed");
    assert!(
        v["fallback_reason"].as_str().unwrap().contains("EPERM"),
        "{v}"
    );
    assert_eq!(v["stale"], 0);
}

#[test]
fn uffd_denied_without_auto_is_a_clear_error() {
    let out = mmnotify(&["race", "--rounds", "10", "--source", "uffd", "--deny-uffd"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EPERM") && err.contains("--source auto"),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_rejected_with_a_message() {
    for args in [
        &["race", "--rounds", "0"][..],
        &["race", "--source", "kdreg2"],
        &["race", "--rounds", "many"],
        &["race", "--pages", "0"],
        &["frobnicate"],
    ] {
        let out = mmnotify(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("error"),
            "{args:?}"
        );
    }
}

#[test]
fn bench_quick_json_reports_ratios() {
    let out = mmnotify(&["bench", "--quick", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert!(rows.len() >= 6);
    assert!(rows
        .iter()
        .any(|r| r["name"].as_str().unwrap().starts_with("cache hit") && r["ratio"].is_number()));
}
