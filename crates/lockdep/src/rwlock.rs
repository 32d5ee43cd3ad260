//! `RwLock<T>`: a sleeping reader-writer lock, validated with read and recursive-read
//! semantics.

use std::ops::{Deref, DerefMut};
use std::panic::Location;

use crate::class::LockClass;
use crate::primitive::{RawRwLock, RawRwLockReadGuard, RawRwLockWriteGuard};
use crate::validator::{self, Held, How};
use crate::Read;

/// A reader-writer lock that may sleep, validated.
///
/// Three ways in, as lockdep distinguishes them:
/// - [`write`](RwLock::write) is exclusive.
/// - [`read`](RwLock::read) is shared and *non-recursive*: it waits behind a waiting writer (fair, like
///   `rw_semaphore`), so a reader can be part of a deadlock with a writer.
/// - [`read_recursive`](RwLock::read_recursive) is shared and recursive: it never waits behind a waiting
///   writer (like `rwlock_t` readers in interrupt context), so cycles made only of recursive
///   read edges are not deadlocks and are not reported.
///
/// Built on `parking_lot::RwLock`.
pub struct RwLock<T> {
    class: LockClass,
    inner: RawRwLock<T>,
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

impl<T> RwLock<T> {
    /// A reader-writer lock holding `value`, of `class`.
    pub fn new(value: T, class: impl Into<LockClass>) -> Self {
        Self {
            class: class.into(),
            inner: RawRwLock::new(value),
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

    fn track(&self, class: LockClass, how: How, loc: &'static Location<'static>) -> Held {
        validator::acquire(class, self.instance(), how, loc)
    }

    /// Locks shared, non-recursively (`down_read`).
    #[inline]
    #[track_caller]
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        let held = self.track(
            self.class,
            How::new(Read::Shared).sleep(),
            Location::caller(),
        );
        RwLockReadGuard {
            _held: held,
            inner: self.inner.read(),
        }
    }

    /// Locks shared, recursively: never waits behind a waiting writer (`read_lock`).
    #[inline]
    #[track_caller]
    pub fn read_recursive(&self) -> RwLockReadGuard<'_, T> {
        let held = self.track(
            self.class,
            How::new(Read::Recursive).sleep(),
            Location::caller(),
        );
        RwLockReadGuard {
            _held: held,
            inner: self.inner.read_recursive(),
        }
    }

    /// Locks shared as subclass `subclass` (`down_read_nested`).
    #[inline]
    #[track_caller]
    pub fn read_nested(&self, subclass: u8) -> RwLockReadGuard<'_, T> {
        let held = self.track(
            self.class.subclass(subclass),
            How::new(Read::Shared).sleep(),
            Location::caller(),
        );
        RwLockReadGuard {
            _held: held,
            inner: self.inner.read(),
        }
    }

    /// Locks exclusively (`down_write`).
    #[inline]
    #[track_caller]
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        let held = self.track(
            self.class,
            How::new(Read::Exclusive).sleep(),
            Location::caller(),
        );
        RwLockWriteGuard {
            _held: held,
            inner: self.inner.write(),
        }
    }

    /// Locks exclusively as subclass `subclass` (`down_write_nested`).
    #[inline]
    #[track_caller]
    pub fn write_nested(&self, subclass: u8) -> RwLockWriteGuard<'_, T> {
        let held = self.track(
            self.class.subclass(subclass),
            How::new(Read::Exclusive).sleep(),
            Location::caller(),
        );
        RwLockWriteGuard {
            _held: held,
            inner: self.inner.write(),
        }
    }

    /// Locks shared if possible without waiting (`down_read_trylock`); adds no edge into it.
    #[inline]
    #[track_caller]
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        let inner = self.inner.try_read()?;
        let held = self.track(
            self.class,
            How::new(Read::Shared).trylock(),
            Location::caller(),
        );
        Some(RwLockReadGuard { _held: held, inner })
    }

    /// Locks exclusively if possible without waiting (`down_write_trylock`).
    #[inline]
    #[track_caller]
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        let inner = self.inner.try_write()?;
        let held = self.track(
            self.class,
            How::new(Read::Exclusive).trylock(),
            Location::caller(),
        );
        Some(RwLockWriteGuard { _held: held, inner })
    }

    /// Records the dependencies of a write lock, without locking (`might_lock`).
    #[inline]
    #[track_caller]
    pub fn might_lock(&self) {
        validator::might_acquire(self.class, How::new(Read::Exclusive), Location::caller());
    }

    /// Records the dependencies of a read lock, without locking (`might_lock_read`).
    #[inline]
    #[track_caller]
    pub fn might_lock_read(&self) {
        validator::might_acquire(self.class, How::new(Read::Shared), Location::caller());
    }

    /// Whether the current task holds this lock (either way); `true` when validation is off.
    pub fn is_held(&self) -> bool {
        validator::is_held(self.instance())
    }
}

impl<T> std::fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLock")
            .field("class", &self.class)
            .finish_non_exhaustive()
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

/// An exclusive hold of an [`RwLock`]; unlocks on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RwLockWriteGuard<'a, T> {
    _held: Held,
    inner: RawRwLockWriteGuard<'a, T>,
}

impl<T> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for RwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}
