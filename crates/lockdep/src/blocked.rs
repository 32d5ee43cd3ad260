//! Who is waiting for what: the kernel's `debug_show_all_locks` for the moment a lock is
//! contended.
//!
//! A task that finds a lock taken publishes, before it waits, the lock it waits for and the
//! locks it holds; it withdraws the record once it has the lock. A watchdog that finds a task
//! stuck ([`blocked_tasks`]) can then say what it holds and what it waits for — which a task's
//! own held-lock stack, private to its thread, cannot tell another thread. Uncontended
//! acquisitions publish nothing: the cost is paid only by tasks that wait anyway.
//!
//! Telling the two apart costs one attempt before the wait. It is the raw lock's own
//! uncontended compare-and-swap (`Backend::try_lock_uncontended`: `parking_lot`'s
//! `try_lock_for(0)`), not `try_lock`, which loads the state first: a `parking_lot` pair taken
//! with `try_lock` before each `lock` cost 1.06–1.16× the bare pair on the project's VM (two
//! runs of `examples/nested_pair_interleaved.rs`), this attempt 1.00×.

use std::panic::Location;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::report::{HeldLockInfo, SourceLocation};

/// A task waiting for a lock.
#[derive(Clone, Debug)]
pub struct BlockedTask {
    /// The thread's name (or id).
    pub thread: String,
    /// The class of the lock it waits for.
    pub waiting_for: String,
    /// Where it asked for it.
    pub at: SourceLocation,
    /// The locks it holds, outermost first.
    pub held: Vec<HeldLockInfo>,
    /// How long it has been waiting.
    pub waiting: Duration,
}

impl std::fmt::Display for BlockedTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} is waiting for ({}) at {} since {} ms, holding {} lock(s):",
            self.thread,
            self.waiting_for,
            self.at,
            self.waiting.as_millis(),
            self.held.len()
        )?;
        for (i, h) in self.held.iter().enumerate() {
            writeln!(f, " #{i}: {h}")?;
        }
        Ok(())
    }
}

struct Record {
    thread: String,
    waiting_for: String,
    at: &'static Location<'static>,
    held: Vec<HeldLockInfo>,
    since: Instant,
}

/// One task's published record (`None` while it is not waiting).
pub(crate) struct Slot(Mutex<Option<Record>>);

static SLOTS: Mutex<Vec<Weak<Slot>>> = Mutex::new(Vec::new());

impl Slot {
    pub(crate) fn register() -> Arc<Slot> {
        let s = Arc::new(Slot(Mutex::new(None)));
        let mut all = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&s));
        s
    }

    /// Publishes that the task `thread`, holding `held`, waits for `class` at `at`.
    pub(crate) fn publish(
        &self,
        thread: String,
        class: &str,
        at: &'static Location<'static>,
        held: Vec<HeldLockInfo>,
    ) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Record {
            thread,
            waiting_for: class.to_string(),
            at,
            held,
            since: Instant::now(),
        });
    }

    /// Withdraws the record: the task has its lock.
    pub(crate) fn withdraw(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Every task now waiting for a validated lock, with what it holds (`debug_show_all_locks`).
/// Empty when validation is off.
pub fn blocked_tasks() -> Vec<BlockedTask> {
    let slots: Vec<Arc<Slot>> = SLOTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    slots
        .iter()
        .filter_map(|s| {
            let r = s.0.lock().unwrap_or_else(PoisonError::into_inner);
            r.as_ref().map(|r| BlockedTask {
                thread: r.thread.clone(),
                waiting_for: r.waiting_for.clone(),
                at: SourceLocation::from(r.at),
                held: r.held.clone(),
                waiting: r.since.elapsed(),
            })
        })
        .collect()
}
