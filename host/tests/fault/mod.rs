//! Helpers of the fault suite (`host/tests/fault_*.rs`, issue 22): run `host` with a deadline
//! (a hang is a failure, never a wait), snapshot folders to check that a failed run left them
//! exactly as they were, and list the staging entries a run may leave.
#![allow(dead_code)] // each fault file uses its own subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any single `host` run of the suite may take before it counts as hung.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The `host` binary.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_host"))
}

/// `host ARGS` under `sh -c 'LIMITS; exec host ARGS'` (ulimit -f / -v).
pub fn limited(limits: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{limits}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_host"))
        .args(args);
    cmd
}

/// Waits for `child` up to [`DEADLINE`]; a run past it is killed and fails the test.
pub fn wait(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("{what}: still running after {DEADLINE:?} (hung)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cmd` to the end (stdin closed, output captured) with the deadline.
pub fn run(mut cmd: Command, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait(child, what)
}

/// `host ARGS` with the deadline.
pub fn host(args: &[&str]) -> Output {
    let mut cmd = bin();
    cmd.args(args);
    run(cmd, &format!("{args:?}"))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 2 and exactly one line, `error: …` containing `needle`.
pub fn assert_one_error(out: &Output, needle: &str, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(lines.len(), 1, "{what}: not one line: {err}");
    assert!(lines[0].starts_with("error: "), "{what}: {err}");
    assert!(err.contains(needle), "{what}: `{needle}` not in: {err}");
}

/// Every file under `dir` (relative path → bytes); folders as empty entries ending in `/`.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &path, out);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(format!("{rel}@"), target.display().to_string().into_bytes());
            } else if meta.is_file() {
                out.insert(rel, std::fs::read(&path).unwrap_or_default());
            } else {
                // FIFOs and device nodes: their type, never their contents (a read blocks).
                let kind = format!("{:?}", meta.file_type());
                out.insert(format!("{rel}!"), kind.into_bytes());
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

/// Sets every `out` key under `v` to null.
fn drop_out(v: &mut serde_json::Value) {
    if let Some(map) = v.as_object_mut() {
        for (key, value) in map.iter_mut() {
            if key == "out" {
                *value = serde_json::Value::Null;
            } else {
                drop_out(value);
            }
        }
    }
}

/// A run folder without run.json's run-specific fields (timings, the output path): the
/// files that must match between two runs of the same arguments bit for bit.
pub fn results(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = snapshot(dir);
    for (name, bytes) in files.iter_mut() {
        if name.ends_with("run.json") {
            let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            v["timings"] = serde_json::Value::Null;
            drop_out(&mut v["arguments"]);
            *bytes = serde_json::to_vec(&v).unwrap();
        }
    }
    files
}

/// Names in `dir` that a run stages (`.NAME.host-staging`, `.NAME.host-old`).
pub fn staging_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".host-staging") || n.ends_with(".host-old"))
        .collect();
    v.sort();
    v
}

/// A deterministic sequence (splitmix64) for the seeded fault schedules.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The suite's seed: `TWEEDIE_FAULT_SEED` or a fixed default, printed so a failure reproduces.
pub fn seed(suite: &str) -> u64 {
    let seed = std::env::var("TWEEDIE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(22);
    eprintln!("{suite}: TWEEDIE_FAULT_SEED={seed}");
    seed
}

/// A small tmpfs of `kib` KiB at `dir` (read-only with `ro`); `None` where mounting is not
/// permitted (not root, no CAP_SYS_ADMIN).
pub fn mount_tmpfs(dir: &Path, kib: u64, ro: bool) -> Option<Tmpfs> {
    std::fs::create_dir_all(dir).unwrap();
    let opts = format!("size={kib}k{}", if ro { ",ro" } else { "" });
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Tmpfs(dir.to_path_buf()))
}

/// A mounted tmpfs, unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Remounts it read-only or read-write.
    pub fn remount(&self, ro: bool) {
        let opt = if ro { "remount,ro" } else { "remount,rw" };
        let status = Command::new("mount")
            .args(["-o", opt])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "mount -o {opt} {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Whether `status` ended by signal `sig` (default action) — a stop before the handlers.
pub fn killed_by(status: ExitStatus, sig: i32) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(sig)
}

/// A gaussian-prior sample run's arguments into `out` (fast: no network).
pub fn sample_args(out: &Path, n: usize, seed: u64, steps: usize) -> Vec<String> {
    [
        "sample",
        "--weights",
        "gaussian:0,1",
        "--size",
        "8",
        "--channels",
        "1",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--n".into(),
        n.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--steps".into(),
        steps.to_string(),
        "--out".into(),
        out.display().to_string(),
    ])
    .collect()
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Requires two snapshots to be equal, naming the entries that differ (not their bytes).
pub fn assert_same(now: &BTreeMap<String, Vec<u8>>, then: &BTreeMap<String, Vec<u8>>, what: &str) {
    let differ: Vec<&String> = now
        .keys()
        .chain(then.keys())
        .filter(|k| now.get(*k) != then.get(*k))
        .collect();
    assert!(differ.is_empty(), "{what}: differs in {differ:?}");
}
