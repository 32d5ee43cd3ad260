//! Collecting reports in tests without seeing other tests' reports.
//!
//! `cargo test` runs tests in parallel threads of one process, and the dependency graph is
//! process-wide. Two rules keep tests apart: give each test its own lock classes (a
//! `static_lock_class!()` per definition site does that by itself), and collect reports with
//! a [`Scope`], which receives only the reports made by the threads attached to it: the
//! thread that created it, and threads that call [`ScopeHandle::attach`].
//!
//! ```
//! use lockdep::{static_lock_class, testing::Scope, Mutex, ReportKind};
//!
//! let scope = Scope::new();
//! let a = Mutex::new((), static_lock_class!("doc-a"));
//! let b = Mutex::new((), static_lock_class!("doc-b"));
//! let handle = scope.handle();
//! std::thread::spawn(move || {
//!     handle.attach();
//!     let _a = a.lock();
//!     let _b = b.lock();
//!     drop(_b);
//!     drop(_a);
//!     let _b = b.lock();
//!     let _a = a.lock(); // B then A: the reverse of the order recorded above
//! })
//! .join()
//! .unwrap();
//! # #[cfg(feature = "enabled")]
//! assert_eq!(scope.of_kind(ReportKind::PossibleCircularLockingDependency).len(), 1);
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use crate::report::{Report, ReportKind};

/// The shared part of a scope: the reports it received.
#[derive(Default)]
pub(crate) struct ScopeInner {
    reports: Mutex<Vec<Report>>,
}

impl ScopeInner {
    pub(crate) fn push(&self, r: Report) {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(r);
    }
}

/// A report collector for the current thread and the threads attached to it.
///
/// Reports delivered to a scope are not printed. Dropping the scope detaches the thread that
/// created it.
pub struct Scope {
    inner: Arc<ScopeInner>,
}

/// A `Send + Clone` handle to a [`Scope`], for attaching other threads.
#[derive(Clone)]
pub struct ScopeHandle {
    inner: Arc<ScopeInner>,
}

impl Scope {
    /// A new scope, attached to the current thread.
    pub fn new() -> Self {
        let inner = Arc::new(ScopeInner::default());
        attach(&inner);
        Self { inner }
    }

    /// A handle for attaching other threads.
    pub fn handle(&self) -> ScopeHandle {
        ScopeHandle {
            inner: self.inner.clone(),
        }
    }

    /// A copy of the reports received so far.
    pub fn reports(&self) -> Vec<Report> {
        self.inner
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes the reports received so far.
    pub fn take(&self) -> Vec<Report> {
        std::mem::take(
            &mut *self
                .inner
                .reports
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The reports of one kind received so far.
    pub fn of_kind(&self, kind: ReportKind) -> Vec<Report> {
        self.reports()
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect()
    }

    /// Whether no report was received.
    pub fn is_clean(&self) -> bool {
        self.inner
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

impl Default for Scope {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("reports", &self.reports().len())
            .finish()
    }
}

impl std::fmt::Debug for ScopeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeHandle").finish_non_exhaustive()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        detach(&self.inner);
    }
}

impl ScopeHandle {
    /// Attaches the current thread to the scope until the thread ends (reports made while
    /// it ends, like [`ReportKind::HeldAtExit`], included) or [`ScopeHandle::detach`].
    pub fn attach(&self) {
        attach(&self.inner);
    }

    /// Detaches the current thread.
    pub fn detach(&self) {
        detach(&self.inner);
    }
}

fn attach(inner: &Arc<ScopeInner>) {
    #[cfg(feature = "enabled")]
    crate::task::with_task(|t| t.scopes.push(inner.clone()));
    #[cfg(not(feature = "enabled"))]
    let _ = inner;
}

fn detach(inner: &Arc<ScopeInner>) {
    #[cfg(feature = "enabled")]
    crate::task::with_task(|t| t.scopes.retain(|s| !Arc::ptr_eq(s, inner)));
    #[cfg(not(feature = "enabled"))]
    let _ = inner;
}
