//! Issue 9, class 1 with the heap: `brk` shrink is an unmap (`do_vmi_align_munmap` with the
//! userfaultfd unmap list, `mm/mmap.c`), so a cached heap range is invalidated when the break
//! moves below it; growing the break again makes new, unregistered memory, which is registered
//! again (verified) before it is cached. One test in its own binary: it moves the program break,
//! and it checks before every shrink that nobody else (malloc) moved it meanwhile.

use hostmm::MonitorConfig;

mod common;
use common::{cache_over, monitor_or_skip};

fn brk_now() -> u64 {
    // SAFETY: sbrk(0) only reads the current break.
    unsafe { libc::sbrk(0) as u64 }
}

fn sbrk(delta: i64) -> Option<u64> {
    // SAFETY: the test only moves the break over memory it added itself, after checking the
    // break is where it left it.
    let p = unsafe { libc::sbrk(delta as libc::intptr_t) };
    (p as isize != -1).then_some(p as u64)
}

#[test]
fn brk_shrink_invalidates_and_regrown_heap_is_registered_again() {
    let Some((_serial, host, mon)) = monitor_or_skip(MonitorConfig::default()) else {
        return;
    };
    let cache = cache_over(&host, &mon);
    let page = hostmm::page_size();
    let start = brk_now();
    let pad = (page - start % page) % page;
    let Some(_) = sbrk((pad + 4 * page) as i64) else {
        eprintln!("skipping: the break cannot grow here");
        return;
    };
    let heap = start + pad;
    let end = heap + 4 * page;
    let h = cache.get(heap, 4 * page).unwrap();
    assert!(h.is_valid());
    // Shrink by two pages: the top half of the cached range is unmapped.
    assert_eq!(brk_now(), end, "the break moved under the test (malloc?)");
    sbrk(-2 * page as i64).unwrap();
    host.gate().wait();
    assert!(!h.is_valid(), "brk shrink left the heap range cached");
    assert!(mon.stats().unmaps > 0);
    // Grow back: new memory; the range is cached again only once it is registered again.
    sbrk(2 * page as i64).unwrap();
    let again = cache.get(heap, 4 * page).unwrap();
    assert!(again.is_valid());
    let unmaps = mon.stats().unmaps;
    assert_eq!(brk_now(), end, "the break moved under the test (malloc?)");
    sbrk(-2 * page as i64).unwrap();
    host.gate().wait();
    assert!(
        mon.stats().unmaps > unmaps,
        "the regrown pages raised no UNMAP"
    );
    assert!(!again.is_valid());
    // Give back what this test added.
    assert_eq!(brk_now(), heap + 2 * page);
    sbrk(-((pad + 2 * page) as i64)).unwrap();
    drop((h, again, cache));
}
