//! The torture passes on the reference drivers and can fail: a deliberately buggy mirror is
//! caught within seconds. `SCENARIO_TORTURE_S` lengthens the clean run (default 3 s).

use std::time::Duration;

use drivers::buggy::IntervalBug;
use scenario::torture::{run, TortureConfig};

fn secs() -> u64 {
    std::env::var("SCENARIO_TORTURE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

#[test]
fn the_reference_drivers_survive_the_torture() {
    let cfg = TortureConfig {
        duration: Duration::from_secs(secs()),
        threads: 3,
        seed: 7,
        ..TortureConfig::default()
    };
    let mut snaps = 0;
    let r = run(&cfg, |_| snaps += 1);
    assert!(r.passed, "{r:#?}");
    assert!(snaps >= 2, "progress was reported");
    let c = &r.counters;
    // The workload did what it claims: every kind of operation ran.
    for k in [
        "device_ops",
        "forks",
        "numa_migrations",
        "device_migrations",
        "subscribers_joined",
        "subscribers_left",
        "invalidations",
        "injected_refusals",
        "device_accesses_checked",
        "reclaimed",
        "hogs",
    ] {
        assert!(c[k] > 0, "{k} = 0: {c:#?}");
    }
    assert!(r.peak_rss_kib > 0);
}

/// Runs the torture with `bug` attached; it must fail on that driver within 10 s.
fn caught(bug: IntervalBug, name: &str, seed: u64) {
    let cfg = TortureConfig {
        duration: Duration::from_secs(20),
        threads: 3,
        seed,
        buggy: Some(bug),
        ..TortureConfig::default()
    };
    let r = run(&cfg, |_| {});
    assert!(!r.passed, "{r:#?}");
    assert!(r.violations.iter().any(|v| v.contains(name)), "{r:#?}");
    let t = r.first_failure_s.unwrap();
    assert!(t < 10.0, "caught after {t} s");
}

#[test]
fn a_mirror_that_forgets_set_seq_is_caught_within_seconds() {
    caught(IntervalBug::SetSeqForgotten, "SetSeqForgotten", 7);
}

#[test]
fn a_mirror_without_read_retry_is_caught_within_seconds() {
    caught(IntervalBug::NoRetry, "NoRetry", 11);
}

#[test]
fn a_mirror_checking_read_retry_outside_its_lock_is_caught_within_seconds() {
    caught(IntervalBug::RetryOutsideLock, "RetryOutsideLock", 13);
}
