//! The runner: every scenario file passes; a failed expectation says what it wanted and what
//! was observed; an observation no expectation allows fails the run; `--trace` sees the events.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use scenario::{load_str, run, RunOptions, TraceEvent};

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_scenario_file_passes() {
    let files = scenario_files();
    assert!(files.len() >= 13, "{files:?}");
    for f in files {
        let o = scenario::run_file(&f, &RunOptions::default()).unwrap();
        assert!(o.passed, "{o}");
    }
}

const BUGGY_001: &str = r#"
name = "seed 001 with the wrong expectation"
[machine]
frames = 256
[[process]]
name = "p"
[[process.mapping]]
name = "a"
pages = 8
[[driver]]
name = "odp"
kind = "odp"
process = "p"
at = "a"
[[step]]
op = "device"
driver = "odp"
action = "fault"
pages = 8
[[step]]
op = "madvise"
at = "a"
pages = 1
advice = "dontneed"
[[step]]
op = "alloc"
gfp = "kernel"
holding = "odp"
"#;

#[test]
fn a_report_nobody_expected_fails_the_run_and_is_named() {
    let l = load_str("t.toml", BUGGY_001).unwrap();
    let o = run(&l, &RunOptions::default());
    assert!(!o.passed);
    assert_eq!(o.unexpected.len(), o.observed.reports.len());
    assert!(
        o.unexpected
            .iter()
            .any(|u| u.contains("&umem_odp->umem_mutex")),
        "{o}"
    );
}

#[test]
fn a_failed_must_not_states_the_expectation_and_the_observation() {
    let text = format!("{BUGGY_001}[[expect]]\nmust_not = \"report\"\nkind = \"cycle\"\n");
    let o = run(&load_str("t.toml", &text).unwrap(), &RunOptions::default());
    assert!(!o.passed);
    let e = &o.expectations[0];
    assert!(!e.passed);
    assert_eq!(e.expectation, "must not report kind=cycle");
    assert!(
        e.observed.contains("matching of") && e.observed.contains("umem_mutex"),
        "{}",
        e.observed
    );
    let printed = o.to_string();
    assert!(
        printed.contains("FAIL line 29: must not report kind=cycle"),
        "{printed}"
    );
    assert!(printed.contains("observed:"), "{printed}");
}

#[test]
fn a_failed_counter_and_an_unmet_must_are_reported() {
    let text = format!(
        "{BUGGY_001}[[expect]]\nmay = \"report\"\n[[expect]]\nmust = \"counter\"\ncounter = \"direct_reclaim\"\nat_least = 1\n[[expect]]\nmust = \"violation\"\n"
    );
    let o = run(&load_str("t.toml", &text).unwrap(), &RunOptions::default());
    assert!(!o.passed);
    assert!(o.expectations[0].passed);
    assert_eq!(o.expectations[1].observed, "direct_reclaim = 0");
    assert!(!o.expectations[1].passed);
    assert!(o.expectations[2]
        .observed
        .starts_with("0 matching of 0 violation(s)"));
    assert!(o.unexpected.is_empty());
}

#[test]
fn a_step_that_fails_stops_the_run_and_says_where() {
    let text = "name = \"t\"\n[machine]\nframes = 64\n[[process]]\nname = \"p\"\n[[process.mapping]]\nname = \"a\"\npages = 4\nprot = \"r--\"\n[[step]]\nop = \"write\"\nat = \"a\"\n";
    let o = run(&load_str("t.toml", text).unwrap(), &RunOptions::default());
    assert!(!o.passed);
    let e = o.step_error.unwrap();
    assert!(e.starts_with("step 1 (write, line 10)"), "{e}");
    assert!(e.contains("not permitted"), "{e}");
    // With `error`, the failure is the expected outcome.
    let o = run(
        &load_str("t.toml", &format!("{text}error = \"not permitted\"\n")).unwrap(),
        &RunOptions::default(),
    );
    assert!(o.passed, "{o}");
}

#[test]
fn the_trace_sees_every_notifier_event_as_it_happens() {
    let text = "name = \"t\"\n[machine]\nframes = 64\n[[process]]\nname = \"p\"\n[[process.mapping]]\nname = \"a\"\npages = 4\npopulate = true\n[[step]]\nop = \"munmap\"\nat = \"a\"\npage = 1\npages = 2\n";
    let seen = Arc::new(Mutex::new(Vec::<TraceEvent>::new()));
    let s2 = seen.clone();
    let opts = RunOptions {
        seed: 0,
        trace: Some(Arc::new(move |e: &TraceEvent| {
            s2.lock().unwrap().push(e.clone())
        })),
    };
    let o = run(&load_str("t.toml", text).unwrap(), &opts);
    assert!(o.passed, "{o}");
    let seen = seen.lock().unwrap();
    let unmaps: Vec<&TraceEvent> = seen
        .iter()
        .filter(|e| e.event == "MMU_NOTIFY_UNMAP" && e.end - e.start == 2 * 4096)
        .collect();
    assert_eq!(unmaps.len(), 2, "{seen:?}");
    assert_eq!(unmaps[0].callback, "invalidate_range_start");
    assert_eq!(unmaps[1].callback, "invalidate_range_end");
    assert!(
        seen.iter().any(|e| e.callback == "release"),
        "exit at teardown: {seen:?}"
    );
}

#[test]
fn the_built_in_files_are_the_scenario_files() {
    let files = scenario_files();
    assert_eq!(
        files.len(),
        scenario::builtin::FILES.len(),
        "a file is missing from builtin.rs"
    );
    for f in files {
        let name = f.file_stem().unwrap().to_str().unwrap();
        assert_eq!(
            scenario::builtin::text(name),
            Some(std::fs::read_to_string(&f).unwrap().as_str()),
            "{name}"
        );
    }
    let o = scenario::builtin::run_named("seed-001-odp-gfp-kernel-buggy", &RunOptions::default())
        .unwrap();
    assert!(o.passed, "{o}");
    let e = scenario::builtin::run_named("seed-999", &RunOptions::default()).unwrap_err();
    assert!(e.message.contains("seed-000-gntdev-fixed"), "{e}");
}
