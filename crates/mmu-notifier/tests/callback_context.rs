//! The context each callback runs in, as the validator sees it (feature `lockdep`), and the
//! primary's `mmap_lock` known to the contract.
//!
//! Interval callbacks of a non-blockable range run inside `non_block_start()/_end()`, as list
//! callbacks do. Linux's `mn_itree_invalidate` does not open that section, so an interval notifier that
//! sleeps in the OOM reaper's range (seed 003's bug, in the interval drivers: amdgpu, nouveau,
//! mlx5 ODP, i915) goes unreported there. Here it is reported, attributed to the dispatch that
//! opened the section: better than Linux, on purpose.
//!
//! The young callbacks run in atomic context: Linux calls them under the page-table lock.
//!
//! The unlocked registration variants record `might_lock(mmap_lock)`; the `_locked` ones check
//! that it is held.
//!
//! Run with `cargo test -p mmu-notifier --features lockdep --test callback_context`.

#![cfg(feature = "lockdep")]

use std::sync::Arc;

use lockdep::testing::Scope;
use lockdep::{DynamicKey, Mutex, ReportKind, RwLock};
use mmu_notifier::{
    Capabilities, Diagnostics, Event, Interval, IntervalNotifierOps, Mm, MmuNotifierOps, Range,
    Warning,
};

fn range() -> Range {
    Range::new(0x1000, 0x3000, Event::Unmap).unwrap()
}

/// Seed 003 as an interval driver: sleeps on its mutex whatever the range.
struct Sleeps(Mutex<()>);

impl IntervalNotifierOps for Sleeps {
    fn invalidate(&self, iv: &Interval, _range: &Range, cur_seq: u64) -> bool {
        let _g = self.0.lock();
        iv.set_seq(cur_seq);
        true
    }
}

/// The fixed driver: `try_lock` when the range is not blockable, refuse if that fails.
struct Tries(Mutex<()>);

impl IntervalNotifierOps for Tries {
    fn invalidate(&self, iv: &Interval, range: &Range, cur_seq: u64) -> bool {
        let Some(_g) = range.lock_or_refuse(|| self.0.lock(), || self.0.try_lock()) else {
            return false;
        };
        iv.set_seq(cur_seq);
        true
    }
}

#[test]
fn a_mutex_in_a_non_blockable_interval_callback_is_reported_at_the_dispatch() {
    let scope = Scope::new();
    let key = DynamicKey::new("nonblock-interval-mutex");
    let mm = Mm::new();
    let iv = mm
        .interval_notifier_insert(0x1000, 0x1000, Sleeps(Mutex::new((), &key)))
        .unwrap();
    mm.invalidate_range_start_nonblock(range()).unwrap().end();
    let r = scope.of_kind(ReportKind::SleepingInInvalidContext);
    assert_eq!(r.len(), 1, "{:?}", scope.reports());
    let ctx = r[0].context.as_ref().expect("context counters");
    assert_eq!((ctx.non_block, ctx.in_atomic), (1, 0));
    let since = ctx.non_block_since.as_ref().expect("where non_block began");
    assert!(since.file.ends_with("itree.rs"), "{since:?}");
    drop(scope);
    iv.remove().unwrap();
}

#[test]
fn the_same_callback_in_a_blockable_range_is_clean() {
    let scope = Scope::new();
    let key = DynamicKey::new("nonblock-interval-blockable");
    let mm = Mm::new();
    let iv = mm
        .interval_notifier_insert(0x1000, 0x1000, Sleeps(Mutex::new((), &key)))
        .unwrap();
    mm.invalidate_range_start(range()).end();
    assert!(scope.is_clean(), "{:?}", scope.reports());
    iv.remove().unwrap();
}

#[test]
fn try_lock_in_a_non_blockable_interval_callback_is_clean_even_when_it_refuses() {
    let scope = Scope::new();
    let key = DynamicKey::new("nonblock-interval-trylock");
    let mm = Mm::new();
    let driver = Arc::new(Tries(Mutex::new((), &key)));
    let iv = mm
        .interval_notifier_insert(0x1000, 0x1000, driver.clone())
        .unwrap();
    mm.invalidate_range_start_nonblock(range()).unwrap().end();
    {
        let _held = driver.0.lock();
        // Another thread holds the driver lock: the reaper's start is refused, nothing sleeps.
        let handle = scope.handle();
        let refused = std::thread::scope(|s| {
            s.spawn(|| {
                // The reaper thread reports into this test's scope too.
                handle.attach();
                let refused = mm.invalidate_range_start_nonblock(range()).is_err();
                handle.detach();
                refused
            })
            .join()
            .unwrap()
        });
        assert!(refused);
    }
    assert!(scope.is_clean(), "{:?}", scope.reports());
    drop(scope);
    iv.remove().unwrap();
}

/// A list subscriber whose young callback sleeps on a mutex: a bug, since it runs under the
/// primary's page-table lock.
struct SleepyYoung(Mutex<()>);

impl MmuNotifierOps for SleepyYoung {
    fn capabilities(&self) -> Capabilities {
        Capabilities::YOUNG
    }
    fn test_young(&self, _mm: &Mm, _address: u64) -> bool {
        let _g = self.0.lock();
        true
    }
    fn clear_young(&self, _mm: &Mm, _start: u64, _end: u64) -> bool {
        let _g = self.0.lock();
        true
    }
}

#[test]
fn a_sleeping_young_callback_is_reported_in_atomic_context() {
    let scope = Scope::new();
    let key = DynamicKey::new("young-mutex");
    let mm = Mm::new();
    let sub = mm.register(SleepyYoung(Mutex::new((), &key))).unwrap();
    assert!(mm.test_young(0x1000));
    assert!(mm.clear_young(0x1000, 0x2000));
    let r = scope.of_kind(ReportKind::SleepingInInvalidContext);
    assert_eq!(r.len(), 2, "{:?}", scope.reports());
    for rep in &r {
        let ctx = rep.context.as_ref().expect("context counters");
        assert!(ctx.in_atomic >= 1, "{rep}");
    }
    drop(scope);
    sub.unregister().unwrap();
}

#[test]
fn interval_insert_records_might_lock_of_the_mmap_lock() {
    // A driver lock taken under mmap_lock elsewhere, and held around an insert: an ABBA the
    // kernel's might_lock in mmu_interval_notifier_insert catches.
    let scope = Scope::new();
    let mkey = DynamicKey::new("ctx-mmap_lock");
    let dkey = DynamicKey::new("ctx-driver-lock");
    let mmap_lock = Arc::new(RwLock::new((), &mkey));
    let driver = Mutex::new((), &dkey);
    let mm = Mm::builder().mmap_lock(mmap_lock.clone()).build();
    {
        let _m = mmap_lock.read();
        let _d = driver.lock();
    }
    let iv = {
        let _d = driver.lock();
        mm.interval_notifier_insert(0x1000, 0x1000, Sleeps(Mutex::new((), &dkey)))
            .unwrap()
    };
    let cycles: Vec<_> = scope
        .reports()
        .into_iter()
        .filter(|r| r.kind.is_cycle())
        .collect();
    assert_eq!(cycles.len(), 1, "{:?}", scope.reports());
    assert!(
        cycles[0].to_string().contains("ctx-mmap_lock"),
        "{}",
        cycles[0]
    );
    drop(scope);
    iv.remove().unwrap();
}

#[test]
fn locked_variants_are_silent_with_the_mmap_lock_held_and_report_without_it() {
    let scope = Scope::new();
    let mkey = DynamicKey::new("ctx-mmap_lock-held");
    let mmap_lock = Arc::new(RwLock::new((), &mkey));
    let d = Diagnostics::collect();
    let mm = Mm::builder()
        .mmap_lock(mmap_lock.clone())
        .diagnostics(d.clone())
        .build();
    let dkey = DynamicKey::new("ctx-driver-lock-held");
    let iv = {
        let _w = mmap_lock.write();
        mm.interval_notifier_insert_locked(0x1000, 0x1000, Sleeps(Mutex::new((), &dkey)))
            .unwrap()
    };
    assert!(d.take().is_empty());
    let iv2 = mm
        .interval_notifier_insert_locked(0x3000, 0x1000, Sleeps(Mutex::new((), &dkey)))
        .unwrap();
    assert_eq!(
        d.take(),
        vec![Warning::MmapLockNotHeld {
            api: "interval_notifier_insert_locked"
        }]
    );
    drop(scope);
    iv.remove().unwrap();
    iv2.remove().unwrap();
}
