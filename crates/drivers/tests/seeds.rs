//! The five seeds as the whole system ([`drivers::scenarios`]), each buggy then fixed, each
//! checking its outcome: real reclaim calling a real driver's notifier, real hangs caught by
//! the hung-task watchdog, the real OOM reaper leaving KVM unable to fault.

use drivers::odp::NonBlock;
use drivers::scenarios::{self, HANG_LIMIT, HOCKO};
use drivers::userptr::GUNTHORPE;
use lockdep::Gfp;
use mmu_notifier::Profile;

#[test]
fn seed000_gntdev_412_is_reported_by_the_validator_without_pressure() {
    let o = scenarios::seed000_validator().unwrap();
    assert_eq!(o.direct_reclaim, 0, "no pressure");
    let atomic = o.sleeping_in("gntdev.rs");
    assert!(!atomic.is_empty(), "{:#?}", o.reports);
    assert!(atomic[0].to_string().contains("in_atomic"), "{}", atomic[0]);
    assert!(
        !o.cycles("&priv->lock").is_empty(),
        "the ptl <-> priv->lock cycle: {:#?}",
        o.reports
    );
    println!("seed 000 without pressure:\n{}\n{HOCKO}", atomic[0]);
}

#[test]
fn seed000_gntdev_412_hangs_under_pressure_and_the_watchdog_reports_it() {
    let o = scenarios::seed000_pressure(true, HANG_LIMIT).unwrap();
    assert!(
        o.hung.iter().any(|h| h.thread == "gntdev-ioctl"),
        "the ioctl path holding priv->lock hangs: {:?}",
        o.hung
    );
    assert!(o.direct_reclaim > 0);
}

#[test]
fn seed000_the_current_gntdev_under_the_same_pressure_is_clean() {
    let o = scenarios::seed000_pressure(false, HANG_LIMIT).unwrap();
    assert!(o.direct_reclaim > 0, "there was pressure");
    assert!(o.is_clean(), "{o:#?}");
}

#[test]
fn seed001_gfp_kernel_and_gfp_noio_under_the_notifier_lock_are_reported_without_reclaim() {
    for gfp in [Gfp::KERNEL, Gfp::NOIO] {
        let o = scenarios::seed001(gfp).unwrap();
        assert_eq!((o.direct_reclaim, o.reclaimed), (0, 0), "reclaim never ran");
        let found = o.cycles("&umem_odp->umem_mutex");
        assert!(!found.is_empty(), "{gfp:?}: {:#?}", o.reports);
        println!("seed 001 with {gfp:?}:\n{}", found[0]);
    }
}

#[test]
fn seed001_gfp_atomic_under_the_notifier_lock_is_clean() {
    let o = scenarios::seed001(Gfp::ATOMIC).unwrap();
    assert!(o.is_clean(), "{o:#?}");
}

#[test]
fn seed002_userptr_object_lock_across_pin_user_pages_is_reported() {
    let o = scenarios::seed002_validator().unwrap();
    let found = o.cycles("&obj->mm.lock");
    assert!(!found.is_empty(), "{:#?}", o.reports);
    println!("seed 002:\n{}\n{GUNTHORPE}", found[0]);
}

#[test]
fn seed002_userptr_hangs_when_reclaim_picks_the_objects_own_pages() {
    let o = scenarios::seed002_pressure(true, HANG_LIMIT).unwrap();
    assert!(
        o.hung.iter().any(|h| h.thread == "i915-get-pages"),
        "the populating thread waits for its own object: {:?}",
        o.hung
    );
    assert!(o.direct_reclaim > 0);
    assert!(!o.cycles("&obj->mm.lock").is_empty(), "{:#?}", o.reports);
}

#[test]
fn seed002_the_current_userptr_under_the_same_pressure_is_clean() {
    let o = scenarios::seed002_pressure(false, HANG_LIMIT).unwrap();
    assert!(o.direct_reclaim > 0, "there was pressure");
    assert!(o.is_clean() && o.guest_fault.is_none(), "{o:#?}");
}

#[test]
fn seed003_odp_taking_its_mutex_under_the_oom_reaper_is_reported_non_block() {
    let o = scenarios::seed003(NonBlock::Sleep).unwrap();
    assert!(!o.reap.as_ref().unwrap().gave_up);
    let r = o.sleeping_in("odp.rs");
    assert!(
        r.iter().any(|r| r.to_string().contains("non_block: 1")),
        "{:#?}",
        o.reports
    );
    println!("seed 003:\n{}", r[0]);
}

#[test]
fn seed003_odp_with_trylock_is_skipped_retried_then_reaped() {
    let o = scenarios::seed003(NonBlock::TryLock).unwrap();
    let reap = o.reap.as_ref().unwrap();
    assert!(o.refusals >= 1, "the first attempt was refused");
    assert!(reap.attempts >= 2 && !reap.gave_up, "{reap}");
    assert_eq!(reap.reaped_pages, 8, "{reap}");
    assert!(o.is_clean(), "{o:#?}");
}

#[test]
fn seed004_pre_5_12_leaves_kvms_count_raised_and_the_guest_cannot_fault() {
    let o = scenarios::seed004(Profile::Pre5_12).unwrap();
    let reap = o.reap.as_ref().unwrap();
    assert!(!reap.gave_up && reap.attempts >= 2, "{reap}");
    assert!(o.kvm_in_progress.unwrap() >= 1, "{o:#?}");
    assert!(o.guest_fault_stuck, "{:?}", o.guest_fault);
    assert!(
        o.unbalanced
            .iter()
            .any(|u| u.driver == "kvm-4.19" && u.outstanding >= 1),
        "{:?}",
        o.unbalanced
    );
    println!(
        "seed 004 on pre-5.12: {reap}\n{:?}\n{}",
        o.guest_fault, o.unbalanced[0]
    );
}

#[test]
fn seed004_current_pairs_every_start_and_the_guest_fault_completes() {
    let o = scenarios::seed004(Profile::Current).unwrap();
    let reap = o.reap.as_ref().unwrap();
    assert!(!reap.gave_up && reap.attempts >= 2, "{reap}");
    assert_eq!(
        o.registration_refused,
        Some(true),
        "the 4.19 odp cannot register"
    );
    assert_eq!(o.kvm_in_progress, Some(0));
    assert!(!o.guest_fault_stuck);
    assert!(
        o.guest_fault
            .as_ref()
            .is_some_and(|r| r.as_ref().is_err_and(|e| e.contains("reaped"))),
        "the fault completes with EFAULT: {:?}",
        o.guest_fault
    );
    assert!(o.is_clean(), "{o:#?}");
}
