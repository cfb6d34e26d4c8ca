//! Runs the `host` binary on NCSN++: parity against the golden score_sde outputs
//! (golden ncsnpp_small), bench on random weights, sampling with the golden weights.

use std::path::PathBuf;
use std::process::{Command, Output};

fn shared() -> PathBuf {
    match std::env::var_os("TWEEDIE_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")),
    }
}

fn golden(file: &str) -> String {
    shared()
        .join("golden/ncsnpp_small")
        .join(file)
        .display()
        .to_string()
}

fn host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .output()
        .expect("the host binary runs")
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
