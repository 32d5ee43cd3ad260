//! A device page table, and the two things every mirroring driver does with it: fault pages in
//! with the collision-retry protocol, and access memory through it.
//!
//! The shape is the one `lib/test_hmm.c` (`dmirror_range_fault`) and
//! `drivers/infiniband/core/umem_odp.c` (`ib_umem_odp_map_dma_and_lock`) share:
//!
//! ```text
//! again:
//!     seq = mmu_interval_read_begin(notifier)
//!     hmm_range_fault(range)            // no driver lock held: it may sleep and reclaim
//!     mutex_lock(user_lock)
//!     if mmu_interval_read_retry(notifier, seq): unlock, goto again
//!     publish the translations          // under the lock the invalidation takes
//!     mutex_unlock(user_lock)
//! ```

use std::collections::BTreeMap;

use lockdep::Mutex;
use mmu_notifier::Interval;
use vmsim::pte::PAGE_SIZE;
use vmsim::{Process, Space, VmError};

use crate::checker::{Access, Tracker, Translation};
use crate::DriverError;

/// Attempts of a collision-retry loop before it gives up with [`DriverError::Busy`].
pub const MAX_TRIES: u32 = 1000;

/// A device's page table: page address to the translation the device uses.
#[derive(Debug, Default)]
pub struct DevicePt {
    map: BTreeMap<u64, Translation>,
}

impl DevicePt {
    /// An empty table.
    pub fn new() -> DevicePt {
        DevicePt::default()
    }
    /// The translation of the page at `addr`.
    pub fn get(&self, addr: u64) -> Option<Translation> {
        self.map.get(&(addr & !(PAGE_SIZE - 1))).copied()
    }
    /// Maps the page at `addr`.
    pub fn insert(&mut self, addr: u64, t: Translation) {
        self.map.insert(addr & !(PAGE_SIZE - 1), t);
    }
    /// Drops the translations in `[start, end)` for which `pred` holds; returns how many.
    pub fn zap_where(
        &mut self,
        start: u64,
        end: u64,
        pred: impl Fn(&Translation) -> bool,
    ) -> usize {
        let gone: Vec<u64> = self
            .map
            .range(start..end)
            .filter(|(_, t)| pred(t))
            .map(|(&a, _)| a)
            .collect();
        for a in &gone {
            self.map.remove(a);
        }
        gone.len()
    }
    /// Drops every translation in `[start, end)`; returns how many.
    pub fn zap(&mut self, start: u64, end: u64) -> usize {
        self.zap_where(start, end, |_| true)
    }
    /// Translations mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// The mapped pages, in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Translation)> + '_ {
        self.map.iter().map(|(&a, &t)| (a, t))
    }
}

/// Faults `[start, end)` in through `hmm_range_fault` and publishes the translations in `pt`
/// under the collision-retry protocol (see the module docs). Returns the attempts it took.
pub fn fault_and_map(
    process: &Process,
    iv: &Interval,
    pt: &Mutex<DevicePt>,
    start: u64,
    end: u64,
    write: bool,
    what: &'static str,
) -> Result<u32, DriverError> {
    for tries in 1..=MAX_TRIES {
        let seq = iv.read_begin();
        let pfns = match process.hmm_range_fault(iv, seq, start, end, write) {
            Err(VmError::Busy) => continue,
            r => r?,
        };
        let mut pt = pt.lock();
        if iv.read_retry(seq) {
            continue;
        }
        for (i, p) in pfns.into_iter().enumerate() {
            pt.insert(start + i as u64 * PAGE_SIZE, p.into());
        }
        return Ok(tries);
    }
    Err(DriverError::Busy {
        what,
        tries: MAX_TRIES,
    })
}

/// The device accesses the page at `addr` through `pt` (the caller holds the lock the
/// invalidation takes): checked by `check`, then a load (`store == None`) or a store of the
/// page's content word. `None` when the device has no translation (a device page fault).
pub fn device_access(
    check: &Tracker,
    space: &Space,
    pt: &DevicePt,
    addr: u64,
    access: Access,
    store: Option<u64>,
) -> Result<Option<u64>, DriverError> {
    let Some(t) = pt.get(addr) else {
        return Ok(None);
    };
    if access.is_write() && !t.write {
        return Ok(None); // a write fault on a read-only device entry
    }
    check.access(space, addr, t, access);
    Ok(Some(touch_frame(space, t.pfn, store)?))
}

/// The device accesses `n` pages from `start` (loads, or the stores of `stores`), each under
/// `pt`'s lock through [`device_access`]; where the device has no translation it calls
/// `fault(from, end)` (a device page fault) and goes on. Returns the words loaded or stored.
#[allow(clippy::too_many_arguments)]
pub fn access_range(
    check: &Tracker,
    space: &Space,
    pt: &Mutex<DevicePt>,
    start: u64,
    n: usize,
    access: Access,
    stores: Option<&[u64]>,
    mut fault: impl FnMut(u64, u64) -> Result<(), DriverError>,
) -> Result<Vec<u64>, DriverError> {
    let end = start + n as u64 * PAGE_SIZE;
    let mut out = Vec::with_capacity(n);
    let mut faults = 0;
    while out.len() < n {
        {
            let pt = pt.lock();
            while out.len() < n {
                let a = start + out.len() as u64 * PAGE_SIZE;
                let store = stores.map(|s| s[out.len()]);
                match device_access(check, space, &pt, a, access, store)? {
                    Some(v) => out.push(v),
                    None => break,
                }
            }
        }
        if out.len() < n {
            faults += 1;
            if faults > MAX_TRIES {
                return Err(DriverError::Busy {
                    what: "device access",
                    tries: MAX_TRIES,
                });
            }
            fault(start + out.len() as u64 * PAGE_SIZE, end)?;
        }
    }
    Ok(out)
}

/// The device's load (`store == None`) or store of the content word of frame `pfn`, which the
/// caller has checked.
pub fn touch_frame(space: &Space, pfn: vmsim::Pfn, store: Option<u64>) -> Result<u64, DriverError> {
    let m = space.machine();
    let f = m.frames().frame(pfn)?;
    Ok(match store {
        Some(v) => {
            f.set_content(v);
            v
        }
        None => f.content(),
    })
}

/// The one element a one-page lookup (`pin_user_pages`, `hmm_range_fault`) returns.
pub fn one<T: Copy>(found: &[T]) -> Result<T, DriverError> {
    match found {
        [one] => Ok(*one),
        _ => Err(DriverError::Vm(VmError::Invariant(format!(
            "a one-page lookup returned {} pages",
            found.len()
        )))),
    }
}
