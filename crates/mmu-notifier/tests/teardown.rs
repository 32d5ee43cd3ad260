//! A primary's teardown (`exit_mmap`) runs once, from the drop of the last user, and releases
//! the address space itself; one that forgets is reported and the contract releases after it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mmu_notifier::{Capabilities, DiagMode, Diagnostics, Mm, MmuNotifierOps, Teardown, Warning};

#[derive(Default)]
struct ExitMmap {
    runs: AtomicUsize,
    release_first: bool,
    order: Mutex<Vec<&'static str>>,
}

impl Teardown for ExitMmap {
    fn exit_mmap(&self, mm: &Mm) {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if self.release_first {
            mm.release();
        }
        self.order.lock().unwrap().push("unmap everything");
    }
}

struct Sub(Arc<ExitMmap>);
impl MmuNotifierOps for Sub {
    fn capabilities(&self) -> Capabilities {
        Capabilities::RELEASE
    }
    fn release(&self, _mm: &Mm) {
        self.0.order.lock().unwrap().push("release");
    }
}

#[test]
fn the_last_user_runs_the_primarys_teardown_once_and_release_comes_first() {
    let t = Arc::new(ExitMmap {
        release_first: true,
        ..ExitMmap::default()
    });
    let diag = Diagnostics::new(DiagMode::Collect);
    let user = Mm::builder()
        .teardown(t.clone())
        .diagnostics(diag.clone())
        .build_user();
    let _sub = user.register(Sub(t.clone())).unwrap();
    let second = user.clone();
    drop(user);
    assert_eq!(t.runs.load(Ordering::SeqCst), 0, "a user is left");
    drop(second);
    assert_eq!(t.runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        *t.order.lock().unwrap(),
        vec!["release", "unmap everything"]
    );
    assert_eq!(diag.count(), 0, "{:?}", diag.take());
}

#[test]
fn a_teardown_that_forgets_release_is_reported_and_released_after() {
    let t = Arc::new(ExitMmap::default());
    let diag = Diagnostics::new(DiagMode::Collect);
    let user = Mm::builder()
        .teardown(t.clone())
        .diagnostics(diag.clone())
        .build_user();
    let mm = user.mm().clone();
    let _sub = user.register(Sub(t.clone())).unwrap();
    drop(user);
    assert!(mm.is_released());
    assert_eq!(
        *t.order.lock().unwrap(),
        vec!["unmap everything", "release"]
    );
    assert!(matches!(diag.take()[..], [Warning::TeardownWithoutRelease]));
}
