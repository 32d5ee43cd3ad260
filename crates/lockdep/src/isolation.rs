//! Validator contexts: a dependency graph and chain cache of one's own.
//!
//! The kernel validates one machine, so it has one graph. A test process runs many tests, in
//! parallel threads: with one graph, a dependency recorded by one test can close a cycle with
//! another test's (a false alarm), and a chain validated by one test is never checked again
//! in another (the other test's graph may order it differently). A [`Context`] is a fresh
//! graph and chain cache; the threads that [`enter`](Context::enter) it record into and check
//! against it alone. Inside one context the rules are exactly the kernel's. Lock classes stay
//! process-wide (a class is a name and an id): only what is known *about* them is per context.
//!
//! A thread works in the process-wide context until it enters another; threads started with
//! [`scope::spawn`](crate::scope::spawn) work in their spawner's. Reports made in a context
//! by a thread attached to no scope are orphans of that context: only scopes of the same
//! context see them.
//!
//! ```
//! use lockdep::{scope::Scope, static_lock_class, Context, Mutex};
//!
//! let a = Mutex::new((), static_lock_class!("ctx-doc-a"));
//! let b = Mutex::new((), static_lock_class!("ctx-doc-b"));
//! {
//!     let _ctx = Context::new().enter(); // test 1
//!     let _a = a.lock();
//!     let _b = b.lock();
//! }
//! {
//!     let _ctx = Context::new().enter(); // test 2: its own graph
//!     let scope = Scope::new();
//!     let _b = b.lock();
//!     let _a = a.lock();
//!     assert!(scope.is_clean()); // test 1's A -> B is not in this graph
//! }
//! ```

use std::marker::PhantomData;
#[cfg(feature = "enabled")]
use std::sync::Arc;

#[cfg(feature = "enabled")]
use crate::domain::{Domain, CONTEXT_CHAIN_CAPACITY};

/// A validator context: its own dependency graph and chain cache. Cheap to clone (shared).
#[derive(Clone)]
pub struct Context {
    #[cfg(feature = "enabled")]
    domain: Arc<Domain>,
}

impl Context {
    /// A fresh context with an empty graph and chain cache.
    pub fn new() -> Self {
        Self {
            #[cfg(feature = "enabled")]
            domain: Arc::new(Domain::new(CONTEXT_CHAIN_CAPACITY, false)),
        }
    }

    /// Makes the current thread record into and check against this context until the guard
    /// drops (then it returns to the context it was in). Enter with no lock held: locks held
    /// across the switch were validated in the other context.
    pub fn enter(&self) -> ContextGuard {
        #[cfg(feature = "enabled")]
        {
            let previous = crate::task::with_task(|t| t.set_domain(self.domain.clone()));
            ContextGuard {
                previous,
                _task_bound: PhantomData,
            }
        }
        #[cfg(not(feature = "enabled"))]
        ContextGuard {
            _task_bound: PhantomData,
        }
    }

    /// Chains this context has validated (its chain-cache misses).
    pub fn chains_validated(&self) -> u64 {
        #[cfg(feature = "enabled")]
        {
            self.domain.with_locked(|l| l.chains_validated)
        }
        #[cfg(not(feature = "enabled"))]
        0
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("chains_validated", &self.chains_validated())
            .finish()
    }
}

/// The current thread's stay in a [`Context`]; dropping it returns to the previous context.
#[must_use = "the thread leaves the context when the guard is dropped"]
pub struct ContextGuard {
    #[cfg(feature = "enabled")]
    previous: Option<Arc<Domain>>,
    _task_bound: PhantomData<*const ()>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        #[cfg(feature = "enabled")]
        if let Some(previous) = self.previous.take() {
            crate::task::with_task(|t| t.set_domain(previous));
        }
    }
}

impl std::fmt::Debug for ContextGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContextGuard")
    }
}
