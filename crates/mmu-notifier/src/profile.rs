//! Which kernel behaviour an address space reproduces where Linux versions differ.

#[cfg(doc)]
use crate::Warning;

/// Which kernel behaviour an [`Mm`](crate::Mm) reproduces where Linux versions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Linux 5.12 and later, plus the fix Linux still lacks: when a non-blockable start is
    /// refused, every subscriber whose start succeeded gets its end (the pairing fix), and the
    /// interval epoch opened by the same invalidation is closed (`mn_itree_invalidate` in
    /// `mm/mmu_notifier.c` leaves it open after a refusal by a list subscriber).
    #[default]
    Current,
    /// Linux 4.19–5.11: a refused non-blockable start returns without ending anybody, and the
    /// interval epoch stays open. This is the seed-004 bug; use it to test drivers against the
    /// kernels they ship on. A subscriber whose start can fail may also have an end here (as
    /// KVM of that era had), with a [`Warning::FallibleStartWithEnd`] at registration.
    Pre5_12,
}
