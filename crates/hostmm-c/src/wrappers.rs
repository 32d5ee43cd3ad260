//! The bracketed system calls: each opens an invalidation of its range, makes the call and
//! closes it, so every cache and subscription has dropped the range before the kernel
//! changes it, and none re-registers it before the call returns.

use std::ffi::{c_int, c_void};

use rustix::mm::{Advice, MprotectFlags, MremapFlags};

use crate::monitor::Monitor;
use crate::status::{deref, guard, put, Fail};

fn advice(raw: c_int) -> Result<Advice, Fail> {
    Ok(match raw {
        libc::MADV_NORMAL => Advice::Normal,
        libc::MADV_RANDOM => Advice::Random,
        libc::MADV_SEQUENTIAL => Advice::Sequential,
        libc::MADV_WILLNEED => Advice::WillNeed,
        libc::MADV_DONTNEED => Advice::LinuxDontNeed,
        libc::MADV_FREE => Advice::LinuxFree,
        libc::MADV_REMOVE => Advice::LinuxRemove,
        libc::MADV_DONTFORK => Advice::LinuxDontFork,
        libc::MADV_DOFORK => Advice::LinuxDoFork,
        libc::MADV_MERGEABLE => Advice::LinuxMergeable,
        libc::MADV_UNMERGEABLE => Advice::LinuxUnmergeable,
        libc::MADV_HUGEPAGE => Advice::LinuxHugepage,
        libc::MADV_NOHUGEPAGE => Advice::LinuxNoHugepage,
        libc::MADV_DONTDUMP => Advice::LinuxDontDump,
        libc::MADV_DODUMP => Advice::LinuxDoDump,
        other => {
            return Err(Fail::invalid(format!(
                "madvise advice {other} is not supported by mmn_madvise"
            )))
        }
    })
}

/// `munmap(addr, len)` inside an invalidation of the range.
///
/// Returns `MMN_ERR_INVALID` for an empty or unaligned range, `MMN_ERR_SYS` (errno set) when
/// the call fails.
///
/// Context: may block (waits for invalidation callbacks of the range); any thread; never from
/// a callback of this library.
///
/// # Safety
/// `m` is NULL or a live monitor handle; as for `munmap(2)`, nothing may use the range after.
#[no_mangle]
pub unsafe extern "C" fn mmn_munmap(m: *const Monitor, addr: *mut c_void, len: usize) -> c_int {
    guard(|| {
        // SAFETY: `m` is NULL or live.
        let m = unsafe { deref(m, "monitor") }?;
        // SAFETY: the caller upholds munmap's contract for the range.
        unsafe { m.host.munmap(addr as u64, len as u64) }?;
        Ok(())
    })
}

/// `mremap(old, old_len, new_len, flags[, new_addr])` inside an invalidation of the old range
/// and, with `MREMAP_FIXED` in `flags`, of the destination it replaces. `flags` takes
/// `MREMAP_MAYMOVE`, `MREMAP_FIXED` and `MREMAP_DONTUNMAP`; `new_addr` is read only with
/// `MREMAP_FIXED`. The new address is stored in `*out` (NULL `out`: `MMN_ERR_NULL`).
///
/// Context: as `mmn_munmap`.
///
/// # Safety
/// `m` is NULL or a live monitor handle; `out` is NULL or valid for a write; as for
/// `mremap(2)`, nothing may use the old range (or a replaced destination) after.
#[no_mangle]
pub unsafe extern "C" fn mmn_mremap(
    m: *const Monitor,
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
    out: *mut *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: `m` is NULL or live.
        let m = unsafe { deref(m, "monitor") }?;
        if out.is_null() {
            return Err(Fail::null("out"));
        }
        const KNOWN: c_int = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP;
        if flags & !KNOWN != 0 {
            return Err(Fail::invalid(format!("unknown mremap flags {flags:#x}")));
        }
        let fixed = flags & libc::MREMAP_FIXED != 0;
        let f = MremapFlags::from_bits_retain((flags & !libc::MREMAP_FIXED) as u32);
        let to = fixed.then_some(new_addr as u64);
        // SAFETY: the caller upholds mremap's contract for both ranges.
        let new = unsafe {
            m.host
                .mremap(old as u64, old_len as u64, new_len as u64, f, to)
        }?;
        // SAFETY: `out` is non-NULL and valid for a write.
        unsafe { put(out, "out", new as *mut c_void) }
    })
}

/// `madvise(addr, len, advice)`; inside an invalidation of the range when the advice drops
/// pages (`MADV_DONTNEED`, `MADV_FREE`; `MADV_REMOVE` invalidates every mapping of the file
/// range). Supported advice: NORMAL, RANDOM, SEQUENTIAL, WILLNEED, DONTNEED, FREE, REMOVE,
/// DONTFORK, DOFORK, MERGEABLE, UNMERGEABLE, HUGEPAGE, NOHUGEPAGE, DONTDUMP, DODUMP; any other
/// is `MMN_ERR_INVALID`.
///
/// Context: as `mmn_munmap`.
///
/// # Safety
/// `m` is NULL or a live monitor handle; as for `madvise(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmn_madvise(
    m: *const Monitor,
    addr: *mut c_void,
    len: usize,
    advice_: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: `m` is NULL or live.
        let m = unsafe { deref(m, "monitor") }?;
        let a = advice(advice_)?;
        // SAFETY: the caller upholds madvise's contract for the range.
        unsafe { m.host.madvise(addr as u64, len as u64, a) }?;
        Ok(())
    })
}

/// `mprotect(addr, len, prot)` inside a protection-change invalidation (caches keep pinned
/// registrations through it unless configured otherwise; subscriptions see it as
/// `MMN_EVENT_PROTECTION_VMA`). Unknown `PROT_*` bits: `MMN_ERR_INVALID`.
///
/// Context: as `mmn_munmap`.
///
/// # Safety
/// `m` is NULL or a live monitor handle; as for `mprotect(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmn_mprotect(
    m: *const Monitor,
    addr: *mut c_void,
    len: usize,
    prot: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: `m` is NULL or live.
        let m = unsafe { deref(m, "monitor") }?;
        const KNOWN: c_int = libc::PROT_READ
            | libc::PROT_WRITE
            | libc::PROT_EXEC
            | libc::PROT_GROWSUP
            | libc::PROT_GROWSDOWN;
        if prot & !KNOWN != 0 {
            return Err(Fail::invalid(format!("unknown protection bits {prot:#x}")));
        }
        let p = MprotectFlags::from_bits_retain(prot as u32);
        // SAFETY: the caller upholds mprotect's contract for the range.
        unsafe { m.host.mprotect(addr as u64, len as u64, p) }?;
        Ok(())
    })
}
