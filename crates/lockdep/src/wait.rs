//! Waits modelled as acquisitions: [`Completion`] and [`WaitQueue`].
//!
//! Waiting for an event is, for deadlock purposes, like taking a lock that the signalling
//! side holds until it signals: a thread that waits for X while holding L needs everything X's
//! signaller needs, so if the signaller takes L before signalling, neither makes progress.
//! Lockdep cannot know which thread will signal, but it can be told where the signalling
//! code runs: the signaller holds the wait's class in a *signal section*
//! ([`Completion::signal_section`]), the waiter validates an acquisition of the class before
//! blocking (the `flush_work` pattern). Waiting on X while holding L records L → X; taking L
//! inside X's signal section records X → L; the pair is reported as a cycle, from a run in
//! which nothing hung.

use std::panic::Location;

use crate::class::LockClass;
use crate::map::LockMapGuard;
use crate::primitive::{RawCondvar, RawMutex};
use crate::validator::{self, How};
use crate::{LockMap, Read};

/// A one-shot (or counting) event: `complete()` wakes one waiter, `complete_all()` all,
/// present and future (`struct completion`).
pub struct Completion {
    map: LockMap,
    /// Completions pending; `u32::MAX` after `complete_all`.
    done: RawMutex<u32>,
    cv: RawCondvar,
}

impl Completion {
    /// A completion whose waits are acquisitions of `class`.
    pub fn new(class: impl Into<LockClass>) -> Self {
        Self {
            map: LockMap::with_class(class),
            done: RawMutex::new(0),
            cv: RawCondvar::new(),
        }
    }

    /// Signals one waiter (or the next `wait`).
    pub fn complete(&self) {
        let mut d = self.done.lock();
        *d = d.saturating_add(1);
        drop(d);
        self.cv.notify_one();
    }

    /// Signals every waiter, now and later, until [`Completion::reinit`].
    pub fn complete_all(&self) {
        *self.done.lock() = u32::MAX;
        self.cv.notify_all();
    }

    /// Forgets past completions (`reinit_completion`).
    pub fn reinit(&self) {
        *self.done.lock() = 0;
    }

    /// Whether a `wait` would return at once (`completion_done`).
    pub fn is_done(&self) -> bool {
        *self.done.lock() > 0
    }

    /// Consumes a completion if one is pending, without waiting (`try_wait_for_completion`);
    /// records nothing, like a trylock.
    pub fn try_wait(&self) -> bool {
        let mut d = self.done.lock();
        match *d {
            0 => false,
            u32::MAX => true,
            _ => {
                *d -= 1;
                true
            }
        }
    }

    /// Waits for a completion (`wait_for_completion`): may sleep, and is validated as an
    /// acquisition of the completion's class.
    #[track_caller]
    pub fn wait(&self) {
        validator::might_acquire(
            self.map.class(),
            How::new(Read::Exclusive).sleep(),
            Location::caller(),
        );
        let mut d = self.done.lock();
        while *d == 0 {
            d = self.cv.wait(d);
        }
        if *d != u32::MAX {
            *d -= 1;
        }
    }

    /// Marks the code that will signal this completion: held exclusively until dropped, so
    /// the locks the signaller takes are ordered after the completion's class.
    #[track_caller]
    pub fn signal_section(&self) -> LockMapGuard<'_> {
        self.map.acquire()
    }

    /// The class waits are validated as.
    pub fn class(&self) -> LockClass {
        self.map.class()
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("done", &*self.done.lock())
            .finish()
    }
}

/// Threads waiting for a condition (`wait_queue_head_t` with `wait_event`/`wake_up_all`).
///
/// The condition is evaluated without any internal lock held, so it may take validated locks.
/// Wakers must make the condition true *before* calling [`WaitQueue::wake_up_all`].
pub struct WaitQueue {
    map: LockMap,
    /// Bumped on every wake-up: a waiter sleeps only while it is unchanged since it last
    /// evaluated the condition, so no wake-up is lost.
    generation: RawMutex<u64>,
    cv: RawCondvar,
}

impl WaitQueue {
    /// A wait queue whose waits are acquisitions of `class`.
    pub fn new(class: impl Into<LockClass>) -> Self {
        Self {
            map: LockMap::with_class(class),
            generation: RawMutex::new(0),
            cv: RawCondvar::new(),
        }
    }

    /// Waits until `cond()` is true (`wait_event`): may sleep, validated as an acquisition
    /// of the queue's class. Returns at once, still validated, when `cond()` already holds.
    #[track_caller]
    pub fn wait_event(&self, mut cond: impl FnMut() -> bool) {
        validator::might_acquire(
            self.map.class(),
            How::new(Read::Exclusive).sleep(),
            Location::caller(),
        );
        loop {
            let seen = *self.generation.lock();
            if cond() {
                return;
            }
            let mut g = self.generation.lock();
            while *g == seen {
                g = self.cv.wait(g);
            }
        }
    }

    /// Wakes every waiter to re-evaluate its condition.
    pub fn wake_up_all(&self) {
        *self.generation.lock() += 1;
        self.cv.notify_all();
    }

    /// Wakes one waiter (with several waiting on different conditions prefer
    /// [`WaitQueue::wake_up_all`]).
    pub fn wake_up(&self) {
        *self.generation.lock() += 1;
        self.cv.notify_one();
    }

    /// Marks the code that makes the condition true: held exclusively until dropped.
    #[track_caller]
    pub fn signal_section(&self) -> LockMapGuard<'_> {
        self.map.acquire()
    }

    /// The class waits are validated as.
    pub fn class(&self) -> LockClass {
        self.map.class()
    }
}

impl std::fmt::Debug for WaitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitQueue").finish_non_exhaustive()
    }
}
