//! Declares the crate's own test-only cfg: `lockdep_broken`, the deliberately broken variants
//! of the chain-cache protocol that the loom models must catch (`tests/loom_chain_cache.rs`).
fn main() {
    println!(
        "cargo::rustc-check-cfg=cfg(lockdep_broken, values(\"no_recheck\", \"publish_early\"))"
    );
}
