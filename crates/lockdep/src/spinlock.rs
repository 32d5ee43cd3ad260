//! `SpinLock<T>`: a lock that never sleeps; holding it makes the context atomic.

use std::ops::{Deref, DerefMut};
use std::panic::Location;

use crate::class::LockClass;
use crate::primitive::{spin_yield, RawMutex, RawMutexGuard};
use crate::validator::{self, Held, How};
use crate::Read;

/// A lock taken by spinning, never by sleeping (`spinlock_t`). While one is held the task is
/// in atomic context: anything that may sleep ([`might_sleep`](crate::might_sleep), a
/// [`Mutex`](crate::Mutex), a wait, a blocking allocation) is reported.
///
/// It spins on `try_lock` of a `parking_lot::Mutex`, yielding the processor after a short
/// while, since a user-space holder can be preempted. Keep critical sections short.
pub struct SpinLock<T> {
    class: LockClass,
    inner: RawMutex<T>,
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

impl<T> SpinLock<T> {
    /// A spinlock holding `value`, of `class`.
    pub fn new(value: T, class: impl Into<LockClass>) -> Self {
        Self {
            class: class.into(),
            inner: RawMutex::new(value),
        }
    }

    /// Consumes the lock and returns its value.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }

    /// The value, through an exclusive borrow.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    /// The lock's class.
    pub fn class(&self) -> LockClass {
        self.class
    }

    fn instance(&self) -> usize {
        self as *const Self as usize
    }

    /// Locks, spinning while another thread holds it (`spin_lock`).
    #[inline]
    #[track_caller]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        self.lock_as(self.class, Location::caller())
    }

    /// Locks as subclass `subclass` (`spin_lock_nested`).
    #[inline]
    #[track_caller]
    pub fn lock_nested(&self, subclass: u8) -> SpinLockGuard<'_, T> {
        self.lock_as(self.class.subclass(subclass), Location::caller())
    }

    #[inline]
    fn lock_as(&self, class: LockClass, loc: &'static Location<'static>) -> SpinLockGuard<'_, T> {
        let held = validator::acquire(
            class,
            self.instance(),
            How::new(Read::Exclusive).spin(),
            loc,
        );
        let mut spins = 0u32;
        let inner = loop {
            if let Some(g) = self.inner.try_lock() {
                break g;
            }
            spin_yield(spins);
            spins = spins.saturating_add(1);
        };
        SpinLockGuard { _held: held, inner }
    }

    /// Locks if free (`spin_trylock`); adds no ordering edge into this lock.
    #[inline]
    #[track_caller]
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        let inner = self.inner.try_lock()?;
        let held = validator::acquire(
            self.class,
            self.instance(),
            How::new(Read::Exclusive).spin().trylock(),
            Location::caller(),
        );
        Some(SpinLockGuard { _held: held, inner })
    }

    /// Records the dependencies of locking, without locking (`might_lock`).
    #[inline]
    #[track_caller]
    pub fn might_lock(&self) {
        validator::might_acquire(self.class, How::new(Read::Exclusive), Location::caller());
    }

    /// Whether the current task holds this lock; `true` when validation is off.
    pub fn is_held(&self) -> bool {
        validator::is_held(self.instance())
    }
}

impl<T> std::fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpinLock")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

/// A held [`SpinLock`]; unlocks (and leaves atomic context) on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct SpinLockGuard<'a, T> {
    _held: Held,
    inner: RawMutexGuard<'a, T>,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for SpinLockGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}
