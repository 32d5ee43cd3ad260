//! The C API called as C calls it: every NULL and bad-argument path returns its code, and the
//! functions do what the header says (invalidation by each source, deferred deregistration,
//! subscriptions, the fallback reason).

use std::ffi::{c_int, c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use mmnotify::*;

fn page() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

fn last_error() -> String {
    // SAFETY: mmn_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(mmn_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Anonymous private memory, unmapped on drop unless already gone.
struct Mem(*mut c_void, usize);

impl Mem {
    fn new(len: usize) -> Mem {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Mem(p, len)
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: our own mapping (or already unmapped: munmap of a hole is harmless here,
        // nothing else is mapped at a freshly unmapped test range).
        unsafe { libc::munmap(self.0, self.1) };
    }
}

/// A registrar that counts, and records each registration's range in its handle.
#[derive(Default)]
struct Counting {
    registered: AtomicU64,
    deregistered: AtomicU64,
    refuse: bool,
    live: Mutex<Vec<usize>>,
}

unsafe extern "C" fn reg_cb(user: *mut c_void, start: u64, _len: u64, handle: *mut usize) -> c_int {
    // SAFETY: `user` is the &Counting given at creation, alive for the cache's life.
    let c = unsafe { &*(user as *const Counting) };
    if c.refuse {
        return -1;
    }
    let id = c.registered.fetch_add(1, Ordering::SeqCst) as usize + 1;
    c.live.lock().unwrap().push(id);
    // SAFETY: the library passes a valid out-pointer.
    unsafe { *handle = id ^ start as usize };
    0
}

unsafe extern "C" fn dereg_cb(user: *mut c_void, start: u64, _len: u64, handle: usize) {
    // SAFETY: as in reg_cb.
    let c = unsafe { &*(user as *const Counting) };
    let id = handle ^ start as usize;
    let mut live = c.live.lock().unwrap();
    let i = live
        .iter()
        .position(|&x| x == id)
        .expect("dereg of a handle reg made");
    live.swap_remove(i);
    c.deregistered.fetch_add(1, Ordering::SeqCst);
}

fn registrar(c: &Counting, pin: bool) -> Registrar {
    Registrar {
        reg: Some(reg_cb),
        dereg: Some(dereg_cb),
        user: c as *const Counting as *mut c_void,
        pin: c_int::from(pin),
    }
}

fn monitor(source: c_int) -> *mut Monitor {
    let mut m = null_mut();
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { mmn_monitor_create(source, &mut m) },
        MMN_OK,
        "{}",
        last_error()
    );
    m
}

fn uffd_or_skip() -> Option<*mut Monitor> {
    let mut m = null_mut();
    // SAFETY: valid out-pointer.
    match unsafe { mmn_monitor_create(MMN_SOURCE_UFFD, &mut m) } {
        MMN_OK => Some(m),
        MMN_ERR_UFFD_REFUSED => {
            eprintln!("skipped: userfaultfd refused here: {}", last_error());
            None
        }
        rc => panic!("mmn_monitor_create(UFFD) = {rc}: {}", last_error()),
    }
}

#[test]
fn every_null_pointer_is_refused_with_its_code() {
    let m = monitor(MMN_SOURCE_BRACKETED);
    let c = Counting::default();
    let r = registrar(&c, false);
    let mem = Mem::new(page());
    // SAFETY: every pointer passed is NULL or valid; NULL is what is being tested.
    unsafe {
        assert_eq!(
            mmn_monitor_create(MMN_SOURCE_BRACKETED, null_mut()),
            MMN_ERR_NULL
        );
        assert!(last_error().contains("out is NULL"), "{}", last_error());
        assert_eq!(mmn_monitor_source(null()), MMN_ERR_NULL);
        assert!(mmn_monitor_fallback_reason(null()).is_null());
        assert_eq!(mmn_monitor_stats(null(), null_mut()), MMN_ERR_NULL);
        assert_eq!(mmn_monitor_stats(m, null_mut()), MMN_ERR_NULL);
        assert_eq!(mmn_monitor_pending(null()), MMN_ERR_NULL);
        assert_eq!(mmn_monitor_sync(null()), MMN_ERR_NULL);
        assert_eq!(mmn_munmap(null(), mem.0, page()), MMN_ERR_NULL);
        let mut out = null_mut();
        assert_eq!(
            mmn_mremap(null(), mem.0, page(), page(), 0, null_mut(), &mut out),
            MMN_ERR_NULL
        );
        assert_eq!(
            mmn_mremap(m, mem.0, page(), page(), 0, null_mut(), null_mut()),
            MMN_ERR_NULL
        );
        assert_eq!(
            mmn_madvise(null(), mem.0, page(), libc::MADV_DONTNEED),
            MMN_ERR_NULL
        );
        assert_eq!(
            mmn_mprotect(null(), mem.0, page(), libc::PROT_READ),
            MMN_ERR_NULL
        );
        assert_eq!(mmn_importer_create(null(), null_mut()), MMN_ERR_NULL);
        assert_eq!(mmn_importer_create(m, null_mut()), MMN_ERR_NULL);
        assert_eq!(
            mmn_import(null(), mem.0, page(), MMN_EVENT_UNMAP),
            MMN_ERR_NULL
        );
        assert_eq!(mmn_cache_config_default(null_mut()), MMN_ERR_NULL);
        let mut cache = null_mut();
        assert_eq!(
            mmn_cache_create(null(), &r, null(), &mut cache),
            MMN_ERR_NULL
        );
        assert_eq!(
            mmn_cache_create(m, null(), null(), &mut cache),
            MMN_ERR_NULL
        );
        assert_eq!(mmn_cache_create(m, &r, null(), null_mut()), MMN_ERR_NULL);
        let no_reg = Registrar { reg: None, ..r };
        assert_eq!(
            mmn_cache_create(m, &no_reg, null(), &mut cache),
            MMN_ERR_NULL
        );
        let no_dereg = Registrar { dereg: None, ..r };
        assert_eq!(
            mmn_cache_create(m, &no_dereg, null(), &mut cache),
            MMN_ERR_NULL
        );
        assert!(cache.is_null(), "nothing is written on failure");
        let mut reg = null_mut();
        assert_eq!(
            mmn_cache_get(null(), mem.0, page(), &mut reg, null_mut()),
            MMN_ERR_NULL
        );
        assert_eq!(mmn_cache_create(m, &r, null(), &mut cache), MMN_OK);
        assert_eq!(
            mmn_cache_get(cache, mem.0, page(), null_mut(), null_mut()),
            MMN_ERR_NULL
        );
        assert_eq!(
            mmn_reg_info(null(), null_mut(), null_mut(), null_mut(), null_mut()),
            MMN_ERR_NULL
        );
        assert_eq!(mmn_cache_flush(null()), MMN_ERR_NULL);
        assert_eq!(mmn_cache_stats(null(), null_mut()), MMN_ERR_NULL);
        assert_eq!(mmn_cache_stats(cache, null_mut()), MMN_ERR_NULL);
        let mut sub = null_mut();
        assert_eq!(
            mmn_subscribe(null(), mem.0, page(), Some(note_cb), null_mut(), &mut sub),
            MMN_ERR_NULL
        );
        assert_eq!(
            mmn_subscribe(m, mem.0, page(), None, null_mut(), &mut sub),
            MMN_ERR_NULL
        );
        assert_eq!(
            mmn_subscribe(m, mem.0, page(), Some(note_cb), null_mut(), null_mut()),
            MMN_ERR_NULL
        );
        assert_eq!(
            mmn_subscribe_all(null(), Some(note_cb), null_mut(), &mut sub),
            MMN_ERR_NULL
        );
        assert_eq!(
            mmn_subscribe_all(m, None, null_mut(), &mut sub),
            MMN_ERR_NULL
        );
        let mut w = null_mut();
        assert_eq!(mmn_watch(null(), mem.0, page(), &mut w), MMN_ERR_NULL);
        assert_eq!(mmn_watch(m, mem.0, page(), null_mut()), MMN_ERR_NULL);
        // Destroying NULL is a no-op, as free(NULL).
        assert_eq!(mmn_monitor_destroy(null_mut()), MMN_OK);
        assert_eq!(mmn_importer_destroy(null_mut()), MMN_OK);
        assert_eq!(mmn_cache_destroy(null_mut()), MMN_OK);
        assert_eq!(mmn_cache_put(null_mut()), MMN_OK);
        assert_eq!(mmn_unsubscribe(null_mut()), MMN_OK);
        assert_eq!(mmn_unwatch(null_mut()), MMN_OK);
        assert_eq!(mmn_cache_destroy(cache), MMN_OK);
        assert_eq!(mmn_monitor_destroy(m), MMN_OK);
    }
    assert_eq!(c.registered.load(Ordering::SeqCst), 0);
}

#[test]
fn every_bad_argument_is_refused_with_its_code() {
    let m = monitor(MMN_SOURCE_BRACKETED);
    let c = Counting::default();
    let r = registrar(&c, false);
    let mem = Mem::new(2 * page());
    // SAFETY: every pointer passed is valid; the arguments are what is being tested.
    unsafe {
        let mut out = null_mut();
        assert_eq!(mmn_monitor_create(7, &mut out), MMN_ERR_INVALID);
        assert!(
            last_error().contains("unknown source 7"),
            "{}",
            last_error()
        );
        // Unaligned or empty ranges for the wrappers.
        assert_eq!(
            mmn_munmap(m, mem.0.cast::<u8>().add(1).cast(), page()),
            MMN_ERR_INVALID
        );
        assert_eq!(mmn_munmap(m, mem.0, 0), MMN_ERR_INVALID);
        assert_eq!(mmn_madvise(m, mem.0, page(), 12345), MMN_ERR_INVALID);
        assert_eq!(mmn_mprotect(m, mem.0, page(), 0x4000_0000), MMN_ERR_INVALID);
        let mut moved = null_mut();
        assert_eq!(
            mmn_mremap(m, mem.0, page(), page(), 0x4000, null_mut(), &mut moved),
            MMN_ERR_INVALID
        );
        // A failing system call: errno is set and the call is named.
        let gone = Mem::new(page());
        libc::munmap(gone.0, page());
        *libc::__errno_location() = 0;
        assert_eq!(
            mmn_mprotect(m, gone.0, page(), libc::PROT_READ),
            MMN_ERR_SYS
        );
        assert_eq!(*libc::__errno_location(), libc::ENOMEM);
        assert!(last_error().contains("mprotect"), "{}", last_error());
        // Importer: unknown event, empty range.
        let mut imp = null_mut();
        assert_eq!(mmn_importer_create(m, &mut imp), MMN_OK);
        assert_eq!(mmn_import(imp, mem.0, page(), 8), MMN_ERR_INVALID);
        assert_eq!(mmn_import(imp, mem.0, page(), -1), MMN_ERR_INVALID);
        assert_eq!(mmn_import(imp, mem.0, 0, MMN_EVENT_UNMAP), MMN_ERR_INVALID);
        assert_eq!(mmn_importer_destroy(imp), MMN_OK);
        // Cache limits.
        let mut cfg = CacheConfig {
            max_entries: 0,
            max_bytes: 0,
            max_retries: 0,
            invalidate_on_protection: 0,
        };
        assert_eq!(mmn_cache_config_default(&mut cfg), MMN_OK);
        assert_eq!((cfg.max_entries, cfg.max_retries), (1024, 10_000));
        let mut cache = null_mut();
        let zero = CacheConfig {
            max_entries: 0,
            ..cfg
        };
        assert_eq!(mmn_cache_create(m, &r, &zero, &mut cache), MMN_ERR_INVALID);
        let tiny = CacheConfig {
            max_bytes: 1,
            ..cfg
        };
        assert_eq!(mmn_cache_create(m, &r, &tiny, &mut cache), MMN_ERR_INVALID);
        assert_eq!(mmn_cache_create(m, &r, &cfg, &mut cache), MMN_OK);
        let mut reg = null_mut();
        assert_eq!(
            mmn_cache_get(cache, mem.0, 0, &mut reg, null_mut()),
            MMN_ERR_INVALID
        );
        assert_eq!(
            mmn_cache_get(
                cache,
                usize::MAX as *const c_void,
                page(),
                &mut reg,
                null_mut()
            ),
            MMN_ERR_INVALID
        );
        // Subscriptions: empty range.
        let mut sub = null_mut();
        assert_eq!(
            mmn_subscribe(m, mem.0, 0, Some(note_cb), null_mut(), &mut sub),
            MMN_ERR_INVALID
        );
        assert_eq!(mmn_cache_destroy(cache), MMN_OK);
        assert_eq!(mmn_monitor_destroy(m), MMN_OK);
    }
}

#[test]
fn a_registrar_that_refuses_or_a_pin_that_fails_is_a_register_error() {
    let m = monitor(MMN_SOURCE_BRACKETED);
    let refusing = Counting {
        refuse: true,
        ..Default::default()
    };
    let ok = Counting::default();
    let mem = Mem::new(page());
    // SAFETY: valid handles and out-pointers.
    unsafe {
        let mut cache = null_mut();
        assert_eq!(
            mmn_cache_create(m, &registrar(&refusing, false), null(), &mut cache),
            MMN_OK
        );
        let mut reg = null_mut();
        assert_eq!(
            mmn_cache_get(cache, mem.0, page(), &mut reg, null_mut()),
            MMN_ERR_REGISTER
        );
        assert!(last_error().contains("returned -1"), "{}", last_error());
        assert_eq!(mmn_cache_destroy(cache), MMN_OK);
        // With the pin, unmapped memory fails in mlock before the registrar is called.
        assert_eq!(
            mmn_cache_create(m, &registrar(&ok, true), null(), &mut cache),
            MMN_OK
        );
        let gone = Mem::new(page());
        libc::munmap(gone.0, page());
        assert_eq!(
            mmn_cache_get(cache, gone.0, page(), &mut reg, null_mut()),
            MMN_ERR_REGISTER
        );
        assert!(last_error().contains("mlock"), "{}", last_error());
        assert_eq!(ok.registered.load(Ordering::SeqCst), 0);
        assert_eq!(mmn_cache_destroy(cache), MMN_OK);
        assert_eq!(mmn_monitor_destroy(m), MMN_OK);
    }
}

#[test]
fn bracketed_unmap_invalidates_and_deregistration_waits_for_the_last_put() {
    let m = monitor(MMN_SOURCE_BRACKETED);
    let c = Counting::default();
    let mem = Mem::new(2 * page());
    // SAFETY: valid handles and out-pointers; the unmapped range is not used after.
    unsafe {
        let mut cache = null_mut();
        assert_eq!(
            mmn_cache_create(m, &registrar(&c, true), null(), &mut cache),
            MMN_OK
        );
        let (mut a, mut b) = (null_mut(), null_mut());
        let (mut ha, mut hb) = (0usize, 0usize);
        assert_eq!(
            mmn_cache_get(cache, mem.0, 2 * page(), &mut a, &mut ha),
            MMN_OK
        );
        assert_eq!(mmn_cache_get(cache, mem.0, page(), &mut b, &mut hb), MMN_OK);
        assert_eq!(
            ha, hb,
            "the second lookup is a hit on the same registration"
        );
        let mut st = CacheStats::default();
        assert_eq!(mmn_cache_stats(cache, &mut st), MMN_OK);
        assert_eq!(
            (st.hits, st.misses, st.entries, st.bytes),
            (1, 1, 1, 2 * page() as u64)
        );
        let (mut h, mut s, mut l, mut v) = (0usize, 0u64, 0u64, -1);
        assert_eq!(mmn_reg_info(a, &mut h, &mut s, &mut l, &mut v), MMN_OK);
        assert_eq!((h, s, l, v), (ha, mem.0 as u64, 2 * page() as u64, 1));

        assert_eq!(
            mmn_munmap(m, mem.0.cast::<u8>().add(page()).cast(), page()),
            MMN_OK
        );
        assert_eq!(
            mmn_reg_info(a, null_mut(), null_mut(), null_mut(), &mut v),
            MMN_OK
        );
        assert_eq!(v, 0, "the unmap invalidated the registration");
        assert_eq!(mmn_cache_flush(cache), MMN_OK);
        assert_eq!(
            c.deregistered.load(Ordering::SeqCst),
            0,
            "still held by two mmn_reg"
        );
        assert_eq!(mmn_cache_put(a), MMN_OK);
        assert_eq!(
            c.deregistered.load(Ordering::SeqCst),
            0,
            "still held by one mmn_reg"
        );
        assert_eq!(mmn_cache_put(b), MMN_OK);
        assert_eq!(
            c.deregistered.load(Ordering::SeqCst),
            1,
            "the last put deregisters"
        );
        assert_eq!(mmn_cache_stats(cache, &mut st), MMN_OK);
        assert_eq!(
            (
                st.invalidations,
                st.entries,
                st.registrar_registered,
                st.registrar_deregistered
            ),
            (1, 0, 1, 1)
        );

        // A new lookup of the part still mapped registers again; destroy releases it.
        let mut r2 = null_mut();
        assert_eq!(
            mmn_cache_get(cache, mem.0, page(), &mut r2, null_mut()),
            MMN_OK
        );
        assert_eq!(mmn_cache_put(r2), MMN_OK);
        assert_eq!(mmn_cache_destroy(cache), MMN_OK);
        assert_eq!(c.registered.load(Ordering::SeqCst), 2);
        assert_eq!(c.deregistered.load(Ordering::SeqCst), 2, "no leak");
        assert_eq!(mmn_monitor_destroy(m), MMN_OK);
    }
}

static NOTES: Mutex<Vec<(u64, u64, c_int)>> = Mutex::new(Vec::new());

unsafe extern "C" fn note_cb(user: *mut c_void, start: u64, end: u64, event: c_int) {
    let _ = user;
    NOTES.lock().unwrap().push((start, end, event));
}

fn notes_in(lo: u64, hi: u64) -> Vec<(u64, u64, c_int)> {
    NOTES
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|&(s, e, _)| s < hi && e > lo)
        .collect()
}

#[test]
fn subscriptions_see_imports_and_wrappers_with_the_clipped_range_and_event() {
    let m = monitor(MMN_SOURCE_BRACKETED);
    let mem = Mem::new(4 * page());
    let (lo, p) = (mem.0 as u64, page() as u64);
    // SAFETY: valid handles and out-pointers.
    unsafe {
        let mut sub = null_mut();
        let second = mem.0.cast::<u8>().add(page()).cast::<c_void>();
        assert_eq!(
            mmn_subscribe(m, second, 2 * page(), Some(note_cb), null_mut(), &mut sub),
            MMN_OK
        );
        let mut imp = null_mut();
        assert_eq!(mmn_importer_create(m, &mut imp), MMN_OK);
        assert_eq!(mmn_import(imp, mem.0, 4 * page(), MMN_EVENT_CLEAR), MMN_OK);
        assert_eq!(
            notes_in(lo, lo + 4 * p),
            vec![(lo + p, lo + 3 * p, MMN_EVENT_CLEAR)]
        );
        assert_eq!(mmn_mprotect(m, second, page(), libc::PROT_READ), MMN_OK);
        assert_eq!(
            notes_in(lo, lo + 4 * p).last(),
            Some(&(lo + p, lo + 2 * p, MMN_EVENT_PROTECTION_VMA))
        );
        assert_eq!(
            mmn_madvise(m, mem.0, 4 * page(), libc::MADV_WILLNEED),
            MMN_OK
        );
        assert_eq!(
            notes_in(lo, lo + 4 * p).len(),
            2,
            "WILLNEED moves no page: no invalidation"
        );
        assert_eq!(mmn_unsubscribe(sub), MMN_OK);
        assert_eq!(mmn_import(imp, mem.0, 4 * page(), MMN_EVENT_UNMAP), MMN_OK);
        assert_eq!(
            notes_in(lo, lo + 4 * p).len(),
            2,
            "nothing after mmn_unsubscribe"
        );
        assert_eq!(mmn_importer_destroy(imp), MMN_OK);
        assert_eq!(mmn_monitor_destroy(m), MMN_OK);
    }
}

#[test]
fn uffd_sees_plain_munmap_for_caches_and_subscriptions() {
    let Some(m) = uffd_or_skip() else { return };
    let c = Counting::default();
    let mem = Mem::new(2 * page());
    let lo = mem.0 as u64;
    // SAFETY: valid handles and out-pointers; the unmapped range is not used after.
    unsafe {
        assert_eq!(mmn_monitor_source(m), MMN_SOURCE_UFFD);
        assert!(mmn_monitor_fallback_reason(m).is_null());
        let mut cache = null_mut();
        assert_eq!(
            mmn_cache_create(m, &registrar(&c, true), null(), &mut cache),
            MMN_OK
        );
        let mut reg = null_mut();
        assert_eq!(
            mmn_cache_get(cache, mem.0, page(), &mut reg, null_mut()),
            MMN_OK
        );
        let second = mem.0.cast::<u8>().add(page()).cast::<c_void>();
        let mut sub = null_mut();
        assert_eq!(
            mmn_subscribe(m, second, page(), Some(note_cb), null_mut(), &mut sub),
            MMN_OK
        );
        // Plain munmap, not the wrapper: the uffd thread reports it.
        assert_eq!(libc::munmap(mem.0, 2 * page()), 0);
        assert_eq!(mmn_monitor_sync(m), MMN_OK);
        assert_eq!(mmn_monitor_pending(m), 0);
        let mut v = -1;
        assert_eq!(
            mmn_reg_info(reg, null_mut(), null_mut(), null_mut(), &mut v),
            MMN_OK
        );
        assert_eq!(v, 0, "the plain munmap invalidated the registration");
        assert!(notes_in(lo, lo + 2 * page() as u64).contains(&(
            lo + page() as u64,
            lo + 2 * page() as u64,
            MMN_EVENT_UNMAP
        )));
        let mut st = MonitorStats::default();
        assert_eq!(mmn_monitor_stats(m, &mut st), MMN_OK);
        assert!(st.unmaps >= 1 && st.registers >= 1, "{st:?}");
        assert_eq!(mmn_unsubscribe(sub), MMN_OK);
        assert_eq!(mmn_cache_put(reg), MMN_OK);
        assert_eq!(mmn_cache_destroy(cache), MMN_OK);
        assert_eq!(
            c.registered.load(Ordering::SeqCst),
            c.deregistered.load(Ordering::SeqCst)
        );
        // A shared mapping is refused under uffd, with its reason.
        let shm = libc::mmap(
            null_mut(),
            page(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        let mut w = null_mut();
        assert_eq!(mmn_watch(m, shm, page(), &mut w), MMN_ERR_UNCOVERED);
        assert!(
            last_error().contains("shared") || last_error().contains("Shared"),
            "{}",
            last_error()
        );
        libc::munmap(shm, page());
        assert_eq!(mmn_monitor_destroy(m), MMN_OK);
    }
    std::mem::forget(mem);
}

#[test]
fn a_refused_userfaultfd_falls_back_with_the_reason_or_fails_when_uffd_was_required() {
    std::thread::spawn(|| {
        hostmm::testing::deny_userfaultfd_in_this_thread(libc::EPERM).expect("seccomp filter");
        // SAFETY: valid out-pointers.
        unsafe {
            let mut m = null_mut();
            assert_eq!(
                mmn_monitor_create(MMN_SOURCE_UFFD, &mut m),
                MMN_ERR_UFFD_REFUSED
            );
            assert!(last_error().contains("EPERM"), "{}", last_error());
            assert!(m.is_null());
            assert_eq!(mmn_monitor_create(MMN_SOURCE_AUTO, &mut m), MMN_OK);
            assert_eq!(mmn_monitor_source(m), MMN_SOURCE_BRACKETED);
            let why = mmn_monitor_fallback_reason(m);
            assert!(!why.is_null());
            let why = CStr::from_ptr(why).to_str().unwrap();
            assert!(why.contains("EPERM"), "{why}");
            let mut st = MonitorStats {
                unmaps: 9,
                ..Default::default()
            };
            assert_eq!(mmn_monitor_stats(m, &mut st), MMN_OK);
            assert_eq!(st, MonitorStats::default());
            assert_eq!(mmn_monitor_destroy(m), MMN_OK);
        }
    })
    .join()
    .unwrap();
}

#[test]
fn a_registration_held_past_the_cache_is_deregistered_at_its_put() {
    let m = monitor(MMN_SOURCE_BRACKETED);
    let c = Counting::default();
    let mem = Mem::new(page());
    // SAFETY: valid handles and out-pointers.
    unsafe {
        let mut cache = null_mut();
        assert_eq!(
            mmn_cache_create(m, &registrar(&c, true), null(), &mut cache),
            MMN_OK
        );
        let mut reg = null_mut();
        let mut h = 0usize;
        assert_eq!(
            mmn_cache_get(cache, mem.0, page(), &mut reg, &mut h),
            MMN_OK
        );
        assert_eq!(mmn_cache_destroy(cache), MMN_OK);
        assert_eq!(
            c.deregistered.load(Ordering::SeqCst),
            0,
            "still held by an mmn_reg"
        );
        let mut h2 = 0usize;
        assert_eq!(
            mmn_reg_info(reg, &mut h2, null_mut(), null_mut(), null_mut()),
            MMN_OK
        );
        assert_eq!(h2, h, "the handle stays readable until the put");
        assert_eq!(mmn_cache_put(reg), MMN_OK);
        assert_eq!(c.deregistered.load(Ordering::SeqCst), 1);
        assert_eq!(mmn_monitor_destroy(m), MMN_OK);
    }
}

#[test]
fn bracketed_mremap_invalidates_the_old_range_and_returns_the_new_address() {
    let m = monitor(MMN_SOURCE_BRACKETED);
    let c = Counting::default();
    let (src, dst) = (Mem::new(page()), Mem::new(page()));
    // SAFETY: valid handles and out-pointers; the moved-from range is not used after.
    unsafe {
        // A watch under the bracketed source watches nothing and succeeds.
        let mut w = null_mut();
        assert_eq!(mmn_watch(m, src.0, page(), &mut w), MMN_OK);
        assert_eq!(mmn_unwatch(w), MMN_OK);
        let mut cache = null_mut();
        assert_eq!(
            mmn_cache_create(m, &registrar(&c, false), null(), &mut cache),
            MMN_OK
        );
        let mut reg = null_mut();
        assert_eq!(
            mmn_cache_get(cache, src.0, page(), &mut reg, null_mut()),
            MMN_OK
        );
        let mut to = null_mut();
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        assert_eq!(
            mmn_mremap(m, src.0, page(), page(), flags, dst.0, &mut to),
            MMN_OK
        );
        assert_eq!(to, dst.0);
        let mut v = -1;
        assert_eq!(
            mmn_reg_info(reg, null_mut(), null_mut(), null_mut(), &mut v),
            MMN_OK
        );
        assert_eq!(v, 0, "the move invalidated the old range");
        assert_eq!(mmn_cache_put(reg), MMN_OK);
        assert_eq!(mmn_cache_destroy(cache), MMN_OK);
        assert_eq!(mmn_monitor_destroy(m), MMN_OK);
    }
    std::mem::forget(src);
}
