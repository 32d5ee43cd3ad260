//! Processes whose userfaultfd cannot be created fall back cleanly.

use hostmm::uffd::CreateSeam;
use hostmm::{
    CacheConfig, Error, HostMm, Mapping, MonitorConfig, NoopRegistrar, RegCache, Source,
    UffdMonitor,
};

/// Runs `f` on a fresh thread whose userfaultfd(2) fails with `errno` (a seccomp filter, as in
/// a sandbox). The filter stays with that thread only.
fn in_sandbox<T: Send + 'static>(errno: i32, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(
        move || match hostmm::testing::deny_userfaultfd_in_this_thread(errno) {
            Ok(()) => Some(f()),
            Err(e) => {
                eprintln!("skipping: cannot install a seccomp filter here: {e}");
                None
            }
        },
    )
    .join()
    .unwrap()
}

fn falls_back_with(errno: i32) -> Option<String> {
    in_sandbox(errno, || {
        let host = HostMm::new();
        let (source, why) = Source::auto(&host, MonitorConfig::default()).unwrap();
        assert!(matches!(source, Source::Bracketed));
        // The fallback works: a cache on bracketed calls invalidates.
        let cache = RegCache::new(
            &host,
            NoopRegistrar,
            CacheConfig {
                monitor: source.monitor(),
                ..Default::default()
            },
        )
        .unwrap();
        let m = Mapping::anonymous(4096).unwrap();
        let h = cache.get(m.addr(), 4096).unwrap();
        m.unmap_via(&host).unwrap();
        assert!(!h.is_valid());
        why.unwrap().to_string()
    })
}

#[test]
fn eperm_falls_back_to_bracketed_with_a_clear_reason() {
    if let Some(why) = falls_back_with(libc::EPERM) {
        assert!(why.contains("EPERM") && why.contains("bracketed"), "{why}");
    }
}

#[test]
fn enosys_falls_back_to_bracketed_with_a_clear_reason() {
    if let Some(why) = falls_back_with(libc::ENOSYS) {
        assert!(why.contains("ENOSYS"), "{why}");
    }
}

#[test]
fn starting_a_monitor_in_a_sandbox_is_a_typed_error() {
    let r = in_sandbox(libc::EPERM, || {
        UffdMonitor::start(&HostMm::new(), MonitorConfig::default()).err()
    });
    if let Some(e) = r {
        assert!(matches!(e, Some(Error::UffdPermission)), "{e:?}");
    }
}

#[test]
fn the_creation_seam_reports_each_errno() {
    let host = HostMm::new();
    let eperm = MonitorConfig {
        seam: CreateSeam::Fail(rustix::io::Errno::PERM),
        ..Default::default()
    };
    assert!(matches!(
        UffdMonitor::start(&host, eperm.clone()),
        Err(Error::UffdPermission)
    ));
    let (s, why) = Source::auto(&host, eperm).unwrap();
    assert_eq!(s.name(), "bracketed");
    assert!(why.is_some());
    let other = MonitorConfig {
        seam: CreateSeam::Fail(rustix::io::Errno::MFILE),
        ..Default::default()
    };
    assert!(matches!(
        Source::auto(&host, other),
        Err(Error::Sys {
            call: "userfaultfd",
            ..
        })
    ));
    let zero = MonitorConfig {
        max_regions: 0,
        ..Default::default()
    };
    assert!(matches!(
        UffdMonitor::start(&host, zero),
        Err(Error::Config(_))
    ));
}
