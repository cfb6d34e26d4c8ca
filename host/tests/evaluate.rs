//! `host evaluate` end to end, on a small synthetic MNIST folder (IDX files written here, so
//! these always run) and, when `scripts/fetch-mnist.sh` has installed it, on the real MNIST
//! (`$TWEEDIE_MNIST`, else `<workspace>/data/mnist`; skipped with a note when absent).
//!
//! The closed-form Gaussian prior (`--weights gaussian:MEAN,STD`) stands in for a network.

mod common;
use common::{host, mnist_dir, ok, s};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tweedie_host::run::output::safetensors_bytes;
use tweedie_nn::data::idx::{encode, MAGIC_IMAGES, MAGIC_LABELS};
use tweedie_nn::data::{DataRange, Dataset, MnistSplit, Preprocess};

fn scratch(name: &str) -> PathBuf {
    common::scratch_in("evaluate", name)
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Sparse pseudo-random 28×28 digits-like bytes.
fn random_images(n: usize, seed: u64) -> Vec<u8> {
    let mut st = seed;
    (0..n * 784)
        .map(|_| {
            st = st
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (st >> 33) as u8;
            if v < 180 {
                0
            } else {
                v
            }
        })
        .collect()
}

/// An MNIST-named folder: `train` images (labels i mod 10) and `test` images.
fn fake_mnist(dir: &Path, train: &[u8], test: &[u8]) {
    for (split, pixels) in [(MnistSplit::Train, train), (MnistSplit::Test, test)] {
        let n = pixels.len() / 784;
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let [(images, _), (label_file, _)] = split.files();
        let idx = encode(MAGIC_IMAGES, &[n as u32, 28, 28], pixels);
        std::fs::write(dir.join(images), idx).unwrap();
        std::fs::write(
            dir.join(label_file),
            encode(MAGIC_LABELS, &[n as u32], &labels),
        )
        .unwrap();
    }
}

/// Writes images `indices` of `ds`, padded to 32 in [-1, 1], as a host sample output.
fn samples_file(path: &Path, ds: &Dataset, indices: &[usize]) {
    let pre = Preprocess::mnist32(DataRange::MinusOneOne);
    let mut x = vec![0.0f32; indices.len() * 1024];
    ds.fill_batch(indices, pre, &mut x).unwrap();
    let meta = HashMap::from([("tweedie.data_range".to_string(), "-1,1".to_string())]);
    let bytes = safetensors_bytes(&[("samples", vec![indices.len(), 1, 32, 32], &x)], meta);
    std::fs::write(path, bytes.unwrap()).unwrap();
}

const GAUSSIAN: [&str; 8] = [
    "--weights",
    "gaussian:0,0.5",
    "--kind",
    "vp",
    "--size",
    "32",
    "--channels",
    "1",
];

fn restoration(data: &Path, task: &str, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["evaluate", "restoration"];
    args.extend(GAUSSIAN);
    let (d, o) = (s(data), s(out));
    args.extend([
        "--data",
        &d,
        "--task",
        task,
        "--count",
        "2",
        "--samples",
        "2",
        "--steps",
        "3",
        "--seed",
        "5",
        "--out",
        &o,
        "--quiet",
    ]);
    args.extend(extra);
    ok(&args);
    json(out)
}

/// Checks the table against the per-digit scores: mean and s / √n.
fn check_table(t: &Value, count: usize) {
    let digits = t["digits"].as_array().unwrap();
    assert_eq!(digits.len(), count);
    let methods = t["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 5);
    for m in methods {
        let name = m["name"].as_str().unwrap();
        let v: Vec<f64> = digits
            .iter()
            .map(|d| d["psnr"][name].as_f64().unwrap())
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        assert!((m["mean"].as_f64().unwrap() - mean).abs() < 1e-9, "{name}");
        let se = (var / v.len() as f64).sqrt();
        assert!((m["se"].as_f64().unwrap() - se).abs() < 1e-9, "{name}");
        assert!(v.iter().all(|p| p.is_finite() && *p > 0.0), "{name}: {v:?}");
        let s: Vec<f64> = digits
            .iter()
            .map(|d| d["ssim"][name].as_f64().unwrap())
            .collect();
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        assert!(
            (m["ssim_mean"].as_f64().unwrap() - mean).abs() < 1e-12,
            "{name}"
        );
        assert!(m["ssim_se"].as_f64().unwrap() >= 0.0, "{name}");
        assert!(s.iter().all(|v| *v > -1.0 && *v <= 1.0), "{name}: {s:?}");
    }
}

#[test]
fn restoration_table_on_a_synthetic_folder() {
    let dir = scratch("restore_fake");
    let data = dir.join("mnist");
    std::fs::create_dir_all(&data).unwrap();
    // Every training image the same: Σ = 0, so the Gaussian MMSE is that image exactly.
    let one = random_images(1, 1);
    let train: Vec<u8> = one.iter().copied().cycle().take(30 * 784).collect();
    let test = random_images(3, 2);
    fake_mnist(&data, &train, &test);
    let test_ds = Dataset::new(test, None, 1, 28, 28).unwrap();
    let train_ds = Dataset::new(one, None, 1, 28, 28).unwrap();
    let pre = Preprocess::mnist32(DataRange::MinusOneOne);
    let (mut x, mut mu) = (vec![0.0f32; 1024], vec![0.0f32; 1024]);
    train_ds.fill_batch(&[0], pre, &mut mu).unwrap();
    for task in ["inpaint", "sr4"] {
        let t = restoration(&data, task, &dir.join(format!("{task}.json")), &[]);
        check_table(&t, 2);
        assert_eq!(t["steps"], 3);
        for (i, d) in t["digits"].as_array().unwrap().iter().enumerate() {
            assert_eq!(d["test_index"], i);
            assert_eq!(d["seed"], 5 + i);
            test_ds.fill_batch(&[i], pre, &mut x).unwrap();
            let mse = x
                .iter()
                .zip(&mu)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum::<f64>()
                / 1024.0;
            let want = 10.0 * (4.0 / mse).log10();
            let got = d["psnr"]["gaussian_mmse"].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-4,
                "{task} digit {i}: {got} vs {want}"
            );
            let want = tweedie_core::metrics::ssim(&x, &mu, (1, 32, 32), 2.0).unwrap();
            let got = d["ssim"]["gaussian_mmse"].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-6,
                "{task} digit {i}: SSIM {got} vs {want}"
            );
        }
        // Threads and batching never change a score; --first shifts the digits.
        let again = restoration(
            &data,
            task,
            &dir.join("again.json"),
            &["--threads", "1", "--batch", "1"],
        );
        assert_eq!(again["digits"], t["digits"]);
        let shifted = restoration(&data, task, &dir.join("first.json"), &["--first", "1"]);
        assert_eq!(shifted["digits"][0]["test_index"], 1);
        // A warm start moves only the diffusion rows (its exactness: run::runner's tests).
        let warm = restoration(
            &data,
            task,
            &dir.join("warm.json"),
            &["--warm-start", "--x0", "sigma0"],
        );
        assert_eq!(warm["arguments"]["warm_start"], true);
        for (w, c) in warm["digits"]
            .as_array()
            .unwrap()
            .iter()
            .zip(t["digits"].as_array().unwrap())
        {
            assert_eq!(w["psnr"]["gaussian_mmse"], c["psnr"]["gaussian_mmse"]);
            assert_ne!(w["psnr"]["mean"], c["psnr"]["mean"]);
        }
        // --figure: a row per digit, truth | back-projection | Gaussian | mean | 2 samples;
        // its first tile is the test digit itself.
        let fig = dir.join(format!("{task}.png"));
        restoration(&data, task, &dir.join("fig.json"), &["--figure", &s(&fig)]);
        let img = image::open(&fig).unwrap().to_luma8();
        assert_eq!((img.width(), img.height()), (6 * 34 + 2, 2 * 34 + 2));
        test_ds.fill_batch(&[0], pre, &mut x).unwrap();
        for (i, v) in x.iter().enumerate() {
            let want = ((v + 1.0) * 127.5).round() as u8;
            let got = img.get_pixel(2 + (i % 32) as u32, 2 + (i / 32) as u32)[0];
            assert!(got.abs_diff(want) <= 1, "pixel {i}: {got} vs {want}");
        }
    }
}

#[test]
fn bad_restoration_arguments_are_errors() {
    let dir = scratch("restore_bad");
    let data = dir.join("mnist");
    std::fs::create_dir_all(&data).unwrap();
    fake_mnist(&data, &random_images(10, 1), &random_images(2, 2));
    let d = s(&data);
    let base = |size: &str, data: &str, extra: &[&str]| {
        let mut a = vec!["evaluate", "restoration"];
        a.extend(&GAUSSIAN[..4]);
        a.extend(["--size", size, "--channels", "1"]);
        a.extend([
            "--data",
            data,
            "--task",
            "sr4",
            "--samples",
            "1",
            "--steps",
            "2",
        ]);
        a.extend(extra.iter().copied());
        let out = host(&a);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(base("32", &d, &["--count", "3"]).contains("the test split has 2 images"));
    assert!(base("32", &d, &["--count", "1", "--sigma-y", "0"]).contains("--sigma-y"));
    assert!(base("31", &d, &["--count", "1"]).contains("pads them evenly"));
    assert!(base("32", "/nonexistent", &["--count", "1"]).contains("MNIST"));
    assert!(base(
        "32",
        &d,
        &["--count", "1", "--figure", "/nonexistent/f.png"]
    )
    .contains("--figure"));
}

#[test]
fn nearest_of_training_images_is_themselves() {
    let dir = scratch("nearest_fake");
    let data = dir.join("mnist");
    std::fs::create_dir_all(&data).unwrap();
    let train = random_images(50, 3);
    fake_mnist(&data, &train, &random_images(4, 4));
    let ds = Dataset::new(train, None, 1, 28, 28).unwrap();
    let picks = [0usize, 7, 23, 49];
    samples_file(&dir.join("samples.safetensors"), &ds, &picks);
    let out = ok(&[
        "evaluate",
        "nearest",
        "--samples",
        &s(&dir),
        "--data",
        &s(&data),
        "--out",
        &s(&dir.join("nn.json")),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("copies): 4 of 4"), "{text}");
    let r = json(&dir.join("nn.json"));
    for (row, &i) in r["samples"].as_array().unwrap().iter().zip(&picks) {
        assert_eq!(row["train_index"], i);
        assert_eq!(row["label"], i % 10);
        assert_eq!(row["distance"], 0.0);
    }
    let mut hist = [0u64; 10];
    for i in picks {
        hist[i % 10] += 1;
    }
    assert_eq!(r["label_histogram"], serde_json::json!(hist));
    // The 50 training labels are i mod 10, so the proportions are equal and 4 samples on 4
    // different labels give χ² = Σ(k − 0.4)²/0.4 = 6 on 9 d.o.f.
    assert_eq!(
        r["training_label_histogram"],
        serde_json::json!([5u64; 10].to_vec())
    );
    let u = &r["label_chi_square"];
    assert_eq!(u["dof"], 9);
    let chi2 = hist
        .iter()
        .map(|&k| (k as f64 - 0.4).powi(2) / 0.4)
        .sum::<f64>();
    assert!((u["chi2"].as_f64().unwrap() - chi2).abs() < 1e-12);
    assert!(text.contains("label balance: chi2"), "{text}");
    assert_eq!(r["test_baseline_count"], 4);
    assert!(r["test_baseline_distance"]["min"].as_f64().unwrap() > 0.0);
}

/// `--weights training-set:DIR` is a perfect fit of the set: its samples land on training
/// images (within the last step's noise), and its description names the set.
#[test]
fn training_set_samples_are_training_images() {
    let dir = scratch("training_set");
    let data = dir.join("mnist");
    std::fs::create_dir_all(&data).unwrap();
    fake_mnist(&data, &random_images(30, 5), &random_images(4, 6));
    let run = dir.join("run");
    let _ = std::fs::remove_dir_all(&run);
    let weights = format!("training-set:{}", s(&data));
    let args = [
        "sample",
        "--weights",
        weights.as_str(),
        "--preset",
        "vp-uncond-sigmoid",
        "--steps",
        "30",
        "--n",
        "5",
        "--seed",
        "2",
        "--quiet",
        "--out",
    ];
    let mut all: Vec<&str> = args.to_vec();
    let run_s = s(&run);
    all.push(&run_s);
    ok(&all);
    let manifest = json(&run.join("run.json"));
    assert_eq!(manifest["model"]["images"], 30, "{manifest}");
    let out = ok(&[
        "evaluate",
        "nearest",
        "--samples",
        &s(&run.join("samples.safetensors")),
        "--data",
        &s(&data),
        "--out",
        &s(&dir.join("nn.json")),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("copies): 5 of 5"), "{text}");
    // A folder without MNIST files is one clear error.
    let bad_out = s(&dir.join("bad"));
    let bad = host(&[
        "sample",
        "--weights",
        "training-set:/nonexistent",
        "--n",
        "1",
        "--out",
        &bad_out,
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error:"));
}

#[test]
fn real_mnist_nearest_and_restoration() {
    let Some(data) = mnist_dir() else { return };
    let dir = scratch("real");
    let ds = Dataset::mnist(&data, MnistSplit::Train, false).unwrap();
    let picks = [0usize, 1, 2, 59999];
    samples_file(&dir.join("samples.safetensors"), &ds, &picks);
    ok(&[
        "evaluate",
        "nearest",
        "--samples",
        &s(&dir.join("samples.safetensors")),
        "--data",
        &s(&data),
        "--baseline",
        "4",
        "--out",
        &s(&dir.join("nn.json")),
    ]);
    let r = json(&dir.join("nn.json"));
    let labels = ds.labels().unwrap();
    for (row, &i) in r["samples"].as_array().unwrap().iter().zip(&picks) {
        assert_eq!(row["distance"], 0.0);
        assert_eq!(row["label"], labels[i]);
    }
    // Held-out digits are not in the training set.
    assert!(r["test_baseline_distance"]["min"].as_f64().unwrap() > 1.0);
    let t = restoration(&data, "inpaint", &dir.join("t.json"), &[]);
    check_table(&t, 2);
}

/// `evaluate posterior` on a synthetic folder: its measurement, Gaussian MMSE and network
/// chains are `evaluate restoration`'s (same seeds), its exact-Gaussian half runs the
/// `gaussian-fit` weights, and `--max-excess-db` turns a miss into exit 1.
#[test]
fn posterior_diagnosis_on_a_synthetic_folder() {
    let dir = scratch("posterior");
    let data = dir.join("mnist");
    std::fs::create_dir_all(&data).unwrap();
    fake_mnist(&data, &random_images(300, 11), &random_images(2, 12));
    let (d, out) = (s(&data), dir.join("post.json"));
    let o = s(&out);
    let common = [
        "--data",
        &d,
        "--task",
        "sr4",
        "--count",
        "2",
        "--samples",
        "2",
        "--steps",
        "3",
        "--seed",
        "5",
        "--quiet",
    ];
    let mut args = vec!["evaluate", "posterior"];
    args.extend(GAUSSIAN);
    args.extend(common);
    args.extend(["--out", &o]);
    ok(&args);
    let post = json(&out);
    let table = restoration(&data, "sr4", &dir.join("rest.json"), &["--sigma-y", "0.2"]);
    for (i, digit) in post["digits"].as_array().unwrap().iter().enumerate() {
        let (p, r) = (&digit["diagnosis"], &table["digits"][i]["psnr"]);
        for (a, b) in [
            ("exact_mean", "gaussian_mmse"),
            ("back_projection", "back_projection"),
            ("network_mean", "mean"),
            ("network_sample", "sample_average"),
        ] {
            assert_eq!(p[a], r[b], "digit {i}: {a} vs {b}");
        }
        let ratio = p["variance_ratio_median"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{ratio}");
    }
    assert!(post["exact_model"]["weights"]
        .as_str()
        .unwrap()
        .starts_with("gaussian-fit:"));
    // An impossible tolerance fails with exit 1; a bad flag is an error (exit 2).
    args.extend(["--max-excess-db", "-100"]);
    args.retain(|a| *a != "--out" && *a != o.as_str());
    let miss = host(&args);
    let err = String::from_utf8_lossy(&miss.stderr);
    assert_eq!(miss.status.code(), Some(1), "{err}");
    assert!(err.contains("below the Monte Carlo floor"), "{err}");
    let mut one_chain = common;
    one_chain[7] = "1";
    let mut bad = vec!["evaluate", "posterior"];
    bad.extend(GAUSSIAN);
    bad.extend(one_chain);
    let e = host(&bad);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("--samples at least 2"));
    // gaussian-fit weights in the restoration table, and their flag checks.
    let fit = format!("gaussian-fit:{d}");
    ok(&[
        "evaluate",
        "restoration",
        "--weights",
        &fit,
        "--data",
        &d,
        "--task",
        "inpaint",
        "--count",
        "1",
        "--samples",
        "2",
        "--steps",
        "5",
        "--quiet",
    ]);
    let e = host(&[
        "sample",
        "--weights",
        &fit,
        "--channels",
        "1",
        "--out",
        &s(&dir.join("x")),
    ]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("drop --channels"));
}
