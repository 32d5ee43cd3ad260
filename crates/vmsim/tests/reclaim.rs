//! Reclaim, swap, pins, shrinkers and the OOM killer and reaper, with the notifier events they
//! fire (`mm/vmscan.c`, `mm/rmap.c`, `mm/oom_kill.c`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{recording, List, Recorder, Seen};
use mmu_notifier::{Capabilities, Event};
use vmsim::{Config, Machine, MapRequest, Shrinker, VmError};

const P: u64 = 4096;

#[test]
fn reclaim_swaps_out_behind_one_clear_per_page_and_swap_in_restores_content() {
    // try_to_unmap_one: MMU_NOTIFY_CLEAR over [address, address + PAGE_SIZE), blockable.
    let m = Machine::new(Config::new(128).swap(64)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(8 * P)).unwrap();
    for i in 0..8 {
        p.write(a + i * P, 100 + i).unwrap();
    }
    let rec = Recorder::new();
    let _s = p.mm().register(List(rec.clone(), recording())).unwrap();
    let freed = m.reclaim(8);
    assert_eq!(freed, 8, "old, unreferenced anonymous pages all go to swap");
    let starts = rec.starts();
    assert_eq!(starts.len(), 8);
    for (e, s, end, blockable) in &starts {
        assert_eq!((*e, end - s, *blockable), (Event::Clear, P, true));
    }
    assert_eq!(p.space().rss(), 0);
    assert_eq!(m.stats().swap_out, 8);
    m.check().unwrap();
    rec.take();
    for i in 0..8 {
        assert_eq!(
            p.read(a + i * P).unwrap(),
            100 + i,
            "swap-in restores page {i}"
        );
    }
    assert!(rec.starts().is_empty(), "swap-in fires no invalidation");
    assert_eq!(m.stats().swap_in, 8);
    assert_eq!(m.swap().usage().0, 0, "slots freed on swap-in");
    m.check().unwrap();
}

#[test]
fn a_young_secondary_keeps_its_page_one_more_round() {
    // folio_referenced → clear_flush_young: a referenced page is kept (activated on the second).
    let m = Machine::new(Config::new(128).swap(64)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(P)).unwrap();
    p.write(a, 1).unwrap();
    let rec = Recorder::new();
    rec.young.store(true, Ordering::Relaxed);
    let _s = p.mm().register(List(rec.clone(), recording())).unwrap();
    // The primary's young bit is set by the write; the first pass clears it and keeps the page.
    assert_eq!(m.reclaim(1), 0);
    // The secondary still reports young: kept again.
    assert_eq!(m.reclaim(1), 0);
    assert!(rec
        .take()
        .iter()
        .any(|s| matches!(s, Seen::Young(x, y) if *x == a && *y == a + P)));
    rec.young.store(false, Ordering::Relaxed);
    // Activated now; the next passes deactivate it and, with nobody using it, reclaim it.
    let mut freed = 0;
    for _ in 0..4 {
        freed += m.reclaim(1);
    }
    assert_eq!(freed, 1);
    assert!(m.stats().referenced >= 2);
    m.check().unwrap();
}

#[test]
fn without_young_secondaries_the_page_goes_at_once() {
    let m = Machine::new(Config::new(128).swap(64)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(P)).unwrap();
    p.write(a, 1).unwrap();
    p.madvise(a, P, vmsim::Advice::Cold).unwrap(); // the primary's young bit too
    assert_eq!(m.reclaim(1), 1);
}

#[test]
fn pinned_pages_are_never_reclaimed() {
    let m = Machine::new(Config::new(128).swap(64)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(4 * P)).unwrap();
    p.touch(a, 4 * P, true).unwrap();
    p.madvise(a, 4 * P, vmsim::Advice::Cold).unwrap();
    let pins = p.pin_user_pages(a, 2, true).unwrap();
    assert_eq!(m.reclaim(4), 2, "only the two unpinned pages");
    assert_eq!(p.space().rss(), 2);
    p.unpin_user_pages(&pins).unwrap();
    m.check().unwrap();
}

struct CountingShrinker(AtomicUsize);
impl Shrinker for CountingShrinker {
    fn name(&self) -> &str {
        "test"
    }
    fn count(&self) -> usize {
        5
    }
    fn scan(&self, n: usize) -> usize {
        self.0.fetch_add(1, Ordering::Relaxed);
        n.min(5)
    }
}

#[test]
fn shrinkers_are_called_under_pressure() {
    let m = Machine::new(Config::new(64)).unwrap();
    let s = Arc::new(CountingShrinker(AtomicUsize::new(0)));
    m.register_shrinker(s.clone());
    assert!(m.reclaim(3) >= 3);
    assert_eq!(s.0.load(Ordering::Relaxed), 1);
}

#[test]
fn the_oom_reaper_skips_a_refused_vma_retries_ten_times_and_gives_up() {
    // __oom_reap_task_mm: nonblock start refused → skip the VMA, no end; oom_reap_task: 10
    // attempts; MMF_OOM_SKIP set either way.
    let m = Machine::new(Config::new(128)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(4 * P)).unwrap();
    let b = p.mmap(MapRequest::anon(4 * P)).unwrap();
    p.touch(a, 4 * P, true).unwrap();
    p.touch(b, 4 * P, true).unwrap();
    let rec = Recorder::new();
    rec.refuse.store(true, Ordering::Relaxed);
    // An interval subscriber over the first VMA only refuses non-blockable invalidations.
    let _iv = p
        .mm()
        .interval_notifier_insert(a, 4 * P, common::Iv(rec.clone()))
        .unwrap();
    let report = m.oom_kill(&p);
    assert!(report.gave_up, "{report}");
    assert_eq!(report.attempts, 10);
    assert_eq!(report.skipped, vec![(a, a + 4 * P)]);
    assert_eq!(rec.refusals.load(Ordering::Relaxed), 10);
    assert_eq!(
        report.reaped_pages, 4,
        "the other VMA was reaped on the first attempt"
    );
    assert_eq!(p.space().rss(), 4);
    assert!(report.to_string().contains("unable to reap"));
    assert!(
        matches!(p.read(b), Err(VmError::Gone(_))),
        "MMF_UNSTABLE: faults fail"
    );
    m.check().unwrap();
}

#[test]
fn the_oom_reaper_unmaps_everything_nonblocking_when_nobody_refuses() {
    let m = Machine::new(Config::new(128)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(4 * P)).unwrap();
    p.touch(a, 4 * P, true).unwrap();
    let rec = Recorder::new();
    let _s = p
        .mm()
        .register(List(
            rec.clone(),
            Capabilities::INVALIDATE_RANGE_START | Capabilities::INVALIDATE_RANGE_END,
        ))
        .unwrap();
    let report = m.oom_kill(&p);
    assert!(!report.gave_up && report.attempts == 1, "{report}");
    assert_eq!(
        rec.take(),
        vec![
            Seen::Start(Event::Unmap, a, a + 4 * P, false),
            Seen::End(Event::Unmap, a, a + 4 * P, false)
        ]
    );
    assert_eq!(m.check().unwrap().used, 0);
}

#[test]
fn allocation_under_pressure_reclaims_then_oom_kills_the_largest() {
    // No swap: anonymous memory cannot be reclaimed; the allocator ends in out_of_memory.
    let cfg = Config {
        oom_reap_delay: Duration::from_millis(0),
        ..Config::new(64)
    };
    let m = Machine::new(cfg).unwrap();
    let big = m.spawn();
    let small = m.spawn();
    let a = big.mmap(MapRequest::anon(40 * P)).unwrap();
    big.touch(a, 40 * P, true).unwrap();
    let b = small.mmap(MapRequest::anon(40 * P)).unwrap();
    // The small process keeps faulting until the machine runs out: the big one is killed.
    let mut got = 0;
    for i in 0..40 {
        match small.write(b + i * P, i) {
            Ok(()) => got += 1,
            Err(e) => panic!("small process failed at page {i}: {e}"),
        }
    }
    assert_eq!(got, 40);
    assert_eq!(m.stats().oom_kills, 1);
    let reports = m.oom_reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].mm, big.space().id());
    assert!(matches!(big.read(a), Err(VmError::Gone(_))));
    m.check().unwrap();
}

#[test]
fn injected_allocation_failures_are_typed_errors_and_break_nothing() {
    // fail_page_alloc: every path that allocates copes with OutOfMemory.
    let m = Machine::new(Config::new(256).swap(256)).unwrap();
    m.inject_alloc_failures(3);
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(64 * P)).unwrap();
    let mut failed = 0;
    for i in 0..64 {
        match p.write(a + i * P, i) {
            Ok(()) => {}
            Err(VmError::OutOfMemory) => failed += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(failed > 0, "the injection never fired");
    let _ = p.fork().map(|c| c.exit());
    let _ = m.reclaim(16);
    m.check().unwrap();
    assert_eq!(m.stats().injected_alloc_failures, m.stats().alloc_failures);
    m.inject_alloc_failures(0);
    p.touch(a, 64 * P, true).unwrap();
    p.exit().unwrap();
    assert_eq!(m.check().unwrap().used, 0);
}
