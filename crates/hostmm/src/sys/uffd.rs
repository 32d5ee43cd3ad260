//! A thin, typed layer over the userfaultfd(2) system call and its ioctls.
//!
//! Raw syscalls through rustix and structure layouts from linux-raw-sys: no libclang, no C
//! toolchain, and no dependence on `/dev/userfaultfd` (whose permissions commonly deny
//! ordinary users). The descriptor is created with `UFFD_USER_MODE_ONLY`, which any user may
//! do on Linux ≥ 5.11 whatever `vm.unprivileged_userfaultfd` says; on older kernels, which
//! reject the flag with `EINVAL`, creation is retried without it.
//!
//! Only what an invalidation monitor needs is wrapped: the API handshake, register/unregister,
//! zero-page resolution (for the MISSING-mode fallback) and event reads.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use linux_raw_sys::general as k;
use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Opcode, Updater};
use rustix::mm::UserfaultfdFlags;

use crate::error::{Error, Result};
use crate::sys::va::VaRange;

const UFFDIO: u8 = 0xAA;
const OP_API: Opcode = opcode::read_write::<k::uffdio_api>(UFFDIO, 0x3F);
const OP_REGISTER: Opcode = opcode::read_write::<k::uffdio_register>(UFFDIO, 0x00);
const OP_UNREGISTER: Opcode = opcode::read::<k::uffdio_range>(UFFDIO, 0x01);
const OP_ZEROPAGE: Opcode = opcode::read_write::<k::uffdio_zeropage>(UFFDIO, 0x04);

/// `UFFD_FEATURE_*` bits, as the kernel defines them.
pub mod features {
    use linux_raw_sys::general as k;
    /// `UFFD_EVENT_REMAP` on moving mremap.
    pub const EVENT_REMAP: u64 = k::UFFD_FEATURE_EVENT_REMAP as u64;
    /// `UFFD_EVENT_REMOVE` on MADV_DONTNEED/FREE/REMOVE.
    pub const EVENT_REMOVE: u64 = k::UFFD_FEATURE_EVENT_REMOVE as u64;
    /// `UFFD_EVENT_UNMAP` on munmap, MAP_FIXED over a range, shrinking/moving mremap.
    pub const EVENT_UNMAP: u64 = k::UFFD_FEATURE_EVENT_UNMAP as u64;
    /// WP registration of shmem and hugetlbfs.
    pub const WP_HUGETLBFS_SHMEM: u64 = k::UFFD_FEATURE_WP_HUGETLBFS_SHMEM as u64;
    /// Asynchronous write-protect; also allows WP-only registration of any file mapping.
    pub const WP_ASYNC: u64 = k::UFFD_FEATURE_WP_ASYNC as u64;
    /// MISSING registration of shmem.
    pub const MISSING_SHMEM: u64 = k::UFFD_FEATURE_MISSING_SHMEM as u64;
    /// The event features every monitor needs.
    pub const REQUIRED: u64 = EVENT_UNMAP | EVENT_REMOVE | EVENT_REMAP;
    /// Features requested when the kernel offers them.
    pub const OPTIONAL: u64 = WP_HUGETLBFS_SHMEM | WP_ASYNC | MISSING_SHMEM;
}

/// How a range is registered.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RegisterMode {
    /// Write-protect mode without ever write-protecting: no fault is ever delivered, only the
    /// non-cooperative events. The default.
    WriteProtect,
    /// MISSING mode: first touches of absent pages fault to the monitor, which resolves them with
    /// a zero page. Only for kernels without WP support.
    Missing,
}

impl RegisterMode {
    fn bits(self) -> u64 {
        match self {
            RegisterMode::WriteProtect => k::UFFDIO_REGISTER_MODE_WP as u64,
            RegisterMode::Missing => k::UFFDIO_REGISTER_MODE_MISSING as u64,
        }
    }
}

/// One decoded `uffd_msg`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UffdEvent {
    /// munmap and friends: `[start, end)` is gone (delivered after the fact).
    Unmap {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// MADV_DONTNEED/FREE/REMOVE: pages of `[start, end)` are about to be zapped.
    Remove {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// A moving mremap: `[from, from + len)` now lives at `to`.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Old length.
        len: u64,
    },
    /// A page fault (MISSING or WP) at `address`.
    Pagefault {
        /// Faulting address.
        address: u64,
        /// `UFFD_PAGEFAULT_FLAG_*`.
        flags: u64,
    },
    /// fork: a new descriptor for the child (never requested by this crate).
    Fork,
    /// An event code this crate does not know.
    Unknown(u8),
}

/// Size of one kernel message.
pub const MSG_SIZE: usize = core::mem::size_of::<k::uffd_msg>();

/// An owned userfaultfd descriptor after a successful API handshake.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    features: u64,
}

/// What creating a descriptor may be forced to return, for tests of the fallback paths.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum CreateSeam {
    /// Call the kernel.
    #[default]
    Real,
    /// Pretend the kernel answered with this errno.
    Fail(Errno),
}

fn create_fd(seam: CreateSeam) -> Result<OwnedFd> {
    if let CreateSeam::Fail(e) = seam {
        return Err(map_create_errno(e));
    }
    let base = UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK;
    let user_mode_only = UserfaultfdFlags::from_bits_retain(k::UFFD_USER_MODE_ONLY);
    // SAFETY: userfaultfd(2) has no memory-safety preconditions; it returns a new descriptor
    // that we own.
    match unsafe { rustix::mm::userfaultfd(base | user_mode_only) } {
        Ok(fd) => Ok(fd),
        // Kernels before 5.11 do not know UFFD_USER_MODE_ONLY.
        // SAFETY: as above.
        Err(Errno::INVAL) => unsafe { rustix::mm::userfaultfd(base) }.map_err(map_create_errno),
        Err(e) => Err(map_create_errno(e)),
    }
}

fn map_create_errno(e: Errno) -> Error {
    match e {
        Errno::PERM | Errno::ACCESS => Error::UffdPermission,
        Errno::NOSYS | Errno::OPNOTSUPP => Error::UffdUnavailable,
        errno => Error::Sys {
            call: "userfaultfd",
            errno,
        },
    }
}

fn api(fd: &OwnedFd, requested: u64) -> Result<k::uffdio_api> {
    let mut api = k::uffdio_api {
        api: k::UFFD_API as u64,
        features: requested,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API takes a pointer to a `struct uffdio_api`, which `api` is.
    unsafe { ioctl(fd, Updater::<OP_API, k::uffdio_api>::new(&mut api)) }.map_err(|errno| {
        match errno {
            Errno::PERM => Error::UffdPermission,
            errno => Error::Sys {
                call: "UFFDIO_API",
                errno,
            },
        }
    })?;
    Ok(api)
}

impl Userfaultfd {
    /// The features this kernel offers (a throw-away handshake with `features = 0`).
    pub fn available_features(seam: CreateSeam) -> Result<u64> {
        let fd = create_fd(seam)?;
        Ok(api(&fd, 0)?.features)
    }

    /// Creates a non-blocking, close-on-exec descriptor with the [`features::REQUIRED`] events
    /// plus whatever of [`features::OPTIONAL`] the kernel offers.
    pub fn new_monitor(seam: CreateSeam) -> Result<Self> {
        let available = Self::available_features(seam)?;
        let missing = features::REQUIRED & !available;
        if missing != 0 {
            return Err(Error::UffdFeatures { missing, available });
        }
        let requested = features::REQUIRED | (features::OPTIONAL & available);
        let fd = create_fd(seam)?;
        let got = api(&fd, requested)?;
        Ok(Self {
            fd,
            features: got.features,
        })
    }

    /// The features granted by the handshake.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// `UFFDIO_REGISTER` of `range` in `mode`.
    pub fn register(&self, range: VaRange, mode: RegisterMode) -> Result<()> {
        let mut reg = k::uffdio_register {
            range: k::uffdio_range {
                start: range.start(),
                len: range.len(),
            },
            mode: mode.bits(),
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a pointer to a `struct uffdio_register`, which `reg` is.
        unsafe {
            ioctl(
                &self.fd,
                Updater::<OP_REGISTER, k::uffdio_register>::new(&mut reg),
            )
        }
        .map_err(|errno| register_error(range, errno))
    }

    /// `UFFDIO_UNREGISTER` of `range`.
    pub fn unregister(&self, range: VaRange) -> Result<()> {
        let mut r = k::uffdio_range {
            start: range.start(),
            len: range.len(),
        };
        // SAFETY: UFFDIO_UNREGISTER takes a pointer to a `struct uffdio_range`, which `r` is; the
        // kernel only reads it.
        unsafe {
            ioctl(
                &self.fd,
                Updater::<OP_UNREGISTER, k::uffdio_range>::new(&mut r),
            )
        }
        .map_err(|errno| register_error(range, errno))
    }

    /// `UFFDIO_ZEROPAGE` of the page at `page`: resolves a MISSING fault. `EEXIST` (the page
    /// appeared meanwhile) and `EAGAIN` (the mapping is changing; the faulting thread retries)
    /// count as success.
    pub fn zeropage(&self, page: u64, len: u64) -> Result<()> {
        let mut z = k::uffdio_zeropage {
            range: k::uffdio_range { start: page, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE takes a pointer to a `struct uffdio_zeropage`, which `z` is.
        match unsafe {
            ioctl(
                &self.fd,
                Updater::<OP_ZEROPAGE, k::uffdio_zeropage>::new(&mut z),
            )
        } {
            Ok(()) | Err(Errno::EXIST) | Err(Errno::AGAIN) | Err(Errno::NOENT) => Ok(()),
            Err(errno) => Err(Error::Sys {
                call: "UFFDIO_ZEROPAGE",
                errno,
            }),
        }
    }

    /// Reads as many messages as fit into `buf`; `Ok(0)` when none is queued (non-blocking).
    /// Reading is what releases the threads the events were blocking.
    pub fn read_events(&self, buf: &mut [UffdEvent]) -> Result<usize> {
        const BATCH: usize = 16;
        let mut raw = [0u8; BATCH * MSG_SIZE];
        let want = buf.len().min(BATCH) * MSG_SIZE;
        loop {
            match rustix::io::read(&self.fd, &mut raw[..want]) {
                Ok(n) => {
                    let count = n / MSG_SIZE;
                    for (i, slot) in buf.iter_mut().take(count).enumerate() {
                        *slot = decode(&raw[i * MSG_SIZE..(i + 1) * MSG_SIZE]);
                    }
                    return Ok(count);
                }
                Err(Errno::AGAIN) => return Ok(0),
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    return Err(Error::Sys {
                        call: "read(userfaultfd)",
                        errno,
                    })
                }
            }
        }
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn register_error(range: VaRange, errno: Errno) -> Error {
    let (start, end) = (range.start(), range.end());
    match errno {
        Errno::BUSY => Error::UffdBusy { start, end },
        Errno::NOMEM => Error::NotMapped { start, end },
        errno => Error::UffdUnsupportedMapping { start, end, errno },
    }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(w)
}

/// Decodes one 32-byte `uffd_msg` (`event` at byte 0, the argument union from byte 8).
pub fn decode(b: &[u8]) -> UffdEvent {
    let arg = 8;
    match u32::from(b[0]) {
        k::UFFD_EVENT_UNMAP => UffdEvent::Unmap {
            start: u64_at(b, arg),
            end: u64_at(b, arg + 8),
        },
        k::UFFD_EVENT_REMOVE => UffdEvent::Remove {
            start: u64_at(b, arg),
            end: u64_at(b, arg + 8),
        },
        k::UFFD_EVENT_REMAP => UffdEvent::Remap {
            from: u64_at(b, arg),
            to: u64_at(b, arg + 8),
            len: u64_at(b, arg + 16),
        },
        k::UFFD_EVENT_PAGEFAULT => UffdEvent::Pagefault {
            flags: u64_at(b, arg),
            address: u64_at(b, arg + 8),
        },
        k::UFFD_EVENT_FORK => UffdEvent::Fork,
        other => UffdEvent::Unknown(other as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(event: u32, a: u64, b: u64, c: u64) -> [u8; MSG_SIZE] {
        let mut m = [0u8; MSG_SIZE];
        m[0] = event as u8;
        m[8..16].copy_from_slice(&a.to_ne_bytes());
        m[16..24].copy_from_slice(&b.to_ne_bytes());
        m[24..32].copy_from_slice(&c.to_ne_bytes());
        m
    }

    #[test]
    fn message_layout_matches_the_kernel() {
        assert_eq!(MSG_SIZE, 32);
        assert_eq!(
            decode(&msg(k::UFFD_EVENT_UNMAP, 0x1000, 0x3000, 0)),
            UffdEvent::Unmap {
                start: 0x1000,
                end: 0x3000
            }
        );
        assert_eq!(
            decode(&msg(k::UFFD_EVENT_REMOVE, 0x1000, 0x2000, 0)),
            UffdEvent::Remove {
                start: 0x1000,
                end: 0x2000
            }
        );
        assert_eq!(
            decode(&msg(k::UFFD_EVENT_REMAP, 0x1000, 0x9000, 0x2000)),
            UffdEvent::Remap {
                from: 0x1000,
                to: 0x9000,
                len: 0x2000
            }
        );
        assert_eq!(
            decode(&msg(k::UFFD_EVENT_PAGEFAULT, 2, 0x5000, 0)),
            UffdEvent::Pagefault {
                flags: 2,
                address: 0x5000
            }
        );
        assert_eq!(decode(&msg(0x7f, 0, 0, 0)), UffdEvent::Unknown(0x7f));
    }

    #[test]
    fn opcodes_match_linux_raw_sys() {
        use linux_raw_sys::ioctl as io;
        assert_eq!(OP_API as u64, io::UFFDIO_API as u64);
        assert_eq!(OP_REGISTER as u64, io::UFFDIO_REGISTER as u64);
        assert_eq!(OP_UNREGISTER as u64, io::UFFDIO_UNREGISTER as u64);
        assert_eq!(OP_ZEROPAGE as u64, io::UFFDIO_ZEROPAGE as u64);
    }

    #[test]
    fn create_errors_are_typed() {
        assert!(matches!(
            Userfaultfd::new_monitor(CreateSeam::Fail(Errno::PERM)),
            Err(Error::UffdPermission)
        ));
        assert!(matches!(
            Userfaultfd::new_monitor(CreateSeam::Fail(Errno::NOSYS)),
            Err(Error::UffdUnavailable)
        ));
    }
}
