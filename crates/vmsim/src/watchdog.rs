//! The hung-task watchdog (`kernel/hung_task.c`): a thread that reports every simulated task
//! that has been inside one operation longer than a timeout, with what it was doing and the
//! validator's view of the locks it holds — so a real deadlock becomes a report, never a hung
//! test.
//!
//! What each thread is doing comes from the task records (`task.rs`); drivers and scenarios mark
//! their own sections (an ioctl, a device fault) with [`Machine::enter`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::machine::Machine;
use crate::primitive::{thread, AtomicBool, Mutex, Ordering::Relaxed};
use crate::task::{Op, Slot, TaskGuard, OPS};

/// A task the watchdog found stuck.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HungTask {
    /// The thread's name (or id).
    pub thread: String,
    /// The outermost operation it is in.
    pub op: &'static str,
    /// What the operation was called on.
    pub detail: String,
    /// How long it had been in it when reported.
    pub blocked_for: Duration,
    /// The validated lock it is waiting for, if it waits for one (`lockdep::blocked_tasks`).
    pub waiting_for: Option<String>,
    /// The validated locks it holds while it waits, outermost first, as `(class) at: file:line`.
    pub holds: Vec<String>,
}

impl std::fmt::Display for HungTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "INFO: task {} blocked for more than {} ms in {} ({})",
            self.thread,
            self.blocked_for.as_millis(),
            self.op,
            self.detail
        )?;
        if let Some(w) = &self.waiting_for {
            write!(
                f,
                "\n  waiting for ({w}), holding {} lock(s):",
                self.holds.len()
            )?;
            for (i, h) in self.holds.iter().enumerate() {
                write!(f, "\n  #{i}: {h}")?;
            }
        }
        Ok(())
    }
}

/// A running watchdog; dropping it stops the thread.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    reports: Arc<Mutex<Vec<HungTask>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Hung tasks reported so far (each task once per stuck operation).
    pub fn reports(&self) -> Vec<HungTask> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits up to `limit` for a first report.
    pub fn wait_for_report(&self, limit: Duration) -> Option<HungTask> {
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if let Some(r) = self.reports().into_iter().next() {
                return Some(r);
            }
            thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join(); // a panicked watchdog thread has nothing left to report
        }
    }
}

impl Machine {
    /// Marks the calling thread busy in an operation of its own (a driver's ioctl, a device
    /// fault) until the guard drops, for the watchdog; `what` names it in reports.
    pub fn enter(&self, what: impl Into<String>) -> TaskGuard {
        let g = self.0.tasks.enter(Op::Custom, 0, 0);
        if g.slot.depth.load(Relaxed) == 1 {
            *g.slot.custom.lock().unwrap_or_else(|e| e.into_inner()) = what.into();
        }
        g
    }

    /// Starts the hung-task watchdog: every `timeout / 4` it looks for tasks that have been in
    /// one operation longer than `timeout`, prints each to stderr once (as the kernel's "INFO:
    /// task … blocked for more than …") and keeps it for [`Watchdog::reports`].
    pub fn watchdog(&self, timeout: Duration) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let weak = Arc::downgrade(&self.0);
        let (s2, r2) = (stop.clone(), reports.clone());
        let period = (timeout / 4).max(Duration::from_millis(1));
        let thread = thread::Builder::new()
            .name("khungtaskd".into())
            .spawn(move || {
                while !s2.load(std::sync::atomic::Ordering::Acquire) {
                    thread::sleep(period);
                    let Some(m) = weak.upgrade() else { return };
                    let now = m.tasks.tick.fetch_add(1, Relaxed) + 1;
                    let slots: Vec<Arc<Slot>> = {
                        let mut t = m.tasks.slots.lock().unwrap_or_else(|e| e.into_inner());
                        t.retain(|w| w.strong_count() > 0);
                        t.iter().filter_map(Weak::upgrade).collect()
                    };
                    drop(m);
                    for slot in slots {
                        let op = OPS[slot.op.load(Relaxed) as usize % OPS.len()];
                        let since = slot.tick.load(Relaxed);
                        // More than four periods (the timeout) in the same operation.
                        if op == Op::Idle || now < since + 5 || slot.reported.load(Relaxed) == since
                        {
                            continue;
                        }
                        slot.reported.store(since, Relaxed);
                        let (mm, addr) = (slot.mm.load(Relaxed), slot.addr.load(Relaxed));
                        let detail = if op == Op::Custom {
                            slot.custom
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .clone()
                        } else {
                            format!("mm {mm} at {addr:#x}")
                        };
                        // What the validator saw it wait for and hold (the kernel's
                        // `debug_show_all_locks` after "blocked for more than").
                        let blocked = lockdep::blocked_tasks()
                            .into_iter()
                            .find(|b| b.thread == slot.thread);
                        let r = HungTask {
                            thread: slot.thread.clone(),
                            op: op.name(),
                            detail,
                            blocked_for: period * (now - since) as u32,
                            waiting_for: blocked.as_ref().map(|b| b.waiting_for.clone()),
                            holds: blocked
                                .map(|b| b.held.iter().map(|h| h.to_string()).collect())
                                .unwrap_or_default(),
                        };
                        eprintln!("{r}");
                        r2.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    }
                }
            })
            .ok();
        Watchdog {
            stop,
            reports,
            thread,
        }
    }
}
