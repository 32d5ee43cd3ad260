//! The correctness claim, in CI size: no stale registration with either source.

// The race is a tool of the `mmnotify` binary (`mmnotify race --pattern replace`), in the CLI's
// library.
use mmnotify_cli::race_replace::{run, RaceConfig, RaceSource};

/// The race re-maps its range at a fixed address (MAP_FIXED_NOREPLACE); another race in the
/// same process could take that address in between, which the harness reports as an error.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn race(source: RaceSource, rounds: u64, delay_us: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = RaceConfig {
        rounds,
        source,
        seed: 7,
        register_delay: std::time::Duration::from_micros(delay_us),
        ..Default::default()
    };
    match run(&config, |_| {}) {
        Ok(r) => {
            eprintln!("{r:?}");
            assert_eq!(r.stale, 0, "{r:?}");
            assert_eq!(r.rounds, rounds);
            assert!(r.checked > 0);
        }
        Err(e @ (hostmm::Error::UffdPermission | hostmm::Error::UffdUnavailable))
            if source == RaceSource::Uffd =>
        {
            eprintln!("skipping: {e}");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn race_uffd_has_no_stale_registration() {
    race(RaceSource::Uffd, 1500, 0);
    race(RaceSource::Uffd, 300, 20);
}

#[test]
fn race_bracketed_has_no_stale_registration() {
    race(RaceSource::Bracketed, 1500, 0);
    race(RaceSource::Bracketed, 300, 20);
}

#[test]
fn race_rejects_bad_parameters() {
    assert!(run(
        &RaceConfig {
            rounds: 0,
            ..Default::default()
        },
        |_| {}
    )
    .is_err());
    assert!(run(
        &RaceConfig {
            pages: 0,
            ..Default::default()
        },
        |_| {}
    )
    .is_err());
    assert!(run(
        &RaceConfig {
            ops_per_round: 0,
            ..Default::default()
        },
        |_| {}
    )
    .is_err());
}
