//! The coherence checker's cost per device access: a device load through a device page table
//! under the driver's lock, with and without [`Tracker::access`], in one run.
//!
//! `cargo run --release -p drivers --example overhead` prints the median of 11 rounds of
//! 200,000 accesses each, for both, and the ratio.

use std::time::Instant;

use drivers::checker::{Access, Checker};
use drivers::devpt::{touch_frame, DevicePt};
use drivers::Translation;
use lockdep::{static_lock_class, Mutex};
use vmsim::{Config, Machine, MapRequest};

const P: u64 = 4096;
const PAGES: u64 = 64;
const ACCESSES: u64 = 200_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let m = Machine::new(Config::new(1024)).unwrap();
    let p = m.spawn();
    let a = p.mmap(MapRequest::anon(PAGES * P)).unwrap();
    let mut pt = DevicePt::new();
    for i in 0..PAGES {
        p.write(a + i * P, i).unwrap();
        let (pfn, write) = p.space().lookup(a + i * P).unwrap();
        let generation = m.frames().frame(pfn).unwrap().generation();
        pt.insert(
            a + i * P,
            Translation {
                pfn,
                generation,
                write,
            },
        );
    }
    let pt = Mutex::new(pt, static_lock_class!("overhead device pt"));
    let c = Checker::new();
    let t = c.driver("overhead");
    let space = p.space().clone();
    let round = |checked: bool| {
        let start = Instant::now();
        let mut sum = 0u64;
        for i in 0..ACCESSES {
            let addr = a + (i % PAGES) * P;
            let pt = pt.lock();
            let tr = pt.get(addr).unwrap();
            if checked {
                t.access(&space, addr, tr, Access::Read);
            }
            sum = sum.wrapping_add(touch_frame(&space, tr.pfn, None).unwrap());
        }
        std::hint::black_box(sum);
        start.elapsed().as_nanos() as f64 / ACCESSES as f64
    };
    let (mut plain, mut checked) = (Vec::new(), Vec::new());
    for _ in 0..11 {
        plain.push(round(false));
        checked.push(round(true));
    }
    let (pm, cm) = (median(plain), median(checked));
    c.check_quiescent().unwrap();
    println!("unchecked device access: {pm:.1} ns (median of 11 x {ACCESSES})");
    println!("checked device access:   {cm:.1} ns (median of 11 x {ACCESSES})");
    println!(
        "ratio: {:.2}x, checker cost {:.1} ns per access",
        cm / pm,
        cm - pm
    );
}
