//! Model tests of the cache's lock-free hit path (`cache/publish.rs`, `cache/regcache.rs`), run
//! with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p hostmm --test loom_publish --release`.
//!
//! The real publication cell and its reader slots and grace period (`hostmm::publish`, loom's
//! atomics under `cfg(loom)`, where the asymmetric fences are modelled by read-modify-writes on
//! the slots) and the real pending gate; the entry, the map and the interval's sequence are
//! modelled by the rules `regcache.rs` keeps:
//!
//! * a miss took `read_begin` before the unmap started; it publishes under the writers' lock
//!   only if the sequence did not move: it sets the entry's flags, then replaces the index with
//!   one that contains the entry;
//! * the invalidation (the uffd monitor: window opened, then `read()` releases the unmapping
//!   thread, then the callback; or a bracketed call: the callback, then the call returns) takes
//!   the writers' lock, moves the sequence and clears the flag of a published entry;
//! * a lookup that starts after the unmap returned passes the gate, pins, reads whichever index
//!   is published, and accepts an entry only if its flag is set — **no lock**.
//!
//! Claim: that lookup never accepts the entry, and at the end no entry describing the unmapped
//! memory is valid. Without the gate wait the model finds a stale hit (the `should_panic` test).
#![cfg(loom)]

use hostmm::gate::{Opener, PendingGate};
use hostmm::publish::{self, Published};
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

/// One cache entry's flags (`EntryState`).
struct Flags {
    valid: AtomicBool,
    published: AtomicBool,
}

/// What hits search: the entries of the map, as published.
type Snapshot = Vec<Arc<Flags>>;

struct Cache {
    /// The writers' lock over the map (the map itself: `Vec` of entries).
    map: Mutex<Vec<Arc<Flags>>>,
    index: Published<Snapshot>,
    /// The interval's sequence, moved by the invalidation under the lock (`set_seq`).
    seq: AtomicU64,
}

/// The miss's publish step (begin sequence `begin`).
fn publish_miss(c: &Cache, entry: &Arc<Flags>, begin: u64) {
    let mut map = c.map.lock().unwrap();
    if c.seq.load(Ordering::Acquire) != begin {
        return; // read_retry: collided, the registration is released
    }
    entry.valid.store(true, Ordering::Release);
    entry.published.store(true, Ordering::Release);
    map.push(entry.clone());
    c.index.replace(map.clone());
}

/// The entry's interval-notifier callback (it holds the entry's flags, as `EntryOps` does).
fn invalidate(c: &Cache, entry: &Flags) {
    let _map = c.map.lock().unwrap();
    c.seq.store(1, Ordering::Release);
    if entry.published.load(Ordering::Acquire) {
        entry.valid.swap(false, Ordering::AcqRel);
    }
}

/// A hit: no lock; any published index; the entry's own flag decides.
fn hit(c: &Cache) -> bool {
    let guard = publish::pin();
    c.index
        .read(&guard)
        .iter()
        .any(|e| e.valid.load(Ordering::Acquire))
}

/// The unmapping thread: under uffd the monitor opens the pending window, its `read()` lets
/// `munmap` return (`released`), then the callback runs and the window closes; bracketed, the
/// callback runs, then the wrapper returns.
fn spawn_unmap(
    uffd: bool,
    opener: Opener,
    released: Arc<AtomicBool>,
    invalidate: impl FnOnce() + Send + 'static,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        if uffd {
            let w = opener.open();
            released.store(true, Ordering::Release);
            invalidate();
            drop(w);
        } else {
            invalidate();
            released.store(true, Ordering::Release);
        }
    })
}

fn model(uffd: bool, gate_wait: bool) {
    loom::model(move || {
        let gate = PendingGate::new();
        let opener = gate.opener().unwrap();
        let cache = Arc::new(Cache {
            map: Mutex::new(Vec::new()),
            index: Published::new(Vec::new()),
            seq: AtomicU64::new(0),
        });
        let released = Arc::new(AtomicBool::new(false));
        let entry = Arc::new(Flags {
            valid: AtomicBool::new(false),
            published: AtomicBool::new(false),
        });
        // The miss took read_begin before the unmap started.
        let begin = cache.seq.load(Ordering::Acquire);

        let (c2, e2) = (cache.clone(), entry.clone());
        let miss = thread::spawn(move || publish_miss(&c2, &e2, begin));

        let (c3, e3) = (cache.clone(), entry.clone());
        let unmap = spawn_unmap(uffd, opener, released.clone(), move || invalidate(&c3, &e3));

        // The unmapping thread's next lookup.
        while !released.load(Ordering::Acquire) {
            thread::yield_now();
        }
        if gate_wait {
            gate.wait();
        }
        assert!(
            !hit(&cache),
            "a lookup after the unmap returned hit a stale entry"
        );

        miss.join().unwrap();
        unmap.join().unwrap();
        assert!(
            !entry.valid.load(Ordering::Acquire),
            "an entry of the unmapped memory stayed valid"
        );
    });
}

#[test]
fn uffd_a_lookup_after_munmap_returned_never_hits_the_old_entry() {
    model(true, true);
}

#[test]
fn bracketed_a_lookup_after_the_call_returned_never_hits_the_old_entry() {
    model(false, true);
}

#[test]
#[should_panic(expected = "stale entry")]
fn without_the_gate_wait_the_model_finds_a_stale_hit() {
    model(true, false);
}

/// A value whose drop is recorded outside it.
struct Tracked {
    id: u64,
    freed: Arc<AtomicBool>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.freed.store(true, Ordering::SeqCst);
    }
}

/// The grace period (reclaim after every retirement under loom): a value a reader loaded is not
/// freed while the reader is inside, whatever the interleaving of the reader's entry with the
/// writer's swap, retirement and reclaim; and it is freed once the reader has left.
#[test]
fn a_replaced_value_is_not_freed_under_a_reader() {
    loom::model(|| {
        let freed0 = Arc::new(AtomicBool::new(false));
        let cell = Arc::new(Published::new(Tracked {
            id: 0,
            freed: freed0.clone(),
        }));
        let (c2, f2) = (cell.clone(), freed0.clone());
        let reader = thread::spawn(move || {
            let g = publish::pin();
            let v = cell_id(&c2, &g);
            thread::yield_now();
            if v == 0 {
                assert!(!f2.load(Ordering::SeqCst), "freed under a reader");
            }
            drop(g);
        });
        for id in 1..=2 {
            cell.replace(Tracked {
                id,
                freed: Arc::new(AtomicBool::new(false)),
            });
        }
        reader.join().unwrap();
        // The reader has left: the next reclaim frees the first value.
        cell.replace(Tracked {
            id: 3,
            freed: Arc::new(AtomicBool::new(false)),
        });
        assert!(freed0.load(Ordering::SeqCst), "never reclaimed");
    });
}

fn cell_id(c: &Published<Tracked>, g: &publish::Guard) -> u64 {
    c.read(g).id
}

// ---------------------------------------------------------------------------------------------
// The tail path: a miss appends its range in place to the published index's tail
// (`Index::push`, `regcache.rs` `publish_added`) instead of rebuilding, and rebuilds when the
// tail is full (`TAIL` is 2 under loom); a removal (a flush of dead entries) rebuilds. With the
// real `Index` and the real publication cell; the map's records and anchors are modelled as
// `regcache.rs` keeps them.

use hostmm::index::{Index, TAIL};
use std::ptr::NonNull;

/// Nodes are counted outside loom: a failed model drops what its grace period still holds after
/// loom's state is gone.
type NodeRef = std::sync::Arc<Node>;

const PAGE: u64 = 4096;

/// A cache entry as a hit reaches it through the index: its range's start (one page long), its
/// flags, and whether the map's anchor of it has been dropped (what the grace period delays: in
/// `regcache.rs` that drop may free the memory the index points to).
struct Node {
    start: u64,
    valid: AtomicBool,
    published: AtomicBool,
    freed: AtomicBool,
}

fn node(start: u64, valid: bool) -> NodeRef {
    NodeRef::new(Node {
        start,
        valid: AtomicBool::new(valid),
        published: AtomicBool::new(valid),
        freed: AtomicBool::new(false),
    })
}

/// The map's record of a node (`Rec`'s anchor): dropping it is "freeing" the node. The model
/// keeps every node's memory alive itself, so a reader that reaches a freed node reports it
/// instead of reading freed memory.
struct Anchor(NodeRef);

impl Drop for Anchor {
    fn drop(&mut self) {
        // Not while a failed model unwinds: loom's state is gone by then.
        if !std::thread::panicking() {
            self.0.freed.store(true, Ordering::SeqCst);
        }
    }
}

fn ptr(n: &NodeRef) -> NonNull<Node> {
    NonNull::from(&**n)
}

struct TailCache {
    /// The writers' lock over the map: anchors sorted by start.
    map: Mutex<Vec<Anchor>>,
    index: Published<Index<Node>>,
    /// The interval's sequence (one for every node of the model: each test unmaps one range).
    seq: AtomicU64,
}

/// The full rebuild (`regcache.rs` `republish`): the map's ranges, tail empty.
fn rebuild(map: &[Anchor]) -> Index<Node> {
    let starts: Vec<u64> = map.iter().map(|a| a.0.start).collect();
    let ends: Vec<u64> = starts.iter().map(|s| s + PAGE).collect();
    Index::build(
        &starts,
        &ends,
        map.iter().map(|a| ptr(&a.0)).collect(),
        PAGE,
    )
}

/// The writers' steps as `regcache.rs` takes them, or one of them broken.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Sound,
    /// The miss appends to the index it read before taking the writers' lock: a flush may have
    /// replaced that index meanwhile.
    AppendToTheIndexReadBeforeTheLock,
    /// The append raises the tail's length before writing the slot.
    LengthBeforeSlot,
    /// The flush takes dead records out of the map and retires their anchors but leaves the
    /// published index (and its tail) as it is.
    RemovalWithoutRebuild,
}

/// A miss's publish step (begin sequence `begin`): append to the published index's tail under
/// the writers' lock, or rebuild when it is full.
fn add(c: &TailCache, n: &NodeRef, begin: u64, how: Variant) {
    let g = publish::pin();
    let early = (how == Variant::AppendToTheIndexReadBeforeTheLock).then(|| c.index.read(&g));
    let mut map = c.map.lock().unwrap();
    if c.seq.load(Ordering::Acquire) != begin {
        return; // read_retry: collided
    }
    n.valid.store(true, Ordering::Release);
    n.published.store(true, Ordering::Release);
    let at = map.partition_point(|a| a.0.start < n.start);
    map.insert(at, Anchor(n.clone()));
    let cur = early.unwrap_or_else(|| c.index.read(&g));
    let (s, e) = (n.start, n.start + PAGE);
    let appended = if how == Variant::LengthBeforeSlot {
        cur.push_length_first(s, e, ptr(n))
    } else {
        cur.push(s, e, ptr(n))
    };
    drop(g);
    if !appended {
        c.index.replace(rebuild(&map));
    }
}

/// A flush: dead records leave the map, the index is rebuilt without them and published, then
/// their anchors are retired — all under the writers' lock, as `regcache.rs` does.
fn flush(c: &TailCache, how: Variant) {
    let mut map = c.map.lock().unwrap();
    let (live, dead): (Vec<Anchor>, Vec<Anchor>) = std::mem::take(&mut *map)
        .into_iter()
        .partition(|a| a.0.valid.load(Ordering::Acquire));
    *map = live;
    if how != Variant::RemovalWithoutRebuild {
        c.index.replace(rebuild(&map));
    }
    publish::retire(dead);
}

/// The invalidation callback of `n` (under the writers' lock, as `EntryOps::invalidate`).
fn invalidate_node(c: &TailCache, n: &Node) {
    let _map = c.map.lock().unwrap();
    c.seq.store(1, Ordering::Release);
    if n.published.load(Ordering::Acquire) {
        n.valid.swap(false, Ordering::AcqRel);
    }
}

/// A hit at `start`: the start of the node it accepts. Every node it reaches must not be freed.
fn hit_at(c: &TailCache, start: u64) -> Option<u64> {
    let g = publish::pin();
    let idx = c.index.read(&g);
    assert!(idx.tail_written(), "a reader saw an unwritten tail slot");
    let found = idx.covering(start, start + PAGE, |p| {
        // SAFETY: the model keeps every node's memory alive (`nodes` in the tests); whether the
        // protocol would have kept it is the `freed` flag.
        let n = unsafe { p.as_ref() };
        assert!(
            !n.freed.load(Ordering::SeqCst),
            "a reader reached a node whose anchor was freed"
        );
        n.valid.load(Ordering::Acquire)
    });
    // SAFETY: as above.
    found.map(|p| unsafe { p.as_ref() }.start)
}

/// A cache whose arrays hold `built` (sorted) and whose tail holds `tail`.
fn tail_cache(built: &[NodeRef], tail: &[NodeRef]) -> TailCache {
    let mut map: Vec<Anchor> = built.iter().map(|n| Anchor(n.clone())).collect();
    let idx = rebuild(&map);
    for n in tail {
        assert!(idx.push(n.start, n.start + PAGE, ptr(n)));
        let at = map.partition_point(|a| a.0.start < n.start);
        map.insert(at, Anchor(n.clone()));
    }
    TailCache {
        map: Mutex::new(map),
        index: Published::new(idx),
        seq: AtomicU64::new(0),
    }
}

/// Five retirements at most, each reading every reader slot: more branches than loom's default.
fn check(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 20_000;
    builder.check(f);
}

/// A miss appends B to the tail (which holds T) while a flush removes A (dead, in the arrays)
/// and a reader looks A, B and T up: no reader ever reaches A after its anchor is freed or sees
/// an unwritten slot, A is never accepted, and once both writers are done B and T are found (the
/// flush's rebuild lost neither, nor the append the removal).
fn tail_model(how: Variant) {
    check(move || {
        let a = node(PAGE, false); // invalidated earlier, awaiting the flush
        let t = node(5 * PAGE, true);
        let b = node(3 * PAGE, false);
        let nodes = [a.clone(), t.clone(), b.clone()];
        let cache = Arc::new(tail_cache(
            std::slice::from_ref(&a),
            std::slice::from_ref(&t),
        ));
        let (c1, b1) = (cache.clone(), b.clone());
        let miss = thread::spawn(move || add(&c1, &b1, 0, how));
        let c2 = cache.clone();
        let flusher = thread::spawn(move || flush(&c2, how));
        assert_eq!(hit_at(&cache, PAGE), None, "a dead entry was accepted");
        let _ = hit_at(&cache, 3 * PAGE);
        miss.join().unwrap();
        flusher.join().unwrap();
        // Any retirement runs the reclaim (every time under loom): what was retired is freed
        // now that no reader is inside, and no published index may still lead to it.
        publish::retire(());
        assert_eq!(hit_at(&cache, PAGE), None, "a dead entry was accepted");
        assert_eq!(
            hit_at(&cache, 3 * PAGE),
            Some(3 * PAGE),
            "a published entry was lost"
        );
        assert_eq!(
            hit_at(&cache, 5 * PAGE),
            Some(5 * PAGE),
            "a tail entry was lost"
        );
        drop(nodes);
    });
}

#[test]
fn the_tail_never_leads_a_reader_to_a_freed_entry_nor_loses_one() {
    tail_model(Variant::Sound);
}

#[test]
#[should_panic(expected = "a published entry was lost")]
fn appending_to_an_index_read_before_the_lock_loses_the_entry() {
    tail_model(Variant::AppendToTheIndexReadBeforeTheLock);
}

#[test]
#[should_panic(expected = "whose anchor was freed")]
fn a_removal_without_a_rebuild_leads_readers_to_freed_entries() {
    tail_model(Variant::RemovalWithoutRebuild);
}

#[test]
#[should_panic(expected = "unwritten tail slot")]
fn raising_the_length_before_the_slot_is_written_shows_readers_an_unwritten_slot() {
    tail_model(Variant::LengthBeforeSlot);
}

/// An entry appended to the tail (or, with a full tail, rebuilt into the arrays) is unmapped: a
/// lookup that starts after the unmap returned never accepts it, whether the miss published it
/// before or after the invalidation, and it is never valid at the end.
fn tail_unmap_model(uffd: bool, full: bool) {
    check(move || {
        let gate = PendingGate::new();
        let opener = gate.opener().unwrap();
        let a = node(PAGE, true);
        let b = node(3 * PAGE, false);
        let tail: Vec<NodeRef> = (0..if full { TAIL as u64 } else { 1 })
            .map(|i| node((5 + i) * PAGE, true))
            .collect();
        let cache = Arc::new(tail_cache(std::slice::from_ref(&a), &tail));
        let released = Arc::new(AtomicBool::new(false));
        // The miss took read_begin before the unmap started.
        let begin = cache.seq.load(Ordering::Acquire);
        let (c1, b1) = (cache.clone(), b.clone());
        let miss = thread::spawn(move || add(&c1, &b1, begin, Variant::Sound));
        let (c2, b2) = (cache.clone(), b.clone());
        let unmap = spawn_unmap(uffd, opener, released.clone(), move || {
            invalidate_node(&c2, &b2)
        });
        while !released.load(Ordering::Acquire) {
            thread::yield_now();
        }
        gate.wait();
        assert_eq!(
            hit_at(&cache, 3 * PAGE),
            None,
            "a lookup after the unmap returned hit a stale entry"
        );
        miss.join().unwrap();
        unmap.join().unwrap();
        assert!(
            !b.valid.load(Ordering::Acquire),
            "an unmapped entry stayed valid"
        );
        for t in &tail {
            assert_eq!(
                hit_at(&cache, t.start),
                Some(t.start),
                "a tail entry was lost"
            );
        }
        assert_eq!(hit_at(&cache, PAGE), Some(PAGE), "the arrays lost an entry");
        drop((a, tail));
    });
}

#[test]
fn uffd_a_lookup_after_munmap_never_hits_an_entry_appended_to_the_tail() {
    tail_unmap_model(true, false);
}

#[test]
fn bracketed_a_lookup_after_the_call_never_hits_an_entry_appended_to_the_tail() {
    tail_unmap_model(false, false);
}

#[test]
fn uffd_a_lookup_after_munmap_never_hits_an_entry_of_a_full_tail_rebuild() {
    tail_unmap_model(true, true);
}

#[test]
fn bracketed_a_lookup_after_the_call_never_hits_an_entry_of_a_full_tail_rebuild() {
    tail_unmap_model(false, true);
}
