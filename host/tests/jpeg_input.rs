//! JPEG inputs (issue 4): `host denoise` and `host restore` read grayscale and RGB JPEGs.
//!
//! The JPEGs are written here with the `image` crate and decoded here again for the reference
//! pixels (JPEG is lossy: the reference is what a decoder gives, not what was encoded). The
//! closed-form Gaussian prior (`--weights gaussian:MEAN,STD`, kind ve, data range [0, 1])
//! stands in for a network, so the expected output is exact: D = μ + s²/(s² + σ²)(x − μ).

mod common;
use common::{ok, s};

use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, RgbImage};

const SIZE: u32 = 16;
const MEAN: f64 = 0.5;
const STD: f64 = 0.2;

fn scratch(name: &str) -> PathBuf {
    common::scratch_in("jpeg_input", name)
}

/// A smooth test pattern (JPEG keeps it well), gray or RGB, written as JPEG at quality 90.
fn write_jpeg(path: &Path, gray: bool) {
    let value = |x: u32, y: u32, c: u32| (40 + 10 * x + 5 * y + 30 * c).min(255) as u8;
    let img = if gray {
        DynamicImage::ImageLuma8(GrayImage::from_fn(SIZE, SIZE, |x, y| {
            image::Luma([value(x, y, 0)])
        }))
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_fn(SIZE, SIZE, |x, y| {
            image::Rgb([value(x, y, 0), value(y, x, 1), value(x, x, 2)])
        }))
    };
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
    let bytes = bytes.into_inner();
    assert_eq!(&bytes[..2], &[0xFF, 0xD8], "not a JPEG (SOI marker)");
    std::fs::write(path, bytes).unwrap();
}

/// The file's pixels as the decoder gives them, interleaved (gray: 1 per pixel, RGB: 3).
fn pixels(path: &Path, gray: bool) -> Vec<u8> {
    let img = image::open(path).unwrap();
    if gray {
        img.to_luma8().into_raw()
    } else {
        img.to_rgb8().into_raw()
    }
}

/// `host denoise` on a JPEG gives the Gaussian prior's closed form on the decoded pixels,
/// to one PNG step (f32 vs f64 rounding at a half step).
fn denoise_case(gray: bool) {
    let dir = scratch(if gray { "denoise_gray" } else { "denoise_rgb" });
    let (input, output) = (dir.join("in.jpg"), dir.join("out.png"));
    write_jpeg(&input, gray);
    let sigma = 0.3;
    ok(&[
        "denoise",
        "--weights",
        &format!("gaussian:{MEAN},{STD}"),
        "--kind",
        "ve",
        "--size",
        &SIZE.to_string(),
        "--channels",
        if gray { "1" } else { "3" },
        "--sigma",
        &sigma.to_string(),
        &s(&input),
        &s(&output),
    ]);
    let got = pixels(&output, gray);
    let x = pixels(&input, gray);
    assert_eq!(got.len(), x.len());
    let shrink = STD * STD / (STD * STD + sigma * sigma);
    let mut worst = 0i32;
    for (&g, &v) in got.iter().zip(&x) {
        let d = MEAN + shrink * (f64::from(v) / 255.0 - MEAN);
        let want = (255.0 * d.clamp(0.0, 1.0)).round() as i32;
        worst = worst.max((i32::from(g) - want).abs());
    }
    assert!(worst <= 1, "gray {gray}: off by {worst} steps");
}

#[test]
fn denoise_reads_an_rgb_jpeg() {
    denoise_case(false);
}

#[test]
fn denoise_reads_a_grayscale_jpeg() {
    denoise_case(true);
}

/// `host restore --task denoise` on JPEGs (a file, and a folder of .jpg and .jpeg): with
/// σ_y = 1e-4 the measurement is the decoded image plus noise 20x smaller than half a PNG
/// step, so measurement.png must equal the decoder's pixels exactly; run.json records the
/// JPEG file's sha256.
fn restore_case(gray: bool) {
    let dir = scratch(if gray { "restore_gray" } else { "restore_rgb" });
    let input = dir.join("gt.jpg");
    write_jpeg(&input, gray);
    let restore = |input: &Path, out: &Path| {
        ok(&[
            "restore",
            "--weights",
            &format!("gaussian:{MEAN},{STD}"),
            "--kind",
            "ve",
            "--size",
            &SIZE.to_string(),
            "--channels",
            if gray { "1" } else { "3" },
            "--task",
            "denoise",
            "--sigma-y",
            "1e-4",
            "--input",
            &s(input),
            "--steps",
            "4",
            "--n",
            "2",
            "--quiet",
            "--out",
            &s(out),
        ])
    };
    let out = dir.join("out");
    restore(&input, &out);
    assert_eq!(
        pixels(&out.join("measurement.png"), gray),
        pixels(&input, gray)
    );
    for f in ["mean.png", "std.png", "grid.png", "sample_0001.png"] {
        image::open(out.join(f)).unwrap();
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["mean"]["psnr"].as_f64().is_some(), "{metrics}");
    let sha = tweedie_nn::sha256::of_bytes(&std::fs::read(&input).unwrap());
    assert_eq!(metrics["source_sha256"], sha.as_str(), "{metrics}");

    // A folder: both JPEG extensions are picked up, each into its own sub-folder.
    let folder = dir.join("images");
    std::fs::create_dir(&folder).unwrap();
    write_jpeg(&folder.join("a.jpg"), gray);
    write_jpeg(&folder.join("b.jpeg"), gray);
    let out = dir.join("folder_out");
    restore(&folder, &out);
    for name in ["a", "b"] {
        assert_eq!(
            pixels(&out.join(name).join("measurement.png"), gray),
            pixels(
                &folder.join(if name == "a" { "a.jpg" } else { "b.jpeg" }),
                gray
            ),
            "{name}"
        );
    }
}

#[test]
fn restore_reads_an_rgb_jpeg_and_a_jpeg_folder() {
    restore_case(false);
}

#[test]
fn restore_reads_a_grayscale_jpeg_and_a_jpeg_folder() {
    restore_case(true);
}
