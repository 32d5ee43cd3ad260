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

/// Issue 9's adversary in CI size: every pattern each source covers (uffd: the anonymous ones
/// and brk; bracketed: the anonymous ones and the memfd punch-hole/truncate/remove), 2 mutators
/// x 2 lookers on overlapping ranges, about a second each; every lookup checked (by frame when
/// root). `tests/adversary.rs` shows the same check reporting stale lookups when the changes
/// bypass the source.
#[test]
fn race_adversary_every_pattern_has_no_stale_lookup_and_no_leak() {
    for source in ["uffd", "bracketed"] {
        let out = mmnotify(&[
            "race",
            "--pattern",
            "all",
            "--source",
            source,
            "--rounds",
            "20000",
            "--seconds",
            "1",
            "--mutators",
            "2",
            "--lookers",
            "2",
            "--json",
            "--hang-secs",
            "60",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if source == "uffd" && stderr.contains("EPERM") {
            eprintln!("skipping uffd: {stderr}");
            continue;
        }
        assert!(out.status.success(), "{source}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["source"], source);
        assert_eq!(v["stale"], 0, "{v}");
        let patterns = v["patterns"].as_array().unwrap();
        let names: Vec<_> = patterns.iter().map(|p| p["pattern"].clone()).collect();
        let expected: &[&str] = if source == "uffd" {
            &["brk"]
        } else {
            &["punch-hole", "truncate", "remove"]
        };
        assert_eq!(patterns.len(), 6 + expected.len(), "{names:?}");
        for name in expected {
            assert!(names.contains(&(*name).into()), "{name} missing: {names:?}");
        }
        for p in patterns {
            assert_eq!(p["stale"], 0, "{p}");
            assert!(
                p["checked"].as_u64().unwrap() > 0,
                "nothing was checked: {p}"
            );
            assert!(p["ops"].as_u64().unwrap() > 0, "nothing changed: {p}");
            assert_eq!(p["registrations"], p["deregistrations"], "leak: {p}");
        }
        // mprotect away and back cannot move a pinned page: no invalidation is needed.
        let mprotect = patterns
            .iter()
            .find(|p| p["pattern"] == "mprotect")
            .unwrap();
        assert_eq!(mprotect["invalidations"], 0, "{mprotect}");
    }
}

#[test]
fn bad_arguments_are_rejected_with_a_message() {
    for args in [
        &["race", "--rounds", "0"][..],
        &["race", "--source", "kdreg2"],
        &["race", "--rounds", "many"],
        &["race", "--pages", "0"],
        &["race", "--pattern", "brk-dance"],
        &["race", "--pattern", "all", "--mutators", "0"],
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

// ------------------------------------------------------------------ tour

const TOUR_STEPS: [&str; 12] = [
    "seed004-pairing",
    "epoch-hole",
    "seed001-reclaim",
    "seed002-alloc-in-notifier",
    "seed003-non-block",
    "seed000-atomic",
    "race",
    "seed000-system",
    "seed001-system",
    "seed002-system",
    "seed003-system",
    "seed004-system",
];

fn tour_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["tour", "--json"];
    all.extend_from_slice(args);
    let out = mmnotify(&all);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn tour_passes_every_step_and_exits_0() {
    let out = mmnotify(&["tour", "--rounds", "300"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in TOUR_STEPS {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("PASS {step} ("))),
            "{step} did not pass:\n{stdout}"
        );
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("12 steps: 12 passed, 0 failed"), "{stdout}");
    // The kernel-style text of the first finding of a lockdep step.
    assert!(stdout.contains("non_block: 1"), "{stdout}");
}

#[test]
fn tour_json_has_all_twelve_steps_passed_with_lockdep_reports() {
    let steps = tour_json(&["--rounds", "200", "--source", "auto"]);
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, TOUR_STEPS);
    for s in &steps {
        assert_eq!(s["passed"], true, "{s}");
        assert_eq!(s["outcome"], "pass", "{s}");
        assert!(s["expectation"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(s["observed"].as_str().is_some_and(|o| !o.is_empty()));
        assert!(s["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true));
    }
    assert_eq!(steps[0]["seed"], "004");
    let seed001 = &steps[2]["lockdep_reports"].as_array().unwrap();
    assert_eq!(seed001.len(), 2, "GFP_KERNEL and GFP_NOIO");
    assert_eq!(seed001[0]["variant"], "GFP_KERNEL");
    assert_eq!(seed001[0]["report"]["kind"], "ReclaimInversion");
    assert!(!seed001[0]["report"]["cycle"].as_array().unwrap().is_empty());
    assert_eq!(
        steps[3]["lockdep_reports"][0]["report"]["kind"],
        "RecursiveLocking"
    );
    assert_eq!(
        steps[4]["lockdep_reports"][0]["report"]["context"]["non_block"],
        1
    );
    assert_eq!(
        steps[5]["lockdep_reports"][0]["report"]["context"]["in_atomic"],
        1
    );
    let race = &steps[6]["race"];
    assert_eq!(race["rounds"], 200);
    assert_eq!(race["stale"], 0);
}

#[test]
fn tour_only_runs_just_the_named_steps() {
    let steps = tour_json(&["--only", "seed003-non-block"]);
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0]["name"], "seed003-non-block");
    assert_eq!(steps[0]["passed"], true);

    // Repeated and comma-separated; run in tour order, once each.
    let steps = tour_json(&[
        "--only",
        "seed000-atomic,seed004-pairing",
        "--only",
        "seed000-atomic",
    ]);
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["seed004-pairing", "seed000-atomic"]);
}

#[test]
fn tour_only_with_an_unknown_step_names_the_valid_ones() {
    let out = mmnotify(&["tour", "--only", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus"), "{err}");
    for step in TOUR_STEPS {
        assert!(err.contains(step), "{step} missing from: {err}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn tour_svg_dir_gets_a_picture_of_each_report() {
    let dir = std::env::temp_dir().join(format!(
        "mmnotify-tour-svg-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let steps = tour_json(&[
        "--only",
        "seed001-reclaim,seed000-atomic",
        "--svg-dir",
        dir.to_str().unwrap(),
    ]);
    let listed: Vec<String> = steps
        .iter()
        .flat_map(|s| s["svg_files"].as_array().unwrap().clone())
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}"); // GFP_KERNEL, GFP_NOIO, mutex
    let mut on_disk: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk.len(), 3, "{on_disk:?}");
    for p in &on_disk {
        assert_eq!(p.extension().unwrap(), "svg");
        let svg = std::fs::read_to_string(p).unwrap();
        assert!(svg.contains("<svg"), "{}", p.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tour_race_without_uffd_falls_back_or_skips_cleanly() {
    let steps = tour_json(&["--only", "race", "--rounds", "50", "--deny-uffd"]);
    assert_eq!(steps[0]["outcome"], "pass");
    assert_eq!(steps[0]["race"]["source"], "bracketed");
    assert!(
        steps[0]["notes"][0].as_str().unwrap().contains("EPERM"),
        "{}",
        steps[0]
    );

    let steps = tour_json(&[
        "--only",
        "race",
        "--rounds",
        "50",
        "--source",
        "uffd",
        "--deny-uffd",
    ]);
    assert_eq!(steps[0]["outcome"], "skip");
    assert_eq!(steps[0]["passed"], false);
    assert!(steps[0]["race"].is_null());
    assert!(
        steps[0]["notes"][0].as_str().unwrap().contains("EPERM"),
        "{}",
        steps[0]
    );
}
