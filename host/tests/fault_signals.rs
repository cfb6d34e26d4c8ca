//! Fault suite, signals (issue 22 item 3): SIGINT, SIGTERM, SIGHUP and SIGKILL at seeded
//! points of `sample`, `restore` and `convert`. The delays are drawn from `TWEEDIE_FAULT_SEED`
//! (printed) across the run's whole duration, so every phase is hit: startup, model loading,
//! sampling, writing the staged files, the swap. After each attempt the output must be the old
//! run untouched or the complete new one; SIGINT/SIGTERM/SIGHUP must exit 130/143/129 (or 0
//! when the run finished first) and leave no staging entry; SIGKILL may leave at most one,
//! which the next run removes.

mod common;
mod fault;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{s, scratch_in};
use fault::{results, staging_entries, Rng};

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// Attempts per (command, signal).
const ATTEMPTS: usize = 8;

/// What one faulted command writes: a folder (compared as run results) or one file.
#[derive(Clone, Copy)]
enum Target {
    Folder,
    File,
}

fn state(path: &Path, target: Target) -> BTreeMap<String, Vec<u8>> {
    match target {
        Target::Folder => results(path),
        // convert writes one byte form (sorted header keys): compare the bytes.
        Target::File => std::fs::read(path)
            .map(|b| BTreeMap::from([(String::new(), b)]))
            .unwrap_or_default(),
    }
}

/// Runs `args(out)` once uninterrupted to learn its duration and its complete output, then
/// `ATTEMPTS` times per signal with an old output in place, signalled after a seeded delay.
/// Returns the outcome counts for the report line.
fn attack(
    name: &str,
    target: Target,
    args: &dyn Fn(&Path) -> Vec<String>,
    make_old: &dyn Fn(&Path),
) -> BTreeMap<String, usize> {
    let d = scratch_in("fault_signals", name);
    let reference = d.join("reference");
    let start = Instant::now();
    let r = fault::host(&fault::strs(&args(&reference)));
    assert!(r.status.success(), "{name}: {}", fault::stderr(&r));
    let span = start.elapsed().as_micros() as u64;
    let new = state(&reference, target);
    let mut rng = Rng(fault::seed(name) ^ name.len() as u64);
    let mut outcomes = BTreeMap::new();
    for sig in [SIGINT, SIGTERM, SIGHUP, SIGKILL] {
        for attempt in 0..ATTEMPTS {
            // Up to twice the quiet run's time: a loaded machine runs slower, and the end
            // (writing, the swap, exit) must be hit too.
            let delay = rng.below(2 * span);
            let out = d.join(format!("out-{sig}-{attempt}"));
            make_old(&out);
            let old = state(&out, target);
            let what = format!("{name}: signal {sig} after {delay} us (attempt {attempt})");
            let mut child = common::default_signals(&mut fault::bin())
                .args(args(&out))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_micros(delay));
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, sig) };
            let _ = child.stdout.take();
            let status = fault::wait(child, &what).status;
            let now = state(&out, target);
            let is_old = now == old;
            let is_new = now == new;
            assert!(
                is_old || is_new,
                "{what}: output is neither the old nor the new run"
            );
            let staged = staging_entries(&d);
            let outcome = match (sig, status.code()) {
                (_, Some(0)) => "finished",
                (SIGINT, Some(130)) | (SIGTERM, Some(143)) | (SIGHUP, Some(129)) => {
                    "stopped, cleaned up"
                }
                (SIGKILL, None) => "killed",
                // Before the handlers were installed: the default action, nothing claimed yet.
                (s, None) if fault::killed_by(status, s) => "killed before the handlers",
                _ => panic!("{what}: unexpected exit {status:?}"),
            };
            if sig == SIGKILL {
                assert!(staged.len() <= 1, "{what}: staging left {staged:?}");
                // The next run removes what the killed one left and completes.
                let r = fault::host(&fault::strs(&args(&out)));
                assert!(r.status.success(), "{what}: rerun: {}", fault::stderr(&r));
                assert_eq!(state(&out, target), new, "{what}: rerun result");
            }
            assert!(
                staging_entries(&d).is_empty(),
                "{what}: staging left {staged:?}"
            );
            let label = format!(
                "{} {outcome}, output {}",
                match sig {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    SIGHUP => "SIGHUP",
                    _ => "SIGKILL",
                },
                if is_new && !is_old { "new" } else { "old" }
            );
            *outcomes.entry(label).or_default() += 1;
        }
    }
    eprintln!("{name}: {outcomes:?}");
    outcomes
}

fn sample_args(out: &Path, seed: u64) -> Vec<String> {
    let mut v = fault::sample_args(out, 24, seed, 40);
    v.splice(3..5, ["--size".into(), "16".into()]);
    v
}

/// An old run (seed 1) in `out`; the attacked run writes seed 2.
fn old_sample(out: &Path) {
    let r = fault::host(&fault::strs(&sample_args(out, 1)));
    assert!(r.status.success(), "{}", fault::stderr(&r));
}

/// `nohup host …` ignores SIGHUP, and so does the run: it finishes when the terminal closes.
#[test]
fn a_run_started_under_nohup_ignores_sighup() {
    let d = scratch_in("fault_signals", "nohup");
    let out = d.join("out");
    // 128 chains × 1000 steps: about a second optimised, several unoptimised.
    let mut args = fault::sample_args(&out, 128, 2, 1000);
    args.splice(3..5, ["--size".into(), "16".into()]);
    let mut child = common::default_signals(&mut std::process::Command::new("nohup"))
        .arg(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // nohup execs host in place (same pid); by then host's handlers would be installed.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished before SIGHUP: make it longer"
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, SIGHUP) };
    let r = fault::wait(child, "nohup sample");
    assert!(r.status.success(), "{:?}: {}", r.status, fault::stderr(&r));
    assert!(out.join("samples.safetensors").is_file());
}

#[test]
fn signals_during_sample_leave_the_old_or_the_new_run() {
    attack(
        "sample",
        Target::Folder,
        &|out| sample_args(out, 2),
        &old_sample,
    );
}

fn gt_png() -> PathBuf {
    let d = scratch_in("fault_signals", "gt");
    let png = d.join("gt.png");
    let img = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 16 + y) as u8]));
    img.save(&png).unwrap();
    png
}

#[test]
fn signals_during_restore_leave_the_old_or_the_new_run() {
    let png = gt_png();
    let args = move |out: &Path| -> Vec<String> {
        [
            "restore",
            "--weights",
            "gaussian:0,1",
            "--size",
            "16",
            "--channels",
            "1",
            "--task",
            "inpaint",
            "--n",
            "8",
            "--steps",
            "40",
            "--quiet",
            "--input",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([s(&png), "--out".into(), s(out)])
        .collect()
    };
    attack("restore", Target::Folder, &args, &old_sample);
}

#[test]
fn signals_during_convert_leave_the_old_or_the_new_file() {
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../golden");
    let from = format!("{golden}/pt_fixtures/adm_small_state_dict.pt");
    let config = format!("{golden}/adm_small/config.json");
    let args = move |out: &Path| -> Vec<String> {
        ["convert", "--from", &from, "--config", &config, "--to"]
            .iter()
            .map(|a| a.to_string())
            .chain([s(out)])
            .collect()
    };
    let old = |out: &Path| std::fs::write(out, b"old weights").unwrap();
    attack("convert", Target::File, &args, &old);
}
