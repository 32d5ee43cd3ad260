//! Real threads: processes faulting, writing, forking, unmapping and exiting under memory
//! pressure with kswapd and direct reclaim running, every write read back, and the machine's
//! invariants checked at the end (frames conserved, nothing leaked, every page back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmsim::{vm, Advice, Config, Machine, MapRequest, VmError};

const P: u64 = 4096;

/// SplitMix64: a tiny deterministic generator per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn run_seconds() -> Duration {
    let ms = std::env::var("VMSIM_STRESS_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    Duration::from_millis(ms)
}

#[test]
fn processes_under_pressure_keep_their_data_and_the_machine_its_frames() {
    let cfg = Config::new(512).swap(2048).kswapd(true);
    let m = Machine::new(cfg).unwrap();
    let deadline = Instant::now() + run_seconds();
    let checked = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let m = m.clone();
            let checked = checked.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut rng = Rng(t as u64 + 1);
                let p = m.spawn();
                // 160 pages per process, 4 processes: 640 pages on a 512-frame machine.
                let a = p
                    .mmap(MapRequest::anon(160 * P))
                    .map_err(|e| e.to_string())?;
                let mut shadow = vec![0u64; 160];
                while Instant::now() < deadline {
                    let i = rng.below(160);
                    match rng.below(10) {
                        0..=4 => {
                            let v = rng.next() | 1;
                            p.write(a + i * P, v).map_err(|e| format!("write: {e}"))?;
                            shadow[i as usize] = v;
                        }
                        5..=6 => {
                            let got = p.read(a + i * P).map_err(|e| format!("read: {e}"))?;
                            if got != shadow[i as usize] {
                                return Err(format!(
                                    "thread {t}: page {i} reads {got:#x}, wrote {:#x}",
                                    shadow[i as usize]
                                ));
                            }
                            checked.fetch_add(1, Ordering::Relaxed);
                        }
                        7 => {
                            p.madvise(a + i * P, P, Advice::DontNeed)
                                .map_err(|e| e.to_string())?;
                            shadow[i as usize] = 0;
                        }
                        8 => {
                            // fork, let the child write everywhere, the parent must not see it.
                            let c = p.fork().map_err(|e| format!("fork: {e}"))?;
                            for j in 0..4 {
                                c.write(a + j * P, 0xdead)
                                    .map_err(|e| format!("child: {e}"))?;
                            }
                            c.exit().map_err(|e| e.to_string())?;
                        }
                        _ => {
                            p.mprotect(a + i * P, P, vm::READ)
                                .map_err(|e| e.to_string())?;
                            p.mprotect(a + i * P, P, vm::READ | vm::WRITE)
                                .map_err(|e| e.to_string())?;
                        }
                    }
                }
                for (i, &v) in shadow.iter().enumerate() {
                    let got = p.read(a + i as u64 * P).map_err(|e| e.to_string())?;
                    if got != v {
                        return Err(format!("thread {t}: final page {i} {got:#x} != {v:#x}"));
                    }
                }
                p.exit().map_err(|e| e.to_string())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    m.shutdown();
    let s = m.stats();
    eprintln!(
        "stress: {s:?}, {} reads checked",
        checked.load(Ordering::Relaxed)
    );
    assert!(
        checked.load(Ordering::Relaxed) > 100,
        "the run did too little to mean anything"
    );
    assert!(
        s.swap_out > 0,
        "pressure never reached reclaim: the test is too gentle"
    );
    let c = m.check().unwrap();
    assert_eq!(c.used, 0, "every frame back after every process exited");
    assert_eq!(c.swap_used, 0);
}

#[test]
fn threads_of_one_process_fault_and_unmap_concurrently() {
    let m = Machine::new(Config::new(256).swap(256)).unwrap();
    let p = m.spawn();
    let deadline = Instant::now() + run_seconds() / 2;
    let users: Vec<_> = (0..3)
        .map(|t| {
            let q = p.mmget().unwrap();
            std::thread::spawn(move || {
                let mut rng = Rng(100 + t);
                let mut ok = 0u64;
                while Instant::now() < deadline {
                    if t == 0 {
                        // The mapper: map and unmap a window the others touch.
                        if let Ok(a) = q.mmap(MapRequest::anon(8 * P).fixed(0x100_0000)) {
                            let _ = q.munmap(a, 8 * P);
                        }
                    } else {
                        let i = rng.below(8);
                        match q.write(0x100_0000 + i * P, 1) {
                            Ok(()) => ok += 1,
                            Err(VmError::NoMapping(_)) => {}
                            Err(e) => panic!("unexpected {e}"),
                        }
                    }
                }
                q.exit().unwrap();
                ok
            })
        })
        .collect();
    let total: u64 = users.into_iter().map(|h| h.join().unwrap()).sum();
    let _ = total;
    m.check().unwrap();
    p.exit().unwrap();
    assert_eq!(m.check().unwrap().used, 0);
}

#[test]
fn dontneed_racing_faults_under_the_read_lock_never_breaks_the_machine() {
    // MADV_DONTNEED zaps under the mmap read lock, concurrently with faults: a page must be on
    // the LRU before it is mapped, or the zap frees it first.
    let m = Machine::new(Config::new(256).swap(256)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(16 * P)).unwrap();
    let deadline = Instant::now() + run_seconds() / 2;
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let q = p.mmget().unwrap();
            std::thread::spawn(move || -> Result<u64, String> {
                let mut rng = Rng(700 + t);
                let mut n = 0;
                while Instant::now() < deadline {
                    let i = rng.below(16);
                    if t == 0 {
                        q.madvise(a + i * P, P, Advice::DontNeed)
                            .map_err(|e| e.to_string())?;
                    } else {
                        q.write(a + i * P, i).map_err(|e| e.to_string())?;
                    }
                    n += 1;
                }
                q.exit().map_err(|e| e.to_string())?;
                Ok(n)
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    m.check().unwrap();
    p.exit().unwrap();
    assert_eq!(m.check().unwrap().used, 0);
}
