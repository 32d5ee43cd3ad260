//! Page migration (`mm/migrate.c`) and migration to and from device-private memory
//! (`mm/migrate_device.c`, the HMM `migrate_vma_*` API).
//!
//! Notifier call sites:
//! * [`Process::migrate_pages`] (NUMA balancing, compaction): `try_to_migrate` →
//!   `try_to_migrate_one` starts one blockable [`Event::Clear`] per mapping of the page and
//!   replaces the entry with a migration entry; the content is copied; `remove_migration_ptes`
//!   installs the new page with **no** notifier (nothing a secondary could have mapped is left).
//! * [`Process::migrate_to_device`]: `migrate_vma_setup` → `migrate_vma_collect` starts one
//!   blockable [`Event::Migrate`] over the whole range with the caller's
//!   [`Owner`] (`mmu_notifier_range_init_owner`), so the migrating driver can recognise and skip
//!   its own invalidation; entries become migration entries, then device-private entries.
//! * A CPU fault on a device-private entry migrates the page back (`migrate_to_ram`, which a
//!   driver implements in Linux and the simulator does for it): one [`Event::Migrate`] over the
//!   page with the device memory's owner.
//!
//! Pinned pages are never migrated (`folio_maybe_dma_pinned` makes `migrate_vma_collect` and
//! `migrate_pages` skip them). Only anonymous private pages are migrated here.

use crate::primitive::Ordering;

use mmu_notifier::{Event, Owner, Range};

use crate::alloc::GFP_USER;
use crate::error::VmError;
use crate::frame::{flags, Pfn};
use crate::lru::LruKind;
use crate::machine::Inner;
use crate::machine::Space;
use crate::process::Process;
use crate::pte::{for_each_pte, pte_index, Leaf, Pte, PAGE_SIZE};
use crate::rmap_walk::rmap_walk;
use crate::vma::check_range;

/// What a migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Pages moved: `(address, new frame)`.
    pub moved: Vec<(u64, Pfn)>,
    /// Pages left where they were (pinned, shared, not anonymous, racing).
    pub skipped: usize,
}

fn range(start: u64, end: u64, event: Event) -> Result<Range, VmError> {
    Range::new(start, end, event).map_err(|e| VmError::InvalidArgument(e.to_string()))
}

impl Process {
    /// `migrate_pages` for the anonymous pages of `[addr, addr + npages)`: each page moves to a
    /// new frame with the same content, in every process that maps it.
    ///
    /// # Context
    /// Takes the mmap lock for read; may sleep and allocate.
    pub fn migrate_pages(&self, addr: u64, npages: u64) -> Result<MigrateReport, VmError> {
        let end = check_range(addr, npages.saturating_mul(PAGE_SIZE))?;
        let space = self.space();
        let _vmas = space.mmap_lock.read();
        let m = &space.machine;
        let mut pages = Vec::new();
        for_each_pte(&space.pt, addr, end, |a, pte| {
            if let Some(pfn) = pte.pfn().filter(|_| pte.is_present()) {
                pages.push((a, pfn));
            }
        });
        let mut report = MigrateReport::default();
        for (a, pfn) in pages {
            match migrate_one(m, pfn)? {
                Some(new) => report.moved.push((a, new)),
                None => report.skipped += 1,
            }
        }
        Ok(report)
    }

    /// `migrate_vma_setup` + `migrate_vma_pages` + `migrate_vma_finalize` to device-private
    /// memory owned by `owner`: every exclusive anonymous page of `[start, end)` is copied into
    /// a new device-private frame (its content passed through `copy`, which models the device's
    /// DMA) and the CPU's entry becomes a device-private entry.
    ///
    /// # Context
    /// Takes the mmap lock for read; may sleep and allocate.
    pub fn migrate_to_device(
        &self,
        start: u64,
        end: u64,
        owner: Owner,
        mut copy: impl FnMut(u64, u64) -> u64,
    ) -> Result<MigrateReport, VmError> {
        let end = check_range(start, end.saturating_sub(start))?;
        let space = self.space();
        let _vmas = space.mmap_lock.read();
        let m = &space.machine;
        let mut report = MigrateReport::default();
        // `migrate_vma_collect`: one Migrate over the range, owner-tagged.
        let guard = space
            .mm
            .invalidate_range_start(range(start, end, Event::Migrate)?.with_owner(owner));
        let mut collected: Vec<(u64, Pfn, bool)> = Vec::new();
        for_each_pte(&space.pt, start, end, |a, pte| {
            let Some(pfn) = pte.pfn().filter(|_| pte.is_present()) else {
                return;
            };
            let f = m.pool.get(pfn);
            if !f.test(flags::ANON) || f.mapcount() != 1 || f.pincount() > 0 {
                report.skipped += 1;
                return;
            }
            space.mm.arch_invalidate_secondary_tlbs(a, a + PAGE_SIZE);
            collected.push((a, pfn, pte.is_write()));
            *pte = Pte::migration(pfn, pte.is_write());
            space.rss.fetch_sub(1, Ordering::AcqRel);
        });
        drop(guard);
        let mut pending = collected.into_iter();
        while let Some((a, pfn, write)) = pending.next() {
            let old = m.pool.get(pfn);
            let dev = match crate::alloc::alloc_page(m, GFP_USER) {
                Ok(d) => d,
                Err(e) => {
                    // Every entry not migrated yet goes back, not only this one.
                    for (a, pfn, write) in std::iter::once((a, pfn, write)).chain(pending) {
                        restore(space, a, pfn, Pte::present(pfn, write, true))?;
                    }
                    return Err(e);
                }
            };
            let df = m.pool.get(dev);
            df.set_content(copy(a, old.content()));
            let (owner_id, index) = old.mapping();
            df.set_mapping(owner_id, index);
            df.set(flags::ANON | flags::DEVICE_PRIVATE);
            df.map();
            m.device_owner.lock().insert(dev.0, owner.0);
            // Only over our own migration entry: a munmap may have zapped it meanwhile (and a
            // fault mapped a new page there), as `migrate_vma_insert_page` rechecks.
            let leaf = space.pt.leaf_alloc(a);
            let ours = {
                let mut ptes = leaf.ptl.lock();
                let p = &mut ptes[pte_index(a)];
                let ours = p.migration_pfn() == Some(pfn);
                if ours {
                    *p = Pte::device_private(dev, write);
                }
                ours
            };
            old.unmap()?;
            m.put_page(pfn)?;
            if !ours {
                df.unmap()?;
                m.put_page(dev)?;
                report.skipped += 1;
                continue;
            }
            report.moved.push((a, dev));
        }
        Ok(report)
    }
}

/// Puts a migration entry back as it was (a failed migration).
fn restore(space: &Space, a: u64, pfn: Pfn, pte: Pte) -> Result<(), VmError> {
    let leaf = space.pt.leaf_alloc(a);
    let mut ptes = leaf.ptl.lock();
    let p = &mut ptes[pte_index(a)];
    if p.migration_pfn() == Some(pfn) {
        *p = pte;
        space.rss.fetch_add(1, Ordering::AcqRel);
        return Ok(());
    }
    // Zapped meanwhile (the zap leaves a migration entry's page to the migrating thread).
    drop(ptes);
    space.machine.pool.get(pfn).unmap()?;
    space.machine.put_page(pfn).map(drop)
}

/// Moves one anonymous page (`migrate_folio_unmap` + `migrate_folio_move`). Returns the new
/// frame, or `None` if the page cannot move now.
fn migrate_one(m: &Inner, pfn: Pfn) -> Result<Option<Pfn>, VmError> {
    let f = m.pool.get(pfn);
    if !f.test(flags::ANON) || f.pincount() > 0 || !f.try_get() {
        return Ok(None);
    }
    if !m.lru.del(&m.pool, pfn)? {
        m.put_page(pfn)?;
        return Ok(None);
    }
    f.set(flags::ISOLATED);
    let new = match crate::alloc::alloc_page(m, GFP_USER) {
        Ok(n) => n,
        Err(e) => {
            m.lru.putback(&m.pool, pfn, LruKind::Inactive)?;
            return Err(e);
        }
    };
    let (owner, index) = f.mapping();
    // `try_to_migrate_one`: per mapping, a blockable Clear, then a migration entry.
    let mut migrated: Vec<(crate::rmap::MmId, u64)> = Vec::new();
    let filed = rmap_walk(m, pfn, Some(Event::Clear), |space, a, p| {
        *p = Pte::migration(pfn, p.is_write());
        space.rss.fetch_sub(1, Ordering::AcqRel);
        if f.unmap().is_ok() {
            migrated.push((space.id(), a));
        }
        true
    });
    if !filed {
        m.put_page(new)?;
        m.lru.putback(&m.pool, pfn, LruKind::Inactive)?;
        return Ok(None);
    }
    for _ in &migrated {
        m.put_page(pfn)?; // the mappings' references
    }
    let nf = m.pool.get(new);
    nf.set_content(f.content());
    nf.set_mapping(owner, index);
    nf.set(flags::ANON | flags::SWAPBACKED | (f.flags() & flags::DIRTY));
    // `remove_migration_ptes`: no notifier.
    for (mm, a) in &migrated {
        let Some(space) = m.space(*mm) else { continue };
        let Some(leaf) = space.pt.leaf(*a) else {
            continue;
        };
        let mut ptes = leaf.ptl.lock();
        let p = &mut ptes[pte_index(*a)];
        if p.migration_pfn() == Some(pfn) {
            nf.get();
            nf.map();
            *p = Pte::present(new, p.is_write(), true);
            space.rss.fetch_add(1, Ordering::AcqRel);
        }
    }
    f.clear(flags::ISOLATED);
    m.put_page(pfn)?; // the isolation reference: frees the old page
    m.lru.add(&m.pool, new, LruKind::Inactive)?;
    m.put_page(new)?; // the allocation reference; the mappings hold theirs
    Ok(Some(new))
}

/// `migrate_to_ram` for a CPU fault on a device-private entry: one Migrate over the page with
/// the device memory's owner, the content copied back into a new system page.
pub(crate) fn migrate_to_ram(
    space: &Space,
    leaf: &Leaf,
    page: u64,
    pte: Pte,
) -> Result<(), VmError> {
    let m = &space.machine;
    let dev = pte.pfn().expect("a device-private entry has a frame");
    let owner = m.device_owner.lock().get(&dev.0).copied().unwrap_or(0);
    let new = crate::alloc::alloc_page(m, GFP_USER)?;
    let df = m.pool.get(dev);
    let nf = m.pool.get(new);
    let (o, i) = df.mapping();
    nf.set_mapping(o, i);
    nf.set(flags::ANON | flags::SWAPBACKED | flags::DIRTY);
    let guard = space.mm.invalidate_range_start(
        range(page, page + PAGE_SIZE, Event::Migrate)?.with_owner(Owner(owner)),
    );
    nf.set_content(df.content());
    // On the LRU before it is mapped, while the allocation reference is still ours: once
    // mapped, a concurrent zap may free it (`folio_add_lru_vma` before `set_pte_at`).
    m.lru.add(&m.pool, new, LruKind::Inactive)?;
    let replaced = {
        let mut ptes = leaf.ptl.lock();
        let p = &mut ptes[pte_index(page)];
        if *p == pte {
            nf.map();
            *p = Pte::present(new, pte.is_write(), true);
            space.rss.fetch_add(1, Ordering::AcqRel);
            true
        } else {
            false
        }
    };
    drop(guard);
    if !replaced {
        return m.put_page(new).map(|_| ());
    }
    df.unmap()?;
    m.put_page(dev).map(|_| ())
}
