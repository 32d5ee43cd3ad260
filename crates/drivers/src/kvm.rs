//! KVM's secondary MMU (`virt/kvm/kvm_main.c`, the x86 TDP MMU of `arch/x86/kvm/mmu/`).
//!
//! A [`Kvm`] is one VM: a list subscriber on the VMM process's address space (`kvm_init_mmu_notifier`),
//! a shadow page table (the SPTEs) written under `kvm->mmu_lock`, and the two counters of the
//! invalidation protocol:
//!
//! * `kvm_mmu_notifier_invalidate_range_start` → `kvm_mmu_invalidate_begin`: under the MMU
//!   lock, `mmu_invalidate_in_progress++` and the in-progress range widened, then the SPTEs of
//!   the range zapped and the TLBs flushed (`kvm_unmap_gfn_range`). It never fails.
//! * `kvm_mmu_notifier_invalidate_range_end` → `kvm_mmu_invalidate_end`: under the MMU lock,
//!   `mmu_invalidate_seq++`, then `mmu_invalidate_in_progress--`.
//! * A guest fault (`kvm_tdp_page_fault` → `kvm_faultin_pfn`) snapshots `mmu_invalidate_seq`,
//!   returns `RET_PF_RETRY` while an invalidation in progress covers the address
//!   (`mmu_invalidate_retry_gfn_unsafe`), looks the page up with GUP outside any lock
//!   (`hva_to_pfn`), then under the MMU lock installs the SPTE only if neither the count nor the
//!   sequence says it may be stale (`mmu_invalidate_retry_gfn`).
//! * Aging (`kvm_mmu_notifier_clear_flush_young`, `clear_young`, `test_young`) reports and
//!   clears the accessed bits of the SPTEs, locklessly as the TDP MMU does since 6.x (here: the
//!   SPTE table's own leaf lock, never `mmu_lock`, since aging runs under the primary's PTL).
//! * `kvm_mmu_notifier_release` → `kvm_flush_shadow_all`: every SPTE goes.
//!
//! [`KvmVariant::V4_19`] is the Linux 4.19 notifier: the same counter scheme, but a start that
//! returns the arch hook's `int` (`kvm_arch_mmu_notifier_invalidate_range`, 0 on x86), so the
//! ops declare a fallible start *and* an end — accepted only by kernels before 5.12
//! ([`mmu_notifier::Profile::Pre5_12`]). It is Jason Gunthorpe's "A" in seed 004.
//!
//! A guest access holds `mmu_lock` across its check: it stands for the vCPU running in guest
//! mode, which the zap's remote TLB flush (`kvm_flush_remote_tlbs`, under `mmu_lock`) waits
//! for.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockdep::{static_lock_class, SpinLock};
use mmu_notifier::{Capabilities, Mm, MmuNotifierOps, Range, Subscription, WouldBlock};
use vmsim::pte::PAGE_SIZE;
use vmsim::{Process, Space};

use crate::checker::{Access, Checker, Tracker, Translation};
use crate::devpt::touch_frame;
use crate::DriverError;

/// Which kernel's KVM notifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmVariant {
    /// Linux 5.13 and later: start never fails.
    Current,
    /// Linux 4.19: start may fail (declared `START_CAN_FAIL`) and has an end.
    V4_19,
}

/// Guest-fault retries (`RET_PF_RETRY`) before a fault is declared stuck.
pub const GUEST_FAULT_RETRIES: u32 = 200;

#[derive(Debug, Default)]
struct MmuState {
    in_progress: i64,
    seq: u64,
    range: (u64, u64),
}

#[derive(Clone, Copy, Debug)]
struct Spte {
    t: Translation,
    young: bool,
}

struct Vm {
    space: Arc<Space>,
    mmu_lock: SpinLock<MmuState>,
    sptes: SpinLock<BTreeMap<u64, Spte>>,
    check: Tracker,
    released: AtomicBool,
}

impl Vm {
    fn zap(&self, start: u64, end: u64) {
        let mut s = self.sptes.lock();
        let gone: Vec<u64> = s.range(start..end).map(|(&a, _)| a).collect();
        for a in gone {
            s.remove(&a);
        }
    }

    fn age(&self, start: u64, end: u64, clear: bool) -> bool {
        let mut s = self.sptes.lock();
        let mut young = false;
        for (_, e) in s.range_mut(start..end) {
            young |= e.young;
            if clear {
                e.young = false;
            }
        }
        young
    }
}

/// The list-subscriber side of a [`Kvm`] (`kvm_mmu_notifier_ops`).
pub struct KvmNotifier {
    vm: Arc<Vm>,
    variant: KvmVariant,
}

impl MmuNotifierOps for KvmNotifier {
    fn capabilities(&self) -> Capabilities {
        let c = Capabilities::INVALIDATE_RANGE_START
            | Capabilities::INVALIDATE_RANGE_END
            | Capabilities::YOUNG
            | Capabilities::RELEASE;
        match self.variant {
            KvmVariant::Current => c,
            KvmVariant::V4_19 => c | Capabilities::START_CAN_FAIL,
        }
    }

    fn invalidate_range_start(&self, range: &Range) -> Result<(), WouldBlock> {
        let vm = &self.vm;
        let mut s = vm.mmu_lock.lock();
        s.in_progress += 1;
        s.range = if s.in_progress == 1 {
            (range.start(), range.end())
        } else {
            (s.range.0.min(range.start()), s.range.1.max(range.end()))
        };
        vm.zap(range.start(), range.end());
        vm.check.start(range);
        drop(s);
        // 4.19: `return kvm_arch_mmu_notifier_invalidate_range(kvm, start, end, blockable)`,
        // which is 0 on x86.
        Ok(())
    }

    fn invalidate_range_end(&self, range: &Range) {
        let mut s = self.vm.mmu_lock.lock();
        s.seq += 1;
        s.in_progress -= 1;
        self.vm.check.end(range);
    }

    fn clear_flush_young(&self, _mm: &Mm, start: u64, end: u64) -> bool {
        self.vm.age(start, end, true)
    }

    fn clear_young(&self, _mm: &Mm, start: u64, end: u64) -> bool {
        self.vm.age(start, end, true)
    }

    fn test_young(&self, _mm: &Mm, address: u64) -> bool {
        self.vm.age(address, address + 1, false)
    }

    fn release(&self, _mm: &Mm) {
        let _s = self.vm.mmu_lock.lock();
        self.vm.zap(0, u64::MAX);
        self.vm.released.store(true, Ordering::Release);
        self.vm.check.release();
    }
}

/// One VM whose guest memory is the VMM process's address space (identity memslot: a guest
/// physical address is the host virtual address).
pub struct Kvm {
    vm: Arc<Vm>,
    sub: Option<Subscription<KvmNotifier>>,
}

impl std::fmt::Debug for Kvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.vm.mmu_lock.lock();
        write!(
            f,
            "Kvm {{ in_progress: {}, seq: {} }}",
            s.in_progress, s.seq
        )
    }
}

impl Kvm {
    /// Creates a VM on `process` (`kvm_create_vm` → `kvm_init_mmu_notifier`).
    pub fn create(
        process: &Process,
        checker: &Checker,
        name: &str,
        variant: KvmVariant,
    ) -> Result<Kvm, DriverError> {
        let vm = Arc::new(Vm {
            space: process.space().clone(),
            mmu_lock: SpinLock::new(MmuState::default(), static_lock_class!("&kvm->mmu_lock")),
            sptes: SpinLock::new(BTreeMap::new(), static_lock_class!("kvm tdp sptes")),
            check: checker.driver(name),
            released: AtomicBool::new(false),
        });
        let sub = process.mm().register(KvmNotifier {
            vm: vm.clone(),
            variant,
        })?;
        Ok(Kvm { vm, sub: Some(sub) })
    }

    /// The checker's handle of this VM.
    pub fn tracker(&self) -> &Tracker {
        &self.vm.check
    }

    /// `mmu_invalidate_in_progress` now.
    pub fn in_progress(&self) -> i64 {
        self.vm.mmu_lock.lock().in_progress
    }

    /// `mmu_invalidate_seq` now.
    pub fn seq(&self) -> u64 {
        self.vm.mmu_lock.lock().seq
    }

    /// SPTEs mapped now.
    pub fn mapped(&self) -> usize {
        self.vm.sptes.lock().len()
    }

    /// The guest loads the word at `gpa`, faulting as needed.
    pub fn guest_read(&self, gpa: u64) -> Result<u64, DriverError> {
        self.guest_access(gpa, None)
    }

    /// The guest stores `value` at `gpa`, faulting as needed.
    pub fn guest_write(&self, gpa: u64, value: u64) -> Result<(), DriverError> {
        self.guest_access(gpa, Some(value)).map(drop)
    }

    fn guest_access(&self, gpa: u64, store: Option<u64>) -> Result<u64, DriverError> {
        let page = gpa & !(PAGE_SIZE - 1);
        let vm = &self.vm;
        let access = if store.is_some() {
            Access::Write
        } else {
            Access::Read
        };
        for _ in 0..crate::devpt::MAX_TRIES {
            {
                let _guest_mode = vm.mmu_lock.lock();
                let spte = {
                    let mut s = vm.sptes.lock();
                    s.get_mut(&page)
                        .filter(|e| store.is_none() || e.t.write)
                        .map(|e| {
                            e.young = true;
                            *e
                        })
                };
                if let Some(e) = spte {
                    vm.check.access(&vm.space, page, e.t, access);
                    return touch_frame(&vm.space, e.t.pfn, store);
                }
            }
            self.guest_fault(page, store.is_some())?;
        }
        Err(DriverError::Busy {
            what: "guest access",
            tries: crate::devpt::MAX_TRIES,
        })
    }

    /// A guest page fault (EPT violation) at `gpa`: the snapshot / retry scheme of
    /// `kvm_tdp_page_fault`. Fails with [`DriverError::GuestFaultStuck`] when every attempt
    /// returned `RET_PF_RETRY` because the in-progress count never dropped.
    pub fn guest_fault(&self, gpa: u64, write: bool) -> Result<(), DriverError> {
        let page = gpa & !(PAGE_SIZE - 1);
        let vm = &self.vm;
        if vm.released.load(Ordering::Acquire) {
            return Err(DriverError::Released);
        }
        let mut last = 0;
        for _ in 0..GUEST_FAULT_RETRIES {
            let (seq, busy) = {
                let s = vm.mmu_lock.lock();
                last = s.in_progress;
                (
                    s.seq,
                    s.in_progress > 0 && s.range.0 <= page && page < s.range.1,
                )
            };
            if busy {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            let p = Space::mmget_not_zero(&vm.space).ok_or(DriverError::Released)?;
            let pinned = p.pin_user_pages(page, 1, write)?; // hva_to_pfn
            let pfn = crate::devpt::one(&pinned)?;
            let m = vm.space.machine();
            let t = Translation {
                pfn,
                generation: m.frames().frame(pfn)?.generation(),
                write,
            };
            let installed = {
                let s = vm.mmu_lock.lock();
                let retry =
                    s.seq != seq || (s.in_progress > 0 && s.range.0 <= page && page < s.range.1);
                if !retry {
                    vm.sptes.lock().insert(page, Spte { t, young: true });
                }
                !retry
            };
            p.unpin_user_pages(&pinned)?; // kvm_release_page_clean
            if installed {
                return Ok(());
            }
        }
        Err(DriverError::GuestFaultStuck {
            addr: gpa,
            in_progress: last,
            tries: GUEST_FAULT_RETRIES,
        })
    }

    /// Destroys the VM (`kvm_destroy_vm` → `mmu_notifier_unregister`).
    pub fn destroy(mut self) -> Result<(), DriverError> {
        if let Some(sub) = self.sub.take() {
            sub.unregister()?;
        }
        Ok(())
    }
}
