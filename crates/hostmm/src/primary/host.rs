//! The primary MMU: this process's own address space, with its notifier state.

use mmu_notifier::Mm;

use crate::primary::gate::PendingGate;

/// This process's address space as seen by its secondary MMUs: the notifier state ([`Mm`])
/// that caches subscribe to, and the [pending gate](crate::primary::gate) that lookups pass through.
///
/// Invalidations reach it from three kinds of source: the [uffd monitor](crate::UffdMonitor),
/// the [bracketed wrappers](HostMm::munmap) and an [`Importer`](crate::Importer). Cloning is
/// cheap; all clones are the same address space.
#[derive(Clone, Default)]
pub struct HostMm {
    mm: Mm,
    gate: PendingGate,
}

impl HostMm {
    /// A fresh notifier state for this process.
    pub fn new() -> Self {
        Self {
            mm: Mm::new(),
            gate: PendingGate::new(),
        }
    }

    /// The notifier state (subscribe interval notifiers here).
    pub fn mm(&self) -> &Mm {
        &self.mm
    }

    /// The pending-window gate every lookup passes before trusting a cached translation.
    pub fn gate(&self) -> &PendingGate {
        &self.gate
    }
}

impl std::fmt::Debug for HostMm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMm")
            .field("pending_window_open", &self.gate.any_open())
            .finish_non_exhaustive()
    }
}
