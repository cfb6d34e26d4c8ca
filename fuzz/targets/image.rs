//! The image input path: `input::decode_image` (pixel cap before decoding, decoder limits)
//! and `image_io::read_image*`, which read from a path (the bytes go through a per-process
//! temporary file).
//!
//! Shared by the libFuzzer binary (fuzz_targets/) and the corpus replay in CI
//! (host/tests/fault_fuzz_replay.rs).

use std::path::PathBuf;
use std::sync::OnceLock;

use tweedie_host::image_io::{read_image, read_image_native};
use tweedie_nn::weights::meta::DataRange;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("tweedie-fuzz-image-{}", std::process::id()))
    })
}

/// One input: decoded directly (the pixel cap, decompression bombs), then through the files.
pub fn run(data: &[u8]) {
    let _ = tweedie_nn::input::decode_image(data, "fuzz.png");
    if std::fs::write(path(), data).is_err() {
        return;
    }
    let _ = read_image_native(path(), DataRange::ZeroOne, None);
    let _ = read_image_native(path(), DataRange::MinusOneOne, Some(8));
    let _ = read_image(path(), DataRange::MinusOneOne, 3, 16, true);
    let _ = read_image(path(), DataRange::ZeroOne, 1, 4, false);
}
