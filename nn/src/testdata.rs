//! Test helpers: where the golden data lives (brief: `TWEEDIE_SHARED`, else `../shared`).

use std::path::PathBuf;

/// The shared folder holding `golden/` and `docs/`.
pub fn shared() -> PathBuf {
    match std::env::var_os("TWEEDIE_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")),
    }
}

/// One golden data folder, e.g. `golden("adm_small")`.
pub fn golden(name: &str) -> PathBuf {
    shared().join("golden").join(name)
}
