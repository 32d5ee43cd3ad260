//! The machine's state: physical memory, swap, the LRU, the address spaces and their registry,
//! anon_vmas and files, counters, and what each thread is doing.
//!
//! The machine and its address spaces are one piece of state, as the kernel's globals and its
//! `mm_struct`s are: the machine finds every address space (reclaim, the OOM killer walk them
//! without their mmap locks), and every address space allocates from the machine. A
//! [`Space`] (`struct mm_struct`) owns the contract's notifier state ([`mmu_notifier::Mm`]), the
//! mmap lock (a validated read-write semaphore of the class `&mm->mmap_lock`) protecting its
//! VMAs, its page table, and the flags the OOM paths read (`MMF_UNSTABLE`, `MMF_OOM_SKIP`). The page allocator's policy is
//! in `alloc.rs`, building a machine and its kernel threads in `boot.rs`.

use crate::primitive::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use mmu_notifier::Mm;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::VmError;
use crate::frame::{FramePool, Pfn};
use crate::lru::Lru;
use crate::pte::PageTable;
use crate::rmap::{AnonVma, File, MmId};
use crate::shrinker::Shrinker;
use crate::swap::Swap;
use crate::vma::VmaTree;

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
    /// Allocations failed on purpose ([`Machine::inject_alloc_failures`]).
    pub injected_alloc_failures: AtomicU64,
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
    pub injected_alloc_failures: u64,
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
    pub(crate) kswapd: crate::kswapd::KswapdHandle,
    pub(crate) next_mm: AtomicU64,
    pub(crate) oom_reports: crate::primitive::Mutex<Vec<crate::oom_report::ReapReport>>,
    /// What each thread is doing, for the watchdog and for reports.
    pub(crate) tasks: Arc<crate::task::Tasks>,
    /// Errors found where they could not be returned; [`Machine::check`] reports them.
    pub(crate) late_errors: crate::primitive::Mutex<Vec<VmError>>,
    /// Owner of each device-private frame (`page->pgmap->owner`).
    pub(crate) device_owner: lockdep::SpinLock<HashMap<u32, u64>>,
    pub(crate) shutdown: AtomicBool,
    /// Fail one allocation in this many (0: never), as `fail_page_alloc` does.
    pub(crate) fail_alloc_one_in: AtomicU64,
    /// Allocations seen by the failure injection.
    pub(crate) fail_alloc_seen: AtomicU64,
}

/// A simulated machine. Cloning gives another handle to the same machine.
#[derive(Clone)]
pub struct Machine(pub(crate) Arc<Inner>);

impl Machine {
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
            injected_alloc_failures: l(&c.injected_alloc_failures),
            free: self.0.pool.nr_free(),
            total: self.0.pool.total(),
        }
    }

    /// Drops a reference to a frame (`folio_put`), freeing it with the last.
    pub fn put_page(&self, pfn: Pfn) -> Result<bool, VmError> {
        self.0.put_page(pfn)
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
    /// The state of a machine built from `config` (validated), with no kernel thread yet.
    pub(crate) fn new(config: Config) -> Result<Arc<Inner>, VmError> {
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
            kswapd: crate::kswapd::KswapdHandle::default(),
            next_mm: AtomicU64::new(1),
            oom_reports: crate::primitive::Mutex::new(Vec::new()),
            late_errors: crate::primitive::Mutex::new(Vec::new()),
            tasks: Arc::new(crate::task::Tasks::default()),
            device_owner: lockdep::SpinLock::new(HashMap::new(), &DEVICE_LOCK),
            shutdown: AtomicBool::new(false),
            fail_alloc_one_in: AtomicU64::new(0),
            fail_alloc_seen: AtomicU64::new(0),
            config,
        });
        Ok(inner)
    }

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

/// `mm->flags` bits the simulator uses.
pub mod mmf {
    /// `MMF_UNSTABLE`: the OOM reaper has started; content is no longer reliable and faults fail.
    pub const UNSTABLE: u32 = 1 << 0;
    /// `MMF_OOM_SKIP`: reaped (or exited); the OOM killer no longer considers it.
    pub const OOM_SKIP: u32 = 1 << 1;
    /// The owning process was chosen by the OOM killer (`tsk_is_oom_victim`).
    pub const OOM_VICTIM: u32 = 1 << 2;
    /// `exit_mmap` has run.
    pub const EXITED: u32 = 1 << 3;
}

pub(crate) static MMAP_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("&mm->mmap_lock");

/// The lock class of every address space's mmap lock (what a driver's `might_lock` names).
pub fn mmap_lock_class() -> lockdep::LockClass {
    MMAP_LOCK.class()
}

/// One address space.
pub struct Space {
    pub(crate) id: MmId,
    pub(crate) mm: Mm,
    /// The mmap lock and the VMAs it protects; shared with the contract, which records
    /// `might_lock` of it in unlocked registrations and checks it in the `_locked` ones.
    pub(crate) mmap_lock: Arc<lockdep::RwLock<VmaTree>>,
    pub(crate) pt: PageTable,
    pub(crate) flags: AtomicU32,
    pub(crate) rss: AtomicUsize,
    pub(crate) machine: Arc<Inner>,
    /// What `exit_mmap` returned, for the `Process::exit` whose drop ran it.
    pub(crate) exit_result: crate::primitive::Mutex<Option<Result<(), VmError>>>,
}

impl Space {
    /// The address space's id on its machine.
    pub fn id(&self) -> MmId {
        self.id
    }
    /// The contract's notifier state: subscribe secondary MMUs here.
    pub fn mm(&self) -> &Mm {
        &self.mm
    }
    /// Resident pages mapped (`get_mm_rss`).
    pub fn rss(&self) -> usize {
        self.rss.load(Ordering::Acquire)
    }
    /// The `mm->flags` bits ([`mmf`]).
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }
    /// Whether a flag of [`mmf`] is set.
    pub fn test(&self, f: u32) -> bool {
        self.flags() & f != 0
    }
    pub(crate) fn set(&self, f: u32) -> u32 {
        self.flags.fetch_or(f, Ordering::AcqRel)
    }
    /// The machine.
    pub fn machine(&self) -> Machine {
        Machine(self.machine.clone())
    }
    /// The VMAs, printed one per line as `/proc/PID/maps` would (takes the mmap lock for read).
    pub fn maps(&self) -> String {
        let vmas = self.mmap_lock.read();
        vmas.iter().map(|v| format!("{v:?}\n")).collect()
    }
    /// Number of VMAs.
    pub fn nr_vmas(&self) -> usize {
        self.mmap_lock.read().len()
    }
    /// The primary's translation of `addr` now, read under its page-table lock: the frame of a
    /// present or device-private entry and whether it is writable (`None`: no entry, a swap or
    /// a migration entry). For checkers of secondary MMUs.
    pub fn lookup(&self, addr: u64) -> Option<(crate::Pfn, bool)> {
        let pte = self.pt.leaf(addr)?.ptl.lock()[crate::pte::pte_index(addr)];
        pte.pfn().map(|p| (p, pte.is_write()))
    }
    /// What a hardware walker sharing the page table sees at `addr` (an IOMMU's ATS translation
    /// request, `iommu_sva`): the frame of a *present* entry and whether it is writable. A
    /// device-private, swap or migration entry is not present to hardware (the IOMMU raises a
    /// page request, answered by the CPU fault path).
    pub fn walk(&self, addr: u64) -> Option<(crate::Pfn, bool)> {
        let pte = self.pt.leaf(addr)?.ptl.lock()[crate::pte::pte_index(addr)];
        pte.is_present()
            .then(|| pte.pfn().map(|p| (p, pte.is_write())))
            .flatten()
    }
    /// `check_stable_address_space`: faults fail once the OOM reaper has started.
    pub(crate) fn check_stable(&self) -> Result<(), VmError> {
        if self.test(mmf::UNSTABLE) {
            return Err(VmError::Gone(format!(
                "mm {} is being reaped by the OOM reaper (SIGBUS)",
                self.id
            )));
        }
        if self.test(mmf::EXITED) {
            return Err(VmError::Gone(format!("mm {} has exited", self.id)));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Space {{ id: {}, rss: {}, flags: {:#x} }}",
            self.id,
            self.rss(),
            self.flags()
        )
    }
}
