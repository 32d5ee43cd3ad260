//! The validator with validation compiled out (no `enabled` feature): every entry point is an
//! inline no-op and every token zero-sized, so the lock types are their raw locks.

use std::marker::PhantomData;
use std::panic::Location;

use crate::class::LockClass;
use crate::Read;

#[derive(Clone, Copy)]
pub(crate) struct How;

impl How {
    #[inline(always)]
    pub(crate) const fn new(_read: Read) -> Self {
        How
    }
    #[inline(always)]
    pub(crate) const fn trylock(self) -> Self {
        self
    }
    #[inline(always)]
    pub(crate) const fn spin(self) -> Self {
        self
    }
    #[inline(always)]
    pub(crate) const fn sleep(self) -> Self {
        self
    }
}

/// Zero-sized; `!Send` like the real one.
pub(crate) struct Held(PhantomData<*const ()>);

impl Held {
    #[inline(always)]
    pub(crate) fn keep_held(self) {}

    #[allow(dead_code)]
    #[inline(always)]
    pub(crate) const fn untracked() -> Self {
        Held(PhantomData)
    }
}

#[inline(always)]
pub(crate) fn acquire(
    _class: LockClass,
    _instance: usize,
    _how: How,
    _loc: &'static Location<'static>,
) -> Held {
    Held(PhantomData)
}

#[inline(always)]
pub(crate) fn might_acquire(_class: LockClass, _how: How, _loc: &'static Location<'static>) {}

#[inline(always)]
pub(crate) fn release(_instance: usize, _loc: Option<&'static Location<'static>>) {}

/// Nothing is published with validation compiled out.
pub(crate) struct Waiting;

#[inline(always)]
pub(crate) fn waiting(
    _class: LockClass,
    _instance: usize,
    _loc: &'static Location<'static>,
) -> Option<Waiting> {
    None
}

#[inline(always)]
pub(crate) fn is_held(_instance: usize) -> bool {
    true
}
