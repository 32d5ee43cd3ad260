//! The top layer: the registration cache over the primary. [`RegCache`](regcache::RegCache)
//! keyed by virtual range, the [`Registrar`](registrar::Registrar) that makes and pins the
//! registrations, and what its hits go through without a lock: the published
//! [`index`] of ranges, its [`publish`]ing (read-copy-update) and the per-thread [`tally`].

pub mod index;
pub mod publish;
pub(crate) mod regcache;
pub(crate) mod registrar;
pub(crate) mod tally;
pub(crate) mod threads;
