//! Test seams: making userfaultfd fail for real, to exercise the fallback paths.

use crate::error::{Error, Result};

/// Installs a seccomp filter on **the calling thread only** (and threads it spawns later) that
/// makes `userfaultfd(2)` fail with `errno` (e.g. `libc::EPERM`, `libc::ENOSYS`), the way a
/// sandbox does. Irreversible for that thread: call it on a thread made for the purpose.
pub fn deny_userfaultfd_in_this_thread(errno: i32) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return Err(Error::Config(
        "deny_userfaultfd_in_this_thread: unsupported architecture",
    ));

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        const LD_W_ABS: u16 = 0x20;
        const JEQ_K: u16 = 0x15;
        const RET_K: u16 = 0x06;
        const RET_ALLOW: u32 = 0x7fff_0000;
        const RET_ERRNO: u32 = 0x0005_0000;
        let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
        let mut filter = [
            ins(LD_W_ABS, 0, 0, 4), // A = arch
            ins(JEQ_K, 0, 3, ARCH), // other arch: allow
            ins(LD_W_ABS, 0, 0, 0), // A = syscall number
            ins(JEQ_K, 0, 1, libc::SYS_userfaultfd as u32),
            ins(RET_K, 0, 0, RET_ERRNO | (errno as u32 & 0xffff)),
            ins(RET_K, 0, 0, RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: prctl with these options reads only its integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(Error::Io {
                what: "prctl(PR_SET_NO_NEW_PRIVS)",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `prog` points at a valid filter that outlives the call (the kernel copies it).
        if unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        } != 0
        {
            return Err(Error::Io {
                what: "prctl(PR_SET_SECCOMP)",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}
