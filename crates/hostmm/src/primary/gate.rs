//! The pending window: making an invalidation visible before the unmapping thread returns.
//!
//! # The problem
//!
//! userfaultfd delivers `UNMAP` *after* the pages are gone, and Linux releases the unmapping
//! thread as soon as the event is *read*, not when the monitor has processed it. Between the
//! `read()` and the invalidation, `munmap` has returned and the application may look up the
//! range in a cache and be handed a registration of memory that no longer exists.
//!
//! libfabric closes this by holding its global cache lock across the blocking `read()`, which
//! deadlocks any thread that unmaps monitored memory while holding that lock (#5554, #5580).
//!
//! # The mechanism
//!
//! Each event source that must acknowledge before it has invalidated (the uffd monitor thread,
//! an imported foreign monitor) owns an [`Opener`] slot, a sequence count that is odd while its
//! window is open. The monitor opens its window when `poll` reports an event, *before* `read()`,
//! and closes it after the events read have been turned into invalidations. A lookup calls
//! [`PendingGate::wait`] first: if any window is open it waits for exactly those windows (the
//! ones open when the lookup started) to close. So a lookup that starts after `munmap` returned
//! — hence after the `read()`, hence after the window opened — cannot run ahead of the
//! invalidation.
//!
//! No lock is held while a window is open except by the monitor's own short critical sections,
//! and waiting happens before a lookup takes any lock, so a thread waiting here never holds
//! something the monitor needs. The fast path is one load of a counter that is zero whenever no
//! window is open.

use crate::primitive::{lock, spin, wait, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};
use std::sync::Arc;

/// How many sources may hold a slot at once.
pub const MAX_OPENERS: usize = 32;

/// The shared pending-window state of one address space. Cheap to clone.
#[derive(Clone)]
pub struct PendingGate {
    inner: Arc<GateInner>,
}

struct GateInner {
    /// Windows open right now, over all slots: the fast path.
    open: AtomicUsize,
    /// Per-opener sequence counts; odd = open.
    slots: [AtomicU64; MAX_OPENERS],
    /// Which slots are taken, one bit each.
    taken: Mutex<u64>,
    sleepers: AtomicUsize,
    wake_lock: Mutex<()>,
    wake: Condvar,
}

/// A slot that can open windows. `Send` but not `Sync` and not `Clone`: one opener is one
/// serial sequence of windows, owned by one thread at a time. Windows of one opener may nest;
/// the slot stays open until the outermost closes.
pub struct Opener {
    gate: PendingGate,
    slot: usize,
    depth: core::cell::Cell<u32>,
}

/// An open window; dropping it closes the window and wakes waiters.
#[must_use = "the window closes when this guard is dropped"]
pub struct Window<'a> {
    opener: &'a Opener,
}

impl Default for PendingGate {
    fn default() -> Self {
        Self::new()
    }
}

impl PendingGate {
    /// A gate with no opener.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(GateInner {
                open: AtomicUsize::new(0),
                slots: core::array::from_fn(|_| AtomicU64::new(0)),
                taken: Mutex::new(0),
                sleepers: AtomicUsize::new(0),
                wake_lock: Mutex::new(()),
                wake: Condvar::new(),
            }),
        }
    }

    /// Takes a slot; `None` when [`MAX_OPENERS`] sources already hold one.
    pub fn opener(&self) -> Option<Opener> {
        let mut taken = lock(&self.inner.taken);
        let slot = (0..MAX_OPENERS).find(|i| *taken & (1 << i) == 0)?;
        *taken |= 1 << slot;
        Some(Opener {
            gate: self.clone(),
            slot,
            depth: core::cell::Cell::new(0),
        })
    }

    /// Whether any window is open right now.
    pub fn any_open(&self) -> bool {
        self.inner.open.load(Ordering::SeqCst) != 0
    }

    /// Returns once every window that was open when this call started has closed.
    /// Must be called with no lock held that an opener's processing may take.
    #[inline]
    pub fn wait(&self) {
        if self.inner.open.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.wait_slow();
    }

    #[cold]
    fn wait_slow(&self) {
        let g = &self.inner;
        let mut snap = [0u64; MAX_OPENERS];
        for (s, slot) in snap.iter_mut().zip(g.slots.iter()) {
            *s = slot.load(Ordering::SeqCst);
        }
        let done = |snap: &[u64; MAX_OPENERS]| {
            snap.iter()
                .zip(g.slots.iter())
                .all(|(s, slot)| s % 2 == 0 || slot.load(Ordering::SeqCst) != *s)
        };
        const SPINS: u32 = if cfg!(loom) { 1 } else { 200 };
        for i in 0..SPINS {
            if done(&snap) {
                return;
            }
            spin(i);
        }
        g.sleepers.fetch_add(1, Ordering::SeqCst);
        let mut guard = lock(&g.wake_lock);
        while !done(&snap) {
            guard = wait(&g.wake, guard);
        }
        drop(guard);
        g.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Opener {
    /// Opens this source's window (or nests inside the one already open).
    pub fn open(&self) -> Window<'_> {
        let d = self.depth.get();
        self.depth.set(d + 1);
        if d == 0 {
            let g = &self.gate.inner;
            g.open.fetch_add(1, Ordering::SeqCst);
            g.slots[self.slot].fetch_add(1, Ordering::SeqCst);
        }
        Window { opener: self }
    }

    /// The gate this opener belongs to.
    pub fn gate(&self) -> &PendingGate {
        &self.gate
    }
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        let d = self.opener.depth.get() - 1;
        self.opener.depth.set(d);
        if d != 0 {
            return;
        }
        let g = &self.opener.gate.inner;
        g.slots[self.opener.slot].fetch_add(1, Ordering::SeqCst);
        g.open.fetch_sub(1, Ordering::SeqCst);
        // A sleeper announces itself (`sleepers += 1`) and then reads the slot; this closer
        // bumped the slot and now reads `sleepers`. One of the two must see the other's write.
        // With plain loads that is the store→load (Dekker) pattern, which only a single total
        // order of SeqCst operations guarantees. Reading `sleepers` with a read-modify-write
        // instead makes it hold under acquire/release alone: an RMW reads the latest value in
        // `sleepers`' modification order, so either it sees the sleeper's increment, or the
        // increment reads from this RMW and the slot bump happens-before the sleeper's check.
        // (loom treats SeqCst as AcqRel, and found the lost wake-up the plain load allows there.)
        if g.sleepers.fetch_add(0, Ordering::SeqCst) != 0 {
            // Taking the lock orders this wake-up after a sleeper's last check.
            drop(lock(&g.wake_lock));
            g.wake.notify_all();
        }
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        let mut taken = lock(&self.gate.inner.taken);
        *taken &= !(1 << self.slot);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn wait_returns_at_once_when_no_window_is_open() {
        let gate = PendingGate::new();
        gate.wait();
        assert!(!gate.any_open());
    }

    #[test]
    fn wait_blocks_until_the_window_closes() {
        let gate = PendingGate::new();
        let op = gate.opener().unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        std::thread::scope(|s| {
            let w = op.open();
            let g2 = gate.clone();
            let c2 = closed.clone();
            let t = s.spawn(move || {
                g2.wait();
                assert!(
                    c2.load(std::sync::atomic::Ordering::SeqCst),
                    "wait returned while the window was open"
                );
            });
            std::thread::sleep(Duration::from_millis(30));
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(w);
            t.join().unwrap();
        });
    }

    #[test]
    fn a_waiter_is_not_starved_by_later_windows() {
        let gate = PendingGate::new();
        let op = gate.opener().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::scope(|s| {
            let stop2 = stop.clone();
            s.spawn(move || {
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    let _w = op.open();
                    std::thread::yield_now();
                }
            });
            for _ in 0..1000 {
                gate.wait();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }

    #[test]
    fn nested_windows_close_with_the_outermost() {
        let gate = PendingGate::new();
        let op = gate.opener().unwrap();
        let outer = op.open();
        let inner = op.open();
        drop(inner);
        assert!(gate.any_open());
        drop(outer);
        assert!(!gate.any_open());
    }

    #[test]
    fn slots_are_limited_and_reusable() {
        let gate = PendingGate::new();
        let all: Vec<_> = (0..MAX_OPENERS).map(|_| gate.opener().unwrap()).collect();
        assert!(gate.opener().is_none());
        drop(all);
        assert!(gate.opener().is_some());
    }
}
