//! Lock classes: what the validator reasons about instead of lock instances.
//!
//! Every lock *instance* belongs to a *class*, and dependencies are recorded between classes.
//! Two different `inode` objects whose locks are taken in opposite orders by two code paths
//! are an AB-BA deadlock even if no single pair of objects is ever involved in both: per-class
//! tracking finds it, per-instance tracking (what most Rust crates do) cannot.
//!
//! A class is named by a *key*. Statically defined locks use a `static` [`LockClassKey`] made
//! at the definition site by [`static_lock_class!`](crate::static_lock_class), so every lock
//! created by one line of code shares one class, named `file:line` unless given a name.
//! Objects that need a class of their own at run time use a [`DynamicKey`]. Two locks of one
//! class taken in a defined order (parent then child) are told apart with a *subclass*
//! ([`LockClass::subclass`], the kernel's `mutex_lock_nested`).

#[cfg(feature = "enabled")]
use std::sync::OnceLock;

#[cfg(feature = "enabled")]
use crate::report::ClassRef;

/// The most subclasses a class has (the kernel's `MAX_LOCKDEP_SUBCLASSES`).
pub const MAX_SUBCLASSES: u8 = 8;

/// The key that names a lock class: one per definition site.
///
/// Usually made by [`static_lock_class!`](crate::static_lock_class) as a `static`. The key
/// registers its class with the validator the first time a lock of the class is created and
/// caches it, so later lookups are one atomic load (the kernel's `class_cache`).
pub struct LockClassKey {
    name: &'static str,
    #[cfg(feature = "enabled")]
    class: OnceLock<&'static ClassInfo>,
}

impl LockClassKey {
    /// A key for the class called `name` (conventionally `file:line` or a lock's field name).
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            #[cfg(feature = "enabled")]
            class: OnceLock::new(),
        }
    }

    /// The class's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The class this key names (subclass 0).
    #[inline]
    pub fn class(&self) -> LockClass {
        #[cfg(feature = "enabled")]
        {
            let name = self.name;
            LockClass {
                info: self
                    .class
                    .get_or_init(|| ClassInfo::register(name.into(), Reclaim::No)),
            }
        }
        #[cfg(not(feature = "enabled"))]
        LockClass {}
    }

    /// The class, registered with the reclaim role `role()` if this is its first use.
    #[cfg(feature = "enabled")]
    pub(crate) fn class_with(&self, role: impl FnOnce() -> Reclaim) -> LockClass {
        let name = self.name;
        LockClass {
            info: self
                .class
                .get_or_init(|| ClassInfo::register(name.into(), role())),
        }
    }
}

impl std::fmt::Debug for LockClassKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LockClassKey").field(&self.name).finish()
    }
}

impl From<&LockClassKey> for LockClass {
    fn from(key: &LockClassKey) -> Self {
        key.class()
    }
}

/// Makes a `static` [`LockClassKey`] at the call site and evaluates to a `&'static` reference.
///
/// `static_lock_class!()` names the class `file:line`; `static_lock_class!("name")` gives it a
/// name. Every lock created through one expansion shares one class.
///
/// ```
/// let m = lockdep::Mutex::new(0u32, lockdep::static_lock_class!("counter"));
/// assert_eq!(*m.lock(), 0);
/// ```
#[macro_export]
macro_rules! static_lock_class {
    () => {
        $crate::static_lock_class!(::core::concat!(::core::file!(), ":", ::core::line!()))
    };
    ($name:expr) => {{
        static __LOCKDEP_CLASS_KEY: $crate::LockClassKey = $crate::LockClassKey::new($name);
        &__LOCKDEP_CLASS_KEY
    }};
}

/// A registered lock class (or subclass): a cheap `Copy` handle.
///
/// With validation compiled out (no `enabled` feature) it is zero-sized.
#[derive(Clone, Copy)]
pub struct LockClass {
    #[cfg(feature = "enabled")]
    pub(crate) info: &'static ClassInfo,
}

impl LockClass {
    /// The subclass `n` of this class, for taking two locks of one class in a defined order
    /// (parent with subclass 0, child with subclass 1). `n` is clamped to
    /// [`MAX_SUBCLASSES`]` - 1`. Subclass `n` of a subclass is subclass `n` of the base class.
    #[inline]
    pub fn subclass(self, n: u8) -> LockClass {
        #[cfg(feature = "enabled")]
        {
            let n = n.min(MAX_SUBCLASSES - 1);
            let base = self.info.base.unwrap_or(self.info);
            if n == 0 {
                return LockClass { info: base };
            }
            let info = base.subclasses[usize::from(n)].get_or_init(|| {
                let mut sub = ClassInfo::new(format!("{}/{}", base.name, n), base.reclaim);
                sub.base = Some(base);
                Box::leak(Box::new(sub))
            });
            LockClass { info }
        }
        #[cfg(not(feature = "enabled"))]
        {
            let _ = n;
            self
        }
    }

    /// The class's name (`name/n` for subclass `n`); empty with validation compiled out.
    pub fn name(&self) -> &str {
        #[cfg(feature = "enabled")]
        {
            &self.info.name
        }
        #[cfg(not(feature = "enabled"))]
        ""
    }

    /// The class's id in the dependency graph (0 with validation compiled out).
    pub fn id(&self) -> u32 {
        #[cfg(feature = "enabled")]
        {
            self.info.id
        }
        #[cfg(not(feature = "enabled"))]
        0
    }
}

impl std::fmt::Debug for LockClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockClass")
            .field("id", &self.id())
            .field("name", &self.name())
            .finish()
    }
}

/// A class made at run time, for objects that need a class of their own (the kernel's
/// `lockdep_register_key`).
///
/// Dropping the key removes the class's dependencies from the graph (`lockdep_unregister_key`);
/// drop it only after every lock using it is gone. Class ids are never reused, and the class's
/// small descriptor stays allocated, so create dynamic keys per kind of object, not per object
/// in a hot loop.
pub struct DynamicKey {
    #[cfg(feature = "enabled")]
    info: &'static ClassInfo,
}

impl DynamicKey {
    /// Registers a new class called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        #[cfg(feature = "enabled")]
        {
            Self {
                info: ClassInfo::register(name.into(), Reclaim::No),
            }
        }
        #[cfg(not(feature = "enabled"))]
        {
            let _ = name.into();
            Self {}
        }
    }

    /// The class (subclass 0).
    pub fn class(&self) -> LockClass {
        LockClass {
            #[cfg(feature = "enabled")]
            info: self.info,
        }
    }
}

impl From<&DynamicKey> for LockClass {
    fn from(key: &DynamicKey) -> Self {
        key.class()
    }
}

impl std::fmt::Debug for DynamicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DynamicKey").field(&self.class()).finish()
    }
}

#[cfg(feature = "enabled")]
impl DynamicKey {
    /// The ids of the key's class and of its subclasses made so far.
    pub(crate) fn class_ids(&self) -> Vec<u32> {
        let mut ids = vec![self.info.id];
        ids.extend(
            self.info
                .subclasses
                .iter()
                .filter_map(|s| s.get().map(|c| c.id)),
        );
        ids
    }
}

/// What a class has to do with memory reclaim, which decides how a problem with it is named.
#[cfg(feature = "enabled")]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Reclaim {
    /// An ordinary class.
    No,
    /// A pseudo-lock that every allocation which may enter direct reclaim primes (see
    /// [`reclaim_primes!`](crate::reclaim_primes)): a cycle through it is a reclaim inversion.
    Primed,
    /// `fs_reclaim` itself: a cycle through it is a reclaim inversion, and taking it again is
    /// an allocation made from inside reclaim.
    Fs,
}

/// What the validator knows about one class. Leaked on registration: class descriptors live
/// as long as the program, so a [`LockClass`] is a plain `&'static` reference.
#[cfg(feature = "enabled")]
pub(crate) struct ClassInfo {
    pub(crate) id: u32,
    pub(crate) name: String,
    /// The class whose subclass this is.
    pub(crate) base: Option<&'static ClassInfo>,
    /// Subclasses 1.. of a base class (slot 0 unused).
    subclasses: [OnceLock<&'static ClassInfo>; MAX_SUBCLASSES as usize],
    /// Its part in the reclaim model.
    pub(crate) reclaim: Reclaim,
}

#[cfg(feature = "enabled")]
static NEXT_CLASS_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

#[cfg(feature = "enabled")]
impl ClassInfo {
    fn new(name: String, reclaim: Reclaim) -> Self {
        Self {
            id: NEXT_CLASS_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            name,
            base: None,
            subclasses: Default::default(),
            reclaim,
        }
    }

    fn register(name: String, reclaim: Reclaim) -> &'static ClassInfo {
        Box::leak(Box::new(Self::new(name, reclaim)))
    }

    /// The class as a report names it.
    pub(crate) fn to_ref(&self) -> ClassRef {
        ClassRef {
            id: self.id,
            name: self.name.clone(),
        }
    }
}
