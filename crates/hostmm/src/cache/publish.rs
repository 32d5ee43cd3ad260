//! Read-copy-update publication with an asymmetric fence: readers load the current value with no
//! lock, no read-modify-write and no write to a shared cache line; a writer replaces it whole,
//! and the old one is freed once no reader can still hold it.
//!
//! # The protocol
//!
//! A reader owns a slot (its [thread index](crate::cache::threads)). To enter, it stores the
//! current *period* in its slot, then a **light barrier**, then loads the published pointer; to
//! leave, it stores 0 (release). A writer swaps the pointer, then retires the old value stamped
//! with the period, which it advances. Reclaiming runs a **heavy barrier**, then reads every slot:
//! a value stamped `p` is freed once every reader inside shows a period above `p` (it entered
//! after the advance, so it loaded the new pointer).
//!
//! The barriers pair like the two fences of Dekker's algorithm: either the writer's read sees the
//! reader's slot, or the reader's pointer load sees the swap. With `membarrier(2)`
//! (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`, registered once) the heavy barrier makes every running
//! thread of the process execute a full barrier, so the light one is only a compiler fence —
//! what the kernel's `sys_membarrier`-based user-space RCUs do. Without it (old kernel, seccomp)
//! both are `SeqCst` fences. Under `cfg(loom)`, which treats `SeqCst` as acquire/release, the
//! reader's stores (entry and exit) and the writer's reads are read-modify-writes, which give
//! the same either/or (one of them reads from the other); `tests/loom_publish.rs` checks the
//! protocol so. (With a plain release store on exit, loom 0.7 let a read-modify-write after
//! `join` read the value stored before it — not what the memory model allows — hence the exit
//! is an RMW under loom too.)
//!
//! # Why not crossbeam-epoch
//!
//! It was the first implementation: its `pin()` is a `SeqCst` compare-exchange on the thread's
//! record (x86) plus bookkeeping, 6.9 ns per pin and unpin on the 2-vCPU VM, against 0.1 ns for
//! the store, compiler fence and store here — a quarter of a cache hit (crate README).
//!
//! Threads without a slot of their own (beyond [`THREADS`](crate::cache::threads::THREADS))
//! count themselves in one shared counter with read-modify-writes; reclaiming waits until it is 0.

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::cache::threads::{self, OVERFLOW, THREADS};
use crate::primitive::{lock, AtomicPtr, AtomicU64, Mutex, Ordering};

/// Reclaim is tried once this many values wait (one heavy barrier per try).
const RECLAIM_BATCH: usize = if cfg!(loom) { 1 } else { 32 };

#[repr(align(128))]
struct Slot(AtomicU64);

/// A retired value: its period stamp and the value, type-erased.
type Retired = (u64, Box<dyn Send>);

/// The readers and retired values of one process (`global()`).
pub struct Domain {
    /// Advanced by every retirement; readers stamp their slot with it.
    period: AtomicU64,
    /// Per-thread slots: 0 outside, else the period read on entry.
    readers: Box<[Slot]>,
    /// Readers inside without a slot of their own.
    overflow: AtomicU64,
    retired: Mutex<(Vec<Retired>, usize)>,
}

#[cfg(not(loom))]
mod barrier {
    use std::sync::atomic::{compiler_fence, fence, AtomicU8, Ordering};

    const UNKNOWN: u8 = 0;
    const MEMBARRIER: u8 = 1;
    const FENCES: u8 = 2;
    static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);

    #[cold]
    fn init() -> u8 {
        use rustix::thread::{membarrier, MembarrierCommand};
        let mode = match membarrier(MembarrierCommand::RegisterPrivateExpedited) {
            Ok(()) => MEMBARRIER,
            Err(_) => FENCES,
        };
        // Every thread that relies on the light barrier reads MEMBARRIER here, after the
        // registration returned; a thread that read UNKNOWN registers (idempotent) itself.
        MODE.store(mode, Ordering::Release);
        mode
    }

    #[inline]
    fn mode() -> u8 {
        match MODE.load(Ordering::Acquire) {
            UNKNOWN => init(),
            m => m,
        }
    }

    /// The reader's side (after its slot store, before its pointer load).
    #[inline]
    pub fn light() {
        if mode() == MEMBARRIER {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// The writer's side (after its swap, before it reads the slots). `false` if the barrier
    /// could not be made: the caller must then free nothing.
    pub fn heavy() -> bool {
        if mode() == MEMBARRIER {
            use rustix::thread::{membarrier, MembarrierCommand};
            // Cannot fail once registered; if it did, readers that entered behind a compiler
            // fence only would not be ordered with the slot reads, so nothing may be freed.
            return membarrier(MembarrierCommand::PrivateExpedited).is_ok();
        }
        fence(Ordering::SeqCst);
        true
    }

    /// Whether a reader's plain store and this module's barriers order it (always, here).
    pub const RMW: bool = false;
}

#[cfg(loom)]
mod barrier {
    /// Under loom: the slot accesses themselves are read-modify-writes.
    pub fn light() {}
    /// Under loom: see `light`.
    pub fn heavy() -> bool {
        true
    }
    /// Whether slot accesses are read-modify-writes (the model's stand-in for the barriers).
    pub const RMW: bool = true;
}

impl Domain {
    fn new() -> Self {
        Self {
            period: AtomicU64::new(1),
            readers: (0..THREADS).map(|_| Slot(AtomicU64::new(0))).collect(),
            overflow: AtomicU64::new(0),
            retired: Mutex::new((Vec::new(), RECLAIM_BATCH)),
        }
    }

    /// Enters a read-side critical section (nests).
    #[inline]
    pub fn pin(&'static self) -> Guard {
        let i = threads::index();
        if i == OVERFLOW {
            self.overflow.fetch_add(1, Ordering::SeqCst);
            return Guard::new(self, i, true);
        }
        let slot = &self.readers[i].0;
        // Only this thread writes its slot: non-zero means it is inside already.
        if slot.load(Ordering::Relaxed) != 0 {
            return Guard::new(self, i, false);
        }
        let p = self.period.load(Ordering::Acquire);
        if barrier::RMW {
            slot.swap(p, Ordering::AcqRel);
        } else {
            slot.store(p, Ordering::Relaxed);
        }
        barrier::light();
        Guard::new(self, i, true)
    }

    /// Drops `value` once no reader that could have reached it is inside any more. Call after
    /// making it unreachable (after the swap that unpublished it).
    pub fn retire<U: Send + 'static>(&self, value: U) {
        let free = {
            let mut r = lock(&self.retired);
            let p = self.period.fetch_add(1, Ordering::SeqCst);
            r.0.push((p, Box::new(value)));
            if r.0.len() < r.1 {
                return;
            }
            let free = self.reclaim(&mut r.0);
            // What readers still hold is tried again only once as much more has waited, so a
            // long reader does not cost a heavy barrier per retirement (the models try every
            // time).
            r.1 = if cfg!(loom) {
                RECLAIM_BATCH
            } else {
                (r.0.len() * 2).max(RECLAIM_BATCH)
            };
            free
        };
        drop(free); // outside the lock
    }

    /// Takes out what no reader inside can hold.
    fn reclaim(&self, retired: &mut Vec<Retired>) -> Vec<Retired> {
        if !barrier::heavy() || self.overflow.fetch_add(0, Ordering::SeqCst) != 0 {
            return Vec::new();
        }
        let read = |s: &Slot| {
            if barrier::RMW {
                s.0.fetch_add(0, Ordering::AcqRel)
            } else {
                s.0.load(Ordering::Acquire)
            }
        };
        let oldest = self
            .readers
            .iter()
            .map(read)
            .filter(|&p| p != 0)
            .min()
            .unwrap_or(u64::MAX);
        let (free, keep): (Vec<_>, Vec<_>) = std::mem::take(retired)
            .into_iter()
            .partition(|(p, _)| *p < oldest);
        *retired = keep;
        free
    }
}

/// The process's domain.
#[cfg(not(loom))]
fn global() -> &'static Domain {
    static GLOBAL: std::sync::OnceLock<Domain> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(Domain::new)
}

#[cfg(loom)]
fn global() -> &'static Domain {
    loom::lazy_static! {
        static ref GLOBAL: Domain = Domain::new();
    }
    &GLOBAL
}

/// A read-side critical section; values read through it stay valid until it is dropped. Not
/// `Send`: the slot belongs to this thread.
pub struct Guard {
    domain: &'static Domain,
    slot: usize,
    outer: bool,
    _not_send: PhantomData<*const ()>,
}

impl Guard {
    /// This thread's [index](crate::cache::threads::index), looked up when it entered (for
    /// per-thread structures on the same path: one thread-local access instead of two).
    #[inline]
    pub fn thread_index(&self) -> usize {
        self.slot
    }

    fn new(domain: &'static Domain, slot: usize, outer: bool) -> Self {
        Self {
            domain,
            slot,
            outer,
            _not_send: PhantomData,
        }
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        if !self.outer {
            return;
        }
        if self.slot == OVERFLOW {
            self.domain.overflow.fetch_sub(1, Ordering::SeqCst);
        } else {
            // Release: the section's reads happen-before a reclaimer that sees 0.
            let slot = &self.domain.readers[self.slot].0;
            if barrier::RMW {
                slot.swap(0, Ordering::AcqRel);
            } else {
                slot.store(0, Ordering::Release);
            }
        }
    }
}

/// Enters a read-side critical section of the process's domain.
#[inline]
pub fn pin() -> Guard {
    global().pin()
}

/// Drops `value` after a grace period of the process's domain.
pub fn retire<U: Send + 'static>(value: U) {
    global().retire(value)
}

/// A heap value owned through a raw pointer, freed on drop.
struct Owned<T>(NonNull<T>);

// SAFETY: it owns a `T`, which may be dropped on another thread (`T: Send`).
unsafe impl<T: Send> Send for Owned<T> {}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::into_raw` and is owned here alone.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// A value published for lock-free readers.
pub struct Published<T: Send + Sync + 'static> {
    ptr: AtomicPtr<T>,
}

// SAFETY: values move between threads (`T: Send`: replaced ones are dropped by whichever thread
// reclaims) and are shared by readers (`T: Sync`).
unsafe impl<T: Send + Sync + 'static> Send for Published<T> {}
// SAFETY: see above.
unsafe impl<T: Send + Sync + 'static> Sync for Published<T> {}

impl<T: Send + Sync + 'static> Published<T> {
    /// Publishes `value`.
    pub fn new(value: T) -> Self {
        Self {
            ptr: AtomicPtr::new(Box::into_raw(Box::new(value))),
        }
    }

    /// The current value, valid while `guard` lives.
    #[inline]
    pub fn read<'g>(&self, _guard: &'g Guard) -> &'g T {
        // Acquire: whatever the writer built before publishing is visible.
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: never null (set in `new`, swapped in `replace`); a replaced value is freed
        // only after every reader inside when it was retired has left (see the module docs),
        // and `guard` is such a reader until it is dropped.
        unsafe { &*p }
    }

    /// Publishes `value` in place of the current one, which is freed after a grace period.
    /// Writers must be serialized by the caller.
    pub fn replace(&self, value: T) {
        let old = self
            .ptr
            .swap(Box::into_raw(Box::new(value)), Ordering::AcqRel);
        // SAFETY: from `Box::into_raw`, never null.
        global().retire(Owned(unsafe { NonNull::new_unchecked(old) }));
    }
}

impl<T: Send + Sync + 'static> Drop for Published<T> {
    fn drop(&mut self) {
        // `&mut self`: no reader holds a reference into the current value (readers borrow
        // `self`); replaced ones belong to the domain.
        drop(Owned(
            // SAFETY: from `Box::into_raw`, never null.
            unsafe { NonNull::new_unchecked(self.ptr.load(Ordering::Relaxed)) },
        ));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;

    /// Records its own drop in a flag the test keeps (never read through a freed value).
    struct Tracked(Arc<AtomicBool>);
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }
    fn tracked() -> (Tracked, Arc<AtomicBool>) {
        let f = Arc::new(AtomicBool::new(false));
        (Tracked(f.clone()), f)
    }

    #[test]
    fn a_value_read_under_a_guard_outlives_its_replacement_until_the_guard_drops() {
        let (first, freed) = tracked();
        let p = Published::new(first);
        let g = pin();
        let _old = p.read(&g);
        // Enough replacements to force several reclaim attempts.
        let later: Vec<_> = (0..RECLAIM_BATCH * 4)
            .map(|_| {
                let (t, f) = tracked();
                p.replace(t);
                f
            })
            .collect();
        assert!(!freed.load(SeqCst), "a value was freed under a reader");
        drop(g);
        // Once the reader left, later reclaims free the backlog (readers of other tests share
        // the domain and may be preempted inside: keep replacing for a while).
        let t = std::time::Instant::now();
        while !freed.load(SeqCst) && t.elapsed() < std::time::Duration::from_secs(10) {
            p.replace(tracked().0);
            std::thread::yield_now();
        }
        assert!(
            freed.load(SeqCst),
            "nothing was reclaimed after the reader left"
        );
        drop(later);
    }

    #[test]
    fn nested_guards_keep_the_section_open_until_the_outer_drops() {
        let (first, freed) = tracked();
        let p = Published::new(first);
        let outer = pin();
        let _v = p.read(&outer);
        drop(pin()); // an inner section must not end the outer one
        for _ in 0..RECLAIM_BATCH * 4 {
            p.replace(tracked().0);
        }
        assert!(
            !freed.load(SeqCst),
            "the inner guard ended the outer section"
        );
        drop(outer);
    }

    #[test]
    fn readers_on_many_threads_always_see_a_live_value() {
        let p = Arc::new(Published::new(vec![1u64; 16]));
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (p, stop, reads) = (p.clone(), stop.clone(), reads.clone());
                std::thread::spawn(move || {
                    while !stop.load(SeqCst) {
                        let g = pin();
                        let v = p.read(&g);
                        let first = v[0];
                        assert!(v.iter().all(|&x| x == first), "torn or freed value");
                        drop(g);
                        reads.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        let mut i = 0u64;
        while i < 5000 || reads.load(SeqCst) < 10_000 {
            p.replace(vec![i + 2; 16]);
            i += 1;
        }
        stop.store(true, SeqCst);
        for r in readers {
            r.join().unwrap();
        }
    }
}
