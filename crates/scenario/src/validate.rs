//! Rejecting impossible scenarios before they run: every name a step uses exists at that point,
//! every page range lies inside its mapping, every device action is one the driver has, the
//! memory the scenario populates fits the machine, and every expectation can be observed.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use toml::Spanned;

use crate::schema::{DriverKind, Expect, ProfileName, Scenario, Step, Subject};

/// The largest machine a scenario may ask for (frames): 16 GiB of simulated memory.
pub const MAX_FRAMES: usize = 1 << 22;

/// Pages a mapping may have at most (the user address space).
pub const MAX_MAPPING_PAGES: u64 = (vmsim::TASK_SIZE - vmsim::MMAP_MIN_ADDR) / 4096;

type Fail = (Option<Range<usize>>, String);

fn fail<T>(span: &Range<usize>, msg: impl Into<String>) -> Result<T, Fail> {
    Err((Some(span.clone()), msg.into()))
}

/// Parses an `ls`-style protection (`rw-`, `r--`, `---`, `rwx`) into `vmsim::vm` bits.
pub fn parse_prot(s: &str) -> Result<u32, String> {
    let b = s.as_bytes();
    let ok = b.len() == 3
        && matches!(b[0], b'r' | b'-')
        && matches!(b[1], b'w' | b'-')
        && matches!(b[2], b'x' | b'-');
    if !ok {
        return Err(format!(
            "protection `{s}` is not of the form `rwx` with `-` for a missing right (e.g. `rw-`, `r--`, `---`)"
        ));
    }
    let mut p = 0;
    if b[0] == b'r' {
        p |= vmsim::vm::READ;
    }
    if b[1] == b'w' {
        p |= vmsim::vm::WRITE;
    }
    if b[2] == b'x' {
        p |= vmsim::vm::EXEC;
    }
    Ok(p)
}

/// A reference to a mapping in a step: `name` (in the process that mapped it) or
/// `process/name` (the same address range in another process, e.g. a forked child).
pub fn split_at(at: &str) -> (Option<&str>, &str) {
    match at.split_once('/') {
        Some((p, m)) => (Some(p), m),
        None => (None, at),
    }
}

struct Names<'a> {
    /// Mapping name -> (owner process, pages).
    mappings: HashMap<&'a str, (&'a str, u64)>,
    processes: HashSet<String>,
    drivers: HashMap<String, (DriverKind, bool)>,
    threads: HashSet<String>,
    watchdog: bool,
    frames: usize,
}

/// The longest wait a step may ask for (ms): a scenario is a test, not a soak.
pub const MAX_WAIT_MS: u64 = 600_000;

fn long_wait(span: &Range<usize>, what: &str, ms: u64) -> Result<(), Fail> {
    if ms > MAX_WAIT_MS {
        fail(span, format!("{what} = {ms}: at most {MAX_WAIT_MS} ms"))
    } else {
        Ok(())
    }
}

fn list<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> String {
    let mut v: Vec<String> = names
        .into_iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

impl<'a> Names<'a> {
    fn range(
        &self,
        span: &Range<usize>,
        at: &str,
        page: u64,
        pages: Option<u64>,
    ) -> Result<(), Fail> {
        let (process, mapping) = split_at(at);
        let Some(&(owner, len)) = self.mappings.get(mapping) else {
            return fail(
                span,
                format!(
                    "no mapping `{mapping}` (mappings: {})",
                    list(self.mappings.keys())
                ),
            );
        };
        let process = process.unwrap_or(owner);
        if !self.processes.contains(process) {
            return fail(
                span,
                format!(
                    "no process `{process}` at this point (processes: {})",
                    list(&self.processes)
                ),
            );
        }
        let pages = pages.unwrap_or(len.saturating_sub(page));
        if pages == 0 || page.checked_add(pages).is_none_or(|e| e > len) {
            return fail(
                span,
                format!(
                    "pages {page}..{} are not inside mapping `{mapping}` ({len} pages)",
                    page.saturating_add(pages)
                ),
            );
        }
        Ok(())
    }

    fn driver(&self, span: &Range<usize>, name: &str) -> Result<DriverKind, Fail> {
        self.drivers.get(name).map(|d| d.0).ok_or_else(|| {
            (
                Some(span.clone()),
                format!(
                    "no driver `{name}` at this point (drivers: {})",
                    list(self.drivers.keys())
                ),
            )
        })
    }

    fn process(&self, span: &Range<usize>, name: &str) -> Result<(), Fail> {
        if self.processes.contains(name) {
            Ok(())
        } else {
            fail(
                span,
                format!(
                    "no process `{name}` at this point (processes: {})",
                    list(&self.processes)
                ),
            )
        }
    }
}

/// Validates a parsed scenario; the error is the span it is about and the message.
pub(crate) fn validate(s: &Scenario) -> Result<(), Fail> {
    let m = &s.machine;
    let whole = None;
    if m.frames == 0 || m.frames > MAX_FRAMES {
        return Err((
            whole,
            format!(
                "machine.frames = {} must be between 1 and {MAX_FRAMES}",
                m.frames
            ),
        ));
    }
    let wm = m.watermarks.map_or_else(
        || {
            let c = vmsim::Config::new(m.frames);
            (c.wmark_min, c.wmark_low, c.wmark_high)
        },
        |w| (w.min, w.low, w.high),
    );
    if !(wm.0 <= wm.1 && wm.1 <= wm.2 && wm.2 < m.frames) {
        return Err((
            None,
            format!(
                "machine.watermarks must satisfy min <= low <= high < frames (got {} {} {} with {} frames)",
                wm.0, wm.1, wm.2, m.frames
            ),
        ));
    }
    if m.watchdog_ms == Some(0) || m.watchdog_ms > Some(MAX_WAIT_MS) {
        return Err((
            None,
            format!("machine.watchdog_ms must be between 1 and {MAX_WAIT_MS}"),
        ));
    }
    if m.oom_reap_delay_ms > Some(1000) {
        return Err((None, "machine.oom_reap_delay_ms is at most 1000".into()));
    }
    let mut names = Names {
        mappings: HashMap::new(),
        processes: HashSet::new(),
        drivers: HashMap::new(),
        threads: HashSet::new(),
        watchdog: m.watchdog_ms.is_some(),
        frames: m.frames,
    };
    let mut populated = 0u64;
    for p in &s.processes {
        let span = p.span();
        let p = p.get_ref();
        if !names.processes.insert(p.name.clone()) {
            return fail(&span, format!("a second process named `{}`", p.name));
        }
        for map in &p.mappings {
            let span = map.span();
            let map = map.get_ref();
            if map.pages == 0 || map.pages > MAX_MAPPING_PAGES {
                return fail(
                    &span,
                    format!(
                        "mapping `{}` of {} pages: a mapping has 1 to {MAX_MAPPING_PAGES} pages",
                        map.name, map.pages
                    ),
                );
            }
            if map.name.contains('/') {
                return fail(&span, format!("mapping name `{}` contains `/`", map.name));
            }
            if let Some(prot) = &map.prot {
                parse_prot(prot).map_err(|e| (Some(span.clone()), e))?;
            }
            if names
                .mappings
                .insert(&map.name, (&p.name, map.pages))
                .is_some()
            {
                return fail(&span, format!("a second mapping named `{}`", map.name));
            }
            if map.populate {
                populated += map.pages;
            }
        }
    }
    let capacity = m.frames as u64 + u64::from(m.swap);
    if populated > capacity {
        return Err((
            None,
            format!(
                "the mappings populated at the start need {populated} pages, more than the machine's {} frames + {} swap slots",
                m.frames, m.swap
            ),
        ));
    }
    for d in &s.drivers {
        let span = d.span();
        let d = d.get_ref();
        names.process(&span, &d.process)?;
        if let Some(at) = &d.at {
            let (_, mapping) = split_at(at);
            names.range(&span, at, d.page, d.pages)?;
            let owner = names.mappings[mapping].0;
            if owner != d.process {
                return fail(
                    &span,
                    format!(
                        "driver `{}` attaches to process `{}` but mapping `{mapping}` belongs to `{owner}`",
                        d.name, d.process
                    ),
                );
            }
        } else if d.kind.needs_range() {
            return fail(
                &span,
                format!(
                    "driver `{}` ({}) covers a range: give `at` (a mapping of `{}`)",
                    d.name,
                    d.kind.name(),
                    d.process
                ),
            );
        }
        if d.nonblock.is_some() && d.kind != DriverKind::Odp {
            return fail(&span, "`nonblock` is for odp drivers only");
        }
        if matches!(d.kind, DriverKind::Odp4_19 | DriverKind::Kvm4_19)
            && m.profile != ProfileName::Pre5_12
            && d.attach_error.is_none()
        {
            return fail(
                &span,
                format!(
                    "driver `{}` ({}) registers a fallible start with an end, which only machine.profile = \"pre-5.12\" accepts (or say attach_error = \"...\")",
                    d.name,
                    d.kind.name()
                ),
            );
        }
        if d.attach_error.is_none()
            && names
                .drivers
                .insert(d.name.clone(), (d.kind, d.at.is_some()))
                .is_some()
        {
            return fail(&span, format!("a second driver named `{}`", d.name));
        }
    }
    let top: Vec<(Range<usize>, &Step)> =
        s.steps.iter().map(|st| (st.span(), st.get_ref())).collect();
    steps(&mut names, &top, false)?;
    for e in &s.expects {
        expect(&names, &e.span(), e.get_ref(), &s.drivers)?;
    }
    Ok(())
}

fn steps(
    names: &mut Names<'_>,
    steps_: &[(Range<usize>, &Step)],
    in_thread: bool,
) -> Result<(), Fail> {
    for (span, st) in steps_ {
        let span = span.clone();
        let judge = st.judge();
        if judge.may_fail && judge.error.is_some() {
            return fail(&span, "`may_fail` and `error` exclude each other");
        }
        match st {
            Step::Write {
                at, page, pages, ..
            }
            | Step::Read {
                at, page, pages, ..
            }
            | Step::Madvise {
                at, page, pages, ..
            }
            | Step::Munmap {
                at, page, pages, ..
            }
            | Step::Migrate {
                at, page, pages, ..
            } => names.range(&span, at, *page, *pages)?,
            Step::Mprotect {
                at,
                page,
                pages,
                prot,
                ..
            } => {
                names.range(&span, at, *page, *pages)?;
                parse_prot(prot).map_err(|e| (Some(span.clone()), e))?;
            }
            Step::FillMemory { at, .. } => names.range(&span, at, 0, None)?,
            Step::Fork { process, child } => {
                names.process(&span, process)?;
                if !names.processes.insert(child.clone()) {
                    return fail(&span, format!("a second process named `{child}`"));
                }
            }
            Step::Exit { process } => {
                names.process(&span, process)?;
                if !in_thread {
                    names.processes.remove(process);
                }
            }
            Step::Reclaim { pages } => {
                if *pages == 0 || *pages > names.frames {
                    return fail(
                        &span,
                        format!(
                            "reclaim of {pages} pages: 1 to the machine's {} frames",
                            names.frames
                        ),
                    );
                }
            }
            Step::OomKill { process } => names.process(&span, process)?,
            Step::Alloc { holding, .. } => {
                if let Some(h) = holding {
                    let kind = names.driver(&span, h)?;
                    if !kind.actions().contains(&crate::schema::Action::Hold) {
                        return fail(
                            &span,
                            format!(
                                "driver `{h}` ({}) has no notifier lock to hold (odp and odp-4.19 have)",
                                kind.name()
                            ),
                        );
                    }
                }
            }
            Step::Device {
                driver,
                action,
                at,
                page,
                pages,
                ..
            } => {
                let kind = names.driver(&span, driver)?;
                if !kind.actions().contains(action) {
                    return fail(
                        &span,
                        format!(
                            "driver `{driver}` ({}) has no action `{}`; its actions: {}",
                            kind.name(),
                            action.name(),
                            list(kind.actions().iter().map(|a| a.name()))
                        ),
                    );
                }
                match at {
                    Some(at) => names.range(&span, at, *page, Some(pages.unwrap_or(1)))?,
                    None if !names.drivers[driver.as_str()].1
                        && !matches!(action, crate::schema::Action::Hold) =>
                    {
                        return fail(
                            &span,
                            format!("driver `{driver}` covers no mapping of its own: say `at`"),
                        )
                    }
                    None => {}
                }
            }
            Step::Close { driver } => {
                names.driver(&span, driver)?;
                if !in_thread {
                    names.drivers.remove(driver);
                }
            }
            Step::Thread {
                name, steps: inner, ..
            } => {
                if !names.threads.insert(name.clone()) {
                    return fail(&span, format!("a second thread named `{name}`"));
                }
                if inner.is_empty() {
                    return fail(&span, format!("thread `{name}` has no steps"));
                }
                let inner: Vec<(Range<usize>, &Step)> =
                    inner.iter().map(|s| (span.clone(), s)).collect();
                steps(names, &inner, true)?;
            }
            Step::Stop { thread, wait_ms } => {
                long_wait(&span, "wait_ms", wait_ms.unwrap_or(0))?;
                if !names.threads.contains(thread) {
                    return fail(
                        &span,
                        format!("no thread `{thread}` (threads: {})", list(&names.threads)),
                    );
                }
            }
            Step::WaitHang {
                limit_ms,
                settle_ms,
            } => {
                long_wait(&span, "limit_ms", *limit_ms)?;
                long_wait(&span, "settle_ms", settle_ms.unwrap_or(0))?;
                if !names.watchdog {
                    return fail(
                        &span,
                        "wait-hang needs the watchdog: set machine.watchdog_ms",
                    );
                }
            }
            Step::Sleep { ms } => long_wait(&span, "sleep ms", *ms)?,
            Step::Check => {}
        }
    }
    Ok(())
}

fn expect(
    names: &Names<'_>,
    span: &Range<usize>,
    e: &Expect,
    declared: &[Spanned<crate::schema::DriverSpec>],
) -> Result<(), Fail> {
    let subjects = [e.must, e.must_not, e.may];
    let given: Vec<Subject> = subjects.iter().flatten().copied().collect();
    let [subject] = given[..] else {
        return fail(
            span,
            "an expectation has exactly one of `must`, `must_not`, `may` (report, hang, violation, unbalanced, counter)",
        );
    };
    let only = |field: bool, name: &str, subjects: &str| -> Result<(), Fail> {
        if field {
            fail(
                span,
                format!("`{name}` applies to {subjects} expectations only, not `{subject:?}`")
                    .to_lowercase(),
            )
        } else {
            Ok(())
        }
    };
    let is = |s: Subject| subject == s;
    only(
        (e.kind.is_some() || e.lock.is_some() || e.file.is_some()) && !is(Subject::Report),
        "kind/lock/file",
        "report",
    )?;
    only(e.thread.is_some() && !is(Subject::Hang), "thread", "hang")?;
    only(
        e.driver.is_some() && !is(Subject::Violation) && !is(Subject::Unbalanced),
        "driver",
        "violation and unbalanced",
    )?;
    only(
        e.contains.is_some() && is(Subject::Counter),
        "contains",
        "report, hang and violation",
    )?;
    if is(Subject::Counter) {
        if e.counter.is_none() {
            return fail(
                span,
                "a counter expectation names its `counter`".to_string()
                    + &format!(
                        " (counters: {})",
                        list(crate::schema::CounterName::ALL.iter().map(|c| {
                            serde_json::to_value(c)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default()
                        }))
                    ),
            );
        }
        if e.must.is_none() {
            return fail(
                span,
                "a counter is checked with `must` and `equals` / `at_least` / `at_most`",
            );
        }
        if e.equals.is_none() && e.at_least.is_none() && e.at_most.is_none() {
            return fail(
                span,
                "a counter expectation needs `equals`, `at_least` or `at_most`",
            );
        }
    } else if e.counter.is_some() {
        return fail(span, "`counter` applies to counter expectations only");
    }
    if e.equals.is_some() && (e.at_least.is_some() || e.at_most.is_some()) {
        return fail(span, "`equals` excludes `at_least` and `at_most`");
    }
    if let (Some(lo), Some(hi)) = (e.at_least, e.at_most) {
        if lo > hi {
            return fail(span, format!("at_least = {lo} is above at_most = {hi}"));
        }
    }
    if e.must.is_none() && (e.equals.is_some() || e.at_least.is_some() || e.at_most.is_some()) {
        return fail(
            span,
            "counts (`equals`, `at_least`, `at_most`) go with `must`",
        );
    }
    if is(Subject::Hang) && !names.watchdog {
        return fail(
            span,
            "a hang expectation can only be observed with the watchdog: set machine.watchdog_ms",
        );
    }
    if let Some(d) = &e.driver {
        if !declared.iter().any(|x| &x.get_ref().name == d) {
            return fail(
                span,
                format!(
                    "no driver `{d}` (drivers: {})",
                    list(declared.iter().map(|x| x.get_ref().name.clone()))
                ),
            );
        }
    }
    Ok(())
}
