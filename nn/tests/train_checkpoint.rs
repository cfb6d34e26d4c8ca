//! Checkpoint files are read strictly: every tampered variant of a valid checkpoint is a
//! clear error naming what is wrong (the integrity hash catches any change to a format-2 file;
//! the structural checks are exercised on format-1 files, which carry no hash); writes are
//! atomic and leave no temporary file.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tweedie_nn::data::DataOrder;
use tweedie_nn::tensors::SafetensorsFile;
use tweedie_nn::train::checkpoint::{export_weights, write_atomic, Integrity, TrainState};
use tweedie_nn::train::ema::Ema;
use tweedie_nn::train::optim::{AdamW, AdamWConfig};
use tweedie_nn::train::params::ParamLayout;

fn layout() -> ParamLayout {
    ParamLayout::new([("w", vec![2, 3]), ("b", vec![2])]).unwrap()
}

fn state() -> TrainState {
    let params: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    let mut optimizer = AdamW::new(AdamWConfig::default(), 8).unwrap();
    let mut p = params.clone();
    optimizer.step(&mut p, &[0.5; 8], 1e-3).unwrap();
    let mut data = DataOrder::new(5, 3).unwrap();
    data.next_batch(&mut [0; 7]).unwrap();
    TrainState {
        step: 1,
        ema: Ema::new(0.999, &params).unwrap(),
        params: p,
        optimizer,
        data,
        metadata: BTreeMap::from([("tweedie.train".into(), "{}".into())]),
    }
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("tweedie-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrites a valid checkpoint as format 1 (no hash) with `edit` applied to its tensors and
/// metadata, then loads it.
fn load_edited(tag: &str, edit: impl Fn(&mut Tensors, &mut HashMap<String, String>)) -> String {
    load_rewritten(tag, |t, m| {
        m.remove("tweedie.sha256");
        m.insert("tweedie.checkpoint".into(), "1".into());
        edit(t, m)
    })
}

/// Rewrites a valid checkpoint with `edit` applied to its tensors and metadata, then loads it.
fn load_rewritten(tag: &str, edit: impl Fn(&mut Tensors, &mut HashMap<String, String>)) -> String {
    let path = dir().join(format!("{tag}.safetensors"));
    state().save(&path, &layout()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Tensors = st
        .iter()
        .map(|(n, t)| {
            (
                n.to_string(),
                t.dtype(),
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
        .collect();
    let mut meta = SafetensorsFile::open(&path).unwrap().metadata().unwrap();
    edit(&mut tensors, &mut meta);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    match TrainState::load(&path, &layout(), 5) {
        Ok(_) => panic!("{tag}: tampered checkpoint was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn round_trip_and_atomic_write() {
    // Its own folder: the other tests write checkpoints concurrently.
    let own = dir().join("atomic");
    std::fs::create_dir_all(&own).unwrap();
    let path = own.join("ok.safetensors");
    let s = state();
    s.save(&path, &layout()).unwrap();
    s.save(&path, &layout()).unwrap(); // overwriting is fine
    assert_eq!(
        TrainState::load(&path, &layout(), 5).unwrap(),
        (s.clone(), Integrity::Verified)
    );
    // One byte form: the same state writes the same bytes (sorted header keys).
    let bytes = std::fs::read(&path).unwrap();
    s.save(&path, &layout()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let leftovers: Vec<_> = std::fs::read_dir(&own)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Writing into a missing folder fails cleanly.
    assert!(write_atomic(&dir().join("no/such/file"), b"x").is_err());
}

#[test]
fn tampered_checkpoints_are_refused() {
    let e = load_edited("missing", |t, _| t.retain(|x| x.0 != "ema.b"));
    assert!(e.contains("missing tensor `ema.b`"), "{e}");
    let e = load_edited("extra", |t, _| {
        t.push(("junk".into(), Dtype::F32, vec![1], vec![0; 4]))
    });
    assert!(e.contains("unexpected tensors: junk"), "{e}");
    let e = load_edited("shape", |t, _| {
        t.iter_mut().find(|x| x.0 == "model.w").unwrap().2 = vec![3, 2]
    });
    assert!(
        e.contains("`model.w`") && e.contains("expected F32 [2, 3]"),
        "{e}"
    );
    let e = load_edited("dtype", |t, _| {
        let x = t.iter_mut().find(|x| x.0 == "exp_avg.b").unwrap();
        (x.1, x.3) = (Dtype::F64, vec![0; 16]);
    });
    assert!(e.contains("`exp_avg.b` is F64"), "{e}");
    let e = load_edited("nokey", |_, m| {
        m.remove("tweedie.step");
    });
    assert!(e.contains("`tweedie.step` is missing"), "{e}");
    let e = load_edited("badvalue", |_, m| {
        m.insert("tweedie.adam.steps".into(), "-3".into());
    });
    assert!(e.contains("tweedie.adam.steps"), "{e}");
    let e = load_edited("betas", |_, m| {
        m.insert("tweedie.adam.betas".into(), "0.9".into());
    });
    assert!(e.contains("b1,b2"), "{e}");
    let e = load_edited("position", |_, m| {
        m.insert("tweedie.data.position".into(), "5".into());
    });
    assert!(e.contains("data position 5 out of range"), "{e}");
    let e = load_edited("format", |_, m| {
        m.insert("tweedie.checkpoint".into(), "3".into());
    });
    assert!(e.contains("format 3"), "{e}");
    let e = load_edited("steps", |_, m| {
        m.insert("tweedie.step".into(), "2".into());
    });
    assert!(
        e.contains("`tweedie.step` = 2 but `tweedie.adam.steps` = 1"),
        "{e}"
    );
    let nan = f32::NAN.to_le_bytes().to_vec();
    for (tag, tensor) in [("nan-ema", "ema.w"), ("nan-moment", "exp_avg_sq.b")] {
        let e = load_edited(tag, |t, _| {
            t.iter_mut().find(|x| x.0 == tensor).unwrap().3[4..8].copy_from_slice(&nan);
        });
        assert!(
            e.contains(&format!("`{tensor}` holds NaN at element 1")),
            "{e}"
        );
    }
    let e = load_edited("negative-moment", |t, _| {
        let x = t.iter_mut().find(|x| x.0 == "exp_avg_sq.w").unwrap();
        x.3[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
    });
    assert!(e.contains("`exp_avg_sq.w` holds -1 at element 0"), "{e}");
    let e = load_edited("decay", |_, m| {
        m.insert("tweedie.ema.decay".into(), "2".into());
    });
    assert!(e.contains("EMA"), "{e}");
}

/// Format 2: one flipped bit in any tensor, or any edited metadata value, fails the hash.
#[test]
fn integrity_hash_catches_bit_flips_and_edits() {
    for tensor in ["model.w", "ema.b", "exp_avg.w", "exp_avg_sq.b"] {
        let e = load_rewritten(&format!("flip-{tensor}"), |t, _| {
            t.iter_mut().find(|x| x.0 == tensor).unwrap().3[1] ^= 0x10;
        });
        assert!(e.contains("integrity check failed"), "{tensor}: {e}");
    }
    for (key, value) in [
        ("tweedie.step", "0"),
        ("tweedie.adam.steps", "7"),
        ("tweedie.train", "{\"lr\":1}"),
    ] {
        let e = load_rewritten(&format!("edit-{key}"), |_, m| {
            m.insert(key.into(), value.into());
        });
        assert!(e.contains("integrity check failed"), "{key}: {e}");
    }
    let e = load_rewritten("no-hash", |_, m| {
        m.remove("tweedie.sha256");
    });
    assert!(e.contains("`tweedie.sha256` is missing"), "{e}");
}

/// A format-1 file (the committed checkpoints) loads unverified, with the same state.
#[test]
fn format_1_loads_unverified() {
    let path = dir().join("v1.safetensors");
    state().save(&path, &layout()).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    let mut meta = file.metadata().unwrap();
    meta.remove("tweedie.sha256");
    meta.insert("tweedie.checkpoint".into(), "1".into());
    let st = file.view().unwrap();
    let views: Vec<(String, TensorView<'_>)> = st.iter().map(|(n, t)| (n.to_string(), t)).collect();
    std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    assert_eq!(
        TrainState::load(&path, &layout(), 5).unwrap(),
        (state(), Integrity::Unverified)
    );
}

#[test]
fn wrong_files_and_layouts_are_refused() {
    let path = dir().join("layout.safetensors");
    state().save(&path, &layout()).unwrap();
    let other = ParamLayout::new([("w", vec![2, 3]), ("c", vec![2])]).unwrap();
    let e = format!("{:#}", TrainState::load(&path, &other, 5).unwrap_err());
    assert!(e.contains("unexpected tensors"), "{e}");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let e = format!("{:#}", TrainState::load(&path, &layout(), 5).unwrap_err());
    assert!(e.contains("not a valid safetensors file"), "{e}");
    assert!(TrainState::load(&dir().join("absent"), &layout(), 5).is_err());
    // Buffers that do not match the layout, or reserved metadata keys, are not saved.
    let mut bad = state();
    bad.params.pop();
    assert!(bad.save(&path, &layout()).is_err());
    let mut bad = state();
    bad.metadata.insert("tweedie.step".into(), "9".into());
    assert!(bad.save(&path, &layout()).is_err());
    // A state with NaN is not written (the file on disk stays the previous one).
    let before = std::fs::read(&path).unwrap();
    let mut bad = state();
    bad.params[3] = f32::NAN;
    let e = format!("{:#}", bad.save(&path, &layout()).unwrap_err());
    assert!(e.contains("the weights hold NaN at element 3"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // Another data set size: refused before the data order is rebuilt.
    state().save(&path, &layout()).unwrap();
    let e = format!("{:#}", TrainState::load(&path, &layout(), 6).unwrap_err());
    assert!(e.contains("covers 5 examples, the data set has 6"), "{e}");
}

#[test]
fn exported_weights_use_state_dict_names() {
    let path = dir().join("ema.safetensors");
    let s = state();
    let meta = BTreeMap::from([("tweedie.weights_set".to_string(), "ema".to_string())]);
    export_weights(&path, &layout(), s.ema.weights(), &meta).unwrap();
    let f = SafetensorsFile::open(&path).unwrap();
    let w = f.tensor_f32("w").unwrap();
    assert_eq!(w.shape, vec![2, 3]);
    assert_eq!(w.data, s.ema.weights()[..6].to_vec());
    assert_eq!(f.metadata().unwrap()["tweedie.weights_set"], "ema");
    assert!(export_weights(&path, &layout(), &[0.0; 3], &meta).is_err());
}

/// The fuzz seeds of `train_checkpoint` (written by fuzz/make_seeds.py in Python, from the
/// module docs' definition of the hash) load as intended: this pins the hash definition.
#[test]
fn fuzz_seeds_follow_the_documented_hash() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/train_checkpoint");
    let mut outcomes: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            match TrainState::load(&path, &layout(), 5) {
                Ok((s, integrity)) => format!("ok {integrity:?} step {}", s.step),
                Err(e) => {
                    let e = format!("{e:#}");
                    ["integrity check failed", "holds NaN", "`tweedie.step` = 4"]
                        .into_iter()
                        .find(|n| e.contains(n))
                        .unwrap_or(&e)
                        .to_string()
                }
            }
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            "`tweedie.step` = 4",
            "holds NaN",
            "integrity check failed",
            "ok Unverified step 3",
            "ok Verified step 3"
        ]
    );
}
