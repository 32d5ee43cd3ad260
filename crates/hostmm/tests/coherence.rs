//! Issue 9, classes 1, 3, 4 and 5, one kernel behaviour per test: what each source covers, what
//! is refused, and the kernel behaviour each rule rests on.

use hostmm::MappingKind;
use hostmm::{
    CacheConfig, Error, HostMm, Mapping, MlockRegistrar, MonitorConfig, NoopRegistrar,
    PagemapRegistrar, RegCache, Registrar, RegistrarError, VaRange,
};
use rustix::mm::{Advice, MapFlags, ProtFlags};

mod common;
use common::{cache_over, monitor_or_skip};

fn page() -> u64 {
    hostmm::page_size()
}

/// Whether `/proc/self/smaps` shows the page at `addr` registered for write-protect tracking.
fn smaps_registered(addr: u64) -> bool {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if inside {
                return flags.split_whitespace().any(|f| f == "uw");
            }
        } else if let Some((lo, rest)) = line.split_once('-') {
            if let (Ok(lo), Some(hi)) = (
                u64::from_str_radix(lo, 16),
                rest.split_whitespace()
                    .next()
                    .and_then(|h| u64::from_str_radix(h, 16).ok()),
            ) {
                inside = lo <= addr && addr < hi;
            }
        }
    }
    false
}

fn munmap(addr: u64, len: u64) {
    // SAFETY: the tests own these pages and hold no reference into them.
    unsafe { rustix::mm::munmap(addr as *mut _, len as usize) }.unwrap();
}

fn map_at(addr: u64, len: u64) {
    // SAFETY: MAP_FIXED_NOREPLACE replaces nothing.
    let p = unsafe {
        rustix::mm::mmap_anonymous(
            addr as *mut _,
            len as usize,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::FIXED_NOREPLACE,
        )
    }
    .unwrap();
    assert_eq!(p as u64, addr);
}

#[test]
fn uffd_a_range_with_a_hole_is_refused_not_cached() {
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let cache = cache_over(&host, &mon);
    let m = Mapping::anonymous(3 * page()).unwrap();
    munmap(m.addr() + page(), page());
    assert!(matches!(
        cache.get(m.addr(), 3 * page()),
        Err(Error::NotMapped { .. })
    ));
    assert_eq!(cache.stats().registered, 0);
    // The hole filled with a mapping that was never registered: cached only once verified.
    map_at(m.addr() + page(), page());
    let h = cache.get(m.addr(), 3 * page()).unwrap();
    assert!(h.is_valid());
    for i in 0..3 {
        assert!(smaps_registered(m.addr() + i * page()), "page {i}");
    }
}

#[test]
fn uffd_a_page_mapped_again_is_registered_again_and_its_unmap_invalidates() {
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let cache = cache_over(&host, &mon);
    let m = Mapping::anonymous(16 * page()).unwrap();
    let whole = cache.get(m.addr(), 16 * page()).unwrap();
    let mid = m.addr() + 8 * page();
    munmap(mid, page());
    host.gate().wait();
    assert!(!whole.is_valid());
    map_at(mid, page());
    assert!(
        !smaps_registered(mid),
        "a new mapping in the hole starts unregistered"
    );
    let again = cache.get(m.addr(), 16 * page()).unwrap();
    assert!(smaps_registered(mid));
    let unmaps = mon.stats().unmaps;
    munmap(mid, page());
    host.gate().wait();
    assert!(
        mon.stats().unmaps > unmaps,
        "the replaced page raises UNMAP"
    );
    assert!(!again.is_valid());
    map_at(mid, page());
}

#[test]
fn uffd_a_watch_going_away_never_unregisters_memory_another_watch_holds() {
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let m = Mapping::anonymous(16 * page()).unwrap();
    let a = mon.watch(m.addr(), page()).unwrap(); // registers all 16 pages
    let mid = m.addr() + 8 * page();
    munmap(mid, page());
    host.gate().wait();
    map_at(mid, page());
    // B registers again over the same mappings (the old code let it take them over) ...
    let b = mon.watch(m.addr(), 16 * page()).unwrap();
    drop(b);
    // ... and its going away must leave A's memory registered.
    assert!(smaps_registered(m.addr()), "A's page was unregistered by B");
    let before = mon.stats().unmaps;
    munmap(m.addr(), page());
    host.gate().wait();
    assert!(mon.stats().unmaps > before, "A's unmap raised no event");
    drop(a);
    map_at(m.addr(), page());
}

#[test]
fn uffd_refuses_shared_and_file_mappings_with_the_reason() {
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let cache = cache_over(&host, &mon);
    let fd = rustix::fs::memfd_create("hostmm-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 2 * page()).unwrap();
    for (flags, kind) in [
        (MapFlags::SHARED, MappingKind::Shared),
        (MapFlags::PRIVATE, MappingKind::PrivateFile),
    ] {
        // SAFETY: a new mapping at an address the kernel chooses aliases nothing.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                2 * page() as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                &fd,
                0,
            )
        }
        .unwrap();
        match cache.get(p as u64, 2 * page()) {
            Err(e @ Error::UncoveredMapping { kind: k, .. }) if k == kind => {
                assert!(e.to_string().contains(kind.name()), "{e}")
            }
            other => panic!("expected UncoveredMapping({kind:?}), got {other:?}"),
        }
        munmap(p as u64, 2 * page());
    }
    // SAFETY: as above.
    let shared_anon = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            page() as usize,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
        )
    }
    .unwrap();
    assert!(matches!(
        cache.get(shared_anon as u64, page()),
        Err(Error::UncoveredMapping {
            kind: MappingKind::Shared,
            ..
        })
    ));
    munmap(shared_anon as u64, page());
    assert_eq!(cache.stats().registered, 0);
}

#[test]
fn a_pinned_range_cannot_be_zapped_by_madv_dontneed() {
    // The kernel behaviour the REMOVE rule rests on: madvise_dontneed_free (mm/madvise.c) refuses
    // VM_LOCKED mappings, and checks again after the userfaultfd REMOVE event when it retakes
    // the mmap lock to zap. So a pin made between the event and the zap stops the zap.
    let m = Mapping::anonymous(2 * page()).unwrap();
    m.write_u64(0, 42);
    let pins = MlockRegistrar::new();
    pins.register(m.range()).unwrap();
    // SAFETY: the advice would only zero our own pages.
    let r =
        unsafe { rustix::mm::madvise(m.addr() as *mut _, m.len() as usize, Advice::LinuxDontNeed) };
    assert_eq!(r, Err(rustix::io::Errno::INVAL));
    assert_eq!(m.read_u64(0), 42, "the pinned page was zapped");
    pins.deregister(m.range(), &());
    // SAFETY: as above.
    unsafe { rustix::mm::madvise(m.addr() as *mut _, m.len() as usize, Advice::LinuxDontNeed) }
        .unwrap();
    assert_eq!(m.read_u64(0), 0);
}

fn frames_or_skip() -> Option<PagemapRegistrar> {
    match PagemapRegistrar::new() {
        Ok(p) => Some(p),
        Err(RegistrarError::NoFramePrivilege) => {
            eprintln!("skipping: frame numbers hidden (not root)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Forks a child that sleeps `ms` and exits; returns its pid.
fn fork_sleeper(ms: u64) -> libc::pid_t {
    // SAFETY: the child calls only async-signal-safe functions (nanosleep, _exit).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ts = libc::timespec {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
        };
        // SAFETY: plain system calls in the child.
        unsafe {
            libc::nanosleep(&ts, std::ptr::null_mut());
            libc::_exit(0);
        }
    }
    pid
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

#[test]
fn fork_then_a_write_in_the_parent_keeps_registered_frames() {
    // MADV_DONTFORK (set by the pin): the child does not get the range, so the parent's pages
    // are not shared copy-on-write and a write cannot move them to new frames.
    let Some(frames) = frames_or_skip() else {
        return;
    };
    let m = Mapping::anonymous(4 * page()).unwrap();
    let reg = frames.register(m.range()).unwrap();
    let child = fork_sleeper(200);
    for i in 0..4 {
        m.write_u64(i * page(), 7);
    }
    let now = frames.frames(m.range()).unwrap();
    reap(child);
    assert_eq!(now, reg.frames, "a write after fork moved registered pages");
    frames.deregister(m.range(), &reg);
}

#[test]
fn registering_after_a_fork_breaks_copy_on_write_first() {
    // The pin's mlock write-faults a private writable mapping (populate_vma_page_range in
    // mm/gup.c adds FOLL_WRITE), so a page still shared with a child forked before the
    // registration is copied before its frame is recorded.
    let Some(frames) = frames_or_skip() else {
        return;
    };
    let m = Mapping::anonymous(4 * page()).unwrap();
    for i in 0..4 {
        m.write_u64(i * page(), 1);
    }
    let child = fork_sleeper(300);
    let reg = frames.register(m.range()).unwrap();
    for i in 0..4 {
        m.write_u64(i * page(), 2);
    }
    let now = frames.frames(m.range()).unwrap();
    reap(child);
    assert_eq!(
        now, reg.frames,
        "the registration recorded frames shared with a child"
    );
    frames.deregister(m.range(), &reg);
}

#[test]
fn pins_compose_across_registrars_and_release_the_last() {
    let m = Mapping::anonymous(4 * page()).unwrap();
    let (a, b) = (MlockRegistrar::new(), MlockRegistrar::new());
    let first = VaRange::new(m.addr(), 2 * page()).unwrap();
    a.register(first).unwrap();
    b.register(m.range()).unwrap();
    a.deregister(first, &());
    // b still pins the first half: DONTNEED is still refused there.
    // SAFETY: as in the tests above.
    let r =
        unsafe { rustix::mm::madvise(m.addr() as *mut _, page() as usize, Advice::LinuxDontNeed) };
    assert_eq!(
        r,
        Err(rustix::io::Errno::INVAL),
        "a's release unpinned b's bytes"
    );
    b.deregister(m.range(), &());
    // SAFETY: as above.
    unsafe { rustix::mm::madvise(m.addr() as *mut _, page() as usize, Advice::LinuxDontNeed) }
        .unwrap();
}

#[test]
fn bracketed_file_operations_invalidate_every_mapping_of_the_file_range() {
    let host = HostMm::new();
    let cache = RegCache::new(&host, NoopRegistrar, CacheConfig::default()).unwrap();
    let fd = rustix::fs::memfd_create("hostmm-file", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 4 * page()).unwrap();
    let map = |off: u64| {
        // SAFETY: a new mapping at an address the kernel chooses aliases nothing.
        unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                2 * page() as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                off,
            )
        }
        .unwrap() as u64
    };
    // Two mappings of file pages 0-1, one of pages 2-3.
    let (a, b, c) = (map(0), map(0), map(2 * page()));
    let ha = cache.get(a, 2 * page()).unwrap();
    let hc = cache.get(c, 2 * page()).unwrap();
    // MADV_REMOVE through b frees a's pages too: a's entry goes, c's stays.
    // SAFETY: the advice only frees pages of our own file.
    unsafe { host.madvise(b, page(), Advice::LinuxRemove) }.unwrap();
    assert!(
        !ha.is_valid(),
        "MADV_REMOVE through another mapping left a cached"
    );
    assert!(hc.is_valid());
    let ha = cache.get(a, 2 * page()).unwrap();
    host.punch_hole(&fd, page(), page()).unwrap();
    assert!(!ha.is_valid(), "punch hole left a cached");
    assert!(hc.is_valid());
    let ha = cache.get(a, 2 * page()).unwrap();
    host.truncate(&fd, 3 * page()).unwrap();
    assert!(ha.is_valid(), "truncation beyond a's pages");
    assert!(!hc.is_valid(), "truncation left c cached");
    for p in [a, b, c] {
        munmap(p, 2 * page());
    }
}
