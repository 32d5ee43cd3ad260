//! One validated lock over a backend: `Mutex`, `SpinLock` and `RwLock` are `Lock<T, B>` for
//! three backends, as Rust-for-Linux's `kernel::sync::lock::Lock<T, B: Backend>` is.
//!
//! The lock owns the class and the raw lock; the backend says how the raw lock is taken and
//! what holding it means for the validator (may the taking sleep, does holding it make the
//! context atomic). Every way in goes through one of two bodies: [`Lock::blocking`] (validate,
//! then wait for the raw lock) and [`Lock::trying`] (try the raw lock, then record it as a
//! trylock, which adds no ordering edge into the lock).

use std::ops::{Deref, DerefMut};
use std::panic::Location;

use crate::class::LockClass;
use crate::primitive::{
    spin, RawMutex, RawMutexGuard, RawRwLock, RawRwLockReadGuard, RawRwLockWriteGuard,
};
use crate::validator::{self, Held, How};
use crate::Read;

mod sealed {
    pub trait Sealed {}
}

/// How a kind of lock is taken. Implemented by [`MutexBackend`], [`SpinBackend`] and
/// [`RwBackend`] only.
pub trait Backend: sealed::Sealed {
    /// The raw lock holding a `T`.
    #[doc(hidden)]
    type Raw<T>;
    /// The raw exclusive guard.
    #[doc(hidden)]
    type Guard<'a, T: 'a>: DerefMut<Target = T>;
    /// Taking the lock may sleep (checked with `might_sleep`).
    #[doc(hidden)]
    const SLEEPS: bool;
    /// Holding the lock makes the context atomic.
    #[doc(hidden)]
    const ATOMIC: bool;
    /// The kind's name, for `Debug`.
    #[doc(hidden)]
    const NAME: &'static str;
    #[doc(hidden)]
    fn new<T>(value: T) -> Self::Raw<T>;
    #[doc(hidden)]
    fn into_inner<T>(raw: Self::Raw<T>) -> T;
    #[doc(hidden)]
    fn get_mut<T>(raw: &mut Self::Raw<T>) -> &mut T;
    #[doc(hidden)]
    fn lock<T>(raw: &Self::Raw<T>) -> Self::Guard<'_, T>;
    #[doc(hidden)]
    fn try_lock<T>(raw: &Self::Raw<T>) -> Option<Self::Guard<'_, T>>;
    /// The raw lock's own uncontended fast path, before a waiting acquisition: one
    /// compare-and-swap from unlocked, where `try_lock` loads the state first (measured: a
    /// `parking_lot` pair with `try_lock` before each `lock` costs 1.06–1.16× the bare pair;
    /// this, 1.00×). It may give up where `try_lock` would not (a spurious failure, or a holder
    /// that lets go while it spins briefly), which only sends the caller the contended way.
    #[doc(hidden)]
    fn try_lock_uncontended<T>(raw: &Self::Raw<T>) -> Option<Self::Guard<'_, T>>;
}

/// The backend of [`Mutex`]: a sleeping lock (`struct mutex`).
#[derive(Debug)]
pub enum MutexBackend {}
/// The backend of [`SpinLock`]: spins, never sleeps; holding it is atomic context
/// (`spinlock_t`).
#[derive(Debug)]
pub enum SpinBackend {}
/// The backend of [`RwLock`]: a sleeping reader-writer lock (`struct rw_semaphore`).
#[derive(Debug)]
pub enum RwBackend {}

impl sealed::Sealed for MutexBackend {}
impl sealed::Sealed for SpinBackend {}
impl sealed::Sealed for RwBackend {}

macro_rules! mutex_like_raw {
    () => {
        type Raw<T> = RawMutex<T>;
        type Guard<'a, T: 'a> = RawMutexGuard<'a, T>;
        fn new<T>(value: T) -> RawMutex<T> {
            RawMutex::new(value)
        }
        fn into_inner<T>(raw: RawMutex<T>) -> T {
            raw.into_inner()
        }
        fn get_mut<T>(raw: &mut RawMutex<T>) -> &mut T {
            raw.get_mut()
        }
        fn try_lock<T>(raw: &RawMutex<T>) -> Option<RawMutexGuard<'_, T>> {
            raw.try_lock()
        }
    };
}

impl Backend for MutexBackend {
    mutex_like_raw!();
    const SLEEPS: bool = true;
    const ATOMIC: bool = false;
    const NAME: &'static str = "Mutex";
    fn lock<T>(raw: &RawMutex<T>) -> RawMutexGuard<'_, T> {
        raw.lock()
    }
    fn try_lock_uncontended<T>(raw: &RawMutex<T>) -> Option<RawMutexGuard<'_, T>> {
        raw.try_lock_for(std::time::Duration::ZERO)
    }
}

impl Backend for SpinBackend {
    mutex_like_raw!();
    const SLEEPS: bool = false;
    const ATOMIC: bool = true;
    const NAME: &'static str = "SpinLock";
    /// Spins on `try_lock`, yielding the processor after a short while, since a user-space
    /// holder can be preempted.
    fn lock<T>(raw: &RawMutex<T>) -> RawMutexGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            if let Some(g) = raw.try_lock() {
                return g;
            }
            spin(spins);
            spins = spins.saturating_add(1);
        }
    }
    /// Taking a spinlock is `try_lock` in a loop: its first turn.
    fn try_lock_uncontended<T>(raw: &RawMutex<T>) -> Option<RawMutexGuard<'_, T>> {
        raw.try_lock()
    }
}

impl Backend for RwBackend {
    type Raw<T> = RawRwLock<T>;
    type Guard<'a, T: 'a> = RawRwLockWriteGuard<'a, T>;
    const SLEEPS: bool = true;
    const ATOMIC: bool = false;
    const NAME: &'static str = "RwLock";
    fn new<T>(value: T) -> RawRwLock<T> {
        RawRwLock::new(value)
    }
    fn into_inner<T>(raw: RawRwLock<T>) -> T {
        raw.into_inner()
    }
    fn get_mut<T>(raw: &mut RawRwLock<T>) -> &mut T {
        raw.get_mut()
    }
    fn lock<T>(raw: &RawRwLock<T>) -> RawRwLockWriteGuard<'_, T> {
        raw.write()
    }
    fn try_lock<T>(raw: &RawRwLock<T>) -> Option<RawRwLockWriteGuard<'_, T>> {
        raw.try_write()
    }
    fn try_lock_uncontended<T>(raw: &RawRwLock<T>) -> Option<RawRwLockWriteGuard<'_, T>> {
        raw.try_write_for(std::time::Duration::ZERO)
    }
}

/// A validated lock of kind `B` holding a `T`. Use the aliases [`Mutex`], [`SpinLock`] and
/// [`RwLock`].
///
/// Taking it records the acquisition in the current task's held-lock stack and the
/// dependency graph; a kind that may sleep also calls `might_sleep()`, and holding a
/// [`SpinLock`] makes the context atomic. Built on `parking_lot` (no poisoning). With
/// validation compiled out it is the raw lock plus a zero-sized field.
pub struct Lock<T, B: Backend> {
    class: LockClass,
    raw: B::Raw<T>,
}

/// A mutual-exclusion lock that may sleep (`struct mutex`): [`Lock::lock`] calls
/// `might_sleep()` and records the acquisition.
///
/// ```
/// use lockdep::{static_lock_class, Mutex};
/// let m = Mutex::new(vec![1], static_lock_class!("list"));
/// m.lock().push(2);
/// assert_eq!(m.lock().len(), 2);
/// ```
pub type Mutex<T> = Lock<T, MutexBackend>;

/// A lock taken by spinning, never by sleeping (`spinlock_t`). While one is held the task is
/// in atomic context: anything that may sleep ([`might_sleep`](crate::might_sleep), a
/// [`Mutex`], a wait, a blocking allocation) is reported. Keep critical sections short.
pub type SpinLock<T> = Lock<T, SpinBackend>;

/// A reader-writer lock that may sleep, validated (`struct rw_semaphore`, `rwlock_t`).
///
/// Three ways in, as lockdep distinguishes them:
/// - [`write`](Lock::write) (or [`lock`](Lock::lock)) is exclusive.
/// - [`read`](Lock::read) is shared and *non-recursive*: it waits behind a waiting writer
///   (fair, like `rw_semaphore`), so a reader can be part of a deadlock with a writer.
/// - [`read_recursive`](Lock::read_recursive) is shared and recursive: it never waits behind
///   a waiting writer (like `rwlock_t` readers in interrupt context), so cycles made only of
///   recursive read edges are not deadlocks and are not reported.
pub type RwLock<T> = Lock<T, RwBackend>;

/// A held [`Mutex`].
pub type MutexGuard<'a, T> = LockGuard<'a, T, MutexBackend>;
/// A held [`SpinLock`] (the context is atomic until it drops).
pub type SpinLockGuard<'a, T> = LockGuard<'a, T, SpinBackend>;
/// An exclusive hold of an [`RwLock`].
pub type RwLockWriteGuard<'a, T> = LockGuard<'a, T, RwBackend>;

/// Makes a [`Mutex`] with a class for this call site: `new_mutex!(value)` or
/// `new_mutex!(value, "name")`.
#[macro_export]
macro_rules! new_mutex {
    ($value:expr $(,)?) => {
        $crate::Mutex::new($value, $crate::static_lock_class!())
    };
    ($value:expr, $name:expr $(,)?) => {
        $crate::Mutex::new($value, $crate::static_lock_class!($name))
    };
}

/// Makes a [`SpinLock`] with a class for this call site: `new_spinlock!(value)` or
/// `new_spinlock!(value, "name")`.
#[macro_export]
macro_rules! new_spinlock {
    ($value:expr $(,)?) => {
        $crate::SpinLock::new($value, $crate::static_lock_class!())
    };
    ($value:expr, $name:expr $(,)?) => {
        $crate::SpinLock::new($value, $crate::static_lock_class!($name))
    };
}

/// Makes an [`RwLock`] with a class for this call site: `new_rwlock!(value)` or
/// `new_rwlock!(value, "name")`.
#[macro_export]
macro_rules! new_rwlock {
    ($value:expr $(,)?) => {
        $crate::RwLock::new($value, $crate::static_lock_class!())
    };
    ($value:expr, $name:expr $(,)?) => {
        $crate::RwLock::new($value, $crate::static_lock_class!($name))
    };
}

impl<T, B: Backend> Lock<T, B> {
    /// A lock holding `value`, of `class` (a `static_lock_class!()`, a [`LockClass`] or a
    /// [`DynamicKey`](crate::DynamicKey)).
    pub fn new(value: T, class: impl Into<LockClass>) -> Self {
        Self {
            class: class.into(),
            raw: B::new(value),
        }
    }

    /// Consumes the lock and returns its value.
    pub fn into_inner(self) -> T {
        B::into_inner(self.raw)
    }

    /// The value, through an exclusive borrow (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        B::get_mut(&mut self.raw)
    }

    /// The lock's class.
    pub fn class(&self) -> LockClass {
        self.class
    }

    fn instance(&self) -> usize {
        self as *const Self as usize
    }

    /// How holding this kind of lock counts; `waits`: the acquisition may wait (so may sleep
    /// if the kind sleeps). A trylock never waits.
    fn how(read: Read, waits: bool) -> How {
        let how = How::new(read);
        let how = if B::SLEEPS && waits { how.sleep() } else { how };
        let how = if B::ATOMIC { how.spin() } else { how };
        if waits {
            how
        } else {
            how.trylock()
        }
    }

    /// The one body of every waiting acquisition: validate (as `class`, held as `read`), then
    /// take the raw lock with `try_take`, or — contended — publish what this task waits for
    /// and holds (`blocked_tasks`) and wait with `take`.
    #[inline(always)]
    fn blocking<'a, G>(
        &'a self,
        class: LockClass,
        read: Read,
        loc: &'static Location<'static>,
        try_take: impl FnOnce(&'a B::Raw<T>) -> Option<G>,
        take: impl FnOnce(&'a B::Raw<T>) -> G,
    ) -> (Held, G) {
        let held = validator::acquire(class, self.instance(), Self::how(read, true), loc);
        if let Some(g) = try_take(&self.raw) {
            return (held, g);
        }
        (held, self.contended(class, loc, take))
    }

    /// A waiting acquisition found the lock taken: publish, wait, withdraw.
    #[cold]
    #[inline(never)]
    fn contended<'a, G>(
        &'a self,
        class: LockClass,
        loc: &'static Location<'static>,
        take: impl FnOnce(&'a B::Raw<T>) -> G,
    ) -> G {
        let _waiting = validator::waiting(class, self.instance(), loc);
        take(&self.raw)
    }

    /// The one body of every trylock: take the raw lock if free, then record it as a trylock.
    #[inline]
    fn trying<'a, G>(
        &'a self,
        read: Read,
        loc: &'static Location<'static>,
        take: impl FnOnce(&'a B::Raw<T>) -> Option<G>,
    ) -> Option<(Held, G)> {
        let raw = take(&self.raw)?;
        let how = Self::how(read, false);
        Some((
            validator::acquire(self.class, self.instance(), how, loc),
            raw,
        ))
    }

    /// Locks exclusively, waiting while another thread holds it (`mutex_lock`, `spin_lock`,
    /// `down_write`).
    #[inline]
    #[track_caller]
    pub fn lock(&self) -> LockGuard<'_, T, B> {
        self.lock_as(self.class, Location::caller())
    }

    /// Locks as subclass `subclass` of the lock's class (`mutex_lock_nested`): for taking two
    /// locks of one class in a defined order, e.g. parent (0) then child (1).
    #[inline]
    #[track_caller]
    pub fn lock_nested(&self, subclass: u8) -> LockGuard<'_, T, B> {
        self.lock_as(self.class.subclass(subclass), Location::caller())
    }

    #[inline]
    fn lock_as(&self, class: LockClass, loc: &'static Location<'static>) -> LockGuard<'_, T, B> {
        let (held, inner) = self.blocking(
            class,
            Read::Exclusive,
            loc,
            B::try_lock_uncontended,
            B::lock,
        );
        LockGuard { _held: held, inner }
    }

    /// Locks exclusively if free (`mutex_trylock`, `spin_trylock`, `down_write_trylock`). A
    /// trylock never waits, so it adds no ordering edge into this lock; locks taken while it
    /// is held are still ordered after it.
    #[inline]
    #[track_caller]
    pub fn try_lock(&self) -> Option<LockGuard<'_, T, B>> {
        let (held, inner) = self.trying(Read::Exclusive, Location::caller(), B::try_lock)?;
        Some(LockGuard { _held: held, inner })
    }

    /// Records the dependencies of locking exclusively, without locking (`might_lock`).
    #[inline]
    #[track_caller]
    pub fn might_lock(&self) {
        validator::might_acquire(self.class, How::new(Read::Exclusive), Location::caller());
    }

    /// Whether the current task holds this lock, in any mode (`lockdep_is_held`); `true`
    /// when validation is off.
    pub fn is_held(&self) -> bool {
        validator::is_held(self.instance())
    }
}

impl<T: Default, B: Backend> Lock<T, B> {
    /// A lock holding `T::default()`, of `class`.
    pub fn with_default(class: impl Into<LockClass>) -> Self {
        Self::new(T::default(), class)
    }
}

impl<T> Lock<T, RwBackend> {
    /// Locks shared, non-recursively (`down_read`).
    #[inline]
    #[track_caller]
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.read_as(self.class, Read::Shared, Location::caller())
    }

    /// Locks shared, recursively: never waits behind a waiting writer (`read_lock`).
    #[inline]
    #[track_caller]
    pub fn read_recursive(&self) -> RwLockReadGuard<'_, T> {
        self.read_as(self.class, Read::Recursive, Location::caller())
    }

    /// Locks shared as subclass `subclass` (`down_read_nested`).
    #[inline]
    #[track_caller]
    pub fn read_nested(&self, subclass: u8) -> RwLockReadGuard<'_, T> {
        self.read_as(
            self.class.subclass(subclass),
            Read::Shared,
            Location::caller(),
        )
    }

    #[inline]
    fn read_as(
        &self,
        class: LockClass,
        read: Read,
        loc: &'static Location<'static>,
    ) -> RwLockReadGuard<'_, T> {
        let (held, inner) = self.blocking(
            class,
            read,
            loc,
            |raw| {
                if read == Read::Recursive {
                    raw.try_read_recursive()
                } else {
                    raw.try_read()
                }
            },
            |raw| {
                if read == Read::Recursive {
                    raw.read_recursive()
                } else {
                    raw.read()
                }
            },
        );
        RwLockReadGuard { _held: held, inner }
    }

    /// Locks exclusively (`down_write`); the same as [`Lock::lock`].
    #[inline]
    #[track_caller]
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.lock_as(self.class, Location::caller())
    }

    /// Locks exclusively as subclass `subclass` (`down_write_nested`).
    #[inline]
    #[track_caller]
    pub fn write_nested(&self, subclass: u8) -> RwLockWriteGuard<'_, T> {
        self.lock_as(self.class.subclass(subclass), Location::caller())
    }

    /// Locks shared if possible without waiting (`down_read_trylock`); adds no edge into it.
    #[inline]
    #[track_caller]
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        let (held, inner) = self.trying(Read::Shared, Location::caller(), RawRwLock::try_read)?;
        Some(RwLockReadGuard { _held: held, inner })
    }

    /// Locks exclusively if possible without waiting (`down_write_trylock`); the same as
    /// [`Lock::try_lock`].
    #[inline]
    #[track_caller]
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        self.try_lock()
    }

    /// Records the dependencies of a read lock, without locking (`might_lock_read`).
    #[inline]
    #[track_caller]
    pub fn might_lock_read(&self) {
        validator::might_acquire(self.class, How::new(Read::Shared), Location::caller());
    }
}

impl<T, B: Backend> std::fmt::Debug for Lock<T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(B::NAME)
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

/// An exclusive hold of a [`Lock`]; unlocks on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a, T: 'a, B: Backend> {
    // Declared first so the validator records the release before the unlock.
    _held: Held,
    inner: B::Guard<'a, T>,
}

impl<T, B: Backend> Deref for LockGuard<'_, T, B> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T, B: Backend> DerefMut for LockGuard<'_, T, B> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: std::fmt::Debug, B: Backend> std::fmt::Debug for LockGuard<'_, T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// A shared hold of an [`RwLock`]; unlocks on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RwLockReadGuard<'a, T> {
    _held: Held,
    inner: RawRwLockReadGuard<'a, T>,
}

impl<T> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for RwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}
