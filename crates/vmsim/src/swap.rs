//! The swap area: slots that hold the content of swapped-out anonymous and shmem pages
//! (`mm/swapfile.c`). Each slot has a use count (`swap_map`): page-table entries and shmem page
//! cache entries referring to it; fork duplicates entries (`swap_duplicate`).

use crate::error::VmError;

#[derive(Clone, Copy)]
struct Slot {
    content: u64,
    refs: u32,
    /// Allocated, content not written yet (reclaim is between unmap and pageout).
    pending: bool,
}

struct Area {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

static SWAP_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("&si->lock");

/// A swap area of a fixed number of slots.
pub struct Swap {
    area: lockdep::SpinLock<Area>,
}

impl Swap {
    /// A swap area of `slots` slots (0: no swap, anonymous memory cannot be reclaimed).
    pub fn new(slots: u32) -> Swap {
        Swap {
            area: lockdep::SpinLock::new(
                Area {
                    slots: vec![
                        Slot {
                            content: 0,
                            refs: 0,
                            pending: false,
                        };
                        slots as usize
                    ],
                    free: (0..slots).rev().collect(),
                },
                &SWAP_LOCK,
            ),
        }
    }

    /// Takes a free slot holding `content`, with one reference (`folio_alloc_swap` + writeout).
    pub fn store(&self, content: u64) -> Option<u32> {
        let slot = self.alloc()?;
        self.write(slot, content).ok()?;
        Some(slot)
    }

    /// Takes a free slot, with one reference (the swap cache's, dropped with [`Swap::free`] once
    /// the content is written), its content still to be written (`folio_alloc_swap`);
    /// [`Swap::load`] waits until [`Swap::write`].
    pub fn alloc(&self) -> Option<u32> {
        let mut a = self.area.lock();
        let slot = a.free.pop()?;
        a.slots[slot as usize] = Slot {
            content: 0,
            refs: 1,
            pending: true,
        };
        Some(slot)
    }

    /// Writes a slot's content (`swap_writepage`).
    pub fn write(&self, slot: u32, content: u64) -> Result<(), VmError> {
        let mut a = self.area.lock();
        match a.slots.get_mut(slot as usize) {
            Some(s) if s.refs > 0 => {
                s.content = content;
                s.pending = false;
                Ok(())
            }
            _ => Err(crate::error::invariant(format!(
                "swap slot {slot} written while free"
            ))),
        }
    }

    /// The content of a slot in use (swap-in reads it), waiting while its write is pending.
    pub fn load(&self, slot: u32) -> Result<u64, VmError> {
        loop {
            {
                let a = self.area.lock();
                match a.slots.get(slot as usize) {
                    Some(s) if s.refs > 0 && !s.pending => return Ok(s.content),
                    Some(s) if s.refs > 0 => {}
                    _ => {
                        return Err(crate::error::invariant(format!(
                            "swap slot {slot} read while free"
                        )))
                    }
                }
            }
            crate::primitive::thread::yield_now();
        }
    }

    /// One more reference to a slot (`swap_duplicate`, at fork).
    pub fn dup(&self, slot: u32) -> Result<(), VmError> {
        let mut a = self.area.lock();
        match a.slots.get_mut(slot as usize) {
            Some(s) if s.refs > 0 => {
                s.refs += 1;
                Ok(())
            }
            _ => Err(crate::error::invariant(format!(
                "swap slot {slot} duplicated while free"
            ))),
        }
    }

    /// Drops a reference to a slot; the last frees it (`swap_free`).
    pub fn free(&self, slot: u32) -> Result<(), VmError> {
        let mut a = self.area.lock();
        let s = match a.slots.get_mut(slot as usize) {
            Some(s) if s.refs > 0 => s,
            _ => {
                return Err(crate::error::invariant(format!(
                    "swap slot {slot} freed twice"
                )))
            }
        };
        s.refs -= 1;
        if s.refs == 0 {
            a.free.push(slot);
        }
        Ok(())
    }

    /// `(used, total)` slots.
    pub fn usage(&self) -> (usize, usize) {
        let a = self.area.lock();
        (a.slots.len() - a.free.len(), a.slots.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_refcounted_and_reused() {
        let s = Swap::new(2);
        let a = s.store(7).unwrap();
        s.dup(a).unwrap();
        s.free(a).unwrap();
        assert_eq!(s.load(a).unwrap(), 7);
        s.free(a).unwrap();
        assert!(s.load(a).is_err());
        assert!(s.free(a).is_err());
        assert_eq!(s.usage(), (0, 2));
        let _b = s.store(1).unwrap();
        let _c = s.store(2).unwrap();
        assert!(s.store(3).is_none());
    }
}
