//! Each operation fires exactly the notifier events Linux fires at that call site (functions
//! cited per test), with the same ranges and blockability.

mod common;

use common::{recording, List, Recorder, Seen};
use mmu_notifier::Event;
use vmsim::{vm, Advice, Config, Machine, MapRequest, VmError};

const P: u64 = 4096;

fn machine(frames: usize) -> Machine {
    Machine::new(Config::new(frames).swap(frames as u32)).unwrap()
}

#[test]
fn anonymous_faults_fire_nothing_and_munmap_fires_one_unmap_over_the_span() {
    // do_anonymous_page: no notifier. unmap_vmas: one MMU_NOTIFY_UNMAP over the span, blockable.
    let m = machine(256);
    let p = m.spawn();
    let rec = Recorder::new();
    let _sub = p.mm().register(List(rec.clone(), recording())).unwrap();
    let a = p.mmap(MapRequest::anon(8 * P)).unwrap();
    for i in 0..8 {
        p.write(a + i * P, i).unwrap();
    }
    assert!(rec.take().is_empty(), "faults fire no invalidation");
    assert_eq!(p.space().rss(), 8);
    p.munmap(a + 2 * P, 4 * P).unwrap();
    assert_eq!(
        rec.take(),
        vec![
            Seen::Start(Event::Unmap, a + 2 * P, a + 6 * P, true),
            Seen::End(Event::Unmap, a + 2 * P, a + 6 * P, true)
        ]
    );
    assert_eq!(p.space().rss(), 4);
    assert_eq!(p.read(a + 7 * P).unwrap(), 7);
    assert!(matches!(p.read(a + 3 * P), Err(VmError::NoMapping(_))));
    m.check().unwrap();
}

#[test]
fn fork_notifies_only_the_parent_and_a_cow_break_fires_one_clear() {
    // copy_page_range: PROTECTION_PAGE over the source VMA on the parent. wp_page_copy: CLEAR
    // over one page.
    let m = machine(256);
    let parent = m.spawn();
    let a = parent.mmap(MapRequest::anon(4 * P)).unwrap();
    parent.write(a, 1).unwrap();
    parent.write(a + P, 2).unwrap();
    let prec = Recorder::new();
    let _ps = parent
        .mm()
        .register(List(prec.clone(), recording()))
        .unwrap();
    let child = parent.fork().unwrap();
    assert_eq!(
        prec.take(),
        vec![
            Seen::Start(Event::ProtectionPage, a, a + 4 * P, true),
            Seen::End(Event::ProtectionPage, a, a + 4 * P, true)
        ]
    );
    let crec = Recorder::new();
    let _cs = child
        .mm()
        .register(List(crec.clone(), recording()))
        .unwrap();
    assert_eq!(
        child.read(a).unwrap(),
        1,
        "the child sees the parent's data"
    );
    parent.write(a, 10).unwrap();
    assert_eq!(
        prec.take(),
        vec![
            Seen::Start(Event::Clear, a, a + P, true),
            Seen::End(Event::Clear, a, a + P, true)
        ]
    );
    assert_eq!(
        child.read(a).unwrap(),
        1,
        "copy-on-write kept the child's copy"
    );
    // The child is now the only mapper of the old frame: its write reuses it, no event.
    child.write(a, 20).unwrap();
    assert!(crec.take().is_empty());
    assert_eq!(parent.read(a).unwrap(), 10);
    assert_eq!(m.stats().cow, 1);
    m.check().unwrap();
    child.exit().unwrap();
    parent.exit().unwrap();
    let c = m.check().unwrap();
    assert_eq!(c.used, 0, "every frame comes back after both exit");
}

#[test]
fn fork_copies_pinned_pages_for_the_child() {
    // copy_present_page: a FOLL_PIN'd anonymous page is copied at fork, not shared.
    let m = machine(256);
    let parent = m.spawn();
    let a = parent.mmap(MapRequest::anon(P)).unwrap();
    parent.write(a, 5).unwrap();
    let pins = parent.pin_user_pages(a, 1, true).unwrap();
    let child = parent.fork().unwrap();
    parent.write(a, 6).unwrap();
    assert_eq!(
        m.stats().cow,
        0,
        "the parent keeps writing to the pinned frame"
    );
    assert_eq!(m.frames().frame(pins[0]).unwrap().content(), 6);
    assert_eq!(child.read(a).unwrap(), 5);
    parent.unpin_user_pages(&pins).unwrap();
    m.check().unwrap();
}

#[test]
fn dontfork_ranges_are_not_copied() {
    let m = machine(64);
    let parent = m.spawn();
    let a = parent.mmap(MapRequest::anon(2 * P)).unwrap();
    parent.write(a, 1).unwrap();
    parent.madvise(a, P, Advice::DontFork).unwrap();
    let child = parent.fork().unwrap();
    assert!(matches!(child.read(a), Err(VmError::NoMapping(_))));
    assert_eq!(child.read(a + P).unwrap(), 0);
}

#[test]
fn mremap_move_fires_unmap_over_the_old_range_and_keeps_content() {
    // move_page_tables: MMU_NOTIFY_UNMAP over the old range.
    let m = machine(64);
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(2 * P)).unwrap();
    p.write(a, 7).unwrap();
    p.write(a + P, 8).unwrap();
    let rec = Recorder::new();
    let _s = p.mm().register(List(rec.clone(), recording())).unwrap();
    let b = p.mremap_move(a, 2 * P, None).unwrap();
    assert_ne!(a, b);
    assert_eq!(rec.starts(), vec![(Event::Unmap, a, a + 2 * P, true)]);
    assert_eq!((p.read(b).unwrap(), p.read(b + P).unwrap()), (7, 8));
    assert!(p.read(a).is_err());
    assert!(rec.starts().len() == 1, "no fault after the move");
    m.check().unwrap();
}

#[test]
fn mprotect_fires_protection_vma_only_where_page_tables_exist() {
    // change_pud_range initialises the range at the first populated entry.
    let m = machine(64);
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(1024 * P)).unwrap();
    let rec = Recorder::new();
    let _s = p.mm().register(List(rec.clone(), recording())).unwrap();
    p.mprotect(a, P, vm::READ).unwrap();
    assert!(rec.take().is_empty(), "no page tables, no invalidation");
    p.write(a + P, 1).unwrap();
    p.mprotect(a + P, P, vm::READ).unwrap();
    assert_eq!(
        rec.starts(),
        vec![(Event::ProtectionVma, a + P, a + 2 * P, true)]
    );
    assert!(matches!(p.write(a + P, 2), Err(VmError::Protection { .. })));
    assert_eq!(p.read(a + P).unwrap(), 1);
    assert!(matches!(
        p.mprotect(a + 2048 * P, P, vm::READ),
        Err(VmError::NoMapping(_))
    ));
}

#[test]
fn madvise_dontneed_fires_clear_per_vma_clipped_and_cold_fires_none() {
    // madvise_dontneed_free → zap_page_range_single: CLEAR per VMA, clipped to the request.
    let m = machine(64);
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(4 * P)).unwrap();
    p.mprotect(a + 2 * P, 2 * P, vm::READ).unwrap(); // two VMAs now
    p.touch(a, 4 * P, false).unwrap();
    let rec = Recorder::new();
    let _s = p.mm().register(List(rec.clone(), recording())).unwrap();
    p.madvise(a, 4 * P, Advice::Cold).unwrap();
    assert!(rec.starts().is_empty(), "MADV_COLD fires no invalidation");
    p.madvise(a + P, 2 * P, Advice::DontNeed).unwrap();
    assert_eq!(
        rec.starts(),
        vec![
            (Event::Clear, a + P, a + 2 * P, true),
            (Event::Clear, a + 2 * P, a + 3 * P, true)
        ]
    );
    assert_eq!(p.space().rss(), 2);
    assert_eq!(p.read(a + P).unwrap(), 0, "zero-filled again");
    m.check().unwrap();
}

#[test]
fn exit_releases_once_then_unmaps_everything_for_interval_subscribers() {
    // exit_mmap: mmu_notifier_release, then unmap_vmas with UNMAP [0, MAX).
    let m = machine(64);
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(2 * P)).unwrap();
    p.write(a, 1).unwrap();
    let rec = Recorder::new();
    let _s = p.mm().register(List(rec.clone(), recording())).unwrap();
    let irec = Recorder::new();
    let iv = p
        .mm()
        .interval_notifier_insert(a, 2 * P, common::Iv(irec.clone()))
        .unwrap();
    let q = p.mmget().unwrap();
    drop(p);
    assert!(rec.take().is_empty(), "a remaining user keeps the mm alive");
    q.exit().unwrap();
    assert_eq!(
        rec.take(),
        vec![Seen::Release],
        "list subscribers: release, once"
    );
    let seen = irec.starts();
    assert_eq!(
        seen.len(),
        2,
        "interval: Release, then the exit Unmap: {seen:?}"
    );
    assert_eq!(seen[0].0, Event::Release);
    assert_eq!(seen[1].0, Event::Unmap);
    assert!(seen.iter().all(|s| s.3), "both blockable");
    drop(iv);
    assert_eq!(m.check().unwrap().used, 0);
}

#[test]
fn truncate_unmaps_the_file_from_every_process() {
    // unmap_mapping_range → zap_page_range_single: CLEAR per mapping VMA, clipped.
    let m = machine(64);
    let f = m.create_file(4, true);
    let p1 = m.spawn();
    let p2 = m.spawn();
    let a1 = p1.mmap(MapRequest::file(&f, 0, 4 * P, true)).unwrap();
    let a2 = p2.mmap(MapRequest::file(&f, 0, 4 * P, true)).unwrap();
    p1.write(a1 + 3 * P, 33).unwrap();
    assert_eq!(
        p2.read(a2 + 3 * P).unwrap(),
        33,
        "shared through the page cache"
    );
    let (r1, r2) = (Recorder::new(), Recorder::new());
    let _s1 = p1.mm().register(List(r1.clone(), recording())).unwrap();
    let _s2 = p2.mm().register(List(r2.clone(), recording())).unwrap();
    m.truncate(&f, 2).unwrap();
    assert_eq!(
        r1.starts(),
        vec![(Event::Clear, a1 + 2 * P, a1 + 4 * P, true)]
    );
    assert_eq!(
        r2.starts(),
        vec![(Event::Clear, a2 + 2 * P, a2 + 4 * P, true)]
    );
    assert!(matches!(p2.read(a2 + 3 * P), Err(VmError::Bus(_))));
    m.check().unwrap();
}

#[test]
fn misuse_is_a_typed_error() {
    let m = machine(16);
    let p = m.spawn();
    assert!(matches!(
        p.munmap(0x1001, P),
        Err(VmError::InvalidArgument(_))
    ));
    assert!(matches!(
        p.mmap(MapRequest::anon(P).prot(0x100)),
        Err(VmError::InvalidArgument(_))
    ));
    assert!(matches!(
        p.mmap(MapRequest::anon(0)),
        Err(VmError::InvalidArgument(_))
    ));
    let a = p.mmap(MapRequest::anon(P)).unwrap();
    assert!(matches!(
        p.mmap(MapRequest::anon(P).noreplace(a)),
        Err(VmError::Overlap { .. })
    ));
    assert!(matches!(p.read(a + 16 * P), Err(VmError::NoMapping(_))));
    assert!(matches!(
        Machine::new(Config::new(16).watermarks(8, 4, 2)),
        Err(VmError::InvalidArgument(_))
    ));
    assert!(matches!(
        Machine::new(Config::new(0)),
        Err(VmError::InvalidArgument(_))
    ));
}

#[test]
fn migration_fires_clear_per_mapping_and_keeps_content_in_every_process() {
    // try_to_migrate_one: CLEAR per mapping; remove_migration_ptes: none.
    let m = machine(64);
    let parent = m.spawn();
    let a = parent.mmap(MapRequest::anon(P)).unwrap();
    parent.write(a, 42).unwrap();
    let child = parent.fork().unwrap(); // the page is now mapped in two processes
    let (rp, rc) = (Recorder::new(), Recorder::new());
    let _sp = parent.mm().register(List(rp.clone(), recording())).unwrap();
    let _sc = child.mm().register(List(rc.clone(), recording())).unwrap();
    let before = parent.pin_user_pages(a, 1, false).unwrap();
    assert_eq!(
        parent.migrate_pages(a, 1).unwrap().skipped,
        1,
        "pinned pages stay"
    );
    parent.unpin_user_pages(&before).unwrap();
    let r = parent.migrate_pages(a, 1).unwrap();
    assert_eq!(r.moved.len(), 1);
    assert_ne!(r.moved[0].1, before[0]);
    assert_eq!(rp.starts(), vec![(Event::Clear, a, a + P, true)]);
    assert_eq!(rc.starts(), vec![(Event::Clear, a, a + P, true)]);
    assert_eq!((parent.read(a).unwrap(), child.read(a).unwrap()), (42, 42));
    m.check().unwrap();
}

#[test]
fn device_migration_is_owner_tagged_and_a_cpu_fault_brings_the_page_back() {
    // migrate_vma_collect: MIGRATE over the range with the pgmap owner; migrate_to_ram: MIGRATE.
    let m = machine(64);
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(2 * P)).unwrap();
    p.write(a, 5).unwrap();
    p.write(a + P, 6).unwrap();
    let rec = Recorder::new();
    let _s = p.mm().register(List(rec.clone(), recording())).unwrap();
    let owner = mmu_notifier::Owner(77);
    let r = p.migrate_to_device(a, a + 2 * P, owner, |_, v| v).unwrap();
    assert_eq!(r.moved.len(), 2);
    assert_eq!(rec.starts(), vec![(Event::Migrate, a, a + 2 * P, true)]);
    assert_eq!(
        p.space().rss(),
        0,
        "device-private pages are not resident on the CPU"
    );
    m.check().unwrap();
    rec.take();
    assert_eq!(
        p.read(a + P).unwrap(),
        6,
        "a CPU access migrates the page back"
    );
    assert_eq!(rec.starts(), vec![(Event::Migrate, a + P, a + 2 * P, true)]);
    p.munmap(a, 2 * P).unwrap();
    assert_eq!(
        m.check().unwrap().used,
        0,
        "the device page left is freed by munmap"
    );
}

#[test]
fn an_invariant_violation_names_the_operation_and_thread() {
    let m = machine(8);
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(P)).unwrap();
    let pins = p.pin_user_pages(a, 1, true).unwrap();
    p.unpin_user_pages(&pins).unwrap();
    let handle = std::thread::Builder::new()
        .name("unpinner".into())
        .spawn(move || {
            let _op = m.enter("double unpin");
            p.unpin_user_pages(&pins)
        })
        .unwrap();
    match handle.join().unwrap() {
        Err(VmError::Invariant(msg)) => {
            assert!(msg.contains("unpin of an unpinned frame"), "{msg}");
            assert!(msg.contains("in double unpin on thread unpinner"), "{msg}");
        }
        other => panic!("expected an invariant violation, got {other:?}"),
    }
}

#[test]
fn users_are_the_contracts_users_and_references_outlive_them() {
    // mm_users vs mm_count: processes are the contract's users; a space handle is a reference.
    let m = machine(16);
    let p = m.spawn();
    assert_eq!(p.mm().users(), 1);
    let q = p.mmget().unwrap();
    assert_eq!(p.mm().users(), 2);
    let reference = p.space().clone();
    drop(p);
    assert_eq!(q.mm().users(), 1);
    assert!(!q.mm().is_released());
    q.exit().unwrap();
    assert_eq!(reference.mm().users(), 0);
    assert!(
        reference.mm().is_released(),
        "the last user's exit_mmap released it"
    );
    assert!(
        vmsim::Space::mmget_not_zero(&reference).is_none(),
        "no user comes back"
    );
    assert!(reference.mm().get_user().is_none());
}
