//! The monitor handle: an address space's notifier state and the source of its invalidations.

use std::ffi::{c_char, c_int, CString};

use hostmm::{HostMm, MonitorConfig, Source, UffdMonitor};

use crate::status::{deref, guard, guard_value, put, Fail};

/// Use userfaultfd if this process may, else the bracketed wrappers (the reason is kept, see
/// `mmn_monitor_fallback_reason`).
pub const MMN_SOURCE_AUTO: c_int = 0;
/// userfaultfd only: every unmap or remap of watched private anonymous memory, by any code.
pub const MMN_SOURCE_UFFD: c_int = 1;
/// Only calls made through `mmn_munmap`, `mmn_mremap`, `mmn_madvise`, `mmn_mprotect` and
/// importers invalidate.
pub const MMN_SOURCE_BRACKETED: c_int = 2;

/// An address space's invalidation source (opaque). Create with `mmn_monitor_create`.
pub struct Monitor {
    pub(crate) host: HostMm,
    pub(crate) source: Source,
    reason: Option<CString>,
}

impl Monitor {
    pub(crate) fn uffd(&self) -> Option<UffdMonitor> {
        self.source.monitor()
    }
}

/// Counters of a monitor's userfaultfd thread (all zero for the bracketed source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorStats {
    /// `UNMAP` events read.
    pub unmaps: u64,
    /// `REMOVE` events read (`MADV_DONTNEED`/`MADV_FREE`).
    pub removes: u64,
    /// `REMAP` events read (`mremap` moves).
    pub remaps: u64,
    /// Pending windows opened.
    pub windows: u64,
    /// Coarse regions watched now.
    pub regions: u64,
    /// `UFFDIO_REGISTER` calls made.
    pub registers: u64,
    /// `UFFDIO_UNREGISTER` calls made.
    pub unregisters: u64,
}

/// Creates a monitor with `source` (`MMN_SOURCE_AUTO`, `MMN_SOURCE_UFFD` or
/// `MMN_SOURCE_BRACKETED`) and stores it in `*out`.
///
/// `MMN_SOURCE_UFFD` fails with `MMN_ERR_UFFD_REFUSED` when userfaultfd is refused (EPERM in
/// a sandbox, ENOSYS, missing features), with the reason in `mmn_last_error`;
/// `MMN_SOURCE_AUTO` falls back to the bracketed source then and keeps the reason
/// (`mmn_monitor_fallback_reason`). Under uffd one thread per monitor reads the events.
///
/// Context: may block briefly (starts a thread); any thread; not from a callback.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn mmn_monitor_create(source: c_int, out: *mut *mut Monitor) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(Fail::null("out"));
        }
        let host = HostMm::new();
        let (source, reason) = match source {
            MMN_SOURCE_AUTO => Source::auto(&host, MonitorConfig::default())?,
            MMN_SOURCE_UFFD => (
                Source::Uffd(UffdMonitor::start(&host, MonitorConfig::default())?),
                None,
            ),
            MMN_SOURCE_BRACKETED => (Source::Bracketed, None),
            other => return Err(Fail::invalid(format!("unknown source {other}"))),
        };
        let reason = reason.map(|e| CString::new(e.to_string()).unwrap_or_default());
        let m = Box::new(Monitor {
            host,
            source,
            reason,
        });
        // SAFETY: `out` is non-NULL and valid for a write by the caller's contract.
        unsafe { put(out, "out", Box::into_raw(m)) }
    })
}

/// Destroys a monitor handle. Caches, importers, subscriptions and watches made from it keep
/// what they need alive and stay usable; the uffd thread stops when the last of them is gone.
/// NULL is accepted and ignored.
///
/// Context: may block (joins the uffd thread when this is the last user); not from a callback.
///
/// # Safety
/// `m` is NULL or a handle from `mmn_monitor_create` not yet destroyed; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn mmn_monitor_destroy(m: *mut Monitor) -> c_int {
    // SAFETY: `m` is NULL or a live handle from its create function, by the contract.
    unsafe { crate::status::destroy(m) }
}

/// The source in use: `MMN_SOURCE_UFFD` or `MMN_SOURCE_BRACKETED` (never `MMN_SOURCE_AUTO`),
/// or `MMN_ERR_NULL`.
///
/// Context: any thread, never blocks, may be called from a callback.
///
/// # Safety
/// `m` is NULL or a live monitor handle.
#[no_mangle]
pub unsafe extern "C" fn mmn_monitor_source(m: *const Monitor) -> c_int {
    let mut src = 0;
    let rc = guard(|| {
        // SAFETY: `m` is NULL or live.
        let m = unsafe { deref(m, "monitor") }?;
        src = match m.source {
            Source::Uffd(_) => MMN_SOURCE_UFFD,
            _ => MMN_SOURCE_BRACKETED,
        };
        Ok(())
    });
    if rc == 0 {
        src
    } else {
        rc
    }
}

/// Why `MMN_SOURCE_AUTO` did not get userfaultfd (e.g. "userfaultfd is not permitted in this
/// process (EPERM); ..."), or NULL when the monitor uses uffd, was asked for the bracketed
/// source, or `m` is NULL. The string lives as long as the handle.
///
/// Context: any thread, never blocks, may be called from a callback.
///
/// # Safety
/// `m` is NULL or a live monitor handle.
#[no_mangle]
pub unsafe extern "C" fn mmn_monitor_fallback_reason(m: *const Monitor) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: `m` is NULL or live.
        match unsafe { m.as_ref() } {
            Some(Monitor {
                reason: Some(r), ..
            }) => r.as_ptr(),
            _ => std::ptr::null(),
        }
    })
}

/// Copies the uffd thread's counters into `*out` (zeros for the bracketed source).
///
/// Context: any thread; takes the watch lock briefly; not from a callback.
///
/// # Safety
/// `m` is NULL or a live monitor handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn mmn_monitor_stats(m: *const Monitor, out: *mut MonitorStats) -> c_int {
    guard(|| {
        // SAFETY: `m` is NULL or live.
        let m = unsafe { deref(m, "monitor") }?;
        let s = match m.uffd() {
            Some(u) => {
                let s = u.stats();
                MonitorStats {
                    unmaps: s.unmaps,
                    removes: s.removes,
                    remaps: s.remaps,
                    windows: s.windows,
                    regions: s.regions as u64,
                    registers: s.registers,
                    unregisters: s.unregisters,
                }
            }
            None => MonitorStats::default(),
        };
        // SAFETY: `out` is NULL or valid for a write.
        unsafe { put(out, "out", s) }
    })
}

/// 1 if an invalidation of this address space may be pending: the uffd thread has read an
/// event (so the unmapping call may have returned) and not finished invalidating it; 0 if
/// not; `MMN_ERR_NULL`. A library with its own cache treats its entries as unverifiable while
/// this is 1 (libfabric's `valid` hook), or waits with `mmn_monitor_sync`.
///
/// Context: any thread, never blocks, may be called from a callback.
///
/// # Safety
/// `m` is NULL or a live monitor handle.
#[no_mangle]
pub unsafe extern "C" fn mmn_monitor_pending(m: *const Monitor) -> c_int {
    let mut open = false;
    let rc = guard(|| {
        // SAFETY: `m` is NULL or live.
        open = unsafe { deref(m, "monitor") }?.host.gate().any_open();
        Ok(())
    });
    if rc == 0 {
        c_int::from(open)
    } else {
        rc
    }
}

/// Waits until every invalidation whose unmapping call has returned has been delivered (to
/// caches and subscriptions). A lookup in the caller's own cache made after this returns
/// never sees an entry of memory unmapped before this call.
///
/// Context: may block (for the uffd thread); never from an invalidation callback, nor while
/// holding a lock an invalidation callback takes.
///
/// # Safety
/// `m` is NULL or a live monitor handle.
#[no_mangle]
pub unsafe extern "C" fn mmn_monitor_sync(m: *const Monitor) -> c_int {
    guard(|| {
        // SAFETY: `m` is NULL or live.
        unsafe { deref(m, "monitor") }?.host.gate().wait();
        Ok(())
    })
}
