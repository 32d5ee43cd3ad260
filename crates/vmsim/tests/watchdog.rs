//! The hung-task watchdog turns real deadlocks into reports: seed 000's shape through the whole
//! simulator (a driver mutex held across a fault whose allocation enters direct reclaim, which
//! calls the driver's notifier, which takes the same mutex), and a plain AB-BA pair.
//! The deadlocked threads are left blocked; the test itself never hangs.

use std::sync::Arc;
use std::time::Duration;

use lockdep::{scope::Scope, static_lock_class, Mutex, ReportKind};
use mmu_notifier::{Capabilities, MmuNotifierOps, Range, WouldBlock};
use vmsim::{Advice, Config, Machine, MapRequest};

const P: u64 = 4096;

struct Gntdev {
    lock: Arc<Mutex<()>>,
}

impl MmuNotifierOps for Gntdev {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
    }
    fn invalidate_range_start(&self, _r: &Range) -> Result<(), WouldBlock> {
        // The 4.12 gntdev bug: the mutex, whatever the context.
        let _g = self.lock.lock();
        Ok(())
    }
}

#[test]
fn direct_reclaim_into_a_notifier_that_takes_the_allocators_mutex_is_reported_as_hung() {
    let scope = Scope::new();
    let m = Machine::new(Config::new(64).swap(64).watermarks(1, 1, 2)).unwrap();
    let p = m.spawn();
    let lock = Arc::new(Mutex::new((), static_lock_class!("gntdev->lock")));
    let _sub = p.mm().register(Gntdev { lock: lock.clone() }).unwrap();
    // Fill the machine with the process's own cold pages: the next allocation must reclaim one.
    let a = p.mmap(MapRequest::anon(64 * P)).unwrap();
    let mut n = 0;
    while m.frames().nr_free() > 1 {
        p.write(a + n * P, n).unwrap();
        n += 1;
    }
    p.madvise(a, n * P, Advice::Cold).unwrap();
    let dog = m.watchdog(Duration::from_millis(100));
    let handle = scope.handle();
    let (p2, lock2) = (p.mmget().unwrap(), lock.clone());
    std::thread::Builder::new()
        .name("gntdev-ioctl".into())
        .spawn(move || {
            handle.attach();
            let _g = lock2.lock();
            // Faults a new page while holding the mutex: direct reclaim → notifier → mutex.
            let _ = p2.write(a + n * P, 1);
            unreachable!("the fault must deadlock on the driver's own mutex");
        })
        .unwrap();
    let hung = dog
        .wait_for_report(Duration::from_secs(10))
        .expect("the watchdog must report the hung task");
    assert_eq!(hung.thread, "gntdev-ioctl");
    assert_eq!(hung.op, "write");
    // What it holds and waits for: its own mutex, held by the ioctl and wanted by the notifier
    // that direct reclaim called.
    assert_eq!(hung.waiting_for.as_deref(), Some("gntdev->lock"), "{hung}");
    assert!(
        hung.holds.iter().any(|h| h.contains("gntdev->lock")),
        "{hung}"
    );
    assert!(hung.to_string().contains("blocked for more than"), "{hung}");
    // The validator saw it coming: the same class taken again in reclaim (recursive locking or
    // a reclaim inversion, depending on which edge it records first).
    let reports = scope.reports();
    assert!(
        reports.iter().any(|r| r.involves("gntdev->lock")
            && matches!(
                r.kind,
                ReportKind::RecursiveLocking
                    | ReportKind::ReclaimInversion
                    | ReportKind::PossibleCircularLockingDependency
            )),
        "{reports:#?}"
    );
    // The deadlocked thread is inside the notifier's grace-period read section holding the
    // mutex forever: unregistering or tearing the process down would wait for it. Leave both.
    std::mem::forget(_sub);
    std::mem::forget(p);
}

#[test]
fn an_ab_ba_pair_is_reported_as_two_hung_tasks_and_a_cycle() {
    let scope = Scope::new();
    let m = Machine::new(Config::new(16)).unwrap();
    let a = Arc::new(Mutex::new((), static_lock_class!("wd-A")));
    let b = Arc::new(Mutex::new((), static_lock_class!("wd-B")));
    let dog = m.watchdog(Duration::from_millis(50));
    let barrier = Arc::new(std::sync::Barrier::new(2));
    for (name, first, second) in [("t-ab", a.clone(), b.clone()), ("t-ba", b, a)] {
        let (m, barrier, handle) = (m.clone(), barrier.clone(), scope.handle());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                handle.attach();
                let _op = m.enter(format!("ioctl of {name}"));
                let _f = first.lock();
                barrier.wait();
                let _s = second.lock();
                unreachable!("AB-BA must deadlock");
            })
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dog.reports().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut names: Vec<String> = dog.reports().iter().map(|r| r.thread.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["t-ab", "t-ba"]);
    assert!(dog
        .reports()
        .iter()
        .all(|r| r.op == "custom" && r.detail.starts_with("ioctl of")));
    assert_eq!(
        scope
            .of_kind(ReportKind::PossibleCircularLockingDependency)
            .len(),
        1,
        "{:#?}",
        scope.reports()
    );
}

#[test]
fn a_slow_but_finishing_task_is_not_reported_after_it_finishes() {
    let m = Machine::new(Config::new(16)).unwrap();
    let dog = m.watchdog(Duration::from_millis(40));
    {
        let _op = m.enter("quick");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(dog.reports().is_empty(), "{:?}", dog.reports());
}
