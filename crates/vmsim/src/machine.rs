//! The machine: physical memory, swap, the LRU, the address spaces, and the page allocator's
//! policy (watermarks, kswapd, direct reclaim, the OOM killer).
//!
//! [`Machine::alloc_page`] is `__alloc_pages` in miniature (`mm/page_alloc.c`): every allocation
//! first goes through the validator's allocation hook ([`lockdep::might_alloc`], which primes the
//! reclaim and notifier maps exactly as `fs_reclaim_acquire` does), takes a free frame above the
//! watermark, wakes kswapd when free memory falls below the low watermark, and — if nothing is
//! free and the GFP flags allow it — reclaims in the allocating thread (direct reclaim, where a
//! notifier callback runs inside whatever locks the allocator holds: seed 000), and finally
//! invokes the OOM killer.

use crate::primitive::{AtomicBool, AtomicU64, Ordering};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use lockdep::Gfp;

use crate::error::VmError;
use crate::frame::{FramePool, Pfn};
use crate::lru::Lru;
use crate::reclaim::Shrinker;
use crate::rmap::{AnonVma, File, MmId};
use crate::space::Space;
use crate::swap::Swap;

/// How a machine is built.
#[derive(Clone, Debug)]
pub struct Config {
    /// Page frames of physical memory.
    pub frames: usize,
    /// Swap slots (0: no swap).
    pub swap_slots: u32,
    /// Free frames below which only atomic and reclaim-internal allocations succeed
    /// (`WMARK_MIN`).
    pub wmark_min: usize,
    /// Free frames below which kswapd is woken (`WMARK_LOW`).
    pub wmark_low: usize,
    /// Free frames kswapd reclaims up to (`WMARK_HIGH`).
    pub wmark_high: usize,
    /// Run a kswapd thread. Off, only direct reclaim frees memory (deterministic tests).
    pub kswapd: bool,
    /// Frames a reclaim pass tries to free at once (`SWAP_CLUSTER_MAX`).
    pub reclaim_batch: usize,
    /// Attempts of the OOM reaper on one mm (`MAX_OOM_REAP_RETRIES`).
    pub oom_reap_retries: u32,
    /// Sleep between the reaper's attempts (Linux: `HZ/10`; scaled down by default).
    pub oom_reap_delay: Duration,
    /// Notifier contract profile for every address space.
    pub profile: mmu_notifier::Profile,
}

impl Config {
    /// A machine of `frames` frames, with watermarks in Linux's proportions (min ≈ 1/64 of
    /// memory, low = min × 5/4, high = min × 3/2), no swap, no kswapd.
    pub fn new(frames: usize) -> Config {
        let min = (frames / 64).max(1);
        Config {
            frames,
            swap_slots: 0,
            wmark_min: min,
            wmark_low: min + min / 4,
            wmark_high: min + min / 2,
            kswapd: false,
            reclaim_batch: 32,
            oom_reap_retries: 10,
            oom_reap_delay: Duration::from_millis(1),
            profile: mmu_notifier::Profile::default(),
        }
    }
    /// Sets the swap size.
    pub fn swap(mut self, slots: u32) -> Config {
        self.swap_slots = slots;
        self
    }
    /// Turns kswapd on or off.
    pub fn kswapd(mut self, on: bool) -> Config {
        self.kswapd = on;
        self
    }
    /// Sets the watermarks.
    pub fn watermarks(mut self, min: usize, low: usize, high: usize) -> Config {
        (self.wmark_min, self.wmark_low, self.wmark_high) = (min, low, high);
        self
    }
    /// Sets the notifier profile.
    pub fn profile(mut self, profile: mmu_notifier::Profile) -> Config {
        self.profile = profile;
        self
    }

    fn validate(&self) -> Result<(), VmError> {
        if !(self.wmark_min <= self.wmark_low && self.wmark_low <= self.wmark_high) {
            return Err(VmError::InvalidArgument(format!(
                "watermarks must satisfy min <= low <= high (got {} {} {})",
                self.wmark_min, self.wmark_low, self.wmark_high
            )));
        }
        if self.wmark_high >= self.frames {
            return Err(VmError::InvalidArgument(format!(
                "high watermark {} must be below the {} frames of the machine",
                self.wmark_high, self.frames
            )));
        }
        if self.reclaim_batch == 0 {
            return Err(VmError::InvalidArgument("reclaim batch of 0".into()));
        }
        Ok(())
    }
}

/// Counters of what the machine did.
#[derive(Default, Debug)]
pub struct Counters {
    /// Page faults handled.
    pub faults: AtomicU64,
    /// Copy-on-write copies.
    pub cow: AtomicU64,
    /// Pages swapped out.
    pub swap_out: AtomicU64,
    /// Pages swapped in.
    pub swap_in: AtomicU64,
    /// Frames freed by reclaim.
    pub reclaimed: AtomicU64,
    /// Direct reclaim entries.
    pub direct_reclaim: AtomicU64,
    /// kswapd wake-ups that ran.
    pub kswapd_runs: AtomicU64,
    /// Pages kept by reclaim because a primary or secondary MMU had used them.
    pub referenced: AtomicU64,
    /// OOM kills.
    pub oom_kills: AtomicU64,
    /// Allocations that failed.
    pub alloc_failures: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Stats {
    pub faults: u64,
    pub cow: u64,
    pub swap_out: u64,
    pub swap_in: u64,
    pub reclaimed: u64,
    pub direct_reclaim: u64,
    pub kswapd_runs: u64,
    pub referenced: u64,
    pub oom_kills: u64,
    pub alloc_failures: u64,
    pub free: usize,
    pub total: usize,
}

static REGISTRY_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("vmsim registry");
static DEVICE_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("pgmap owners");
static SHRINKER_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("shrinker_rwsem");

pub(crate) struct Registry {
    pub(crate) spaces: HashMap<MmId, Weak<Space>>,
    pub(crate) anon: HashMap<u32, Weak<AnonVma>>,
    pub(crate) files: HashMap<u32, Weak<File>>,
}

/// The shared state of a machine.
pub struct Inner {
    pub(crate) config: Config,
    pub(crate) pool: FramePool,
    pub(crate) lru: Lru,
    pub(crate) swap: Swap,
    pub(crate) registry: lockdep::SpinLock<Registry>,
    pub(crate) shrinkers: lockdep::RwLock<Vec<Arc<dyn Shrinker>>>,
    pub(crate) counters: Counters,
    pub(crate) kswapd: crate::reclaim::KswapdHandle,
    pub(crate) next_mm: AtomicU64,
    pub(crate) oom_reports: crate::primitive::Mutex<Vec<crate::oom::ReapReport>>,
    /// Every thread's operation slot, for the watchdog.
    pub(crate) tasks: crate::primitive::Mutex<Vec<Weak<crate::watchdog::Slot>>>,
    /// The watchdog's clock: periods elapsed since it started (0 without a watchdog).
    pub(crate) watch_tick: AtomicU64,
    /// Errors found where they could not be returned; [`Machine::check`] reports them.
    pub(crate) late_errors: crate::primitive::Mutex<Vec<VmError>>,
    /// Owner of each device-private frame (`page->pgmap->owner`).
    pub(crate) device_owner: lockdep::SpinLock<HashMap<u32, u64>>,
    pub(crate) shutdown: AtomicBool,
}

/// A simulated machine. Cloning gives another handle to the same machine.
#[derive(Clone)]
pub struct Machine(pub(crate) Arc<Inner>);

impl Machine {
    /// Builds a machine.
    pub fn new(config: Config) -> Result<Machine, VmError> {
        config.validate()?;
        let inner = Arc::new(Inner {
            pool: FramePool::new(config.frames)?,
            lru: Lru::new(),
            swap: Swap::new(config.swap_slots),
            registry: lockdep::SpinLock::new(
                Registry {
                    spaces: HashMap::new(),
                    anon: HashMap::new(),
                    files: HashMap::new(),
                },
                &REGISTRY_LOCK,
            ),
            shrinkers: lockdep::RwLock::new(Vec::new(), &SHRINKER_LOCK),
            counters: Counters::default(),
            kswapd: crate::reclaim::KswapdHandle::default(),
            next_mm: AtomicU64::new(1),
            oom_reports: crate::primitive::Mutex::new(Vec::new()),
            late_errors: crate::primitive::Mutex::new(Vec::new()),
            tasks: crate::primitive::Mutex::new(Vec::new()),
            watch_tick: AtomicU64::new(0),
            device_owner: lockdep::SpinLock::new(HashMap::new(), &DEVICE_LOCK),
            shutdown: AtomicBool::new(false),
            config,
        });
        if inner.config.kswapd {
            crate::reclaim::start_kswapd(&inner);
        }
        Ok(Machine(inner))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// Physical memory.
    pub fn frames(&self) -> &FramePool {
        &self.0.pool
    }

    /// The swap area.
    pub fn swap(&self) -> &Swap {
        &self.0.swap
    }

    /// The LRU lists.
    pub fn lru(&self) -> &Lru {
        &self.0.lru
    }

    /// Registers a shrinker (`register_shrinker`): called under memory pressure.
    pub fn register_shrinker(&self, s: Arc<dyn Shrinker>) {
        self.0.shrinkers.write().push(s);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.0.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            faults: l(&c.faults),
            cow: l(&c.cow),
            swap_out: l(&c.swap_out),
            swap_in: l(&c.swap_in),
            reclaimed: l(&c.reclaimed),
            direct_reclaim: l(&c.direct_reclaim),
            kswapd_runs: l(&c.kswapd_runs),
            referenced: l(&c.referenced),
            oom_kills: l(&c.oom_kills),
            alloc_failures: l(&c.alloc_failures),
            free: self.0.pool.nr_free(),
            total: self.0.pool.total(),
        }
    }

    /// Allocates one frame (`alloc_pages(gfp, 0)`), reclaiming and OOM-killing as Linux would.
    ///
    /// # Context
    /// With a blocking `gfp` (`GFP_KERNEL`, `GFP_NOIO`, …) it may sleep and may enter direct
    /// reclaim, which calls MMU notifiers of any address space (the validator records that
    /// possibility on every call, whether or not reclaim runs). `Gfp::ATOMIC` / `Gfp::NOWAIT`
    /// never reclaim and may dip below the min watermark (atomic only). Fails with
    /// [`VmError::OutOfMemory`] when nothing can be freed.
    #[track_caller]
    pub fn alloc_page(&self, gfp: Gfp) -> Result<Pfn, VmError> {
        self.0.alloc_page(gfp)
    }

    /// Drops a reference to a frame (`folio_put`), freeing it with the last.
    pub fn put_page(&self, pfn: Pfn) -> Result<bool, VmError> {
        self.0.put_page(pfn)
    }

    /// Reclaims up to `target` frames now, as kswapd would (`GFP_KERNEL` context). Returns the
    /// frames freed.
    pub fn reclaim(&self, target: usize) -> usize {
        let _task = self.0.enter(crate::watchdog::Op::Reclaim, 0, target as u64);
        crate::reclaim::reclaim(&self.0, target, Gfp::KERNEL)
    }

    /// Stops background threads (kswapd). Also done when the last handle goes.
    pub fn shutdown(&self) {
        self.0.shutdown.store(true, Ordering::Release);
        self.0.kswapd.stop();
    }

    /// The address spaces alive now.
    pub fn spaces(&self) -> Vec<Arc<Space>> {
        self.0.spaces()
    }
}

impl Inner {
    pub(crate) fn spaces(&self) -> Vec<Arc<Space>> {
        self.registry
            .lock()
            .spaces
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    pub(crate) fn space(&self, id: MmId) -> Option<Arc<Space>> {
        self.registry.lock().spaces.get(&id).and_then(Weak::upgrade)
    }

    pub(crate) fn anon_vma(&self, id: u32) -> Option<Arc<AnonVma>> {
        self.registry.lock().anon.get(&id).and_then(Weak::upgrade)
    }

    pub(crate) fn file(&self, id: u32) -> Option<Arc<File>> {
        self.registry.lock().files.get(&id).and_then(Weak::upgrade)
    }

    pub(crate) fn new_anon_vma(&self) -> Arc<AnonVma> {
        let av = Arc::new(AnonVma::new());
        let mut r = self.registry.lock();
        r.anon.retain(|_, w| w.strong_count() > 0);
        r.anon.insert(av.id(), Arc::downgrade(&av));
        av
    }

    pub(crate) fn register_file(&self, f: &Arc<File>) {
        let mut r = self.registry.lock();
        r.files.retain(|_, w| w.strong_count() > 0);
        r.files.insert(f.id(), Arc::downgrade(f));
    }

    pub(crate) fn put_page(&self, pfn: Pfn) -> Result<bool, VmError> {
        let device = self
            .pool
            .frame(pfn)?
            .test(crate::frame::flags::DEVICE_PRIVATE);
        let freed = self.lru.put_page(&self.pool, pfn)?;
        if freed && device {
            self.device_owner.lock().remove(&pfn.0);
        }
        Ok(freed)
    }

    #[track_caller]
    pub(crate) fn alloc_page(&self, gfp: Gfp) -> Result<Pfn, VmError> {
        lockdep::might_alloc(gfp);
        let gfp = lockdep::current_gfp_context(gfp);
        let atomic = !gfp.allows_blocking();
        // Reclaim itself (PF_MEMALLOC) and atomic callers may use the reserve below `min`.
        let reserve = atomic || crate::reclaim::in_reclaim();
        let floor = if reserve { 0 } else { self.config.wmark_min };
        for attempt in 0..3 {
            if self.pool.nr_free() > floor {
                if let Some(pfn) = self.pool.take() {
                    if self.pool.nr_free() < self.config.wmark_low {
                        self.kswapd.wake();
                    }
                    return Ok(pfn);
                }
            }
            self.kswapd.wake();
            if atomic || crate::reclaim::in_reclaim() {
                break;
            }
            self.counters.direct_reclaim.fetch_add(1, Ordering::Relaxed);
            let want = self.config.reclaim_batch.max(self.config.wmark_min + 1);
            let freed = crate::reclaim::reclaim(self, want, gfp);
            if freed == 0 && attempt >= 1 {
                // No progress: the OOM killer (`out_of_memory`), then one more try.
                if !crate::oom::out_of_memory(self) {
                    break;
                }
            }
        }
        if let Some(pfn) = reserve.then(|| self.pool.take()).flatten() {
            return Ok(pfn);
        }
        self.counters.alloc_failures.fetch_add(1, Ordering::Relaxed);
        Err(VmError::OutOfMemory)
    }

    pub(crate) fn register_space(&self, s: &Arc<Space>) {
        let mut r = self.registry.lock();
        r.spaces.retain(|_, w| w.strong_count() > 0);
        r.spaces.insert(s.id(), Arc::downgrade(s));
    }

    pub(crate) fn unregister_space(&self, id: MmId) {
        self.registry.lock().spaces.remove(&id);
    }
}

impl crate::rmap::CacheOwner for Inner {
    fn drop_cache_page(&self, pfn: Pfn) {
        if let Ok(f) = self.pool.frame(pfn) {
            f.set_mapping(0, 0);
        }
        if let Err(e) = self.put_page(pfn) {
            self.late_error(e);
        }
    }
    fn drop_swap_slot(&self, slot: u32) {
        if let Err(e) = self.swap.free(slot) {
            self.late_error(e);
        }
    }
}

impl Inner {
    /// Records an error found where it cannot be returned (a destructor, a background thread);
    /// [`Machine::check`] reports it.
    pub(crate) fn late_error(&self, e: VmError) {
        self.late_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        self.kswapd.stop();
    }
}
