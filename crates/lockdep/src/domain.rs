//! A validator context's state: its dependency graph and its chain cache.
//!
//! The kernel has one of each per machine (`lock_classes`, `list_entries`, `chain_hashes` in
//! `kernel/locking/lockdep.c`). Here the process-wide one serves every thread by default, and
//! a [`Context`](crate::Context) makes a fresh one for the threads that enter it, so that tests
//! in one process neither complete each other's cycles nor skip each other's chains. Inside
//! one domain the rules are the kernel's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::chain::ChainCache;
use crate::graph::Graph;
use crate::primitive::RawMutex;

/// Slots in the process-wide chain cache (the kernel's `MAX_LOCKDEP_CHAINS` is 65536).
#[cfg(not(any(loom, shuttle)))]
const GLOBAL_CHAIN_CAPACITY: usize = 1 << 16;

/// Slots in a [`Context`](crate::Context)'s chain cache.
pub(crate) const CONTEXT_CHAIN_CAPACITY: usize = 1 << 12;

/// What the graph lock guards.
#[derive(Default)]
pub(crate) struct Locked {
    pub(crate) graph: Graph,
    /// Chain-cache slots in use (the cache's single writer holds this lock).
    chains_used: usize,
    /// Chains validated (cache misses), for statistics.
    pub(crate) chains_validated: u64,
}

/// One validator context: the graph, the chain cache, and its id for routing reports.
pub(crate) struct Domain {
    /// 0 for the process-wide domain.
    pub(crate) id: u64,
    pub(crate) chains: ChainCache,
    locked: RawMutex<Locked>,
    /// Set once, when the chain cache first refuses a key; taken by whoever reports it.
    full: AtomicBool,
    full_noticed: AtomicBool,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Domain {
    pub(crate) fn new(chain_capacity: usize, global: bool) -> Self {
        Self {
            id: if global {
                0
            } else {
                NEXT_ID.fetch_add(1, Ordering::Relaxed)
            },
            chains: ChainCache::new(chain_capacity),
            locked: RawMutex::new(Locked::default()),
            full: AtomicBool::new(false),
            full_noticed: AtomicBool::new(false),
        }
    }

    /// The steady state: a lock-free probe. On a miss, `validate` runs under the graph lock
    /// unless another thread validated the same chain meanwhile, then the key is published.
    #[inline]
    pub(crate) fn lookup_or_validate<R>(
        &self,
        key: u64,
        validate: impl FnOnce(&mut Graph) -> Option<R>,
    ) -> Option<R> {
        if self.chains.contains(key) {
            return None;
        }
        self.validate_slow(key, validate)
    }

    #[cold]
    #[inline(never)]
    fn validate_slow<R>(
        &self,
        key: u64,
        validate: impl FnOnce(&mut Graph) -> Option<R>,
    ) -> Option<R> {
        let mut l = self.locked.lock();
        // Another thread may have validated the same chain since our lock-free probe.
        // (`lockdep_broken = "no_recheck"`: the broken variant the loom model must catch.)
        #[cfg(not(lockdep_broken = "no_recheck"))]
        if self.chains.contains(key) {
            return None;
        }
        l.chains_validated += 1;
        // The broken variant that publishes a chain before its validation.
        #[cfg(lockdep_broken = "publish_early")]
        {
            let mut used = l.chains_used;
            self.chains.insert(key, &mut used);
            l.chains_used = used;
            crate::primitive::spin(0);
        }
        let r = validate(&mut l.graph);
        let mut used = l.chains_used;
        let published = self.chains.insert(key, &mut used);
        l.chains_used = used;
        if !published {
            self.full.store(true, Ordering::Relaxed);
        }
        r
    }

    /// `true` once, the first time this is asked after the chain cache filled up.
    pub(crate) fn take_full_notice(&self) -> bool {
        self.full.load(Ordering::Relaxed) && !self.full_noticed.swap(true, Ordering::Relaxed)
    }

    pub(crate) fn with_locked<R>(&self, f: impl FnOnce(&mut Locked) -> R) -> R {
        f(&mut self.locked.lock())
    }
}

#[cfg(not(any(loom, shuttle)))]
pub(crate) fn global() -> &'static std::sync::Arc<Domain> {
    static GLOBAL: std::sync::OnceLock<std::sync::Arc<Domain>> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(|| std::sync::Arc::new(Domain::new(GLOBAL_CHAIN_CAPACITY, true)))
}

#[cfg(loom)]
loom::lazy_static! {
    static ref GLOBAL: std::sync::Arc<Domain> = std::sync::Arc::new(Domain::new(256, true));
}

#[cfg(all(shuttle, not(loom)))]
shuttle::lazy_static! {
    static ref GLOBAL: std::sync::Arc<Domain> = std::sync::Arc::new(Domain::new(256, true));
}

/// The process-wide domain; under a model checker, one per model execution.
#[cfg(any(loom, shuttle))]
pub(crate) fn global() -> &'static std::sync::Arc<Domain> {
    &GLOBAL
}
