//! Declares the test-only `mmn_broken` cfg: deliberately broken variants of the contract's
//! protocols that the model tests must catch (see tests/loom_protocols.rs).
//!
//! Set it with `RUSTFLAGS='--cfg mmn_broken="…"'`, or with the environment variable
//! `MMN_BROKEN=…`, which rebuilds only this crate (CI uses it, so the variants share the
//! dependencies already built for the model tests).

const VARIANTS: [&str; 8] = [
    "skip_set_seq",
    "skip_grace_period",
    "end_before_start",
    "skip_pairing",
    "no_reader_barrier",
    "read_begin_relaxed",
    "skip_gate",
    "lazy_no_close",
];

fn main() {
    let values: Vec<String> = VARIANTS.iter().map(|v| format!("\"{v}\"")).collect();
    println!(
        "cargo::rustc-check-cfg=cfg(mmn_broken, values({}))",
        values.join(", ")
    );
    println!("cargo::rerun-if-env-changed=MMN_BROKEN");
    match std::env::var("MMN_BROKEN") {
        Ok(v) if v.is_empty() => {}
        Ok(v) if VARIANTS.contains(&v.as_str()) => {
            println!("cargo::rustc-cfg=mmn_broken=\"{v}\"");
        }
        Ok(v) => panic!("MMN_BROKEN={v}: not one of {VARIANTS:?}"),
        Err(_) => {}
    }
}
