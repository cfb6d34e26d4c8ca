//! Images in and out (formats.md §1): PNG/JPEG (grayscale or RGB) → f32 NCHW in the model's
//! data range, and back to PNG bytes; center crop + area resize; grids.
//!
//! Mapping in: a u8 value v becomes `f32(v) / 255.0 * 2.0 − 1.0` on [-1, 1] (each operation in
//! f32, bit for bit the DPS loader) or `f32(v) / 255.0` on [0, 1]. Mapping out: the data range
//! to [0, 1], clamp, `round(255·x)`. Only the PNG writer clamps; the float state never is.

use std::io::Cursor;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{DynamicImage, GenericImageView, ImageEncoder};
use tweedie_nn::input;

use tweedie_nn::weights::meta::DataRange;

/// A C×H×W image (one chain), row-major, values in a data range.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Channels (1 or 3).
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// C·H·W values.
    pub data: Vec<f32>,
}

/// An image file read from disk: the decoded image and the sha256 of its bytes.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The image in the requested data range and shape.
    pub image: Image,
    /// sha256 (hex) of the file's bytes.
    pub sha256: String,
}

/// u8 → data range, formats.md §1 (each operation in f32).
#[inline]
pub fn from_u8(v: u8, range: DataRange) -> f32 {
    match range {
        DataRange::MinusOneOne => f32::from(v) / 255.0 * 2.0 - 1.0,
        DataRange::ZeroOne => f32::from(v) / 255.0,
    }
}

/// Data range → [0, 1] (not clamped).
#[inline]
pub fn to_unit(x: f32, range: DataRange) -> f32 {
    match range {
        DataRange::MinusOneOne => (x + 1.0) * 0.5,
        DataRange::ZeroOne => x,
    }
}

/// [0, 1] → data range.
#[inline]
pub fn from_unit(u: f32, range: DataRange) -> f32 {
    match range {
        DataRange::MinusOneOne => u * 2.0 - 1.0,
        DataRange::ZeroOne => u,
    }
}

/// Data range → u8: map to [0, 1], clamp, round(255·x). NaN becomes 0.
#[inline]
pub fn to_u8(x: f32, range: DataRange) -> u8 {
    let u = to_unit(x, range);
    let u = if u.is_nan() { 0.0 } else { u.clamp(0.0, 1.0) };
    (255.0 * u).round() as u8
}

/// Width of a data range (the PSNR peak value: 2 or 1).
pub fn range_width(range: DataRange) -> f64 {
    match range {
        DataRange::MinusOneOne => 2.0,
        DataRange::ZeroOne => 1.0,
    }
}

/// Errors when `bytes` is a JPEG cut short: no end-of-image marker (FF D9) after its last
/// start-of-scan (FF DA). The decoder would fill the missing rows with grey and succeed.
/// (Entropy-coded data byte-stuffs FF as FF 00, so FF D9 there is the real marker.)
pub fn check_jpeg_complete(bytes: &[u8]) -> Result<()> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(());
    }
    let marker = |m: u8| bytes.windows(2).rposition(|w| w == [0xFF, m]);
    match (marker(0xDA), marker(0xD9)) {
        (Some(sos), Some(eoi)) if eoi > sos => Ok(()),
        _ => bail!("the JPEG is truncated (no end-of-image marker after its image data)"),
    }
}

/// Reads a PNG or JPEG and returns it as `channels`×`size`×`size` in `range`. A size or
/// channel count that differs is an error unless `resize` (center crop to a square, area
/// resize, gray ↔ RGB conversion).
pub fn read_image(
    path: &Path,
    range: DataRange,
    channels: usize,
    size: usize,
    resize: bool,
) -> Result<LoadedImage> {
    let label = path.display();
    let bytes = input::read_capped(path, "image file", input::MAX_IMAGE_BYTES)?;
    check_jpeg_complete(&bytes).with_context(|| format!("{label}"))?;
    let decoded = input::decode_image(&bytes, &label.to_string())?;
    let image = convert(&decoded, range, channels, size, resize)
        .with_context(|| format!("image {label}"))?;
    Ok(LoadedImage {
        image,
        sha256: tweedie_nn::sha256::of_bytes(&bytes),
    })
}

/// Reads a PNG or JPEG in its own shape (channels 1 for gray, 3 otherwise), or center-cropped
/// and area-resized to `size`×`size` when given.
pub fn read_image_native(
    path: &Path,
    range: DataRange,
    size: Option<usize>,
) -> Result<LoadedImage> {
    let label = path.display();
    let bytes = input::read_capped(path, "image file", input::MAX_IMAGE_BYTES)?;
    check_jpeg_complete(&bytes).with_context(|| format!("{label}"))?;
    let decoded = input::decode_image(&bytes, &label.to_string())?;
    let c = file_channels(&decoded);
    let image = match size {
        Some(s) => convert(&decoded, range, c, s, true),
        None => convert_rect(&decoded, range, c),
    }
    .with_context(|| format!("image {label}"))?;
    Ok(LoadedImage {
        image,
        sha256: tweedie_nn::sha256::of_bytes(&bytes),
    })
}

fn convert_rect(img: &DynamicImage, range: DataRange, c: usize) -> Result<Image> {
    let (w, h) = img.dimensions();
    let planes = planar_u8(img, c)?;
    Ok(Image {
        c,
        h: h as usize,
        w: w as usize,
        data: planes.iter().map(|&v| from_u8(v, range)).collect(),
    })
}

fn planar_u8(img: &DynamicImage, channels: usize) -> Result<Vec<u8>> {
    Ok(match channels {
        1 => img.to_luma8().into_raw(),
        3 => {
            let rgb = img.to_rgb8().into_raw();
            let n = rgb.len() / 3;
            let mut out = vec![0u8; rgb.len()];
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                out[i] = px[0];
                out[n + i] = px[1];
                out[2 * n + i] = px[2];
            }
            out
        }
        other => bail!("unsupported channel count {other} (1 or 3)"),
    })
}

/// 1 channel for gray (with or without alpha), 3 otherwise (alpha dropped).
fn file_channels(img: &DynamicImage) -> usize {
    if img.color().has_color() {
        3
    } else {
        1
    }
}

fn convert(
    img: &DynamicImage,
    range: DataRange,
    channels: usize,
    size: usize,
    resize: bool,
) -> Result<Image> {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let c_file = file_channels(img);
    if !resize && (c_file != channels || w != size || h != size) {
        bail!(
            "is {c_file}x{h}x{w} (channels x height x width) but the model takes {channels}x{size}x{size}; pass --resize to center-crop, resize and convert"
        );
    }
    let planes = planar_u8(img, channels)?;
    if w == size && h == size {
        let data = planes.iter().map(|&v| from_u8(v, range)).collect();
        return Ok(Image {
            c: channels,
            h,
            w,
            data,
        });
    }
    let unit: Vec<f64> = planes.iter().map(|&v| f64::from(v) / 255.0).collect();
    let resized = crop_resize(&unit, channels, h, w, size);
    let data = resized
        .iter()
        .map(|&u| from_unit(u as f32, range))
        .collect();
    Ok(Image {
        c: channels,
        h: size,
        w: size,
        data,
    })
}

/// Center crop to a square, then area (box) resize to `size`×`size`, per channel, in f64.
pub fn crop_resize(planes: &[f64], c: usize, h: usize, w: usize, size: usize) -> Vec<f64> {
    let side = h.min(w);
    let (top, left) = ((h - side) / 2, (w - side) / 2);
    let weights = area_weights(side, size);
    let mut out = vec![0.0; c * size * size];
    for ch in 0..c {
        let plane = &planes[ch * h * w..(ch + 1) * h * w];
        // Along W: side rows × size columns.
        let mut rows = vec![0.0; side * size];
        for r in 0..side {
            let src = &plane[(top + r) * w + left..(top + r) * w + left + side];
            for (o, taps) in weights.iter().enumerate() {
                rows[r * size + o] = taps.iter().map(|&(i, wt)| wt * src[i]).sum();
            }
        }
        let dst = &mut out[ch * size * size..(ch + 1) * size * size];
        for (o, taps) in weights.iter().enumerate() {
            for col in 0..size {
                dst[o * size + col] = taps.iter().map(|&(i, wt)| wt * rows[i * size + col]).sum();
            }
        }
    }
    out
}

/// For each of `n_out` output cells, the input pixels it covers and their coverage weights
/// (the cell [o·s, (o+1)·s), s = n_in/n_out, weights sum to 1).
fn area_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
    let s = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let (a, b) = (o as f64 * s, (o + 1) as f64 * s);
            let first = a.floor() as usize;
            let last = (b.ceil() as usize).min(n_in);
            (first..last)
                .filter_map(|i| {
                    let cover = (b.min(i as f64 + 1.0) - a.max(i as f64)) / s;
                    (cover > 0.0).then_some((i, cover))
                })
                .collect()
        })
        .collect()
}

/// u8 pixels (C×H×W planar) → PNG bytes (gray or RGB).
pub fn png_from_planes(planes: &[u8], c: usize, h: usize, w: usize) -> Result<Vec<u8>> {
    let (color, raw) = match c {
        1 => (image::ExtendedColorType::L8, planes.to_vec()),
        3 => {
            let n = h * w;
            let mut rgb = vec![0u8; 3 * n];
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&[planes[i], planes[n + i], planes[2 * n + i]]);
            }
            (image::ExtendedColorType::Rgb8, rgb)
        }
        other => bail!("cannot write a PNG with {other} channels (1 or 3)"),
    };
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(Cursor::new(&mut bytes))
        .write_image(&raw, w as u32, h as u32, color)
        .context("PNG encoding failed")?;
    Ok(bytes)
}

/// The u8 planes of an image in a data range.
pub fn to_planes(data: &[f32], range: DataRange) -> Vec<u8> {
    data.iter().map(|&x| to_u8(x, range)).collect()
}

/// A float image → PNG bytes.
pub fn png(img: &Image, range: DataRange) -> Result<Vec<u8>> {
    png_from_planes(&to_planes(&img.data, range), img.c, img.h, img.w)
}

/// Tiles `n` u8 images (each C×H×W planar, back to back) into a near-square grid with a
/// 2-pixel white border, as C planes.
pub fn grid_planes(
    images: &[u8],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> (Vec<u8>, usize, usize) {
    let cols = (1..=n.max(1)).find(|k| k * k >= n).unwrap_or(1);
    grid_planes_in_columns(images, n, cols, c, h, w)
}

/// [`grid_planes`] with `cols` images a row (row-major order).
pub fn grid_planes_in_columns(
    images: &[u8],
    n: usize,
    cols: usize,
    c: usize,
    h: usize,
    w: usize,
) -> (Vec<u8>, usize, usize) {
    const PAD: usize = 2;
    let cols = cols.max(1);
    let rows = n.div_ceil(cols).max(1);
    let (gh, gw) = (rows * (h + PAD) + PAD, cols * (w + PAD) + PAD);
    let mut out = vec![255u8; c * gh * gw];
    for i in 0..n {
        let (r0, c0) = (PAD + (i / cols) * (h + PAD), PAD + (i % cols) * (w + PAD));
        let img = &images[i * c * h * w..(i + 1) * c * h * w];
        for ch in 0..c {
            for y in 0..h {
                let src = &img[ch * h * w + y * w..ch * h * w + (y + 1) * w];
                let o = ch * gh * gw + (r0 + y) * gw + c0;
                out[o..o + w].copy_from_slice(src);
            }
        }
    }
    (out, gh, gw)
}

/// PNG of a grid of `n` float images in a data range.
pub fn grid_png(
    data: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    range: DataRange,
) -> Result<Vec<u8>> {
    let (planes, gh, gw) = grid_planes(&to_planes(data, range), n, c, h, w);
    png_from_planes(&planes, c, gh, gw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_jpegs_are_refused() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, 77])
        }));
        let mut jpeg = std::io::Cursor::new(Vec::new());
        img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
        let jpeg = jpeg.into_inner();
        check_jpeg_complete(&jpeg).unwrap();
        let cut = &jpeg[..jpeg.len() * 2 / 3];
        let e = check_jpeg_complete(cut).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        check_jpeg_complete(b"\x89PNG not a jpeg").unwrap();
    }

    #[test]
    fn png_mapping_round_trips_every_u8() {
        for range in [DataRange::MinusOneOne, DataRange::ZeroOne] {
            for v in 0..=255u8 {
                assert_eq!(to_u8(from_u8(v, range), range), v);
            }
        }
        assert_eq!(from_u8(255, DataRange::MinusOneOne), 1.0);
        assert_eq!(from_u8(0, DataRange::MinusOneOne), -1.0);
        assert_eq!(to_u8(7.0, DataRange::ZeroOne), 255);
        assert_eq!(to_u8(-3.0, DataRange::MinusOneOne), 0);
        assert_eq!(to_u8(f32::NAN, DataRange::ZeroOne), 0);
    }

    #[test]
    fn area_resize_averages_blocks_and_crops_the_center() {
        // 2x4 image (h 2, w 4): center crop to 2x2 = columns 1..3, then 2→1 averages all four.
        let planes = [0.0, 1.0, 3.0, 9.0, 0.0, 5.0, 7.0, 9.0];
        let out = crop_resize(&planes, 1, 2, 4, 1);
        assert!((out[0] - (1.0 + 3.0 + 5.0 + 7.0) / 4.0).abs() < 1e-12);
        // 3 → 2: cell 0 covers pixel 0 fully and half of pixel 1.
        let w = area_weights(3, 2);
        assert_eq!(w[0], vec![(0, 2.0 / 3.0), (1, 1.0 / 3.0)]);
        let up = area_weights(2, 4);
        assert_eq!(up[1], vec![(0, 1.0)]);
    }

    #[test]
    fn png_bytes_decode_to_the_same_pixels() {
        let img = Image {
            c: 3,
            h: 2,
            w: 3,
            data: (0..18).map(|i| i as f32 / 17.0).collect(),
        };
        let bytes = png(&img, DataRange::ZeroOne).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (3, 2));
        // Pixel (row 1, col 2) = element 5 of each plane.
        let p = back.get_pixel(2, 1).0;
        assert_eq!(p[0], to_u8(5.0 / 17.0, DataRange::ZeroOne));
        assert_eq!(p[2], to_u8(17.0 / 17.0, DataRange::ZeroOne));
        let (g, gh, gw) = grid_planes(&[1, 2, 3, 4], 4, 1, 1, 1);
        assert_eq!((gh, gw), (8, 8));
        assert_eq!(g[2 * 8 + 2], 1);
        assert_eq!(g[5 * 8 + 5], 4);
    }
}
