//! Misuse and operations on a gone address space are typed errors, never panics.

use drivers::dmirror::Dmirror;
use drivers::kvm::{Kvm, KvmVariant};
use drivers::odp::{NonBlock, OdpMr};
use drivers::sva::Sva;
use drivers::userptr::Userptr;
use drivers::{Checker, DriverError};
use vmsim::{Config, Machine, MapRequest, VmError};

const P: u64 = 4096;

#[test]
fn accesses_outside_a_region_or_object_are_out_of_range() {
    let m = Machine::new(Config::new(128)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(8 * P)).unwrap();
    let c = Checker::new();
    let mr = OdpMr::register(&p, &c, "odp", a, 4 * P, NonBlock::TryLock).unwrap();
    assert!(matches!(
        mr.page_fault(a + 2 * P, 4, false),
        Err(DriverError::OutOfRange { .. })
    ));
    assert!(matches!(
        mr.dma_read(a - P, 1),
        Err(DriverError::OutOfRange { .. })
    ));
    let o = Userptr::create(&p, &c, "userptr", a, 4).unwrap();
    assert!(matches!(
        o.gpu_access(&p, 4, None),
        Err(DriverError::OutOfRange { .. })
    ));
    mr.deregister().unwrap();
    o.close(&p).unwrap();
    c.check_quiescent().unwrap();
}

#[test]
fn a_device_access_to_a_hole_is_the_kernels_error() {
    let m = Machine::new(Config::new(128)).unwrap();
    let p = m.spawn();
    let c = Checker::new();
    let d = Dmirror::open(&p, &c, "dmirror").unwrap();
    assert!(matches!(
        d.read(0x40_0000, 1),
        Err(DriverError::Vm(VmError::NoMapping(_)))
    ));
    d.close().unwrap();
}

#[test]
fn devices_of_an_exited_process_report_released() {
    let m = Machine::new(Config::new(128)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(4 * P)).unwrap();
    p.write(a, 1).unwrap();
    let c = Checker::new();
    let d = Dmirror::open(&p, &c, "dmirror").unwrap();
    let vm = Kvm::create(&p, &c, "kvm", KvmVariant::Current).unwrap();
    let io = Sva::bind(&p, &c, "sva").unwrap();
    assert_eq!(io.dma(a, None).unwrap(), 1);
    assert_eq!(vm.guest_read(a).unwrap(), 1);
    p.exit().unwrap();
    assert!(matches!(d.read(a, 1), Err(DriverError::Released)));
    assert!(matches!(
        vm.guest_fault(a, false),
        Err(DriverError::Released)
    ));
    assert!(matches!(io.dma(a, None), Err(DriverError::Released)));
    assert_eq!(vm.mapped(), 0);
    assert_eq!(io.cached(), 0);
    d.close().unwrap();
    vm.destroy().unwrap();
    io.unbind().unwrap();
    c.check_quiescent().unwrap();
    assert_eq!(m.check().unwrap().used, 0);
}
