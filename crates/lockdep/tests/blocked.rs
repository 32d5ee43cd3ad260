//! A task waiting for a contended lock publishes what it waits for and what it holds; the
//! record goes once it has the lock. Uncontended acquisitions publish nothing.
#![cfg(feature = "enabled")]

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lockdep::{blocked_tasks, static_lock_class, Mutex, RwLock};

#[test]
fn a_waiting_task_shows_what_it_holds_and_waits_for_until_it_gets_the_lock() {
    let a = Arc::new(Mutex::new((), static_lock_class!("blocked-A")));
    let b = Arc::new(RwLock::new((), static_lock_class!("blocked-B")));
    let gate = Arc::new(Barrier::new(2));
    let holder = b.write();
    let (a2, b2, g2) = (a.clone(), b.clone(), gate.clone());
    let waiter = std::thread::Builder::new()
        .name("blocked-waiter".into())
        .spawn(move || {
            let _a = a2.lock();
            g2.wait();
            let _b = b2.read(); // waits: the main thread holds it for write
        })
        .unwrap();
    gate.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mine = loop {
        let found: Vec<_> = blocked_tasks()
            .into_iter()
            .filter(|t| t.thread == "blocked-waiter")
            .collect();
        if let Some(t) = found.into_iter().next() {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the waiter never showed up as blocked"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(mine.waiting_for, "blocked-B");
    assert_eq!(mine.held.len(), 1, "{mine}");
    assert_eq!(mine.held[0].class.name, "blocked-A");
    assert!(
        mine.to_string().contains("is waiting for (blocked-B)"),
        "{mine}"
    );
    drop(holder);
    waiter.join().unwrap();
    assert!(
        blocked_tasks().iter().all(|t| t.thread != "blocked-waiter"),
        "the record is withdrawn once the lock is taken"
    );
}

#[test]
fn an_uncontended_lock_publishes_nothing() {
    let a = Mutex::new((), static_lock_class!("blocked-free"));
    let _g = a.lock();
    assert!(blocked_tasks()
        .iter()
        .all(|t| t.waiting_for != "blocked-free"));
}
