//! The nested-pair cost measured for a shared, noisy machine: the variants run in interleaved
//! batches (each batch of each variant next to the others in time), and each is reported as
//! the median and the minimum over the batches, with its ratio to the bare `parking_lot` pair
//! of the same run. Criterion's `benches/nested_pair.rs` runs the variants one after the
//! other, so load that comes and goes moves their ratios.
//!
//! `cargo run --release -p lockdep --example nested_pair_interleaved [batches]`
//!
//! Variants: `lockdep::Mutex` validated (a chain-cache hit) and switched off at run time; the
//! bare `parking_lot::Mutex` pair (what the type compiles to without `enabled`); and the two
//! ways to try the raw lock before a waiting acquisition (the cost of telling a contended
//! acquisition apart for `blocked_tasks`): `try_lock` then `lock`, and `try_lock_for(0)` then
//! `lock` (what `Lock::lock` does).

use std::hint::black_box;
use std::time::{Duration, Instant};

use lockdep::{static_lock_class, Mutex};

const PAIRS: usize = 20_000;

type Raw = parking_lot::Mutex<u64>;

/// The raw pair, each lock taken by `take` (generic, so inlined: no indirect call).
fn raw_pair<'a, F>(pa: &'a Raw, pb: &'a Raw, take: F) -> impl FnMut() + 'a
where
    F: for<'m> Fn(&'m Raw) -> parking_lot::MutexGuard<'m, u64> + 'a,
{
    move || {
        let ga = take(pa);
        let mut gb = take(pb);
        *gb += black_box(*ga);
    }
}

/// A variant: its name, whether validation is on while it runs, one pair.
type Variant<'a> = (&'static str, bool, Box<dyn FnMut() + 'a>);

fn time(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..PAIRS {
        f();
    }
    t.elapsed().as_nanos() as f64 / PAIRS as f64
}

fn main() {
    let batches: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(401);
    let a = Mutex::new(0u64, static_lock_class!("interleaved-A"));
    let b = Mutex::new(0u64, static_lock_class!("interleaved-B"));
    let pa = parking_lot::Mutex::new(0u64);
    let pb = parking_lot::Mutex::new(0u64);
    let lockdep_pair = || {
        let ga = a.lock();
        let mut gb = b.lock();
        *gb += black_box(*ga);
    };
    lockdep_pair(); // the first pair validates the chain: time the steady state
    let mut rows: Vec<Variant> = vec![
        (
            "parking_lot pair (the compiled-out type)",
            true,
            Box::new(raw_pair(&pa, &pb, |m| m.lock())),
        ),
        (
            "lockdep::Mutex pair, validated",
            true,
            Box::new(lockdep_pair),
        ),
        (
            "lockdep::Mutex pair, set_enabled(false)",
            false,
            Box::new(lockdep_pair),
        ),
        (
            "parking_lot pair, try_lock then lock",
            true,
            Box::new(raw_pair(&pa, &pb, |m| {
                m.try_lock().unwrap_or_else(|| m.lock())
            })),
        ),
        (
            "parking_lot pair, try_lock_for(0) then lock",
            true,
            Box::new(raw_pair(&pa, &pb, |m| {
                m.try_lock_for(Duration::ZERO).unwrap_or_else(|| m.lock())
            })),
        ),
    ];
    let mut samples = vec![Vec::with_capacity(batches); rows.len()];
    for _ in 0..batches {
        for (i, (_, enabled, f)) in rows.iter_mut().enumerate() {
            lockdep::set_enabled(*enabled);
            samples[i].push(time(f.as_mut()));
        }
    }
    lockdep::set_enabled(true);
    let stats: Vec<(f64, f64)> = samples
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0])
        })
        .collect();
    let (base_med, base_min) = stats[0];
    println!("{batches} interleaved batches of {PAIRS} pairs; ns per pair");
    println!("| variant | median | ratio | minimum | ratio |");
    println!("|---|---|---|---|---|");
    for ((name, _, _), (med, min)) in rows.iter().zip(&stats) {
        println!(
            "| {name} | {med:.2} | {:.2}× | {min:.2} | {:.2}× |",
            med / base_med,
            min / base_min
        );
    }
}
