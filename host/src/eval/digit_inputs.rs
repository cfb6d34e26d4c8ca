//! The digits `host evaluate fid` judges, as 8-bit 32×32 images (the classifier's input,
//! [`tweedie_nn::model::classifier::PIXELS`] bytes each):
//!
//! - a folder: its `samples.safetensors` if it has one, else its `sample_*.png` files;
//! - a `.safetensors` file: tensor `samples` [N, 1, 32, 32] or [N, 1, 28, 28] in the range of
//!   its `tweedie.data_range` metadata (VP [-1, 1], VE [0, 1]), quantised exactly as the PNG
//!   writer does ([`to_u8`]: to [0, 1], clamp, round(255·x)), so a run's PNGs and its
//!   safetensors give the same digits;
//! - a `.png` file, or a pattern with `*` / `?` in its last component (e.g.
//!   `run1/sample_*.png`): one grayscale digit per file, 28×28 (padded by 2 with 0, as MNIST
//!   is) or 32×32.
//!
//! Files are taken in name order, numbers compared as numbers (sample_2 before sample_10).
//! Anything else — a grid of digits, another size, colour, 16-bit, NaN — is refused.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::DynamicImage;

use crate::image_io::to_u8;
use tweedie_nn::model::classifier::{pad_digit, PIXELS, SIZE};
use tweedie_nn::tensors::SafetensorsFile;
use tweedie_nn::weights::meta::DataRange;

/// Digits ready for the classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    /// `n × PIXELS` bytes.
    pub images: Vec<u8>,
    /// What was read (a file, or a folder and its pattern).
    pub source: String,
}

impl Digits {
    /// Number of digits.
    pub fn len(&self) -> usize {
        self.images.len() / PIXELS
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Reads the digits named by `spec` (a folder, a file or a pattern; see the module docs).
pub fn read_digits(spec: &str) -> Result<Digits> {
    let path = Path::new(spec);
    if path.is_dir() {
        let st = path.join("samples.safetensors");
        if st.is_file() {
            return read_safetensors(&st);
        }
        let files = matching(path, "sample_*.png")?;
        if files.is_empty() {
            bail!("{spec}: no samples.safetensors and no sample_*.png in this folder");
        }
        return read_pngs(&files, format!("{}/sample_*.png", path.display()));
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.contains('*') || name.contains('?') {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!("{spec}: folder {} does not exist", dir.display());
        }
        let files = matching(dir, name)?;
        if files.is_empty() {
            bail!("{spec}: no file matches");
        }
        return read_pngs(&files, spec.to_string());
    }
    if !path.is_file() {
        bail!("{spec}: no such file or folder");
    }
    if name.ends_with(".safetensors") {
        read_safetensors(path)
    } else {
        read_pngs(&[path.to_path_buf()], spec.to_string())
    }
}

/// `*` matches any run of characters, `?` one character (no other pattern syntax).
fn wildcard(pattern: &[char], name: &[char]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..])),
        Some(('?', rest)) => !name.is_empty() && wildcard(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && wildcard(rest, &name[1..]),
    }
}

/// Orders names with digit runs compared as numbers.
fn natural_key(name: &str) -> Vec<(u8, u128, String)> {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 {
            let (d, r) = rest.split_at(digits);
            key.push((0, d.parse().unwrap_or(u128::MAX), d.to_string()));
            rest = r;
        } else {
            let text = rest
                .chars()
                .take_while(|c| !c.is_ascii_digit())
                .collect::<String>();
            rest = &rest[text.len()..];
            key.push((1, 0, text));
        }
    }
    key
}

/// The plain files of `dir` whose names match `pattern`, in natural order.
fn matching(dir: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let pat: Vec<char> = pattern.chars().collect();
    let mut names = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let chars: Vec<char> = name.chars().collect();
        if wildcard(&pat, &chars) && e.path().is_file() {
            names.push(name);
        }
    }
    names.sort_by_key(|n| natural_key(n));
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

fn read_pngs(files: &[PathBuf], source: String) -> Result<Digits> {
    let mut images = vec![0u8; files.len() * PIXELS];
    for (f, out) in files.iter().zip(images.chunks_exact_mut(PIXELS)) {
        read_png(f, out)?;
    }
    Ok(Digits { images, source })
}

/// One digit image into `out` (32×32 bytes).
fn read_png(path: &Path, out: &mut [u8]) -> Result<()> {
    let label = path.display();
    let img = tweedie_nn::input::read_image(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let gray = match &img {
        DynamicImage::ImageLuma8(g) => g.as_raw().clone(),
        DynamicImage::ImageRgb8(rgb) => {
            let px = rgb.as_raw();
            if px.chunks_exact(3).any(|p| p[0] != p[1] || p[1] != p[2]) {
                bail!("{label}: a colour image; a digit is one grayscale channel");
            }
            px.chunks_exact(3).map(|p| p[0]).collect()
        }
        _ => bail!(
            "{label}: pixel format {:?}; a digit is an 8-bit grayscale PNG",
            img.color()
        ),
    };
    match (w, h) {
        (28, 28) => pad_digit(&gray, out),
        (SIZE, SIZE) => {
            out.copy_from_slice(&gray);
            Ok(())
        }
        _ if w > SIZE && h > SIZE => bail!(
            "{label}: a {w}x{h} image holds several digits (a grid?); give one digit per \
             file (sample_*.png, 28x28 or 32x32) or the run's samples.safetensors"
        ),
        _ => bail!("{label}: {w}x{h}; a digit is 28x28 or 32x32"),
    }
}

fn read_safetensors(path: &Path) -> Result<Digits> {
    let label = path.display();
    let file = SafetensorsFile::open(path)?;
    let range = match file.metadata()?.get("tweedie.data_range") {
        Some(r) => r
            .parse::<DataRange>()
            .with_context(|| format!("{label}: tweedie.data_range"))?,
        None => bail!("{label}: no tweedie.data_range metadata (VP -1,1 or VE 0,1)"),
    };
    let t = file.tensor_f32("samples")?;
    let [n, 1, h, w] = t.shape[..] else {
        bail!(
            "{label}: samples has shape {:?}, expected [N, 1, 32, 32] or [N, 1, 28, 28]",
            t.shape
        );
    };
    if n == 0 || h != w || (h != SIZE && h != 28) {
        bail!(
            "{label}: samples has shape {:?}, expected [N, 1, 32, 32] or [N, 1, 28, 28]",
            t.shape
        );
    }
    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
        bail!("{label}: sample {} has a non-finite value", i / (h * w));
    }
    let mut images = vec![0u8; n * PIXELS];
    let mut digit = vec![0u8; h * w];
    for (src, out) in t
        .data
        .chunks_exact(h * w)
        .zip(images.chunks_exact_mut(PIXELS))
    {
        for (d, &x) in digit.iter_mut().zip(src) {
            *d = to_u8(x, range);
        }
        if h == SIZE {
            out.copy_from_slice(&digit);
        } else {
            pad_digit(&digit, out)?;
        }
    }
    Ok(Digits {
        images,
        source: label.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(p: &str, n: &str) -> bool {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        wildcard(&c(p), &c(n))
    }

    #[test]
    fn wildcards_and_natural_order() {
        assert!(w("sample_*.png", "sample_0001.png"));
        assert!(w("sample_*.png", "sample_.png"));
        assert!(!w("sample_*.png", "grid.png"));
        assert!(w("s?.png", "s1.png") && !w("s?.png", "s12.png"));
        let mut names = vec!["sample_10.png", "sample_2.png", "sample_1.png"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["sample_1.png", "sample_2.png", "sample_10.png"]);
    }
}
