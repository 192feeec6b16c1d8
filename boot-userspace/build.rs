//! Embeds the XDP object when `cargo xtask build` provides one.
//!
//! The object is built separately with Debian's rustc (see `xtask`), so that a plain
//! `cargo build -p bootfabric` works on machines without the BPF toolchain: without
//! `BOOTFABRIC_EBPF_OBJECT` the daemon is built for userspace-only mode.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=BOOTFABRIC_EBPF_OBJECT");
    println!("cargo::rustc-check-cfg=cfg(bootfabric_ebpf)");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dst = out.join("bootfabric-xdp.o");
    match env::var_os("BOOTFABRIC_EBPF_OBJECT") {
        Some(src) if !src.is_empty() => {
            let src = PathBuf::from(src);
            println!("cargo::rerun-if-changed={}", src.display());
            if let Err(e) = fs::copy(&src, &dst) {
                panic!(
                    "BOOTFABRIC_EBPF_OBJECT={} cannot be read ({e}); run `cargo xtask build`",
                    src.display()
                );
            }
            println!("cargo::rustc-cfg=bootfabric_ebpf");
        }
        _ => {
            // An empty placeholder keeps include_bytes! valid; the cfg stays off.
            fs::write(&dst, b"").expect("OUT_DIR is writable");
        }
    }
}
