//! Status codes, their descriptions, the last error of a thread, and the guard that keeps
//! panics from crossing into C.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The status every `int`-returning function returns: `MMN_OK` (0) or a negative `MMN_ERR_*`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Success.
    MMN_OK = 0,
    /// A pointer argument that must not be NULL was NULL.
    MMN_ERR_NULL = -1,
    /// An argument is out of range: an empty, unaligned or overflowing range, an unknown source,
    /// event, advice or flag, a zero limit.
    MMN_ERR_INVALID = -2,
    /// The range is not (fully) mapped in this process.
    MMN_ERR_NOT_MAPPED = -3,
    /// userfaultfd was refused (EPERM), is missing (ENOSYS) or lacks features; the message says
    /// which. `MMN_SOURCE_AUTO` falls back to the bracketed source instead.
    MMN_ERR_UFFD_REFUSED = -4,
    /// Another userfaultfd in this process already owns the mapping (EBUSY): feed this library
    /// from that monitor through an importer, or use the bracketed source.
    MMN_ERR_UFFD_BUSY = -5,
    /// The mapping's pages can change with no event the source sees (shared or file-backed
    /// memory under uffd, `[vdso]` and the like): it is refused, not cached.
    MMN_ERR_UNCOVERED = -6,
    /// The range kept changing while it was being registered; try again.
    MMN_ERR_RETRY = -7,
    /// A limit was reached (watched regions, importers).
    MMN_ERR_LIMIT = -8,
    /// The uffd monitor thread failed; every registration was invalidated. Rebuild the monitor.
    MMN_ERR_MONITOR_FAILED = -9,
    /// A system call failed; `errno` is set and `mmn_last_error` names the call.
    MMN_ERR_SYS = -10,
    /// The registrar's `reg` callback returned non-zero (or its pin failed).
    MMN_ERR_REGISTER = -11,
    /// A panic inside the library was caught; the operation did not complete.
    MMN_ERR_PANIC = -12,
    /// Any other failure; `mmn_last_error` has the message.
    MMN_ERR_OTHER = -13,
}

/// [`Status::MMN_OK`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_OK: c_int = Status::MMN_OK as c_int;

/// [`Status::MMN_ERR_NULL`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_NULL: c_int = Status::MMN_ERR_NULL as c_int;

/// [`Status::MMN_ERR_INVALID`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_INVALID: c_int = Status::MMN_ERR_INVALID as c_int;

/// [`Status::MMN_ERR_NOT_MAPPED`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_NOT_MAPPED: c_int = Status::MMN_ERR_NOT_MAPPED as c_int;

/// [`Status::MMN_ERR_UFFD_REFUSED`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_UFFD_REFUSED: c_int = Status::MMN_ERR_UFFD_REFUSED as c_int;

/// [`Status::MMN_ERR_UFFD_BUSY`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_UFFD_BUSY: c_int = Status::MMN_ERR_UFFD_BUSY as c_int;

/// [`Status::MMN_ERR_UNCOVERED`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_UNCOVERED: c_int = Status::MMN_ERR_UNCOVERED as c_int;

/// [`Status::MMN_ERR_RETRY`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_RETRY: c_int = Status::MMN_ERR_RETRY as c_int;

/// [`Status::MMN_ERR_LIMIT`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_LIMIT: c_int = Status::MMN_ERR_LIMIT as c_int;

/// [`Status::MMN_ERR_MONITOR_FAILED`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_MONITOR_FAILED: c_int = Status::MMN_ERR_MONITOR_FAILED as c_int;

/// [`Status::MMN_ERR_SYS`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_SYS: c_int = Status::MMN_ERR_SYS as c_int;

/// [`Status::MMN_ERR_REGISTER`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_REGISTER: c_int = Status::MMN_ERR_REGISTER as c_int;

/// [`Status::MMN_ERR_PANIC`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_PANIC: c_int = Status::MMN_ERR_PANIC as c_int;

/// [`Status::MMN_ERR_OTHER`] as the `int` the functions return.
///
/// cbindgen:ignore
pub const MMN_ERR_OTHER: c_int = Status::MMN_ERR_OTHER as c_int;

/// A failure on its way to C: a status code and the message kept for `mmn_last_error`.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: c_int,
    pub(crate) message: String,
    pub(crate) errno: Option<i32>,
}

impl Fail {
    pub(crate) fn new(code: c_int, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            errno: None,
        }
    }

    pub(crate) fn null(what: &str) -> Self {
        Self::new(MMN_ERR_NULL, format!("{what} is NULL"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(MMN_ERR_INVALID, message)
    }
}

impl From<hostmm::Error> for Fail {
    fn from(e: hostmm::Error) -> Self {
        use hostmm::Error as E;
        let mut errno = None;
        let code = match &e {
            E::BadRange { .. } | E::Config(_) | E::Notifier(_) => MMN_ERR_INVALID,
            E::NotMapped { .. } => MMN_ERR_NOT_MAPPED,
            E::UffdPermission | E::UffdUnavailable | E::UffdFeatures { .. } => MMN_ERR_UFFD_REFUSED,
            E::UffdBusy { .. } => MMN_ERR_UFFD_BUSY,
            E::UncoveredMapping { .. } | E::UffdUnsupportedMapping { .. } => MMN_ERR_UNCOVERED,
            E::WatchUnverified { .. } | E::TooManyRetries { .. } => MMN_ERR_RETRY,
            E::TooManyRegions(_) => MMN_ERR_LIMIT,
            E::MonitorFailed(_) => MMN_ERR_MONITOR_FAILED,
            E::Sys { errno: e, .. } => {
                errno = Some(e.raw_os_error());
                MMN_ERR_SYS
            }
            E::Register { .. } => MMN_ERR_REGISTER,
            _ => MMN_ERR_OTHER,
        };
        Self {
            code,
            message: e.to_string(),
            errno,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn remember(fail: &Fail) {
    let text = CString::new(fail.message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = text);
    if let Some(e) = fail.errno {
        // SAFETY: `__errno_location` returns this thread's errno slot, valid for the thread's life.
        unsafe { *libc::__errno_location() = e };
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string());
    format!("internal error (panic caught at the C boundary): {what}")
}

/// Runs the body of an entry point: a failure or a panic becomes a status code, with its
/// message kept for [`mmn_last_error`].
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Fail>) -> c_int {
    let fail = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return MMN_OK,
        Ok(Err(f)) => f,
        Err(p) => Fail::new(MMN_ERR_PANIC, panic_message(&*p)),
    };
    remember(&fail);
    fail.code
}

/// Runs the body of an entry point that returns a value rather than a status (a pointer, a
/// flag): a panic yields `on_panic`.
pub(crate) fn guard_value<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(p) => {
            remember(&Fail::new(MMN_ERR_PANIC, panic_message(&*p)));
            on_panic
        }
    }
}

/// A static description of a status code (`"success"`, `"a required pointer was NULL"`, ...);
/// `"unknown status code"` for a value this library never returns. Never NULL.
///
/// Context: any thread, never blocks, may be called from a callback.
#[no_mangle]
pub extern "C" fn mmn_strerror(code: c_int) -> *const c_char {
    guard_value(c"internal error".as_ptr(), || {
        let s = match code {
            MMN_OK => c"success",
            MMN_ERR_NULL => c"a required pointer was NULL",
            MMN_ERR_INVALID => c"invalid argument",
            MMN_ERR_NOT_MAPPED => c"the range is not fully mapped",
            MMN_ERR_UFFD_REFUSED => c"userfaultfd is refused or unavailable in this process",
            MMN_ERR_UFFD_BUSY => c"another userfaultfd owns the mapping",
            MMN_ERR_UNCOVERED => c"the mapping cannot be monitored by this source",
            MMN_ERR_RETRY => c"the range kept changing; try again",
            MMN_ERR_LIMIT => c"a limit was reached",
            MMN_ERR_MONITOR_FAILED => c"the userfaultfd monitor failed",
            MMN_ERR_SYS => c"a system call failed (see errno)",
            MMN_ERR_REGISTER => c"the registrar failed to register the range",
            MMN_ERR_PANIC => c"internal error (a panic was caught)",
            MMN_ERR_OTHER => c"error (see mmn_last_error)",
            _ => c"unknown status code",
        };
        s.as_ptr()
    })
}

/// The detailed message of the last call that failed on the calling thread (empty if none
/// did). The string stays valid until the next failing call on this thread. Never NULL.
///
/// Context: any thread, never blocks, may be called from a callback.
#[no_mangle]
pub extern "C" fn mmn_last_error() -> *const c_char {
    guard_value(c"".as_ptr(), || LAST_ERROR.with(|l| l.borrow().as_ptr()))
}

/// A reference to the C value behind `p`, or a NULL failure naming `what`.
///
/// # Safety
/// `p` is NULL or points to a live `T` for `'a`.
pub(crate) unsafe fn deref<'a, T>(p: *const T, what: &str) -> Result<&'a T, Fail> {
    // SAFETY: the caller guarantees `p` is NULL or valid for 'a.
    unsafe { p.as_ref() }.ok_or_else(|| Fail::null(what))
}

/// Frees a handle made by `Box::into_raw` (the body of every `*_destroy`); NULL is ignored.
///
/// # Safety
/// `p` is NULL or came from `Box::into_raw` of a `T` and is freed once.
pub(crate) unsafe fn destroy<T>(p: *mut T) -> c_int {
    guard(|| {
        if !p.is_null() {
            // SAFETY: from Box::into_raw, freed once, by the caller's contract.
            drop(unsafe { Box::from_raw(p) });
        }
        Ok(())
    })
}

/// Writes `v` to the out-parameter `out`, or fails if it is NULL.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(out: *mut T, what: &str, v: T) -> Result<(), Fail> {
    if out.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-NULL and, by the caller's contract, valid for a write.
    unsafe { out.write(v) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_status_code_and_a_message() {
        let code = guard(|| panic!("boom"));
        assert_eq!(code, MMN_ERR_PANIC);
        // SAFETY: mmn_last_error returns a valid NUL-terminated string.
        let msg = unsafe { std::ffi::CStr::from_ptr(mmn_last_error()) };
        assert!(msg.to_str().unwrap().contains("boom"), "{msg:?}");
        assert_eq!(guard_value(7, || panic!("again")), 7);
    }

    #[test]
    fn every_code_has_its_own_description() {
        let codes = (MMN_ERR_OTHER..=MMN_OK).collect::<Vec<_>>();
        let mut seen = std::collections::HashSet::new();
        for c in codes {
            // SAFETY: mmn_strerror returns a static NUL-terminated string.
            let s = unsafe { std::ffi::CStr::from_ptr(mmn_strerror(c)) };
            assert_ne!(s.to_str().unwrap(), "unknown status code", "code {c}");
            assert!(seen.insert(s.to_owned()), "code {c} repeats {s:?}");
        }
        // SAFETY: as above.
        let s = unsafe { std::ffi::CStr::from_ptr(mmn_strerror(42)) };
        assert_eq!(s.to_str().unwrap(), "unknown status code");
    }
}
