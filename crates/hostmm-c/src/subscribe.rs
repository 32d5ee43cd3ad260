//! Subscriptions (a C callback on every invalidation of a range, for libraries that keep
//! their own cache) and watches (making the uffd source see a range).

use std::ffi::{c_int, c_void};

use hostmm::Watch as HostWatch;
use mmu_notifier::{Interval, IntervalNotifier, IntervalNotifierOps, Range};

use crate::import::event_to_c;
use crate::monitor::Monitor;
use crate::status::{deref, guard, put, Fail};

/// Called when `[start, end)` — the part of an invalidated range inside the subscription —
/// is about to change or has just changed, with the `MMN_EVENT_*` that says why. Drop every
/// translation of that range before returning.
///
/// Context: runs on the invalidating thread (the uffd thread, a thread in `mmn_munmap` & co.
/// or `mmn_import`), possibly concurrently with other callbacks; may take the caller's own
/// locks (held only briefly elsewhere) and may allocate; must not call any `mmn_*` function
/// except `mmn_strerror`, `mmn_last_error`, `mmn_monitor_pending`, `mmn_monitor_source`,
/// `mmn_monitor_fallback_reason` and `mmn_reg_info`; must not unmap memory.
pub type InvalidateFn =
    Option<unsafe extern "C" fn(user: *mut c_void, start: u64, end: u64, event: c_int)>;

struct Callback {
    f: unsafe extern "C" fn(*mut c_void, u64, u64, c_int),
    user: *mut c_void,
}

// SAFETY: the header requires the callback and `user` to be usable from any thread,
// concurrently, until `mmn_unsubscribe` returned.
unsafe impl Send for Callback {}
// SAFETY: as above; the struct holds no state of its own.
unsafe impl Sync for Callback {}

impl IntervalNotifierOps for Callback {
    fn invalidate(&self, interval: &Interval, range: &Range, cur_seq: u64) -> bool {
        if !range.is_blockable() {
            // A C callback may take locks: refuse a non-blockable invalidation as a whole
            // (the contract lets the invalidator retry blockably). hostmm's sources are all
            // blockable.
            return false;
        }
        interval.set_seq(cur_seq);
        let start = range.start().max(interval.start());
        let end = range.end().min(interval.last().saturating_add(1));
        // SAFETY: the caller's callback with its own context and a well-formed range.
        unsafe { (self.f)(self.user, start, end, event_to_c(range.event())) };
        true
    }
}

/// A subscription to invalidations of a range (opaque). Create with `mmn_subscribe` or
/// `mmn_subscribe_all`.
pub struct Subscription {
    _notifier: IntervalNotifier,
    _watch: Option<HostWatch>,
}

/// A watch (opaque): under the uffd source, keeps a range registered with userfaultfd so its
/// unmaps and remaps raise invalidations. Create with `mmn_watch`.
pub struct Watch {
    _watch: Option<HostWatch>,
}

fn watch(m: &Monitor, start: u64, len: u64) -> Result<Option<HostWatch>, Fail> {
    Ok(match m.uffd() {
        Some(u) => Some(u.watch(start, len)?),
        None => None,
    })
}

unsafe fn subscribe(
    m: *const Monitor,
    range: Option<(u64, u64)>,
    cb: InvalidateFn,
    user: *mut c_void,
    out: *mut *mut Subscription,
) -> Result<(), Fail> {
    // SAFETY: `m` is NULL or live, by the caller's contract.
    let m = unsafe { deref(m, "monitor") }?;
    let f = cb.ok_or_else(|| Fail::null("callback"))?;
    if out.is_null() {
        return Err(Fail::null("out"));
    }
    let (start, len) = range.unwrap_or((0, u64::MAX));
    if len == 0 {
        return Err(Fail::invalid("empty range"));
    }
    let w = match range {
        Some((s, l)) => watch(m, s, l)?,
        None => None,
    };
    let notifier = m
        .host
        .mm()
        .interval_notifier_insert(start, len, Callback { f, user })
        .map_err(hostmm::Error::from)?;
    let sub = Subscription {
        _notifier: notifier,
        _watch: w,
    };
    // SAFETY: `out` is non-NULL and valid for a write.
    unsafe { put(out, "out", Box::into_raw(Box::new(sub))) }
}

/// Calls `cb(user, start, end, event)` for every invalidation overlapping
/// `[addr, addr + len)`, until `mmn_unsubscribe`. Under the uffd source the range is also
/// watched (as `mmn_watch`), so it must be mapped private anonymous memory
/// (`MMN_ERR_NOT_MAPPED`, `MMN_ERR_UNCOVERED`, `MMN_ERR_UFFD_BUSY` otherwise).
///
/// Context: may block (registers with userfaultfd; the first subscription of an address
/// space waits for invalidations in flight); never from a callback, nor while holding a lock
/// the callback takes.
///
/// # Safety
/// `m` is NULL or a live monitor handle; `out` is NULL or valid for a write; `cb` and `user`
/// stay callable from any thread until `mmn_unsubscribe` returned.
#[no_mangle]
pub unsafe extern "C" fn mmn_subscribe(
    m: *const Monitor,
    addr: *const c_void,
    len: usize,
    cb: InvalidateFn,
    user: *mut c_void,
    out: *mut *mut Subscription,
) -> c_int {
    // SAFETY: forwarded caller contract.
    guard(|| unsafe { subscribe(m, Some((addr as u64, len as u64)), cb, user, out) })
}

/// Calls `cb` for every invalidation of the address space (it filters ranges itself, e.g.
/// against its own table), until `mmn_unsubscribe`. Watches nothing: under the uffd source,
/// make the ranges of interest seen with `mmn_watch`.
///
/// Context: as `mmn_subscribe`.
///
/// # Safety
/// As `mmn_subscribe`.
#[no_mangle]
pub unsafe extern "C" fn mmn_subscribe_all(
    m: *const Monitor,
    cb: InvalidateFn,
    user: *mut c_void,
    out: *mut *mut Subscription,
) -> c_int {
    // SAFETY: forwarded caller contract.
    guard(|| unsafe { subscribe(m, None, cb, user, out) })
}

/// Ends a subscription; when it returns, its callback is not running and will not run again.
/// NULL is ignored.
///
/// Context: may block (waits for a callback in flight and for invalidations in progress);
/// never from a callback, nor while holding a lock the callback takes.
///
/// # Safety
/// `s` is NULL or a live subscription; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn mmn_unsubscribe(s: *mut Subscription) -> c_int {
    // SAFETY: `s` is NULL or a live handle from its create function, by the contract.
    unsafe { crate::status::destroy(s) }
}

/// Under the uffd source, registers the whole mappings under `[addr, addr + len)` with
/// userfaultfd (if not already) so their unmaps and remaps raise invalidations, until
/// `mmn_unwatch`; under the bracketed source, does nothing and succeeds. Errors as
/// `mmn_subscribe`.
///
/// Context: may block briefly (`UFFDIO_REGISTER`, reads `/proc/self/smaps`); thread-safe;
/// never from a callback; may be called while holding the caller's own locks.
///
/// # Safety
/// `m` is NULL or a live monitor handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn mmn_watch(
    m: *const Monitor,
    addr: *const c_void,
    len: usize,
    out: *mut *mut Watch,
) -> c_int {
    guard(|| {
        // SAFETY: `m` is NULL or live.
        let m = unsafe { deref(m, "monitor") }?;
        if out.is_null() {
            return Err(Fail::null("out"));
        }
        let w = Watch {
            _watch: watch(m, addr as u64, len as u64)?,
        };
        // SAFETY: `out` is non-NULL and valid for a write.
        unsafe { put(out, "out", Box::into_raw(Box::new(w))) }
    })
}

/// Drops a watch; the memory is unregistered from userfaultfd when no other watch or cached
/// registration holds it. NULL is ignored.
///
/// Context: may block briefly (`UFFDIO_UNREGISTER`); never from a callback; may be called
/// while holding the caller's own locks.
///
/// # Safety
/// `w` is NULL or a live watch; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn mmn_unwatch(w: *mut Watch) -> c_int {
    // SAFETY: `w` is NULL or a live handle from its create function, by the contract.
    unsafe { crate::status::destroy(w) }
}
