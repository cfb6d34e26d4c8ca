//! The real MNIST files (data.md §1.1), when `scripts/fetch-mnist.sh` has installed them:
//! sha256-verified reading, the canonical label counts, and the 28 → 32 conversion.
//! Skipped when absent. Location: `$TWEEDIE_MNIST`, else `<workspace>/data/mnist`.

use std::path::PathBuf;

use tweedie_nn::data::{u8_to_model, DataOrder, DataRange, Dataset, MnistSplit, Preprocess};

fn mnist_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("TWEEDIE_MNIST") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist")),
    };
    if dir.join("train-images-idx3-ubyte").exists() {
        return Some(dir);
    }
    // Skipping is a choice the caller states, never a silent pass.
    assert!(
        std::env::var_os("TWEEDIE_NO_MNIST").is_some_and(|v| v == "1"),
        "no MNIST in {}: run scripts/fetch-mnist.sh (scripts/test.sh does), or set \
         TWEEDIE_NO_MNIST=1 to skip the tests that need it",
        dir.display()
    );
    eprintln!(
        "skipping (TWEEDIE_NO_MNIST=1): no MNIST in {}",
        dir.display()
    );
    None
}

#[test]
fn training_split_has_the_canonical_counts() {
    let Some(dir) = mnist_dir() else { return };
    let ds = Dataset::mnist(&dir, MnistSplit::Train, true).unwrap();
    assert_eq!(
        (ds.len(), ds.channels, ds.height, ds.width),
        (60000, 1, 28, 28)
    );
    let mut counts = [0usize; 10];
    for &l in ds.labels().unwrap() {
        counts[l as usize] += 1;
    }
    assert_eq!(
        counts,
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    let test = Dataset::mnist(&dir, MnistSplit::Test, true).unwrap();
    assert_eq!(test.len(), 10000);
}

#[test]
fn batches_are_padded_to_32_with_the_background() {
    let Some(dir) = mnist_dir() else { return };
    let ds = Dataset::mnist(&dir, MnistSplit::Test, false).unwrap();
    let pre = Preprocess::mnist32(DataRange::MinusOneOne);
    assert_eq!(pre.padded(&ds), (32, 32));
    let mut order = DataOrder::new(ds.len(), 0).unwrap();
    let mut idx = [0usize; 8];
    order.next_batch(&mut idx).unwrap();
    let mut x = vec![0.0f32; 8 * 1024];
    ds.fill_batch(&idx, pre, &mut x).unwrap();
    for (&i, img) in idx.iter().zip(x.chunks_exact(1024)) {
        let src = ds.image(i);
        for r in 0..32 {
            for c in 0..32 {
                let inside = (2..30).contains(&r) && (2..30).contains(&c);
                let want = if inside {
                    u8_to_model(src[(r - 2) * 28 + (c - 2)], DataRange::MinusOneOne)
                } else {
                    -1.0
                };
                assert_eq!(img[r * 32 + c], want);
            }
        }
        // A digit: some ink, mostly background.
        let ink = img.iter().filter(|&&v| v > 0.0).count();
        assert!((20..500).contains(&ink), "example {i}: {ink} ink pixels");
    }
}
