//! What each thread of a machine is doing: every public operation of the simulator (fault,
//! mmap, munmap, fork, exit, reclaim, OOM reaping) marks its thread busy for its duration, so the
//! hung-task watchdog can report a thread stuck in one, and an invariant violation can say where
//! it was found. Marking costs a few relaxed atomics: no lock, no clock read, no allocation after
//! a thread's first call. Nesting keeps the outermost operation.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use crate::primitive::{
    thread, thread_local, AtomicU32, AtomicU64, AtomicU8, Mutex, Ordering::Relaxed,
};

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

pub(crate) const OPS: [Op; 15] = [
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
    pub(crate) fn name(self) -> &'static str {
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
    pub(crate) thread: String,
    pub(crate) depth: AtomicU32,
    pub(crate) op: AtomicU8,
    pub(crate) mm: AtomicU64,
    pub(crate) addr: AtomicU64,
    pub(crate) tick: AtomicU64,
    pub(crate) reported: AtomicU64,
    pub(crate) custom: Mutex<String>,
}

thread_local! {
    static SLOTS: RefCell<Vec<(Weak<Tasks>, Arc<Slot>)>> = const { RefCell::new(Vec::new()) };
}

/// One machine's tasks: every thread's slot, and the watchdog's clock.
#[derive(Default)]
pub(crate) struct Tasks {
    pub(crate) slots: Mutex<Vec<Weak<Slot>>>,
    /// Watchdog periods elapsed (0 without a watchdog).
    pub(crate) tick: AtomicU64,
}

/// Marks the calling thread busy in an operation until dropped.
#[must_use = "the operation ends when the guard is dropped"]
pub struct TaskGuard {
    pub(crate) slot: Arc<Slot>,
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

impl Tasks {
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
            self.slots
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
            slot.tick.store(self.tick.load(Relaxed), Relaxed);
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
