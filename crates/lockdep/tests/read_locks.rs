//! Reader-writer rules: cycles that cannot deadlock are not reported.
#![cfg(feature = "enabled")]

use lockdep::scope::Scope;
use lockdep::{static_lock_class, LockMap, Mutex, ReportKind, RwLock};

const CYCLE: ReportKind = ReportKind::PossibleCircularLockingDependency;

#[test]
fn recursive_read_cycle_is_clean() {
    // A(rr) -> B(rr) and B(rr) -> A(rr): recursive readers never wait for each other.
    let scope = Scope::new();
    let a = RwLock::new((), static_lock_class!("rr-A"));
    let b = RwLock::new((), static_lock_class!("rr-B"));
    {
        let _a = a.read_recursive();
        let _b = b.read_recursive();
    }
    {
        let _b = b.read_recursive();
        let _a = a.read_recursive();
    }
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn write_then_read_against_read_then_write_is_reported() {
    let scope = Scope::new();
    let a = RwLock::new((), static_lock_class!("wr-A"));
    let b = RwLock::new((), static_lock_class!("wr-B"));
    {
        let _a = a.write();
        let _b = b.read();
    }
    {
        let _b = b.write();
        let _a = a.read();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1, "{:#?}", scope.reports());
}

#[test]
fn non_recursive_read_cycle_is_reported() {
    // Fair readers wait behind a waiting writer: A(r) -> B(w), B(r) -> A(w) can deadlock.
    let scope = Scope::new();
    let a = RwLock::new((), static_lock_class!("nr-A"));
    let b = RwLock::new((), static_lock_class!("nr-B"));
    {
        let _a = a.read();
        let _b = b.write();
    }
    {
        let _b = b.read();
        let _a = a.write();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1);
}

#[test]
fn exclusive_to_recursive_read_cycle_is_a_deadlock() {
    // X -(ER)-> Y -(ER)-> Z -(ER)-> X: each holder is exclusive, so it is a strong cycle.
    let scope = Scope::new();
    let x = RwLock::new((), static_lock_class!("er-X"));
    let y = RwLock::new((), static_lock_class!("er-Y"));
    let z = RwLock::new((), static_lock_class!("er-Z"));
    {
        let _x = x.write();
        let _y = y.read_recursive();
    }
    {
        let _y = y.write();
        let _z = z.read_recursive();
    }
    {
        let _z = z.write();
        let _x = x.read_recursive();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1, "{:#?}", scope.reports());
}

#[test]
fn recursive_read_followed_by_shared_hold_breaks_the_cycle() {
    // X -(EN)-> Y -(SR)-> Z -(SN)-> X is not a deadlock (lockdep-design.rst).
    let scope = Scope::new();
    let x = RwLock::new((), static_lock_class!("sr-X"));
    let y = RwLock::new((), static_lock_class!("sr-Y"));
    let z = RwLock::new((), static_lock_class!("sr-Z"));
    {
        let _x = x.write();
        let _y = y.write();
    }
    {
        let _y = y.read();
        let _z = z.read_recursive();
    }
    {
        let _z = z.read();
        let _x = x.write();
    }
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn recursive_read_of_a_read_held_class_is_fine_but_write_is_not() {
    let scope = Scope::new();
    let mk = || RwLock::new((), static_lock_class!("rr-same"));
    let (a, b) = (mk(), mk());
    {
        let _a = a.read();
        let _b = b.read_recursive();
    }
    assert!(scope.is_clean());
    {
        let _a = a.read();
        let _b = b.write();
    }
    assert_eq!(scope.of_kind(ReportKind::RecursiveLocking).len(), 1);
}

#[test]
fn srcu_style_sync_inside_read_section_is_reported() {
    // synchronize_srcu() inside the SRCU read section it waits for: self-deadlock.
    static SRCU: LockMap = LockMap::new("test_srcu");
    let scope = Scope::new();
    {
        let _r = SRCU.acquire_read();
        SRCU.sync();
    }
    assert_eq!(scope.of_kind(ReportKind::RecursiveLocking).len(), 1);
}

#[test]
fn srcu_sync_while_holding_a_lock_taken_in_readers_is_reported() {
    static SRCU: LockMap = LockMap::new("test_srcu2");
    let scope = Scope::new();
    let m = Mutex::new((), static_lock_class!("srcu-user-lock"));
    {
        let _r = SRCU.acquire_read();
        let _m = m.lock();
    }
    {
        let _m = m.lock();
        SRCU.sync();
    }
    assert_eq!(scope.of_kind(CYCLE).len(), 1, "{:#?}", scope.reports());
}

#[test]
fn try_read_adds_no_edge() {
    let scope = Scope::new();
    let a = Mutex::new((), static_lock_class!("tr-A"));
    let b = RwLock::new((), static_lock_class!("tr-B"));
    {
        let _a = a.lock();
        let _b = b.try_read().unwrap();
    }
    {
        let _b = b.write();
        let _a = a.lock();
    }
    assert!(scope.is_clean(), "{:#?}", scope.reports());
}

#[test]
fn a_lock_held_under_a_recursive_read_section_is_ordered_before_what_is_taken_inside() {
    // X held, then a recursive read section of R, then L: X is held while L is taken. The
    // kernel records only R -> L (and X -> R), and X -(ER)-> R -(SN)-> L is not a strong path,
    // so the L -> X order below closed no cycle there. It is a real deadlock (one thread holds
    // X and waits for L, the other holds L and waits for X), and is reported here.
    let scope = Scope::new();
    let x = Mutex::new((), static_lock_class!("under-rr-X"));
    let r = RwLock::new((), static_lock_class!("under-rr-R"));
    let l = Mutex::new((), static_lock_class!("under-rr-L"));
    {
        let _x = x.lock();
        let _r = r.read_recursive();
        let _l = l.lock();
    }
    {
        let _l = l.lock();
        let _x = x.lock();
    }
    let cycles = scope.of_kind(ReportKind::PossibleCircularLockingDependency);
    assert_eq!(cycles.len(), 1, "{:#?}", scope.reports());
    assert_eq!(cycles[0].cycle.len(), 2, "{}", cycles[0]);
}
