//! Host memory per simulated frame, and a 1,000,000-frame machine with 64 processes: how long it
//! takes to start and how much host memory it uses beyond the frames' own metadata.
//!
//! `cargo run --release -p vmsim --example footprint [FRAMES] [PROCESSES]`

use std::time::Instant;

use vmsim::{Config, Machine, MapRequest};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let mut args = std::env::args().skip(1);
    let frames: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let procs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let frame_meta = std::mem::size_of::<vmsim::Frame>() as u64;
    let before = rss_bytes();
    let start = Instant::now();
    let m = Machine::new(Config::new(frames)).expect("machine");
    let processes: Vec<_> = (0..procs).map(|_| m.spawn()).collect();
    let startup = start.elapsed();
    let after_start = rss_bytes();
    // Each process maps and touches an equal share of half the memory.
    let per = (frames / 2 / procs) as u64;
    let t = Instant::now();
    for p in &processes {
        let a = p.mmap(MapRequest::anon(per * 4096)).expect("mmap");
        p.touch(a, per * 4096, true).expect("touch");
    }
    let populate = t.elapsed();
    let after_touch = rss_bytes();
    let metadata = frames as u64 * frame_meta;
    let per_frame_total = (after_start - before) as f64 / frames as f64;
    println!("frames                         {frames}");
    println!("processes                      {procs}");
    println!("Frame struct                   {frame_meta} B (Linux struct page: 64 B)");
    println!("host bytes per frame at start  {per_frame_total:.1} B (metadata + free list)");
    println!(
        "startup (machine + processes)  {:.3} s",
        startup.as_secs_f64()
    );
    println!(
        "populate {} pages               {:.3} s ({:.0} faults/s)",
        per * procs as u64,
        populate.as_secs_f64(),
        (per * procs as u64) as f64 / populate.as_secs_f64()
    );
    println!(
        "host memory beyond frame metadata, populated: {:.1} MiB (target <= 100 MiB)",
        (after_touch.saturating_sub(before).saturating_sub(metadata)) as f64 / (1 << 20) as f64
    );
    for p in processes {
        p.exit().expect("exit");
    }
    let c = m.check().expect("invariants");
    println!("after exit: {} frames used, {} free", c.used, c.free);
}
