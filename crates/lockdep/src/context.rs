//! Contexts: where sleeping is not allowed, and the task-exit check.
//!
//! The kernel's `might_sleep()` (CONFIG_DEBUG_ATOMIC_SLEEP, `__might_resched`) reports a
//! sleeping call made in atomic context, with a preemption-disabled section or a spinlock, or
//! inside `non_block_start()` .. `non_block_end()` (`include/linux/sched.h`): a section that is
//! preemptible but must never block, added for the OOM reaper calling MMU notifiers
//! (`__oom_reap_task_mm` in `mm/oom_kill.c`): if a notifier
//! blocked on a mutex whose holder allocates memory, the reaper, the OOM handler's guarantee of
//! progress, would hang. Every sleeping primitive of this crate calls `might_sleep()`, so any
//! of them used in such a section is reported, on the first run, whether or not it would have
//! blocked this time.

use std::marker::PhantomData;
#[cfg(feature = "enabled")]
use std::panic::Location;

#[cfg(feature = "enabled")]
use crate::report::{Report, ReportKind};
#[cfg(feature = "enabled")]
use crate::sink;
#[cfg(feature = "enabled")]
use crate::task::with_task;

/// The caller is about to do something that may sleep (block). Reported as
/// [`ReportKind::SleepingInInvalidContext`](crate::ReportKind::SleepingInInvalidContext) when
/// called in atomic context or in a `non_block` section.
#[inline]
#[track_caller]
pub fn might_sleep() {
    #[cfg(feature = "enabled")]
    {
        if !crate::is_enabled() {
            return;
        }
        let loc = Location::caller();
        let r = with_task(|t| {
            (t.preempt_count > 0 || t.non_block > 0)
                .then(|| (crate::validator::sleep_report(t, loc), t.route()))
        });
        if let Some(Some((r, route))) = r {
            sink::emit(r, &route);
        }
    }
}

/// [`might_sleep`] when `cond` holds (`might_sleep_if`).
#[inline]
#[track_caller]
pub fn might_sleep_if(cond: bool) {
    if cond {
        might_sleep();
    }
}

/// Enters a section that must not block (`non_block_start()`); nests. Pair with
/// [`non_block_end`], or use [`non_block_section`].
#[inline]
#[track_caller]
pub fn non_block_start() {
    #[cfg(feature = "enabled")]
    {
        if !crate::is_enabled() {
            return;
        }
        let loc = Location::caller();
        with_task(|t| {
            if t.non_block == 0 {
                t.non_block_since = Some(loc);
            }
            t.non_block += 1;
        });
    }
}

/// Leaves a `non_block` section (`non_block_end()`). Without a matching start it is reported
/// as [`ReportKind::UnbalancedNonBlockEnd`](crate::ReportKind::UnbalancedNonBlockEnd) and
/// the count stays 0.
#[inline]
#[track_caller]
pub fn non_block_end() {
    #[cfg(feature = "enabled")]
    {
        if !crate::is_enabled() {
            return;
        }
        let loc = Location::caller();
        let bad = with_task(|t| {
            if t.non_block == 0 {
                let mut r = Report::new(ReportKind::UnbalancedNonBlockEnd, t.thread(), Some(loc));
                r.message = format!(
                    "thread '{}' (pid {}) called non_block_end() with no non_block section open.",
                    t.name, t.pid
                );
                r.held = t.held_info();
                return Some((r, t.route()));
            }
            t.non_block -= 1;
            if t.non_block == 0 {
                t.non_block_since = None;
            }
            None
        });
        if let Some(Some((r, route))) = bad {
            sink::emit(r, &route);
        }
    }
}

/// A `non_block` section as a guard: [`non_block_start`] now, [`non_block_end`] on drop.
#[must_use = "the section ends when the guard is dropped"]
pub struct NonBlockGuard {
    #[cfg(feature = "enabled")]
    tracked: bool,
    _task_bound: PhantomData<*const ()>,
}

impl NonBlockGuard {
    /// Enters a `non_block` section.
    #[inline]
    #[track_caller]
    pub fn new() -> Self {
        #[cfg(feature = "enabled")]
        {
            let tracked = crate::is_enabled();
            if tracked {
                non_block_start();
            }
            Self {
                tracked,
                _task_bound: PhantomData,
            }
        }
        #[cfg(not(feature = "enabled"))]
        Self {
            _task_bound: PhantomData,
        }
    }
}

impl Default for NonBlockGuard {
    #[track_caller]
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NonBlockGuard {
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "enabled")]
        if self.tracked {
            with_task(|t| {
                t.non_block = t.non_block.saturating_sub(1);
                if t.non_block == 0 {
                    t.non_block_since = None;
                }
            });
        }
    }
}

impl std::fmt::Debug for NonBlockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonBlockGuard")
    }
}

/// Enters a `non_block` section until the guard drops.
#[inline]
#[track_caller]
pub fn non_block_section() -> NonBlockGuard {
    NonBlockGuard::new()
}

/// An atomic section (the analogue of `preempt_disable()` .. `preempt_enable()`): nothing in
/// it may sleep. Ends when dropped.
#[must_use = "the section ends when the guard is dropped"]
pub struct AtomicSection {
    #[cfg(feature = "enabled")]
    tracked: bool,
    _task_bound: PhantomData<*const ()>,
}

/// Enters an atomic section until the guard drops; nests.
#[inline]
#[track_caller]
pub fn atomic_section() -> AtomicSection {
    #[cfg(feature = "enabled")]
    {
        let loc = Location::caller();
        let tracked = crate::is_enabled() && with_task(|t| t.enter_atomic(loc)).is_some();
        AtomicSection {
            tracked,
            _task_bound: PhantomData,
        }
    }
    #[cfg(not(feature = "enabled"))]
    AtomicSection {
        _task_bound: PhantomData,
    }
}

impl Drop for AtomicSection {
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "enabled")]
        if self.tracked {
            with_task(|t| t.exit_atomic());
        }
    }
}

impl std::fmt::Debug for AtomicSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtomicSection")
    }
}

/// Whether the current task is in atomic context (`in_atomic()`): an atomic section or a
/// spinlock held. Always `false` with validation compiled out.
pub fn in_atomic() -> bool {
    #[cfg(feature = "enabled")]
    {
        with_task(|t| t.preempt_count > 0).unwrap_or(false)
    }
    #[cfg(not(feature = "enabled"))]
    false
}

/// The current task's `non_block` nesting count.
pub fn non_block_count() -> u32 {
    #[cfg(feature = "enabled")]
    {
        with_task(|t| t.non_block).unwrap_or(0)
    }
    #[cfg(not(feature = "enabled"))]
    0
}

/// How many locks (and pseudo-locks) the current task holds (`lockdep_depth`).
pub fn held_lock_count() -> usize {
    #[cfg(feature = "enabled")]
    {
        with_task(|t| t.held.len()).unwrap_or(0)
    }
    #[cfg(not(feature = "enabled"))]
    0
}

/// The task is about to end: reports locks still held and an open `non_block` section as
/// [`ReportKind::HeldAtExit`](crate::ReportKind::HeldAtExit), then forgets them. The same
/// check runs by itself when a thread ends; call this where a task ends without its thread
/// ending (a pooled worker finishing a job).
#[track_caller]
pub fn check_task_exit() {
    #[cfg(feature = "enabled")]
    {
        if !crate::is_enabled() {
            return;
        }
        let loc = Location::caller();
        if let Some(Some((r, route))) =
            with_task(|t| t.exit_report(Some(loc)).map(|r| (r, t.route())))
        {
            sink::emit(r, &route);
        }
    }
}
