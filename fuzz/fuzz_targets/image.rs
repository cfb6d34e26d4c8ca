//! The image input path (`image_io::read_image*`, which reads from a path): the bytes go
//! through a per-process temporary file.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tweedie_host::image_io::{read_image, read_image_native};
use tweedie_nn::weights::meta::DataRange;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("tweedie-fuzz-image-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    if std::fs::write(path(), data).is_err() {
        return;
    }
    let _ = read_image_native(path(), DataRange::ZeroOne, None);
    let _ = read_image_native(path(), DataRange::MinusOneOne, Some(8));
    let _ = read_image(path(), DataRange::MinusOneOne, 3, 16, true);
    let _ = read_image(path(), DataRange::ZeroOne, 1, 4, false);
});
