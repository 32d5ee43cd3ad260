//! Writes `mmnotify.pc` next to the built library (`target/<profile>/`), so that a C program
//! builds with `cc app.c $(PKG_CONFIG_PATH=target/<profile> pkg-config --cflags --libs mmnotify)`.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out; the library lands in <target>/<profile>.
    let Some(libdir) = out.ancestors().nth(3) else {
        return;
    };
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let pc = format!(
        "libdir={}\nincludedir={}\n\nName: mmnotify\n\
         Description: registration caches that never go stale: hostmm's C interface\n\
         Version: {}\nCflags: -I${{includedir}}\n\
         Libs: -L${{libdir}} -Wl,-rpath,${{libdir}} -lmmnotify\n\
         Libs.private: -lpthread -ldl -lm\n",
        libdir.display(),
        crate_dir.join("include").display(),
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
    );
    let path = libdir.join("mmnotify.pc");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pc.as_str()) {
        // Best effort: a read-only target directory leaves the C user to write it by hand.
        let _ = std::fs::write(&path, pc);
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", path.display());
}
