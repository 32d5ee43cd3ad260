//! The one error type of the crate.

use rustix::io::Errno;

/// Everything that can go wrong in `hostmm`, with what to do about it in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A virtual range was empty, unaligned or overflowed the address space.
    #[error("bad range [{start:#x}, +{len:#x}): {why}")]
    BadRange {
        /// First byte of the range as given.
        start: u64,
        /// Length as given.
        len: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The range is not (fully) mapped in this process.
    #[error("range [{start:#x}, {end:#x}) is not fully mapped in this process")]
    NotMapped {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// userfaultfd(2) was refused: no privilege (seccomp, LSM, sandbox).
    #[error(
        "userfaultfd is not permitted in this process (EPERM); \
         use the bracketed wrappers (HostMm::munmap & co.) or feed invalidations through an Importer instead"
    )]
    UffdPermission,
    /// The kernel has no userfaultfd (CONFIG_USERFAULTFD=n or the syscall is filtered with ENOSYS).
    #[error(
        "userfaultfd is not available on this kernel (ENOSYS); \
         use the bracketed wrappers (HostMm::munmap & co.) or an Importer instead"
    )]
    UffdUnavailable,
    /// The kernel's userfaultfd lacks a feature this monitor needs.
    #[error("userfaultfd lacks required features {missing:#x} (have {available:#x}); use the bracketed source")]
    UffdFeatures {
        /// Missing feature bits (`UFFD_FEATURE_*`).
        missing: u64,
        /// Features the kernel offers.
        available: u64,
    },
    /// Another userfaultfd context already owns (part of) the mapping.
    #[error(
        "[{start:#x}, {end:#x}) is already registered with another userfaultfd in this process (EBUSY); \
         only one uffd may monitor a mapping: feed this cache from that monitor through an Importer, \
         or use the bracketed source"
    )]
    UffdBusy {
        /// First byte of the mapping that was refused.
        start: u64,
        /// One past its last byte.
        end: u64,
    },
    /// The mapping cannot be monitored by userfaultfd (device/PFN mapping, read-only shared file...).
    #[error(
        "[{start:#x}, {end:#x}) cannot be registered with userfaultfd ({errno}); \
         use the bracketed source for such mappings"
    )]
    UffdUnsupportedMapping {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// The kernel's answer.
        errno: Errno,
    },
    /// The range lies (partly) in a mapping whose pages the cache's invalidation source cannot
    /// see change: a shared mapping (its file can be punched or truncated through another
    /// mapping or descriptor) or a private file mapping (truncation zaps even its private
    /// copies), under the uffd source.
    #[error(
        "[{start:#x}, {end:#x}) is a {} mapping: its pages can be freed through its file with no \
         userfaultfd event on this mapping, so it is not cached; use \
         the bracketed source with HostMm::punch_hole/HostMm::truncate for every change to the file",
        kind.name()
    )]
    UncoveredMapping {
        /// First byte of the mapping.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// What backs it.
        kind: MappingKind,
    },
    /// userfaultfd accepted the registration but `/proc/self/smaps` shows part of the range
    /// unregistered afterwards: the range was unmapped and mapped again while it was being
    /// registered (`UFFDIO_REGISTER` registers only what is mapped when it runs). Retry.
    #[error("[{start:#x}, {end:#x}) changed while it was being registered with userfaultfd ({tries} tries); it is not cached")]
    WatchUnverified {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Registrations tried.
        tries: u32,
    },
    /// The coarse-registration cap was reached (see `MonitorConfig::max_regions`).
    #[error("the uffd monitor already watches {0} regions (its cap); raise MonitorConfig::max_regions or unregister memory")]
    TooManyRegions(usize),
    /// The monitor thread stopped on an unexpected error; every cached registration was invalidated.
    #[error("the userfaultfd monitor thread failed ({0}); caches built on it can no longer be trusted — rebuild them")]
    MonitorFailed(String),
    /// A system call failed unexpectedly.
    #[error("{call} failed: {errno}")]
    Sys {
        /// Which call.
        call: &'static str,
        /// The error number.
        errno: Errno,
    },
    /// An I/O error on a /proc file.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The registrar refused or failed to register a range.
    #[error("registration of [{start:#x}, +{len:#x}) failed: {source}")]
    Register {
        /// First byte.
        start: u64,
        /// Length.
        len: u64,
        /// The registrar's error.
        #[source]
        source: RegistrarError,
    },
    /// The registrar depends on the pages ([`Registrar::needs_pin`](crate::Registrar::needs_pin))
    /// but did not pin the whole range before `register` returned; the registration was
    /// released.
    #[error("the registration of [{start:#x}, +{len:#x}) records pages but is not pinned ({unpinned:#x} bytes are not): pin with MlockRegistrar before recording them, or say needs_pin() = false")]
    Unpinned {
        /// First byte.
        start: u64,
        /// Length.
        len: u64,
        /// Bytes of the range no pin covered.
        unpinned: u64,
    },
    /// The mmu-notifier core refused an operation.
    #[error("mmu-notifier: {0}")]
    Notifier(#[from] mmu_notifier::Error),
    /// A miss kept colliding with invalidations; the range is being remapped continuously.
    #[error("gave up registering [{start:#x}, +{len:#x}) after {retries} collisions with concurrent invalidations")]
    TooManyRetries {
        /// First byte.
        start: u64,
        /// Length.
        len: u64,
        /// How many attempts collided.
        retries: u32,
    },
    /// A configuration value was out of range.
    #[error("bad configuration: {0}")]
    Config(&'static str),
}

/// What a [`Registrar`](crate::Registrar) reports when it cannot register a range.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrarError {
    /// A system call failed (e.g. `mlock` with ENOMEM on an unmapped range, EPERM over RLIMIT_MEMLOCK).
    #[error("{call}: {errno}")]
    Sys {
        /// The call.
        call: &'static str,
        /// Its error.
        errno: Errno,
    },
    /// A page of the range was not present (e.g. unmapped between pinning and the frame lookup).
    #[error("page at {0:#x} is not present")]
    NotPresent(u64),
    /// /proc/self/pagemap hides frame numbers from this process (needs CAP_SYS_ADMIN).
    #[error("/proc/self/pagemap shows no frame numbers without CAP_SYS_ADMIN; use MlockRegistrar instead")]
    NoFramePrivilege,
    /// An I/O error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Any other registrar-specific failure.
    #[error("{0}")]
    Other(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn sys(call: &'static str) -> impl FnOnce(Errno) -> Error {
    move |errno| Error::Sys { call, errno }
}

/// What backs a mapping, as far as an invalidation source can tell.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MappingKind {
    /// Private anonymous memory (`mmap(MAP_PRIVATE | MAP_ANONYMOUS)`, `[heap]`, `[stack]`):
    /// its pages change only through this address space.
    PrivateAnonymous,
    /// A private mapping of a file: truncating the file zaps even its copied-on-write pages
    /// (`unmap_mapping_range(..., even_cows = 1)` from `truncate_pagecache`), with no event on
    /// this mapping.
    PrivateFile,
    /// A shared mapping (shmem, memfd, `MAP_SHARED` file, System V shm): its pages are freed
    /// through the file (`fallocate(PUNCH_HOLE)`, `ftruncate`, `MADV_REMOVE` through another
    /// mapping) with no event on this mapping.
    Shared,
    /// `[vsyscall]`, `[vvar]`, `[vdso]`, `[uprobes]`: userfaultfd cannot take them.
    Special,
}

impl MappingKind {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            MappingKind::PrivateAnonymous => "private anonymous",
            MappingKind::PrivateFile => "private file-backed",
            MappingKind::Shared => "shared (shmem, memfd or MAP_SHARED file)",
            MappingKind::Special => "special kernel",
        }
    }
}
