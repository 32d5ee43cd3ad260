//! Model test of the watch bookkeeping protocol against an unmap and a map again, run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p hostmm --test loom_watch --release`.
//!
//! The real pending gate (`hostmm::gate`); the kernel, the watch set and the interval's sequence
//! are modelled by the ordering rules the code keeps:
//!
//! * kernel: `munmap` of a registered page queues `UNMAP` and returns only once the monitor has
//!   *read* it; the page mapped again afterwards is a new frame and **unregistered**;
//! * monitor: opens its window before `read()`, queues the vanished range for the watch set
//!   *before* it invalidates (bumps the sequence), then closes the window;
//! * a miss (started after `munmap` returned, as the promise requires): `read_begin`, then the
//!   watch (drain the queue; trust the set or register), then register the frame, then wait at
//!   the gate, then publish only if the sequence did not move.
//!
//! Claim: whatever is published describes the page mapped now, and no entry is published whose
//! watch trusted a page the kernel does not have registered (its unmap would raise no event).
//! Without the two gate waits the model finds such a publish.
#![cfg(loom)]

use hostmm::gate::PendingGate;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use loom::sync::{Arc, Mutex};
use loom::thread;

struct World {
    /// Frame mapped at the page now (1: the original, 2: mapped again).
    frame: AtomicU64,
    /// Whether the kernel has the page registered.
    kernel_registered: AtomicBool,
    /// UNMAP queued by the kernel, not yet read.
    event: AtomicBool,
    /// The monitor has read it (releases the unmapping thread).
    read: AtomicBool,
    /// munmap returned and the page is mapped again.
    remapped: AtomicBool,
    /// The watch set: (believes registered, queued unmap).
    set: Mutex<(bool, bool)>,
    /// The entry's interval sequence.
    seq: AtomicU64,
}

#[test]
fn a_miss_after_a_remap_never_publishes_the_old_page_or_trusts_an_unregistered_one() {
    loom::model(|| {
        let gate = PendingGate::new();
        let opener = gate.opener().unwrap();
        let w = Arc::new(World {
            frame: AtomicU64::new(1),
            kernel_registered: AtomicBool::new(true),
            event: AtomicBool::new(false),
            read: AtomicBool::new(false),
            remapped: AtomicBool::new(false),
            set: Mutex::new((true, false)),
            seq: AtomicU64::new(0),
        });

        // munmap has begun: the kernel dropped the registration with the VMA and queued UNMAP.
        w.kernel_registered.store(false, SeqCst);
        w.event.store(true, SeqCst);

        let wm = w.clone();
        let monitor = thread::spawn(move || {
            let window = opener.open();
            wm.read.store(true, SeqCst); // read(): releases munmap
            wm.set.lock().unwrap().1 = true; // queue the unmap for the watch set ...
            wm.seq.fetch_add(2, SeqCst); // ... before the invalidation
            drop(window);
        });

        // The unmapping thread: munmap returns once the event was read; it maps the page
        // again (a new, unregistered page) and then looks the range up.
        while !w.read.load(SeqCst) {
            thread::yield_now();
        }
        w.frame.store(2, SeqCst);
        w.remapped.store(true, SeqCst);
        gate.wait(); // the lookup's gate
        let seq = w.seq.load(SeqCst); // read_begin
        let mut trusted_unregistered = false;
        {
            let mut set = w.set.lock().unwrap();
            if set.1 {
                *set = (false, false); // drain: the set forgets the vanished page
            }
            if set.0 {
                trusted_unregistered = !w.kernel_registered.load(SeqCst);
            } else {
                w.kernel_registered.store(true, SeqCst); // register + verify
                set.0 = true;
            }
        }
        let registered_frame = w.frame.load(SeqCst);
        gate.wait(); // before read_retry
        if w.seq.load(SeqCst) == seq {
            assert!(
                !trusted_unregistered,
                "published an entry whose watch trusted a page the kernel does not have registered"
            );
            assert_eq!(
                registered_frame,
                w.frame.load(SeqCst),
                "published a registration of the unmapped page"
            );
        }
        monitor.join().unwrap();
    });
}
