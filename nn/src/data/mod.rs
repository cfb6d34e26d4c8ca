//! Training data: u8 images in memory, converted batch by batch to the model's range.
//!
//! - [`idx`]: the MNIST IDX reader; [`png_folder`]: a folder of PNGs.
//! - [`order`]: the seeded, resumable epoch permutation.
//! - [`Dataset`]: `N` images of `C × H × W` bytes (NCHW) with optional labels.
//! - [`Preprocess`]: u8 → f32 in the model's data range and border padding (formats §1).

pub mod idx;
pub mod order;
pub mod png_folder;

use std::path::Path;

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

pub use crate::weights::meta::DataRange;
pub use order::DataOrder;
pub use png_folder::read_png_folder;

/// Which MNIST split to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MnistSplit {
    /// 60000 training images (`train-*`).
    Train,
    /// 10000 test images (`t10k-*`).
    Test,
}

impl MnistSplit {
    /// File names (images, labels) and their pinned sha256 (data.md §1.1).
    pub fn files(self) -> [(&'static str, &'static str); 2] {
        match self {
            MnistSplit::Train => [
                (
                    "train-images-idx3-ubyte",
                    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                ),
                (
                    "train-labels-idx1-ubyte",
                    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                ),
            ],
            MnistSplit::Test => [
                (
                    "t10k-images-idx3-ubyte",
                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                ),
                (
                    "t10k-labels-idx1-ubyte",
                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                ),
            ],
        }
    }
}

/// Images as bytes, `[N, C, H, W]`, with optional labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Channels per image (1 or 3).
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    pixels: Vec<u8>,
    labels: Option<Vec<u8>>,
}

impl Dataset {
    /// Wraps `pixels` (`N·C·H·W` bytes, NCHW) and optional labels (`N` of them).
    pub fn new(
        pixels: Vec<u8>,
        labels: Option<Vec<u8>>,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<Dataset> {
        let per = channels
            .checked_mul(height)
            .and_then(|v| v.checked_mul(width))
            .filter(|&v| v > 0);
        let Some(per) = per else {
            bail!("dataset: empty image shape {channels}x{height}x{width}");
        };
        if pixels.is_empty() || !pixels.len().is_multiple_of(per) {
            bail!(
                "dataset: {} bytes is not a positive multiple of the image size {per}",
                pixels.len()
            );
        }
        if let Some(l) = &labels {
            if l.len() != pixels.len() / per {
                bail!(
                    "dataset: {} labels for {} images",
                    l.len(),
                    pixels.len() / per
                );
            }
        }
        Ok(Dataset {
            channels,
            height,
            width,
            pixels,
            labels,
        })
    }

    /// Reads one MNIST split from `dir` (the files of data.md §1.1, as installed by
    /// `scripts/fetch-mnist.sh`). With `verify`, each file's sha256 must match the pinned one.
    pub fn mnist(dir: &Path, split: MnistSplit, verify: bool) -> Result<Dataset> {
        let [(images_name, images_sha), (labels_name, labels_sha)] = split.files();
        let (images_path, labels_path) = (dir.join(images_name), dir.join(labels_name));
        if verify {
            check_sha256(&images_path, images_sha)?;
            check_sha256(&labels_path, labels_sha)?;
        }
        let images = idx::read_images(&images_path)?;
        let labels = idx::read_labels(&labels_path)?;
        if labels.len() != images.count {
            bail!(
                "{}: {} labels, but {} has {} images",
                labels_path.display(),
                labels.len(),
                images_path.display(),
                images.count
            );
        }
        Dataset::new(images.pixels, Some(labels), 1, images.rows, images.cols)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_len()
    }

    /// Always false (a dataset holds at least one image).
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Bytes per image (`C·H·W`).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `i` as `C·H·W` bytes. Panics when `i >= len()` (an index bug, not bad input).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The labels, if the dataset has them.
    pub fn labels(&self) -> Option<&[u8]> {
        self.labels.as_deref()
    }

    /// Lowercase hex SHA-256 of the images as training sees them: the ASCII line
    /// `N C H W\n`, then every image's bytes (planar, NCHW) in example order. For a PNG
    /// folder this notices a changed, added, removed or reordered image (not a renamed file
    /// that keeps its place).
    pub fn pixels_sha256(&self) -> String {
        let mut h = Sha256::new();
        let shape = format!(
            "{} {} {} {}\n",
            self.len(),
            self.channels,
            self.height,
            self.width
        );
        h.update(shape.as_bytes());
        h.update(&self.pixels);
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Fills `out` (`indices.len()` examples of [`Preprocess::example_len`]) with the given
    /// images converted by `pre`, NCHW.
    pub fn fill_batch(&self, indices: &[usize], pre: Preprocess, out: &mut [f32]) -> Result<()> {
        let per = pre.example_len(self);
        if out.len() != indices.len() * per {
            bail!(
                "batch buffer has {} elements, {} examples need {}",
                out.len(),
                indices.len(),
                indices.len() * per
            );
        }
        for (&i, dst) in indices.iter().zip(out.chunks_exact_mut(per)) {
            if i >= self.len() {
                bail!("example index {i} out of range (dataset of {})", self.len());
            }
            pre.convert(self.image(i), self.channels, self.height, self.width, dst);
        }
        Ok(())
    }
}

/// u8 → model range (formats §1): `f32(v) / 255 · 2 − 1` for [-1, 1], `f32(v) / 255` for
/// [0, 1], each operation in f32 (bit-identical to the DPS loader).
pub fn u8_to_model(v: u8, range: DataRange) -> f32 {
    let unit = v as f32 / 255.0;
    match range {
        DataRange::MinusOneOne => unit * 2.0 - 1.0,
        DataRange::ZeroOne => unit,
    }
}

/// How images become network inputs: data range and a border of `pad` pixels on each side
/// filled with the background value (pixel 0, the range minimum; MNIST 28 → 32 uses pad 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preprocess {
    /// Target data range.
    pub range: DataRange,
    /// Border width in pixels on each side.
    pub pad: usize,
}

impl Preprocess {
    /// MNIST for a 32×32 network (formats §1).
    pub fn mnist32(range: DataRange) -> Preprocess {
        Preprocess { range, pad: 2 }
    }

    /// The padded size (height, width) of a dataset's images.
    pub fn padded(&self, ds: &Dataset) -> (usize, usize) {
        (ds.height + 2 * self.pad, ds.width + 2 * self.pad)
    }

    /// Elements per converted example (`C · H' · W'`).
    pub fn example_len(&self, ds: &Dataset) -> usize {
        let (h, w) = self.padded(ds);
        ds.channels * h * w
    }

    /// Converts one `C×H×W` byte image into `out` (`C×(H+2p)×(W+2p)`).
    fn convert(&self, img: &[u8], c: usize, h: usize, w: usize, out: &mut [f32]) {
        let (p, wp) = (self.pad, w + 2 * self.pad);
        out.fill(u8_to_model(0, self.range));
        for (plane, src) in out
            .chunks_exact_mut((h + 2 * p) * wp)
            .zip(img.chunks_exact(h * w))
        {
            for (row, src_row) in plane.chunks_exact_mut(wp).skip(p).zip(src.chunks_exact(w)) {
                for (o, &v) in row[p..p + w].iter_mut().zip(src_row) {
                    *o = u8_to_model(v, self.range);
                }
            }
        }
        debug_assert_eq!(out.len(), c * (h + 2 * p) * wp);
    }
}

fn check_sha256(path: &Path, expected: &str) -> Result<()> {
    let got = crate::sha256::of_file(path)?;
    if got != expected {
        bail!(
            "{}: sha256 {got}, expected {expected} (re-run scripts/fetch-mnist.sh)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_follows_formats_section_1() {
        assert_eq!(u8_to_model(0, DataRange::MinusOneOne), -1.0);
        assert_eq!(u8_to_model(255, DataRange::MinusOneOne), 1.0);
        assert_eq!(u8_to_model(0, DataRange::ZeroOne), 0.0);
        assert_eq!(u8_to_model(255, DataRange::ZeroOne), 1.0);
        for v in 0..=255u8 {
            let unit = v as f32 / 255.0f32;
            assert_eq!(u8_to_model(v, DataRange::ZeroOne).to_bits(), unit.to_bits());
            let pm = unit * 2.0f32 - 1.0f32;
            assert_eq!(
                u8_to_model(v, DataRange::MinusOneOne).to_bits(),
                pm.to_bits()
            );
        }
    }

    #[test]
    fn padding_uses_the_background_value() {
        // Two 1-channel 2×3 images, pad 1 → 4×5.
        let ds = Dataset::new((1..=12).collect(), Some(vec![3, 4]), 1, 2, 3).unwrap();
        let pre = Preprocess {
            range: DataRange::MinusOneOne,
            pad: 1,
        };
        assert_eq!(pre.example_len(&ds), 20);
        let mut out = vec![0.0; 40];
        ds.fill_batch(&[1, 0], pre, &mut out).unwrap();
        let m = |v| u8_to_model(v, DataRange::MinusOneOne);
        let bg = -1.0;
        #[rustfmt::skip]
        let want1 = [
            bg, bg, bg, bg, bg,
            bg, m(7), m(8), m(9), bg,
            bg, m(10), m(11), m(12), bg,
            bg, bg, bg, bg, bg,
        ];
        assert_eq!(&out[..20], &want1);
        assert_eq!(out[26], m(1));
        assert!(ds.fill_batch(&[2], pre, &mut out[..20]).is_err());
        assert!(ds.fill_batch(&[0], pre, &mut out).is_err());
        assert_eq!(ds.labels(), Some(&[3u8, 4][..]));
    }

    #[test]
    fn multi_channel_padding_per_plane() {
        let ds = Dataset::new(vec![10, 20, 30], None, 3, 1, 1).unwrap();
        let pre = Preprocess {
            range: DataRange::ZeroOne,
            pad: 1,
        };
        let mut out = vec![0.0; 27];
        ds.fill_batch(&[0], pre, &mut out).unwrap();
        for (c, v) in [10u8, 20, 30].into_iter().enumerate() {
            let plane = &out[9 * c..9 * (c + 1)];
            assert_eq!(plane[4], u8_to_model(v, DataRange::ZeroOne));
            assert_eq!(plane.iter().filter(|&&x| x == 0.0).count(), 8);
        }
    }

    #[test]
    fn bad_datasets_are_refused() {
        assert!(Dataset::new(vec![], None, 1, 2, 2).is_err());
        assert!(Dataset::new(vec![0; 5], None, 1, 2, 2).is_err());
        assert!(Dataset::new(vec![0; 4], None, 0, 2, 2).is_err());
        assert!(Dataset::new(vec![0; 8], Some(vec![1]), 1, 2, 2).is_err());
    }
}
