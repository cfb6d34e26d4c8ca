//! A folder of PNG images as a dataset: every `*.png` (case-insensitive) directly in the
//! folder, in byte order of the file names (so the example indices do not depend on the
//! file system), all 8-bit grayscale or all 8-bit RGB, all the same size.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{ColorType, DynamicImage};

use super::Dataset;

/// Reads every PNG in `dir` into a [`Dataset`] without labels (layout `[N, C, H, W]`).
pub fn read_png_folder(dir: &Path) -> Result<Dataset> {
    let files = png_files(dir)?;
    let Some(first) = files.first() else {
        bail!("{}: no .png files", dir.display());
    };
    let (channels, height, width) = shape_of(&decode(first)?, first)?;
    let per_image = channels * height * width;
    let mut pixels = Vec::with_capacity(per_image.saturating_mul(files.len()));
    for path in &files {
        let img = decode(path)?;
        let shape = shape_of(&img, path)?;
        if shape != (channels, height, width) {
            bail!(
                "{}: {} channel(s) {}x{} (WxH), but {} has {} channel(s) {}x{}; \
                 all images of a folder must match",
                path.display(),
                shape.0,
                shape.2,
                shape.1,
                first.display(),
                channels,
                width,
                height
            );
        }
        push_planar(&img, channels, &mut pixels);
    }
    Dataset::new(pixels, None, channels, height, width)
}

fn png_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list folder {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list folder {}", dir.display()))?
            .path();
        let is_png = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(files)
}

fn decode(path: &Path) -> Result<DynamicImage> {
    crate::input::read_image(path)
}

/// (channels, height, width) of an 8-bit grayscale or RGB image; anything else is an error.
fn shape_of(img: &DynamicImage, path: &Path) -> Result<(usize, usize, usize)> {
    let channels = match img.color() {
        ColorType::L8 => 1,
        ColorType::Rgb8 => 3,
        other => bail!(
            "{}: colour type {other:?} is not supported (8-bit grayscale or RGB only)",
            path.display()
        ),
    };
    Ok((channels, img.height() as usize, img.width() as usize))
}

/// Appends the image in CHW order (interleaved RGB → planar).
fn push_planar(img: &DynamicImage, channels: usize, out: &mut Vec<u8>) {
    let raw = img.as_bytes();
    for c in 0..channels {
        out.extend(raw.iter().skip(c).step_by(channels));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tweedie-png-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rgb_folder_is_planar_and_sorted() {
        let dir = tmp_dir("rgb");
        // b.png first on disk, a.png must still be example 0.
        let b = image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 200]));
        b.save(dir.join("b.png")).unwrap();
        let a = image::RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]));
        a.save(dir.join("a.PNG")).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let ds = read_png_folder(&dir).unwrap();
        assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (2, 3, 2, 3));
        assert_eq!(
            ds.image(0),
            &[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3]
        );
        let img1 = ds.image(1);
        assert_eq!(&img1[..6], &[0, 1, 2, 0, 1, 2]); // R = x
        assert_eq!(&img1[6..12], &[0, 0, 0, 1, 1, 1]); // G = y
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mismatched_and_unsupported_images_are_errors() {
        let dir = tmp_dir("bad");
        assert!(read_png_folder(&dir)
            .unwrap_err()
            .to_string()
            .contains("no .png"));
        image::GrayImage::new(4, 4).save(dir.join("a.png")).unwrap();
        image::GrayImage::new(4, 5).save(dir.join("b.png")).unwrap();
        assert!(read_png_folder(&dir)
            .unwrap_err()
            .to_string()
            .contains("must match"));
        std::fs::remove_file(dir.join("b.png")).unwrap();
        image::RgbaImage::new(4, 4).save(dir.join("c.png")).unwrap();
        assert!(read_png_folder(&dir)
            .unwrap_err()
            .to_string()
            .contains("not supported"));
        std::fs::remove_file(dir.join("c.png")).unwrap();
        let ds = read_png_folder(&dir).unwrap();
        assert_eq!((ds.len(), ds.channels), (1, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pixel_hash_notices_a_changed_image_but_not_a_rewrite() {
        let dir = tmp_dir("hash");
        let img = image::GrayImage::from_fn(4, 4, |x, y| image::Luma([(x * 16 + y) as u8]));
        img.save(dir.join("a.png")).unwrap();
        image::GrayImage::new(4, 4).save(dir.join("b.png")).unwrap();
        let before = read_png_folder(&dir).unwrap().pixels_sha256();
        assert_eq!(before.len(), 64);
        // Same pixels written again (new file, new mtime): same hash.
        img.save(dir.join("a.png")).unwrap();
        assert_eq!(read_png_folder(&dir).unwrap().pixels_sha256(), before);
        let mut changed = img.clone();
        changed.put_pixel(3, 3, image::Luma([200]));
        changed.save(dir.join("a.png")).unwrap();
        assert_ne!(read_png_folder(&dir).unwrap().pixels_sha256(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
