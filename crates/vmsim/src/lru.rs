//! The LRU lists reclaim scans (`mm/swap.c`, `mm/vmscan.c`).
//!
//! Linux keeps evictable pages on an inactive and an active list per node (and per memcg),
//! linked through `folio->lru` under `lruvec->lru_lock`. New anonymous and page-cache pages enter
//! the inactive list (`folio_add_lru`); reclaim takes pages off the tail of the inactive list
//! (`isolate_lru_folios`), asks whether they were referenced (`folio_referenced`, which is where
//! the secondary MMUs' young bits are consulted through `clear_flush_young`), and either
//! reclaims them or puts them back (`move_folios_to_lru`); when the inactive list runs short it
//! ages the active list's tail down (`shrink_active_list`).
//!
//! The lists here are intrusive doubly-linked lists through [`Frame`](crate::frame::Frame)'s LRU
//! links, so membership costs no memory beyond the 48-byte frame.

use crate::error::VmError;
use crate::frame::{flags, FramePool, Pfn, NIL};

/// Which list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LruKind {
    /// `LRU_INACTIVE_*`: reclaim candidates.
    Inactive = 0,
    /// `LRU_ACTIVE_*`: recently used.
    Active = 1,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
}

const EMPTY: List = List {
    head: NIL,
    tail: NIL,
    len: 0,
};

static LRU_LOCK: lockdep::LockClassKey = lockdep::LockClassKey::new("&lruvec->lru_lock");

/// The two LRU lists of the machine.
pub struct Lru {
    lists: lockdep::SpinLock<[List; 2]>,
}

impl Default for Lru {
    fn default() -> Self {
        Self::new()
    }
}

impl Lru {
    /// Two empty lists.
    pub fn new() -> Lru {
        Lru {
            lists: lockdep::SpinLock::new([EMPTY; 2], &LRU_LOCK),
        }
    }

    /// Lengths `(inactive, active)`.
    pub fn lens(&self) -> (usize, usize) {
        let l = self.lists.lock();
        (l[0].len, l[1].len)
    }

    /// `folio_add_lru`: puts an in-use frame at the head of a list; it must be on none.
    pub fn add(&self, pool: &FramePool, pfn: Pfn, kind: LruKind) -> Result<(), VmError> {
        let f = pool.frame(pfn)?;
        let mut lists = self.lists.lock();
        let prev = f.set(flags::LRU);
        if prev & (flags::LRU | flags::FREE) != 0 {
            if prev & flags::LRU == 0 {
                f.clear(flags::LRU);
            }
            return Err(crate::error::invariant(format!(
                "{pfn} added to an LRU list while {}",
                if prev & flags::FREE != 0 {
                    "free"
                } else {
                    "on a list"
                }
            )));
        }
        match kind {
            LruKind::Active => f.set(flags::ACTIVE),
            LruKind::Inactive => f.clear(flags::ACTIVE),
        };
        push_head(pool, &mut lists[kind as usize], pfn);
        Ok(())
    }

    /// Takes a frame off its list (`folio_isolate_lru` / `lruvec_del_folio`); returns whether it
    /// was on one. The frame keeps its `ACTIVE` bit for a later [`Lru::putback`].
    pub fn del(&self, pool: &FramePool, pfn: Pfn) -> Result<bool, VmError> {
        let f = pool.frame(pfn)?;
        let mut lists = self.lists.lock();
        if !f.test(flags::LRU) {
            return Ok(false);
        }
        let kind = if f.test(flags::ACTIVE) { 1 } else { 0 };
        unlink(pool, &mut lists[kind], pfn);
        f.clear(flags::LRU);
        Ok(true)
    }

    /// `isolate_lru_folios`: takes up to `n` frames off the tail of a list, marking them
    /// isolated. Each taken frame gains a reference (dropped by [`Lru::putback`] or by the
    /// reclaimer freeing it), as Linux's isolation does.
    pub fn isolate(&self, pool: &FramePool, kind: LruKind, n: usize) -> Vec<Pfn> {
        let mut lists = self.lists.lock();
        let mut out = Vec::with_capacity(n.min(lists[kind as usize].len));
        let mut cur = lists[kind as usize].tail;
        while out.len() < n && cur != NIL {
            let pfn = Pfn(cur);
            let f = pool.get(pfn);
            let (prev, _) = f.lru_links();
            // A frame whose last reference is being dropped cannot be isolated
            // (`folio_try_get` fails): leave it for `put` to free.
            if f.try_get() {
                unlink(pool, &mut lists[kind as usize], pfn);
                f.clear(flags::LRU);
                f.set(flags::ISOLATED);
                out.push(pfn);
            }
            cur = prev;
        }
        out
    }

    /// Puts an isolated frame back on a list and drops the isolation reference
    /// (`move_folios_to_lru`). Returns whether that freed the frame (its owner let go meanwhile).
    pub fn putback(&self, pool: &FramePool, pfn: Pfn, kind: LruKind) -> Result<bool, VmError> {
        let f = pool.frame(pfn)?;
        f.clear(flags::ISOLATED);
        self.add(pool, pfn, kind)?;
        self.put_page(pool, pfn)
    }

    /// `folio_put` for frames that may be on a list: drops a reference; the last one takes the
    /// frame off its list and frees it (`__folio_put` → `lruvec_del_folio`). Returns whether it
    /// was freed.
    pub fn put_page(&self, pool: &FramePool, pfn: Pfn) -> Result<bool, VmError> {
        if !pool.put_testzero(pfn)? {
            return Ok(false);
        }
        self.del(pool, pfn)?;
        pool.free(pfn)?;
        Ok(true)
    }

    /// Frames on a list, head to tail (tests and invariant checks).
    pub fn frames(&self, pool: &FramePool, kind: LruKind) -> Vec<Pfn> {
        let lists = self.lists.lock();
        let mut out = Vec::new();
        let mut cur = lists[kind as usize].head;
        while cur != NIL && out.len() <= pool.total() {
            out.push(Pfn(cur));
            cur = pool.get(Pfn(cur)).lru_links().1;
        }
        out
    }
}

fn push_head(pool: &FramePool, list: &mut List, pfn: Pfn) {
    let old = list.head;
    pool.get(pfn).set_lru_links(NIL, old);
    if old != NIL {
        let (_, next) = pool.get(Pfn(old)).lru_links();
        pool.get(Pfn(old)).set_lru_links(pfn.0, next);
    } else {
        list.tail = pfn.0;
    }
    list.head = pfn.0;
    list.len += 1;
}

fn unlink(pool: &FramePool, list: &mut List, pfn: Pfn) {
    let (prev, next) = pool.get(pfn).lru_links();
    if prev != NIL {
        let (pp, _) = pool.get(Pfn(prev)).lru_links();
        pool.get(Pfn(prev)).set_lru_links(pp, next);
    } else {
        list.head = next;
    }
    if next != NIL {
        let (_, nn) = pool.get(Pfn(next)).lru_links();
        pool.get(Pfn(next)).set_lru_links(prev, nn);
    } else {
        list.tail = prev;
    }
    pool.get(pfn).set_lru_links(NIL, NIL);
    list.len -= 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolate_takes_the_oldest_and_putback_relists() {
        let pool = FramePool::new(8).unwrap();
        let lru = Lru::new();
        let pfns: Vec<Pfn> = (0..4).map(|_| pool.take().unwrap()).collect();
        for &p in &pfns {
            lru.add(&pool, p, LruKind::Inactive).unwrap();
        }
        assert_eq!(lru.lens(), (4, 0));
        // Oldest first: the first added is at the tail.
        let got = lru.isolate(&pool, LruKind::Inactive, 2);
        assert_eq!(got, vec![pfns[0], pfns[1]]);
        assert!(pool.get(pfns[0]).test(flags::ISOLATED));
        assert_eq!(pool.get(pfns[0]).refcount(), 2);
        assert!(!lru.putback(&pool, pfns[0], LruKind::Active).unwrap());
        assert_eq!(lru.lens(), (2, 1));
        assert_eq!(lru.frames(&pool, LruKind::Active), vec![pfns[0]]);
        // The owner let go of pfns[1] while it was isolated: putback frees it.
        assert!(!lru.put_page(&pool, pfns[1]).unwrap());
        assert!(lru.putback(&pool, pfns[1], LruKind::Inactive).unwrap());
        assert!(lru.del(&pool, pfns[2]).unwrap());
        assert_eq!(lru.frames(&pool, LruKind::Inactive), vec![pfns[3]]);
    }

    #[test]
    fn listing_a_free_or_listed_frame_is_an_invariant_error() {
        let pool = FramePool::new(2).unwrap();
        let lru = Lru::new();
        let p = pool.take().unwrap();
        lru.add(&pool, p, LruKind::Inactive).unwrap();
        assert!(lru.add(&pool, p, LruKind::Active).is_err());
        assert_eq!(lru.lens(), (1, 0));
        let free = Pfn(1);
        assert!(lru.add(&pool, free, LruKind::Inactive).is_err());
        assert!(!pool.frame(free).unwrap().test(flags::LRU));
    }
}
