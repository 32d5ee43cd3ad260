//! Model tests of the pending window (`gate`), run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p hostmm --test loom_gate --release`.
//!
//! The protocol: the monitor opens its window, then "reads" the event (which releases the
//! unmapping thread), then invalidates the entry under the cache lock, then closes the window.
//! A lookup that starts after the unmapping thread was released must, after `gate.wait()`,
//! see the entry invalid — and nobody deadlocks.
#![cfg(loom)]

use hostmm::gate::PendingGate;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

#[test]
fn lookup_after_release_sees_the_invalidation() {
    loom::model(|| {
        let gate = PendingGate::new();
        let opener = gate.opener().unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let entry_valid = Arc::new(Mutex::new(true));

        let (r2, e2) = (released.clone(), entry_valid.clone());
        let monitor = thread::spawn(move || {
            let w = opener.open();
            r2.store(true, Ordering::SeqCst); // read(): the unmapping thread returns
            *e2.lock().unwrap() = false; // the invalidation, under the cache lock
            drop(w);
        });

        // The unmapping thread, then its lookup.
        while !released.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        gate.wait();
        assert!(
            !*entry_valid.lock().unwrap(),
            "a lookup after munmap returned saw a stale entry"
        );
        monitor.join().unwrap();
    });
}

#[test]
fn a_lookup_racing_the_window_never_deadlocks() {
    loom::model(|| {
        let gate = PendingGate::new();
        let opener = gate.opener().unwrap();
        let lock = Arc::new(Mutex::new(0u32));
        let l2 = lock.clone();
        let monitor = thread::spawn(move || {
            for _ in 0..2 {
                let w = opener.open();
                *l2.lock().unwrap() += 1;
                drop(w);
            }
        });
        // A lookup: wait first, then take the cache lock (never the other way round).
        gate.wait();
        let _seen = *lock.lock().unwrap();
        monitor.join().unwrap();
    });
}
