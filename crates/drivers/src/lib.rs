//! Reference secondary MMUs on the simulated kernel, and a coherence checker for every device
//! access they make.
//!
//! Each driver is a faithful model of its kernel counterpart, cited in its module: the HMM test
//! device ([`dmirror`], `lib/test_hmm.c`), RDMA on-demand paging ([`odp`],
//! `drivers/infiniband/core/umem_odp.c`), KVM ([`kvm`], `virt/kvm/kvm_main.c`), the Xen grant
//! device ([`gntdev`], `drivers/xen/gntdev.c`), i915 userptr ([`userptr`],
//! `drivers/gpu/drm/i915/gem/i915_gem_userptr.c`) and an IOMMU doing shared virtual addressing
//! ([`sva`], `drivers/iommu/intel/svm.c`). Every device access goes through the
//! [`checker`], which compares the translation the device used with the primary's page table
//! and the frame's generation at that instant. [`buggy`] holds drivers with the classic bugs,
//! which the checker must catch.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod buggy;
pub mod checker;
pub mod devpt;
pub mod dmirror;
mod error;
pub mod gntdev;
pub mod kvm;
pub mod odp;
pub mod scenarios;
pub mod sva;
pub mod userptr;

pub use checker::{Access, Checker, Tracker, Translation, Violation};
pub use error::DriverError;
