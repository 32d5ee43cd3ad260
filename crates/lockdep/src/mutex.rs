//! `Mutex<T>`: a sleeping lock, validated.

use std::ops::{Deref, DerefMut};
use std::panic::Location;

use crate::class::LockClass;
use crate::primitive::{RawMutex, RawMutexGuard};
use crate::validator::{self, Held, How};
use crate::Read;

/// A mutual-exclusion lock that may sleep, validated: [`Mutex::lock`] calls `might_sleep()`
/// and records the acquisition in the current task's held-lock stack and the dependency graph.
///
/// Built on `parking_lot::Mutex` (no poisoning). With validation compiled out it is that lock
/// plus a zero-sized field.
///
/// ```
/// use lockdep::{static_lock_class, Mutex};
/// let m = Mutex::new(vec![1], static_lock_class!("list"));
/// m.lock().push(2);
/// assert_eq!(m.lock().len(), 2);
/// ```
pub struct Mutex<T> {
    class: LockClass,
    inner: RawMutex<T>,
}

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

impl<T> Mutex<T> {
    /// A mutex holding `value`, of `class` (a `static_lock_class!()`, a [`LockClass`] or a
    /// [`DynamicKey`](crate::DynamicKey)).
    pub fn new(value: T, class: impl Into<LockClass>) -> Self {
        Self {
            class: class.into(),
            inner: RawMutex::new(value),
        }
    }

    /// Consumes the mutex and returns its value.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }

    /// The value, through an exclusive borrow (no locking needed).
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

    /// Locks, sleeping while another thread holds it (`mutex_lock`).
    #[inline]
    #[track_caller]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.lock_as(self.class, Location::caller())
    }

    /// Locks as subclass `subclass` of the lock's class (`mutex_lock_nested`): for taking two
    /// locks of one class in a defined order, e.g. parent (0) then child (1).
    #[inline]
    #[track_caller]
    pub fn lock_nested(&self, subclass: u8) -> MutexGuard<'_, T> {
        self.lock_as(self.class.subclass(subclass), Location::caller())
    }

    #[inline]
    fn lock_as(&self, class: LockClass, loc: &'static Location<'static>) -> MutexGuard<'_, T> {
        let held = validator::acquire(
            class,
            self.instance(),
            How::new(Read::Exclusive).sleep(),
            loc,
        );
        MutexGuard {
            _held: held,
            inner: self.inner.lock(),
        }
    }

    /// Locks if free (`mutex_trylock`). A trylock never waits, so it adds no ordering edge
    /// into this lock; locks taken while it is held are still ordered after it.
    #[inline]
    #[track_caller]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let inner = self.inner.try_lock()?;
        let held = validator::acquire(
            self.class,
            self.instance(),
            How::new(Read::Exclusive).trylock(),
            Location::caller(),
        );
        Some(MutexGuard { _held: held, inner })
    }

    /// Records the dependencies of locking, without locking (`might_lock`).
    #[inline]
    #[track_caller]
    pub fn might_lock(&self) {
        validator::might_acquire(self.class, How::new(Read::Exclusive), Location::caller());
    }

    /// Whether the current task holds this lock (`lockdep_is_held`); `true` when validation
    /// is off.
    pub fn is_held(&self) -> bool {
        validator::is_held(self.instance())
    }
}

impl<T: Default> Mutex<T> {
    /// A mutex holding `T::default()`, of `class`.
    pub fn with_default(class: impl Into<LockClass>) -> Self {
        Self::new(T::default(), class)
    }
}

impl<T> std::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

/// A held [`Mutex`]; unlocks on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct MutexGuard<'a, T> {
    // Declared first so the validator records the release before the unlock.
    _held: Held,
    inner: RawMutexGuard<'a, T>,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}
