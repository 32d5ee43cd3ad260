//! Interval callbacks of a non-blockable range run inside `non_block_start()/_end()`, as list
//! callbacks do (feature `lockdep`).
//!
//! Linux's `mn_itree_invalidate` does not open that section, so an interval notifier that
//! sleeps in the OOM reaper's range (seed 003's bug, in the interval drivers: amdgpu, nouveau,
//! mlx5 ODP, i915) goes unreported there. Here it is reported, attributed to the dispatch that
//! opened the section: better than Linux, on purpose.
//!
//! Run with `cargo test -p mmu-notifier --features lockdep --test nonblock_interval`.

#![cfg(feature = "lockdep")]

use std::sync::Arc;

use lockdep::testing::Scope;
use lockdep::{DynamicKey, Mutex, ReportKind};
use mmu_notifier::{Event, Interval, IntervalNotifierOps, Mm, Range};

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
    assert!(since.file.ends_with("interval.rs"), "{since:?}");
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
