//! What the tests that run a userfaultfd monitor share: their turn, the monitor, a cache over it.

// Each test binary uses what it needs of this module.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use hostmm::{CacheConfig, HostMm, MonitorConfig, NoopRegistrar, RegCache, UffdMonitor};

/// A mapping belongs to at most one userfaultfd, and coarse registration takes whole (possibly
/// merged) mappings: tests of one binary that each run their own monitor take turns.
static SERIAL: Mutex<()> = Mutex::new(());

/// This test's turn (see [`SERIAL`]).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One test's monitor: its turn, a fresh `HostMm` and a monitor started on it with `config`;
/// `None` (the test skips, saying why) where userfaultfd is unavailable. Bind all three
/// (`let Some((_serial, host, mon))`): they drop in reverse, the monitor first, the turn last.
pub fn monitor_or_skip(
    config: MonitorConfig,
) -> Option<(MutexGuard<'static, ()>, HostMm, UffdMonitor)> {
    let serial = serial();
    let host = HostMm::new();
    match UffdMonitor::start(&host, config) {
        Ok(m) => Some((serial, host, m)),
        Err(e) => {
            eprintln!("skipping: userfaultfd unavailable here: {e}");
            None
        }
    }
}

/// A cache on `host` whose invalidations come from `mon`, registering with nothing.
pub fn cache_over(host: &HostMm, mon: &UffdMonitor) -> RegCache<NoopRegistrar> {
    RegCache::new(
        host,
        NoopRegistrar,
        CacheConfig {
            monitor: Some(mon.clone()),
            ..Default::default()
        },
    )
    .unwrap()
}
