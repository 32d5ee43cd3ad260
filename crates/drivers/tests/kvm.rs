//! KVM's aging and registration rules through the simulated kernel.

use drivers::kvm::{Kvm, KvmVariant};
use drivers::{Checker, DriverError};
use mmu_notifier::Profile;
use vmsim::{Advice, Config, Machine, MapRequest, Process};

const P: u64 = 4096;

/// A machine with swap, a process with one anonymous page holding 5 at `a`, and a current KVM
/// on it.
fn guest_page() -> (Machine, Process, u64, Checker, Kvm) {
    let m = Machine::new(Config::new(128).swap(128)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(P)).unwrap();
    p.write(a, 5).unwrap();
    let c = Checker::new();
    let vm = Kvm::create(&p, &c, "kvm", KvmVariant::Current).unwrap();
    (m, p, a, c, vm)
}

#[test]
fn a_page_the_guest_used_is_kept_once_by_clear_flush_young_which_clears_the_young_bit() {
    let (m, p, a, c, vm) = guest_page();
    assert_eq!(vm.guest_read(a).unwrap(), 5); // the SPTE is young
    p.madvise(a, P, Advice::Cold).unwrap(); // the primary's young bit is cleared
                                            // vmsim's reclaim looks at the inactive list twice per call: the first look finds the
                                            // SPTE young (kept, and the bit cleared), the second finds nobody used it since.
    assert_eq!(m.reclaim(1), 1);
    assert_eq!(m.stats().referenced, 1, "kept once: the guest had used it");
    assert_eq!(vm.mapped(), 0, "swap-out zapped the SPTE in the start");
    assert_eq!(
        vm.guest_read(a).unwrap(),
        5,
        "the guest faults it back from swap"
    );
    vm.destroy().unwrap();
    c.check_quiescent().unwrap();
}

#[test]
fn without_guest_accesses_the_page_goes_at_once() {
    let (m, p, a, c, vm) = guest_page();
    p.madvise(a, P, Advice::Cold).unwrap();
    assert_eq!(m.reclaim(1), 1);
    assert_eq!(m.stats().referenced, 0, "nobody had used it");
    vm.destroy().unwrap();
    c.check_quiescent().unwrap();
}

#[test]
fn the_4_19_notifier_registers_only_on_the_pre_5_12_profile() {
    for (profile, ok) in [(Profile::Current, false), (Profile::Pre5_12, true)] {
        let m = Machine::new(Config::new(64).profile(profile)).unwrap();
        let p = m.spawn();
        let c = Checker::new();
        match Kvm::create(&p, &c, "kvm-4.19", KvmVariant::V4_19) {
            Ok(vm) => {
                assert!(ok, "{profile:?}");
                vm.destroy().unwrap();
            }
            Err(e) => {
                assert!(!ok, "{profile:?}: {e}");
                assert!(matches!(
                    e,
                    DriverError::Notifier(mmu_notifier::Error::InvalidOps(_))
                ));
            }
        }
    }
}
