//! Real threads hammering the validator: the chain cache, graph and per-thread stacks under
//! contention, bounded to well under a second.
#![cfg(feature = "enabled")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use lockdep::scope::Scope;
use lockdep::{static_lock_class, LockClass, Mutex, RwLock};

#[test]
fn many_threads_in_a_consistent_order_stay_clean_and_count_right() {
    let scope = Scope::new();
    let classes: Vec<LockClass> = vec![
        static_lock_class!("stress-0").class(),
        static_lock_class!("stress-1").class(),
        static_lock_class!("stress-2").class(),
        static_lock_class!("stress-3").class(),
    ];
    // Two instances of each class, so threads contend on some and not others.
    let locks: Vec<Mutex<u64>> = (0..8).map(|i| Mutex::new(0, classes[i % 4])).collect();
    let rw = RwLock::new(0u64, static_lock_class!("stress-rw"));
    let total = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_millis(300);
    thread::scope(|s| {
        for t in 0..4usize {
            let h = scope.handle();
            let (locks, rw, total) = (&locks, &rw, &total);
            s.spawn(move || {
                h.attach();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    // A random-ish increasing subset of classes: always in class order.
                    let mask = (n as usize * 7 + t) % 16;
                    let _r = rw.read_recursive();
                    let mut guards = Vec::new();
                    for c in 0..4 {
                        if mask & (1 << c) != 0 {
                            guards.push(locks[c + 4 * ((n as usize + t) % 2)].lock());
                        }
                    }
                    for g in &mut guards {
                        **g += 1;
                    }
                    n += 1;
                    if n % 64 == 0 {
                        drop(guards);
                        drop(_r);
                        *rw.write() += 1;
                    }
                }
                total.fetch_add(n, Ordering::Relaxed);
                lockdep::check_task_exit();
            });
        }
    });
    assert!(total.load(Ordering::Relaxed) > 100);
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}
