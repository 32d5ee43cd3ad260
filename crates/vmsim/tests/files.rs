//! Shared memory, files, shmem swap, hole punching, and the driver-facing helpers
//! (`pin_user_pages`, `hmm_range_fault`).

mod common;

use std::sync::Arc;

use common::{Iv, Recorder};
use mmu_notifier::Event;
use vmsim::{Config, Machine, MapRequest, VmError};

const P: u64 = 4096;

#[test]
fn shared_anonymous_memory_stays_shared_across_fork() {
    let m = Machine::new(Config::new(64)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon_shared(2 * P)).unwrap();
    p.write(a, 1).unwrap();
    let c = p.fork().unwrap();
    c.write(a, 2).unwrap();
    assert_eq!(
        p.read(a).unwrap(),
        2,
        "MAP_SHARED: the child's store reaches the parent"
    );
    c.exit().unwrap();
    p.exit().unwrap();
    assert_eq!(m.check().unwrap().used, 0);
}

#[test]
fn private_file_mappings_copy_on_write_and_punching_keeps_private_copies() {
    let m = Machine::new(Config::new(64)).unwrap();
    let f = m.create_file(4, false);
    let writer = m.spawn();
    let w = writer.mmap(MapRequest::file(&f, 0, 4 * P, true)).unwrap();
    writer.write(w, 7).unwrap();
    writer.write(w + P, 8).unwrap();
    let reader = m.spawn();
    let r = reader.mmap(MapRequest::file(&f, 0, 4 * P, false)).unwrap();
    assert_eq!(reader.read(r).unwrap(), 7);
    reader.write(r + P, 80).unwrap(); // a private copy
    assert_eq!(
        writer.read(w + P).unwrap(),
        8,
        "the file is untouched by a private write"
    );
    m.punch_hole(&f, 0, 2).unwrap();
    assert_eq!(
        reader.read(r).unwrap(),
        0,
        "the shared page is gone from the file"
    );
    assert_eq!(
        reader.read(r + P).unwrap(),
        80,
        "a hole punch keeps private copies"
    );
    m.check().unwrap();
}

#[test]
fn dirty_file_pages_are_written_back_and_shmem_pages_swapped() {
    let m = Machine::new(Config::new(64).swap(16)).unwrap();
    let file = m.create_file(2, false);
    let shm = m.create_file(2, true);
    let p = m.spawn();
    let a = p.mmap(MapRequest::file(&file, 0, 2 * P, true)).unwrap();
    let b = p.mmap(MapRequest::file(&shm, 0, 2 * P, true)).unwrap();
    p.write(a, 11).unwrap();
    p.write(b, 22).unwrap();
    p.madvise(a, 2 * P, vmsim::Advice::PageOut).unwrap();
    p.madvise(b, 2 * P, vmsim::Advice::PageOut).unwrap();
    assert_eq!(p.space().rss(), 0);
    assert_eq!(
        m.swap().usage().0,
        1,
        "the shmem page went to swap, the file page to disk"
    );
    m.check().unwrap();
    assert_eq!((p.read(a).unwrap(), p.read(b).unwrap()), (11, 22));
    m.check().unwrap();
}

#[test]
fn hmm_range_fault_reports_frames_and_is_busy_after_an_invalidation() {
    let m = Machine::new(Config::new(64)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(4 * P)).unwrap();
    let rec = Recorder::new();
    let sub = p
        .mm()
        .interval_notifier_insert(a, 4 * P, Iv(rec.clone()))
        .unwrap();
    let seq = sub.read_begin();
    let pfns = p.hmm_range_fault(&sub, seq, a, a + 4 * P, true).unwrap();
    assert_eq!(pfns.len(), 4);
    assert!(pfns.iter().all(|x| x.write));
    assert!(!sub.read_retry(seq), "faulting fires no invalidation");
    // Anything that invalidates the range makes a walk with the old sequence busy.
    p.madvise(a, P, vmsim::Advice::DontNeed).unwrap();
    assert_eq!(rec.starts()[0].0, Event::Clear);
    assert!(matches!(
        p.hmm_range_fault(&sub, seq, a, a + 4 * P, false),
        Err(VmError::Busy)
    ));
    let seq = sub.read_begin();
    assert_eq!(
        p.hmm_range_fault(&sub, seq, a, a + 4 * P, false)
            .unwrap()
            .len(),
        4
    );
    drop(sub);
    let _ = Arc::strong_count(&rec);
}

#[test]
fn pins_hold_frames_after_munmap_until_unpinned() {
    let m = Machine::new(Config::new(64)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(2 * P)).unwrap();
    p.write(a, 3).unwrap();
    let pins = p.pin_user_pages(a, 2, true).unwrap();
    p.munmap(a, 2 * P).unwrap();
    let c = m.check().unwrap();
    assert_eq!(
        c.used, 2,
        "pinned frames outlive the mapping, as a DMA target must"
    );
    assert_eq!(m.frames().frame(pins[0]).unwrap().content(), 3);
    p.unpin_user_pages(&pins).unwrap();
    assert_eq!(m.check().unwrap().used, 0);
    assert!(matches!(
        p.pin_user_pages(a, 1, false),
        Err(VmError::NoMapping(_))
    ));
    assert!(
        p.unpin_user_pages(&pins).is_err(),
        "unpinning twice is an error, not UB"
    );
}
