//! The OOM killer and the OOM reaper (`mm/oom_kill.c`).
//!
//! When reclaim makes no progress, `out_of_memory` picks the address space with the largest
//! footprint (`oom_badness`: resident pages here), marks it a victim, and queues it for the OOM
//! reaper, which runs in its own thread (`oom_reaper`). The reaper (`oom_reap_task`):
//!
//! * takes the victim's mmap lock for read with a *trylock* (`oom_reap_task_mm`); failure counts
//!   as an attempt;
//! * leaves an mm that `exit_mmap` already finished (`MMF_OOM_SKIP`) alone;
//! * sets `MMF_UNSTABLE` (faults now fail: `check_stable_address_space`);
//! * walks every anonymous or private VMA (`__oom_reap_task_mm`) with a **non-blockable**
//!   [`Event::Unmap`] invalidation of the whole VMA; a VMA whose start is refused is skipped —
//!   no end for it — and the attempt fails; the others are zapped and their end called;
//! * retries the *whole* mm up to `MAX_OOM_REAP_RETRIES` (10) times, sleeping between attempts,
//!   so VMAs reaped before are notified again; after the last failure it reports
//!   "oom_reaper: unable to reap"; either way it sets `MMF_OOM_SKIP`.

use crate::primitive::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::task::Op;
use mmu_notifier::{Event, Range};

use crate::machine::{mmf, Space};
use crate::machine::{Inner, Machine};
pub use crate::oom_report::ReapReport;
use crate::process::Process;
use crate::zap::Gather;

/// One pass over the mm (`__oom_reap_task_mm`). Returns whether every VMA was reaped.
fn reap_once(space: &Space, report: &mut ReapReport) -> bool {
    let Some(vmas) = space.mmap_lock.try_read() else {
        report.lock_failures += 1;
        return false;
    };
    if space.test(mmf::OOM_SKIP) {
        report.already_exited = true;
        return true;
    }
    space.set(mmf::UNSTABLE);
    let mut ok = true;
    report.skipped.clear();
    for v in vmas.iter() {
        if !v.is_anonymous() && v.is_shared() {
            continue;
        }
        let Ok(range) = Range::new(v.start, v.end, Event::Unmap) else {
            continue;
        };
        let mut tlb = Gather::new(); // `tlb_gather_mmu` before the start, as Linux does
        match space.mm.invalidate_range_start_nonblock(range) {
            Err(_) => {
                // Refused: leave the VMA alone, no end, go on with the next one.
                ok = false;
                report.skipped.push((v.start, v.end));
                if let Err(e) = tlb.finish(space) {
                    space.machine.late_error(e);
                }
            }
            Ok(guard) => {
                let before = space.rss();
                let zapped = tlb.zap(space, v.start, v.end, |_| true);
                drop(guard);
                if let Err(e) = zapped.and(tlb.finish(space)) {
                    space.machine.late_error(e);
                }
                report.reaped_vmas += 1;
                report.reaped_pages += before.saturating_sub(space.rss());
            }
        }
    }
    ok
}

/// `oom_reap_task`: up to `retries` attempts with `delay` between failures, then
/// `MMF_OOM_SKIP`.
pub(crate) fn oom_reap(space: &Space, retries: u32, delay: Duration) -> ReapReport {
    let _task = space.machine.tasks.enter(Op::OomReap, space.id(), 0);
    let mut report = ReapReport {
        mm: space.id(),
        ..ReapReport::default()
    };
    while report.attempts < retries {
        report.attempts += 1;
        if reap_once(space, &mut report) {
            report.skipped.clear();
            space.set(mmf::OOM_SKIP);
            return report;
        }
        crate::primitive::thread::sleep(delay);
    }
    report.gave_up = !space.test(mmf::OOM_SKIP);
    space.set(mmf::OOM_SKIP);
    report
}

/// `out_of_memory`: picks a victim, reaps it in the `oom_reaper` thread, and waits for the
/// reaper (bounded). Returns whether a victim was found.
pub(crate) fn out_of_memory(m: &Inner) -> bool {
    let victim = m
        .spaces()
        .into_iter()
        .filter(|s| !s.test(mmf::OOM_SKIP | mmf::OOM_VICTIM | mmf::EXITED) && s.rss() > 0)
        .max_by_key(|s| s.rss());
    let Some(victim) = victim else { return false };
    victim.set(mmf::OOM_VICTIM);
    m.counters.oom_kills.fetch_add(1, Ordering::Relaxed);
    let (retries, delay) = (m.config.oom_reap_retries, m.config.oom_reap_delay);
    let (tx, rx) = crate::primitive::mpsc::channel();
    let reaper_victim: Arc<Space> = victim.clone();
    let spawned = crate::primitive::thread::Builder::new()
        .name("oom_reaper".into())
        .spawn(move || {
            let report = oom_reap(&reaper_victim, retries, delay);
            // The report is kept by the machine whether or not the allocator still waits.
            reaper_victim
                .machine
                .oom_reports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(report);
            let _ = tx.send(()); // the allocator may have stopped waiting: nothing is lost
        });
    if spawned.is_err() {
        return false;
    }
    // The allocator does not wait for the reaper in Linux; it retries. Waiting (bounded) makes
    // the retry see the reaped memory.
    let wait = delay * (retries + 1) + Duration::from_millis(100);
    let _ = rx.recv_timeout(wait);
    true
}

impl Machine {
    /// Reports of the OOM reaper so far.
    pub fn oom_reports(&self) -> Vec<ReapReport> {
        self.0
            .oom_reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Kills `process` as the OOM killer would and reaps its address space in this thread
    /// (`oom_reap_task`), returning the reaper's report. Use it to drive the reaper directly in
    /// a test; under real pressure the allocator does this in an `oom_reaper` thread.
    pub fn oom_kill(&self, process: &Process) -> ReapReport {
        let s = process.space();
        s.set(mmf::OOM_VICTIM);
        self.0.counters.oom_kills.fetch_add(1, Ordering::Relaxed);
        let r = oom_reap(
            s,
            self.0.config.oom_reap_retries,
            self.0.config.oom_reap_delay,
        );
        self.0
            .oom_reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r.clone());
        r
    }
}
