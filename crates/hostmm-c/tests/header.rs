//! The checked-in header is what cbindgen generates from the sources now.

use std::path::PathBuf;

#[test]
fn the_checked_in_header_is_up_to_date() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("utf-8 header");
    let path = dir.join("include/mmnotify.h");
    if std::env::var("MMN_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &fresh).expect("write the header");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "include/mmnotify.h is stale: regenerate it with \
         `MMN_BLESS=1 cargo test -p hostmm-c --test header` and commit it"
    );
}

/// Compiles a translation unit that includes the header and uses every type, as `lang`.
fn compile(compiler: &str, std: &str, ext: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let src = out.join(format!("header_check.{ext}"));
    std::fs::write(
        &src,
        "#include \"mmnotify.h\"\n\
         int header_check(void);\n\
         int header_check(void) {\n\
           mmn_monitor *m = 0; mmn_cache *c = 0; mmn_reg *r = 0; mmn_importer *i = 0;\n\
           mmn_subscription *s = 0; mmn_watch_handle *w = 0;\n\
           mmn_cache_config cfg; mmn_cache_counters cs; mmn_monitor_counters ms;\n\
           mmn_registrar reg = {0, 0, 0, 1};\n\
           mmn_status st = MMN_ERR_NULL;\n\
           (void)c; (void)r; (void)i; (void)s; (void)w; (void)cs; (void)ms; (void)reg;\n\
           (void)mmn_cache_config_default(&cfg);\n\
           return (int)st + mmn_monitor_create(MMN_SOURCE_AUTO, &m) + (mmn_strerror(MMN_OK) != 0);\n\
         }\n",
    )
    .unwrap();
    let status = std::process::Command::new(compiler)
        .args([std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-c", "-o"])
        .arg(out.join(format!("header_check_{ext}.o")))
        .arg("-I")
        .arg(dir.join("include"))
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {compiler}: {e} (a C and a C++ compiler are needed)"));
    assert!(
        status.success(),
        "{compiler} {std} rejects include/mmnotify.h"
    );
}

#[test]
fn the_header_compiles_as_c11_and_cxx17_without_warnings() {
    compile("cc", "-std=c11", "c");
    compile("c++", "-std=c++17", "cpp");
}
