//! A process that faults, forks, is reclaimed and is OOM-killed, with a recording subscriber
//! attached to it, printing the notifier events as they happen.
//!
//! `cargo run -p vmsim --example lifecycle`

use mmu_notifier::{Capabilities, Mm, MmuNotifierOps, Range, WouldBlock};
use vmsim::{Advice, Config, Machine, MapRequest};

const P: u64 = 4096;

/// Prints every callback it receives.
struct Printer(&'static str);

impl MmuNotifierOps for Printer {
    fn capabilities(&self) -> Capabilities {
        Capabilities::INVALIDATE_RANGE_START
            | Capabilities::INVALIDATE_RANGE_END
            | Capabilities::RELEASE
            | Capabilities::CLEAR_FLUSH_YOUNG
    }
    fn invalidate_range_start(&self, r: &Range) -> Result<(), WouldBlock> {
        println!(
            "  [{}] start {:<16} {:#x}..{:#x} {}",
            self.0,
            r.event().kernel_name(),
            r.start(),
            r.end(),
            if r.is_blockable() {
                "blockable"
            } else {
                "NON-BLOCKABLE"
            }
        );
        Ok(())
    }
    fn invalidate_range_end(&self, r: &Range) {
        println!(
            "  [{}] end   {:<16} {:#x}..{:#x}",
            self.0,
            r.event().kernel_name(),
            r.start(),
            r.end()
        );
    }
    fn clear_flush_young(&self, _mm: &Mm, start: u64, _end: u64) -> bool {
        println!("  [{}] clear_flush_young {start:#x}", self.0);
        false
    }
    fn release(&self, _mm: &Mm) {
        println!("  [{}] release", self.0);
    }
}

fn main() -> Result<(), vmsim::VmError> {
    let m = Machine::new(Config::new(256).swap(64))?;
    let p = m.spawn();
    let _sub = p.mm().register(Printer("parent")).expect("register");

    println!("mmap 8 pages and write them (anonymous faults fire nothing):");
    let a = p.mmap(MapRequest::anon(8 * P))?;
    for i in 0..8 {
        p.write(a + i * P, i)?;
    }

    println!("fork (the parent's COW VMA is write-protected):");
    let child = p.fork()?;
    let _csub = child.mm().register(Printer("child")).expect("register");

    println!("the parent writes page 0 (copy-on-write break):");
    p.write(a, 100)?;

    println!("the child exits:");
    child.exit()?;

    println!("reclaim (young bits asked, then one Clear per page swapped out):");
    p.madvise(a, 8 * P, Advice::Cold)?;
    let freed = m.reclaim(4);
    println!("  reclaimed {freed} frames");

    println!("the OOM killer picks the process; the reaper unmaps it non-blockably:");
    let report = m.oom_kill(&p);
    println!("  {report}");

    println!("exit:");
    p.exit()?;
    let c = m.check()?;
    println!(
        "machine: {} frames used, {} free, {} swap slots in use",
        c.used, c.free, c.swap_used
    );
    Ok(())
}
