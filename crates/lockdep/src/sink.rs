//! The sink: where every report goes, and the rule that none is lost.
//!
//! A report made on a thread goes to the [`Scope`](crate::scope::Scope)s that thread is
//! attached to, which collect it instead of printing it. A report made on a thread attached to
//! no scope is an *orphan*: it is printed to stderr (once per unique problem, unless the mode
//! is [`ReportMode::Quiet`]), kept in the orphan log with the validator context it was made in,
//! and every scope open in that context sees it ([`Scope::orphans`](crate::scope::Scope::orphans));
//! an orphan of the process-wide context, where threads started without inheriting a context
//! work, is seen by every open scope:
//! such a scope is no longer clean, and a strict scope fails. So a report is never dropped, and
//! a missed detection cannot look clean because it happened on a thread nobody attached.
//!
//! Every report is also kept in a bounded process-wide log ([`take_reports`]) and handed to
//! the report hook ([`set_report_hook`]). [`ReportMode::Strict`] panics on every report (the
//! caller chose to make problems fatal). Nothing else in the library panics.

#![cfg_attr(not(feature = "enabled"), allow(dead_code))]

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::report::Report;

/// The reports delivered to one scope.
#[derive(Default)]
pub(crate) struct Collector {
    reports: Mutex<Vec<Report>>,
}

impl Collector {
    fn push(&self, r: Report) {
        self.lock().push(r);
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Report>> {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a thread's reports go: its scopes, and the validator context it works in.
#[derive(Clone, Default)]
pub(crate) struct Route {
    pub(crate) scopes: Vec<Arc<Collector>>,
    /// The validator context's id (0: the process-wide context).
    pub(crate) context: u64,
}

const ORPHAN_CAPACITY: usize = 1024;
/// Orphan reports: (sequence number, context id, report).
static ORPHANS: Mutex<VecDeque<(u64, u64, Report)>> = Mutex::new(VecDeque::new());
static ORPHAN_SEQ: AtomicU64 = AtomicU64::new(0);

/// The sequence number the next orphan will get: a scope opened now sees orphans from here on.
pub(crate) fn orphan_mark() -> u64 {
    ORPHAN_SEQ.load(Ordering::SeqCst)
}

/// The orphans made since `mark` in `context` or in the process-wide context (where a thread
/// started without inheriting its spawner's context works, whoever started it), oldest first.
pub(crate) fn orphans_since(mark: u64, context: u64) -> Vec<Report> {
    ORPHANS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(seq, ctx, _)| *seq >= mark && (*ctx == context || *ctx == 0))
        .map(|(_, _, r)| r.clone())
        .collect()
}

/// What the sink does with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportMode {
    /// Print each unique problem once to stderr (the default), and keep it in the log.
    Print,
    /// Keep reports in the log and hand them to scopes; print nothing.
    Quiet,
    /// Print, then panic: every report is fatal (tests, CI). A report found while a thread
    /// is ending is printed only, since a panic there would abort the process.
    Strict,
}

static MODE: AtomicU8 = AtomicU8::new(0);
const LOG_CAPACITY: usize = 1024;
static LOG: Mutex<VecDeque<Report>> = Mutex::new(VecDeque::new());
static PRINTED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
/// A function that sees every report (see [`set_report_hook`]).
pub type ReportHook = Box<dyn Fn(&Report) + Send + Sync>;
static HOOK: RwLock<Option<ReportHook>> = RwLock::new(None);

/// Chooses what the sink does with reports (process-wide).
pub fn set_report_mode(mode: ReportMode) {
    MODE.store(mode.as_u8(), Ordering::Relaxed);
}

/// The current [`ReportMode`]. The initial mode is `Print`, or `Strict` when the environment
/// variable `LOCKDEP_STRICT` is set to `1` when the first report is made.
pub fn report_mode() -> ReportMode {
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let strict = std::env::var("LOCKDEP_STRICT").is_ok_and(|v| v == "1");
            let m = if strict {
                ReportMode::Strict
            } else {
                ReportMode::Print
            };
            let _ = MODE.compare_exchange(0, m.as_u8(), Ordering::Relaxed, Ordering::Relaxed);
            report_mode()
        }
        2 => ReportMode::Quiet,
        3 => ReportMode::Strict,
        _ => ReportMode::Print,
    }
}

impl ReportMode {
    const fn as_u8(self) -> u8 {
        match self {
            Self::Print => 1,
            Self::Quiet => 2,
            Self::Strict => 3,
        }
    }
}

/// Installs a function called with every report (for forwarding to another diagnostics
/// sink), or removes it with `None`.
pub fn set_report_hook(hook: Option<ReportHook>) {
    *HOOK.write().unwrap_or_else(PoisonError::into_inner) = hook;
}

/// Takes every report from the process-wide log (the last 1024), oldest first.
pub fn take_reports() -> Vec<Report> {
    LOG.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain(..)
        .collect()
}

/// A copy of the process-wide log, oldest first.
pub fn reports() -> Vec<Report> {
    LOG.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect()
}

/// Delivers `r`; `true` when it is an orphan (no scope received it).
fn deliver(r: &Report, route: &Route) -> bool {
    let scopes = &route.scopes;
    for s in scopes {
        s.push(r.clone());
    }
    if scopes.is_empty() {
        let seq = ORPHAN_SEQ.fetch_add(1, Ordering::SeqCst);
        let mut o = ORPHANS.lock().unwrap_or_else(PoisonError::into_inner);
        if o.len() == ORPHAN_CAPACITY {
            o.pop_front();
        }
        o.push_back((seq, route.context, r.clone()));
    }
    {
        let mut log = LOG.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(r.clone());
    }
    if let Some(h) = HOOK.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
        h(r);
    }
    let first = PRINTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert(r.dedup_key());
    if scopes.is_empty() && first && report_mode() != ReportMode::Quiet {
        eprintln!("{r}");
    }
    scopes.is_empty()
}

/// Hands a report to the sink. Panics only in [`ReportMode::Strict`].
pub(crate) fn emit(r: Report, route: &Route) {
    deliver(&r, route);
    if report_mode() == ReportMode::Strict {
        panic!("lockdep (strict mode): {}\n{r}", r.kind.title());
    }
}

/// Hands a report made while a thread ends to the sink; never panics.
pub(crate) fn emit_from_exit(r: Report, route: &Route) {
    if !deliver(&r, route) || report_mode() != ReportMode::Strict {
        return;
    }
    eprintln!(
        "lockdep (strict mode): {} (not fatal: the thread is ending)",
        r.kind.title()
    );
}
