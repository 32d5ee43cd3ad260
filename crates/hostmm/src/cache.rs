//! The top layer: the registration cache over the primary. [`RegCache`](regcache::RegCache)
//! keyed by virtual range, the [`Registrar`](registrar::Registrar) that makes and pins the
//! registrations, and the big-reader lock its hits go through.

pub(crate) mod brlock;
pub(crate) mod regcache;
pub(crate) mod registrar;
