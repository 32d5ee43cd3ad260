//! The floor under a sleeping monitor: one thread wake round trip, measured in the same run as
//! the uffd munmap it bounds. A pipe ping-pong to a thread sleeping in `poll(2)`, as the uffd
//! monitor sleeps on its descriptor: the caller writes a byte and sleeps in `read(2)` until the
//! partner, woken from `poll`, writes it back. So one round trip is two wakes, as a monitored
//! munmap is (the monitor woken by the event, the unmapping thread woken once it is read).
//!
//! Measured twice: wherever the scheduler puts the two threads, and with both pinned to one
//! core (`sched_setaffinity(2)`), where the wake is a context switch, not an inter-processor
//! interrupt and a wake from idle.

use std::time::{Duration, Instant};

use hostmm::Result;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

use super::{median, BenchConfig};
use crate::sys::sys;

/// Runs `f` on a new thread pinned to one core (the lowest one this process may use); threads
/// `f` starts inherit the pinning. Fails if the affinity cannot be set (some sandboxes).
pub fn on_one_core<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let allowed = sched_getaffinity(None).map_err(sys("sched_getaffinity"))?;
    let cpu = (0..CpuSet::MAX_CPU)
        .find(|&c| allowed.is_set(c))
        .ok_or_else(|| sys("sched_getaffinity")(rustix::io::Errno::INVAL))?;
    let mut one = CpuSet::new();
    one.set(cpu);
    std::thread::scope(|s| {
        s.spawn(move || {
            sched_setaffinity(None, &one).map_err(sys("sched_setaffinity"))?;
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The median round trip in µs, over `cfg.batches` batches of `cfg.slow_ops` round trips.
pub fn round_trip(cfg: &BenchConfig) -> Result<f64> {
    let (to_partner_r, to_partner_w) = rustix::pipe::pipe().map_err(sys("pipe"))?;
    let (to_caller_r, to_caller_w) = rustix::pipe::pipe().map_err(sys("pipe"))?;
    std::thread::scope(|s| {
        let partner = s.spawn(move || -> Result<()> {
            let mut byte = [0u8; 1];
            loop {
                let mut fds = [PollFd::new(&to_partner_r, PollFlags::IN)];
                poll(&mut fds, None).map_err(sys("poll"))?;
                if rustix::io::read(&to_partner_r, &mut byte).map_err(sys("read"))? == 0 {
                    return Ok(()); // the caller closed its end: done
                }
                rustix::io::write(&to_caller_w, &byte).map_err(sys("write"))?;
            }
        });
        let measure = || -> Result<f64> {
            let mut byte = [1u8; 1];
            let mut per_batch = Vec::with_capacity(cfg.batches);
            for _ in 0..cfg.batches {
                let mut total = Duration::ZERO;
                for _ in 0..cfg.slow_ops {
                    let t = Instant::now();
                    rustix::io::write(&to_partner_w, &byte).map_err(sys("write"))?;
                    let n = rustix::io::read(&to_caller_r, &mut byte).map_err(sys("read"))?;
                    total += t.elapsed();
                    if n != 1 {
                        return Err(sys("read")(rustix::io::Errno::PIPE));
                    }
                }
                per_batch.push(total.as_secs_f64() * 1e6 / cfg.slow_ops as f64);
            }
            Ok(median(per_batch))
        };
        let result = measure();
        drop(to_partner_w); // EOF ends the partner
        let partner = partner
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let us = result?;
        partner?;
        Ok(us)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_is_measured_both_ways() {
        let cfg = BenchConfig {
            batches: 3,
            slow_ops: 20,
            ..BenchConfig::quick()
        };
        let free = round_trip(&cfg).unwrap();
        assert!(free.is_finite() && free > 0.0, "{free}");
        // Pinning may be refused in a sandbox; where it is allowed, the pinned partner
        // really runs on the caller's core.
        if let Ok((pinned, same)) = on_one_core(|| {
            let here = rustix::thread::sched_getcpu();
            let there = std::thread::spawn(rustix::thread::sched_getcpu)
                .join()
                .unwrap();
            Ok((round_trip(&cfg)?, here == there))
        }) {
            assert!(pinned.is_finite() && pinned > 0.0, "{pinned}");
            assert!(
                same,
                "a thread started on the pinned thread runs on its core"
            );
        }
    }
}
