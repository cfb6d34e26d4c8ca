//! End to end: every new subcommand runs, its outputs decode, run.json parses, the same seed
//! gives identical files, and `--batch` / `--threads` never change a sample. Bad input exits
//! with code 2, one `error:` line, and no partial output.
//!
//! The closed-form Gaussian prior (`--weights gaussian:MEAN,STD`) stands in for a network; the
//! golden ADM network runs too once its forward pass exists (until then those checks say so
//! and return).

mod common;

use common::{host, ok, s, scratch_in};

use std::path::{Path, PathBuf};
use std::process::Output;

/// The repository root, which holds `golden/` (a byte-identical copy of the reference data).
fn shared() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn golden(file: &str) -> String {
    shared()
        .join("golden/adm_small")
        .join(file)
        .display()
        .to_string()
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    scratch_in("run_commands", name)
}

/// A deterministic RGB test image of `size`×`size`.
fn test_png(path: &Path, size: u32, gray: bool) {
    let mut state = 12345u32;
    let mut next = || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (state >> 16) as u8
    };
    if gray {
        let img = image::GrayImage::from_fn(size, size, |_, _| image::Luma([next()]));
        img.save(path).unwrap();
    } else {
        let img = image::RgbImage::from_fn(size, size, |_, _| image::Rgb([next(), next(), next()]));
        img.save(path).unwrap();
    }
}

fn decode(path: &Path) -> image::DynamicImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".png") || n == "samples.safetensors"
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

const GAUSS: &[&str] = &[
    "--weights",
    "gaussian:0.1,0.4",
    "--kind",
    "vp",
    "--size",
    "8",
];

fn with(base: &[&str], extra: &[&str]) -> Vec<String> {
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run_owned(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&refs)
}

#[test]
fn every_command_runs_and_its_outputs_decode() {
    let dir = scratch("every");
    let gt = dir.join("gt.png");
    test_png(&gt, 8, false);
    let out = dir.join("sample");
    let mut args = with(&["sample"], GAUSS);
    args.extend(with(
        &[],
        &[
            "--steps",
            "12",
            "--n",
            "3",
            "--snapshot-every",
            "5",
            "--quiet",
            "--out",
            &s(&out),
        ],
    ));
    run_owned(&args);
    for i in 0..3 {
        assert_eq!(decode(&out.join(format!("sample_{i:04}.png"))).width(), 8);
    }
    decode(&out.join("grid.png"));
    decode(&out.join("snapshots/step_00005.png"));
    decode(&out.join("snapshots/step_00010.png"));
    let run = json(&out.join("run.json"));
    assert_eq!(run["command"], "sample");
    assert_eq!(run["arguments"]["run"]["seed"], 0);
    assert!(run["timings"]["sampling_s"].as_f64().is_some());
    let st = std::fs::read(out.join("samples.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert_eq!(st.tensor("samples").unwrap().shape(), &[3, 3, 8, 8]);

    for task in ["inpaint", "inpaint-box", "sr4", "denoise"] {
        let out = dir.join(format!("restore-{task}"));
        let mut args = with(&["restore"], GAUSS);
        args.extend(with(
            &[],
            &[
                "--task",
                task,
                "--input",
                &s(&gt),
                "--steps",
                "10",
                "--n",
                "3",
                "--batch",
                "2",
                "--quiet",
                "--out",
                &s(&out),
            ],
        ));
        run_owned(&args);
        for f in [
            "mean.png",
            "std.png",
            "measurement.png",
            "grid.png",
            "sample_0002.png",
        ] {
            decode(&out.join(f));
        }
        let m = json(&out.join("metrics.json"));
        assert_eq!(m["samples"].as_array().unwrap().len(), 3, "{task}");
        for key in ["psnr", "psnr_minmax", "ssim"] {
            assert!(m["mean"][key].is_number(), "{task} {key}");
            assert!(
                m["measurement"][key].is_number() || task == "denoise",
                "{task} {key}"
            );
        }
        assert!(m["std_png_scale"].as_f64().unwrap() > 0.0);
        assert_eq!(json(&out.join("run.json"))["command"], "restore");
        if task == "sr4" {
            assert_eq!(decode(&out.join("measurement.png")).width(), 2);
        }
    }

    // A folder input restores every image into its own sub-folder.
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    test_png(&images.join("a.png"), 8, false);
    test_png(&images.join("b.png"), 8, false);
    let out = dir.join("restore-folder");
    let mut args = with(&["restore"], GAUSS);
    args.extend(with(
        &[],
        &[
            "--task",
            "denoise",
            "--input",
            &s(&images),
            "--steps",
            "5",
            "--n",
            "2",
            "--quiet",
            "--out",
            &s(&out),
        ],
    ));
    run_owned(&args);
    assert!(out.join("a/metrics.json").exists() && out.join("b/mean.png").exists());

    let y = dir.join("y.safetensors");
    ok(&[
        "measure",
        "--task",
        "inpaint",
        "--input",
        &s(&gt),
        "--sigma-y",
        "0.1",
        "--seed",
        "4",
        "--out",
        &s(&y),
    ]);
    decode(&dir.join("y.png"));
    let out = dir.join("restore-measurement");
    let mut args = with(&["restore"], GAUSS);
    args.extend(with(
        &[],
        &[
            "--measurement",
            &s(&y),
            "--steps",
            "5",
            "--n",
            "2",
            "--quiet",
            "--out",
            &s(&out),
        ],
    ));
    run_owned(&args);
    assert!(
        json(&out.join("metrics.json"))["samples"].is_null(),
        "no ground truth, no PSNR"
    );

    let mut args = with(&["denoise"], GAUSS);
    args.extend(with(
        &[],
        &[
            "--sigma",
            "0.3",
            "--add-noise",
            &s(&gt),
            &s(&dir.join("d.png")),
        ],
    ));
    run_owned(&args);
    assert_eq!(decode(&dir.join("d.png")).width(), 8);

    let plot = dir.join("plan.png");
    let out = ok(&[
        "schedule",
        "--kind",
        "vp",
        "--preset",
        "vp-uncond-sigmoid",
        "--plot",
        &s(&plot),
    ]);
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(csv.lines().count(), 101, "header + K = 100 rows");
    assert!(csv
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("0,157.40728081040757,"));
    assert_eq!(decode(&plot).width(), 800);
}

fn sample_dir(dir: &Path, name: &str, extra: &[&str]) -> Vec<(String, Vec<u8>)> {
    let out = dir.join(name);
    let mut args = with(&["sample"], GAUSS);
    args.extend(with(
        &[],
        &["--steps", "15", "--n", "5", "--quiet", "--out", &s(&out)],
    ));
    args.extend(with(&[], extra));
    run_owned(&args);
    files(&out)
}

#[test]
fn same_seed_same_files_whatever_the_batch_and_threads() {
    let dir = scratch("determinism");
    let a = sample_dir(
        &dir,
        "a",
        &["--seed", "7", "--batch", "1", "--threads", "1"],
    );
    let b = sample_dir(
        &dir,
        "b",
        &["--seed", "7", "--batch", "4", "--threads", "2"],
    );
    let c = sample_dir(
        &dir,
        "c",
        &["--seed", "7", "--batch", "2", "--threads", "2"],
    );
    assert_eq!(a.len(), 7, "5 samples, grid, samples.safetensors");
    assert_eq!(a, b);
    assert_eq!(a, c);
    let d = sample_dir(&dir, "d", &["--seed", "8"]);
    assert_ne!(a, d, "another seed gives other samples");

    let gt = dir.join("gt.png");
    test_png(&gt, 8, false);
    let restore = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut args = with(&["restore"], GAUSS);
        args.extend(with(
            &[],
            &[
                "--task",
                "sr4",
                "--input",
                &s(&gt),
                "--steps",
                "10",
                "--n",
                "4",
                "--seed",
                "3",
                "--quiet",
                "--out",
                &s(&out),
            ],
        ));
        args.extend(with(&[], extra));
        run_owned(&args);
        files(&out)
    };
    assert_eq!(
        restore("r1", &["--batch", "1", "--threads", "1"]),
        restore("r4", &["--batch", "4", "--threads", "2"])
    );
}

/// The golden ADM network through the command line (needs the ADM forward pass).
#[test]
fn adm_small_samples_deterministically() {
    let dir = scratch("adm");
    let net = [
        "--weights",
        &golden("weights.safetensors"),
        "--config",
        &golden("config.json"),
        "--kind",
        "vp",
        "--net-output",
        "eps",
        "--noise-input",
        "t",
    ]
    .map(String::from);
    let run = |name: &str, extra: &[&str]| -> Vec<(String, Vec<u8>)> {
        let out = dir.join(name);
        let mut args = vec!["sample".to_string()];
        args.extend(net.iter().cloned());
        args.extend(with(
            &[],
            &[
                "--preset",
                "vp-uncond-sigmoid",
                "--steps",
                "3",
                "--n",
                "2",
                "--seed",
                "1",
                "--quiet",
                "--out",
                &s(&out),
            ],
        ));
        args.extend(with(&[], extra));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = host(&refs);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        files(&out)
    };
    let a = run("a", &["--batch", "1", "--threads", "1"]);
    let b = run("b", &["--batch", "2", "--threads", "2"]);
    assert_eq!(a, b);
    assert!(json(&dir.join("a/run.json"))["model"]["parameters"].as_u64() == Some(1_371_974));
}

/// Exit code 2, exactly one `error: ` line containing `needle`.
fn assert_error(args: &[&str], needle: &str) {
    let out = host(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        errors.len() == 1 && errors[0].starts_with("error: "),
        "not one error line: {err}"
    );
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_one_clear_error_and_leaves_no_output() {
    let dir = scratch("errors");
    let out = dir.join("out");
    let o = s(&out);
    let gt = dir.join("gt.png");
    test_png(&gt, 8, false);
    let big = dir.join("big.png");
    test_png(&big, 12, false);
    let gray = dir.join("gray.png");
    test_png(&gray, 8, true);
    let text = dir.join("notes.png");
    std::fs::write(&text, b"this is not an image").unwrap();
    let weights = std::fs::read(golden("weights.safetensors")).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &weights[..weights.len() / 2]).unwrap();
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    let net_flags = ["--kind", "vp", "--net-output", "eps", "--noise-input", "t"];
    let sample = |extra: &[&str]| -> Vec<String> {
        let mut v = with(&["sample"], extra);
        v.extend(with(&[], &["--steps", "3", "--quiet", "--out", &o]));
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            sample(
                &[
                    &[
                        "--weights",
                        &s(&truncated),
                        "--config",
                        &golden("config.json"),
                    ][..],
                    &net_flags[..],
                ]
                .concat(),
            ),
            "is not a valid safetensors file",
        ),
        (
            sample(
                &[
                    &[
                        "--weights",
                        &s(&corrupt),
                        "--config",
                        &golden("config.json"),
                    ][..],
                    &net_flags[..],
                ]
                .concat(),
            ),
            "is not a valid safetensors file",
        ),
        (
            sample(
                &[
                    &[
                        "--weights",
                        &golden("weights.safetensors"),
                        "--config",
                        "adm-ffhq256",
                    ][..],
                    &net_flags[..],
                ]
                .concat(),
            ),
            "weights do not match the model config",
        ),
        (
            sample(&[
                "--weights",
                &golden("weights.safetensors"),
                "--config",
                &golden("config.json"),
            ]),
            "pass --kind",
        ),
        (
            sample(&[
                "--weights",
                &golden("weights.safetensors"),
                "--config",
                "ncsnpp-ffhq256",
                "--kind",
                "ve",
                "--net-output",
                "score",
                "--noise-input",
                "sigma",
            ]),
            "weights do not match the model config",
        ),
        (
            with(
                &[
                    "sample",
                    "--weights",
                    "gaussian:0,1",
                    "--steps",
                    "0",
                    "--out",
                ],
                &[&o],
            ),
            "--steps 0",
        ),
        (sample(&["--weights", "gaussian:0,-1"]), "STD"),
        (
            with(
                &[
                    "sample",
                    "--weights",
                    "gaussian:0,1",
                    "--steps",
                    "3",
                    "--out",
                ],
                &[&s(&dir.join("missing/out"))],
            ),
            "does not exist",
        ),
        (
            with(
                &[
                    "restore",
                    "--weights",
                    "gaussian:0,1",
                    "--task",
                    "denoise",
                    "--out",
                    &o,
                    "--input",
                ],
                &[&s(&text)],
            ),
            "is not a readable PNG or JPEG image",
        ),
        (
            with(
                &[
                    "restore",
                    "--weights",
                    "gaussian:0,1",
                    "--task",
                    "denoise",
                    "--out",
                    &o,
                    "--input",
                ],
                &[&s(&big)],
            ),
            "pass --resize",
        ),
        (
            with(
                &[
                    "restore",
                    "--weights",
                    "gaussian:0,1",
                    "--task",
                    "denoise",
                    "--out",
                    &o,
                    "--input",
                ],
                &[&s(&gray)],
            ),
            "pass --resize",
        ),
        (
            with(
                &[
                    "restore",
                    "--weights",
                    "gaussian:0,1",
                    "--task",
                    "denoise",
                    "--sigma-y",
                    "0",
                    "--out",
                    &o,
                    "--input",
                ],
                &[&s(&gt)],
            ),
            "sigma_y > 0",
        ),
        (
            with(
                &["denoise", "--weights", "gaussian:0,1", "--sigma", "0"],
                &[&s(&gt), &s(&dir.join("d.png"))],
            ),
            "--sigma 0",
        ),
        (
            with(
                &["denoise", "--weights", "gaussian:0,1", "--sigma", "-1"],
                &[&s(&gt), &s(&dir.join("d.png"))],
            ),
            "--sigma -1",
        ),
        (
            with(
                &["denoise", "--weights", "gaussian:0,1", "--sigma", "1"],
                &[&s(&gt), &s(&dir.join("nope/d.png"))],
            ),
            "does not exist",
        ),
        (
            with(
                &["measure", "--task", "sr4", "--input", &s(&gt), "--out"],
                &[&s(&dir.join("nope/y.safetensors"))],
            ),
            "does not exist",
        ),
        (
            with(
                &[
                    "measure",
                    "--task",
                    "sr4",
                    "--sigma-y",
                    "-1",
                    "--input",
                    &s(&gt),
                    "--out",
                ],
                &[&s(&dir.join("y.safetensors"))],
            ),
            "--sigma-y -1",
        ),
        (
            with(
                &[
                    "sample",
                    "--weights",
                    "gaussian:0,0.5",
                    "--kind",
                    "ve",
                    "--c",
                    "50",
                    "--steps",
                    "60",
                    "--n",
                    "3",
                    "--quiet",
                    "--out",
                ],
                &[&o],
            ),
            "NaN/Inf at step 21 in chain 0",
        ),
        (
            with(&["schedule", "--kind", "ve", "--steps", "0"], &[]),
            "--steps 0",
        ),
    ];
    for (args, needle) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_error(&refs, needle);
        assert!(!out.exists(), "{args:?} left {}", out.display());
        assert!(!dir.join("d.png").exists() && !dir.join("y.safetensors").exists());
    }
    // The resize flag makes the other sizes and channel counts acceptable.
    for input in [&big, &gray] {
        ok(&[
            "restore",
            "--weights",
            "gaussian:0,1",
            "--task",
            "denoise",
            "--resize",
            "--steps",
            "3",
            "--quiet",
            "--input",
            &s(input),
            "--out",
            &o,
        ]);
        assert_eq!(decode(&out.join("mean.png")).width(), 8);
        std::fs::remove_dir_all(&out).unwrap();
    }
}
