//! `host evaluate fid` and `fid-calibrate` end to end, and the bundled judge against the real
//! MNIST (`$TWEEDIE_MNIST`, else `<workspace>/data/mnist`; without it they fail unless
//! `TWEEDIE_NO_MNIST=1` skips them — scripts/test.sh installs it).

mod common;
use common::{host, mnist_dir, ok, s};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tweedie_host::eval::judge::{Judge, Split};
use tweedie_host::image_io::{from_u8, png_from_planes};
use tweedie_host::run::output::safetensors_bytes;
use tweedie_nn::data::{DataRange, Dataset, MnistSplit};
use tweedie_nn::model::classifier::{padded_images, FEATURES, PIXELS};
use tweedie_nn::train::classify_run::{accuracy, Labelled};

fn scratch(name: &str) -> PathBuf {
    common::scratch_in("evaluate_fid", name)
}

/// `n` 32×32 digits: MNIST test digits when installed, else seeded blobs.
fn digits(n: usize) -> Vec<u8> {
    if let Some(dir) = mnist_dir() {
        let test = Dataset::mnist(&dir, MnistSplit::Test, false).unwrap();
        return padded_images(&test).unwrap()[..n * PIXELS].to_vec();
    }
    (0..n * PIXELS)
        .map(|i| {
            let (k, p) = (i / PIXELS, i % PIXELS);
            let (y, x) = (p / 32, p % 32);
            let (cy, cx) = (10 + k % 12, 10 + k * 7 % 12);
            if y.abs_diff(cy) + x.abs_diff(cx) < 6 + k % 3 {
                255
            } else {
                0
            }
        })
        .collect()
}

fn write_pngs(dir: &Path, images: &[u8]) {
    for (i, img) in images.chunks_exact(PIXELS).enumerate() {
        let png = png_from_planes(img, 1, 32, 32).unwrap();
        std::fs::write(dir.join(format!("sample_{i:04}.png")), png).unwrap();
    }
}

/// The digits as a `host sample` samples.safetensors in `range`.
fn write_safetensors(path: &Path, images: &[u8], range: DataRange, tag: &str) {
    let x: Vec<f32> = images.iter().map(|&v| from_u8(v, range)).collect();
    let meta = HashMap::from([("tweedie.data_range".to_string(), tag.to_string())]);
    let n = images.len() / PIXELS;
    let bytes = safetensors_bytes(&[("samples", vec![n, 1, 32, 32], &x)], meta).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Exit code 2 and exactly one line, starting with `error:`, that contains `needle`.
fn refused(args: &[&str], needle: &str) {
    let out = host(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn png_folder_glob_and_safetensors_score_the_same() {
    let dir = scratch("formats");
    let images = digits(40);
    let pngs = dir.join("run");
    std::fs::create_dir(&pngs).unwrap();
    write_pngs(&pngs, &images);
    let vp = dir.join("vp.safetensors");
    let ve = dir.join("ve.safetensors");
    write_safetensors(&vp, &images, DataRange::MinusOneOne, "-1,1");
    write_safetensors(&ve, &images, DataRange::ZeroOne, "0,1");
    let glob = format!("{}/sample_*.png", pngs.display());
    let mut scores = Vec::new();
    for (i, spec) in [s(&pngs), glob, s(&vp), s(&ve)].iter().enumerate() {
        let out = dir.join(format!("r{i}.json"));
        let printed = ok(&["evaluate", "fid", "--samples", spec, "--out", &s(&out)]);
        let text = String::from_utf8_lossy(&printed.stdout);
        assert!(text.contains("Fréchet distance (n = 40)"), "{text}");
        let r = report(&out);
        assert_eq!(r["scores"]["n"], 40);
        assert_eq!(r["scores"]["reference"], "test");
        scores.push(r["scores"].clone());
    }
    assert!(scores.iter().all(|v| v == &scores[0]), "{scores:?}");
    let fid = scores[0]["fid"].as_f64().unwrap();
    assert!(fid.is_finite() && fid >= 0.0);
    let counts: u64 = scores[0]["class_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(counts, 40);
    // --n takes the first digits; --ref train changes the reference; threads change nothing.
    let out = dir.join("n20.json");
    ok(&[
        "evaluate",
        "fid",
        "--samples",
        &s(&vp),
        "--n",
        "20",
        "--ref",
        "train",
        "--threads",
        "1",
        "--out",
        &s(&out),
    ]);
    let first = report(&out);
    assert_eq!(first["scores"]["n"], 20);
    assert_eq!(first["scores"]["reference"], "train");
    let out2 = dir.join("n20b.json");
    ok(&[
        "evaluate",
        "fid",
        "--samples",
        &s(&pngs),
        "--n",
        "20",
        "--ref",
        "train",
        "--threads",
        "3",
        "--out",
        &s(&out2),
    ]);
    assert_eq!(first["scores"], report(&out2)["scores"]);
}

#[test]
fn grids_and_bad_inputs_are_refused() {
    let dir = scratch("bad");
    let images = digits(12);
    // A 2×2 grid of digits in one PNG.
    let mut grid = vec![0u8; 64 * 64];
    for (k, img) in images.chunks_exact(PIXELS).take(4).enumerate() {
        for y in 0..32 {
            let row = (k / 2 * 32 + y) * 64 + k % 2 * 32;
            grid[row..row + 32].copy_from_slice(&img[y * 32..y * 32 + 32]);
        }
    }
    let grid_png = dir.join("grid.png");
    std::fs::write(&grid_png, png_from_planes(&grid, 1, 64, 64).unwrap()).unwrap();
    refused(
        &["evaluate", "fid", "--samples", &s(&grid_png)],
        "several digits",
    );
    refused(
        &["evaluate", "fid", "--samples", &s(&dir.join("missing"))],
        "no such file or folder",
    );
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(&["evaluate", "fid", "--samples", &s(&empty)], "no samples");
    refused(
        &[
            "evaluate",
            "fid",
            "--samples",
            &format!("{}/x_*.png", s(&empty)),
        ],
        "no file matches",
    );
    // Fewer than 10 digits, or fewer than --n.
    let few = dir.join("few");
    std::fs::create_dir(&few).unwrap();
    write_pngs(&few, &images[..5 * PIXELS]);
    refused(&["evaluate", "fid", "--samples", &s(&few)], "at least 10");
    let st = dir.join("s.safetensors");
    write_safetensors(&st, &images, DataRange::MinusOneOne, "-1,1");
    refused(
        &["evaluate", "fid", "--samples", &s(&st), "--n", "13"],
        "only 12",
    );
    // Wrong size, not an image, no data range, NaN, wrong shape.
    let small = dir.join("small.png");
    std::fs::write(&small, png_from_planes(&[0u8; 400], 1, 20, 20).unwrap()).unwrap();
    refused(&["evaluate", "fid", "--samples", &s(&small)], "20x20");
    let junk = dir.join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    refused(
        &["evaluate", "fid", "--samples", &s(&junk)],
        "not a readable PNG or JPEG image",
    );
    let bare = dir.join("bare.safetensors");
    let x = vec![0.0f32; 12 * PIXELS];
    std::fs::write(
        &bare,
        safetensors_bytes(&[("samples", vec![12, 1, 32, 32], &x)], HashMap::new()).unwrap(),
    )
    .unwrap();
    refused(
        &["evaluate", "fid", "--samples", &s(&bare)],
        "tweedie.data_range",
    );
    let mut nan = x.clone();
    nan[5 * PIXELS + 3] = f32::NAN;
    let meta = HashMap::from([("tweedie.data_range".to_string(), "-1,1".to_string())]);
    let nan_file = dir.join("nan.safetensors");
    std::fs::write(
        &nan_file,
        safetensors_bytes(&[("samples", vec![12, 1, 32, 32], &nan)], meta.clone()).unwrap(),
    )
    .unwrap();
    refused(
        &["evaluate", "fid", "--samples", &s(&nan_file)],
        "sample 5 has a non-finite value",
    );
    let wide = dir.join("wide.safetensors");
    std::fs::write(
        &wide,
        safetensors_bytes(&[("samples", vec![3, 1, 64, 64], &x)], meta).unwrap(),
    )
    .unwrap();
    refused(
        &["evaluate", "fid", "--samples", &s(&wide)],
        "expected [N, 1, 32, 32]",
    );
    // The report's folder must exist; nothing is written on failure.
    let out = dir.join("no/such/r.json");
    refused(
        &["evaluate", "fid", "--samples", &s(&st), "--out", &s(&out)],
        "does not exist",
    );
}

/// The bundled classifier classifies ≥ 99 % of the MNIST test set, as its metadata records,
/// and its stored test-set statistics are those of its own features.
#[test]
fn bundled_judge_is_accurate_and_consistent() {
    let Some(dir) = mnist_dir() else { return };
    let judge = Judge::bundled().unwrap();
    let test = Dataset::mnist(&dir, MnistSplit::Test, true).unwrap();
    let images = padded_images(&test).unwrap();
    let set = Labelled {
        images: &images,
        labels: test.labels().unwrap(),
    };
    let acc = accuracy(&judge.classifier, &set, 2).unwrap();
    assert!(acc >= 0.99, "test accuracy {acc}");
    let stored: f64 = judge.metadata["tweedie.test_accuracy"].parse().unwrap();
    assert!((acc - stored).abs() < 5e-4, "{acc} vs stored {stored}");
    let feats = judge.classifier.infer(&images, 2).unwrap().features;
    let r = judge.reference(Split::Test);
    assert_eq!(r.stats.n, 10_000);
    for i in 0..FEATURES {
        let mean = feats
            .iter()
            .skip(i)
            .step_by(FEATURES)
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / 10_000.0;
        assert!(
            (mean - r.stats.mean[i]).abs() < 1e-4 * (1.0 + mean.abs()),
            "feature {i}"
        );
    }
    // Every 5th test digit against the test reference (the first 5000 test digits alone come
    // from another population of writers than the last 5000 and score higher).
    let strided: Vec<u8> = images
        .chunks_exact(PIXELS)
        .step_by(5)
        .flatten()
        .copied()
        .collect();
    let s = judge.score(&strided, Split::Test, 2).unwrap();
    assert!(s.fid < 3.0, "{}", s.fid);
    assert!(s.inception_score > 9.5, "{}", s.inception_score);
    assert!(s.class_balance.unwrap().p > 0.01);
}

/// The calibration's degradations score far above the real-digit floor (a small version of
/// models/README.md's table).
#[test]
fn calibration_separates_degraded_digits() {
    let Some(dir) = mnist_dir() else { return };
    let out = scratch("calibrate").join("cal.json");
    ok(&[
        "evaluate",
        "fid-calibrate",
        "--data",
        &s(&dir),
        "--floor-n",
        "500",
        "--degraded-n",
        "500",
        "--repeats",
        "2",
        "--out",
        &s(&out),
    ]);
    let r = report(&out);
    let rows = r["rows"].as_array().unwrap();
    let fid = |name: &str| {
        rows.iter()
            .find(|r| r["name"].as_str().unwrap().starts_with(name))
            .unwrap()["fid"]["mean"]
            .as_f64()
            .unwrap()
    };
    let floor = fid("real training digits");
    assert!(floor > 0.0 && floor < 10.0, "{floor}");
    for name in [
        "Gaussian blur",
        "added noise, sigma 0.2",
        "class-mean templates",
        "a single class",
    ] {
        assert!(fid(name) > 3.0 * floor, "{name}: {} vs {floor}", fid(name));
    }
}
