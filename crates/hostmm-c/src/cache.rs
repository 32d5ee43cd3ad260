//! A registration cache over a registrar given as C callbacks.
//!
//! The registrar's `dereg` runs only when the registration is dead in the cache (invalidated,
//! evicted or the cache destroyed) **and** every `mmn_reg` handed out for it has been put: a
//! registration in use by the caller is never deregistered under it.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hostmm::{
    CacheConfig as HostConfig, Handle, MlockRegistrar, RegCache, Registrar as HostRegistrar,
    RegistrarError, VaRange,
};

use crate::monitor::Monitor;
use crate::status::{deref, guard, put, Fail};

/// Registers `[start, start + len)` (page-aligned) with the device and stores the device's
/// handle (a key, a pointer) in `*handle`; returns 0 on success, anything else to refuse (the
/// lookup then fails with `MMN_ERR_REGISTER`).
///
/// Context: called on the thread of `mmn_cache_get`, with no lock of this library held; may
/// block; may run concurrently on several threads; must not call `mmn_cache_*` on the same
/// cache.
pub type RegisterFn = Option<
    unsafe extern "C" fn(user: *mut c_void, start: u64, len: u64, handle: *mut usize) -> c_int,
>;

/// Releases a registration made by `reg`. Must not fail.
///
/// Context: called on the thread of a cache call (`mmn_cache_get`, `mmn_cache_flush`,
/// `mmn_cache_put`, `mmn_cache_destroy`) with no lock of this library held, never on the
/// invalidation path; may block; must not call `mmn_cache_*` on the same cache.
pub type DeregisterFn =
    Option<unsafe extern "C" fn(user: *mut c_void, start: u64, len: u64, handle: usize)>;

/// The registrar a cache calls (C callbacks with a user context).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Registrar {
    /// Makes a registration. Required.
    pub reg: RegisterFn,
    /// Releases one. Required.
    pub dereg: DeregisterFn,
    /// Passed to both callbacks as is.
    pub user: *mut c_void,
    /// Non-zero: pin the range (`mlock` + `MADV_DONTFORK`) before `reg` and release it after
    /// `dereg`. Required for registrations that record the pages (frames, a device pin): the
    /// pin is what keeps `MADV_DONTNEED` and fork + write from moving registered pages with
    /// no invalidation.
    pub pin: c_int,
}

/// Limits of a cache; `mmn_cache_config_default` fills the defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries kept (at least 1); least recently used ones are evicted beyond it.
    pub max_entries: u64,
    /// Most registered bytes kept (at least one page).
    pub max_bytes: u64,
    /// Collisions with concurrent invalidations a lookup tolerates before `MMN_ERR_RETRY`.
    pub max_retries: u32,
    /// Non-zero: drop registrations on protection changes too.
    pub invalidate_on_protection: c_int,
}

impl From<&HostConfig> for CacheConfig {
    fn from(c: &HostConfig) -> Self {
        Self {
            max_entries: c.max_entries as u64,
            max_bytes: c.max_bytes,
            max_retries: c.max_retries,
            invalidate_on_protection: c_int::from(c.invalidate_on_protection),
        }
    }
}

/// Counters of a cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to register.
    pub misses: u64,
    /// Entries invalidated by an unmap, remap or import.
    pub invalidations: u64,
    /// Lookups that collided with an invalidation and registered again.
    pub retries: u64,
    /// Entries evicted by the limits.
    pub evictions: u64,
    /// Valid entries now.
    pub entries: u64,
    /// Bytes of valid entries now.
    pub bytes: u64,
    /// Calls of the registrar's `reg` that succeeded.
    pub registrar_registered: u64,
    /// Calls of the registrar's `dereg`. Equal to `registrar_registered` once the cache is
    /// destroyed and every `mmn_reg` put: anything else is a leak.
    pub registrar_deregistered: u64,
}

struct Callbacks {
    reg: unsafe extern "C" fn(*mut c_void, u64, u64, *mut usize) -> c_int,
    dereg: unsafe extern "C" fn(*mut c_void, u64, u64, usize),
    user: *mut c_void,
    pin: Option<MlockRegistrar>,
    registered: AtomicU64,
    deregistered: AtomicU64,
}

// SAFETY: the callbacks and `user` are the C caller's; the header requires them to be callable
// from any thread, concurrently (documented on `mmn_cache_create`).
unsafe impl Send for Callbacks {}
// SAFETY: as above; `Callbacks` has no interior state but atomics and the Sync pin registrar.
unsafe impl Sync for Callbacks {}

/// One registration made by the C registrar; released (C `dereg`, then the pin) when the
/// cache's entry and every `mmn_reg` for it are gone.
struct CReg {
    cb: Arc<Callbacks>,
    range: VaRange,
    handle: usize,
}

impl Drop for CReg {
    fn drop(&mut self) {
        // SAFETY: `dereg` is the caller's callback, given a registration its `reg` made.
        unsafe {
            (self.cb.dereg)(
                self.cb.user,
                self.range.start(),
                self.range.len(),
                self.handle,
            )
        };
        self.cb.deregistered.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = &self.cb.pin {
            p.deregister(self.range, &());
        }
    }
}

struct CRegistrar(Arc<Callbacks>);

impl HostRegistrar for CRegistrar {
    type Registration = CReg;

    /// The C caller says whether its registrations record pages by asking for the pin
    /// (`mmn_registrar::pin`); without it the cache does not check.
    fn needs_pin(&self) -> bool {
        self.0.pin.is_some()
    }

    fn register(&self, range: VaRange) -> Result<CReg, RegistrarError> {
        let cb = &self.0;
        if let Some(p) = &cb.pin {
            p.register(range)?;
        }
        let mut handle = 0usize;
        // SAFETY: the caller's callback, given a page-aligned range and a valid out-pointer.
        let rc = unsafe { (cb.reg)(cb.user, range.start(), range.len(), &mut handle) };
        if rc != 0 {
            if let Some(p) = &cb.pin {
                p.deregister(range, &());
            }
            return Err(RegistrarError::Other(format!(
                "the registrar's reg callback returned {rc}"
            )));
        }
        cb.registered.fetch_add(1, Ordering::Relaxed);
        Ok(CReg {
            cb: cb.clone(),
            range,
            handle,
        })
    }

    /// Nothing here: the C `dereg` runs when the last reference to the registration goes (see
    /// the module documentation), which is never on the invalidation path either.
    fn deregister(&self, _range: VaRange, _registration: &CReg) {}
}

/// A registration cache (opaque). Create with `mmn_cache_create`.
pub struct Cache {
    inner: RegCache<CRegistrar>,
    cb: Arc<Callbacks>,
}

/// A registration handed out by `mmn_cache_get` (opaque); give it back with `mmn_cache_put`.
pub struct Reg {
    handle: Handle<CRegistrar>,
}

/// Fills `*out` with the default limits (1024 entries, 4 GiB, 10 000 retries, protection
/// changes ignored).
///
/// Context: any thread, never blocks, may be called from a callback.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn mmn_cache_config_default(out: *mut CacheConfig) -> c_int {
    // SAFETY: `out` is NULL or valid for a write.
    guard(|| unsafe { put(out, "out", CacheConfig::from(&HostConfig::default())) })
}

/// Creates a cache over `registrar`, invalidated by `m`'s source (under uffd every cached
/// range is watched), and stores it in `*out`. `config` may be NULL for the defaults.
///
/// The registrar's callbacks may be called from any thread, concurrently, and must be safe so
/// (with `user`) until `mmn_cache_destroy` returned and every `mmn_reg` was put. NULL
/// callbacks, zero `max_entries` or `max_bytes` below a page: `MMN_ERR_NULL` /
/// `MMN_ERR_INVALID`.
///
/// Context: any thread; never blocks; not from a callback.
///
/// # Safety
/// `m` is NULL or a live monitor handle; `registrar` and `config` are NULL or valid for reads;
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn mmn_cache_create(
    m: *const Monitor,
    registrar: *const Registrar,
    config: *const CacheConfig,
    out: *mut *mut Cache,
) -> c_int {
    guard(|| {
        // SAFETY: each is NULL or valid, by the caller's contract.
        let (m, r) = unsafe { (deref(m, "monitor")?, deref(registrar, "registrar")?) };
        // SAFETY: as above.
        let c = unsafe { config.as_ref() }
            .copied()
            .unwrap_or_else(|| CacheConfig::from(&HostConfig::default()));
        if out.is_null() {
            return Err(Fail::null("out"));
        }
        let (Some(reg), Some(dereg)) = (r.reg, r.dereg) else {
            return Err(Fail::null("registrar.reg or registrar.dereg"));
        };
        let cb = Arc::new(Callbacks {
            reg,
            dereg,
            user: r.user,
            pin: (r.pin != 0).then(MlockRegistrar::new),
            registered: AtomicU64::new(0),
            deregistered: AtomicU64::new(0),
        });
        let config = HostConfig {
            max_entries: usize::try_from(c.max_entries)
                .map_err(|_| Fail::invalid("max_entries does not fit this platform"))?,
            max_bytes: c.max_bytes,
            max_retries: c.max_retries,
            invalidate_on_protection: c.invalidate_on_protection != 0,
            monitor: m.uffd(),
        };
        let inner = RegCache::new(&m.host, CRegistrar(cb.clone()), config)?;
        // SAFETY: `out` is non-NULL and valid for a write.
        unsafe { put(out, "out", Box::into_raw(Box::new(Cache { inner, cb }))) }
    })
}

/// Destroys a cache: every registration no `mmn_reg` holds is deregistered now; the others
/// when they are put. NULL is ignored.
///
/// Context: may block (waits for invalidation callbacks in flight, calls `dereg`); not while
/// another thread uses the cache; never from a callback.
///
/// # Safety
/// `c` is NULL or a live cache handle; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn mmn_cache_destroy(c: *mut Cache) -> c_int {
    // SAFETY: `c` is NULL or a live handle from its create function, by the contract.
    unsafe { crate::status::destroy(c) }
}

/// The registration covering `[addr, addr + len)` (widened to whole pages): from the cache,
/// or made now through the registrar. Stores a new `mmn_reg` in `*reg` and, if `handle` is
/// not NULL, the registrar's handle in `*handle`. Never returns a registration whose range
/// was invalidated before this call began.
///
/// Errors: `MMN_ERR_INVALID` (empty or overflowing range), `MMN_ERR_REGISTER` (the registrar
/// or the pin failed, e.g. the range is not mapped), `MMN_ERR_RETRY`, and under uffd
/// `MMN_ERR_NOT_MAPPED`, `MMN_ERR_UNCOVERED`, `MMN_ERR_UFFD_BUSY`, `MMN_ERR_LIMIT`.
///
/// Context: may block (calls `reg`, waits for a pending invalidation); thread-safe; never
/// from a callback of this library.
///
/// # Safety
/// `c` is NULL or a live cache handle; `reg` and `handle` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn mmn_cache_get(
    c: *const Cache,
    addr: *const c_void,
    len: usize,
    reg: *mut *mut Reg,
    handle: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: `c` is NULL or live.
        let c = unsafe { deref(c, "cache") }?;
        if reg.is_null() {
            return Err(Fail::null("reg"));
        }
        let h = c.inner.get(addr as u64, len as u64)?;
        if !handle.is_null() {
            // SAFETY: non-NULL and valid for a write.
            unsafe { handle.write(h.registration().handle) };
        }
        // SAFETY: `reg` is non-NULL and valid for a write.
        unsafe { put(reg, "reg", Box::into_raw(Box::new(Reg { handle: h }))) }
    })
}

/// Gives back a registration from `mmn_cache_get`. If the cache no longer holds it
/// (invalidated, evicted, destroyed) and this was its last `mmn_reg`, the registrar's `dereg`
/// runs now, on this thread. NULL is ignored.
///
/// Context: may block (may call `dereg`); any thread; never from a callback of this library.
///
/// # Safety
/// `reg` is NULL or a live `mmn_reg`; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn mmn_cache_put(reg: *mut Reg) -> c_int {
    // SAFETY: `reg` is NULL or a live handle from its create function, by the contract.
    unsafe { crate::status::destroy(reg) }
}

/// The registrar's handle of `reg`, its page-aligned range, and whether it is still valid
/// (1: no invalidation or eviction has hit it; 0: it has, do not start new device work on it).
/// Any out-pointer may be NULL.
///
/// Context: any thread, never blocks, may be called from a callback.
///
/// # Safety
/// `reg` is NULL or a live `mmn_reg`; each out-pointer is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn mmn_reg_info(
    reg: *const Reg,
    handle: *mut usize,
    start: *mut u64,
    len: *mut u64,
    valid: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: `reg` is NULL or live.
        let r = &unsafe { deref(reg, "reg") }?.handle;
        let range = r.range();
        // SAFETY: each pointer is NULL or valid for a write.
        unsafe {
            if let Some(h) = handle.as_mut() {
                *h = r.registration().handle;
            }
            if let Some(s) = start.as_mut() {
                *s = range.start();
            }
            if let Some(l) = len.as_mut() {
                *l = range.len();
            }
            if let Some(v) = valid.as_mut() {
                *v = c_int::from(r.is_valid());
            }
        }
        Ok(())
    })
}

/// Deregisters now every invalidated or evicted registration no `mmn_reg` holds (lookups do
/// it too, lazily).
///
/// Context: may block (calls `dereg`); thread-safe; never from a callback.
///
/// # Safety
/// `c` is NULL or a live cache handle.
#[no_mangle]
pub unsafe extern "C" fn mmn_cache_flush(c: *const Cache) -> c_int {
    guard(|| {
        // SAFETY: `c` is NULL or live.
        unsafe { deref(c, "cache") }?.inner.flush();
        Ok(())
    })
}

/// Copies the counters into `*out`.
///
/// Context: any thread; takes the cache lock briefly; not from a callback.
///
/// # Safety
/// `c` is NULL or a live cache handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn mmn_cache_stats(c: *const Cache, out: *mut CacheStats) -> c_int {
    guard(|| {
        // SAFETY: `c` is NULL or live.
        let c = unsafe { deref(c, "cache") }?;
        let s = c.inner.stats();
        let stats = CacheStats {
            hits: s.hits,
            misses: s.misses,
            invalidations: s.invalidations,
            retries: s.retries,
            evictions: s.evictions,
            entries: s.entries as u64,
            bytes: s.bytes,
            registrar_registered: c.cb.registered.load(Ordering::Relaxed),
            registrar_deregistered: c.cb.deregistered.load(Ordering::Relaxed),
        };
        // SAFETY: `out` is NULL or valid for a write.
        unsafe { put(out, "out", stats) }
    })
}
