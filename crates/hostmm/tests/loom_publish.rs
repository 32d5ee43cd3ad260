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

use hostmm::gate::PendingGate;
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

        let (c3, r3, e3) = (cache.clone(), released.clone(), entry.clone());
        let unmap = thread::spawn(move || {
            if uffd {
                let w = opener.open();
                r3.store(true, Ordering::Release); // read(): munmap returns
                invalidate(&c3, &e3);
                drop(w);
            } else {
                invalidate(&c3, &e3);
                r3.store(true, Ordering::Release); // the wrapper returns
            }
        });

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
