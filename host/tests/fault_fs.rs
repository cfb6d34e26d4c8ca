//! Fault suite, file systems (issue 22 items 2 and 3): a full disk (a small tmpfs) and a
//! read-only folder under an earlier run. Mounting needs root; where it is not permitted the
//! full-disk case runs under `ulimit -f` instead (it says so), and the read-only case fails —
//! it is never skipped silently.

mod common;
mod fault;

use std::path::Path;

use common::scratch_in;
use fault::{assert_one_error, host, sample_args, snapshot, staging_entries, strs};

/// A sample run bigger than the tmpfs fails with one error; the earlier run in the same
/// folder is untouched (a rerun used to delete its PNGs and leave a mixed folder).
#[test]
fn a_full_disk_keeps_the_earlier_run() {
    let d = scratch_in("fault_fs", "full");
    let disk = d.join("disk");
    let out = disk.join("run");
    let big = |out: &Path| {
        let mut v = sample_args(out, 64, 2, 1);
        v.splice(3..5, ["--size".into(), "64".into()]);
        v
    };
    match fault::mount_tmpfs(&disk, 256, false) {
        Some(_mounted) => {
            assert!(host(&strs(&sample_args(&out, 4, 1, 1))).status.success());
            let before = snapshot(&disk);
            let r = host(&strs(&big(&out)));
            assert_one_error(&r, "No space left on device", "full tmpfs");
            fault::assert_same(&snapshot(&disk), &before, "the disk");
            assert!(staging_entries(&disk).is_empty());
        }
        None => {
            eprintln!("mount not permitted: the full disk is simulated with ulimit -f 256");
            assert!(host(&strs(&sample_args(&out, 4, 1, 1))).status.success());
            let before = snapshot(&disk);
            let args = big(&out);
            let r = fault::run(fault::limited("ulimit -f 256", &strs(&args)), "ulimit -f");
            assert_one_error(&r, "File too large", "ulimit -f");
            fault::assert_same(&snapshot(&disk), &before, "the disk");
        }
    }
}

/// A run onto a read-only file system fails with one error and changes nothing.
#[test]
fn a_read_only_folder_is_one_error() {
    let d = scratch_in("fault_fs", "ro");
    let disk = d.join("disk");
    let mounted = fault::mount_tmpfs(&disk, 1024, false)
        .expect("mounting a tmpfs needs root (CI runs as root)");
    let out = disk.join("run");
    assert!(host(&strs(&sample_args(&out, 2, 1, 1))).status.success());
    mounted.remount(true);
    let before = snapshot(&disk);
    assert_one_error(
        &host(&strs(&sample_args(&out, 2, 2, 1))),
        "Read-only file system",
        "sample onto ro",
    );
    assert_one_error(
        &host(&[
            "schedule",
            "--steps",
            "3",
            "--out",
            &common::s(&disk.join("s.csv")),
        ]),
        "Read-only file system",
        "schedule onto ro",
    );
    fault::assert_same(&snapshot(&disk), &before, "the disk");
    mounted.remount(false);
}
