//! Runs the `host` binary on NCSN++: parity against the golden score_sde outputs
//! (golden ncsnpp_small), bench on random weights, sampling, restoration and one-shot
//! denoising with the golden weights.

mod common;

use common::{host, scratch_in};

use std::path::PathBuf;
use std::process::Output;

/// The repository root, which holds `golden/` (a byte-identical copy of the reference data).
fn shared() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn golden(file: &str) -> String {
    shared()
        .join("golden/ncsnpp_small")
        .join(file)
        .display()
        .to_string()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The golden io holds score_sde's `model(x, sigma)` for σ = 0.05 and 40: parity passes
/// under the NCSN++ tolerance (README: 2e-4 relative), sample by sample.
#[test]
fn parity_against_golden_score() {
    let (w, c, io) = (
        golden("weights.safetensors"),
        golden("config.json"),
        golden("io.safetensors"),
    );
    let out = host(&[
        "parity",
        "--weights",
        &w,
        "--config",
        &c,
        "--io",
        &io,
        "--threads",
        "2",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("model: ncsnpp"), "{stdout}");
    assert!(
        stdout.contains("sigma = 0.05") && stdout.contains("sigma = 40"),
        "{stdout}"
    );
    assert!(stdout.contains("parity ok: 2 samples"), "{stdout}");
}

/// A tolerance far below float32 round-off must fail with exit code 1: the check compares.
#[test]
fn parity_fails_below_round_off() {
    let (w, c, io) = (
        golden("weights.safetensors"),
        golden("config.json"),
        golden("io.safetensors"),
    );
    let out = host(&[
        "parity",
        "--weights",
        &w,
        "--config",
        &c,
        "--io",
        &io,
        "--tol",
        "1e-12",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("parity FAILED"), "{stdout}");
}

/// bench builds random weights for the golden config, runs at image_size and ends with the
/// machine-readable line; any other size is an error naming image_size.
#[test]
fn bench_runs_at_image_size_only() {
    let c = golden("config.json");
    let out = host(&[
        "bench",
        "--config",
        &c,
        "--size",
        "32",
        "--batch",
        "2",
        "--iters",
        "1",
        "--threads",
        "2",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("model: ncsnpp") && stdout.contains("input 2x3x32x32"),
        "{stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("median_s=") && last.contains("iters=1"),
        "{stdout}"
    );
    let out = host(&["bench", "--config", &c, "--size", "64", "--iters", "1"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("image_size"), "{stderr}");
}

/// sample runs the golden NCSN++ weights (no metadata: the flags say VE / score / σ) for
/// K = 3 steps and writes its outputs.
#[test]
fn sample_with_golden_weights() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ncsnpp_sample");
    let _ = std::fs::remove_dir_all(&dir);
    let (w, c, o) = (
        golden("weights.safetensors"),
        golden("config.json"),
        dir.display().to_string(),
    );
    let out = host(&[
        "sample",
        "--weights",
        &w,
        "--config",
        &c,
        "--kind",
        "ve",
        "--net-output",
        "score",
        "--noise-input",
        "sigma",
        "--sigma-min",
        "0.01",
        "--sigma-max",
        "348",
        "--steps",
        "3",
        "--n",
        "1",
        "--out",
        &o,
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert!(files > 0, "no outputs in {o}: {stdout}\n{stderr}");
    assert!(dir.join("sample_0000.png").is_file(), "{stdout}\n{stderr}");
}

/// The flags that make the metadata-less golden weights an NCSN++ VE score model.
fn golden_model_args() -> Vec<String> {
    [
        "--weights",
        &golden("weights.safetensors"),
        "--config",
        &golden("config.json"),
        "--kind",
        "ve",
        "--net-output",
        "score",
        "--noise-input",
        "sigma",
        "--sigma-min",
        "0.01",
        "--sigma-max",
        "348",
    ]
    .map(String::from)
    .to_vec()
}

fn scratch(name: &str) -> PathBuf {
    scratch_in("ncsnpp_cli", name)
}

/// A smooth 32×32 RGB image (the golden config's size).
fn write_png(path: &std::path::Path) {
    let img = image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([
            (30 + 6 * x) as u8,
            (200 - 5 * y) as u8,
            (60 + 3 * (x + y)) as u8,
        ])
    });
    img.save(path).unwrap();
}

fn run_ok(args: &[String]) -> (String, String) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = host(&refs);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{args:?}\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// restore (random inpainting, K = 3) with the golden NCSN++ weights: every output decodes,
/// the metrics are numbers, run.json names the network, and the samples are the same bits
/// with 1 and 2 forward threads (the forward is split on the worker pool without changing
/// any sum's order).
#[test]
fn restore_with_golden_weights() {
    let dir = scratch("restore");
    let gt = dir.join("gt.png");
    write_png(&gt);
    let restore = |name: &str, threads: &str| {
        let out = dir.join(name);
        let mut args = vec!["restore".to_string()];
        args.extend(golden_model_args());
        args.extend(
            [
                "--task",
                "inpaint",
                "--input",
                &gt.display().to_string(),
                "--sigma-y",
                "0.05",
                "--steps",
                "3",
                "--n",
                "2",
                "--threads",
                threads,
                "--quiet",
                "--out",
                &out.display().to_string(),
            ]
            .map(String::from),
        );
        run_ok(&args);
        out
    };
    let one = restore("threads1", "1");
    for f in ["mean.png", "std.png", "measurement.png", "sample_0001.png"] {
        let img = image::open(one.join(f)).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32), "{f}");
    }
    image::open(one.join("grid.png")).unwrap();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("metrics.json")).unwrap()).unwrap();
    for key in ["psnr", "ssim"] {
        let v = metrics["mean"][key].as_f64();
        assert!(v.is_some_and(f64::is_finite), "{key}: {metrics}");
    }
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["command"], "restore");
    assert!(run.to_string().contains("\"arch\":\"ncsnpp\""), "{run}");
    let two = restore("threads2", "2");
    let samples = |d: &PathBuf| std::fs::read(d.join("samples.safetensors")).unwrap();
    assert_eq!(samples(&one), samples(&two), "1 vs 2 threads");
}

/// denoise with the golden weights writes D = x + σ²·s(x, σ), s being the library's NCSN++
/// forward (itself checked against score_sde's golden output) on the decoded PNG: the CLI's
/// output matches it to one PNG step, and most pixels are not clamped (a real comparison).
#[test]
fn denoise_with_golden_weights() {
    use tweedie_nn::model::ncsnpp::{Input, NcsnppArch, NcsnppConfig, NcsnppModel, Output};
    use tweedie_nn::tensors::SafetensorsFile;
    use tweedie_nn::weights::{Precision, Weights};

    let dir = scratch("denoise");
    let (input, output) = (dir.join("in.png"), dir.join("out.png"));
    write_png(&input);
    let sigma = 0.1f32;
    let mut args = vec!["denoise".to_string()];
    args.extend(golden_model_args());
    args.extend(
        [
            "--sigma",
            &sigma.to_string(),
            "--threads",
            "2",
            &input.display().to_string(),
            &output.display().to_string(),
        ]
        .map(String::from),
    );
    run_ok(&args);

    let text = std::fs::read_to_string(golden("config.json")).unwrap();
    let config = NcsnppConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
    let arch = NcsnppArch::new(&config).unwrap();
    let file = SafetensorsFile::open(std::path::Path::new(&golden("weights.safetensors"))).unwrap();
    let weights = Weights::load(&file, &arch.state_dict(), Precision::F32).unwrap();
    // NCHW in [0, 1], as the CLI maps a PNG for a VE model.
    let rgb = image::open(&input).unwrap().to_rgb8().into_raw();
    let n = rgb.len() / 3;
    let x: Vec<f32> = (0..3 * n)
        .map(|i| f32::from(rgb[(i % n) * 3 + i / n]) / 255.0)
        .collect();
    let mut score = vec![0f32; x.len()];
    NcsnppModel::new(&arch, &weights, 1)
        .unwrap()
        .forward(
            &Input {
                x: &x,
                sigma: &[sigma],
                batch: 1,
            },
            Output::Score,
            &mut score,
        )
        .unwrap();
    let got = image::open(&output).unwrap().to_rgb8().into_raw();
    let (mut worst, mut inside) = (0i32, 0usize);
    let s2 = f64::from(sigma) * f64::from(sigma);
    for i in 0..3 * n {
        let d = f64::from(x[i]) + s2 * f64::from(score[i]);
        let want = (255.0 * d.clamp(0.0, 1.0)).round() as i32;
        let g = i32::from(got[(i % n) * 3 + i / n]);
        worst = worst.max((g - want).abs());
        inside += usize::from(d > 0.0 && d < 1.0 && (255.0 * (d - f64::from(x[i]))).abs() >= 1.0);
    }
    assert!(worst <= 1, "off by {worst} PNG steps");
    assert!(
        inside > n,
        "only {inside} of {} values unclamped and moved by the network",
        3 * n
    );
}
