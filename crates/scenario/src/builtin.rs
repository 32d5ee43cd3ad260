//! The repository's scenario files, compiled in: the tour runs the seeds from exactly the files
//! `mmnotify run scenarios/*.toml` runs, from any working directory.

use crate::load::{load_str, LoadError};
use crate::outcome::Outcome;
use crate::runner::{run, RunOptions};

/// Every file of `scenarios/`, by name (the file name without `.toml`) and text.
pub const FILES: [(&str, &str); 20] = [
    (
        "hmm-anon-read-prot",
        include_str!("../../../scenarios/hmm-anon-read-prot.toml"),
    ),
    (
        "hmm-anon-teardown",
        include_str!("../../../scenarios/hmm-anon-teardown.toml"),
    ),
    (
        "hmm-anon-write",
        include_str!("../../../scenarios/hmm-anon-write.toml"),
    ),
    (
        "hmm-file-read",
        include_str!("../../../scenarios/hmm-file-read.toml"),
    ),
    (
        "hmm-migrate",
        include_str!("../../../scenarios/hmm-migrate.toml"),
    ),
    (
        "hmm-migrate-release",
        include_str!("../../../scenarios/hmm-migrate-release.toml"),
    ),
    (
        "sva-device-private",
        include_str!("../../../scenarios/sva-device-private.toml"),
    ),
    (
        "seed-000-gntdev-4.12-buggy",
        include_str!("../../../scenarios/seed-000-gntdev-4.12-buggy.toml"),
    ),
    (
        "seed-000-gntdev-4.12-buggy-pressure",
        include_str!("../../../scenarios/seed-000-gntdev-4.12-buggy-pressure.toml"),
    ),
    (
        "seed-000-gntdev-fixed",
        include_str!("../../../scenarios/seed-000-gntdev-fixed.toml"),
    ),
    (
        "seed-001-odp-gfp-atomic-fixed",
        include_str!("../../../scenarios/seed-001-odp-gfp-atomic-fixed.toml"),
    ),
    (
        "seed-001-odp-gfp-kernel-buggy",
        include_str!("../../../scenarios/seed-001-odp-gfp-kernel-buggy.toml"),
    ),
    (
        "seed-001-odp-gfp-noio-buggy",
        include_str!("../../../scenarios/seed-001-odp-gfp-noio-buggy.toml"),
    ),
    (
        "seed-002-userptr-5.7-buggy",
        include_str!("../../../scenarios/seed-002-userptr-5.7-buggy.toml"),
    ),
    (
        "seed-002-userptr-5.7-buggy-pressure",
        include_str!("../../../scenarios/seed-002-userptr-5.7-buggy-pressure.toml"),
    ),
    (
        "seed-002-userptr-fixed",
        include_str!("../../../scenarios/seed-002-userptr-fixed.toml"),
    ),
    (
        "seed-003-odp-sleep-buggy",
        include_str!("../../../scenarios/seed-003-odp-sleep-buggy.toml"),
    ),
    (
        "seed-003-odp-trylock-fixed",
        include_str!("../../../scenarios/seed-003-odp-trylock-fixed.toml"),
    ),
    (
        "seed-004-kvm-odp-current-fixed",
        include_str!("../../../scenarios/seed-004-kvm-odp-current-fixed.toml"),
    ),
    (
        "seed-004-kvm-odp-pre-5.12-buggy",
        include_str!("../../../scenarios/seed-004-kvm-odp-pre-5.12-buggy.toml"),
    ),
];

/// The text of the scenario file `name` (e.g. `seed-000-gntdev-4.12-buggy`).
pub fn text(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Runs the scenario file `name` of `scenarios/` and returns its outcome (the tour's entry
/// point). An unknown name is a [`LoadError`] listing the known ones.
pub fn run_named(name: &str, opts: &RunOptions) -> Result<Outcome, LoadError> {
    let file = format!("scenarios/{name}.toml");
    let Some(text) = text(name) else {
        return Err(LoadError {
            file,
            line: 0,
            column: 0,
            what: crate::load::ErrorClass::Io,
            message: format!(
                "no built-in scenario `{name}` (known: {})",
                FILES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        });
    };
    load_str(&file, text).map(|l| run(&l, opts))
}
