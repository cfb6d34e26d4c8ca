//! Test helpers: where the golden data lives (`golden/` at the repository root, a
//! byte-identical copy of the reference data; scripts/check-reference.sh checks it).

use std::path::PathBuf;

/// The repository root, which holds `golden/` and `docs/`.
pub fn shared() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// One golden data folder, e.g. `golden("adm_small")`.
pub fn golden(name: &str) -> PathBuf {
    shared().join("golden").join(name)
}
