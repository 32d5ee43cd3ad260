//! The list-subscriber contract: `struct mmu_notifier_ops`.

use crate::{Error, Mm, Profile, Range, WouldBlock};

bitflags::bitflags! {
    /// Which callbacks of [`MmuNotifierOps`] a subscriber implements.
    ///
    /// The kernel tests function pointers for NULL; Rust trait methods always exist, so a
    /// subscriber declares what it implements and only those methods are called. The
    /// declaration also lets [`Mm::register`] enforce, with a typed error, two rules the kernel
    /// only checks at run time:
    ///
    /// * a subscriber whose start can fail ([`START_CAN_FAIL`](Self::START_CAN_FAIL)) must not
    ///   have an end: after a refused non-blockable invalidation the core ends exactly the
    ///   subscribers that have an end, which must therefore be the ones whose start succeeded;
    /// * [`ARCH_INVALIDATE_SECONDARY_TLBS`](Self::ARCH_INVALIDATE_SECONDARY_TLBS) is exclusive
    ///   with start and end (Linux 6.6+).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Capabilities: u32 {
        /// [`MmuNotifierOps::release`].
        const RELEASE = 1 << 0;
        /// [`MmuNotifierOps::clear_flush_young`].
        const CLEAR_FLUSH_YOUNG = 1 << 1;
        /// [`MmuNotifierOps::clear_young`].
        const CLEAR_YOUNG = 1 << 2;
        /// [`MmuNotifierOps::test_young`].
        const TEST_YOUNG = 1 << 3;
        /// [`MmuNotifierOps::invalidate_range_start`].
        const INVALIDATE_RANGE_START = 1 << 4;
        /// The start may refuse a non-blockable range with [`WouldBlock`]. Requires
        /// `INVALIDATE_RANGE_START`; excludes `INVALIDATE_RANGE_END`.
        const START_CAN_FAIL = 1 << 5;
        /// [`MmuNotifierOps::invalidate_range_end`].
        const INVALIDATE_RANGE_END = 1 << 6;
        /// [`MmuNotifierOps::arch_invalidate_secondary_tlbs`]. Excludes start and end.
        const ARCH_INVALIDATE_SECONDARY_TLBS = 1 << 7;
        /// All three young-bit callbacks.
        const YOUNG = Self::CLEAR_FLUSH_YOUNG.bits() | Self::CLEAR_YOUNG.bits() | Self::TEST_YOUNG.bits();
    }
}

impl Capabilities {
    /// Checks the registration rules of the current kernels ([`Profile::Current`]); the error
    /// says which one is broken.
    pub fn validate(self) -> Result<(), Error> {
        self.validate_for(Profile::Current)
    }

    /// Whether the start can fail and the subscriber also has an end: the shape of the drivers
    /// written for Linux 4.19–5.11 (KVM's `kvm_mmu_notifier_invalidate_range_start` of that
    /// era), which those kernels accepted and which the 5.12 pairing fix no longer can.
    pub fn is_fallible_start_with_end(self) -> bool {
        self.contains(Self::START_CAN_FAIL | Self::INVALIDATE_RANGE_END)
    }

    /// Checks the registration rules of `profile`'s kernels.
    ///
    /// Under [`Profile::Pre5_12`] a fallible start together with an end is accepted, as those
    /// kernels accepted it ([`Mm::register`] then reports
    /// [`Warning::FallibleStartWithEnd`](crate::Warning::FallibleStartWithEnd)): that profile
    /// exists to run such drivers and show the seed-004 imbalance they suffer.
    pub fn validate_for(self, profile: Profile) -> Result<(), Error> {
        if self.contains(Self::START_CAN_FAIL) && !self.contains(Self::INVALIDATE_RANGE_START) {
            return Err(Error::InvalidOps(
                "START_CAN_FAIL needs INVALIDATE_RANGE_START: only a start can fail",
            ));
        }
        if self.is_fallible_start_with_end() && profile != Profile::Pre5_12 {
            return Err(Error::InvalidOps(
                "a subscriber whose invalidate_range_start can fail must not have \
                 invalidate_range_end (the core ends every subscriber with an end after a refused \
                 start, so only subscribers whose start cannot fail may have one)",
            ));
        }
        if self.contains(Self::ARCH_INVALIDATE_SECONDARY_TLBS)
            && self.intersects(Self::INVALIDATE_RANGE_START | Self::INVALIDATE_RANGE_END)
        {
            return Err(Error::InvalidOps(
                "arch_invalidate_secondary_tlbs is exclusive with invalidate_range_start/end \
                 (Linux 6.6+): a hardware TLB walker uses one or the other",
            ));
        }
        Ok(())
    }
}

/// A secondary MMU subscribed to an address space: `struct mmu_notifier_ops`.
///
/// Callbacks run concurrently, from any thread, and concurrently with each other; implement
/// them with interior mutability. Only the callbacks named in
/// [`capabilities`](Self::capabilities) are ever called.
///
/// A subscriber may hold an [`Mm`] (a reference, as a kernel notifier's `mm` pointer kept by
/// `mmgrab`), but never an [`MmUser`](crate::MmUser): a user keeps the address space in use, so
/// its `release` would never come. It is handed `&Mm` where it needs one.
pub trait MmuNotifierOps: Send + Sync + 'static {
    /// Which callbacks this subscriber implements. Read once, at registration.
    ///
    /// # Context
    ///
    /// Called once, at registration, from the registering thread; must not block or call into
    /// the address space.
    fn capabilities(&self) -> Capabilities;

    /// The address space is going away (or this subscription is unregistered). Tear down every
    /// secondary mapping and stop the secondary MMU before the pages are freed. May sleep.
    /// Called exactly once per subscription, by whichever of [`Mm::release`] and
    /// [`Subscription::unregister`](crate::Subscription::unregister) gets there first; never by
    /// a shared subscription's last put.
    ///
    /// # Context
    ///
    /// May sleep and allocate; runs inside the address space's grace-period read section, from
    /// teardown (possibly the last `MmUser`'s drop) or unregister; must not unregister or wait
    /// for a grace period of this address space.
    fn release(&self, _mm: &Mm) {}

    /// Test and clear the accessed bit of secondary entries in `[start, end)` and flush the
    /// secondary TLB. Results of all subscribers are OR'ed.
    ///
    /// # Context
    ///
    /// Atomic context: called under the primary's page-table lock
    /// (`ptep_clear_flush_young_notify`); must not sleep or allocate with a sleeping
    /// allocation; spinlocks only.
    fn clear_flush_young(&self, _mm: &Mm, _start: u64, _end: u64) -> bool {
        false
    }

    /// Like [`clear_flush_young`](Self::clear_flush_young) but may skip the TLB flush.
    ///
    /// # Context
    ///
    /// Atomic context, as `clear_flush_young`.
    fn clear_young(&self, _mm: &Mm, _start: u64, _end: u64) -> bool {
        false
    }

    /// Test (do not clear) the accessed bit at `address`. Dispatch stops at the first `true`.
    ///
    /// # Context
    ///
    /// Atomic context, as `clear_flush_young`.
    fn test_young(&self, _mm: &Mm, _address: u64) -> bool {
        false
    }

    /// The primary is about to change the entries of `range`: stop all secondary access to it
    /// and create no new secondary mapping in it until the matching end.
    ///
    /// In a blockable range it may sleep and must succeed. In a non-blockable range
    /// (`!range.is_blockable()`, e.g. the OOM reaper) it must not sleep; if it would have to,
    /// it returns [`WouldBlock`] — allowed only when [`Capabilities::START_CAN_FAIL`] is
    /// declared, in which case the subscriber has no end.
    ///
    /// # Context
    ///
    /// Called with the primary's locks possibly held. Blockable range: may sleep and allocate,
    /// must succeed. Non-blockable range: runs inside `non_block_start()/_end()`, must not
    /// sleep; may refuse with `WouldBlock` only when `START_CAN_FAIL` is declared
    /// (`Range::lock_or_refuse` is the idiom).
    fn invalidate_range_start(&self, _range: &Range) -> Result<(), WouldBlock> {
        Ok(())
    }

    /// The change of `range` is complete (pages may have been freed). New secondary mappings
    /// may be established again once every overlapping range has ended. Called exactly once for
    /// every start that this subscriber received and that succeeded — including when another
    /// subscriber refused a non-blockable start (the Linux 5.12 pairing fix).
    ///
    /// # Context
    ///
    /// As the start it pairs with: may sleep after a blockable start, inside `non_block` after
    /// a non-blockable one. Must not fail; allocating is allowed when blockable.
    fn invalidate_range_end(&self, _range: &Range) {}

    /// Invalidate a hardware secondary TLB that walks the CPU page tables directly (IOMMU
    /// SVA/ATS). Called from the primary's TLB flush, in atomic context: must not sleep.
    ///
    /// # Context
    ///
    /// Atomic context (the primary's TLB flush, under its page-table lock): must not sleep;
    /// spinlocks only; must not fail.
    fn arch_invalidate_secondary_tlbs(&self, _mm: &Mm, _start: u64, _end: u64) {}
}

#[cfg(test)]
mod tests {
    use super::Capabilities as C;

    #[test]
    fn fallible_start_with_end_is_rejected() {
        assert!(
            (C::INVALIDATE_RANGE_START | C::START_CAN_FAIL | C::INVALIDATE_RANGE_END)
                .validate()
                .is_err()
        );
        assert!((C::INVALIDATE_RANGE_START | C::START_CAN_FAIL)
            .validate()
            .is_ok());
        assert!(C::START_CAN_FAIL.validate().is_err());
    }

    #[test]
    fn fallible_start_with_end_is_accepted_on_the_pre_5_12_profile_only() {
        use crate::Profile;
        let kvm419 = C::INVALIDATE_RANGE_START | C::START_CAN_FAIL | C::INVALIDATE_RANGE_END;
        assert!(kvm419.is_fallible_start_with_end());
        assert!(kvm419.validate_for(Profile::Pre5_12).is_ok());
        assert!(kvm419.validate_for(Profile::Current).is_err());
        // The other rules hold on every profile.
        assert!(C::START_CAN_FAIL.validate_for(Profile::Pre5_12).is_err());
        assert!(
            (C::ARCH_INVALIDATE_SECONDARY_TLBS | C::INVALIDATE_RANGE_END)
                .validate_for(Profile::Pre5_12)
                .is_err()
        );
    }

    #[test]
    fn arch_tlbs_is_exclusive_with_start_and_end() {
        assert!(
            (C::ARCH_INVALIDATE_SECONDARY_TLBS | C::INVALIDATE_RANGE_END)
                .validate()
                .is_err()
        );
        assert!(
            (C::ARCH_INVALIDATE_SECONDARY_TLBS | C::INVALIDATE_RANGE_START)
                .validate()
                .is_err()
        );
        assert!((C::ARCH_INVALIDATE_SECONDARY_TLBS | C::RELEASE | C::YOUNG)
            .validate()
            .is_ok());
    }
}
