//! Runs the `host` binary: help output and every error path must give a clear one-line
//! error and a non-zero exit code, never a panic.

mod common;

use common::host;

use std::path::PathBuf;
use std::process::Output;

/// The repository root, which holds `golden/` (a byte-identical copy of the reference data).
fn shared() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn golden(folder: &str, file: &str) -> String {
    shared()
        .join("golden")
        .join(folder)
        .join(file)
        .display()
        .to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 2, exactly one line on stderr starting with `error: `, containing `needle`.
fn assert_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "not one error line: {err}"
    );
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn temp_file(name: &str, bytes: &[u8]) -> String {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn help_texts_show_examples() {
    for args in [&["--help"][..], &["parity", "--help"], &["bench", "--help"]] {
        let out = host(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(text.contains("Example"), "{args:?}: {text}");
    }
    let text = String::from_utf8_lossy(&host(&["parity", "--help"]).stdout).into_owned();
    for flag in [
        "--weights",
        "--config",
        "--io",
        "--tol",
        "--f16",
        "--threads",
    ] {
        assert!(text.contains(flag), "{flag} missing from parity --help");
    }
}

#[test]
fn missing_weights_file() {
    let out = host(&[
        "parity",
        "--weights",
        "/nonexistent/w.safetensors",
        "--config",
        "adm-ffhq256",
        "--io",
        "x",
    ]);
    assert_error(&out, "cannot read /nonexistent/w.safetensors");
}

#[test]
fn corrupt_and_truncated_weights_files() {
    let garbage = temp_file(
        "garbage.safetensors",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    );
    let out = host(&[
        "parity",
        "--weights",
        &garbage,
        "--config",
        "adm-ffhq256",
        "--io",
        "x",
    ]);
    assert_error(&out, "is not a valid safetensors file");
    let good = std::fs::read(golden("adm_small", "weights.safetensors")).unwrap();
    let cut = temp_file("truncated.safetensors", &good[..good.len() / 2]);
    let out = host(&[
        "parity",
        "--weights",
        &cut,
        "--config",
        "adm-ffhq256",
        "--io",
        "x",
    ]);
    assert_error(
        &out,
        "truncated.safetensors is not a valid safetensors file",
    );
}

#[test]
fn mismatched_config_lists_the_tensors() {
    let out = host(&[
        "parity",
        "--weights",
        &golden("adm_small", "weights.safetensors"),
        "--config",
        &golden("adm_variant", "config.json"),
        "--io",
        &golden("adm_small", "io.safetensors"),
    ]);
    assert_error(&out, "weights do not match the model config");
    let err = stderr(&out);
    for part in [
        "missing: ",
        "input_blocks.3.0.op.weight",
        "unexpected: ",
        "mis-shaped: ",
        "out.2.weight",
    ] {
        assert!(err.contains(part), "{part} not in {err}");
    }
}

#[test]
fn io_file_that_does_not_fit_the_model() {
    let out = host(&[
        "parity",
        "--weights",
        &golden("adm_small", "weights.safetensors"),
        "--config",
        &golden("adm_small", "config.json"),
        "--io",
        &golden("adm_variant", "io.safetensors"),
    ]);
    assert_error(&out, "x has 1 channels but the model takes 3");
}

#[test]
fn config_errors() {
    let w = golden("adm_small", "weights.safetensors");
    let io = golden("adm_small", "io.safetensors");
    assert_error(
        &host(&["parity", "--weights", &w, "--io", &io]),
        "has no tweedie.config metadata; pass --config",
    );
    let bad = temp_file("bad_arch.json", br#"{"arch": "dit", "image_size": 32}"#);
    assert_error(
        &host(&["parity", "--weights", &w, "--config", &bad, "--io", &io]),
        "arch: unknown architecture",
    );
    assert_error(
        &host(&["bench", "--config", "/nonexistent/c.json"]),
        "cannot read config file /nonexistent/c.json",
    );
    assert_error(
        &host(&["bench", "--config", "adm-ffhq256", "--size", "48"]),
        "multiples of 32",
    );
}

/// The golden configurations load, validate and pass parity (exit code 0); bench runs.
#[test]
fn golden_parity_reaches_the_forward_pass() {
    for folder in ["adm_small", "adm_variant"] {
        let out = host(&[
            "parity",
            "--weights",
            &golden(folder, "weights.safetensors"),
            "--config",
            &golden(folder, "config.json"),
            "--io",
            &golden(folder, "io.safetensors"),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("model: adm, "), "{folder}: {stdout}");
        assert!(
            out.status.success() && stdout.contains("parity ok"),
            "{folder}: {stdout}{}",
            stderr(&out)
        );
    }
    let out = host(&[
        "bench",
        "--config",
        "adm-ffhq256",
        "--size",
        "64",
        "--iters",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("12.12 G MAC per forward"), "{stdout}");
    let last = stdout.lines().last().unwrap_or("");
    let fields: Vec<&str> = last.split(' ').collect();
    assert!(
        out.status.success()
            && fields.len() == 3
            && fields[0]
                .strip_prefix("median_s=")
                .is_some_and(|v| v.parse::<f64>().is_ok())
            && fields[1]
                .strip_prefix("gflops=")
                .is_some_and(|v| v.parse::<f64>().is_ok())
            && fields[2] == "iters=1",
        "last line: {last}"
    );
}
