//! A small sleepable read-copy-update (SRCU) domain, one per address space.
//!
//! List subscribers are read without a lock: a dispatcher enters a read section, loads the
//! current subscriber list and calls into it, possibly sleeping. Unregister unlinks a
//! subscriber and then must wait until no dispatcher can still be inside one of its callbacks:
//! it waits for a *grace period*, the end of every read section that began before the unlink.
//!
//! ## Why per address space
//!
//! Linux uses one global SRCU for all mms (`srcu` in `mm/mmu_notifier.c`), because kernel
//! SRCU costs four words per CPU per instance. The price is that a callback sleeping in one mm
//! delays every unregister and every exit in the system. Here a domain is about 1 KiB (eight
//! cache-line-aligned counter stripes), so each [`Mm`](crate::Mm) has its own: a slow callback
//! in one address space delays only that address space's unregisters. Every invalidation holds
//! a read section of it from start to end, subscribed or not (see `Mm::register`, "The first
//! subscription").
//!
//! ## The mechanism
//!
//! Two reader counters and an index. A reader increments the counter the index selects and
//! remembers which; it decrements the same one on exit. Each counter is striped: a thread
//! always uses its own stripe (eight, round-robin over threads), so concurrent dispatchers on
//! different stripes do not bounce one cache line, and a grace period sums the stripes (exact,
//! because a reader's increment and decrement hit the same stripe). A grace period flips the index and waits
//! for the old counter to drain, twice: after the first flip new readers go to the other
//! counter, so the old one drains unless readers keep arriving late; the second flip catches a
//! reader that loaded the index before the first flip but incremented after the first drain
//! check (such a reader loads the subscriber list after its increment, so it already sees the
//! list as it was after the unlink and needs no waiting). All counter and index accesses are
//! `SeqCst`, which orders a reader's increment before its list load and an updater's unlink
//! before its flips.
//!
//! ## Memory ordering
//!
//! The protocol is two store-load pairs (Dekker's pattern). Reader: increment `readers[i]`,
//! then load the list pointer. Updater: swap the list pointer, then load `readers[i]`. Every one
//! of those four accesses is `SeqCst` (the list pointer's too, in `subscribers.rs`), so they sit in the
//! single total order S: if the reader's load saw the old list, it precedes the swap in S, so
//! the reader's increment precedes the updater's load of the counter in S, and that load sees
//! it; the updater waits. The same holds for `has_itree` (stored before a grace period, loaded
//! after the increment) and for the `waiting` flag against the last reader's decrement. On
//! x86-64 this costs nothing beyond the locked instructions already there (a `SeqCst` load is
//! a plain load), unlike the kernel's `smp_mb()`.
//!
//! The loom model checker treats `SeqCst` accesses as `AcqRel` (its README, "Unsupported
//! features"), which is too weak for this argument: it reports a use-after-free that the real
//! program cannot have. Under `--cfg loom` only, [`model_fence`] puts a `fence(SeqCst)`, which
//! loom does model, where the argument needs the store-load order, so the model checks the
//! rest of the protocol (flips, drains, wake-ups, retirement) on the same footing.

use crate::annotate;
use crate::primitive::{
    lock, spin, thread_stripe, wait, AtomicBool, AtomicUsize, Condvar, Mutex, Ordering::SeqCst,
};

/// The read side of one dispatch: which counter to decrement (stripe × 2 + index), and the
/// validator's view of the open read section.
#[derive(Debug)]
pub(crate) struct ReadToken(usize, #[allow(dead_code)] annotate::SrcuReadGuard);

/// A `SeqCst` fence under the model checker; nothing otherwise (see "Memory ordering").
#[inline(always)]
fn model_fence() {
    #[cfg(loom)]
    loom::sync::atomic::fence(SeqCst);
}

/// Reader-counter stripes. A reader uses its thread's stripe for both its increment and its
/// decrement (the token remembers which), so every stripe's counter stays exact and a grace
/// period sums them; threads on different stripes share no written cache line.
#[cfg(not(loom))]
const STRIPES: usize = 8;
// Under the model checker: one stripe. With two, loom 0.7 trips an internal assertion of its
// own ("TODO: this sometimes fails", rt/atomic.rs; tokio-rs/loom#252, #389) in the
// release/unregister model; the sum
// over stripes is covered by the real-thread tests below.
#[cfg(loom)]
const STRIPES: usize = 1;

/// One stripe's two counters (one per index), alone on its cache lines.
#[repr(align(128))]
struct Stripe([AtomicUsize; 2]);

/// This thread's stripe (under a model checker always the first: see
/// [`sync_prims::thread_stripe`]).
#[inline]
fn my_stripe() -> usize {
    thread_stripe(STRIPES)
}

pub(crate) struct Srcu {
    idx: AtomicUsize,
    stripes: [Stripe; STRIPES],
    /// Serialises grace periods.
    gp: Mutex<()>,
    /// A grace period is blocked waiting for readers.
    waiting: AtomicBool,
    wake_lock: Mutex<()>,
    wake: Condvar,
}

impl Srcu {
    pub(crate) fn new() -> Srcu {
        Srcu {
            idx: AtomicUsize::new(0),
            stripes: std::array::from_fn(|_| Stripe([AtomicUsize::new(0), AtomicUsize::new(0)])),
            gp: Mutex::new(()),
            waiting: AtomicBool::new(false),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    #[inline]
    fn counter(&self, slot: usize) -> &AtomicUsize {
        &self.stripes[slot >> 1].0[slot & 1]
    }

    /// Readers of index `i` still inside their sections, over all stripes.
    fn readers(&self, i: usize) -> usize {
        self.stripes.iter().map(|s| s.0[i].load(SeqCst)).sum()
    }

    #[inline]
    pub(crate) fn read_lock(&self) -> ReadToken {
        let i = self.idx.load(SeqCst) & 1;
        let slot = my_stripe() << 1 | i;
        self.counter(slot).fetch_add(1, SeqCst);
        model_fence();
        ReadToken(slot, annotate::srcu_read())
    }

    #[inline]
    pub(crate) fn read_unlock(&self, t: ReadToken) {
        self.read_unlock_in_place(&t);
    }

    /// Ends the read section of `t` without consuming it; `t` must not be used again.
    #[inline]
    pub(crate) fn read_unlock_in_place(&self, t: &ReadToken) {
        // A stripe reaching zero may be the last reader the grace period waits for; the waiter
        // sums the stripes again, so a wake-up for a stripe that was not the last is harmless.
        let last = self.counter(t.0).fetch_sub(1, SeqCst) == 1;
        model_fence();
        if last && self.waiting.load(SeqCst) {
            let _g = lock(&self.wake_lock);
            self.wake.notify_all();
        }
    }

    /// Waits until every read section that began before the call has ended.
    #[track_caller]
    pub(crate) fn synchronize(&self) {
        annotate::might_sleep();
        annotate::srcu_sync();
        // A deliberately broken protocol for the model tests (tests/loom_protocols.rs).
        #[cfg(mmn_broken = "skip_grace_period")]
        return;
        let _gp = lock(&self.gp);
        model_fence();
        for _ in 0..2 {
            let old = self.idx.fetch_add(1, SeqCst) & 1;
            self.drain(old);
        }
    }

    /// A grace period if one can be had without waiting: true when no read section that began
    /// before the call is still running.
    pub(crate) fn try_synchronize(&self) -> bool {
        let Ok(_gp) = self.gp.try_lock() else {
            return false;
        };
        model_fence();
        for _ in 0..2 {
            let old = self.idx.fetch_add(1, SeqCst) & 1;
            if self.readers(old) != 0 {
                return false;
            }
        }
        true
    }

    fn drain(&self, i: usize) {
        // Spin briefly before sleeping; under the model checker every spin is a branch point, so
        // check once and go to the condition variable.
        #[cfg(loom)]
        const SPINS: u32 = 1;
        #[cfg(not(loom))]
        const SPINS: u32 = 64;
        for step in 0..SPINS {
            if self.readers(i) == 0 {
                return;
            }
            spin(step);
        }
        let mut g = lock(&self.wake_lock);
        self.waiting.store(true, SeqCst);
        model_fence();
        while self.readers(i) != 0 {
            g = wait(&self.wake, g);
        }
        self.waiting.store(false, SeqCst);
    }
}

#[cfg(all(test, not(any(loom, shuttle))))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool as StdBool;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn synchronize_waits_for_a_reader_that_started_before_it() {
        let s = Arc::new(Srcu::new());
        let t = s.read_lock();
        let done = Arc::new(StdBool::new(false));
        let (s2, d2) = (s.clone(), done.clone());
        let h = std::thread::spawn(move || {
            s2.synchronize();
            d2.store(true, SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !done.load(SeqCst),
            "grace period ended while a reader was inside"
        );
        assert!(!s.try_synchronize() || s.readers(0) + s.readers(1) == 0);
        s.read_unlock(t);
        h.join().unwrap();
        assert!(done.load(SeqCst));
    }

    #[test]
    fn synchronize_waits_for_readers_on_every_stripe() {
        // More threads than stripes, so some share a stripe and all stripes are used.
        let s = Arc::new(Srcu::new());
        let release = Arc::new(std::sync::Barrier::new(2 * STRIPES + 1));
        let entered = Arc::new(std::sync::Barrier::new(2 * STRIPES + 1));
        let readers: Vec<_> = (0..2 * STRIPES)
            .map(|_| {
                let (s, release, entered) = (s.clone(), release.clone(), entered.clone());
                std::thread::spawn(move || {
                    let t = s.read_lock();
                    entered.wait();
                    release.wait();
                    std::thread::sleep(Duration::from_millis(5));
                    s.read_unlock(t);
                })
            })
            .collect();
        entered.wait();
        assert_eq!(s.readers(0) + s.readers(1), 2 * STRIPES);
        assert!(!s.try_synchronize());
        let done = Arc::new(StdBool::new(false));
        let (s2, d2) = (s.clone(), done.clone());
        let gp = std::thread::spawn(move || {
            s2.synchronize();
            d2.store(true, SeqCst);
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(!done.load(SeqCst), "grace period ended with readers inside");
        release.wait();
        for r in readers {
            r.join().unwrap();
        }
        gp.join().unwrap();
        assert!(done.load(SeqCst));
        assert_eq!(s.readers(0) + s.readers(1), 0);
    }

    #[test]
    fn try_synchronize_succeeds_when_idle_and_fails_with_a_reader() {
        let s = Srcu::new();
        assert!(s.try_synchronize());
        let t = s.read_lock();
        assert!(!s.try_synchronize());
        s.read_unlock(t);
        assert!(s.try_synchronize());
    }
}
