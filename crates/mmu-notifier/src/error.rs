//! Typed errors for every misuse the kernel would `WARN` or `BUG` about at registration time.

/// What went wrong in a call into the notifier contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A [`Range`](crate::Range) must be half-open and non-empty: `start < end`.
    #[error("empty or inverted range [{start:#x}, {end:#x}): a range needs start < end")]
    EmptyRange {
        /// First address of the rejected range.
        start: u64,
        /// One past the last address of the rejected range.
        end: u64,
    },
    /// An interval notifier of length zero, or one whose last address does not fit in `u64`
    /// (the kernel's `-EOVERFLOW`).
    #[error(
        "interval at {start:#x} of length {length:#x} is empty or runs past the end of the \
         address space; pass a length >= 1 with start + length - 1 <= u64::MAX"
    )]
    Overflow {
        /// Requested start.
        start: u64,
        /// Requested length.
        length: u64,
    },
    /// The subscriber's declared [`Capabilities`](crate::Capabilities) break the contract
    /// (the kernel's `-EINVAL` with `WARN_ON_ONCE` at register time).
    #[error("invalid subscriber: {0}")]
    InvalidOps(&'static str),
    /// The address space was torn down by [`Mm::release`](crate::Mm::release); nothing new can
    /// subscribe to it (the kernel's `BUG_ON(mm_users <= 0)`).
    #[error("the address space has been released; create subscriptions before tearing it down")]
    Released,
    /// A shared ([`Mm::notifier_get`](crate::Mm::notifier_get)) subscription already has
    /// `u32::MAX` users (the kernel's `-EOVERFLOW`).
    #[error("the shared subscription already has u32::MAX users; put some references first")]
    TooManyUsers,
    /// The call was made from inside a notifier callback (or while this thread holds an open
    /// invalidation) of the same address space, where waiting for callbacks to finish would
    /// wait for this very thread. The operation was carried out as far as it safely could
    /// (the subscription is unlinked and will get no new callbacks) but did not wait.
    #[error(
        "{0} called from inside a notifier callback or an open invalidation of the same \
         address space; it unlinked the subscription but could not wait for running callbacks \
         (call it from outside the callback to get that guarantee)"
    )]
    InCallback(&'static str),
}

/// A non-blockable invalidation was refused because a subscriber would have had to sleep
/// (the kernel's `-EAGAIN`). The range was not invalidated; the caller must not change the
/// primary page tables for it and may retry later (as the OOM reaper does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error(
    "invalidation would block: a subscriber needs to sleep; retry in a blockable context or later"
)]
pub struct WouldBlock;
