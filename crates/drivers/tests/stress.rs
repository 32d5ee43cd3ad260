//! Each reference driver stays coherent under real concurrency: a device thread accessing
//! memory through the driver while other threads munmap and re-mmap the region, fork, drop
//! pages, migrate them, and reclaim (with kswapd running). The checker sees every device
//! access; at the end every start has its end, no access was stale, and the machine's
//! invariants hold. `DRIVERS_STRESS_MS` sets the duration of each (default 300 ms).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivers::dmirror::Dmirror;
use drivers::gntdev::Gntdev;
use drivers::kvm::{Kvm, KvmVariant};
use drivers::odp::{NonBlock, OdpMr};
use drivers::sva::Sva;
use drivers::userptr::Userptr;
use drivers::Checker;
use vmsim::{Advice, Config, Machine, MapRequest, Process};

const P: u64 = 4096;
const PAGES: u64 = 32;

fn duration() -> Duration {
    let ms = std::env::var("DRIVERS_STRESS_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_millis(ms)
}

/// A device operation: `(iteration, process, region start)`; returns whether it accessed memory.
type DeviceOp = Box<dyn Fn(u64, &Process, u64) -> bool + Send + Sync>;

type Setup<'a> =
    Box<dyn FnOnce(&Process, &Checker, u64) -> (DeviceOp, Box<dyn FnOnce(&Process)>) + 'a>;

/// Runs `device` against the mutators, then checks the checker, the validator and the machine.
fn stress(
    name: &str,
    setup: impl FnOnce(&Process, &Checker, u64) -> (DeviceOp, Box<dyn FnOnce(&Process)>),
) {
    let summary = run(name, Box::new(setup)).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!(
        "{name}: {} checked accesses, {} invalidations",
        summary.accesses, summary.invalidations
    );
}

fn run(
    name: &str,
    setup: Setup<'_>,
) -> Result<drivers::checker::Summary, drivers::checker::CheckFailure> {
    let scope = lockdep::scope::Scope::new();
    let m = Machine::new(Config::new(384).swap(1024).kswapd(true)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(PAGES * P)).unwrap();
    p.touch(a, PAGES * P, true).unwrap();
    let c = Checker::new();
    let (device, teardown) = setup(&p, &c, a);
    let device = Arc::new(device);
    let stop = Arc::new(AtomicBool::new(false));
    let accesses = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration();
    let mut threads = Vec::new();
    for t in 0..2u64 {
        let (device, stop, accesses, p2) = (
            device.clone(),
            stop.clone(),
            accesses.clone(),
            p.mmget().unwrap(),
        );
        threads.push(lockdep::spawn(move || {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                if device(i, &p2, a) {
                    accesses.fetch_add(1, Ordering::Relaxed);
                }
                i += 2;
            }
        }));
    }
    {
        let (stop, p2, m2) = (stop.clone(), p.mmget().unwrap(), m.clone());
        threads.push(lockdep::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let page = a + (i % PAGES) * P;
                match i % 6 {
                    0 => {
                        let _ = p2.munmap(a, PAGES * P);
                        let _ = p2.mmap(MapRequest::anon(PAGES * P).fixed(a));
                    }
                    1 => {
                        if let Ok(child) = p2.fork() {
                            let _ = p2.write(page, i);
                            let _ = child.exit();
                        }
                    }
                    2 => {
                        let _ =
                            p2.madvise(page, 4 * P.min((PAGES - i % PAGES) * P), Advice::DontNeed);
                    }
                    3 => {
                        let _ = p2.migrate_pages(a, PAGES);
                    }
                    4 => {
                        let _ = p2.madvise(a, PAGES * P, Advice::Cold);
                        m2.reclaim(16);
                    }
                    _ => {
                        let _ = p2.write(page, i);
                    }
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    drop(device);
    teardown(&p);
    let n = accesses.load(Ordering::Relaxed);
    p.exit().unwrap();
    m.shutdown();
    m.check().unwrap();
    assert!(scope.reports().is_empty(), "{name}: {:#?}", scope.reports());
    let summary = c.check_quiescent()?;
    assert!(
        n > 0 && summary.accesses > 0,
        "{name}: the device never accessed memory"
    );
    assert!(
        summary.invalidations > 0,
        "{name}: no invalidation reached the driver"
    );
    Ok(summary)
}

#[test]
fn the_same_stress_catches_a_mirror_that_forgets_set_seq() {
    use drivers::buggy::{BuggyMirror, IntervalBug};
    let mut caught = None;
    for _ in 0..10 {
        let r = run(
            "mirror(SetSeqForgotten)",
            Box::new(|p: &Process, c: &Checker, _| {
                let d = Arc::new(BuggyMirror::open(p, c, IntervalBug::SetSeqForgotten).unwrap());
                let d2 = d.clone();
                let op: DeviceOp = Box::new(move |i, p, a| {
                    let page = a + (i % PAGES) * P;
                    match d2.try_read(page) {
                        Ok(Some(_)) => true,
                        _ => {
                            let _ = d2.fault_with(p, page, false, || {});
                            false
                        }
                    }
                });
                (op, Box::new(move |_: &Process| drop(d)))
            }),
        );
        if let Err(e) = r {
            caught = Some(e);
            break;
        }
    }
    let e = caught.expect("ten stress runs never caught the forgotten set_seq");
    assert!(
        e.violations
            .iter()
            .all(|v| v.driver == "mirror(SetSeqForgotten)"),
        "{e}"
    );
}

#[test]
fn dmirror_is_coherent_under_stress() {
    stress("dmirror", |p, c, _| {
        let d = Arc::new(Dmirror::open(p, c, "dmirror").unwrap());
        let d2 = d.clone();
        let op: DeviceOp = Box::new(move |i, _p, a| {
            let page = a + (i % (PAGES - 4)) * P;
            match i % 5 {
                0 => d2.write(page, &[i, i + 1]).is_ok(),
                1 => d2.migrate_to_device(page, 4).is_ok(),
                2 => d2.migrate_to_system(page, 4).is_ok(),
                3 => {
                    let _ = d2.snapshot(page, 4); // no device access
                    false
                }
                _ => d2.read(page, 4).is_ok(),
            }
        });
        (
            op,
            Box::new(move |_| Arc::into_inner(d).unwrap().close().unwrap()),
        )
    });
}

#[test]
fn odp_is_coherent_under_stress() {
    stress("odp", |p, c, a| {
        let mr = Arc::new(OdpMr::register(p, c, "odp", a, PAGES * P, NonBlock::TryLock).unwrap());
        let mr2 = mr.clone();
        let op: DeviceOp = Box::new(move |i, _p, a| {
            let page = a + (i % (PAGES - 4)) * P;
            match i % 3 {
                0 => mr2.dma_write(page, &[i; 4]).is_ok(),
                1 => {
                    let _ = mr2.prefetch(page, 4, false); // no device access
                    false
                }
                _ => mr2.dma_read(page, 4).is_ok(),
            }
        });
        (
            op,
            Box::new(move |_| Arc::into_inner(mr).unwrap().deregister().unwrap()),
        )
    });
}

#[test]
fn kvm_is_coherent_under_stress() {
    stress("kvm", |p, c, _| {
        let vm = Arc::new(Kvm::create(p, c, "kvm", KvmVariant::Current).unwrap());
        let vm2 = vm.clone();
        let op: DeviceOp = Box::new(move |i, _p, a| {
            let page = a + (i % PAGES) * P;
            if i % 2 == 0 {
                vm2.guest_write(page, i).is_ok()
            } else {
                vm2.guest_read(page).is_ok()
            }
        });
        (
            op,
            Box::new(move |_| {
                let vm = Arc::into_inner(vm).unwrap();
                assert_eq!(vm.in_progress(), 0);
                vm.destroy().unwrap()
            }),
        )
    });
}

#[test]
fn sva_is_coherent_under_stress() {
    stress("sva", |p, c, _| {
        let dev = Arc::new(Sva::bind(p, c, "sva").unwrap());
        let dev2 = dev.clone();
        let op: DeviceOp = Box::new(move |i, _p, a| {
            let page = a + (i % PAGES) * P;
            dev2.dma(page, (i % 2 == 0).then_some(i)).is_ok()
        });
        (
            op,
            Box::new(move |_| Arc::into_inner(dev).unwrap().unbind().unwrap()),
        )
    });
}

#[test]
fn gntdev_is_coherent_under_stress() {
    stress("gntdev", |p, c, a| {
        let g = Arc::new(Gntdev::map(p, c, "gntdev", a, 8).unwrap());
        let g2 = g.clone();
        let op: DeviceOp = Box::new(move |i, p, a| {
            let page = a + (i % 8) * P;
            match g2.access(page, (i % 2 == 0).then_some(i)) {
                Ok(Some(_)) => true,
                _ => {
                    let _ = g2.remap(p);
                    false
                }
            }
        });
        (
            op,
            Box::new(move |_| Arc::into_inner(g).unwrap().unmap().unwrap()),
        )
    });
}

#[test]
fn userptr_is_coherent_under_stress() {
    stress("userptr", |p, c, a| {
        let o = Arc::new(Userptr::create(p, c, "userptr", a, 8).unwrap());
        let o2 = o.clone();
        let op: DeviceOp = Box::new(move |i, p, _| {
            o2.gpu_access(p, (i % 8) as usize, (i % 2 == 0).then_some(i))
                .is_ok()
        });
        (
            op,
            Box::new(move |p| Arc::into_inner(o).unwrap().close(p).unwrap()),
        )
    });
}
