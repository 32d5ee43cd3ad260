//! The adversary's brk and file patterns: refused where the source does not cover them, and the
//! stale check's teeth — the same runs with every change bypassing the bracketed source must
//! report stale lookups (the CI-sized runs that must report none are in `tests/cli.rs`).

use std::process::{Command, Output};

fn race(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmnotify"))
        .arg("race")
        .args(args)
        .args(["--mutators", "2", "--lookers", "2", "--hang-secs", "60"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// The file patterns under uffd: the cache itself refuses the memfd mapping, with the typed
/// error (`Error::UncoveredMapping`, kind shared) as the cause.
#[test]
fn file_patterns_are_refused_by_the_cache_under_uffd() {
    for pattern in ["punch-hole", "truncate", "remove"] {
        let out = race(&["--pattern", pattern, "--source", "uffd", "--rounds", "100"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("EPERM") {
            eprintln!("skipping: {stderr}");
            return;
        }
        assert!(!out.status.success(), "{pattern} ran under uffd: {stderr}");
        assert!(
            stderr.contains(&format!(
                "pattern {pattern} is not covered by the uffd source: the cache refuses"
            )) && stderr.contains("is a shared (shmem, memfd or MAP_SHARED file) mapping"),
            "{pattern}: {stderr}"
        );
    }
}

/// brk under bracketed: nothing brackets the break, so the adversary refuses to claim it.
#[test]
fn brk_is_refused_under_the_bracketed_source() {
    let out = race(&[
        "--pattern",
        "brk",
        "--source",
        "bracketed",
        "--rounds",
        "100",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("brk is not covered by the bracketed source"),
        "{stderr}"
    );
}

/// The teeth: the brk, punch-hole, truncate and remove races with the changes made by the bare
/// system call (no wrapper, so the bracketed source sees nothing; for remove, a window over the
/// madvised mapping only, as the wrapper had before issue 9) must fail with stale lookups,
/// and the brk child still counts its registrations.
#[test]
fn bypassing_the_source_is_caught_as_stale() {
    for pattern in ["brk", "punch-hole", "truncate", "remove"] {
        let out = race(&[
            "--pattern",
            pattern,
            "--source",
            "bracketed",
            "--bypass",
            "--rounds",
            "20000",
            "--seconds",
            "1",
            "--json",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{pattern} passed with --bypass");
        assert!(
            stderr.contains("lookups returned a stale registration"),
            "{pattern}: {stderr}"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let p = &v["patterns"][0];
        assert_eq!(p["pattern"], pattern);
        assert_eq!(p["bypass"], true);
        assert!(p["stale"].as_u64().unwrap() > 0, "{p}");
        assert_eq!(p["invalidations"], 0, "{p}");
        assert_eq!(p["registrations"], p["deregistrations"], "{p}");
    }
}
