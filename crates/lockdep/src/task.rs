//! The per-task state: the held-lock stack and the context counters.
//!
//! The kernel keeps these in `task_struct` (`held_locks`, `lockdep_depth`, `preempt_count`,
//! `non_block_count`). Here a task is a thread, reached through [`with_task`], which uses
//! `std::thread_local!` normally, `loom::thread_local!` under `--cfg loom` and a shuttle task
//! local under `--cfg shuttle`: both model checkers run every model thread as a coroutine on
//! one OS thread, so a std thread-local would be shared by all of them. A task also knows
//! where its reports go (its scopes) and which validator context it works in.
//!
//! When the thread ends, the state's `Drop` checks that no lock is still held (the kernel's
//! `debug_check_no_locks_held` at exit).

use std::cell::RefCell;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::chain::Memo;
use crate::class::ClassInfo;
use crate::domain::Domain;
use crate::report::{HeldLockInfo, Report, ReportKind, ThreadInfo};
use crate::sink::{self, Collector, Route};
use crate::Read;

/// One entry of the held-lock stack.
#[derive(Clone, Copy)]
pub(crate) struct HeldLock {
    pub(crate) class: &'static ClassInfo,
    /// The lock object's address, to match the release.
    pub(crate) instance: usize,
    pub(crate) read: Read,
    pub(crate) trylock: bool,
    /// A spinning lock: holding it makes the context atomic.
    pub(crate) spin: bool,
    pub(crate) loc: &'static Location<'static>,
    /// The chain key before this entry was pushed.
    pub(crate) prev_chain_key: u64,
}

impl HeldLock {
    pub(crate) fn info(&self) -> HeldLockInfo {
        HeldLockInfo {
            class: self.class.to_ref(),
            mode: match (self.read, self.trylock) {
                (Read::Exclusive, false) => "exclusive",
                (Read::Exclusive, true) => "exclusive, trylock",
                (Read::Shared, false) => "read",
                (Read::Shared, true) => "read, trylock",
                (Read::Recursive, false) => "recursive read",
                (Read::Recursive, true) => "recursive read, trylock",
            }
            .to_owned(),
            acquired_at: self.loc.into(),
        }
    }
}

/// The chain key of an empty held-lock stack.
pub(crate) const CHAIN_KEY_INIT: u64 = 0x6c6f_636b_6465_7021;

pub(crate) struct Task {
    pub(crate) pid: u64,
    pub(crate) name: String,
    pub(crate) held: Vec<HeldLock>,
    /// Rolling hash of the held classes (and read modes), bottom to top.
    pub(crate) chain_key: u64,
    /// Atomic sections plus spinlocks held (`preempt_count`).
    pub(crate) preempt_count: u32,
    /// Where the outermost atomic section or spinlock began.
    pub(crate) atomic_since: Option<&'static Location<'static>>,
    pub(crate) non_block: u32,
    pub(crate) non_block_since: Option<&'static Location<'static>>,
    /// The scopes this thread reports to.
    pub(crate) scopes: Vec<Arc<Collector>>,
    /// The validator context this thread works in (changed only by [`Task::set_domain`],
    /// which empties the memo).
    domain: Arc<Domain>,
    /// Chain keys this task found in its context's chain cache (`chain.rs`).
    pub(crate) memo: Memo,
    /// Where this task publishes what it waits for (made at its first contended lock).
    pub(crate) blocked: Option<Arc<crate::blocked::Slot>>,
}

static NEXT_PID: AtomicU64 = AtomicU64::new(1);

impl Task {
    fn new() -> Self {
        Self {
            pid: NEXT_PID.fetch_add(1, Ordering::Relaxed),
            name: crate::primitive::current_thread_name(),
            held: Vec::with_capacity(16),
            chain_key: CHAIN_KEY_INIT,
            preempt_count: 0,
            atomic_since: None,
            non_block: 0,
            non_block_since: None,
            scopes: Vec::new(),
            domain: crate::domain::global().clone(),
            memo: Memo::new(),
            blocked: None,
        }
    }

    /// The validator context this task works in.
    #[inline(always)]
    pub(crate) fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// Moves the task to another validator context; returns the one it leaves. The memo of
    /// chains found in the old context's cache is emptied: each chain is validated again in
    /// the new one.
    pub(crate) fn set_domain(&mut self, domain: Arc<Domain>) -> Arc<Domain> {
        self.memo.clear();
        std::mem::replace(&mut self.domain, domain)
    }

    /// Whether the chain `key` was validated in this task's context: the task's memo, then
    /// the context's chain cache (a hit there is remembered). Loads only from shared memory.
    #[inline(always)]
    pub(crate) fn chain_validated(&mut self, key: u64) -> bool {
        self.memo.contains(key) || self.chain_validated_in_context(key)
    }

    /// The memo missed: probe the context's chain cache.
    #[inline(never)]
    fn chain_validated_in_context(&mut self, key: u64) -> bool {
        let hit = self.domain.chains.contains(key);
        if hit {
            self.memo.remember(key);
        }
        hit
    }

    /// Where this task's reports go.
    pub(crate) fn route(&self) -> Route {
        Route {
            scopes: self.scopes.clone(),
            context: self.domain.id,
        }
    }

    pub(crate) fn thread(&self) -> ThreadInfo {
        ThreadInfo {
            name: self.name.clone(),
            pid: self.pid,
        }
    }

    pub(crate) fn held_info(&self) -> Vec<HeldLockInfo> {
        self.held.iter().map(HeldLock::info).collect()
    }

    pub(crate) fn enter_atomic(&mut self, loc: &'static Location<'static>) {
        if self.preempt_count == 0 {
            self.atomic_since = Some(loc);
        }
        self.preempt_count += 1;
    }

    pub(crate) fn exit_atomic(&mut self) {
        self.preempt_count = self.preempt_count.saturating_sub(1);
        if self.preempt_count == 0 {
            self.atomic_since = None;
        }
    }

    /// Pushes an entry whose validation is done.
    #[inline(always)]
    pub(crate) fn push(&mut self, entry: HeldLock, new_key: u64) {
        if entry.spin {
            self.enter_atomic(entry.loc);
        }
        self.held.push(entry);
        self.chain_key = new_key;
    }

    /// Removes the entry for `instance`; `false` when it is not held.
    #[inline(always)]
    pub(crate) fn pop(&mut self, instance: usize) -> bool {
        let Some(top) = self.held.last() else {
            return false;
        };
        if top.instance == instance {
            let top = *top;
            self.held.pop();
            self.chain_key = top.prev_chain_key;
            if top.spin {
                self.exit_atomic();
            }
            return true;
        }
        self.pop_out_of_order(instance)
    }

    /// Releasing a lock that is not on top: remove it and recompute the chain keys of the
    /// entries above it (the kernel re-acquires them).
    #[cold]
    fn pop_out_of_order(&mut self, instance: usize) -> bool {
        let Some(i) = self.held.iter().rposition(|h| h.instance == instance) else {
            return false;
        };
        let gone = self.held.remove(i);
        if gone.spin {
            self.exit_atomic();
        }
        let mut key = gone.prev_chain_key;
        for h in &mut self.held[i..] {
            h.prev_chain_key = key;
            key = crate::chain::chain_hash(key, h.class.id, h.read);
        }
        self.chain_key = key;
        true
    }

    /// The `HeldAtExit` report for whatever is still held, and forgets it.
    pub(crate) fn exit_report(
        &mut self,
        loc: Option<&'static Location<'static>>,
    ) -> Option<Report> {
        if self.held.is_empty() && self.non_block == 0 {
            return None;
        }
        let held = self.held_info();
        let mut message = format!(
            "thread '{}' (pid {}) is ending with {} lock(s) held",
            self.name,
            self.pid,
            self.held.len()
        );
        if self.non_block > 0 {
            message.push_str(&format!(
                " and non_block: {} (a non_block_start() without its non_block_end())",
                self.non_block
            ));
        }
        message.push('.');
        self.held.clear();
        self.chain_key = CHAIN_KEY_INIT;
        self.preempt_count = 0;
        self.atomic_since = None;
        self.non_block = 0;
        self.non_block_since = None;
        let mut r = Report::new(ReportKind::HeldAtExit, self.thread(), loc);
        r.message = message;
        r.held = held;
        Some(r)
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if !crate::is_enabled() {
            return;
        }
        if let Some(r) = self.exit_report(None) {
            // No panic here even in strict mode: a panic in a thread-local destructor aborts.
            sink::emit_from_exit(r, &self.route());
        }
    }
}

#[cfg(not(any(loom, shuttle)))]
std::thread_local! {
    static TASK: RefCell<Task> = RefCell::new(Task::new());
}

#[cfg(all(shuttle, not(loom)))]
shuttle::thread_local! {
    static TASK: RefCell<Task> = RefCell::new(Task::new());
}

#[cfg(loom)]
loom::thread_local! {
    static TASK: RefCell<Task> = RefCell::new(Task::new());
}

/// [`with_task`] for the fast paths of acquisition and release, without the two stores of
/// the borrow flag (each store waits to drain at the lock's own atomic instruction that
/// follows). `f` must not call `with_task` or `with_task_fast` (it is the validator's own
/// code, never a report or user code). `None` where `with_task` would give `None`, including
/// inside a `with_task` closure, so a re-entrant acquisition still stays out of the way.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn with_task_fast<R>(f: impl FnOnce(&mut Task) -> R) -> Option<R> {
    TASK.try_with(|cell| {
        // SAFETY: the task cell is borrowed only mutably (through `with_task`) and only on
        // this thread. `try_borrow_unguarded` succeeding means no such borrow is live now,
        // and the reference it returns is dropped at once. `f` does not reach `with_task` or
        // this function (the caller's contract), so the `&mut` made here is the only
        // reference to the task until `f` returns.
        unsafe {
            cell.try_borrow_unguarded().ok()?;
            Some(f(&mut *cell.as_ptr()))
        }
    })
    .ok()
    .flatten()
}

/// Runs `f` on the current task's state. `None` while the thread's locals are being torn
/// down, or on re-entry (a report being built that takes a validated lock), where the
/// validator stays out of the way rather than panic.
#[inline(always)]
pub(crate) fn with_task<R>(f: impl FnOnce(&mut Task) -> R) -> Option<R> {
    TASK.try_with(|t| t.try_borrow_mut().ok().map(|mut t| f(&mut t)))
        .ok()
        .flatten()
}
