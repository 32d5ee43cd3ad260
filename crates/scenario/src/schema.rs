//! The scenario file's schema: what a `scenarios/*.toml` file may say, as serde types.
//!
//! Every table denies unknown keys; every closed set of names (drivers, operations, advice,
//! report kinds, counters) is an enum, so a misspelt name is an error that lists the valid
//! ones. `scenarios/README.md` documents the schema with an annotated example.

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short name, shown in results.
    pub name: String,
    /// What the scenario shows (one paragraph).
    #[serde(default)]
    pub about: String,
    /// The machine.
    pub machine: MachineSpec,
    /// Processes present at the start, with their mappings.
    #[serde(default, rename = "process")]
    pub processes: Vec<Spanned<ProcessSpec>>,
    /// Drivers attached before the first step, in file order.
    #[serde(default, rename = "driver")]
    pub drivers: Vec<Spanned<DriverSpec>>,
    /// The operations, in order (a `thread` step runs its own steps concurrently).
    #[serde(default, rename = "step")]
    pub steps: Vec<Spanned<Step>>,
    /// The expected outcome.
    #[serde(default, rename = "expect")]
    pub expects: Vec<Spanned<Expect>>,
}

/// The simulated machine (`vmsim::Config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    /// Page frames of physical memory.
    pub frames: usize,
    /// Swap slots (default 0).
    #[serde(default)]
    pub swap: u32,
    /// Watermarks in frames; default: Linux's proportions.
    pub watermarks: Option<Watermarks>,
    /// Notifier contract profile (default `current`).
    #[serde(default)]
    pub profile: ProfileName,
    /// Run a kswapd thread (default false).
    #[serde(default)]
    pub kswapd: bool,
    /// Sleep between the OOM reaper's attempts, in ms (default 1).
    pub oom_reap_delay_ms: Option<u64>,
    /// Start the hung-task watchdog with this timeout (ms); needed by `hang` expectations.
    pub watchdog_ms: Option<u64>,
}

/// The allocator's watermarks (`WMARK_MIN/LOW/HIGH`), in free frames.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Watermarks {
    /// `WMARK_MIN`.
    pub min: usize,
    /// `WMARK_LOW`.
    pub low: usize,
    /// `WMARK_HIGH`.
    pub high: usize,
}

/// The notifier contract profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileName {
    /// Linux 5.12 and later.
    #[default]
    Current,
    /// Linux 4.19 – 5.11 (fallible starts with an end are accepted; the seed-004 imbalance).
    #[serde(rename = "pre-5.12")]
    Pre5_12,
}

/// A process present at the start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Its name (unique among processes).
    pub name: String,
    /// Its mappings, created in order.
    #[serde(default, rename = "mapping")]
    pub mappings: Vec<Spanned<MappingSpec>>,
}

/// A mapping of a process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// Its name (unique in the scenario: steps name a mapping, not a process).
    pub name: String,
    /// Length in pages.
    pub pages: u64,
    /// What backs it (default `anon`).
    #[serde(default)]
    pub kind: MapKindName,
    /// Protection, `ls`-style: `rw-` (default), `r--`, `---`, …
    pub prot: Option<String>,
    /// Write every page at creation (page `i` holds `i`).
    #[serde(default)]
    pub populate: bool,
    /// `MADV_COLD` the whole mapping after populating it (reclaim's first pick).
    #[serde(default)]
    pub cold: bool,
}

/// What backs a mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapKindName {
    /// `MAP_PRIVATE|MAP_ANONYMOUS`.
    #[default]
    Anon,
    /// `MAP_SHARED|MAP_ANONYMOUS` (shmem).
    AnonShared,
    /// A regular file of the mapping's size, `MAP_SHARED`.
    File,
    /// A regular file of the mapping's size, `MAP_PRIVATE` (copy-on-write).
    FilePrivate,
}

/// A secondary MMU driver (crate `drivers`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverSpec {
    /// Its name (unique; names the driver in the checker's violations).
    pub name: String,
    /// Which driver.
    pub kind: DriverKind,
    /// The process it attaches to.
    pub process: String,
    /// The mapping it covers (odp, gntdev, gntdev-4.12, userptr, userptr-5.7).
    pub at: Option<String>,
    /// First page of the covered range inside `at` (default 0).
    #[serde(default)]
    pub page: u64,
    /// Pages covered (default: the rest of `at`).
    pub pages: Option<u64>,
    /// odp only: what the invalidation does when it may not block (default `trylock`).
    pub nonblock: Option<NonBlockName>,
    /// The attach must fail with an error containing this text (the driver then does not
    /// exist for later steps).
    pub attach_error: Option<String>,
}

/// The reference and buggy drivers a scenario can attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    /// `lib/test_hmm.c`: a whole-address-space interval notifier.
    Dmirror,
    /// RDMA on-demand paging, an interval notifier per memory region.
    Odp,
    /// RDMA on-demand paging of Linux 4.19: a per-mm list notifier (pre-5.12 profile only).
    #[serde(rename = "odp-4.19")]
    Odp4_19,
    /// KVM's list notifier (Linux 5.13+).
    Kvm,
    /// KVM's list notifier of Linux 4.19 (fallible start with an end; pre-5.12 profile only).
    #[serde(rename = "kvm-4.19")]
    Kvm4_19,
    /// The Xen grant device, an interval notifier per map.
    Gntdev,
    /// The Xen grant device of Linux 4.12: a mutex in the per-page callback (seed 000).
    #[serde(rename = "gntdev-4.12")]
    Gntdev4_12,
    /// i915 userptr, interval notifier with sequence retry.
    Userptr,
    /// i915 userptr of Linux 5.7: the object lock across `pin_user_pages` (seed 002).
    #[serde(rename = "userptr-5.7")]
    Userptr5_7,
    /// An IOMMU doing shared virtual addressing (`arch_invalidate_secondary_tlbs`).
    Sva,
    /// A mirror that forgets `mmu_interval_set_seq`.
    BuggySetSeqForgotten,
    /// A mirror that checks `read_retry` outside its lock.
    BuggyRetryOutsideLock,
    /// A mirror that never calls `read_retry`.
    BuggyNoRetry,
    /// A list subscriber that zaps only in `invalidate_range_end`.
    BuggyZapOnlyInEnd,
    /// A list subscriber whose `release` keeps its mappings.
    BuggyReleaseKeepsMappings,
}

impl DriverKind {
    /// Every kind, in the order the README lists them.
    pub const ALL: [DriverKind; 15] = [
        DriverKind::Dmirror,
        DriverKind::Odp,
        DriverKind::Odp4_19,
        DriverKind::Kvm,
        DriverKind::Kvm4_19,
        DriverKind::Gntdev,
        DriverKind::Gntdev4_12,
        DriverKind::Userptr,
        DriverKind::Userptr5_7,
        DriverKind::Sva,
        DriverKind::BuggySetSeqForgotten,
        DriverKind::BuggyRetryOutsideLock,
        DriverKind::BuggyNoRetry,
        DriverKind::BuggyZapOnlyInEnd,
        DriverKind::BuggyReleaseKeepsMappings,
    ];

    /// The name used in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Dmirror => "dmirror",
            DriverKind::Odp => "odp",
            DriverKind::Odp4_19 => "odp-4.19",
            DriverKind::Kvm => "kvm",
            DriverKind::Kvm4_19 => "kvm-4.19",
            DriverKind::Gntdev => "gntdev",
            DriverKind::Gntdev4_12 => "gntdev-4.12",
            DriverKind::Userptr => "userptr",
            DriverKind::Userptr5_7 => "userptr-5.7",
            DriverKind::Sva => "sva",
            DriverKind::BuggySetSeqForgotten => "buggy-set-seq-forgotten",
            DriverKind::BuggyRetryOutsideLock => "buggy-retry-outside-lock",
            DriverKind::BuggyNoRetry => "buggy-no-retry",
            DriverKind::BuggyZapOnlyInEnd => "buggy-zap-only-in-end",
            DriverKind::BuggyReleaseKeepsMappings => "buggy-release-keeps-mappings",
        }
    }

    /// Whether the driver covers a range of a mapping (`at` required).
    pub fn needs_range(self) -> bool {
        matches!(
            self,
            DriverKind::Odp
                | DriverKind::Gntdev
                | DriverKind::Gntdev4_12
                | DriverKind::Userptr
                | DriverKind::Userptr5_7
        )
    }

    /// The device actions this driver supports.
    pub fn actions(self) -> &'static [Action] {
        use Action::*;
        match self {
            DriverKind::Dmirror => &[
                Fault,
                Read,
                Write,
                Snapshot,
                MigrateToDevice,
                MigrateToSystem,
            ],
            DriverKind::Odp => &[Fault, Prefetch, Read, Write, Hold],
            DriverKind::Odp4_19 => &[Hold],
            DriverKind::Kvm | DriverKind::Kvm4_19 => &[Fault, Read, Write],
            DriverKind::Gntdev | DriverKind::Gntdev4_12 => &[Fault, Read, Write],
            DriverKind::Userptr | DriverKind::Userptr5_7 => &[Fault, Read, Write],
            DriverKind::Sva => &[Read, Write],
            DriverKind::BuggySetSeqForgotten
            | DriverKind::BuggyRetryOutsideLock
            | DriverKind::BuggyNoRetry
            | DriverKind::BuggyZapOnlyInEnd
            | DriverKind::BuggyReleaseKeepsMappings => &[Fault, Read],
        }
    }
}

/// odp's choice in a non-blockable invalidation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonBlockName {
    /// `mutex_trylock`, refuse on failure: the correct driver.
    #[default]
    Trylock,
    /// `mutex_lock` regardless: sleeps under the OOM reaper (seed 003).
    Sleep,
}

/// What a `device` step asks a driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Populate the device's page table: dmirror `fault`, odp `page_fault`, KVM guest fault
    /// per page, gntdev-4.12 `gntdev_mmap`, gntdev `remap`, userptr `get_pages`, buggy
    /// mirrors' fault.
    Fault,
    /// odp prefetch (`ib_uverbs_advise_mr`).
    Prefetch,
    /// Device loads through its translations.
    Read,
    /// Device stores through its translations.
    Write,
    /// dmirror snapshot (`HMM_DMIRROR_SNAPSHOT`).
    Snapshot,
    /// dmirror migration to device memory.
    MigrateToDevice,
    /// dmirror migration back to system memory.
    MigrateToSystem,
    /// Take the driver's notifier lock (odp's umem mutex, odp-4.19's registration lock) and
    /// keep it until the driver refused one non-blockable invalidation (bounded wait).
    Hold,
}

impl Action {
    /// The name used in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Action::Fault => "fault",
            Action::Prefetch => "prefetch",
            Action::Read => "read",
            Action::Write => "write",
            Action::Snapshot => "snapshot",
            Action::MigrateToDevice => "migrate-to-device",
            Action::MigrateToSystem => "migrate-to-system",
            Action::Hold => "hold",
        }
    }
}

/// `madvise(2)` advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdviceName {
    /// `MADV_DONTNEED`.
    Dontneed,
    /// `MADV_FREE`.
    Free,
    /// `MADV_COLD`.
    Cold,
    /// `MADV_PAGEOUT`.
    Pageout,
    /// `MADV_DONTFORK`.
    Dontfork,
    /// `MADV_DOFORK`.
    Dofork,
    /// `MADV_WIPEONFORK`.
    Wipeonfork,
    /// `MADV_KEEPONFORK`.
    Keeponfork,
}

/// Allocation flags for an `alloc` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GfpName {
    /// `GFP_KERNEL`.
    Kernel,
    /// `GFP_NOFS`.
    Nofs,
    /// `GFP_NOIO`.
    Noio,
    /// `GFP_ATOMIC`.
    Atomic,
    /// `GFP_NOWAIT`.
    Nowait,
}

/// How a step that can fail is judged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Judge {
    /// An error is fine (the run goes on).
    #[serde(default)]
    pub may_fail: bool,
    /// The step must fail, with an error containing this text.
    pub error: Option<String>,
}

/// One operation. `op` names it; the other keys depend on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// CPU stores, one per page (page `i` of the mapping gets `value`, default `i`).
    Write {
        /// The mapping.
        at: String,
        /// First page.
        #[serde(default)]
        page: u64,
        /// Pages (default: the rest of the mapping).
        pages: Option<u64>,
        /// The value stored (default: the page's index in the mapping).
        value: Option<u64>,
        /// An error is fine.
        #[serde(default)]
        may_fail: bool,
        /// The step must fail with an error containing this text.
        error: Option<String>,
    },
    /// CPU loads, one per page; with `equals`, each must read that value.
    Read {
        /// The mapping.
        at: String,
        /// First page.
        #[serde(default)]
        page: u64,
        /// Pages (default: the rest of the mapping).
        pages: Option<u64>,
        /// The value every page must hold.
        equals: Option<u64>,
        /// An error is fine.
        #[serde(default)]
        may_fail: bool,
        /// The step must fail with an error containing this text.
        error: Option<String>,
    },
    /// `madvise(2)`.
    Madvise {
        /// The mapping.
        at: String,
        /// First page.
        #[serde(default)]
        page: u64,
        /// Pages (default: the rest of the mapping).
        pages: Option<u64>,
        /// The advice.
        advice: AdviceName,
        /// An error is fine.
        #[serde(default)]
        may_fail: bool,
        /// The step must fail with an error containing this text.
        error: Option<String>,
    },
    /// `munmap(2)` (of the whole mapping by default).
    Munmap {
        /// The mapping.
        at: String,
        /// First page.
        #[serde(default)]
        page: u64,
        /// Pages (default: the rest of the mapping).
        pages: Option<u64>,
        /// An error is fine.
        #[serde(default)]
        may_fail: bool,
        /// The step must fail with an error containing this text.
        error: Option<String>,
    },
    /// `mprotect(2)`.
    Mprotect {
        /// The mapping.
        at: String,
        /// First page.
        #[serde(default)]
        page: u64,
        /// Pages (default: the rest of the mapping).
        pages: Option<u64>,
        /// The new protection, `ls`-style (`r--`).
        prot: String,
        /// An error is fine.
        #[serde(default)]
        may_fail: bool,
        /// The step must fail with an error containing this text.
        error: Option<String>,
    },
    /// `migrate_pages` of a page range (NUMA migration: a `Clear` per mapping).
    Migrate {
        /// The mapping.
        at: String,
        /// First page.
        #[serde(default)]
        page: u64,
        /// Pages (default: the rest of the mapping).
        pages: Option<u64>,
        /// An error is fine.
        #[serde(default)]
        may_fail: bool,
        /// The step must fail with an error containing this text.
        error: Option<String>,
    },
    /// Writes the mapping's pages in order until at most `leave_free` frames are free.
    FillMemory {
        /// The mapping.
        at: String,
        /// Free frames to leave.
        leave_free: usize,
    },
    /// `fork(2)`: `child` is a new process.
    Fork {
        /// The parent.
        process: String,
        /// The child's name.
        child: String,
    },
    /// The process exits (`mmput` of its last user).
    Exit {
        /// The process.
        process: String,
    },
    /// One reclaim pass for `pages` frames (LRU scan, rmap walk, swap-out).
    Reclaim {
        /// Frames to try to free.
        pages: usize,
    },
    /// The OOM killer picks `process` and the reaper runs.
    OomKill {
        /// The victim.
        process: String,
    },
    /// A page allocation with `gfp`, optionally while holding a driver's notifier lock.
    Alloc {
        /// The allocation flags.
        gfp: GfpName,
        /// A driver whose notifier lock is held across the allocation (odp).
        holding: Option<String>,
        /// An error is fine.
        #[serde(default)]
        may_fail: bool,
        /// The step must fail with an error containing this text.
        error: Option<String>,
    },
    /// A device access through a driver.
    Device {
        /// The driver.
        driver: String,
        /// What it does.
        action: Action,
        /// The mapping the address is in (default: the driver's own range or mapping).
        at: Option<String>,
        /// First page (inside `at`, or inside the driver's range).
        #[serde(default)]
        page: u64,
        /// Pages (default 1).
        pages: Option<u64>,
        /// Fault for writing (fault, prefetch).
        #[serde(default)]
        write: bool,
        /// Value for `write` (default: the page index).
        value: Option<u64>,
        /// An error is fine.
        #[serde(default)]
        may_fail: bool,
        /// The step must fail with an error containing this text.
        error: Option<String>,
    },
    /// Detaches a driver (close / deregister / unbind / destroy).
    Close {
        /// The driver.
        driver: String,
    },
    /// A named thread running `steps` concurrently with what follows (repeatedly with
    /// `repeat`, until a `stop` or the end of the scenario). Errors inside it are counted
    /// (`thread_errors`), not fatal.
    Thread {
        /// The thread's name (as reported by the watchdog and the validator).
        name: String,
        /// What it runs (inline tables: `{ op = "...", ... }`).
        steps: Vec<Step>,
        /// Run the steps again and again.
        #[serde(default)]
        repeat: bool,
        /// Mark each round as this operation for the watchdog (`Machine::enter`).
        task: Option<String>,
    },
    /// Stops a thread (after its current round) and waits for it (bounded).
    Stop {
        /// The thread.
        thread: String,
        /// How long to wait for it (ms, default 10000). A thread still running is hung.
        wait_ms: Option<u64>,
    },
    /// Waits until the watchdog reported a hung task (at most `limit_ms`), then `settle_ms`
    /// more for the other parties to be reported.
    WaitHang {
        /// The bound (ms).
        limit_ms: u64,
        /// Extra wait after the first report (ms, default 300).
        settle_ms: Option<u64>,
    },
    /// Sleeps.
    Sleep {
        /// Milliseconds.
        ms: u64,
    },
    /// Checks the machine's invariants now (`Machine::check`).
    Check,
}

impl Step {
    /// The operation's name in scenario files.
    pub fn op(&self) -> &'static str {
        match self {
            Step::Write { .. } => "write",
            Step::Read { .. } => "read",
            Step::Madvise { .. } => "madvise",
            Step::Munmap { .. } => "munmap",
            Step::Mprotect { .. } => "mprotect",
            Step::Migrate { .. } => "migrate",
            Step::FillMemory { .. } => "fill-memory",
            Step::Fork { .. } => "fork",
            Step::Exit { .. } => "exit",
            Step::Reclaim { .. } => "reclaim",
            Step::OomKill { .. } => "oom-kill",
            Step::Alloc { .. } => "alloc",
            Step::Device { .. } => "device",
            Step::Close { .. } => "close",
            Step::Thread { .. } => "thread",
            Step::Stop { .. } => "stop",
            Step::WaitHang { .. } => "wait-hang",
            Step::Sleep { .. } => "sleep",
            Step::Check => "check",
        }
    }

    /// How the step's failure is judged (`may_fail`, `error`), for steps that have them.
    pub fn judge(&self) -> Judge {
        match self {
            Step::Write {
                may_fail, error, ..
            }
            | Step::Read {
                may_fail, error, ..
            }
            | Step::Madvise {
                may_fail, error, ..
            }
            | Step::Munmap {
                may_fail, error, ..
            }
            | Step::Mprotect {
                may_fail, error, ..
            }
            | Step::Migrate {
                may_fail, error, ..
            }
            | Step::Alloc {
                may_fail, error, ..
            }
            | Step::Device {
                may_fail, error, ..
            } => Judge {
                may_fail: *may_fail,
                error: error.clone(),
            },
            _ => Judge::default(),
        }
    }
}

/// One expectation: exactly one of `must`, `must_not`, `may` names what it is about; the
/// other keys narrow which observations it matches.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// At least one matching observation (or the `at_least`/`at_most`/`equals` count).
    pub must: Option<Subject>,
    /// No matching observation.
    pub must_not: Option<Subject>,
    /// Matching observations are allowed (not "unexpected"), none required.
    pub may: Option<Subject>,
    /// Reports: the kind (`cycle` = any dependency cycle, `any`).
    pub kind: Option<KindName>,
    /// Reports: a lock class that is part of it (cycle, the lock concerned, or held).
    pub lock: Option<String>,
    /// Reports: the offending call's source file ends with this.
    pub file: Option<String>,
    /// Reports, hangs, violations: the printed text contains this.
    pub contains: Option<String>,
    /// Hangs: the thread's name.
    pub thread: Option<String>,
    /// Violations and unbalanced subscribers: the driver's name.
    pub driver: Option<String>,
    /// Counters: which one.
    pub counter: Option<CounterName>,
    /// The number (of matching observations, or the counter's value) is exactly this.
    pub equals: Option<u64>,
    /// … at least this.
    pub at_least: Option<u64>,
    /// … at most this.
    pub at_most: Option<u64>,
}

/// What an expectation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subject {
    /// A validator report (lockdep).
    Report,
    /// A hung task reported by the watchdog.
    Hang,
    /// A coherence-checker violation (a device access through a stale translation).
    Violation,
    /// A list subscriber whose starts and ends do not pair at the end.
    Unbalanced,
    /// A counter's value.
    Counter,
}

/// Report kinds as named in scenario files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KindName {
    /// Any report.
    Any,
    /// Any dependency cycle (circular, reclaim inversion, recursive).
    Cycle,
    /// `possible circular locking dependency`.
    CircularLocking,
    /// A cycle through reclaim.
    ReclaimInversion,
    /// `possible recursive locking`.
    RecursiveLocking,
    /// An allocation that may reclaim, from inside reclaim.
    ReclaimRecursion,
    /// `sleeping function called from invalid context` (atomic or non-block).
    SleepingInInvalidContext,
    /// `bad unlock balance`.
    BadUnlock,
    /// Locks held at task exit.
    HeldAtExit,
    /// `non_block_end()` without a start.
    UnbalancedNonBlockEnd,
    /// The chain table is full.
    ChainTableFull,
}

/// Counters an expectation can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterName {
    /// Page faults handled.
    Faults,
    /// Copy-on-write copies.
    Cow,
    /// Pages swapped out.
    SwapOut,
    /// Pages swapped in.
    SwapIn,
    /// Frames freed by reclaim.
    Reclaimed,
    /// Direct reclaim entries.
    DirectReclaim,
    /// Pages kept by reclaim because an MMU had used them.
    Referenced,
    /// OOM kills.
    OomKills,
    /// Allocations that failed.
    AllocFailures,
    /// The OOM reaper's attempts, over every kill.
    OomReapAttempts,
    /// Pages the OOM reaper unmapped.
    OomReapedPages,
    /// Victims the reaper gave up on.
    OomGaveUp,
    /// Non-blockable invalidations the drivers refused (odp, odp-4.19).
    Refusals,
    /// KVM's `mmu_invalidate_in_progress`, summed over KVM drivers still attached.
    KvmInProgress,
    /// Device accesses the checker saw.
    DeviceAccesses,
    /// Errors inside `thread` steps.
    ThreadErrors,
    /// Steps that failed where `may_fail` allowed it.
    AllowedErrors,
}

impl CounterName {
    /// Every counter.
    pub const ALL: [CounterName; 17] = [
        CounterName::Faults,
        CounterName::Cow,
        CounterName::SwapOut,
        CounterName::SwapIn,
        CounterName::Reclaimed,
        CounterName::DirectReclaim,
        CounterName::Referenced,
        CounterName::OomKills,
        CounterName::AllocFailures,
        CounterName::OomReapAttempts,
        CounterName::OomReapedPages,
        CounterName::OomGaveUp,
        CounterName::Refusals,
        CounterName::KvmInProgress,
        CounterName::DeviceAccesses,
        CounterName::ThreadErrors,
        CounterName::AllowedErrors,
    ];
}
