//! A recording subscriber for the vmsim tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mmu_notifier::{
    Capabilities, Event, Interval, IntervalNotifierOps, Mm, MmuNotifierOps, Range, WouldBlock,
};

/// One callback seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Start(Event, u64, u64, bool),
    End(Event, u64, u64, bool),
    Release,
    Young(u64, u64),
}

/// Records every callback; answers `young` to the aging callbacks; refuses non-blockable
/// starts when `refuse` is set.
#[derive(Default)]
pub struct Recorder {
    pub log: Mutex<Vec<Seen>>,
    pub young: AtomicBool,
    pub refuse: AtomicBool,
    pub refusals: AtomicUsize,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
    pub fn starts(&self) -> Vec<(Event, u64, u64, bool)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                Seen::Start(e, a, b, bl) => Some((*e, *a, *b, *bl)),
                _ => None,
            })
            .collect()
    }
}

/// A list subscriber forwarding to a shared recorder.
pub struct List(pub Arc<Recorder>, pub Capabilities);

impl MmuNotifierOps for List {
    fn capabilities(&self) -> Capabilities {
        self.1
    }
    fn release(&self, _mm: &Mm) {
        self.0.log.lock().unwrap().push(Seen::Release);
    }
    fn clear_flush_young(&self, _mm: &Mm, start: u64, end: u64) -> bool {
        self.0.log.lock().unwrap().push(Seen::Young(start, end));
        self.0.young.load(Ordering::Relaxed)
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        if self.0.refuse.load(Ordering::Relaxed) && !r.is_blockable() {
            self.0.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(WouldBlock);
        }
        self.0.log.lock().unwrap().push(Seen::Start(
            r.event(),
            r.start(),
            r.end(),
            r.is_blockable(),
        ));
        Ok(())
    }
    fn invalidate_range_end(&self, r: &Range) {
        self.0
            .log
            .lock()
            .unwrap()
            .push(Seen::End(r.event(), r.start(), r.end(), r.is_blockable()));
    }
}

/// The capabilities of a recording subscriber whose start cannot fail.
pub fn recording() -> Capabilities {
    Capabilities::INVALIDATE_RANGE_START
        | Capabilities::INVALIDATE_RANGE_END
        | Capabilities::RELEASE
        | Capabilities::CLEAR_FLUSH_YOUNG
}

/// An interval subscriber recording into a recorder.
pub struct Iv(pub Arc<Recorder>);

impl IntervalNotifierOps for Iv {
    fn invalidate(&self, iv: &Interval, r: &Range, cur_seq: u64) -> bool {
        if self.0.refuse.load(Ordering::Relaxed) && !r.is_blockable() {
            self.0.refusals.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        iv.set_seq(cur_seq);
        self.0.log.lock().unwrap().push(Seen::Start(
            r.event(),
            r.start(),
            r.end(),
            r.is_blockable(),
        ));
        true
    }
}
