//! Fault suite, inputs and memory (issue 22 items 5 and 6): special files as inputs, reads
//! without end, decompression bombs, and sizes whose memory no machine has. Each must end in
//! one `error:` line and exit 2, quickly (the helpers fail a run that hangs), writing nothing.

mod common;
mod fault;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{s, scratch_in};
use fault::{assert_one_error, host, snapshot};

fn dir(name: &str) -> PathBuf {
    scratch_in("fault_inputs", name)
}

/// Runs `args` and requires one error containing `needle` within `limit`, nothing written.
fn refused_fast(d: &Path, args: &[&str], needle: &str, limit: Duration) {
    let before = snapshot(d);
    let start = Instant::now();
    let out = host(args);
    let took = start.elapsed();
    assert_one_error(&out, needle, &format!("{args:?}"));
    assert!(took < limit, "{args:?}: took {took:?}");
    fault::assert_same(&snapshot(d), &before, &format!("{args:?} wrote something"));
}

/// `--weights /dev/zero` read 8 GB in 8 s; `convert --from` and `train --resume` too; a FIFO
/// blocked forever. Now refused by name before opening.
#[test]
fn special_files_as_inputs_are_refused_without_reading() {
    let d = dir("special");
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = d.join("out");
    let to = d.join("m.safetensors");
    let fast = Duration::from_secs(10);
    for (input, why) in [
        (
            Path::new("/dev/zero"),
            "a character device, not a regular file",
        ),
        (fifo.as_path(), "a FIFO, not a regular file"),
        (d.as_path(), "a folder, not a regular file"),
    ] {
        let i = s(input);
        refused_fast(
            &d,
            &["sample", "--weights", &i, "--out", &s(&out)],
            why,
            fast,
        );
        refused_fast(&d, &["convert", "--from", &i, "--to", &s(&to)], why, fast);
        refused_fast(
            &d,
            &["denoise", "--sigma", "0.3", &i, &s(&d.join("x.png"))],
            why,
            fast,
        );
        refused_fast(&d, &["bench", "--config", &i, "--iters", "1"], why, fast);
    }
}

/// `train --resume /dev/zero` (the checkpoint reader uses the same input function).
#[test]
fn train_resume_from_a_device_is_refused() {
    let d = dir("resume");
    let Some(mnist) = common::mnist_dir() else {
        return;
    };
    let args = [
        "train",
        "--data",
        &s(&mnist),
        "--preset",
        "vp",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../models/mnist-vp.json"),
        "--steps",
        "1",
        "--resume",
        "/dev/zero",
        "--out",
        &s(&d.join("m.safetensors")),
    ];
    let start = Instant::now();
    let out = host(&args);
    assert_eq!(out.status.code(), Some(2), "{}", fault::stderr(&out));
    assert!(
        fault::stderr(&out).contains("/dev/zero"),
        "{}",
        fault::stderr(&out)
    );
    assert!(start.elapsed() < Duration::from_secs(30));
}

/// A PNG header of `w`×`h` RGB with a one-byte IDAT: the decoder is never reached.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = !0u32;
        for &byte in kind.iter().chain(data) {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&(!crc).to_be_bytes());
        out
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// A 493 KB PNG decoding to 13000×13000 RGB aborted; every image reader refuses it now.
#[test]
fn an_image_bomb_is_refused_before_decoding() {
    let d = dir("bomb");
    let bomb = d.join("bomb.png");
    std::fs::write(&bomb, png_header(13_000, 13_000)).unwrap();
    let b = s(&bomb);
    let why = "13000x13000 pixels is more than an input image may have";
    let fast = Duration::from_secs(10);
    refused_fast(
        &d,
        &[
            "denoise",
            "--weights",
            "gaussian:0,1",
            "--sigma",
            "0.3",
            &b,
            &s(&d.join("o.png")),
        ],
        why,
        fast,
    );
    refused_fast(
        &d,
        &[
            "measure",
            "--task",
            "denoise",
            "--input",
            &b,
            "--out",
            &s(&d.join("y.safetensors")),
        ],
        why,
        fast,
    );
    refused_fast(
        &d,
        &[
            "restore",
            "--weights",
            "gaussian:0,1",
            "--task",
            "denoise",
            "--input",
            &b,
            "--out",
            &s(&d.join("r")),
        ],
        why,
        fast,
    );
    refused_fast(&d, &["evaluate", "fid", "--samples", &b], why, fast);
}

/// Item 6: sizes that aborted on a failed allocation (SIGABRT, no message) are refused from
/// the estimate, naming it and `--max-memory`.
#[test]
fn impossible_sizes_are_refused_before_allocating() {
    let d = dir("memory");
    let out = s(&d.join("o"));
    let deep = d.join("wide.json");
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/mnist-vp.json"
    ))
    .unwrap();
    let wide = config.replace("\"num_channels\": 32", "\"num_channels\": 4096");
    assert_ne!(wide, config, "the config names num_channels 32");
    std::fs::write(&deep, wide).unwrap();
    let fast = Duration::from_secs(20);
    let why = "--max-memory to raise the limit";
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "bench",
            "--config",
            "adm-ffhq256",
            "--size",
            "65536",
            "--iters",
            "1",
        ],
        vec![
            "bench",
            "--config",
            "adm-ffhq256",
            "--size",
            "4294967296",
            "--iters",
            "1",
        ],
        vec!["bench", "--config", deep.to_str().unwrap(), "--iters", "1"],
        vec![
            "sample", "--n", "1000000", "--batch", "1000000", "--steps", "1", "--out", &out,
        ],
        vec![
            "sample",
            "--n",
            "18446744073709551615",
            "--steps",
            "1",
            "--out",
            &out,
        ],
        vec![
            "sample",
            "--threads",
            "10000",
            "--steps",
            "1",
            "--out",
            &out,
        ],
        vec![
            "sample",
            "--weights",
            "gaussian:0,1",
            "--size",
            "1000000",
            "--out",
            &out,
        ],
        vec!["schedule", "--steps", "1000000000"],
    ];
    for args in &cases {
        refused_fast(&d, args, why, fast);
    }
    // --max-memory lowers (or raises) the limit.
    refused_fast(
        &d,
        &[
            "--max-memory",
            "1M",
            "sample",
            "--weights",
            "gaussian:0,1",
            "--size",
            "64",
            "--n",
            "64",
            "--steps",
            "1",
            "--out",
            &out,
        ],
        "(--max-memory)",
        fast,
    );
}

/// `ulimit -v` is part of the limit: a run that fits the machine but not the address space
/// left is refused from the estimate (it used to abort).
#[test]
fn an_address_space_limit_is_honoured() {
    let d = dir("ulimit_v");
    let out = s(&d.join("o"));
    let args = [
        "sample",
        "--weights",
        "gaussian:0,1",
        "--size",
        "1024",
        "--n",
        "256",
        "--steps",
        "1",
        "--out",
        &out,
    ];
    let r = fault::run(fault::limited("ulimit -v 2000000", &args), "ulimit -v");
    assert_one_error(&r, "the address space `ulimit -v` leaves", "ulimit -v");
    assert!(!d.join("o").exists());
}

/// Non-UTF-8 paths anywhere on the command line (restore's --out unwrapped too).
#[test]
fn non_utf8_paths_are_one_error() {
    use std::os::unix::ffi::OsStrExt;
    let d = dir("non_utf8");
    let mut bad = d.as_os_str().as_bytes().to_vec();
    bad.extend_from_slice(b"/x\xfe.png");
    let bad = std::ffi::OsStr::from_bytes(&bad);
    for args in [
        vec![
            "restore",
            "--weights",
            "gaussian:0,1",
            "--task",
            "denoise",
            "--input",
            "in.png",
            "--out",
        ],
        vec![
            "denoise",
            "--weights",
            "gaussian:0,1",
            "--sigma",
            "0.3",
            "in.png",
        ],
        vec![
            "restore",
            "--weights",
            "gaussian:0,1",
            "--task",
            "denoise",
            "--out",
            "r",
            "--input",
        ],
    ] {
        let mut cmd = fault::bin();
        cmd.current_dir(&d).args(&args).arg(bad);
        let out = fault::run(cmd, "non-UTF-8");
        assert_one_error(&out, "is not valid UTF-8", &format!("{args:?}"));
    }
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
}
