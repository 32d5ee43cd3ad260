//! Ports of `tools/testing/selftests/mm/hmm-tests.c` to vmsim and `dmirror`: each test keeps
//! the name of the case it ports and checks what the case checks (one content word per page
//! stands for the case's array of ints), plus, after every case, the coherence checker (no
//! stale device access, starts and ends paired) and the machine's invariants. Buffers are 64
//! pages instead of 1024 (`HMM_BUFFER_SIZE`), to keep the debug build quick. The README of the
//! crate lists the cases not ported and why.

use std::sync::Arc;

use drivers::dmirror::{Dmirror, SnapshotPage};
use drivers::{Checker, DriverError};
use vmsim::{vm, Config, Machine, MapRequest, Process, VmError};

const P: u64 = 4096;
const N: u64 = 64;

struct Fixture {
    m: Machine,
    p: Process,
    c: Checker,
    d: Dmirror,
}

fn fixture() -> Fixture {
    let m = Machine::new(Config::new(1024).swap(1024)).unwrap();
    let p = m.spawn();
    let c = Checker::new();
    let d = Dmirror::open(&p, &c, "dmirror0").unwrap();
    Fixture { m, p, c, d }
}

impl Fixture {
    /// hmm-tests' mixed layout over `npages` PROT_NONE pages from `a`: page 0 stays PROT_NONE,
    /// page 1 becomes a hole, 2 read-only (read once: the zero page), 3 read-only with data,
    /// 4.. read-write with data (3 in every data page).
    fn mixed_protections(&self, a: u64, npages: u64) {
        let p = &self.p;
        p.munmap(a + P, P).unwrap();
        p.mprotect(a + 2 * P, P, vm::READ).unwrap();
        assert_eq!(p.read(a + 2 * P).unwrap(), 0);
        p.mprotect(a + 3 * P, P, vm::READ | vm::WRITE).unwrap();
        p.write(a + 3 * P, 3).unwrap();
        p.mprotect(a + 3 * P, P, vm::READ).unwrap();
        p.mprotect(a + 4 * P, (npages - 4) * P, vm::READ | vm::WRITE)
            .unwrap();
        for i in 4..npages {
            p.write(a + i * P, 3).unwrap();
        }
    }
    fn anon(&self, npages: u64) -> u64 {
        self.p.mmap(MapRequest::anon(npages * P)).unwrap()
    }
    fn fill(&self, a: u64, npages: u64, f: impl Fn(u64) -> u64) {
        for i in 0..npages {
            self.p.write(a + i * P, f(i)).unwrap();
        }
    }
    /// The device writes `values` from `a` in exactly one device fault; the CPU sees them.
    fn write_in_one_fault(&self, a: u64, values: &[u64]) {
        let before = self.d.faults();
        self.d.write(a, values).unwrap();
        assert_eq!(self.d.faults() - before, 1);
        assert_eq!(self.cpu(a, values.len() as u64), values);
    }
    /// The device reads `npages` from `a` in exactly one device fault.
    fn read_in_one_fault(&self, a: u64, npages: u64) -> Vec<u64> {
        let before = self.d.faults();
        let v = self.d.read(a, npages as usize).unwrap();
        assert_eq!(self.d.faults() - before, 1);
        v
    }
    fn cpu(&self, a: u64, npages: u64) -> Vec<u64> {
        (0..npages)
            .map(|i| self.p.read(a + i * P).unwrap())
            .collect()
    }
    /// Closes the device, then checks the checker and the machine (the teardown of every case).
    fn done(self) {
        self.d.close().unwrap();
        self.c.check_quiescent().unwrap();
        self.p.exit().unwrap();
        assert_eq!(self.m.check().unwrap().used, 0);
    }
}

fn iota(n: u64) -> Vec<u64> {
    (0..n).collect()
}

fn is_protection(e: &DriverError) -> bool {
    matches!(e, DriverError::Vm(VmError::Protection { .. }))
}

#[test]
fn open_close() {
    fixture().done();
}

#[test]
fn anon_read() {
    let f = fixture();
    let a = f.anon(N);
    f.fill(a + 2 * P, N - 2, |i| i + 2); // the first two pages stay untouched
    f.p.mprotect(a, N * P, vm::READ).unwrap();
    assert_eq!(f.p.read(a + P).unwrap(), 0);
    let v = f.read_in_one_fault(a, N);
    assert_eq!(&v[..2], &[0, 0]);
    assert_eq!(&v[2..], &iota(N)[2..]);
    f.done();
}

#[test]
fn anon_read_prot() {
    let f = fixture();
    let a = f.anon(N);
    f.fill(a, N, |i| i);
    f.p.mprotect(a, N * P, 0).unwrap();
    let e = f.d.read(a, N as usize).unwrap_err();
    assert!(is_protection(&e), "EFAULT expected: {e}");
    f.p.mprotect(a, N * P, vm::READ).unwrap();
    assert_eq!(f.cpu(a, N), iota(N));
    assert_eq!(f.d.mapped(), 0, "the device read nothing");
    f.done();
}

#[test]
fn anon_write() {
    let f = fixture();
    let a = f.anon(N);
    f.write_in_one_fault(a, &iota(N));
    f.done();
}

#[test]
fn anon_write_prot() {
    let f = fixture();
    let a = f.p.mmap(MapRequest::anon(N * P).prot(vm::READ)).unwrap();
    assert_eq!(f.d.read(a, 1).unwrap(), vec![0]);
    let e = f.d.write(a, &iota(N)).unwrap_err();
    assert!(is_protection(&e), "EPERM expected: {e}");
    assert_eq!(f.cpu(a, N), vec![0; N as usize]);
    f.p.mprotect(a, N * P, vm::READ | vm::WRITE).unwrap();
    f.write_in_one_fault(a, &iota(N));
    f.done();
}

#[test]
fn anon_write_child() {
    let f = fixture();
    let a = f.anon(N);
    f.fill(a, N, |i| i);
    let child = f.p.fork().unwrap();
    assert_eq!(
        (0..N)
            .map(|i| child.read(a + i * P).unwrap())
            .collect::<Vec<_>>(),
        iota(N)
    );
    // The child needs its own mirror of its own mm.
    let cd = Dmirror::open(&child, &f.c, "dmirror-child").unwrap();
    let neg: Vec<u64> = (0..N).map(|i| i.wrapping_neg()).collect();
    cd.write(a, &neg).unwrap();
    assert_eq!(
        (0..N)
            .map(|i| child.read(a + i * P).unwrap())
            .collect::<Vec<_>>(),
        neg
    );
    cd.close().unwrap();
    child.exit().unwrap();
    assert_eq!(f.cpu(a, N), iota(N), "the parent's buffer did not change");
    f.done();
}

#[test]
fn anon_write_child_shared() {
    let f = fixture();
    let a = f.p.mmap(MapRequest::anon_shared(N * P)).unwrap();
    f.fill(a, N, |i| i);
    let child = f.p.fork().unwrap();
    let cd = Dmirror::open(&child, &f.c, "dmirror-child").unwrap();
    let neg: Vec<u64> = (0..N).map(|i| i.wrapping_neg()).collect();
    cd.write(a, &neg).unwrap();
    cd.close().unwrap();
    child.exit().unwrap();
    assert_eq!(f.cpu(a, N), neg, "the parent's buffer did change");
    f.done();
}

#[test]
fn file_read() {
    let f = fixture();
    let file = f.m.create_file(N, false);
    let w = f.p.mmap(MapRequest::file(&file, 0, N * P, true)).unwrap();
    f.fill(w, N, |i| i); // pwrite of the initial contents
    f.p.munmap(w, N * P).unwrap();
    let a =
        f.p.mmap(MapRequest::file(&file, 0, N * P, true).prot(vm::READ))
            .unwrap();
    assert_eq!(f.read_in_one_fault(a, N), iota(N));
    drop(file);
    f.done();
}

#[test]
fn file_write() {
    let f = fixture();
    let file = f.m.create_file(N, false);
    let a = f.p.mmap(MapRequest::file(&file, 0, N * P, true)).unwrap();
    f.d.write(a, &iota(N)).unwrap();
    assert_eq!(f.cpu(a, N), iota(N));
    // pread: the file through another mapping.
    let r =
        f.p.mmap(MapRequest::file(&file, 0, N * P, true).prot(vm::READ))
            .unwrap();
    assert_eq!(f.cpu(r, N), iota(N));
    drop(file);
    f.done();
}

fn migrate_and_check(f: &Fixture, a: u64, n: u64) {
    let r = f.d.migrate_to_device(a, n).unwrap();
    assert_eq!(r.moved.len() as u64, n, "{r:?}");
    assert_eq!(f.d.read(a, n as usize).unwrap(), iota(n));
}

#[test]
fn migrate() {
    let f = fixture();
    let a = f.anon(N);
    f.fill(a, N, |i| i);
    migrate_and_check(&f, a, N);
    assert!(
        f.d.own_migrations_skipped() >= 1,
        "its own MIGRATE was skipped"
    );
    f.done();
}

#[test]
fn migrate_file_private() {
    let f = fixture();
    let file = f.m.create_file(N, false);
    let a = f.p.mmap(MapRequest::file(&file, 0, N * P, false)).unwrap();
    f.fill(a, N, |i| i); // every page is now a private (anonymous) copy
    migrate_and_check(&f, a, N);
    drop(file);
    f.done();
}

#[test]
fn migrate_fault() {
    let f = fixture();
    let a = f.anon(N);
    f.fill(a, N, |i| i);
    migrate_and_check(&f, a, N);
    assert_eq!(f.cpu(a, N / 2), iota(N / 2), "half faulted back");
    // The mix of system and device pages: the system half moves, all are on the device.
    let r = f.d.migrate_to_device(a, N).unwrap();
    assert_eq!(r.moved.len() as u64, N / 2, "{r:?}");
    let s = f.d.snapshot(a, N).unwrap();
    assert!(
        s.iter().all(|p| *p == SnapshotPage::DevicePrivateLocal),
        "{s:?}"
    );
    assert_eq!(f.d.read(a, N as usize).unwrap(), iota(N));
    f.done();
}

#[test]
fn migrate_release() {
    let f = fixture();
    let a = f.anon(N);
    f.fill(a, N, |i| i);
    migrate_and_check(&f, a, N);
    // HMM_DMIRROR_RELEASE: the device memory is given back, every page comes home.
    assert_eq!(f.d.migrate_to_system(a, N).unwrap() as u64, N);
    assert_eq!(f.cpu(a, N / 2), iota(N / 2));
    f.done();
}

#[test]
fn migrate_shared() {
    let f = fixture();
    let a = f.p.mmap(MapRequest::anon_shared(N * P)).unwrap();
    f.fill(a, N, |i| i);
    let r = f.d.migrate_to_device(a, N).unwrap();
    assert!(
        r.moved.is_empty(),
        "ENOENT: shared memory is not migrated: {r:?}"
    );
    f.done();
}

#[test]
fn migrate_multiple() {
    let f = fixture();
    for c in 0..10 {
        let a = f.anon(N);
        f.fill(a, N, |i| i);
        migrate_and_check(&f, a, N);
        assert_eq!(f.cpu(a, N), iota(N), "round {c}");
        f.p.munmap(a, N * P).unwrap();
    }
    f.done();
}

#[test]
fn anon_read_multiple() {
    let f = fixture();
    for c in 0..10 {
        let a = f.anon(N);
        f.fill(a, N, |i| i + c);
        let before = f.d.faults();
        assert_eq!(
            f.d.read(a, N as usize).unwrap(),
            (c..N + c).collect::<Vec<_>>()
        );
        assert_eq!(f.d.faults() - before, 1);
        f.p.munmap(a, N * P).unwrap();
    }
    f.done();
}

#[test]
fn anon_teardown() {
    // Device reads racing a munmap of the second half of the buffer, ten times: a read that
    // succeeds saw every value; the checker sees no access through a stale translation.
    let f = fixture();
    let d = Arc::new(f.d);
    let (m, p, c) = (f.m, f.p, f.c);
    let mut completed = 0;
    for round in 0..10u64 {
        let a = p.mmap(MapRequest::anon(N * P)).unwrap();
        for i in 0..N {
            p.write(a + i * P, i + round).unwrap();
        }
        let unmapper = {
            let p2 = p.mmget().unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_micros(round * 37 % 300));
                p2.munmap(a + N / 2 * P, N / 2 * P).unwrap();
            })
        };
        match d.read(a, N as usize) {
            Ok(v) => {
                completed += 1;
                assert_eq!(v, (round..N + round).collect::<Vec<_>>());
            }
            Err(DriverError::Vm(VmError::NoMapping(_))) => {}
            Err(e) => panic!("{e}"),
        }
        unmapper.join().unwrap();
        assert!(
            d.read(a + N / 2 * P, 1).is_err(),
            "the unmapped half is gone"
        );
        p.munmap(a, N / 2 * P).unwrap();
    }
    println!("anon_teardown: {completed}/10 reads completed before the unmap");
    assert!(c.accesses() > 0);
    Fixture {
        m,
        p,
        c,
        d: Arc::into_inner(d).unwrap(),
    }
    .done();
}

#[test]
fn snapshot() {
    // hmm2: two devices. Page 0 PROT_NONE, page 1 a hole, 2 read-only (read once), 3
    // read-only with data, 4 read-write, 5 on device 0, 6 on device 1.
    let f = fixture();
    let d1 = Dmirror::open(&f.p, &f.c, "dmirror1").unwrap();
    let a = f.p.mmap(MapRequest::anon(7 * P).prot(0)).unwrap();
    f.mixed_protections(a, 7);
    assert_eq!(f.d.migrate_to_device(a + 5 * P, 1).unwrap().moved.len(), 1);
    assert_eq!(d1.migrate_to_device(a + 6 * P, 1).unwrap().moved.len(), 1);
    let s = f.d.snapshot(a, 7).unwrap();
    use SnapshotPage::*;
    assert_eq!(
        s,
        vec![None, None, Read, Read, Write, DevicePrivateLocal, None],
        "PROT_NONE and the hole: no translation (hmm-tests expects PROT_ERROR from the VMA walk)"
    );
    d1.close().unwrap();
    f.done();
}

#[test]
fn double_map() {
    let f = fixture();
    let d1 = Dmirror::open(&f.p, &f.c, "dmirror1").unwrap();
    let a = f.anon(6);
    f.fill(a, 6, |i| i);
    f.p.mprotect(a, 6 * P, vm::READ).unwrap();
    assert_eq!(f.d.read(a, 6).unwrap(), iota(6));
    assert_eq!(d1.read(a, 6).unwrap(), iota(6));
    // Migrate to device 1 (mprotect'ed read-only pages are still exclusive anonymous pages).
    f.p.mprotect(a, 6 * P, vm::READ | vm::WRITE).unwrap();
    assert_eq!(d1.migrate_to_device(a, 6).unwrap().moved.len(), 6);
    assert_eq!(
        f.d.mapped(),
        0,
        "device 0 lost its mappings to device 1's migration"
    );
    assert_eq!(
        f.d.read(a, 6).unwrap(),
        iota(6),
        "device 0 faults them back"
    );
    d1.close().unwrap();
    f.done();
}

#[test]
fn migrate_mixed() {
    // hmm2: pages 2-5 of read-only / read-write pages migrate to device 1; page 5, now on
    // device 1, is not migrated to device 0 (ENOENT).
    let f = fixture();
    let d1 = Dmirror::open(&f.p, &f.c, "dmirror1").unwrap();
    let a = f.p.mmap(MapRequest::anon(6 * P).prot(0)).unwrap();
    assert!(f.d.migrate_to_device(a, 6).unwrap().moved.is_empty());
    f.mixed_protections(a, 6);
    assert_eq!(d1.migrate_to_device(a + 2 * P, 4).unwrap().moved.len(), 4);
    assert!(f
        .d
        .migrate_to_device(a + 5 * P, 1)
        .unwrap()
        .moved
        .is_empty());
    d1.close().unwrap();
    f.done();
}

#[test]
fn hmm_gup_test() {
    let f = fixture();
    let a = f.anon(4);
    f.fill(a, 4, |i| i);
    migrate_and_check(&f, a, 4);
    for i in 0..4 {
        // pin_user_pages(FOLL_LONGTERM): a device-private page is migrated back first.
        let pinned = f.p.pin_user_pages(a + i * P, 1, i % 2 == 0).unwrap();
        f.p.unpin_user_pages(&pinned).unwrap();
    }
    assert_eq!(f.d.snapshot(a, 4).unwrap(), vec![SnapshotPage::Write; 4]);
    assert_eq!(f.cpu(a, 4), iota(4));
    f.done();
}

#[test]
fn hmm_cow_in_device() {
    let f = fixture();
    let a = f.anon(4);
    f.fill(a, 4, |i| i);
    migrate_and_check(&f, a, 4);
    let child = f.p.fork().unwrap();
    f.fill(a, 4, |i| i); // the parent's writes migrate the pages back first
    child.exit().unwrap();
    assert_eq!(f.d.snapshot(a, 4).unwrap(), vec![SnapshotPage::Write; 4]);
    f.done();
}

#[test]
fn migrate_partial_unmap_fault() {
    // The 4 KiB variant: migrate, unmap a quarter-aligned half, fault the rest back.
    for off in [0, N / 4, N / 2] {
        let f = fixture();
        let a = f.anon(N);
        f.fill(a, N, |i| i);
        migrate_and_check(&f, a, N);
        f.p.munmap(a + off * P, N / 2 * P).unwrap();
        for i in (0..N).filter(|i| *i < off || *i >= off + N / 2) {
            assert_eq!(f.p.read(a + i * P).unwrap(), i);
        }
        f.done();
    }
}

#[test]
fn migrate_remap_fault() {
    // The 4 KiB variant, mremap before or after the migration (no MREMAP_DONTUNMAP).
    for before in [true, false] {
        let f = fixture();
        let a = f.anon(N);
        let dst = f.anon(2 * N);
        f.p.munmap(dst, 2 * N * P).unwrap();
        f.fill(a, N, |i| i);
        let mut at = a;
        if before {
            at = f.p.mremap_move(a, N * P, Some(dst + N / 4 * P)).unwrap();
        }
        migrate_and_check(&f, at, N);
        if !before {
            at = f.p.mremap_move(a, N * P, Some(dst + N / 4 * P)).unwrap();
        }
        assert_eq!(f.cpu(at, N), iota(N));
        f.done();
    }
}
