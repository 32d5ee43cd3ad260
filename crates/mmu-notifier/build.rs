//! Declares the test-only `mmn_broken` cfg: deliberately broken variants of the contract's
//! protocols that the model tests must catch (see tests/loom_protocols.rs).

fn main() {
    println!(
        "cargo::rustc-check-cfg=cfg(mmn_broken, values(\"skip_set_seq\", \"skip_grace_period\", \
         \"end_before_start\", \"skip_pairing\"))"
    );
}
