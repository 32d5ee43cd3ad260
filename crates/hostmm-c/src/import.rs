//! Importers: invalidations fed from the caller's own hooks (its own userfaultfd reader, an
//! `LD_PRELOAD` shim, an allocator that knows what it frees).

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

use hostmm::{Event, Importer as HostImporter};

use crate::monitor::Monitor;
use crate::status::{deref, guard, put, Fail};

/// The mapping goes away (munmap, the old range of an mremap move).
pub const MMN_EVENT_UNMAP: c_int = 0;
/// Pages are dropped for another reason (madvise, reclaim).
pub const MMN_EVENT_CLEAR: c_int = 1;
/// The protection of the range changes (mprotect).
pub const MMN_EVENT_PROTECTION_VMA: c_int = 2;
/// Per-page protection changes.
pub const MMN_EVENT_PROTECTION_PAGE: c_int = 3;
/// Soft-dirty tracking is reset.
pub const MMN_EVENT_SOFT_DIRTY: c_int = 4;
/// The address space is torn down.
pub const MMN_EVENT_RELEASE: c_int = 5;
/// Pages migrate.
pub const MMN_EVENT_MIGRATE: c_int = 6;
/// Device-exclusive access changes.
pub const MMN_EVENT_EXCLUSIVE: c_int = 7;

pub(crate) fn event_from_c(raw: c_int) -> Result<Event, Fail> {
    usize::try_from(raw)
        .ok()
        .and_then(|i| Event::ALL.get(i).copied())
        .ok_or_else(|| Fail::invalid(format!("unknown event {raw}")))
}

pub(crate) fn event_to_c(e: Event) -> c_int {
    e as u8 as c_int
}

/// A source of invalidations fed by the caller (opaque). Create with `mmn_importer_create`.
pub struct Importer {
    inner: Mutex<HostImporter>,
}

/// Creates an importer feeding every cache and subscription of `m`'s address space.
/// `MMN_ERR_INVALID` when too many importers exist (the pending gate's limit).
///
/// Context: any thread; never blocks; not from a callback.
///
/// # Safety
/// `m` is NULL or a live monitor handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn mmn_importer_create(m: *const Monitor, out: *mut *mut Importer) -> c_int {
    guard(|| {
        // SAFETY: `m` is NULL or live.
        let m = unsafe { deref(m, "monitor") }?;
        if out.is_null() {
            return Err(Fail::null("out"));
        }
        let imp = Box::new(Importer {
            inner: Mutex::new(m.host.importer()?),
        });
        // SAFETY: `out` is non-NULL and valid for a write.
        unsafe { put(out, "out", Box::into_raw(imp)) }
    })
}

/// Destroys an importer. NULL is ignored.
///
/// Context: any thread; not while another thread is inside `mmn_import` on it.
///
/// # Safety
/// `imp` is NULL or a live importer handle; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn mmn_importer_destroy(imp: *mut Importer) -> c_int {
    // SAFETY: `imp` is NULL or a live handle from its create function, by the contract.
    unsafe { crate::status::destroy(imp) }
}

/// Reports a change that has already happened to `[addr, addr + len)` (widened to whole
/// pages) with `event` (`MMN_EVENT_*`): runs a complete invalidation, so every cached
/// registration and subscription overlapping it has been told when this returns.
///
/// A lookup that ran between the change and this call may still have returned the old
/// registration: call it from a hook that runs *before* the memory is reused (an allocator's
/// free path, a uffd reader before it acknowledges), or use the bracketed wrappers.
///
/// Context: may block (waits for invalidation callbacks); thread-safe (calls on one importer
/// are serialized); never from a callback of this library.
///
/// # Safety
/// `imp` is NULL or a live importer handle.
#[no_mangle]
pub unsafe extern "C" fn mmn_import(
    imp: *const Importer,
    addr: *const c_void,
    len: usize,
    event: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: `imp` is NULL or live.
        let imp = unsafe { deref(imp, "importer") }?;
        let e = event_from_c(event)?;
        let i = imp.inner.lock().unwrap_or_else(|p| p.into_inner());
        i.notify(addr as u64, len as u64, e)?;
        Ok(())
    })
}
