//! One place for what a test must check: the contract's warnings and the validator's reports.
//!
//! The contract reports misuse through its [`Diagnostics`] sink, the validator through report
//! scopes: two sinks, and a test that checks one of them misses what went to the other.
//! [`Findings`] is both at once. Give [`Findings::diagnostics`] to the address spaces under
//! test ([`MmBuilder::diagnostics`](crate::MmBuilder::diagnostics)); the validator's reports
//! from this thread and the threads it starts with [`lockdep::scope::spawn`] come by
//! themselves, and orphan reports (from threads attached to no scope) are counted too.

use std::sync::{Arc, Mutex, PoisonError};

use lockdep::scope::Scope;
use lockdep::{Context, ContextGuard, Report};

use crate::diag::{DiagMode, Diagnostics, Warning};

/// One thing found: a contract warning or a validator report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A run-time violation of the notifier contract.
    Contract(Warning),
    /// A problem the lock validator found (including orphans: reports made on threads
    /// attached to no scope while these findings were collected).
    Validator(Box<Report>),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Contract(w) => write!(f, "mmu-notifier: WARNING: {w}"),
            Finding::Validator(r) => write!(f, "{r}"),
        }
    }
}

/// A collector of contract warnings and validator reports, for the current thread (and the
/// threads it starts with [`lockdep::scope::spawn`]) until it is dropped.
///
/// ```
/// use mmu_notifier::{Findings, Mm, Event, Range};
///
/// let findings = Findings::isolated(); // also a validator context of its own
/// let mm = Mm::builder().diagnostics(findings.diagnostics()).build();
/// mm.invalidate_range_start(Range::new(0x1000, 0x2000, Event::Unmap).unwrap()).end();
/// assert!(findings.is_clean(), "{}", findings.describe());
/// ```
pub struct Findings {
    diag: Arc<Diagnostics>,
    warnings: Mutex<Vec<Warning>>,
    // Dropped before the context guard: the scope belongs to the context.
    scope: Scope,
    context: Option<(Context, ContextGuard)>,
}

impl Findings {
    /// Collects in the validator context the thread is in.
    pub fn new() -> Self {
        Self {
            diag: Diagnostics::new(DiagMode::Collect),
            warnings: Mutex::new(Vec::new()),
            scope: Scope::new(),
            context: None,
        }
    }

    /// Enters a fresh validator [`Context`] for the current thread (until dropped), then
    /// collects in it: dependencies recorded by other tests in this process neither close
    /// cycles with this one's nor hide its chains.
    pub fn isolated() -> Self {
        let context = Context::new();
        let entered = context.enter();
        Self {
            context: Some((context, entered)),
            ..Self::new()
        }
    }

    /// The validator context of [`Findings::isolated`], for threads that must work in it.
    pub fn context(&self) -> Option<Context> {
        self.context.as_ref().map(|(c, _)| c.clone())
    }

    /// The contract's sink to build address spaces with.
    pub fn diagnostics(&self) -> Arc<Diagnostics> {
        self.diag.clone()
    }

    fn warnings_now(&self) -> Vec<Warning> {
        let mut w = self.warnings.lock().unwrap_or_else(PoisonError::into_inner);
        w.extend(self.diag.take());
        w.clone()
    }

    /// Everything found so far: contract warnings first, then validator reports (those
    /// received, then orphans).
    pub fn all(&self) -> Vec<Finding> {
        let mut all: Vec<Finding> = self
            .warnings_now()
            .into_iter()
            .map(Finding::Contract)
            .collect();
        all.extend(
            self.reports()
                .into_iter()
                .map(|r| Finding::Validator(Box::new(r))),
        );
        all
    }

    /// The contract warnings so far.
    pub fn warnings(&self) -> Vec<Warning> {
        self.warnings_now()
    }

    /// The validator reports so far, orphans included.
    pub fn reports(&self) -> Vec<Report> {
        let mut r = self.scope.reports();
        r.extend(self.scope.orphans());
        r
    }

    /// Whether nothing at all was found.
    pub fn is_clean(&self) -> bool {
        self.warnings_now().is_empty() && self.scope.is_clean()
    }

    /// Every finding, printed, for an assertion message.
    pub fn describe(&self) -> String {
        self.all()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Default for Findings {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Findings")
            .field("warnings", &self.warnings_now().len())
            .field("reports", &self.reports().len())
            .finish()
    }
}
