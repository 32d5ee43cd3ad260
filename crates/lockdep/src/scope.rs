//! Report scopes: collecting the reports of a piece of work, and the rule for threads.
//!
//! A [`Scope`] receives the reports made by the threads attached to it: the thread that
//! created it, threads that call [`ScopeHandle::attach`], and threads started with [`spawn`]
//! (or that apply an [`Inherited`] taken from an attached thread). Reports it receives are not
//! printed. `cargo test` runs tests in parallel threads of one process; a scope per test keeps
//! each test's reports apart.
//!
//! **The rule: nothing is dropped.** A report made on a thread attached to no scope is an
//! *orphan*: it is printed to stderr, and every scope open in the same validator context (the
//! process-wide one unless the threads entered a [`Context`](crate::Context)) sees it in
//! [`Scope::orphans`], as does every open scope when it was made in the process-wide context
//! (where a thread started without inheriting works). Such a scope is not
//! [`clean`](Scope::is_clean), and a
//! [`strict`](Scope::strict) scope fails when it ends. A thread that forgot to attach therefore
//! makes its test fail instead of passing on a detection nobody saw. Start threads with
//! [`spawn`] (or carry an [`Inherited`]) so their reports land in the right scope.
//!
//! ```
//! use lockdep::{scope::{self, Scope}, static_lock_class, Mutex, ReportKind};
//!
//! let scope = Scope::new();
//! let a = Mutex::new((), static_lock_class!("doc-a"));
//! let b = Mutex::new((), static_lock_class!("doc-b"));
//! scope::spawn(move || {
//!     // This thread reports to `scope`: it inherited the spawner's scopes.
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

use std::marker::PhantomData;
use std::sync::Arc;

use crate::report::{Report, ReportKind};
use crate::sink::{self, Collector};

/// A report collector for the current thread and the threads attached to it.
///
/// Reports delivered to a scope are not printed. Dropping the scope detaches the thread that
/// created it; a [`strict`](Scope::strict) scope also panics then if it is not clean (unless
/// the thread is already panicking).
pub struct Scope {
    inner: Arc<Collector>,
    context: u64,
    orphan_mark: u64,
    strict: bool,
    _task_bound: PhantomData<*const ()>,
}

/// A `Send + Clone` handle to a [`Scope`], for attaching other threads.
#[derive(Clone)]
pub struct ScopeHandle {
    inner: Arc<Collector>,
}

impl Scope {
    /// A new scope, attached to the current thread.
    pub fn new() -> Self {
        let inner = Arc::new(Collector::default());
        attach(&inner);
        Self {
            inner,
            context: current_context(),
            orphan_mark: sink::orphan_mark(),
            strict: false,
            _task_bound: PhantomData,
        }
    }

    /// A new scope that panics when it ends unclean: any report it received, or any orphan
    /// report made in its validator context while it was open.
    pub fn strict() -> Self {
        let mut s = Self::new();
        s.strict = true;
        s
    }

    /// A handle for attaching other threads.
    pub fn handle(&self) -> ScopeHandle {
        ScopeHandle {
            inner: self.inner.clone(),
        }
    }

    /// A copy of the reports received so far.
    pub fn reports(&self) -> Vec<Report> {
        self.inner.lock().clone()
    }

    /// Takes the reports received so far.
    pub fn take(&self) -> Vec<Report> {
        std::mem::take(&mut *self.inner.lock())
    }

    /// The reports of one kind received so far.
    pub fn of_kind(&self, kind: ReportKind) -> Vec<Report> {
        self.reports()
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect()
    }

    /// The orphan reports (made on threads attached to no scope) since the scope was created,
    /// in this scope's validator context or in the process-wide one. They were printed to
    /// stderr when made.
    pub fn orphans(&self) -> Vec<Report> {
        sink::orphans_since(self.orphan_mark, self.context)
    }

    /// Whether nothing was found: no report received, and no orphan report made in this
    /// scope's validator context while it was open.
    pub fn is_clean(&self) -> bool {
        self.inner.lock().is_empty() && self.orphans().is_empty()
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
            .field("reports", &self.inner.lock().len())
            .field("strict", &self.strict)
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
        if self.strict && !std::thread::panicking() && !self.is_clean() {
            let mut text = String::new();
            for r in self.reports().iter().chain(self.orphans().iter()) {
                text.push_str(&format!("{r}\n"));
            }
            panic!("lockdep: a strict scope ended with reports:\n{text}");
        }
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

/// What a new thread inherits from the thread that starts it: its scopes and its validator
/// context. `Send + Clone`; take it with [`inherited`] and [`Inherited::apply`] it first thing
/// in the new thread (for thread pools and `std::thread::scope`, where [`spawn`] does not fit).
#[derive(Clone)]
pub struct Inherited {
    #[cfg(feature = "enabled")]
    scopes: Vec<Arc<Collector>>,
    #[cfg(feature = "enabled")]
    domain: Arc<crate::domain::Domain>,
}

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inherited").finish_non_exhaustive()
    }
}

/// The current thread's scopes and validator context, to hand to a thread it starts.
pub fn inherited() -> Inherited {
    #[cfg(feature = "enabled")]
    {
        crate::task::with_task(|t| Inherited {
            scopes: t.scopes.clone(),
            domain: t.domain().clone(),
        })
        .unwrap_or_else(|| Inherited {
            scopes: Vec::new(),
            domain: crate::domain::global().clone(),
        })
    }
    #[cfg(not(feature = "enabled"))]
    Inherited {}
}

impl Inherited {
    /// Makes the current thread report to the inherited scopes (as well as its own) and work
    /// in the inherited validator context, until it ends.
    pub fn apply(&self) {
        #[cfg(feature = "enabled")]
        crate::task::with_task(|t| {
            for s in &self.scopes {
                if !t.scopes.iter().any(|mine| Arc::ptr_eq(mine, s)) {
                    t.scopes.push(s.clone());
                }
            }
            t.set_domain(self.domain.clone());
        });
    }
}

/// `std::thread::spawn`, with the new thread reporting to the spawner's scopes and working in
/// its validator context (see [`Inherited`]).
pub fn spawn<F, T>(f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let from = inherited();
    std::thread::spawn(move || {
        from.apply();
        f()
    })
}

/// Runs `f` and returns what it returned with the reports made meanwhile on this thread and
/// on threads attached to it (see [`spawn`]). Those reports are not printed.
pub fn collect_reports<R>(f: impl FnOnce() -> R) -> (R, Vec<Report>) {
    let scope = Scope::new();
    let r = f();
    let reports = scope.take();
    (r, reports)
}

fn current_context() -> u64 {
    #[cfg(feature = "enabled")]
    {
        crate::task::with_task(|t| t.domain().id).unwrap_or(0)
    }
    #[cfg(not(feature = "enabled"))]
    0
}

fn attach(inner: &Arc<Collector>) {
    #[cfg(feature = "enabled")]
    crate::task::with_task(|t| t.scopes.push(inner.clone()));
    #[cfg(not(feature = "enabled"))]
    let _ = inner;
}

fn detach(inner: &Arc<Collector>) {
    #[cfg(feature = "enabled")]
    crate::task::with_task(|t| t.scopes.retain(|s| !Arc::ptr_eq(s, inner)));
    #[cfg(not(feature = "enabled"))]
    let _ = inner;
}
