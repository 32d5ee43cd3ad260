//! Importing invalidations from another monitor.
//!
//! A VMA belongs to at most one userfaultfd, and code patchers collide too, so a process should
//! run one monitor and let it feed every cache (libfabric's import monitor, UCX's external
//! events). An [`Importer`] is that entry point: a foreign monitor (another library's uffd
//! reader, an LD_PRELOAD shim, kdreg2, an application that knows what it frees) reports what
//! changed and every cache on this [`HostMm`] drops what it must.

use mmu_notifier::{Event, InvalidateGuard, Range};

use crate::error::{Error, Result};
use crate::primary::gate::{Opener, Window};
use crate::primary::host::HostMm;
use crate::sys::va::VaRange;

/// A source of invalidations fed from outside. One per foreign monitor; `Send`, not `Sync`
/// or `Clone` (its pending window is one serial sequence).
pub struct Importer {
    host: HostMm,
    opener: Opener,
}

impl HostMm {
    /// A new import source. Fails only when [`gate::MAX_OPENERS`](crate::primary::gate::MAX_OPENERS)
    /// sources already exist.
    pub fn importer(&self) -> Result<Importer> {
        let opener = self.gate().opener().ok_or(Error::Config(
            "too many importers on one HostMm (limit: gate::MAX_OPENERS)",
        ))?;
        Ok(Importer {
            host: self.clone(),
            opener,
        })
    }
}

impl Importer {
    /// Reports a change that has already happened (e.g. a uffd `UNMAP` read elsewhere):
    /// runs a complete invalidation of `[start, start + len)`. Unaligned ranges are widened to
    /// whole pages.
    pub fn notify(&self, start: u64, len: u64, event: Event) -> Result<()> {
        let r = VaRange::covering(start, len)?;
        let g = self
            .host
            .mm()
            .invalidate_range_start(Range::new(r.start(), r.end(), event)?);
        drop(g);
        Ok(())
    }

    /// Opens an invalidation window for a change about to happen (a pre-call hook); the
    /// window ends when the guard is dropped, after the call. The guard must be dropped on
    /// the thread that opened it.
    pub fn begin(&self, start: u64, len: u64, event: Event) -> Result<InvalidateGuard<'_>> {
        let r = VaRange::covering(start, len)?;
        Ok(self
            .host
            .mm()
            .invalidate_range_start(Range::new(r.start(), r.end(), event)?))
    }

    /// Opens this source's pending window: for a foreign monitor that, like uffd, releases the
    /// changing thread before it can report the change. Open it *before* acknowledging the
    /// event (before `read()`), call [`notify`](Self::notify) for what was read, then drop it.
    /// Lookups that start while it is open wait for it.
    pub fn pending_window(&self) -> Window<'_> {
        self.opener.open()
    }

    /// The address space this importer feeds.
    pub fn host(&self) -> &HostMm {
        &self.host
    }
}
