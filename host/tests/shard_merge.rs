//! `--shard I/N` and `host merge` end to end: for sample, restore (a folder of images, and one
//! image split by chains), evaluate restoration and evaluate posterior, the merged folder holds exactly the files
//! of the single run, byte for byte, except run.json (evaluate: the table's run fields), which
//! is equal after removing `timings`, `arguments.{out, shard, threads, batch, quiet}` and the
//! added `shards` list. Merge refuses missing, duplicated and foreign shards by name and never
//! touches a shard folder.
//!
//! The closed-form Gaussian prior stands in for a network (fast in debug builds), except one
//! sampling case with the bundled ADM model.

mod common;
use common::{host, ok, s, scratch_in};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tweedie_nn::data::idx::{encode, MAGIC_IMAGES, MAGIC_LABELS};
use tweedie_nn::data::MnistSplit;

fn scratch(name: &str) -> PathBuf {
    scratch_in("shard_merge", name)
}

const GAUSSIAN: [&str; 8] = [
    "--weights",
    "gaussian:0,0.5",
    "--kind",
    "vp",
    "--size",
    "8",
    "--channels",
    "1",
];

/// Every file under `dir` (relative path → bytes).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// run.json without what may differ between a single and a merged run.
fn comparable(run: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(run).unwrap();
    let m = v.as_object_mut().unwrap();
    assert!(m.remove("timings").is_some(), "run.json has timings");
    m.remove("shards");
    fn strip(v: &mut Value) {
        if let Value::Object(map) = v {
            for k in ["out", "shard", "threads", "batch", "quiet"] {
                map.remove(k);
            }
            map.values_mut().for_each(strip);
        }
    }
    strip(m.get_mut("arguments").unwrap());
    v
}

/// The merged folder equals the single one: same files, same bytes but for run.json.
fn assert_same_run(single: &Path, merged: &Path) {
    let (a, b) = (files(single), files(merged));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same files"
    );
    for (rel, bytes) in &a {
        if rel.file_name().unwrap() == "run.json" {
            let merged_run: Value = serde_json::from_slice(&b[rel]).unwrap();
            assert!(merged_run["shards"].is_array(), "{rel:?}: shards list");
            assert_eq!(comparable(bytes), comparable(&b[rel]), "{rel:?}");
        } else {
            assert!(bytes == &b[rel], "{rel:?} differs");
        }
    }
}

fn run_shards(base: &[&str], dir: &Path, n: usize, batch: &str) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let part = s(&dir.join(format!("part{i}")));
            let shard = format!("{i}/{n}");
            let mut args = base.to_vec();
            args.extend([
                "--shard", &shard, "--out", &part, "--batch", batch, "--quiet",
            ]);
            ok(&args);
            part
        })
        .collect()
}

/// Merges `parts` into `out` and asserts that the merge succeeded (`label` names the case).
fn merge_ok(out: &Path, parts: &[String], label: &str) {
    let r = merge(out, parts);
    assert!(
        r.status.success(),
        "{label}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

fn merge(out: &Path, parts: &[String]) -> std::process::Output {
    let o = s(out);
    let mut args = vec!["merge", "--out", &o, "--quiet"];
    args.extend(parts.iter().map(String::as_str));
    host(&args)
}

#[test]
fn sample_merges_to_the_single_run_for_every_n() {
    let dir = scratch("sample");
    let mut base = vec!["sample"];
    base.extend(GAUSSIAN);
    base.extend([
        "--schedule",
        "geometric",
        "--steps",
        "4",
        "--c",
        "0.3",
        "--n",
        "5",
        "--seed",
        "9",
    ]);
    let single = dir.join("single");
    let mut args = base.clone();
    let out = s(&single);
    args.extend(["--out", &out, "--quiet"]);
    ok(&args);
    // N from 1 to more than the work: empty shards merge too.
    for n in 1..=7 {
        let d = dir.join(format!("n{n}"));
        let parts = run_shards(&base, &d, n, if n % 2 == 0 { "1" } else { "3" });
        let merged = d.join("merged");
        let r = merge(&merged, &parts);
        assert!(
            r.status.success(),
            "N {n}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_same_run(&single, &merged);
    }
}

#[test]
fn sample_with_the_bundled_network_merges_bit_for_bit() {
    let dir = scratch("bundled");
    let base = ["sample", "--steps", "3", "--n", "3", "--seed", "1"];
    let single = s(&dir.join("single"));
    let mut args = base.to_vec();
    args.extend(["--out", &single, "--quiet"]);
    ok(&args);
    let parts = run_shards(&base, &dir, 2, "1");
    let merged = dir.join("merged");
    merge_ok(&merged, &parts, "default weights");
    assert_same_run(&dir.join("single"), &merged);
    // The same model named another way, on the backend `auto` resolves to, is the same run
    // where that backend is the CPU: its shard merges with the default's.
    let spelled = s(&dir.join("part1-spelled"));
    let mut args = base.to_vec();
    args.extend(["--weights", "bundled:mnist-vp", "--device", "auto"]);
    args.extend([
        "--shard", "1/2", "--out", &spelled, "--batch", "1", "--quiet",
    ]);
    ok(&args);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("part1-spelled/shard.json")).unwrap())
            .unwrap();
    let both = [parts[0].clone(), spelled];
    let merged = dir.join("merged-spelled");
    if manifest["bits"]["backend"] == "cpu" {
        merge_ok(&merged, &both, "bundled:mnist-vp, --device auto");
        assert_same_run(&dir.join("single"), &merged);
    } else {
        let r = merge(&merged, &both);
        assert_eq!(r.status.code(), Some(2), "a GPU shard is another bit class");
    }
}

/// Five 8×8 gray PNGs from a Gaussian sample run, as restore inputs.
fn input_images(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    let mut args = vec!["sample"];
    args.extend(GAUSSIAN);
    let out = s(&src);
    args.extend([
        "--steps", "2", "--n", "5", "--seed", "2", "--out", &out, "--quiet",
    ]);
    ok(&args);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..5 {
        let name = format!("sample_{i:04}.png");
        std::fs::copy(src.join(&name), images.join(format!("digit{i}.png"))).unwrap();
    }
    images
}

#[test]
fn restore_of_a_folder_and_of_one_image_merge_to_the_single_run() {
    let dir = scratch("restore");
    let images = input_images(&dir);
    let (img_dir, one) = (s(&images), s(&images.join("digit3.png")));
    for (label, input, task, n_shards) in [
        ("folder", img_dir.as_str(), "inpaint", 3),
        ("folder_more_shards", img_dir.as_str(), "sr4", 7),
        ("one", one.as_str(), "inpaint", 4),
        ("one_denoise", one.as_str(), "denoise", 9),
    ] {
        let d = dir.join(label);
        std::fs::create_dir_all(&d).unwrap();
        let mut base = vec!["restore"];
        base.extend(GAUSSIAN);
        base.extend([
            "--task", task, "--input", input, "--steps", "3", "--n", "6", "--seed", "4",
        ]);
        let single = s(&d.join("single"));
        let mut args = base.clone();
        args.extend(["--out", &single, "--quiet"]);
        ok(&args);
        let parts = run_shards(&base, &d, n_shards, "2");
        let before: Vec<_> = parts.iter().map(|p| files(Path::new(p))).collect();
        let merged = d.join("merged");
        merge_ok(&merged, &parts, label);
        assert_same_run(&d.join("single"), &merged);
        let after: Vec<_> = parts.iter().map(|p| files(Path::new(p))).collect();
        assert!(
            before == after,
            "{label}: merge left the shard folders as they were"
        );
    }
}

/// One `error:` line and exit 2 from `args`; returns the line.
fn refused(args: &[&str]) -> String {
    let r = host(args);
    let e = String::from_utf8_lossy(&r.stderr).to_string();
    assert_eq!(r.status.code(), Some(2), "{args:?}: {e}");
    assert!(e.starts_with("error: ") && e.lines().count() == 1, "{e}");
    e
}

/// An image's results go to the folder named by its file name without the extension: a name
/// that would leave `--out` (`...png` → `..`) or that two images share is refused, and merge
/// names the folders from the run's inputs, not from a shard's own (editable) list.
#[test]
fn image_folder_names_never_leave_out_nor_collide() {
    let dir = scratch("names");
    let images = input_images(&dir);
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("grid.png"), "mine").unwrap();
    let out = s(&project.join("results"));
    let restore = |input: &Path| {
        let mut args = vec!["restore"];
        args.extend(GAUSSIAN);
        let input = s(input);
        args.extend([
            "--task", "inpaint", "--steps", "2", "--n", "1", "--input", &input,
        ]);
        args.extend(["--out", &out, "--quiet"]);
        refused(&args)
    };
    let cases = [
        ("...png", "\"..\""),
        ("..png", "\".\""),
        ("x.PNG", "\"x\""),
        ("a\nb.png", "\"a\\nb\""),
        ("shard.json.png", "\"shard.json\""),
    ];
    for (bad, wanted) in cases {
        let input = dir.join(format!("in-{bad}"));
        std::fs::create_dir_all(&input).unwrap();
        std::fs::copy(images.join("digit0.png"), input.join(bad)).unwrap();
        std::fs::copy(images.join("digit1.png"), input.join("x.png")).unwrap();
        let e = restore(&input);
        let shown = bad.replace('\n', "\\n"); // one error line: a newline is written \n
        assert!(e.contains(&shown) && e.contains(wanted), "{bad}: {e}");
        assert_eq!(std::fs::read(project.join("grid.png")).unwrap(), b"mine");
        assert!(
            !project.join("results").exists(),
            "{bad}: a refused run writes nothing"
        );
    }

    // A folder run in 2 shards; shard 1's manifest then names its images "../evil".
    let mut base = vec!["restore"];
    base.extend(GAUSSIAN);
    let img = s(&images);
    base.extend([
        "--task", "inpaint", "--input", &img, "--steps", "2", "--n", "2",
    ]);
    let parts = run_shards(&base, &dir.join("shards"), 2, "2");
    let manifest = Path::new(&parts[1]).join("shard.json");
    let original = std::fs::read(&manifest).unwrap();
    let mut m: Value = serde_json::from_slice(&original).unwrap();
    let names = m["names"].as_array_mut().unwrap();
    names[0] = Value::from("../evil");
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let merged = s(&dir.join("merged"));
    let mut args = vec!["merge", "--out", &merged, "--quiet"];
    args.extend(parts.iter().map(String::as_str));
    let e = refused(&args);
    assert!(e.contains("not those of its inputs"), "{e}");
    assert!(!dir.join("merged").exists() && !dir.join("shards/evil").exists());
    // A file its manifest does not list is not copied into the merged run.
    std::fs::write(&manifest, &original).unwrap();
    let name = m["names"][1].as_str().unwrap().to_string();
    std::fs::write(Path::new(&parts[1]).join(&name).join("extra.txt"), "x").unwrap();
    let e = refused(&args);
    assert!(
        e.contains("extra.txt") && e.contains("does not list it"),
        "{e}"
    );
}

/// A folder output lists its files (`.host-files`), so a rerun replaces exactly a host run —
/// a restore of a folder and a merge too, which have no top-level run record — and refuses a
/// folder holding anything else, keeping it.
#[test]
fn reruns_replace_host_runs_and_keep_what_the_user_added() {
    let dir = scratch("rerun");
    let images = input_images(&dir);
    let mut base = vec!["restore"];
    base.extend(GAUSSIAN);
    let img = s(&images);
    base.extend([
        "--task", "inpaint", "--input", &img, "--steps", "2", "--n", "2",
    ]);
    let out = s(&dir.join("restored"));
    let mut single = base.clone();
    single.extend(["--out", &out, "--quiet"]);
    ok(&single);
    ok(&single);
    let parts = run_shards(&base, &dir.join("shards"), 2, "2");
    let merged = dir.join("merged");
    merge_ok(&merged, &parts, "first merge");
    merge_ok(&merged, &parts, "rerun of the merge");
    assert_same_run(Path::new(&out), &merged);
    std::fs::write(merged.join("notes.txt"), "mine").unwrap();
    let o = s(&merged);
    let mut args = vec!["merge", "--out", &o, "--quiet"];
    args.extend(parts.iter().map(String::as_str));
    let e = refused(&args);
    assert!(e.contains("notes.txt is in the way"), "{e}");
    assert_eq!(std::fs::read(merged.join("notes.txt")).unwrap(), b"mine");
}

fn fake_mnist(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut st = 7u64;
    let mut pixels = |n: usize| -> Vec<u8> {
        (0..n * 784)
            .map(|_| {
                st = st
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = (st >> 33) as u8;
                if v < 180 {
                    0
                } else {
                    v
                }
            })
            .collect()
    };
    for (split, n) in [(MnistSplit::Train, 40), (MnistSplit::Test, 14)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let [(images, _), (label_file, _)] = split.files();
        let idx = encode(MAGIC_IMAGES, &[n as u32, 28, 28], &pixels(n));
        std::fs::write(dir.join(images), idx).unwrap();
        std::fs::write(
            dir.join(label_file),
            encode(MAGIC_LABELS, &[n as u32], &labels),
        )
        .unwrap();
    }
}

/// The exact denoisers fitted to a folder's training split shard like a weights file (their
/// identity in the shard manifest is the folder's files).
#[test]
fn sample_with_data_fit_denoisers_merges_bit_for_bit() {
    let dir = scratch("data-fit");
    let data = dir.join("mnist");
    fake_mnist(&data);
    for kind in ["gaussian-fit", "gaussian-mixture-fit", "training-set"] {
        let weights = format!("{kind}:{}", s(&data));
        let base = [
            "sample",
            "--weights",
            &weights,
            "--preset",
            "vp-uncond-sigmoid",
            "--steps",
            "3",
            "--n",
            "3",
            "--seed",
            "2",
        ];
        let d = dir.join(kind);
        std::fs::create_dir_all(&d).unwrap();
        let single = s(&d.join("single"));
        let mut args = base.to_vec();
        args.extend(["--out", &single, "--quiet"]);
        ok(&args);
        let parts = run_shards(&base, &d, 2, "1");
        let merged = d.join("merged");
        merge_ok(&merged, &parts, kind);
        assert_same_run(&d.join("single"), &merged);
    }
}

#[test]
fn evaluate_restoration_merges_to_the_single_table_and_figure() {
    let dir = scratch("evaluate");
    let data = dir.join("mnist");
    fake_mnist(&data);
    let d = s(&data);
    let base: Vec<&str> = [
        "evaluate",
        "restoration",
        "--weights",
        "gaussian:0,0.5",
        "--kind",
    ]
    .into_iter()
    .chain(["vp", "--size", "32", "--channels", "1"])
    .chain([
        "--data",
        &d,
        "--task",
        "sr4",
        "--first",
        "1",
        "--count",
        "12",
        "--samples",
        "2",
        "--steps",
        "3",
        "--seed",
        "5",
    ])
    .collect();
    let (table, figure) = (s(&dir.join("single.json")), s(&dir.join("single.png")));
    let mut args = base.clone();
    args.extend(["--out", &table, "--figure", &figure, "--quiet"]);
    let single = ok(&args);
    let mut parts = Vec::new();
    for i in 0..5 {
        let part = s(&dir.join(format!("part{i}")));
        let shard = format!("{i}/5");
        let mut args = base.clone();
        args.extend([
            "--shard",
            &shard,
            "--out",
            &part,
            "--figure",
            "unused.png",
            "--quiet",
        ]);
        ok(&args);
        parts.push(part);
    }
    let merged = dir.join("merged");
    let r = merge(&merged, &parts);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(r.stdout, single.stdout, "the printed table");
    assert!(
        std::fs::read(&figure).unwrap() == std::fs::read(merged.join("figure.png")).unwrap(),
        "figure.png"
    );
    let strip = |p: &Path| {
        let mut v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        for k in ["arguments", "timings", "shards"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    assert_eq!(strip(Path::new(&table)), strip(&merged.join("table.json")));
}

/// `evaluate posterior` split by digits: the merge prints the single run's table and writes
/// its posterior.json (equal but for the run-only fields), with every digit's diagnosis.
#[test]
fn evaluate_posterior_merges_to_the_single_table() {
    let dir = scratch("posterior");
    let data = dir.join("mnist");
    fake_mnist(&data);
    let d = s(&data);
    let base: Vec<&str> = [
        "evaluate",
        "posterior",
        "--weights",
        "gaussian:0,0.5",
        "--kind",
    ]
    .into_iter()
    .chain(["vp", "--size", "32", "--channels", "1"])
    .chain([
        "--data",
        &d,
        "--task",
        "inpaint",
        "--first",
        "2",
        "--count",
        "5",
        "--samples",
        "2",
        "--steps",
        "3",
        "--seed",
        "9",
    ])
    .collect();
    let table = s(&dir.join("single.json"));
    let mut args = base.clone();
    args.extend(["--out", &table, "--quiet"]);
    let single = ok(&args);
    let mut parts = Vec::new();
    for i in 0..3 {
        let part = s(&dir.join(format!("part{i}")));
        let shard = format!("{i}/3");
        let mut args = base.clone();
        args.extend(["--shard", &shard, "--out", &part, "--quiet"]);
        ok(&args);
        parts.push(part);
    }
    let merged = dir.join("merged");
    let r = merge(&merged, &parts);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!single.stdout.is_empty());
    assert_eq!(r.stdout, single.stdout, "the printed table");
    let strip = |p: &Path| {
        let mut v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        for k in ["arguments", "timings", "shards"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    let merged_table = strip(&merged.join("posterior.json"));
    assert_eq!(strip(Path::new(&table)), merged_table);
    let indices: Vec<u64> = merged_table["digits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["test_index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [2, 3, 4, 5, 6]);
    // A shard needs a folder to write into, and the whole-table check belongs to one run.
    let mut no_out = base.clone();
    no_out.extend(["--shard", "0/3"]);
    let e = host(&no_out);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("--shard needs --out DIR"));
    let mut judged = base.clone();
    let other = s(&dir.join("judged"));
    judged.extend(["--shard", "0/3", "--out", &other, "--max-excess-db", "3"]);
    let e = host(&judged);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("judges the whole table"));
    assert!(!Path::new(&other).exists());
    // A digit record that names another digit is refused, even with its hash updated.
    let shard = Path::new(&parts[1]);
    let text = std::fs::read_to_string(shard.join("digits.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["digits"][0]["test_index"] = 12.into();
    let edited = serde_json::to_vec(&v).unwrap();
    std::fs::write(shard.join("digits.json"), &edited).unwrap();
    let manifest = shard.join("shard.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["files"]["digits.json"] = tweedie_nn::sha256::of_bytes(&edited).into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let again = dir.join("merged-again");
    let r = merge(&again, &parts);
    assert_eq!(r.status.code(), Some(2));
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(e.contains("is not test #3 with seed 10"), "{e}");
    assert!(!again.exists());
}

#[test]
fn merge_refuses_missing_duplicated_and_foreign_shards_by_name() {
    let dir = scratch("refusals");
    let mut base = vec!["sample"];
    base.extend(GAUSSIAN);
    base.extend(["--steps", "2", "--n", "6", "--seed", "3"]);
    let parts = run_shards(&base, &dir, 3, "2");
    let mut other = base.clone();
    let last = other.len() - 1;
    other[last] = "4";
    let foreign = run_shards(&other, &dir.join("other"), 3, "2");
    let err = |parts: &[String]| {
        let out = dir.join("merged");
        let r = merge(&out, parts);
        assert_eq!(r.status.code(), Some(2), "{parts:?}");
        assert!(!out.exists(), "a refused merge writes nothing");
        let e = String::from_utf8_lossy(&r.stderr).to_string();
        assert!(e.starts_with("error: ") && e.lines().count() == 1, "{e}");
        e
    };
    let e = err(&[parts[0].clone(), parts[2].clone()]);
    assert!(
        e.contains("shard(s) 1 of 3 missing") && e.contains("--array=1"),
        "{e}"
    );
    let e = err(&[
        parts[0].clone(),
        parts[1].clone(),
        parts[2].clone(),
        parts[1].clone(),
    ]);
    assert!(e.contains("are both shard 1/3"), "{e}");
    let e = err(&[parts[0].clone(), foreign[1].clone(), parts[2].clone()]);
    assert!(e.contains(&foreign[1]) && e.contains("foreign"), "{e}");
    assert!(
        e.contains("(--seed: 4 vs 3)"),
        "the differing flag is named: {e}"
    );
    let e = err(&[parts[0].clone(), s(&dir), parts[2].clone()]);
    assert!(e.contains("not a shard folder"), "{e}");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let e = err(&[parts[0].clone(), s(&file), parts[2].clone()]);
    assert!(e.contains("a-file: not a folder"), "{e}");
    let e = err(&[parts[0].clone(), s(&dir.join("gone")), parts[2].clone()]);
    assert!(e.contains("gone: no such shard folder"), "{e}");
    // A file changed after its shard wrote it (say, a rerun with other flags was killed
    // half-way): named, so that shard is rerun.
    let png = Path::new(&parts[2]).join("sample_0004.png");
    let mut bytes = std::fs::read(&png).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&png, bytes).unwrap();
    let e = err(&parts);
    assert!(
        e.contains("sample_0004.png: missing or changed since shard 2/3"),
        "{e}"
    );
    // Merging into a shard folder is refused before anything is written.
    let r = host(&["merge", "--out", &parts[0], &parts[0], &parts[1], &parts[2]]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("never writes into a shard"));
}

#[test]
fn auto_shards_take_the_index_from_slurm_or_kubernetes() {
    let dir = scratch("auto");
    let mut base: Vec<String> = vec!["sample".into()];
    base.extend(GAUSSIAN.map(String::from));
    base.extend(["--steps", "2", "--n", "4", "--quiet"].map(String::from));
    let run = |name: &str, shard: &str, var: Option<(&str, &str)>| {
        let out = dir.join(name);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_host"));
        cmd.args(&base)
            .args(["--shard", shard, "--out", &s(&out)])
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX");
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        (cmd.output().unwrap(), out)
    };
    let (fixed, fixed_dir) = run("fixed", "2/4", None);
    assert!(fixed.status.success());
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        let (r, out) = run(var, "auto/4", Some((var, "2")));
        assert!(r.status.success(), "{var}");
        let (a, b) = (files(&fixed_dir), files(&out));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (rel, bytes) in &a {
            if rel != Path::new("shard.json") {
                assert!(bytes == &b[rel], "{var}: {rel:?}");
            }
        }
        let m: Value = serde_json::from_slice(&b[Path::new("shard.json")]).unwrap();
        assert_eq!(m["shard"], serde_json::json!({"index": 2, "count": 4}));
        let (r, _) = run("big", "auto/4", Some((var, "4")));
        let e = String::from_utf8_lossy(&r.stderr);
        assert!(
            r.status.code() == Some(2) && e.contains(&format!("{var}=4")),
            "{e}"
        );
    }
    let (r, _) = run("none", "auto/4", None);
    assert_eq!(r.status.code(), Some(2));
    let mut snap = base.clone();
    snap.extend(["--snapshot-every", "1", "--shard", "0/2", "--out"].map(String::from));
    snap.push(s(&dir.join("snap")));
    let r = host(&snap.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--snapshot-every with --shard"));
}

/// deploy/k8s/indexed-job.yaml, parsed as YAML: an Indexed Job of N pods whose container runs
/// `host sample --shard auto/N` with the index Kubernetes sets, then a Job running `host merge`
/// on all N shard folders.
#[test]
fn the_kubernetes_manifest_is_an_indexed_job_running_shard_and_merge() {
    use yaml_rust2::{Yaml, YamlLoader};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/k8s/indexed-job.yaml"
    );
    let docs = YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(docs.len(), 2, "two Jobs: the shards, then the merge");
    for d in &docs {
        assert_eq!(d["apiVersion"].as_str(), Some("batch/v1"));
        assert_eq!(d["kind"].as_str(), Some("Job"));
    }
    // The container's command line, as the shell gets it.
    let command = |job: &Yaml| -> String {
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        let words = |v: &Yaml| -> Vec<String> {
            v.as_vec()
                .map(|a| {
                    a.iter()
                        .filter_map(|w| w.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut all = words(&c["command"]);
        all.extend(words(&c["args"]));
        all.join(" ")
    };
    let (shards, merge) = (&docs[0], &docs[1]);
    assert_eq!(shards["spec"]["completionMode"].as_str(), Some("Indexed"));
    let n = shards["spec"]["completions"].as_i64().expect("completions");
    assert!(n >= 2);
    assert_eq!(shards["spec"]["parallelism"].as_i64(), Some(n));
    let run = command(shards);
    assert!(run.contains("host sample"), "{run}");
    assert!(
        run.contains(&format!("--shard auto/{n}")),
        "{run}: N = completions"
    );
    assert!(run.contains("${JOB_COMPLETION_INDEX}"), "{run}");
    let join = command(merge);
    assert!(join.contains("host merge --out"), "{join}");
    for i in 0..n {
        assert!(
            join.contains(&format!("/data/parts/{i}")),
            "{join}: shard {i}"
        );
    }
    // The index variable is the one `--shard auto/N` reads.
    assert!(tweedie_host::run::shard::INDEX_VARIABLES.contains(&"JOB_COMPLETION_INDEX"));
}
