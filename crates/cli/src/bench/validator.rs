//! The validator's steady-state cost: an uncontended nested lock pair of `lockdep::Mutex`
//! with validation on, against the `parking_lot::Mutex` pair that `lockdep::Mutex` compiles to
//! without lockdep's `enabled` feature. One binary cannot switch features, so the compiled-out
//! build is stood in for by the lock it compiles to (`cargo bench -p lockdep --bench
//! nested_pair` with `--no-default-features` measures the real one); the same pair with the
//! validator switched off at run time is the second row.

use std::hint::black_box;

use lockdep::{static_lock_class, Mutex};

use super::interleave::{medians, ns_per_op};
use super::{BenchConfig, BenchRow};

/// The nested pair validated, and switched off at run time, each against a bare
/// `parking_lot::Mutex` pair. Leaves the validator in the state it found it in. ns per pair.
pub fn nested_pair(cfg: &BenchConfig) -> Vec<BenchRow> {
    let was = lockdep::is_enabled();
    let a = Mutex::new(0u64, static_lock_class!("bench-pair-A"));
    let b = Mutex::new(0u64, static_lock_class!("bench-pair-B"));
    let pa = parking_lot::Mutex::new(0u64);
    let pb = parking_lot::Mutex::new(0u64);
    let ours = || {
        let ga = a.lock();
        let mut gb = b.lock();
        *gb += black_box(*ga);
    };
    let bare = || {
        let ga = pa.lock();
        let mut gb = pb.lock();
        *gb += black_box(*ga);
    };
    lockdep::set_enabled(true);
    ours(); // the first acquisition validates the chain; time the steady state
    let m = medians(cfg, cfg.ops, 3, |v, n| {
        lockdep::set_enabled(v == 0);
        match v {
            0 | 1 => ns_per_op(n, |_| ours()),
            _ => ns_per_op(n, |_| bare()),
        }
    });
    lockdep::set_enabled(was);
    let base = m[2];
    let baseline = "parking_lot::Mutex pair (what lockdep::Mutex compiles to without `enabled`)";
    vec![
        BenchRow {
            name: "validator: nested lock pair, validated".into(),
            value: m[0],
            unit: "ns",
            baseline: Some((baseline.into(), base)),
        },
        BenchRow {
            name: "validator: nested lock pair, switched off at run time".into(),
            value: m[1],
            unit: "ns",
            baseline: Some((baseline.into(), base)),
        },
    ]
}
