//! Declares the test-only `vmsim_broken` cfg: deliberately broken variants of the simulator's
//! protocols that the shuttle model must catch (see tests/shuttle_replay.rs).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(vmsim_broken, values(none(), \"pageout_before_unmap\"))");
}
