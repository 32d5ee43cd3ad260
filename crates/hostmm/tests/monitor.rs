//! The userfaultfd monitor against the real kernel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostmm::uffd::{CreateSeam, Userfaultfd};
use hostmm::{
    Error, Event, HostMm, Mapping, MonitorConfig, RegisterMode, UffdMonitor, VaRange, Watch,
};
use mmu_notifier::{Interval, IntervalNotifier, IntervalNotifierOps, Range};

mod common;
use common::monitor_or_skip;

/// An interval notifier recording the invalidations of `len` bytes from `addr`, and `mon`'s
/// watch over them; both last as long as the returned guards.
fn record(
    host: &HostMm,
    mon: &UffdMonitor,
    addr: u64,
    len: u64,
) -> (Recorder, IntervalNotifier, Watch) {
    let rec = Recorder::default();
    let n = host
        .mm()
        .interval_notifier_insert(addr, len, rec.clone())
        .unwrap();
    (rec, n, mon.watch(addr, len).unwrap())
}

/// Records every invalidation that reaches an interval.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(u64, u64, Event)>>>);

impl IntervalNotifierOps for Recorder {
    fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
        let mut v = self.0.lock().unwrap();
        iv.set_seq(cur_seq);
        v.push((range.start(), range.end(), range.event()));
        true
    }
}

fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn munmap_becomes_an_unmap_invalidation_before_munmap_returns() {
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let page = hostmm::page_size();
    let m = Mapping::anonymous(4 * page).unwrap();
    m.write_u64(0, 7);
    let (rec, _n, _w) = record(&host, &mon, m.addr(), 4 * page);
    let r = m.into_raw();
    // SAFETY: the mapping was ours.
    unsafe { rustix::mm::munmap(r.start() as *mut _, r.len() as usize) }.unwrap();
    // The pending window: after munmap returned, a lookup through the gate sees the invalidation.
    host.gate().wait();
    let got = rec.0.lock().unwrap().clone();
    assert_eq!(got, vec![(r.start(), r.end(), Event::Unmap)]);
    assert_eq!(mon.stats().unmaps, 1);
}

#[test]
fn madvise_dontneed_becomes_clear_and_wp_mode_never_faults() {
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let page = hostmm::page_size();
    let m = Mapping::anonymous(8 * page).unwrap();
    for i in 0..8 {
        m.write_u64(i * page, i + 1);
    }
    let (rec, _n, _w) = record(&host, &mon, m.addr(), 8 * page);
    // SAFETY: nothing holds a reference into the mapping; its contents become zero.
    unsafe {
        rustix::mm::madvise(
            m.addr() as *mut _,
            (8 * page) as usize,
            rustix::mm::Advice::LinuxDontNeed,
        )
    }
    .unwrap();
    host.gate().wait();
    assert_eq!(
        rec.0.lock().unwrap().as_slice(),
        &[(m.addr(), m.addr() + 8 * page, Event::Clear)]
    );
    // First touches after DONTNEED: no page fault reaches the monitor in WP-only mode.
    for i in 0..8 {
        assert_eq!(m.read_u64(i * page), 0);
        m.write_u64(i * page, 9);
    }
    assert_eq!(mon.stats().faults, 0);
    assert_eq!(mon.stats().removes, 1);
}

#[test]
fn moving_mremap_invalidates_the_old_range() {
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let page = hostmm::page_size();
    let m = Mapping::anonymous(2 * page).unwrap();
    m.write_u64(0, 1);
    let dest = Mapping::anonymous(2 * page).unwrap();
    let (rec, _n, _w) = record(&host, &mon, m.addr(), 2 * page);
    let (old, to) = (m.into_raw(), dest.into_raw());
    // SAFETY: both mappings were ours.
    unsafe {
        rustix::mm::mremap_fixed(
            old.start() as *mut _,
            old.len() as usize,
            old.len() as usize,
            rustix::mm::MremapFlags::MAYMOVE,
            to.start() as *mut _,
        )
    }
    .unwrap();
    host.gate().wait();
    let got = rec.0.lock().unwrap().clone();
    assert!(
        got.contains(&(old.start(), old.end(), Event::Unmap)),
        "{got:x?}"
    );
    assert!(got.iter().all(|e| e.2 == Event::Unmap));
    let moved = Mapping::anonymous(1).unwrap();
    drop(moved);
    // SAFETY: the moved mapping is ours now.
    drop(unsafe { Mapping::from_raw(to) });
    assert!(wait_for(|| mon.stats().remaps >= 1));
}

#[test]
fn watches_are_coarse_deduplicated_and_refcounted() {
    let Some((_serial, _host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let page = hostmm::page_size();
    let m = Mapping::anonymous(64 * page).unwrap();
    let before = mon.stats().registers;
    let watches: Vec<_> = (0..64)
        .map(|i| mon.watch(m.addr() + i * page, page).unwrap())
        .collect();
    assert_eq!(
        mon.stats().registers - before,
        1,
        "one registration for the whole mapping"
    );
    assert!(mon.registered().iter().any(|r| r.contains(&m.range())));
    let regions = mon.stats().regions;
    drop(watches);
    assert_eq!(
        mon.stats().regions,
        regions - 1,
        "unregistered when the last user left"
    );
    assert!(!mon.registered().iter().any(|r| r.overlaps(&m.range())));
}

#[test]
fn unmapped_region_is_registered_again_after_remap() {
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let page = hostmm::page_size();
    let m = Mapping::anonymous(page).unwrap();
    let addr = m.addr();
    let w = mon.watch(addr, page).unwrap();
    drop(m); // plain munmap: the kernel drops the registration
    host.gate().wait();
    let Ok(again) = Mapping::anonymous_at(addr, page) else {
        eprintln!("skipping: address reused by someone else");
        return;
    };
    let before = mon.stats().registers;
    let w2 = mon.watch(addr, page).unwrap();
    assert_eq!(
        mon.stats().registers,
        before + 1,
        "the new mapping is registered, not trusted from the old watch"
    );
    drop((w, w2, again));
}

#[test]
fn watching_an_unmapped_range_is_a_typed_error() {
    let Some((_serial, _host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let page = hostmm::page_size();
    // Below vm.mmap_min_addr: never mapped, and no other thread can map it meanwhile.
    let addr = page;
    assert!(matches!(
        mon.watch(addr, page),
        Err(Error::NotMapped { .. })
    ));
    assert!(matches!(mon.watch(addr, 0), Err(Error::BadRange { .. })));
}

#[test]
fn a_mapping_owned_by_another_uffd_is_ebusy() {
    let Some((_serial, _host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let page = hostmm::page_size();
    let m = Mapping::anonymous(page).unwrap();
    let other = Userfaultfd::new_monitor(CreateSeam::Real).unwrap();
    other
        .register(m.range(), RegisterMode::WriteProtect)
        .unwrap();
    match mon.watch(m.addr(), page) {
        Err(e @ Error::UffdBusy { .. }) => assert!(e.to_string().contains("Importer")),
        other => panic!("expected UffdBusy, got {other:?}"),
    }
}

#[test]
fn region_cap_is_enforced() {
    let Some((_serial, _host, mon)) = monitor_or_skip(MonitorConfig {
        max_regions: 1,
        ..Default::default()
    }) else {
        return;
    };
    let page = hostmm::page_size();
    let a = Mapping::anonymous(page).unwrap();
    let _wa = mon.watch(a.addr(), page).unwrap();
    // A separate mapping, not adjacent to a (a guard page between keeps them apart).
    let b = Mapping::anonymous(3 * page).unwrap();
    // SAFETY: the middle page is ours and unused.
    unsafe {
        rustix::mm::mprotect(
            (b.addr() + page) as *mut _,
            page as usize,
            rustix::mm::MprotectFlags::empty(),
        )
    }
    .unwrap();
    let far = if a
        .range()
        .overlaps(&VaRange::new(b.addr(), 3 * page).unwrap())
    {
        b.addr() + 2 * page
    } else {
        b.addr()
    };
    if mon
        .registered()
        .iter()
        .any(|r| r.contains(&VaRange::new(far, page).unwrap()))
    {
        eprintln!("skipping: the two mappings merged");
        return;
    }
    assert!(matches!(
        mon.watch(far, page),
        Err(Error::TooManyRegions(1))
    ));
}

#[test]
fn monitor_survives_eintr() {
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    extern "C" fn noop(_: libc::c_int) {}
    // SAFETY: installs a handler that does nothing, without SA_RESTART, so poll returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = noop as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
    }
    let t = mon.pthread_for_tests().unwrap();
    for _ in 0..20 {
        // SAFETY: the thread is alive (the monitor holds its handle) and handles SIGUSR2.
        unsafe { libc::pthread_kill(t, libc::SIGUSR2) };
        std::thread::sleep(Duration::from_millis(1));
    }
    let page = hostmm::page_size();
    let m = Mapping::anonymous(page).unwrap();
    let (rec, _n, _w) = record(&host, &mon, m.addr(), page);
    drop(m);
    host.gate().wait();
    assert_eq!(rec.0.lock().unwrap().len(), 1);
    assert!(mon.failure().is_none());
}

#[test]
fn missing_mode_fallback_resolves_faults() {
    let Some((_serial, _host, mon)) = monitor_or_skip(MonitorConfig {
        mode: RegisterMode::Missing,
        ..Default::default()
    }) else {
        return;
    };
    let page = hostmm::page_size();
    let m = Mapping::anonymous(4 * page).unwrap();
    let _w = mon.watch(m.addr(), 4 * page).unwrap();
    for i in 0..4 {
        assert_eq!(m.read_u64(i * page), 0); // faults, resolved with a zero page by the monitor
    }
    assert!(mon.stats().faults >= 1);
}

#[test]
fn every_lookup_after_munmap_returns_sees_the_invalidation() {
    // Stress of the pending window: a thread unmaps monitored pages; right after each munmap
    // returns, it checks (through the gate) that the interval was invalidated.
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let page = hostmm::page_size();
    let hits = Arc::new(AtomicU64::new(0));
    struct Count(Arc<AtomicU64>);
    impl IntervalNotifierOps for Count {
        fn invalidate(&self, iv: &Interval, _r: &Range, s: u64) -> bool {
            iv.set_seq(s);
            self.0.fetch_add(1, Ordering::SeqCst);
            true
        }
    }
    for i in 0..500 {
        let m = Mapping::anonymous(page).unwrap();
        let n = host
            .mm()
            .interval_notifier_insert(m.addr(), page, Count(hits.clone()))
            .unwrap();
        let w = mon.watch(m.addr(), page).unwrap();
        drop(m);
        host.gate().wait();
        assert_eq!(
            hits.load(Ordering::SeqCst),
            i + 1,
            "round {i}: invalidation not visible after munmap returned"
        );
        drop((n, w));
    }
}

/// Back-to-back unmaps of cached pages, each checked right after its `munmap` returned.
/// Returns the monitor's stats.
fn burst_under(config: MonitorConfig, pages: usize) -> Option<hostmm::MonitorStats> {
    let (_serial, host, mon) = monitor_or_skip(config)?;
    let cache = common::cache_over(&host, &mon);
    let page = hostmm::page_size();
    let maps: Vec<Mapping> = (0..pages)
        .map(|_| {
            let m = Mapping::anonymous(page).unwrap();
            m.write_u64(0, 1);
            m
        })
        .collect();
    let handles: Vec<_> = maps
        .iter()
        .map(|m| cache.get(m.addr(), page).unwrap())
        .collect();
    for m in maps {
        let (addr, len) = (m.addr(), m.len());
        let r = m.into_raw();
        // SAFETY: the mapping is ours and nothing refers into it.
        unsafe { rustix::mm::munmap(r.start() as usize as *mut _, len as usize) }.unwrap();
        // The lookup passes the pending gate: it sees the invalidation however far the
        // monitor got (a handle's own flag may still be set until the monitor has run).
        assert!(cache.lookup(addr, page).unwrap().is_none(), "a stale hit");
    }
    assert!(wait_for(|| handles.iter().all(|h| !h.is_valid())));
    std::thread::sleep(Duration::from_millis(5));
    Some(mon.stats())
}

#[test]
fn a_spinning_monitor_reads_a_burst_while_spinning_and_invalidates_every_unmap_in_time() {
    let cpus = rustix::thread::sched_getaffinity(None).map_or(1, |s| s.count());
    let config = MonitorConfig {
        spin: Duration::from_millis(200),
        ..Default::default()
    };
    let Some(st) = burst_under(config, 32) else {
        return;
    };
    assert_eq!(st.unmaps, 32);
    assert!(st.cpu_ns > 0, "the monitor's CPU time is reported");
    if cpus > 1 {
        assert!(st.spin_polls > 0, "it never spun");
        assert!(
            st.spin_catches > 0,
            "no event of the burst was read while spinning: {st:?}"
        );
    }
}

#[test]
fn a_monitor_that_may_use_one_cpu_only_does_not_spin() {
    let Ok(allowed) = rustix::thread::sched_getaffinity(None) else {
        return;
    };
    let Some(cpu) = (0..rustix::thread::CpuSet::MAX_CPU).find(|&c| allowed.is_set(c)) else {
        return;
    };
    let mut one = rustix::thread::CpuSet::new();
    one.set(cpu);
    let st = std::thread::spawn(move || {
        if rustix::thread::sched_setaffinity(None, &one).is_err() {
            return None; // pinning refused here
        }
        let config = MonitorConfig {
            spin: Duration::from_millis(200),
            ..Default::default()
        };
        burst_under(config, 8) // the monitor thread inherits the pinning
    })
    .join()
    .unwrap();
    if let Some(st) = st {
        assert_eq!(st.unmaps, 8);
        assert_eq!(st.spin_polls, 0, "it spun on its only CPU: {st:?}");
    }
}

#[test]
fn spinning_is_off_by_default() {
    assert_eq!(MonitorConfig::default().spin, Duration::ZERO);
    assert_eq!(hostmm::DEFAULT_SPIN, Duration::ZERO);
}
