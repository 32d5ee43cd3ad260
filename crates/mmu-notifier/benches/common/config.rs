//! The criterion settings of the crate's benchmarks: short measurements, since the host is
//! small and shared (`--quick` makes them coarser still).

use std::time::Duration;

use criterion::Criterion;

pub fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(25)
}
