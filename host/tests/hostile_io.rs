//! Reproductions from the hostile-input review (issue 22, item 5): printing to a closed or full
//! stdout or stderr, non-UTF-8 arguments, bad command lines and an impossible U-Net config end
//! with the documented exit code and at most one `error:` line, never a panic (exit 101).

mod common;
use common::{host, s};

use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_host"))
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `host schedule | head -1`: the reader goes away after one line; host ends quietly with 0.
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let mut child = bin()
        .args(["schedule", "--steps", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close our end of the pipe without reading: every write of host now fails with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(out.stderr.is_empty(), "{}", stderr_of(&out));
}

/// `> /dev/full`: a result that cannot be written is an error, exit 2.
#[test]
fn a_full_stdout_is_an_error() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = bin()
        .args(["schedule", "--steps", "100"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.starts_with("error: writing to stdout"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `2> /dev/full`: notes and warnings that cannot be written do not stop a run.
#[test]
fn a_full_stderr_does_not_stop_a_run() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let dir = common::scratch_in("hostile_io", "full_stderr");
    let out = bin()
        .args([
            "sample",
            "--weights",
            "gaussian:0,1",
            "--size",
            "4",
            "--channels",
            "1",
            "--n",
            "2",
            "--steps",
            "2",
            "--out",
            &s(&dir.join("out")),
        ])
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(dir.join("out/samples.safetensors").exists());
    // An error with a full stderr still exits 2 (its line is lost, not turned into a panic).
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = bin()
        .args(["schedule", "--steps", "0"])
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `--out` with bytes that are not UTF-8: one `error:` line and exit 2 before any work.
#[test]
fn a_non_utf8_argument_is_one_clear_error() {
    let dir = common::scratch_in("hostile_io", "non_utf8");
    let mut bad = dir.as_os_str().as_bytes().to_vec();
    bad.extend_from_slice(b"/out\xff");
    let out = bin()
        .args(["sample", "--weights", "gaussian:0,1", "--n", "1", "--out"])
        .arg(std::ffi::OsStr::from_bytes(&bad))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.starts_with("error: argument 7 ("), "{err}");
    assert!(err.contains("is not valid UTF-8"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written"
    );
}

/// A bad command line is one `error:` line and 2 (clap's usage and tip lines dropped); help
/// still prints in full; a newline inside a path stays inside the one line.
#[test]
fn command_line_errors_are_one_line() {
    for args in [
        &["sample", "--shard", "2/2", "--out", "x"][..],
        &["sample", "--bogus"],
        &["merge", "--out", "m"],
        &["sample", "--max-memory", "banana", "--out", "x"],
    ] {
        let out = bin().args(args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.lines().count() == 1,
            "{args:?}: {err}"
        );
        assert!(err.contains("(see --help)"), "{err}");
    }
    let help = bin().args(["sample", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage:"));

    let dir = common::scratch_in("hostile_io", "newline");
    let out_dir = dir.join("no\nsuch/out");
    let out = bin()
        .args(["sample", "--weights", "gaussian:0,1", "--n", "1", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.lines().count() == 1 && err.contains("no\\nsuch"),
        "{err}"
    );
}

/// A config whose channel_mult has more levels than the image can halve (65 levels on 32×32).
#[test]
fn a_unet_deeper_than_its_image_is_one_clear_error() {
    let dir = common::scratch_in("hostile_io", "deep_config");
    let path = dir.join("deep.json");
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/mnist-vp.json"
    ))
    .unwrap();
    let deep = vec!["1"; 65].join(",");
    let config = config.replace("\"1,2,2\"", &format!("\"{deep}\""));
    assert!(config.contains(&deep));
    std::fs::write(&path, config).unwrap();
    let out = host(&["bench", "--config", &s(&path), "--iters", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("channel_mult: 65 levels need image_size 32 divisible by 2^64"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
