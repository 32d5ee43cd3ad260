//! The validator core: acquisition, release and the chain validation that ties the per-task
//! held-lock stack, the chain cache and the dependency graph together.
//!
//! On every acquisition (kernel: `__lock_acquire` → `validate_chain`):
//! 1. If the lock may sleep, check the context (`might_sleep`).
//! 2. Extend the task's chain key by the new lock. Unless this is a trylock, look the key up
//!    in the chain cache: a hit ends validation (no lock taken).
//! 3. On a miss, under the graph lock of the task's validator context: look again, check for
//!    a lock of the same class already held (AA, `check_deadlock`), then add the edge from the
//!    held lock on top to the new one, each after a strong-path search for a cycle it would
//!    close (`check_prevs_add`, `check_prev_add`). Then publish the chain key.
//! 4. Push the held entry.
//!
//! Reports are made outside the task's state and the graph lock, and before the push, so a
//! strict-mode panic leaves the stack as it was.
//!
//! # Two differences from `kernel/locking/lockdep.c`, both to miss less
//!
//! - **Edges past recursive readers.** The kernel adds an edge from the top held lock only
//!   (and from trylocks above the first non-trylock), since deeper locks reach the new one
//!   through it. That transitivity fails when the top lock is a recursive reader: the path
//!   `X -(ER)-> R -(SN)-> L` is not strong, so holding `X` while taking `L` under a recursive
//!   read section of `R` orders nothing between `X` and `L`, and a real `X`/`L` inversion goes
//!   unreported. Here the walk goes on past recursive-read (and trylock) entries to the first
//!   other one, adding each direct edge. Every edge added is a real "held while acquiring".
//! - **Acquisitions that do not wait** ([`LockMap::acquire_nowait`](crate::LockMap::acquire_nowait)): a
//!   pseudo-lock entered where nothing is waited for (the second half of a section whose first
//!   half did the waiting) is held, so what is taken inside it is ordered after it, but the
//!   entering records no edge into it, as a trylock does not.

use std::marker::PhantomData;
use std::panic::Location;

use crate::chain::chain_hash;
use crate::class::{ClassInfo, DynamicKey, LockClass, Reclaim};
use crate::graph::{dep_bit, dep_names, EdgeOrigin, Graph, Step};
use crate::report::{ContextInfo, Dependency, Report, ReportKind};
use crate::sink::{self, Route};
use crate::task::{with_task, with_task_fast, HeldLock, Task};
use crate::Read;

/// How an acquisition holds the lock.
#[derive(Clone, Copy)]
pub(crate) struct How {
    pub(crate) read: Read,
    pub(crate) trylock: bool,
    /// Spinning lock: holding it makes the context atomic.
    pub(crate) spin: bool,
    /// The acquisition may sleep: check the context first.
    pub(crate) sleep: bool,
}

impl How {
    pub(crate) const fn new(read: Read) -> Self {
        Self {
            read,
            trylock: false,
            spin: false,
            sleep: false,
        }
    }
    pub(crate) const fn trylock(mut self) -> Self {
        self.trylock = true;
        self
    }
    pub(crate) const fn spin(mut self) -> Self {
        self.spin = true;
        self
    }
    pub(crate) const fn sleep(mut self) -> Self {
        self.sleep = true;
        self
    }
}

/// Proof that an acquisition was recorded; releasing it on drop. `!Send`: a lock is released
/// by the task that holds it.
#[must_use]
pub(crate) struct Held {
    /// The lock's address, or 0 when the acquisition was not recorded.
    instance: usize,
    _task_bound: PhantomData<*const ()>,
}

impl Held {
    /// Leaves the lock recorded as held; a later `release` removes it.
    pub(crate) fn keep_held(self) {
        std::mem::forget(self);
    }

    pub(crate) const fn untracked() -> Self {
        Self {
            instance: 0,
            _task_bound: PhantomData,
        }
    }
}

impl Drop for Held {
    #[inline(always)]
    fn drop(&mut self) {
        if self.instance != 0 {
            release(self.instance, None);
        }
    }
}

/// Records an acquisition of a lock of `class` at address `instance` (non-zero).
#[inline]
pub(crate) fn acquire(
    class: LockClass,
    instance: usize,
    how: How,
    loc: &'static Location<'static>,
) -> Held {
    if !crate::is_enabled() {
        return Held::untracked();
    }
    let info = class.info;
    // The fast path builds the entry straight into the stack's storage: an entry built
    // earlier and borrowed by the validation closure was spilled and copied back, which cost
    // a store-forwarding stall on every acquisition.
    // The closure is the validator's own code and calls no `with_task`.
    let fast = with_task_fast(|t| {
        let prev = t.chain_key;
        let key = chain_hash(prev, info.id, how.read);
        let bad_context = how.sleep && (t.preempt_count | t.non_block) != 0;
        // With nothing held there is nothing to order against: skip the lookup.
        let validated = how.trylock || t.held.is_empty() || t.chain_validated(key);
        // A full stack grows on the slow path: no allocation call (and the registers it
        // needs saved) here.
        let room = t.held.len() < t.held.capacity();
        if bad_context || !validated || !room {
            return false;
        }
        if how.spin {
            t.enter_atomic(loc);
        }
        t.held.push(held_lock(info, instance, how, loc, prev));
        t.chain_key = key;
        true
    });
    match fast {
        Some(true) => Held {
            instance,
            _task_bound: PhantomData,
        },
        Some(false) => acquire_slow(info, instance, how, loc),
        None => Held::untracked(),
    }
}

/// The held-stack entry of an acquisition `how` of `instance`, pushed over chain key `prev`.
#[inline(always)]
fn held_lock(
    info: &'static ClassInfo,
    instance: usize,
    how: How,
    loc: &'static Location<'static>,
    prev: u64,
) -> HeldLock {
    HeldLock {
        class: info,
        instance,
        read: how.read,
        trylock: how.trylock,
        spin: how.spin,
        loc,
        prev_chain_key: prev,
    }
}

/// An acquisition whose chain is new or whose context is wrong: validate under the graph
/// lock, report outside every lock, then push.
#[cold]
#[inline(never)]
fn acquire_slow(
    info: &'static ClassInfo,
    instance: usize,
    how: How,
    loc: &'static Location<'static>,
) -> Held {
    let outcome = with_task(|t| {
        let key = chain_hash(t.chain_key, info.id, how.read);
        let entry = held_lock(info, instance, how, loc, t.chain_key);
        let sleep = if how.sleep && (t.preempt_count > 0 || t.non_block > 0) {
            Some(sleep_report(t, loc))
        } else {
            None
        };
        let cycle = if how.trylock {
            None
        } else {
            validate(t, key, &entry)
        };
        let full = full_report(t);
        if sleep.is_none() && cycle.is_none() && full.is_none() {
            t.push(entry, key);
            return None;
        }
        Some((entry, key, [sleep, cycle, full], t.route()))
    });
    match outcome {
        None => Held::untracked(),
        Some(None) => Held {
            instance,
            _task_bound: PhantomData,
        },
        Some(Some((entry, key, reports, route))) => {
            for r in reports.into_iter().flatten() {
                sink::emit(r, &route);
            }
            with_task(|t| t.push(entry, key));
            Held {
                instance,
                _task_bound: PhantomData,
            }
        }
    }
}

/// Validates an acquisition without holding the lock afterwards: `might_lock`, waits and
/// `lock_map_sync`.
#[inline]
pub(crate) fn might_acquire(class: LockClass, how: How, loc: &'static Location<'static>) {
    if !crate::is_enabled() {
        return;
    }
    let info = class.info;
    let outcome = with_task(|t| {
        let mut reports = [None, None, None];
        if how.sleep && (t.preempt_count > 0 || t.non_block > 0) {
            reports[0] = Some(sleep_report(t, loc));
        }
        let key = chain_hash(t.chain_key, info.id, how.read);
        let entry = HeldLock {
            class: info,
            instance: usize::MAX,
            read: how.read,
            trylock: false,
            spin: false,
            loc,
            prev_chain_key: t.chain_key,
        };
        reports[1] = validate(t, key, &entry);
        reports[2] = full_report(t);
        if reports.iter().all(Option::is_none) {
            return None;
        }
        Some((reports, t.route()))
    });
    if let Some(Some((reports, route))) = outcome {
        for r in reports.into_iter().flatten() {
            sink::emit(r, &route);
        }
    }
}

/// Records the release of the lock at `instance`. A release of a lock the task does not
/// hold is a [`ReportKind::BadUnlock`] (with `loc` when the caller knows it).
#[inline(always)]
pub(crate) fn release(instance: usize, loc: Option<&'static Location<'static>>) {
    // `Task::pop` calls no `with_task`.
    if with_task_fast(|t| t.pop(instance)) == Some(false) {
        bad_unlock(loc);
    }
}

#[cold]
#[inline(never)]
fn bad_unlock(loc: Option<&'static Location<'static>>) {
    if let Some((r, route)) = with_task(|t| bad_unlock_report(t, loc)) {
        sink::emit(r, &route);
    }
}

#[cold]
fn bad_unlock_report(t: &Task, loc: Option<&'static Location<'static>>) -> (Report, Route) {
    let mut r = Report::new(ReportKind::BadUnlock, t.thread(), loc);
    r.message = format!(
        "thread '{}' (pid {}) is trying to release a lock it does not hold.",
        t.name, t.pid
    );
    r.held = t.held_info();
    (r, t.route())
}

/// The `SleepingInInvalidContext` report for the task's current context.
#[cold]
pub(crate) fn sleep_report(t: &Task, loc: &'static Location<'static>) -> Report {
    let mut r = Report::new(ReportKind::SleepingInInvalidContext, t.thread(), Some(loc));
    r.context = Some(context_info(t));
    r.held = t.held_info();
    let why = if t.preempt_count > 0 {
        if t.held.iter().any(|h| h.spin) {
            "a spinlock is held (atomic context)"
        } else {
            "inside an atomic section"
        }
    } else {
        "inside non_block_start() .. non_block_end(), where nothing may block (the OOM reaper \
         calling MMU notifiers must make progress)"
    };
    r.message = format!("something that may sleep was called {why}.");
    r
}

pub(crate) fn context_info(t: &Task) -> ContextInfo {
    ContextInfo {
        in_atomic: u32::from(t.preempt_count > 0),
        irqs_disabled: 0,
        non_block: t.non_block,
        preempt_count: t.preempt_count,
        atomic_since: t.atomic_since.map(Into::into),
        non_block_since: t.non_block_since.map(Into::into),
    }
}

/// The chain-cache lookup and, on a miss, the validation of `entry` in the task's context.
#[inline]
fn validate(t: &Task, key: u64, entry: &HeldLock) -> Option<Report> {
    t.domain()
        .lookup_or_validate(key, |g| validate_chain(g, t, entry))
}

/// The `ChainTableFull` report, once per context, when its chain cache has filled up.
#[cold]
fn full_report(t: &Task) -> Option<Report> {
    if !t.domain().take_full_notice() {
        return None;
    }
    let mut r = Report::new(ReportKind::ChainTableFull, t.thread(), None);
    r.message = "the chain cache is full; new lock chains are now validated under the graph \
                 lock every time (correct, but slower)."
        .to_owned();
    Some(r)
}

/// Validates `next` against the task's held locks under the graph lock (a chain-cache miss).
#[cold]
fn validate_chain(g: &mut Graph, t: &Task, next: &HeldLock) -> Option<Report> {
    g.node_mut(next.class);
    // AA: the same class already held (`check_deadlock`). Recursive read on top of a read
    // hold is fine.
    if let Some(prev) = t.held.iter().rev().find(|h| h.class.id == next.class.id) {
        if !(next.read == Read::Recursive && prev.read != Read::Exclusive) {
            return Some(recursive_report(t, prev, next));
        }
    }
    // Edges from the held locks on top down to the first one that is neither a trylock nor a
    // recursive reader (`check_prevs_add` stops at the first non-trylock): deeper locks reach
    // `next` through that one by a strong path. Through a recursive reader they would not (see
    // the module documentation), so the walk goes past it.
    for prev in t.held.iter().rev() {
        if prev.class.id != next.class.id {
            if let Some(r) = check_prev_add(g, t, prev, next) {
                return Some(r);
            }
        }
        if !prev.trylock && prev.read != Read::Recursive {
            break;
        }
    }
    None
}

/// Adds the edge `prev -> next` unless it closes a strong cycle (`check_prev_add`).
fn check_prev_add(g: &mut Graph, t: &Task, prev: &HeldLock, next: &HeldLock) -> Option<Report> {
    let bit = dep_bit(prev.read, next.read);
    if g.edge(prev.class.id, next.class.id)
        .is_some_and(|e| e.kinds & bit != 0)
    {
        return None;
    }
    if let Some(path) = g.find_strong_path(
        next.class.id,
        next.read == Read::Recursive,
        prev.class.id,
        prev.read == Read::Exclusive,
    ) {
        return Some(cycle_report(g, t, prev, next, bit, &path));
    }
    g.add_edge(prev.class, next.class, bit, || EdgeOrigin {
        from_loc: prev.loc,
        to_loc: next.loc,
        thread: std::sync::Arc::from(t.name.as_str()),
    });
    None
}

#[cold]
fn cycle_report(
    g: &Graph,
    t: &Task,
    prev: &HeldLock,
    next: &HeldLock,
    bit: u8,
    path: &[Step],
) -> Report {
    let mut cycle = vec![Dependency {
        from: prev.class.to_ref(),
        to: next.class.to_ref(),
        kinds: dep_names(bit),
        from_acquired_at: prev.loc.into(),
        to_acquired_at: next.loc.into(),
        thread: t.name.clone(),
        new: true,
    }];
    let in_reclaim = |c: &ClassInfo| c.reclaim != Reclaim::No;
    let mut reclaim = in_reclaim(prev.class) || in_reclaim(next.class);
    for step in path {
        let e = g.edge_at(step);
        let (Some(from), Some(to)) = (g.class(step.from), g.class(e.to)) else {
            continue;
        };
        reclaim |= in_reclaim(from) || in_reclaim(to);
        cycle.push(Dependency {
            from: from.to_ref(),
            to: to.to_ref(),
            kinds: dep_names(e.kinds),
            from_acquired_at: e.origin.from_loc.into(),
            to_acquired_at: e.origin.to_loc.into(),
            thread: e.origin.thread.to_string(),
            new: false,
        });
    }
    let kind = if reclaim {
        ReportKind::ReclaimInversion
    } else {
        ReportKind::PossibleCircularLockingDependency
    };
    let mut r = Report::new(kind, t.thread(), Some(next.loc));
    r.message = format!(
        "thread '{}' (pid {}) is trying to acquire lock ({}) while holding ({}),\nbut ({}) \
         already depends on ({}) through the chain below, so this order can deadlock.",
        t.name, t.pid, next.class.name, prev.class.name, next.class.name, prev.class.name
    );
    if reclaim {
        r.message.push_str(
            "\nThe cycle goes through memory reclaim: a lock held across an allocation that may \
             enter direct reclaim is also taken in reclaim, or inside a pseudo-lock that reclaim \
             may take (such as the invalidation of mappings). Allocate before taking the lock, \
             or use Gfp::ATOMIC / Gfp::NOWAIT.",
        );
    }
    r.lock = Some(next.info());
    r.held = t.held_info();
    r.cycle = cycle;
    r
}

#[cold]
fn recursive_report(t: &Task, prev: &HeldLock, next: &HeldLock) -> Report {
    let kind = if next.class.reclaim == Reclaim::Fs {
        ReportKind::ReclaimRecursion
    } else {
        ReportKind::RecursiveLocking
    };
    let mut r = Report::new(kind, t.thread(), Some(next.loc));
    r.message = format!(
        "thread '{}' (pid {}) is trying to acquire lock ({}) but already holds a lock of the \
         same class, acquired at {}.",
        t.name, t.pid, next.class.name, prev.loc
    );
    r.message.push_str(match next.class.reclaim {
        Reclaim::Fs => {
            "\nThis is an allocation that may enter reclaim made from inside reclaim: use \
             Gfp::NOFS / memalloc_noreclaim_save() there."
        }
        Reclaim::Primed => {
            "\nThis pseudo-lock is held for as long as the section it stands for runs, and this \
             thread is inside it: waiting for that section to end (or allocating in a way that \
             may enter reclaim, which may enter it) from inside it waits for itself."
        }
        Reclaim::No => {
            "\nIf these are two different objects taken in a defined order, give the inner one \
             a subclass (lock_nested); otherwise this deadlocks."
        }
    });
    r.lock = Some(next.info());
    r.held = t.held_info();
    r
}

impl Drop for DynamicKey {
    /// Removes the class's dependencies (`lockdep_unregister_key`) from the process-wide
    /// context and from the current thread's.
    fn drop(&mut self) {
        let ids = self.class_ids();
        crate::domain::global().with_locked(|l| l.graph.forget(&ids));
        with_task(|t| t.domain().with_locked(|l| l.graph.forget(&ids)));
    }
}

/// Number of chains validated so far (cache misses) in the current thread's context.
pub(crate) fn chains_validated() -> u64 {
    with_task(|t| t.domain().with_locked(|l| l.chains_validated)).unwrap_or(0)
}

/// The task is about to wait for the lock at `instance` (of `class`, asked for at `loc`):
/// publishes what it waits for and what it holds until the returned guard drops (see
/// `blocked.rs`). Only contended acquisitions call this.
pub(crate) fn waiting(
    class: LockClass,
    instance: usize,
    loc: &'static Location<'static>,
) -> Option<Waiting> {
    if !crate::is_enabled() {
        return None;
    }
    with_task(|t| {
        let slot = t
            .blocked
            .get_or_insert_with(crate::blocked::Slot::register)
            .clone();
        // The acquisition just pushed this lock on the stack (lockdep records before it
        // takes): it is waited for, not held. A lock of the same instance below it is held
        // (a self-deadlock).
        let n = match t.held.last() {
            Some(top) if top.instance == instance => t.held.len() - 1,
            _ => t.held.len(),
        };
        let held = t.held[..n].iter().map(|h| h.info()).collect();
        slot.publish(t.name.clone(), class.name(), loc, held);
        Waiting(slot)
    })
}

/// Withdraws a task's "waiting for" record when dropped.
pub(crate) struct Waiting(std::sync::Arc<crate::blocked::Slot>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.withdraw();
    }
}

/// Whether the current task holds the lock at `instance` (`lockdep_is_held`); `true` when
/// validation is off or the task state is gone.
pub(crate) fn is_held(instance: usize) -> bool {
    if !crate::is_enabled() {
        return true;
    }
    with_task(|t| t.held.iter().any(|h| h.instance == instance)).unwrap_or(true)
}
