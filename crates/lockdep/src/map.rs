//! Pseudo-locks: lock classes with no lock behind them (the kernel's bare `lockdep_map`).
//!
//! Some things behave like locks for deadlock purposes without being one: "reclaim may run
//! here" (`fs_reclaim`), "invalidation callbacks are running" (a notifier core's map), "the
//! work item is executing" (`flush_work`), "an SRCU read section is open" (`synchronize_srcu`
//! waits for it). A [`LockMap`] names such a thing; code that *is inside* it holds it
//! ([`LockMap::acquire`]), code that *may wait for it or cause it* validates an acquisition
//! without holding it ([`LockMap::might_lock`], [`LockMap::wait`], [`LockMap::sync`]). Holding
//! lock L while waiting records L → map; taking L inside the map records map → L; together they
//! are the cycle that would hang.

use std::marker::PhantomData;
use std::panic::Location;

use crate::class::{LockClass, LockClassKey};
use crate::validator::{self, Held, How};
use crate::Read;

/// The pseudo-locks every allocation that may enter direct reclaim primes with `might_lock`,
/// registered with [`reclaim_primes!`](crate::reclaim_primes). A cycle through one is a
/// [`ReportKind::ReclaimInversion`](crate::ReportKind::ReclaimInversion).
#[linkme::distributed_slice]
pub static RECLAIM_MAPS: [&'static LockMap];

/// Registers a `static` [`LockMap`] as one that direct reclaim may take: every allocation
/// that may enter direct reclaim then primes it with `might_lock` (as `fs_reclaim_acquire`
/// primes `__mmu_notifier_invalidate_range_start_map`), and cycles through it are reported as
/// reclaim inversions. The registration is made when the program is linked, so it holds
/// before any allocation.
///
/// ```
/// use lockdep::{might_alloc, reclaim_primes, scope::Scope, static_lock_class, Gfp, LockMap,
///               Mutex, ReportKind};
///
/// static SHRINKING: LockMap = LockMap::new("my_cache_shrinking");
/// reclaim_primes!(SHRINKING);
///
/// let scope = Scope::new();
/// let lock = Mutex::new((), static_lock_class!("my_cache_lock"));
/// {
///     let _inside = SHRINKING.acquire(); // what reclaim runs takes the lock
///     let _g = lock.lock();
/// }
/// {
///     let _g = lock.lock();
///     might_alloc(Gfp::KERNEL); // and the lock is held across an allocation
/// }
/// # #[cfg(feature = "enabled")]
/// assert_eq!(scope.of_kind(ReportKind::ReclaimInversion).len(), 1);
/// # scope.take();
/// ```
#[macro_export]
macro_rules! reclaim_primes {
    ($map:path) => {
        const _: () = {
            #[$crate::__linkme::distributed_slice($crate::RECLAIM_MAPS)]
            #[linkme(crate = $crate::__linkme)]
            static PRIMED: &$crate::LockMap = &$map;
        };
    };
}

enum MapClass {
    Key(LockClassKey),
    Class(LockClass),
}

/// A pseudo-lock. Usually a `static`, so that it is one class:
///
/// ```
/// use lockdep::LockMap;
/// static WORK_RUNNING: LockMap = LockMap::new("my_work");
///
/// // The worker runs each item inside the map...
/// {
///     let _running = WORK_RUNNING.acquire();
///     // ...do the work...
/// }
/// // ...and a flush waits for it: an acquisition that holds nothing.
/// WORK_RUNNING.wait();
/// ```
pub struct LockMap {
    class: MapClass,
    #[cfg_attr(not(feature = "enabled"), allow(dead_code))]
    fs_reclaim: bool,
}

impl LockMap {
    /// A pseudo-lock whose class is called `name`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            class: MapClass::Key(LockClassKey::new(name)),
            fs_reclaim: false,
        }
    }

    /// `fs_reclaim` itself: cycles through it are reclaim inversions, and taking it again is
    /// an allocation from inside reclaim.
    pub(crate) const fn new_fs_reclaim(name: &'static str) -> Self {
        Self {
            class: MapClass::Key(LockClassKey::new(name)),
            fs_reclaim: true,
        }
    }

    /// A pseudo-lock of an existing class (for example a [`DynamicKey`](crate::DynamicKey)'s,
    /// for per-object maps such as one per SRCU domain).
    pub fn with_class(class: impl Into<LockClass>) -> Self {
        Self {
            class: MapClass::Class(class.into()),
            fs_reclaim: false,
        }
    }

    /// The map's class.
    #[inline]
    pub fn class(&self) -> LockClass {
        match &self.class {
            #[cfg(feature = "enabled")]
            MapClass::Key(k) => k.class_with(|| self.reclaim_role()),
            #[cfg(not(feature = "enabled"))]
            MapClass::Key(k) => k.class(),
            MapClass::Class(c) => *c,
        }
    }

    /// What the map is to the reclaim model: `fs_reclaim`, a map reclaim primes (listed in
    /// [`RECLAIM_MAPS`](crate::RECLAIM_MAPS)), or neither.
    #[cfg(feature = "enabled")]
    fn reclaim_role(&self) -> crate::class::Reclaim {
        use crate::class::Reclaim;
        if self.fs_reclaim {
            Reclaim::Fs
        } else if RECLAIM_MAPS.iter().any(|m| std::ptr::eq(*m, self)) {
            Reclaim::Primed
        } else {
            Reclaim::No
        }
    }

    fn instance(&self) -> usize {
        self as *const Self as usize
    }

    /// Holds the map exclusively until the guard drops (`lock_map_acquire`).
    #[inline]
    #[track_caller]
    pub fn acquire(&self) -> LockMapGuard<'_> {
        self.guard(How::new(Read::Exclusive))
    }

    /// Holds the map as a recursive reader until the guard drops (`lock_map_acquire_read`:
    /// an SRCU read section, a work item that may run concurrently with itself).
    #[inline]
    #[track_caller]
    pub fn acquire_read(&self) -> LockMapGuard<'_> {
        self.guard(How::new(Read::Recursive))
    }

    /// Holds the map as a non-recursive reader until the guard drops.
    #[inline]
    #[track_caller]
    pub fn acquire_shared(&self) -> LockMapGuard<'_> {
        self.guard(How::new(Read::Shared))
    }

    /// Holds the map exclusively where entering it waits for nothing, until the guard drops:
    /// what is taken inside it is ordered after it, but entering records no edge into it (as
    /// a trylock). For the second half of a section whose first half, entered with
    /// [`LockMap::acquire`], did the waiting: a lock taken in the first half and held into the
    /// second is then not reported as a cycle with the map, since the second half waits for no
    /// one who could be waiting for that lock.
    #[inline]
    #[track_caller]
    pub fn acquire_nowait(&self) -> LockMapGuard<'_> {
        self.guard(How::new(Read::Exclusive).trylock())
    }

    /// Holds the map as a trylock (no ordering edge into it) until the guard drops
    /// (`lock_map_acquire_tryread` when `read`).
    #[inline]
    #[track_caller]
    pub fn acquire_try(&self, read: bool) -> LockMapGuard<'_> {
        let r = if read {
            Read::Recursive
        } else {
            Read::Exclusive
        };
        self.guard(How::new(r).trylock())
    }

    #[inline]
    #[track_caller]
    fn guard(&self, how: How) -> LockMapGuard<'_> {
        LockMapGuard {
            _held: validator::acquire(self.class(), self.instance(), how, Location::caller()),
            _map: PhantomData,
        }
    }

    /// Acquires the map exclusively with no guard (`lock_map_acquire`); pair with
    /// [`LockMap::release_raw`] on the same thread. For acquire and release that live in
    /// different functions, like `fs_reclaim_acquire`/`fs_reclaim_release`.
    #[inline]
    #[track_caller]
    pub fn acquire_raw(&self) {
        validator::acquire(
            self.class(),
            self.instance(),
            How::new(Read::Exclusive),
            Location::caller(),
        )
        .keep_held();
    }

    /// Releases an [`LockMap::acquire_raw`] (`lock_map_release`). Releasing a map the task
    /// does not hold is reported as [`ReportKind::BadUnlock`](crate::ReportKind::BadUnlock).
    #[inline]
    #[track_caller]
    pub fn release_raw(&self) {
        if crate::is_enabled() {
            validator::release(self.instance(), Some(Location::caller()));
        }
    }

    /// Records the dependencies of acquiring the map exclusively, without holding it
    /// (`might_lock`).
    #[inline]
    #[track_caller]
    pub fn might_lock(&self) {
        validator::might_acquire(self.class(), How::new(Read::Exclusive), Location::caller());
    }

    /// [`LockMap::might_lock`] for a reader (`might_lock_read`).
    #[inline]
    #[track_caller]
    pub fn might_lock_read(&self) {
        validator::might_acquire(self.class(), How::new(Read::Shared), Location::caller());
    }

    /// [`LockMap::might_lock`] of subclass `subclass` (`might_lock_nested`).
    #[inline]
    #[track_caller]
    pub fn might_lock_nested(&self, subclass: u8) {
        validator::might_acquire(
            self.class().subclass(subclass),
            How::new(Read::Exclusive),
            Location::caller(),
        );
    }

    /// Waits for every holder of the map to leave (`lock_map_sync`, as in
    /// `synchronize_srcu`): may sleep, and depends on everything the holders depend on.
    #[inline]
    #[track_caller]
    pub fn sync(&self) {
        wait_as_acquire(self.class());
    }

    /// A wait modelled as an acquisition: waiting for whatever runs inside the map while
    /// holding lock L records L → map, and may sleep. Use for grace periods, sequence-count
    /// waits, flushes; call it right before blocking.
    #[inline]
    #[track_caller]
    pub fn wait(&self) {
        wait_as_acquire(self.class());
    }

    /// [`LockMap::wait`] as a reader: for waits that may run concurrently with other readers'
    /// (a reader waiting for a writer to finish).
    #[inline]
    #[track_caller]
    pub fn wait_read(&self) {
        validator::might_acquire(
            self.class(),
            How::new(Read::Shared).sleep(),
            Location::caller(),
        );
    }

    /// Whether the current task holds the map (`lock_is_held`); `true` when validation is
    /// off, like the kernel's.
    pub fn is_held(&self) -> bool {
        validator::is_held(self.instance())
    }
}

impl std::fmt::Debug for LockMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockMap")
            .field("class", &self.class())
            .finish()
    }
}

/// A held [`LockMap`]; released on drop.
#[must_use = "the map is released when the guard is dropped"]
pub struct LockMapGuard<'a> {
    _held: Held,
    _map: PhantomData<&'a LockMap>,
}

impl std::fmt::Debug for LockMapGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockMapGuard")
    }
}

/// A wait modelled as an acquisition of `class` (see [`LockMap::wait`]), for crates that
/// keep a class rather than a map.
#[inline]
#[track_caller]
pub fn wait_as_acquire(class: impl Into<LockClass>) {
    validator::might_acquire(
        class.into(),
        How::new(Read::Exclusive).sleep(),
        Location::caller(),
    );
}
