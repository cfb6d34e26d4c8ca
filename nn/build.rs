//! Build script: does nothing unless the `embed-ptx` feature is on. Then it builds the kernels
//! crate to PTX with scripts/build-ptx.sh into OUT_DIR (never a stray file elsewhere) and the
//! CUDA backend `include_str!`s it. A missing PTX toolchain fails the build with the script's
//! own message (which apt packages to install).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_EMBED_PTX").is_none() {
        return;
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.join("..");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("tweedie_kernels.ptx");
    for dir in [
        "kernels/src",
        "core/src",
        "scripts/ptx",
        "scripts/build-ptx.sh",
        "kernels/Cargo.toml",
        "core/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=TWEEDIE_PTX_SM");
    let sm = std::env::var("TWEEDIE_PTX_SM").unwrap_or_else(|_| "sm_80".into());
    let status = Command::new("bash")
        .arg(root.join("scripts/build-ptx.sh"))
        .args(["--sm", &sm])
        .arg(&out)
        // The script unsets the outer build's settings itself (gpu.md §7); the nested cargo
        // uses its own target folder (target/ptx-build), so it never waits on this build's lock.
        .status()
        .expect("cannot run bash for scripts/build-ptx.sh");
    if !status.success() {
        panic!(
            "feature embed-ptx: scripts/build-ptx.sh failed ({status}); build without embed-ptx and pass --ptx PATH instead"
        );
    }
}
