//! `host train` end to end on a folder of tiny PNGs: both presets, the files next to `--out`
//! (weights with metadata, checkpoint, loss log and curve, `--sample-every` grids), `--resume`
//! continuing to the same bits as an uninterrupted run, and the exported weights sampling.

mod common;
use common::{host, ok, s};

use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    common::scratch_in("train_cli", name)
}

/// Six 6×6 grayscale PNGs (padded to the config's 8×8) and a tiny ADM config.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..6u32 {
        let img = image::GrayImage::from_fn(6, 6, |x, y| {
            image::Luma([((x * 40 + y * 7 + i * 31) % 256) as u8])
        });
        img.save(data.join(format!("{i:02}.png"))).unwrap();
    }
    let config = dir.join("tiny.json");
    std::fs::write(
        &config,
        r#"{"arch": "adm", "image_size": 8, "in_channels": 1, "num_channels": 32,
            "num_res_blocks": 1, "channel_mult": "1,2", "attention_resolutions": "4",
            "num_head_channels": 16, "use_scale_shift_norm": true}"#,
    )
    .unwrap();
    (data, config)
}

/// Runs `host train`; returns the weights path and the log (stderr).
fn train(dir: &Path, preset: &str, steps: &str, extra: &[&str]) -> (PathBuf, String) {
    let (data, config) = fixture(dir);
    let out = dir.join("m.safetensors");
    let (d, c, o) = (s(&data), s(&config), s(&out));
    let mut args = vec![
        "train",
        "--data",
        &d,
        "--preset",
        preset,
        "--config",
        &c,
        "--steps",
        steps,
        "--batch",
        "2",
        "--lr",
        "1e-3",
        "--warmup",
        "2",
        "--seed",
        "3",
        "--threads",
        "1",
        "--out",
        &o,
    ];
    args.extend_from_slice(extra);
    let log = String::from_utf8_lossy(&ok(&args).stderr).into_owned();
    (out, log)
}

#[test]
fn vp_training_writes_weights_log_curve_and_sample_grids() {
    let dir = scratch("vp");
    let (out, _) = train(
        &dir,
        "vp",
        "2",
        &[
            "--sample-every",
            "1",
            "--sample-steps",
            "2",
            "--sample-n",
            "4",
        ],
    );
    for f in [
        "m.safetensors",
        "m.ckpt.safetensors",
        "m.loss.csv",
        "m.loss.png",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let csv = std::fs::read_to_string(dir.join("m.loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "header + one row per step:\n{csv}");
    for step in ["step_000001.png", "step_000002.png"] {
        let grid = image::open(dir.join("m.samples").join(step)).unwrap();
        assert!(grid.width() >= 16 && grid.height() >= 16, "{step}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("m.samples"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The exported weights carry their metadata: `host sample` needs nothing else.
    let samples = dir.join("samples");
    ok(&[
        "sample",
        "--weights",
        &s(&out),
        "--schedule",
        "sigmoid",
        "--steps",
        "2",
        "--n",
        "1",
        "--out",
        &s(&samples),
        "--quiet",
    ]);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(samples.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["model"]["kind"], "vp");
    assert_eq!(run["model"]["noise_input"], "t");
}

#[test]
fn ve_training_resumes_to_the_same_bits() {
    let straight = scratch("ve_straight");
    let (a, _) = train(&straight, "ve", "4", &[]);

    let split = scratch("ve_split");
    train(&split, "ve", "2", &[]);
    let ckpt = s(&split.join("m.ckpt.safetensors"));
    let (b, log) = train(&split, "ve", "4", &["--resume", &ckpt]);
    assert!(
        log.contains("steps 2..4"),
        "the resumed run must start at step 2:\n{log}"
    );
    // Tensors compared one by one: the metadata names each run's own data folder.
    let (a, b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (name, ta) in a.tensors() {
        let tb = b.tensor(&name).unwrap();
        assert_eq!(
            ta.data(),
            tb.data(),
            "{name}: 2 + 2 resumed steps differ from 4 straight"
        );
    }
}

#[test]
fn bad_training_arguments_are_one_clear_error() {
    let dir = scratch("bad");
    let (data, config) = fixture(&dir);
    let o = s(&dir.join("m.safetensors"));
    let (d, c) = (s(&data), s(&config));
    for (args, needle) in [
        (
            vec!["--preset", "vq", "--config", &c, "--steps", "1"],
            "--preset",
        ),
        (
            vec!["--preset", "vp", "--config", &c, "--steps", "0"],
            "--steps",
        ),
        (
            vec![
                "--preset",
                "ve",
                "--config",
                &c,
                "--steps",
                "1",
                "--sigma-min",
                "5",
                "--sigma-max",
                "1",
            ],
            "--sigma-min",
        ),
    ] {
        let mut full = vec!["train", "--data", &d, "--out", &o];
        full.extend(args);
        let out = host(&full);
        assert_eq!(out.status.code(), Some(2), "{full:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{full:?}: {err}");
        assert!(!dir.join("m.safetensors").exists());
    }
}
