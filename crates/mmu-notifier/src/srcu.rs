//! A small sleepable read-copy-update (SRCU) domain, one per address space.
//!
//! List subscribers are read without a lock: a dispatcher enters a read section, loads the
//! current subscriber list and calls into it, possibly sleeping. Unregister unlinks a
//! subscriber and then must wait until no dispatcher can still be inside one of its callbacks:
//! it waits for a *grace period*, the end of every read section that began before the unlink.
//!
//! ## Why per address space
//!
//! Linux uses one global SRCU for all mms (`srcu` in `mm/mmu_notifier.c`), because kernel
//! SRCU costs four words per CPU per instance. The price is that a callback sleeping in one mm
//! delays every unregister and every exit in the system. Here a domain is a few words (the
//! per-thread state below is shared by every domain), so each [`Mm`](crate::Mm) has its own: a
//! slow callback in one address space delays only that address space's unregisters. Every
//! invalidation holds a read section of it from start to end, subscribed or not (see
//! `Mm::register`, "The first subscription").
//!
//! ## The mechanism: per-thread slots, no read-modify-write on the read side
//!
//! Every thread that ever reads owns a [`Record`] of [`SLOTS`] slots, linked into one
//! process-wide registry. A read section of domain `d` takes a free slot of the thread's own
//! record and stores the *tag* `d.id << 1 | idx` into it (`idx`, the domain's current index,
//! read once); it stores 0 on exit. Each slot has one writer, its thread, so both are plain
//! stores: no locked instruction, no shared cache line written. Nested or overlapping read
//! sections take further slots; a thread with all of its slots busy falls back to the domain's
//! two shared counters (`overflow`, read-modify-writes, as before this design).
//!
//! A grace period flips the domain's index and waits until no slot of any record holds the old
//! index's tag (and the old overflow counter is zero), twice: after the first flip new readers
//! tag the other index, so the old one drains unless readers keep arriving late; the second
//! flip catches a reader that loaded the index before the first flip but stored its tag after
//! the first scan (it needs no waiting for this grace period, see below, but without the second
//! flip it would sit unseen under the index the next grace period does not drain first).
//!
//! The slots also say which domains this thread is reading, so "is this thread inside a
//! dispatch of mm `id`" (`tls::inside`) is a scan of its own record: the dispatch mark costs
//! nothing extra on the hot path.
//!
//! ## Memory ordering: an asymmetric fence
//!
//! The protocol is two store-load pairs (Dekker's pattern). Reader: store the tag, then load
//! the list pointer (or `has_itree`, or the subscriptions pointer). Updater: swap the list
//! pointer (store `enabled`, publish the subscriptions), then load the slots. Each side needs
//! a store-load barrier between its two accesses, or both may miss the other.
//!
//! The reader pays only a compiler barrier ([`reader_barrier`]); the grace period pays for
//! both with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` ([`Srcu::heavy_barrier`]), which
//! returns only after every thread of the process that is running has executed a full memory
//! barrier (and a thread that is not running has gone through a context switch, which
//! implies one). The kernel's SRCU-lite read side (`srcu_read_lock_lite` in
//! `include/linux/srcu.h`) drops its `smp_mb()` the same way, its grace period calling
//! `synchronize_rcu()` in its place, and liburcu's `urcu-memb` flavour pairs a compiler
//! barrier with `membarrier` exactly as here. The argument: take the point P where the reader's thread executes
//! the barrier the updater forced. If the reader's tag store precedes P in its program order,
//! it is visible to the updater's scan, which follows the `membarrier` call, and the updater
//! waits. Otherwise the reader's list load follows P (it follows the tag store, and the
//! compiler barrier keeps it there), so it sees the updater's swap, which preceded the call:
//! the reader walks the new list and needs no waiting. The same holds for the second pair,
//! the `waiting` flag against a reader's exit (exit: store 0, barrier, load `waiting`;
//! updater: store `waiting`, `membarrier`, scan), so a last reader cannot miss the wake-up.
//!
//! The exit side needs no barrier for safety: the reader stores 0 (or its next tag) with
//! `Release` after its last access to the list, and the scan loads slots with `Acquire`, so
//! a scan that sees the slot no longer holding the old tag happens after that access; the
//! retired list is freed after the scan.
//!
//! ## Where `membarrier` is unavailable
//!
//! The first domain asks the kernel once (`MEMBARRIER_CMD_QUERY`, then
//! `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`). Where that fails (not Linux, an old kernel,
//! a seccomp filter), every domain runs in [`Mode::Fence`]: the reader's barrier is a real
//! `fence(SeqCst)` and so is the updater's, the classic symmetric pairing of two sequentially
//! consistent fences. The read side then pays one fence per entry and exit, still without a
//! shared write. The mode is fixed per domain at creation, before any reader can see it.
//!
//! ## Under the model checkers
//!
//! loom does not know `membarrier`. Its guarantee is exactly that of a `fence(SeqCst)` placed
//! at the reader's compiler barrier and paired with one at the updater's call (the reading in
//! `membarrier(2)`: the system call turns the readers' compiler barriers into full barriers),
//! so under `--cfg loom` (and shuttle, which is sequentially consistent anyway) the domain
//! runs [`Mode::Fence`] and loom checks the protocol with that pairing. The broken variant
//! `mmn_broken = "no_reader_barrier"` drops the barrier on a read section's entry; the
//! unregister and first-subscription models must then fail (tests/loom_protocols.rs), and
//! `tests/loom_srcu.rs` checks the bare protocol, with and without it. (loom treats `SeqCst`
//! accesses as `AcqRel`, which would be too weak for the previous, counter-based argument; the
//! fences are what it does model.)

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

use crate::annotate;
use crate::primitive::{
    fence, lock, spin, wait, AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

/// Read-section slots per thread: nesting deeper than this falls back to the domain's shared
/// counters. Under the model checkers, two (fewer atomics to interleave; a third nested
/// section exercises the fallback).
#[cfg(not(any(loom, shuttle)))]
const SLOTS: usize = 8;
#[cfg(any(loom, shuttle))]
const SLOTS: usize = 2;

/// `Local::used` with every slot busy.
const FULL: u32 = (1 << SLOTS) - 1;

/// How a domain's read side and grace period pair their store-load barriers (see "Memory
/// ordering").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Readers: a compiler barrier; grace periods: `membarrier(2)`.
    #[cfg_attr(any(loom, shuttle, not(target_os = "linux")), allow(dead_code))]
    Membarrier,
    /// Readers and grace periods: `fence(SeqCst)`.
    Fence,
}

/// One thread's read-section slots. Each slot is written only by its thread (the tag on
/// entry, 0 on exit) and read by grace periods; the record is never freed (a thread that
/// exits hands it to the next new thread).
#[repr(align(128))]
struct Record {
    slots: [AtomicU64; SLOTS],
    /// Held by a live thread.
    owned: AtomicBool,
}

// The registry of every record: a `static` normally; per execution under the model checkers
// (their statics must not outlive one).
#[cfg(not(any(loom, shuttle)))]
static REGISTRY: Mutex<Vec<&'static Record>> = Mutex::new(Vec::new());
#[cfg(loom)]
loom::lazy_static! {
    static ref REGISTRY: Mutex<Vec<&'static Record>> = Mutex::new(Vec::new());
}
#[cfg(all(shuttle, not(loom)))]
shuttle::lazy_static! {
    static ref REGISTRY: Mutex<Vec<&'static Record>> = Mutex::new(Vec::new());
}

/// The registry as a plain reference (the model checkers' lazy statics deref to it).
fn registry() -> &'static Mutex<Vec<&'static Record>> {
    &REGISTRY
}

/// This thread's side: its record, and which of its slots are in use (bit `s` for slot
/// `s`). Touched only by this thread; nothing to drop, so it stays usable (and its access
/// needs no state check) while the thread's other locals are destroyed.
struct Local {
    record: Cell<Option<&'static Record>>,
    used: Cell<u32>,
}

#[cfg(not(loom))]
crate::primitive::thread_local! {
    static LOCAL: Local = const {
        Local {
            record: Cell::new(None),
            used: Cell::new(0),
        }
    };
    /// The domains (ids) this thread reads through the overflow counters.
    static OVERFLOW: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}
// The model checker's `thread_local!` does not take `const` initialisers.
#[cfg(loom)]
crate::primitive::thread_local! {
    static LOCAL: Local = Local {
        record: Cell::new(None),
        used: Cell::new(0),
    };
    #[allow(clippy::missing_const_for_thread_local)]
    static OVERFLOW: RefCell<Vec<u64>> = RefCell::new(Vec::new());
}

/// Gives the record back when its thread exits (not under the model checkers, whose
/// registries die with the execution).
#[cfg(not(any(loom, shuttle)))]
struct Owner(Cell<Option<&'static Record>>);

#[cfg(not(any(loom, shuttle)))]
impl Drop for Owner {
    fn drop(&mut self) {
        let Some(r) = self.0.get() else { return };
        let _ = LOCAL.try_with(|l| l.record.set(None));
        // A read section leaked with `mem::forget` keeps its tag: the record then stays
        // owned, so the tag stays visible (grace periods of that domain wait forever, as they
        // would for a reader that never left) and no other thread writes over it.
        if r.slots.iter().all(|s| s.load(Relaxed) == 0) {
            r.owned.store(false, Release);
        }
    }
}

#[cfg(not(any(loom, shuttle)))]
std::thread_local! {
    static OWNER: Owner = const { Owner(Cell::new(None)) };
}

/// This thread's record, registering it on first use.
#[inline]
fn record(l: &Local) -> &'static Record {
    match l.record.get() {
        Some(r) => r,
        None => register(l),
    }
}

#[cold]
#[inline(never)]
fn register(l: &Local) -> &'static Record {
    let mut reg = lock(registry());
    let free = reg.iter().copied().find(|r| {
        r.owned
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
    });
    let r = free.unwrap_or_else(|| {
        let r: &'static Record = Box::leak(Box::new(Record {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            owned: AtomicBool::new(true),
        }));
        reg.push(r);
        r
    });
    drop(reg);
    l.record.set(Some(r));
    // During thread exit the owner may already be gone: the record then stays owned (leaked).
    #[cfg(not(any(loom, shuttle)))]
    let _ = OWNER.try_with(|o| o.0.set(Some(r)));
    r
}

/// The reader's half of the store-load barrier.
#[inline(always)]
fn reader_barrier(mode: Mode) {
    match mode {
        Mode::Membarrier => std::sync::atomic::compiler_fence(SeqCst),
        Mode::Fence => fence(SeqCst),
    }
}

/// The barrier on a read section's entry; `mmn_broken = "no_reader_barrier"` (model tests)
/// drops it. (Only there: a broken exit pair loses a wake-up, which loom reports as a
/// deadlock by aborting the test process rather than failing the one test.)
#[inline(always)]
fn entry_barrier(mode: Mode) {
    #[cfg(mmn_broken = "no_reader_barrier")]
    let _ = mode;
    #[cfg(not(mmn_broken = "no_reader_barrier"))]
    reader_barrier(mode);
}

/// The process-wide mode: `membarrier` if the kernel lets this process use the private
/// expedited command, decided once.
#[cfg(all(target_os = "linux", not(any(loom, shuttle))))]
fn detect_mode() -> Mode {
    use std::sync::OnceLock;
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| {
        if std::env::var_os("MMN_NO_MEMBARRIER").is_some() {
            return Mode::Fence;
        }
        // SAFETY: `membarrier` takes two integers and touches no memory of ours.
        let cmds = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) };
        if cmds < 0 || cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED == 0 {
            return Mode::Fence;
        }
        // SAFETY: as above.
        let r = unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                0,
                0,
            )
        };
        if r == 0 {
            Mode::Membarrier
        } else {
            Mode::Fence
        }
    })
}

#[cfg(not(all(target_os = "linux", not(any(loom, shuttle)))))]
fn detect_mode() -> Mode {
    Mode::Fence
}

// From `include/uapi/linux/membarrier.h`.
#[cfg(all(target_os = "linux", not(any(loom, shuttle))))]
const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
#[cfg(all(target_os = "linux", not(any(loom, shuttle))))]
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
#[cfg(all(target_os = "linux", not(any(loom, shuttle))))]
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

/// The read side of one dispatch: which slot of this thread's record it holds (or, from
/// [`SLOTS`] on, which overflow counter), and the validator's view of the open read section.
/// Not `Send`: the slot belongs to the thread that took it.
#[derive(Debug)]
pub(crate) struct ReadToken {
    slot: usize,
    _validator: annotate::SrcuReadGuard,
    _not_send: PhantomData<*const ()>,
}

pub(crate) struct Srcu {
    /// `id << 1`: the tags of this domain are this or'ed with the index.
    tag: u64,
    mode: Mode,
    idx: AtomicUsize,
    /// A grace period is blocked waiting for readers.
    waiting: AtomicBool,
    /// Readers of each index whose thread had no free slot.
    overflow: [AtomicUsize; 2],
    /// Serialises grace periods.
    gp: Mutex<()>,
    wake_lock: Mutex<()>,
    wake: Condvar,
}

impl Srcu {
    /// The domain of the address space `id` (not 0, below 2^63), in the process's mode.
    pub(crate) fn new(id: u64) -> Srcu {
        Srcu::with_mode(id, detect_mode())
    }

    pub(crate) fn with_mode(id: u64, mode: Mode) -> Srcu {
        debug_assert!(id != 0 && id < 1 << 63);
        Srcu {
            tag: id << 1,
            mode,
            idx: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            overflow: [AtomicUsize::new(0), AtomicUsize::new(0)],
            gp: Mutex::new(()),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    #[cfg(all(test, not(any(loom, shuttle))))]
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether some read section tagged with index `i` may still be running: a slot of some
    /// record holds its tag, or its overflow counter is not zero. `Acquire`: seeing a slot
    /// that no longer holds the tag orders after the reader's section (see "Memory ordering").
    fn readers(&self, i: usize) -> bool {
        let tag = self.tag | i as u64;
        if self.overflow[i].load(Acquire) != 0 {
            return true;
        }
        let reg = lock(registry());
        reg.iter()
            .any(|r| r.slots.iter().any(|s| s.load(Acquire) == tag))
    }

    /// Enters a read section.
    #[inline]
    pub(crate) fn read_lock(&self) -> ReadToken {
        // Each thread-local access is a closure this small so that it inlines, and the access
        // becomes a `%fs`-relative load instead of a call through the key's accessor.
        let (used, record) = LOCAL.with(|l| (l.used.get(), l.record.get()));
        let slot = match record {
            Some(r) if used != FULL => {
                let s = (!used).trailing_zeros() as usize;
                LOCAL.with(|l| l.used.set(used | 1 << s));
                let i = self.idx.load(Relaxed) & 1;
                // `Release`: a scan that reads this tag instead of the slot's previous one
                // orders after the previous section's end (see "Memory ordering").
                r.slots[s].store(self.tag | i as u64, Release);
                entry_barrier(self.mode);
                s
            }
            _ => self.read_lock_slow(),
        };
        ReadToken {
            slot,
            _validator: annotate::srcu_read(),
            _not_send: PhantomData,
        }
    }

    /// The first read section of this thread (registers its record), or one with every slot
    /// busy (counted on the shared counter).
    #[cold]
    #[inline(never)]
    fn read_lock_slow(&self) -> usize {
        let (used, r) = LOCAL.with(|l| (l.used.get(), record(l)));
        if used != FULL {
            let s = (!used).trailing_zeros() as usize;
            LOCAL.with(|l| l.used.set(used | 1 << s));
            let i = self.idx.load(Relaxed) & 1;
            r.slots[s].store(self.tag | i as u64, Release);
            entry_barrier(self.mode);
            return s;
        }
        let i = self.idx.load(Relaxed) & 1;
        self.overflow[i].fetch_add(1, SeqCst);
        entry_barrier(self.mode);
        OVERFLOW.with(|o| o.borrow_mut().push(self.tag >> 1));
        SLOTS + i
    }

    #[inline]
    pub(crate) fn read_unlock(&self, t: ReadToken) {
        self.read_unlock_in_place(&t);
    }

    /// Ends the read section of `t` without consuming it; `t` must not be used again.
    #[inline]
    pub(crate) fn read_unlock_in_place(&self, t: &ReadToken) {
        let s = t.slot;
        if s < SLOTS {
            let (used, record) = LOCAL.with(|l| (l.used.get(), l.record.get()));
            if let Some(r) = record {
                r.slots[s].store(0, Release);
            }
            LOCAL.with(|l| l.used.set(used & !(1 << s)));
        } else {
            self.read_unlock_overflow(s - SLOTS);
        }
        // The exit's store-load pair with `drain` (see "Memory ordering"): a grace period that
        // went to sleep before seeing this exit is woken.
        reader_barrier(self.mode);
        if self.waiting.load(Relaxed) {
            let _g = lock(&self.wake_lock);
            self.wake.notify_all();
        }
    }

    #[cold]
    #[inline(never)]
    fn read_unlock_overflow(&self, i: usize) {
        self.overflow[i].fetch_sub(1, SeqCst);
        OVERFLOW.with(|o| {
            let mut o = o.borrow_mut();
            if let Some(p) = o.iter().rposition(|&d| d == self.tag >> 1) {
                o.swap_remove(p);
            }
        });
    }

    /// The updater's half of the store-load barrier: after it, every reader either is visible
    /// in its slot or sees what the updater stored before the call.
    fn heavy_barrier(&self) {
        #[cfg(all(target_os = "linux", not(any(loom, shuttle))))]
        if self.mode == Mode::Membarrier {
            {
                // SAFETY: `membarrier` takes two integers and touches no memory of ours.
                let r = unsafe {
                    libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0)
                };
                // The process registered for the command before this domain existed, and
                // the kernel then never refuses it (membarrier(2), ERRORS). Were it to, the
                // readers' compiler barriers would order nothing and a grace period could end
                // under a reader: stop the process rather than free memory still in use.
                if r != 0 {
                    eprintln!("mmu-notifier: membarrier failed after registration; aborting");
                    std::process::abort();
                }
            }
            return;
        }
        fence(SeqCst);
    }

    /// Waits until every read section that began before the call has ended.
    #[track_caller]
    pub(crate) fn synchronize(&self) {
        annotate::might_sleep();
        annotate::srcu_sync();
        // A deliberately broken protocol for the model tests (tests/loom_protocols.rs).
        #[cfg(mmn_broken = "skip_grace_period")]
        return;
        let _gp = lock(&self.gp);
        self.heavy_barrier();
        for _ in 0..2 {
            let old = self.idx.fetch_add(1, SeqCst) & 1;
            self.drain(old);
        }
    }

    /// A grace period if one can be had without waiting: true when no read section that began
    /// before the call is still running.
    pub(crate) fn try_synchronize(&self) -> bool {
        let Ok(_gp) = self.gp.try_lock() else {
            return false;
        };
        self.heavy_barrier();
        for _ in 0..2 {
            let old = self.idx.fetch_add(1, SeqCst) & 1;
            if self.readers(old) {
                return false;
            }
        }
        true
    }

    fn drain(&self, i: usize) {
        // Spin briefly before sleeping; under the model checker every spin is a branch point, so
        // check once and go to the condition variable.
        #[cfg(loom)]
        const SPINS: u32 = 1;
        #[cfg(not(loom))]
        const SPINS: u32 = 64;
        for step in 0..SPINS {
            if !self.readers(i) {
                return;
            }
            spin(step);
        }
        let mut g = lock(&self.wake_lock);
        self.waiting.store(true, Relaxed);
        // The updater's side of the exit pair: a reader that leaves after this sees `waiting`.
        self.heavy_barrier();
        while self.readers(i) {
            g = wait(&self.wake, g);
        }
        self.waiting.store(false, Relaxed);
    }
}

/// Whether this thread is inside a read section of the domain of address space `id`.
pub(crate) fn this_thread_reads(id: u64) -> bool {
    LOCAL.with(|l| {
        let Some(r) = l.record.get() else {
            return false;
        };
        let used = l.used.get();
        (0..SLOTS).any(|s| used & 1 << s != 0 && r.slots[s].load(Relaxed) >> 1 == id)
    }) || OVERFLOW.with(|o| o.borrow().contains(&id))
}

#[cfg(all(test, not(any(loom, shuttle))))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool as StdBool;
    use std::sync::Arc;
    use std::time::Duration;

    fn modes() -> [Mode; 2] {
        [detect_mode(), Mode::Fence]
    }

    /// A thread running one grace period of `s`, and the flag it sets when that ends.
    fn grace_period_thread(s: &Arc<Srcu>) -> (std::thread::JoinHandle<()>, Arc<StdBool>) {
        let done = Arc::new(StdBool::new(false));
        let (s, d) = (s.clone(), done.clone());
        let h = std::thread::spawn(move || {
            s.synchronize();
            d.store(true, SeqCst);
        });
        (h, done)
    }

    #[test]
    fn this_machine_has_membarrier() {
        // Not an assertion on other machines: says which mode the other tests ran in.
        eprintln!("mode: {:?}", detect_mode());
        #[cfg(target_os = "linux")]
        if std::env::var_os("MMN_NO_MEMBARRIER").is_some() {
            assert_eq!(detect_mode(), Mode::Fence);
        }
    }

    #[test]
    fn synchronize_waits_for_a_reader_that_started_before_it() {
        for (n, mode) in modes().into_iter().enumerate() {
            let s = Arc::new(Srcu::with_mode(100 + n as u64, mode));
            assert_eq!(s.mode(), mode);
            let t = s.read_lock();
            assert!(this_thread_reads(100 + n as u64));
            assert!(!this_thread_reads(200));
            let (h, done) = grace_period_thread(&s);
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !done.load(SeqCst),
                "grace period ended while a reader was inside ({mode:?})"
            );
            assert!(!s.try_synchronize());
            s.read_unlock(t);
            assert!(!this_thread_reads(100 + n as u64));
            h.join().unwrap();
            assert!(done.load(SeqCst));
        }
    }

    #[test]
    fn nested_sections_past_the_slots_use_the_overflow_counters() {
        for (n, mode) in modes().into_iter().enumerate() {
            let id = 300 + n as u64;
            let s = Arc::new(Srcu::with_mode(id, mode));
            let tokens: Vec<_> = (0..SLOTS + 3).map(|_| s.read_lock()).collect();
            assert!(tokens.iter().any(|t| t.slot >= SLOTS), "no overflow taken");
            assert!(s.overflow.iter().map(|c| c.load(SeqCst)).sum::<usize>() == 3);
            assert!(!s.try_synchronize());
            // Release them out of order, the overflowed ones last: every one still counts.
            let (inner, over): (Vec<_>, Vec<_>) = tokens.into_iter().partition(|t| t.slot < SLOTS);
            for t in inner.into_iter().rev() {
                s.read_unlock(t);
            }
            assert!(this_thread_reads(id), "overflowed sections are still held");
            assert!(!s.try_synchronize());
            for t in over {
                s.read_unlock(t);
            }
            assert!(!this_thread_reads(id));
            assert!(s.try_synchronize());
        }
    }

    #[test]
    fn synchronize_waits_for_readers_on_many_threads() {
        for (n, mode) in modes().into_iter().enumerate() {
            let threads = 12;
            let s = Arc::new(Srcu::with_mode(400 + n as u64, mode));
            let release = Arc::new(std::sync::Barrier::new(threads + 1));
            let entered = Arc::new(std::sync::Barrier::new(threads + 1));
            let readers: Vec<_> = (0..threads)
                .map(|_| {
                    let (s, release, entered) = (s.clone(), release.clone(), entered.clone());
                    std::thread::spawn(move || {
                        let t = s.read_lock();
                        entered.wait();
                        release.wait();
                        std::thread::sleep(Duration::from_millis(5));
                        s.read_unlock(t);
                    })
                })
                .collect();
            entered.wait();
            assert!(s.readers(0));
            assert!(!s.try_synchronize());
            let (gp, done) = grace_period_thread(&s);
            std::thread::sleep(Duration::from_millis(30));
            assert!(!done.load(SeqCst), "grace period ended with readers inside");
            release.wait();
            for r in readers {
                r.join().unwrap();
            }
            gp.join().unwrap();
            assert!(done.load(SeqCst));
            assert!(!s.readers(0) && !s.readers(1));
        }
    }

    #[test]
    fn stress_no_reader_is_inside_a_version_freed_after_a_grace_period() {
        // Real threads: readers enter and leave as fast as they can (now and then nested, and
        // now and then past their slots), an updater publishes version k + 1, waits for a
        // grace period and frees version k, at least 2,000 times and until the readers have
        // run 10,000 sections. A reader must never hold a freed version.
        for (n, mode) in modes().into_iter().enumerate() {
            let s = Arc::new(Srcu::with_mode(700 + n as u64, mode));
            let current = Arc::new(AtomicU64::new(1));
            let freed = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(StdBool::new(false));
            let entered = Arc::new(AtomicU64::new(0));
            let readers: Vec<_> = (0..3)
                .map(|r| {
                    let (s, current, freed, stop) =
                        (s.clone(), current.clone(), freed.clone(), stop.clone());
                    let entered = entered.clone();
                    std::thread::spawn(move || {
                        let mut sections = 0u64;
                        while !stop.load(Relaxed) {
                            entered.fetch_add(1, Relaxed);
                            let depth = 1 + (sections as usize + r) % (SLOTS + 2);
                            let tokens: Vec<_> = (0..depth).map(|_| s.read_lock()).collect();
                            let v = current.load(Acquire);
                            std::hint::spin_loop();
                            assert!(freed.load(Acquire) < v, "version {v} freed under a reader");
                            for t in tokens.into_iter().rev() {
                                s.read_unlock(t);
                            }
                            sections += 1;
                        }
                        sections
                    })
                })
                .collect();
            // At least 2,000 grace periods, and on for as long as it takes (on a loaded host)
            // for the readers to have run 10,000 sections among them.
            let mut k = 0u64;
            while k < 2_000 || entered.load(Relaxed) < 10_000 {
                k += 1;
                current.store(k + 1, SeqCst);
                s.synchronize();
                freed.store(k, SeqCst);
            }
            stop.store(true, SeqCst);
            let sections: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
            assert!(
                sections >= 10_000,
                "readers ran {sections} sections ({mode:?})"
            );
        }
    }

    #[test]
    fn an_exited_threads_record_is_reused() {
        let s = Srcu::new(500);
        let record_of_a_thread = || {
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    s.read_unlock(s.read_lock());
                    LOCAL.with(|l| l.record.get().map(|r| r as *const Record as usize))
                })
                .join()
                .unwrap()
            })
        };
        let before = lock(registry()).len();
        for _ in 0..20 {
            assert!(record_of_a_thread().is_some());
        }
        // Other tests run threads concurrently, so allow for them; twenty sequential threads
        // alone must not have added twenty records.
        assert!(lock(registry()).len() < before + 20);
    }

    #[test]
    fn try_synchronize_succeeds_when_idle_and_fails_with_a_reader() {
        for (n, mode) in modes().into_iter().enumerate() {
            let s = Srcu::with_mode(600 + n as u64, mode);
            assert!(s.try_synchronize());
            let t = s.read_lock();
            assert!(!s.try_synchronize());
            s.read_unlock(t);
            assert!(s.try_synchronize());
        }
    }
}

/// The bare reader/grace-period protocol under loom, in the pairing that stands for
/// `membarrier` (see "Under the model checkers"): a reader walks whatever version of a
/// published object it loads; the updater publishes a new version, waits for a grace period
/// and frees the old one. No reader may still be inside a version freed. Run:
/// `RUSTFLAGS="--cfg loom" cargo test --release -p mmu-notifier --lib srcu::model`. Built with
/// `--cfg mmn_broken="no_reader_barrier"` (`MMN_BROKEN=no_reader_barrier`), the readers skip
/// their entry barrier and every model here must fail.
#[cfg(all(test, loom))]
mod model {
    use super::*;
    use loom::sync::atomic::AtomicUsize as LoomUsize;
    use loom::sync::Arc;

    /// `readers` threads, each inside a section of the domain (on the overflow counter if
    /// `overflow`: its slots are then all held by sections of another domain first), against
    /// one unlink, grace period and free.
    fn unlink_and_free(readers: usize, overflow: bool) {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        loom::model(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let s = Arc::new(Srcu::with_mode(1, Mode::Fence));
            let other = Arc::new(Srcu::with_mode(2, Mode::Fence));
            // Version 1 is published; `freed` is the newest version freed.
            let current = Arc::new(LoomUsize::new(1));
            let freed = Arc::new(LoomUsize::new(0));
            let threads: Vec<_> = (0..readers)
                .map(|_| {
                    let (s, other) = (s.clone(), other.clone());
                    let (current, freed) = (current.clone(), freed.clone());
                    loom::thread::spawn(move || {
                        let fill = if overflow { SLOTS } else { 0 };
                        let held: Vec<_> = (0..fill).map(|_| other.read_lock()).collect();
                        let t = s.read_lock();
                        assert_eq!(t.slot >= SLOTS, overflow);
                        let v = current.load(Acquire);
                        assert!(
                            freed.load(Acquire) < v,
                            "a reader is inside version {v}, already freed"
                        );
                        s.read_unlock(t);
                        for t in held {
                            other.read_unlock(t);
                        }
                    })
                })
                .collect();
            current.store(2, SeqCst);
            s.synchronize();
            freed.store(1, SeqCst);
            for t in threads {
                t.join().unwrap();
            }
        });
        eprintln!(
            "loom model srcu({readers} readers, overflow {overflow}): {} executions",
            runs.load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    #[test]
    #[cfg_attr(mmn_broken = "no_reader_barrier", should_panic)]
    fn a_grace_period_waits_for_a_reader_in_its_slot() {
        unlink_and_free(1, false);
    }

    #[test]
    #[cfg_attr(mmn_broken = "no_reader_barrier", should_panic)]
    fn a_grace_period_waits_for_a_reader_on_the_overflow_counter() {
        unlink_and_free(1, true);
    }

    #[test]
    #[cfg_attr(mmn_broken = "no_reader_barrier", should_panic)]
    fn a_grace_period_waits_for_two_readers() {
        unlink_and_free(2, false);
    }
}
