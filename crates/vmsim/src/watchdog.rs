//! The hung-task watchdog (`kernel/hung_task.c`): a thread that reports every simulated task
//! that has been inside one operation longer than a timeout, with what it was doing and the
//! validator's view of the locks it holds — so a real deadlock becomes a report, never a hung
//! test.
//!
//! Every public operation of the simulator (fault, mmap, munmap, fork, exit, reclaim, OOM
//! reaping, allocation) marks the calling thread busy for its duration ([`Machine::enter`]);
//! drivers and scenarios mark their own sections (an ioctl, a device fault) the same way.
//! Nesting keeps the outermost operation and its start time.

use crate::primitive::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::cell::RefCell;
use std::sync::{Arc, Weak};

use crate::primitive::{thread, thread_local, Mutex};
use std::time::Duration;

use crate::machine::{Inner, Machine};

/// The operations a task can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    Idle = 0,
    Fault,
    Read,
    Write,
    Mmap,
    Munmap,
    Mremap,
    Mprotect,
    Madvise,
    Fork,
    ExitMmap,
    PinUserPages,
    Reclaim,
    OomReap,
    Custom,
}

const OPS: [Op; 15] = [
    Op::Idle,
    Op::Fault,
    Op::Read,
    Op::Write,
    Op::Mmap,
    Op::Munmap,
    Op::Mremap,
    Op::Mprotect,
    Op::Madvise,
    Op::Fork,
    Op::ExitMmap,
    Op::PinUserPages,
    Op::Reclaim,
    Op::OomReap,
    Op::Custom,
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Idle => "idle",
            Op::Fault => "handle_mm_fault",
            Op::Read => "read",
            Op::Write => "write",
            Op::Mmap => "mmap",
            Op::Munmap => "munmap",
            Op::Mremap => "mremap",
            Op::Mprotect => "mprotect",
            Op::Madvise => "madvise",
            Op::Fork => "fork",
            Op::ExitMmap => "exit_mmap",
            Op::PinUserPages => "pin_user_pages",
            Op::Reclaim => "reclaim",
            Op::OomReap => "oom_reap_task",
            Op::Custom => "custom",
        }
    }
}

/// One thread's current operation. Only its thread writes it (plain relaxed stores: the
/// watchdog reads a possibly torn snapshot, which can only delay a report by one period).
pub(crate) struct Slot {
    thread: String,
    depth: AtomicU32,
    op: AtomicU8,
    mm: AtomicU64,
    addr: AtomicU64,
    tick: AtomicU64,
    reported: AtomicU64,
    custom: Mutex<String>,
}

thread_local! {
    static SLOTS: RefCell<Vec<(Weak<Inner>, Arc<Slot>)>> = const { RefCell::new(Vec::new()) };
}

/// Marks the calling thread busy in an operation until dropped.
#[must_use = "the operation ends when the guard is dropped"]
pub struct TaskGuard {
    slot: Arc<Slot>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let d = self.slot.depth.load(Relaxed).saturating_sub(1);
        self.slot.depth.store(d, Relaxed);
        if d == 0 {
            self.slot.op.store(Op::Idle as u8, Relaxed);
        }
    }
}

impl Inner {
    fn slot(self: &Arc<Self>) -> Arc<Slot> {
        SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            if let Some((_, s)) = slots
                .iter()
                .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(self)))
            {
                return s.clone();
            }
            slots.retain(|(w, _)| w.strong_count() > 0);
            let t = thread::current();
            let s = Arc::new(Slot {
                thread: t
                    .name()
                    .map_or_else(|| format!("{:?}", t.id()), str::to_string),
                depth: AtomicU32::new(0),
                op: AtomicU8::new(Op::Idle as u8),
                mm: AtomicU64::new(0),
                addr: AtomicU64::new(0),
                tick: AtomicU64::new(0),
                reported: AtomicU64::new(u64::MAX),
                custom: Mutex::new(String::new()),
            });
            self.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::downgrade(&s));
            slots.push((Arc::downgrade(self), s.clone()));
            s
        })
    }

    /// Marks the calling thread busy in `op` on `(mm, addr)` until the guard drops. A few
    /// relaxed atomics: no lock, no clock read, no allocation after the thread's first call.
    pub(crate) fn enter(self: &Arc<Self>, op: Op, mm: u64, addr: u64) -> TaskGuard {
        let slot = self.slot();
        let d = slot.depth.load(Relaxed);
        if d == 0 {
            slot.mm.store(mm, Relaxed);
            slot.addr.store(addr, Relaxed);
            slot.tick.store(self.watch_tick.load(Relaxed), Relaxed);
            slot.op.store(op as u8, Relaxed);
        }
        slot.depth.store(d + 1, Relaxed);
        TaskGuard { slot }
    }
}

/// The outermost operation the calling thread is in, on any machine: `(thread, op)`.
pub(crate) fn current_op() -> Option<(String, String)> {
    SLOTS
        .try_with(|slots| {
            slots.borrow().iter().find_map(|(_, s)| {
                let op = OPS[s.op.load(Relaxed) as usize % OPS.len()];
                let name = match op {
                    Op::Idle => return None,
                    Op::Custom => s.custom.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    _ => op.name().to_string(),
                };
                Some((s.thread.clone(), name))
            })
        })
        .ok()
        .flatten()
}

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
        )
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
        let g = self.0.enter(Op::Custom, 0, 0);
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
                    let now = m.watch_tick.fetch_add(1, Relaxed) + 1;
                    let slots: Vec<Arc<Slot>> = {
                        let mut t = m.tasks.lock().unwrap_or_else(|e| e.into_inner());
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
                        let r = HungTask {
                            thread: slot.thread.clone(),
                            op: op.name(),
                            detail,
                            blocked_for: period * (now - since) as u32,
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
