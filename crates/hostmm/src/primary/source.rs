//! Choosing an invalidation source, with the documented fallback.

use crate::error::{Error, Result};
use crate::primary::host::HostMm;
use crate::primary::monitor::{MonitorConfig, UffdMonitor};

/// Where a cache's invalidations come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A userfaultfd monitor sees every unmap/remap/madvise in the process, by anyone.
    Uffd(UffdMonitor),
    /// Only calls made through the bracketed wrappers ([`HostMm::munmap`] & co.) or an
    /// [`Importer`](crate::Importer) invalidate. The fallback when uffd cannot be used.
    Bracketed,
}

impl Source {
    /// Starts a uffd monitor; if this process may not or cannot have one (EPERM, ENOSYS,
    /// missing event features), falls back to [`Source::Bracketed`] and returns the reason.
    /// Any other error is returned as is.
    pub fn auto(host: &HostMm, config: MonitorConfig) -> Result<(Source, Option<Error>)> {
        match UffdMonitor::start(host, config) {
            Ok(m) => Ok((Source::Uffd(m), None)),
            Err(
                e @ (Error::UffdPermission | Error::UffdUnavailable | Error::UffdFeatures { .. }),
            ) => Ok((Source::Bracketed, Some(e))),
            Err(e) => Err(e),
        }
    }

    /// The monitor to put into `CacheConfig::monitor` (the cache layer above).
    pub fn monitor(&self) -> Option<UffdMonitor> {
        match self {
            Source::Uffd(m) => Some(m.clone()),
            Source::Bracketed => None,
        }
    }

    /// `"uffd"` or `"bracketed"`.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Uffd(_) => "uffd",
            Source::Bracketed => "bracketed",
        }
    }
}
