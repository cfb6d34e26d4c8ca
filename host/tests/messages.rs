//! Misleading messages and silent acceptance (issue 22 items 8 and 9): every case is refused
//! with one `error:` line naming the cause (exit 2), or, where the input is fine, says the
//! right thing: user-facing words in warnings, the bundled VP model as `host schedule`'s
//! default, identical bytes from identical `measure` runs.

mod common;
use common::{host, ok, s};

use std::path::{Path, PathBuf};
use std::process::Output;

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

fn scratch(name: &str) -> PathBuf {
    common::scratch_in("messages", name)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 2 and exactly one `error:` line (warnings may precede it) containing `needle`.
fn fails_with(args: &[&str], needle: &str) {
    let out = host(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {err}");
    assert!(
        errors[0].contains(needle),
        "{args:?}: `{needle}` not in {err}"
    );
}

/// A 32×32 grayscale digit-like PNG.
fn gray_png(path: &Path) {
    image::GrayImage::from_fn(32, 32, |x, y| image::Luma([((x * 7 + y * 3) % 256) as u8]))
        .save(path)
        .unwrap();
}

/// Rewrites a safetensors file with `edit` applied to its tensors' bytes.
fn edit_tensor(path: &Path, name: &str, edit: impl Fn(&mut [u8])) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut data: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    edit(&mut data.iter_mut().find(|(n, _)| n == name).unwrap().1);
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, d)| {
            let t = st.tensor(n).unwrap();
            (
                n.clone(),
                TensorView::new(t.dtype(), t.shape().to_vec(), d).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, meta).unwrap()).unwrap();
}

const NAN: [u8; 4] = [0, 0, 0xc0, 0x7f];

#[test]
fn vp_sigma_flags_outside_the_table_are_errors() {
    fails_with(&["schedule", "--sigma-max", "1000"], "leaves the VP table");
    fails_with(
        &["schedule", "--kind", "vp", "--sigma-min", "0.001"],
        "leaves the VP table",
    );
    // Inside the table is a narrowed range, no error.
    ok(&["schedule", "--sigma-max", "10", "--steps", "3"]);
}

#[test]
fn schedule_defaults_to_the_bundled_vp_model() {
    let out = ok(&["schedule", "--steps", "5"]);
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 5, "{csv}");
    for r in &rows {
        assert!(r[3].is_finite(), "VP plans have a time t: {csv}");
    }
    assert!((rows[0][1] - 157.4).abs() < 0.1, "{csv}");
}

#[test]
fn warnings_use_the_command_line_words() {
    let out = ok(&[
        "schedule",
        "--weights",
        "bundled:mnist-vp",
        "--data-range=0,1",
        "--steps",
        "2",
    ]);
    let err = stderr(&out);
    assert!(
        err.contains("--data-range 0,1 differs from tweedie.data_range -1,1"),
        "{err}"
    );
    assert!(
        !err.contains("ZeroOne") && !err.contains("MinusOneOne"),
        "{err}"
    );
    let out = ok(&[
        "schedule",
        "--weights",
        "bundled:mnist-vp",
        "--kind",
        "ve",
        "--steps",
        "2",
    ]);
    let err = stderr(&out);
    assert!(
        err.contains("--kind ve differs from tweedie.kind vp"),
        "{err}"
    );
}

#[test]
fn flag_values_are_checked_with_clear_words() {
    let dir = scratch("flags");
    let png = dir.join("gt.png");
    gray_png(&png);
    let (p, o) = (s(&png), s(&dir.join("out.png")));
    fails_with(
        &["denoise", "--sigma", "inf", &p, &o],
        "--sigma inf: must be a finite number > 0",
    );
    fails_with(
        &["parity", "--weights", &p, "--io", &p, "--tol", "inf"],
        "--tol inf: must be a finite number >= 0",
    );
    fails_with(
        &["schedule", "--weights-set", "bogus"],
        "--weights-set bogus",
    );
    fails_with(
        &[
            "evaluate",
            "nearest",
            "--samples",
            &p,
            "--copy-threshold",
            "nan",
        ],
        "--copy-threshold NaN",
    );
    let y = s(&dir.join("y.safetensors"));
    fails_with(
        &[
            "measure",
            "--task",
            "sr4",
            "--input",
            &p,
            "--out",
            &y,
            "--sigma-y",
            "inf",
        ],
        "--sigma-y inf: must be a finite number >= 0",
    );
    fails_with(
        &["schedule", "--preset", "vp-sr4", "--sigma-y", "inf"],
        "--sigma-y inf: must be a finite number > 0",
    );
    for (flag, value) in [("--p", "0.5"), ("--box", "1,1,4,4")] {
        fails_with(
            &[
                "measure", "--task", "sr4", "--input", &p, "--out", &y, flag, value,
            ],
            &format!("{flag} applies to --task inpaint"),
        );
    }
    assert!(!dir.join("y.safetensors").exists());
}

#[test]
fn nan_weights_and_measurements_are_named() {
    let dir = scratch("nan");
    let png = dir.join("gt.png");
    gray_png(&png);
    // NaN in a weight: named at load, not "try a smaller --c".
    let weights = dir.join("w.safetensors");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/mnist-vp.safetensors"),
        &weights,
    )
    .unwrap();
    edit_tensor(&weights, "out.2.bias", |b| b[..4].copy_from_slice(&NAN));
    fails_with(
        &[
            "denoise",
            "--weights",
            &s(&weights),
            "--sigma",
            "0.3",
            &s(&png),
            &s(&dir.join("d.png")),
        ],
        "tensor `out.2.bias` holds NaN",
    );
    // NaN in y.
    let y = dir.join("y.safetensors");
    ok(&[
        "measure",
        "--task",
        "denoise",
        "--input",
        &s(&png),
        "--sigma-y",
        "0.1",
        "--out",
        &s(&y),
    ]);
    let good = std::fs::read(&y).unwrap();
    edit_tensor(&y, "y", |b| b[8..12].copy_from_slice(&NAN));
    let out = s(&dir.join("restored"));
    fails_with(
        &[
            "restore",
            "--measurement",
            &s(&y),
            "--steps",
            "2",
            "--out",
            &out,
        ],
        "y holds NaN at element 2",
    );
    // --task that contradicts the measurement.
    std::fs::write(&y, good).unwrap();
    fails_with(
        &[
            "restore",
            "--measurement",
            &s(&y),
            "--task",
            "sr4",
            "--out",
            &out,
        ],
        "--task sr4 contradicts",
    );
    // Item 8: DDPM's own steps diverge under the likelihood step; refused up front.
    fails_with(
        &[
            "restore",
            "--measurement",
            &s(&y),
            "--sampler",
            "ddpm",
            "--out",
            &out,
        ],
        "--sampler ddpm is unconditional only",
    );
    assert!(!dir.join("restored").exists());
}

#[test]
fn truncated_jpeg_is_refused() {
    let dir = scratch("jpeg");
    let jpeg = dir.join("gt.jpg");
    let img = image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(32, 32, |x, y| {
        image::Luma([(x * 8 + y) as u8])
    }));
    img.save(&jpeg).unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    std::fs::write(&jpeg, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &[
            "denoise",
            "--sigma",
            "0.3",
            &s(&jpeg),
            &s(&dir.join("out.png")),
        ],
        "the JPEG is truncated",
    );
}

#[test]
fn identical_measurements_have_identical_bytes() {
    let dir = scratch("bytes");
    let png = dir.join("gt.png");
    gray_png(&png);
    let run = |name: &str| {
        let y = dir.join(name);
        ok(&[
            "measure",
            "--task",
            "inpaint",
            "--input",
            &s(&png),
            "--seed",
            "4",
            "--out",
            &s(&y),
        ]);
        std::fs::read(y).unwrap()
    };
    assert!(run("a.safetensors") == run("b.safetensors"));
}
