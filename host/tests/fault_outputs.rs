//! Fault suite, outputs (issue 22 items 1–4): what `host` may replace, and that a failed run
//! leaves every path as it was. Each reproduction of the issue is a test here.

mod common;
mod fault;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{s, scratch_in};
use fault::{assert_one_error, host, sample_args, snapshot, staging_entries, strs};

const G: [&str; 7] = [
    "--weights",
    "gaussian:0,1",
    "--size",
    "8",
    "--channels",
    "1",
    "--quiet",
];

fn dir(name: &str) -> PathBuf {
    scratch_in("fault_outputs", name)
}

/// A small PNG input (a sample of the gaussian prior).
fn input_png(dir: &Path) -> PathBuf {
    let out = dir.join("src");
    let r = host(&strs(&sample_args(&out, 1, 5, 2)));
    assert!(r.status.success(), "{}", fault::stderr(&r));
    let png = dir.join("in.png");
    std::fs::copy(out.join("sample_0000.png"), &png).unwrap();
    std::fs::remove_dir_all(out).unwrap();
    png
}

fn denoise(input: &Path, output: &Path) -> std::process::Output {
    let mut args = vec!["denoise", "--sigma", "0.3"];
    args.extend(&G[..6]);
    let (i, o) = (s(input), s(output));
    args.extend([i.as_str(), o.as_str()]);
    host(&args)
}

fn mknod_null(path: &Path) -> bool {
    Command::new("mknod")
        .arg(path)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|st| st.success())
}

/// Item 1: a device node, FIFO, symlink or folder at a file output's path is refused by name
/// and left as it was (as root, the old rename replaced `/dev/full`).
#[test]
fn special_files_at_file_outputs_are_refused_and_kept() {
    let d = dir("special");
    let png = input_png(&d);
    let node = d.join("n");
    // Not root: /dev/null itself is the device node (refused before anything is written).
    let node = if mknod_null(&node) {
        node
    } else {
        eprintln!("mknod not permitted: using /dev/null");
        PathBuf::from("/dev/null")
    };
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let link = d.join("link.png");
    std::os::unix::fs::symlink(d.join("target.png"), &link).unwrap();
    let folder = d.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let cases: [(&Path, &str); 4] = [
        (&node, "is a character device"),
        (&fifo, "is a FIFO"),
        (&link, "is a symlink"),
        (&folder, "is a folder"),
    ];
    for (path, why) in cases {
        let before = snapshot(&d);
        assert_one_error(&denoise(&png, path), why, "denoise");
        let out = s(path);
        let measure = host(&[
            "measure",
            "--task",
            "denoise",
            "--input",
            &s(&png),
            "--out",
            &out,
        ]);
        assert_one_error(&measure, why, "measure --out");
        assert_one_error(
            &host(&["schedule", "--steps", "3", "--out", &out]),
            why,
            "schedule --out",
        );
        assert_one_error(
            &host(&["schedule", "--steps", "3", "--plot", &out]),
            why,
            "schedule --plot",
        );
        fault::assert_same(&snapshot(&d), &before, &path.display().to_string());
    }
    let meta = std::fs::symlink_metadata(&node).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &meta.file_type()
    ));
}

/// Item 1: `denoise in.png in.png` would overwrite its input.
#[test]
fn an_output_that_is_an_input_is_refused() {
    let d = dir("same");
    let png = input_png(&d);
    let before = std::fs::read(&png).unwrap();
    assert_one_error(&denoise(&png, &png), "is an input", "denoise in in");
    // Also through another name of the same file.
    let alias = d.join("alias.png");
    std::fs::hard_link(&png, &alias).unwrap();
    assert_one_error(&denoise(&png, &alias), "is an input", "denoise in alias");
    let measure = host(&[
        "measure",
        "--task",
        "denoise",
        "--input",
        &s(&png),
        "--out",
        &s(&png),
    ]);
    assert_one_error(&measure, "is an input", "measure");
    assert_eq!(std::fs::read(&png).unwrap(), before);
    // An input inside the output folder would be deleted with the old run.
    let run = d.join("run");
    assert!(host(&strs(&sample_args(&run, 1, 1, 2))).status.success());
    let mut args: Vec<String> = ["restore", "--task", "denoise", "--n", "1", "--steps", "2"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(G.iter().map(|a| a.to_string()));
    args.extend([
        "--input".into(),
        s(&run.join("sample_0000.png")),
        "--out".into(),
        s(&run),
    ]);
    assert_one_error(
        &host(&strs(&args)),
        "is an input",
        "restore into its input's folder",
    );
}

/// Item 1: `measure --out y.png` wrote the preview over the measurement.
#[test]
fn measure_out_png_keeps_the_measurement() {
    let d = dir("measure_png");
    let png = input_png(&d);
    let y = d.join("y.png");
    let out = host(&[
        "measure",
        "--task",
        "denoise",
        "--input",
        &s(&png),
        "--out",
        &s(&y),
    ]);
    assert!(out.status.success(), "{}", fault::stderr(&out));
    let bytes = std::fs::read(&y).unwrap();
    assert!(
        safetensors::SafeTensors::deserialize(&bytes).is_ok(),
        "y.png is the measurement"
    );
    let preview = std::fs::read(d.join("y.preview.png")).unwrap();
    assert!(preview.starts_with(b"\x89PNG"));
    assert!(staging_entries(&d).is_empty());
}

/// Item 2: a folder host did not write is refused, and nothing in it is deleted.
#[test]
fn a_foreign_folder_is_refused_and_untouched() {
    let d = dir("foreign");
    let out = d.join("d");
    std::fs::create_dir_all(out.join("sample_0001.png")).unwrap();
    std::fs::write(out.join("sample_0000.png"), b"old\n").unwrap();
    let before = snapshot(&d);
    let r = host(&strs(&sample_args(&out, 2, 0, 1)));
    assert_one_error(
        &r,
        "sample_0000.png is in the way",
        "sample into a foreign folder",
    );
    fault::assert_same(&snapshot(&d), &before, "the folder");
}

/// Item 2: a rerun with a smaller --n replaces the whole run: no stale samples remain.
#[test]
fn a_rerun_replaces_the_run_as_a_unit() {
    let d = dir("rerun");
    let out = d.join("run");
    assert!(host(&strs(&sample_args(&out, 5, 0, 2))).status.success());
    assert!(out.join("sample_0004.png").exists());
    assert!(host(&strs(&sample_args(&out, 2, 0, 2))).status.success());
    let reference = d.join("reference");
    assert!(host(&strs(&sample_args(&reference, 2, 0, 2)))
        .status
        .success());
    fault::assert_same(&fault::results(&out), &fault::results(&reference), "rerun");
    assert!(staging_entries(&d).is_empty());
}

/// Item 3: `(ulimit -f 8; host sample --n 16 --out o)` left 16 PNGs and a `.partial`; now one
/// error, and the earlier run in `o` is untouched.
#[test]
fn a_file_size_limit_fails_cleanly_and_keeps_the_old_run() {
    let d = dir("ulimit_f");
    let out = d.join("o");
    assert!(host(&strs(&sample_args(&out, 2, 0, 1))).status.success());
    let before = snapshot(&d);
    let args = sample_args(&out, 16, 1, 1);
    let mut args = strs(&args);
    args.splice(3..5, ["--size", "64"]);
    let r = fault::run(fault::limited("ulimit -f 8", &args), "ulimit -f 8");
    assert_one_error(&r, "File too large", "ulimit -f 8");
    fault::assert_same(&snapshot(&d), &before, "the folder");
}

/// Item 4: a constant ground truth has no min-max PSNR: recorded as null, the run completes.
#[test]
fn restore_records_an_undefined_metric_instead_of_failing() {
    let d = dir("constant");
    let png = d.join("flat.png");
    let gray = image::GrayImage::from_pixel(8, 8, image::Luma([128u8]));
    gray.save(&png).unwrap();
    let out = d.join("r");
    let mut args = vec![
        "restore", "--task", "denoise", "--n", "2", "--steps", "3", "--input",
    ];
    let (p, o) = (s(&png), s(&out));
    args.extend([p.as_str(), "--out", o.as_str()]);
    args.extend(G);
    let r = host(&args);
    assert!(r.status.success(), "{}", fault::stderr(&r));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["mean"]["psnr_minmax"].is_null(), "{metrics}");
    assert!(metrics["mean"]["psnr"].is_f64(), "{metrics}");
}

/// A killed run's staging folder is removed by the next run on that output.
#[test]
fn a_stale_staging_folder_is_cleaned_by_the_next_run() {
    let d = dir("stale");
    let out = d.join("run");
    let staging = d.join(".run.host-staging");
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join(".host-staging-mark"), b"").unwrap();
    std::fs::write(staging.join("sample_0000.png"), b"half").unwrap();
    assert!(host(&strs(&sample_args(&out, 1, 0, 1))).status.success());
    assert!(staging_entries(&d).is_empty());
    // Something else under that name is not ours: refused, kept.
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("notes.txt"), b"mine").unwrap();
    let r = host(&strs(&sample_args(&out, 1, 0, 1)));
    assert_one_error(
        &r,
        ".run.host-staging is in the way",
        "foreign staging name",
    );
    assert_eq!(std::fs::read(staging.join("notes.txt")).unwrap(), b"mine");
}
