//! The torture's operation mix: one random operation on one random slot per call.

use std::sync::Arc;

use std::time::Duration;
use sync_prims::lock;

use drivers::dmirror::Dmirror;
use drivers::DriverError;
use lockdep::Gfp;
use vmsim::{mmf, Advice, MapRequest, VmError};

use super::slot::{build, retire, Live, Slot, A_PAGES, B_PAGES};
use super::{Counter, Shared};
use crate::rng::Rng;
use crate::world::P;

/// What an operation's error means.
fn judge(sh: &Shared, what: &str, e: &str) {
    if e.contains("invariant violated") {
        sh.failure(format!("{what}: {e}"));
    } else {
        sh.count(Counter::OpErrors);
    }
}

fn vm<T>(sh: &Shared, what: &str, r: Result<T, VmError>) -> Option<T> {
    r.map_err(|e| judge(sh, what, &e.to_string())).ok()
}

fn dr<T>(sh: &Shared, what: &str, r: Result<T, DriverError>) -> Option<T> {
    r.map_err(|e| judge(sh, what, &e.to_string())).ok()
}

/// Runs one random operation.
pub(crate) fn one(sh: &Arc<Shared>, slots: &[Arc<Slot>], rng: &mut Rng) {
    let slot = &slots[rng.below(slots.len() as u64) as usize];
    sh.count(Counter::Ops);
    // Rebuild an empty (killed) slot first.
    {
        let live = slot.live.read().unwrap_or_else(|e| e.into_inner());
        let dead = match &*live {
            None => true,
            Some(l) => l.process.space().test(mmf::OOM_VICTIM),
        };
        drop(live);
        if dead {
            rebuild(sh, slot);
            return;
        }
    }
    let guard = slot.live.read().unwrap_or_else(|e| e.into_inner());
    let Some(l) = &*guard else { return };
    let roll = rng.below(1000);
    match roll {
        0..=349 => cpu(sh, l, rng),
        350..=549 => device(sh, l, rng),
        550..=579 => madvise(sh, l, rng),
        580..=594 => {
            // mprotect read-only and back, on the pressure mapping.
            let (a, n) = range(l.b, B_PAGES, rng);
            sh.count(Counter::Mprotects);
            vm(
                sh,
                "mprotect",
                l.process.mprotect(a, n * P, vmsim::vm::READ),
            );
            vm(
                sh,
                "mprotect",
                l.process
                    .mprotect(a, n * P, vmsim::vm::READ | vmsim::vm::WRITE),
            );
        }
        595..=609 => {
            // munmap and map again at the same place (drivers over it are invalidated).
            let (a, n) = range(l.b, B_PAGES, rng);
            sh.count(Counter::Munmaps);
            if vm(sh, "munmap", l.process.munmap(a, n * P)).is_some() {
                vm(sh, "mmap", l.process.mmap(MapRequest::anon(n * P).fixed(a)));
            }
        }
        610..=629 => {
            let (a, n) = range(l.a, A_PAGES, rng);
            sh.count(Counter::Migrations);
            vm(sh, "migrate_pages", l.process.migrate_pages(a, n.min(16)));
        }
        630..=644 => fork(sh, l, rng),
        645..=654 => {
            sh.count(Counter::Reclaims);
            sh.m.reclaim(32);
        }
        655..=679 => churn(sh, l, rng),
        680..=699 => {
            // Device memory: dmirror migrates part of its range there and back.
            let (a, n) = range(l.a, A_PAGES, rng);
            let sva = lock(&l.drivers.sva).is_some();
            if sva && !sh.sva_over_device_memory {
                return;
            }
            if let Some(d) = &*lock(&l.drivers.dmirror) {
                sh.count(Counter::DeviceMigrations);
                if rng.chance(1, 2) {
                    dr(sh, "migrate_to_device", d.migrate_to_device(a, n.min(8)));
                } else {
                    dr(sh, "migrate_to_system", d.migrate_to_system(a, n.min(8)));
                }
            }
        }
        700..=719 => hog(sh, rng),
        720..=734 => {
            // A device fault in progress: odp's umem mutex held a moment, so a concurrent
            // non-blockable invalidation is refused (trylock) and retried.
            if let Some(o) = &*lock(&l.drivers.odp) {
                sh.count(Counter::Holds);
                let _g = o.hold_umem_mutex();
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        735 => {
            sh.count(Counter::OomKillsInjected);
            sh.m.oom_kill(&l.process);
        }
        _ => {
            if sh.buggy.is_some() && roll >= 900 {
                buggy(sh, l, rng);
            } else {
                cpu(sh, l, rng);
            }
        }
    }
}

fn range(base: u64, pages: u64, rng: &mut Rng) -> (u64, u64) {
    let first = rng.below(pages);
    let n = 1 + rng.below((pages - first).min(32));
    (base + first * P, n)
}

fn cpu(sh: &Shared, l: &Live, rng: &mut Rng) {
    let (base, pages) = if rng.chance(1, 2) {
        (l.a, A_PAGES)
    } else {
        (l.b, B_PAGES)
    };
    let addr = base + rng.below(pages) * P;
    sh.count(Counter::CpuAccesses);
    if rng.chance(2, 3) {
        vm(sh, "write", l.process.write(addr, rng.next_u64()));
    } else {
        vm(sh, "read", l.process.read(addr));
    }
}

fn madvise(sh: &Shared, l: &Live, rng: &mut Rng) {
    let (a, n) = if rng.chance(1, 2) {
        range(l.a, A_PAGES, rng)
    } else {
        range(l.b, B_PAGES, rng)
    };
    let advice = match rng.below(4) {
        0 => Advice::DontNeed,
        1 => Advice::Cold,
        2 => Advice::PageOut,
        _ => Advice::Free,
    };
    sh.count(Counter::Madvises);
    vm(sh, "madvise", l.process.madvise(a, n * P, advice));
}

fn device(sh: &Shared, l: &Live, rng: &mut Rng) {
    let page = rng.below(A_PAGES);
    let addr = l.a + page * P;
    let write = rng.chance(1, 2);
    sh.count(Counter::DeviceOps);
    let d = &l.drivers;
    match rng.below(6) {
        0 => {
            if let Some(x) = &*lock(&d.dmirror) {
                match rng.below(3) {
                    0 => drop(dr(sh, "dmirror fault", x.fault(addr, 1, write))),
                    1 => drop(dr(sh, "dmirror read", x.read(addr, 1))),
                    _ => drop(dr(sh, "dmirror write", x.write(addr, &[page]))),
                }
            }
        }
        1 => {
            if let Some(x) = &*lock(&d.odp) {
                if rng.chance(1, 2) {
                    dr(sh, "odp fault", x.page_fault(addr, 1, write));
                } else {
                    dr(sh, "odp dma", x.dma_read(addr, 1));
                }
            }
        }
        2 => {
            if let Some(x) = &*lock(&d.kvm) {
                if write {
                    dr(sh, "kvm write", x.guest_write(addr, page));
                } else {
                    dr(sh, "kvm read", x.guest_read(addr));
                }
            }
        }
        3 => {
            if let Some(x) = &*lock(&d.gntdev) {
                if rng.chance(1, 4) {
                    dr(sh, "gntdev remap", x.remap(&l.process));
                } else {
                    let a = l.a + rng.below(16) * P;
                    dr(sh, "gntdev access", x.access(a, write.then_some(page)));
                }
            }
        }
        4 => {
            if let Some(x) = &*lock(&d.userptr) {
                if rng.chance(1, 4) {
                    dr(sh, "userptr get_pages", x.get_pages(&l.process));
                } else {
                    let i = rng.below(16) as usize;
                    dr(
                        sh,
                        "userptr access",
                        x.gpu_access(&l.process, i, write.then_some(page)),
                    );
                }
            }
        }
        _ => {
            if let Some(x) = &*lock(&d.sva) {
                dr(sh, "sva dma", x.dma(addr, write.then_some(page)));
            }
        }
    }
}

fn fork(sh: &Shared, l: &Live, rng: &mut Rng) {
    let Some(child) = vm(sh, "fork", l.process.fork()) else {
        return;
    };
    sh.count(Counter::Forks);
    for _ in 0..4 {
        let addr = l.a + rng.below(A_PAGES) * P;
        vm(sh, "child write", child.write(addr, rng.next_u64()));
    }
    vm(sh, "child exit", child.exit());
}

fn churn(sh: &Shared, l: &Live, rng: &mut Rng) {
    let mut c = lock(&l.drivers.churn);
    if c.len() < 3 && rng.chance(1, 2) {
        let name = format!("churn#{}", sh.counter(Counter::SubscribersJoined));
        if let Some(d) = dr(
            sh,
            "churn open",
            Dmirror::open(&l.process, &l.checker, &name),
        ) {
            sh.count(Counter::SubscribersJoined);
            let addr = l.a + rng.below(A_PAGES) * P;
            dr(sh, "churn fault", d.fault(addr, 1, false));
            c.push(d);
        }
    } else if let Some(d) = c.pop() {
        sh.count(Counter::SubscribersLeft);
        dr(sh, "churn close", d.close());
    }
}

/// A memory hog: takes frames without reclaim (`GFP_NOWAIT`) until allocations fail, holds
/// them a moment, gives them back — the allocator's failure paths under everyone else.
fn hog(sh: &Shared, rng: &mut Rng) {
    sh.count(Counter::Hogs);
    let mut held = Vec::new();
    for _ in 0..(32 + rng.below(256)) {
        match sh.m.alloc_page(Gfp::NOWAIT) {
            Ok(p) => held.push(p),
            Err(_) => {
                sh.count(Counter::HogFailures);
                break;
            }
        }
    }
    std::thread::yield_now();
    for p in held {
        vm(sh, "hog free", sh.m.put_page(p));
    }
}

/// The deliberately buggy mirror, with a collision injected in its fault window: a
/// `MADV_DONTNEED` of the page between the lookup and the publish.
fn buggy(sh: &Shared, l: &Live, rng: &mut Rng) {
    let Some(x) = &*lock(&l.drivers.buggy) else {
        return;
    };
    let addr = l.a + rng.below(A_PAGES) * P;
    sh.count(Counter::DeviceOps);
    let collide = rng.chance(1, 2);
    let p = &l.process;
    dr(
        sh,
        "buggy fault",
        x.fault_with(p, addr, false, || {
            if collide {
                let _ = p.madvise(addr, P, Advice::DontNeed);
            }
        }),
    );
    dr(sh, "buggy read", x.try_read(addr));
}

/// Retires a killed slot (drivers closed, process exited) and builds it again.
pub(crate) fn rebuild(sh: &Shared, slot: &Slot) {
    let mut live = slot.live.write().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = &*live {
        if !l.process.space().test(mmf::OOM_VICTIM) {
            return; // another thread rebuilt it already
        }
    }
    if let Some(old) = live.take() {
        let errors = retire(sh, old);
        sh.add(Counter::OpErrors, errors as u64);
        sh.count(Counter::SlotsRebuilt);
    }
    *live = build(&sh.m, sh, slot.index);
}
