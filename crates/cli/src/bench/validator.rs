//! The validator's steady-state cost: an uncontended nested lock pair of `lockdep::Mutex`
//! with validation on, against the `parking_lot::Mutex` pair that `lockdep::Mutex` compiles to
//! without lockdep's `enabled` feature. One binary cannot switch features, so the compiled-out
//! build is stood in for by the lock it compiles to (`cargo bench -p lockdep --bench
//! nested_pair` with `--no-default-features` measures the real one); the same pair with the
//! validator switched off at run time is the second row.

use std::hint::black_box;

use lockdep::{static_lock_class, Mutex};

use super::{median, BenchConfig, BenchRow};

fn ns_per_pair(cfg: &BenchConfig, mut pair: impl FnMut()) -> Vec<f64> {
    (0..cfg.batches)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..cfg.ops {
                pair();
            }
            t.elapsed().as_nanos() as f64 / cfg.ops as f64
        })
        .collect()
}

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
    let (mut on, mut off, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.batches {
        let one = BenchConfig { batches: 1, ..*cfg };
        lockdep::set_enabled(true);
        ours(); // the first acquisition validates the chain; time the steady state
        on.extend(ns_per_pair(&one, ours));
        lockdep::set_enabled(false);
        off.extend(ns_per_pair(&one, ours));
        base.extend(ns_per_pair(&one, bare));
    }
    lockdep::set_enabled(was);
    let base = median(base);
    let baseline = "parking_lot::Mutex pair (what lockdep::Mutex compiles to without `enabled`)";
    vec![
        BenchRow {
            name: "validator: nested lock pair, validated".into(),
            value: median(on),
            unit: "ns",
            baseline: Some((baseline.into(), base)),
        },
        BenchRow {
            name: "validator: nested lock pair, switched off at run time".into(),
            value: median(off),
            unit: "ns",
            baseline: Some((baseline.into(), base)),
        },
    ]
}
