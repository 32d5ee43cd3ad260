//! What the OOM reaper reports about one victim (`oom_reap_task`'s "oom_reaper: reaped process"
//! and "oom_reaper: unable to reap" lines), kept by the machine.

use crate::rmap::MmId;

/// What the OOM reaper did with one victim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// The victim's address space.
    pub mm: MmId,
    /// Attempts made (at most the configured retries).
    pub attempts: u32,
    /// VMAs unmapped, summed over attempts.
    pub reaped_vmas: usize,
    /// Pages unmapped, summed over attempts.
    pub reaped_pages: usize,
    /// VMAs whose non-blockable start was refused, in the last attempt: `(start, end)`.
    pub skipped: Vec<(u64, u64)>,
    /// Attempts that could not take the mmap lock.
    pub lock_failures: u32,
    /// The reaper gave up after every attempt failed ("oom_reaper: unable to reap").
    pub gave_up: bool,
    /// `exit_mmap` got there first (`MMF_OOM_SKIP` was set).
    pub already_exited: bool,
}

impl std::fmt::Display for ReapReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.gave_up {
            write!(
                f,
                "oom_reaper: unable to reap mm {} after {} attempts ({} VMA(s) refused, {} lock failure(s))",
                self.mm,
                self.attempts,
                self.skipped.len(),
                self.lock_failures
            )
        } else {
            write!(
                f,
                "oom_reaper: reaped mm {}: {} VMA(s), {} page(s) in {} attempt(s)",
                self.mm, self.reaped_vmas, self.reaped_pages, self.attempts
            )
        }
    }
}
