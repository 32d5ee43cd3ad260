//! The adversary's `brk` pattern: the program break moved under the cache, in a child process.
//!
//! The break is one edge for the whole process, and glibc's `malloc` moves it too (its main
//! arena grows and trims `[heap]` with `sbrk`). So the race runs in a child: the CLI re-executes
//! itself with the run's configuration in [`CHILD_ENV`]; the child first keeps `malloc` off the
//! break (`mallopt(M_MMAP_THRESHOLD, 0)`: every allocation the main arena cannot serve from
//! memory it already has is mmapped; `M_TRIM_THRESHOLD` at its maximum: it never shrinks the
//! break) and checks it — the break must not move across a burst of allocations on several
//! threads — then runs the race, and prints its report as JSON. Every shrink also checks that
//! the break is where the run left it, so an allocator moving it during the race fails the run
//! instead of corrupting it.
//!
//! The arena is the top of `[heap]`: the break is grown by an anchor page (never released, so
//! malloc's own top chunk never ends at the break again) and the arena's pages. A mutator
//! shrinks the break to a random page of the arena — `brk` shrink unmaps like `munmap`
//! (`do_vmi_align_munmap` with the userfaultfd unmap list, `mm/mmap.c`) — and grows it back: new
//! zero pages in a new VMA that userfaultfd has not registered. The mutators take turns (one
//! lock, [`Break::edge`]): a break has one position, so N mutators serialise on it.
//!
//! Only the uffd source covers it: nothing brackets `brk`/`sbrk` (no `HostMm` wrapper), so
//! under the bracketed source the adversary refuses the pattern (`--bypass` runs it anyway, and
//! it must go stale).

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Context, Result};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The environment variable that makes `mmnotify` the brk child; it holds the run's
/// configuration as JSON.
pub(crate) const CHILD_ENV: &str = "MMNOTIFY_ADVERSARY_BRK_CHILD";

fn brk_now() -> u64 {
    // SAFETY: sbrk(0) only reads the current break.
    unsafe { libc::sbrk(0) as u64 }
}

fn sbrk(delta: i64) -> Result<u64> {
    // SAFETY: the break is moved only over memory this run added above the break it began
    // with, after checking the break is where the run left it (callers).
    let p = unsafe { libc::sbrk(delta as libc::intptr_t) };
    if p as isize == -1 {
        bail!(
            "sbrk({delta:+}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(p as u64)
}

/// The arena at the top of `[heap]`.
pub(crate) struct Break {
    /// The break when the run began (given back at the end).
    start: u64,
    /// First byte of the arena (above the anchor page).
    base: u64,
    /// One past its last byte: where the break is between changes.
    end: u64,
    edge: Mutex<()>,
}

impl Break {
    /// Grows the break by an anchor page and `len` bytes.
    pub(crate) fn new(len: u64) -> Result<Self> {
        let page = hostmm::page_size();
        let start = brk_now();
        let pad = (page - start % page) % page;
        sbrk((pad + page + len) as i64).context("growing the break for the brk arena")?;
        let base = start + pad + page;
        Ok(Self {
            start,
            base,
            end: base + len,
            edge: Mutex::new(()),
        })
    }

    /// First byte of the arena.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// The turn on the break: held by a mutator around its whole change.
    pub(crate) fn edge(&self) -> MutexGuard<'_, ()> {
        self.edge.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shrinks the break to `to` (a page of the arena) and grows it back to the arena's end,
    /// after checking that nothing else moved it. The caller holds [`Break::edge`].
    pub(crate) fn shrink_and_regrow(&self, to: u64) -> Result<()> {
        let now = brk_now();
        if now != self.end {
            bail!(
                "the break is at {now:#x}, not at {:#x} where the run left it: something else \
                 (malloc?) moved it",
                self.end
            );
        }
        let by = (self.end - to) as i64;
        sbrk(-by)?;
        sbrk(by)?;
        Ok(())
    }
}

impl Drop for Break {
    fn drop(&mut self) {
        if brk_now() == self.end {
            let _ = sbrk(-((self.end - self.start) as i64));
        }
    }
}

/// Runs `cfg` (the brk pattern's configuration) in a child process and returns its report. A
/// hang in the child (its watchdog printed where every thread is and exited with 3) exits this
/// process with 3 too.
pub(crate) fn run_in_child<C: Serialize, R: DeserializeOwned>(cfg: &C) -> Result<R> {
    let exe = std::env::current_exe().context("finding this executable to re-run it")?;
    let child = Command::new(exe)
        .env(CHILD_ENV, serde_json::to_string(cfg)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the brk child")?;
    let out = child
        .wait_with_output()
        .context("waiting for the brk child")?;
    match out.status.code() {
        Some(0) => serde_json::from_slice(&out.stdout).context("reading the brk child's report"),
        Some(3) => std::process::exit(3),
        _ => bail!("the brk child failed ({}); its error is above", out.status),
    }
}

/// The child: keeps malloc off the break, checks it, runs the race (`race`, given the
/// configuration from [`CHILD_ENV`]) and prints the report.
pub(crate) fn child_main<C: DeserializeOwned, R: Serialize>(
    cfg: &OsStr,
    race: impl FnOnce(&C) -> Result<R>,
) -> Result<()> {
    keep_malloc_off_the_break()?;
    let cfg: C = serde_json::from_str(cfg.to_str().unwrap_or_default())
        .with_context(|| format!("{CHILD_ENV} does not hold an adversary configuration"))?;
    let report = race(&cfg)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `mallopt` so that glibc's malloc never moves the break, then a check that it does not:
/// allocations of 1 B to 64 KiB on this thread and three others, half kept live, must leave
/// the break where it was (without the `mallopt` they grow it: the main arena serves these
/// sizes from `[heap]`).
fn keep_malloc_off_the_break() -> Result<()> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets glibc malloc's tunables; no allocation is in flight.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        };
        if !ok {
            bail!("mallopt refused to keep malloc off the break");
        }
    }
    #[cfg(not(target_env = "gnu"))]
    bail!("the brk pattern needs glibc's mallopt to keep malloc off the break");
    let before = brk_now();
    let burst = || {
        let mut live = Vec::new();
        for i in 0..2_000usize {
            let v = vec![i as u8; 1 << (i % 17)];
            if i % 2 == 0 {
                live.push(v);
            }
        }
        live.len()
    };
    let kept: usize = std::thread::scope(|s| {
        let others: Vec<_> = (0..3).map(|_| s.spawn(burst)).collect();
        burst()
            + others
                .into_iter()
                .map(|t| t.join().unwrap_or(0))
                .sum::<usize>()
    });
    let after = brk_now();
    if after != before || kept != 4_000 {
        bail!(
            "malloc moved the break ({before:#x} -> {after:#x}) after mallopt(M_MMAP_THRESHOLD, \
             0): the brk race cannot run beside it"
        );
    }
    Ok(())
}
