//! The bundled model: `host sample`, `host restore` and `host denoise` run without `--weights`
//! (the README's main command), record which model they used, and a wrong bundled name is one
//! clear error.

mod common;
use common::{host, ok};

use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    common::scratch_in("bundled", name)
}

fn run_json(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("run.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A 32×32 grayscale "digit": a bright bar on black, MNIST's background.
fn digit_png(path: &std::path::Path) {
    let img = image::GrayImage::from_fn(32, 32, |x, y| {
        let on = (14..18).contains(&x) && (6..26).contains(&y);
        image::Luma([if on { 255 } else { 0 }])
    });
    img.save(path).unwrap();
}

#[test]
fn sample_without_weights_uses_the_bundled_vp_model() {
    let dir = scratch("sample");
    let out = dir.join("out");
    let o = out.display().to_string();
    ok(&[
        "sample",
        "--schedule",
        "sigmoid",
        "--steps",
        "3",
        "--n",
        "2",
        "--seed",
        "1",
        "--out",
        &o,
        "--quiet",
    ]);
    let run = run_json(&out);
    let model = &run["model"];
    assert_eq!(model["weights"], "bundled:mnist-vp", "{run:#}");
    assert_eq!(model["kind"], "vp");
    let img = image::open(out.join("sample_0000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
    assert_eq!(img.color().channel_count(), 1);

    // Naming it explicitly is the same model: identical samples.
    let again = dir.join("again");
    let a = again.display().to_string();
    ok(&[
        "sample",
        "--weights",
        "bundled:mnist-vp",
        "--schedule",
        "sigmoid",
        "--steps",
        "3",
        "--n",
        "2",
        "--seed",
        "1",
        "--out",
        &a,
        "--quiet",
    ]);
    for f in ["sample_0000.png", "sample_0001.png", "samples.safetensors"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn restore_and_denoise_without_weights_run_on_a_digit() {
    let dir = scratch("restore");
    let gt = dir.join("gt.png");
    digit_png(&gt);
    let out = dir.join("out");
    let (g, o) = (gt.display().to_string(), out.display().to_string());
    ok(&[
        "restore",
        "--task",
        "inpaint",
        "--input",
        &g,
        "--sigma-y",
        "0.1",
        "--n",
        "2",
        "--schedule",
        "sigmoid",
        "--steps",
        "3",
        "--seed",
        "2",
        "--out",
        &o,
        "--quiet",
    ]);
    assert!(out.join("mean.png").exists());
    assert_eq!(run_json(&out)["model"]["weights"], "bundled:mnist-vp");

    let den = dir.join("den.png");
    ok(&["denoise", "--sigma", "0.2", &g, &den.display().to_string()]);
    let img = image::open(&den).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
}

#[test]
fn an_unknown_bundled_name_is_one_clear_error() {
    let dir = scratch("unknown");
    let o = dir.join("out").display().to_string();
    let out = host(&[
        "sample",
        "--weights",
        "bundled:cifar",
        "--steps",
        "3",
        "--schedule",
        "sigmoid",
        "--out",
        &o,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bundled:cifar") && err.contains("mnist-vp"),
        "{err}"
    );
    assert!(!dir.join("out").exists());
}

/// The bundled VE model samples with its own metadata (VE scale, data in [0, 1]).
#[test]
fn the_bundled_ve_model_samples() {
    let out = scratch("ve").join("out");
    let o = out.display().to_string();
    ok(&[
        "sample",
        "--weights",
        "bundled:mnist-ve",
        "--schedule",
        "sigmoid",
        "--steps",
        "3",
        "--n",
        "2",
        "--out",
        &o,
        "--quiet",
    ]);
    let run = run_json(&out);
    assert_eq!(run["model"]["weights"], "bundled:mnist-ve", "{run:#}");
    assert_eq!(run["model"]["kind"], "ve");
    let img = image::open(out.join("sample_0001.png")).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
}
