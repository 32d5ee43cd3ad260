//! Real threads: invalidations, interval inserts/removes, collision-retry readers and list
//! register/unregister all at once. Bounded by `MMN_STRESS_MS` (default 300 ms).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mmu_notifier::{Event, Interval, IntervalNotifierOps, Range};

/// A secondary mapping of one page: the generation of the primary page it was looked up from.
struct Dev {
    pt: Mutex<Option<u64>>,
}
struct DevRef(Arc<Dev>);
impl IntervalNotifierOps for DevRef {
    fn invalidate(&self, iv: &Interval, r: &Range, cur_seq: u64) -> bool {
        let Some(mut pt) =
            r.lock_or_refuse(|| self.0.pt.lock().unwrap(), || self.0.pt.try_lock().ok())
        else {
            return false;
        };
        iv.set_seq(cur_seq);
        *pt = None;
        true
    }
}

fn budget() -> Duration {
    Duration::from_millis(
        std::env::var("MMN_STRESS_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    )
}

#[test]
fn collision_retry_never_publishes_a_stale_translation_under_concurrent_invalidation() {
    let (mm, d) = mm();
    let page = 0x10_000u64;
    // The primary "page table": generation of the page currently mapped at `page`.
    let primary = Arc::new(AtomicU64::new(1));
    let dev = Arc::new(Dev {
        pt: Mutex::new(None),
    });
    let iv = Arc::new(
        mm.interval_notifier_insert(page, 4096, DevRef(dev.clone()))
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stale = Arc::new(AtomicUsize::new(0));
    let published = Arc::new(AtomicUsize::new(0));

    let mut threads = Vec::new();
    for t in 0..2 {
        let (mm, primary, stop) = (mm.clone(), primary.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                let r = Range::new(page, page + 4096, Event::Unmap).unwrap();
                if t == 0 {
                    let g = mm.invalidate_range_start(r);
                    primary.fetch_add(1, SeqCst);
                    drop(g);
                } else if let Ok(g) = mm.invalidate_range_start_nonblock(r) {
                    primary.fetch_add(1, SeqCst);
                    drop(g);
                }
                n += 1;
            }
            n
        }));
    }
    {
        // Other intervals coming and going on the same mm.
        let (mm, stop) = (mm.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(SeqCst) {
                let other = Arc::new(Dev {
                    pt: Mutex::new(None),
                });
                let x = mm
                    .interval_notifier_insert(page - 4096, 8192, DevRef(other))
                    .unwrap();
                x.remove().unwrap();
                n += 1;
            }
            n
        }));
    }
    {
        let (mm, stop) = (mm.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let log = Log::default();
            let mut n = 0;
            while !stop.load(SeqCst) {
                mm.register(Counter::new("kvm", &log))
                    .unwrap()
                    .unregister()
                    .unwrap();
                log.take();
                n += 1;
            }
            n
        }));
    }
    let deadline = Instant::now() + budget();
    let (iv2, dev2, primary2) = (iv.clone(), dev.clone(), primary.clone());
    let (pub2, stop2) = (published.clone(), stop.clone());
    let reader = std::thread::spawn(move || {
        while Instant::now() < deadline {
            let seq = iv2.read_begin();
            let gen = primary2.load(SeqCst); // "fault in" the page
            let mut pt = dev2.pt.lock().unwrap();
            if iv2.read_retry(seq) {
                continue;
            }
            *pt = Some(gen);
            pub2.fetch_add(1, SeqCst);
            drop(pt);
        }
        stop2.store(true, SeqCst);
    });
    // Checker: whenever the device holds a translation and no invalidation is in flight, it
    // must be the current generation.
    while !stop.load(SeqCst) {
        let pt = dev.pt.lock().unwrap();
        let st = mm.interval_state().unwrap();
        if let Some(g) = *pt {
            if st.active == 0 && g != primary.load(SeqCst) {
                stale.fetch_add(1, SeqCst);
            }
        }
        drop(pt);
        std::thread::yield_now();
    }
    reader.join().unwrap();
    let counts: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(stale.load(SeqCst), 0, "a stale translation was visible");
    assert!(published.load(SeqCst) > 0, "the reader never published");
    assert!(
        counts.iter().all(|&c| c > 0),
        "a thread made no progress: {counts:?}"
    );
    let st = mm.interval_state().unwrap();
    assert_eq!((st.active, st.deferred), (0, 0));
    assert_eq!(d.count(), 0, "no contract violation: {:?}", d.take());
    Arc::try_unwrap(iv).unwrap().remove().unwrap();
}

/// Lazy closing under real threads (src/itree.rs, "Lazy closing"): several threads each
/// invalidating their own interval (so the epoch is mostly left open and joined, never asked
/// to close by a snapshot), one collision-retry reader per interval (whose `read_begin` must
/// ask for the close and be woken by the last end), and a thread inserting and removing an
/// interval that every invalidator's range overlaps (queued tree changes, close requests).
/// Each invalidator checks its own device right after its end: the translation must be gone
/// or current. Every reader must publish (no reader starves for the whole run) and every
/// thread must progress. Built with `MMN_BROKEN=end_before_start` (the epoch ends before the
/// primary's change) it reports stale translations within a 3 s run (checked).
#[test]
fn lazy_closing_readers_of_disjoint_intervals_stay_fresh_and_progress() {
    const THREADS: u64 = 3;
    let (mm, d) = mm();
    let page = 0x10_000u64;
    let stop = Arc::new(AtomicBool::new(false));
    let stale = Arc::new(AtomicUsize::new(0));
    let mut ivs = Vec::new();
    let mut handles = Vec::new();
    let mut readers = Vec::new();
    for t in 0..THREADS {
        let start = page + 2 * t * 4096;
        let dev = Arc::new(Dev {
            pt: Mutex::new(None),
        });
        let gen = Arc::new(AtomicU64::new(1));
        let iv = Arc::new(
            mm.interval_notifier_insert(start, 4096, DevRef(dev.clone()))
                .unwrap(),
        );
        ivs.push(iv.clone());
        {
            let (mm, dev, gen, stop, stale) = (
                mm.clone(),
                dev.clone(),
                gen.clone(),
                stop.clone(),
                stale.clone(),
            );
            handles.push(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(SeqCst) {
                    let r = Range::new(start, start + 4096, Event::Unmap).unwrap();
                    let g = mm.invalidate_range_start(r);
                    gen.fetch_add(1, SeqCst);
                    drop(g);
                    if let Some(v) = *dev.pt.lock().unwrap() {
                        if v != gen.load(SeqCst) {
                            stale.fetch_add(1, SeqCst);
                        }
                    }
                    n += 1;
                }
                n
            }));
        }
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let mut published = 0u64;
            while !stop.load(SeqCst) {
                let seq = iv.read_begin();
                let v = gen.load(SeqCst);
                let mut pt = dev.pt.lock().unwrap();
                if iv.read_retry(seq) {
                    continue;
                }
                *pt = Some(v);
                published += 1;
            }
            published
        }));
    }
    {
        // A range every invalidator overlaps: its inserts and removes are queued behind open
        // epochs and ask for closes.
        let (mm, stop) = (mm.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(SeqCst) {
                let x = mm
                    .interval_notifier_insert(
                        page,
                        2 * THREADS * 4096,
                        DevRef(Arc::new(Dev {
                            pt: Mutex::new(None),
                        })),
                    )
                    .unwrap();
                x.remove().unwrap();
                n += 1;
            }
            n
        }));
    }
    std::thread::sleep(budget());
    stop.store(true, SeqCst);
    let progress: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let published: Vec<u64> = readers.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(stale.load(SeqCst), 0, "a stale translation survived an end");
    assert!(
        progress.iter().all(|&n| n > 0),
        "a thread made no progress: {progress:?}"
    );
    assert!(
        published.iter().all(|&n| n > 0),
        "a reader never published: {published:?}"
    );
    let st = mm.interval_state().unwrap();
    assert_eq!(
        (st.active, st.deferred, st.intervals),
        (0, 0, THREADS as usize)
    );
    assert_eq!(d.count(), 0, "no contract violation: {:?}", d.take());
    drop(ivs);
}
