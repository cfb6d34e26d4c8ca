//! Fuzz corpus replay (issue 22): every committed input of every fuzz target (`fuzz/corpus/
//! <target>/`) runs through the target's own body (`fuzz/targets/<target>.rs`, the function the
//! libFuzzer binary calls), followed by seeded mutants of it (fixed seed and count), on the
//! stable toolchain. A crash, panic or hang fails CI; exploratory fuzzing (nightly, libFuzzer)
//! runs outside CI and adds its finds to the corpus. A corpus folder without a replay here is
//! an error, so a new target cannot be left out.

use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "../../fuzz/targets/checkpoint.rs"]
mod checkpoint;
#[path = "../../fuzz/targets/image.rs"]
mod image_target;
#[path = "../../fuzz/targets/pickle.rs"]
mod pickle;
#[path = "../../fuzz/targets/train_checkpoint.rs"]
mod train_checkpoint;
#[path = "../../fuzz/targets/weights.rs"]
mod weights;

/// A fuzz target's body.
type Body = fn(&[u8]);

/// The targets and their bodies.
const TARGETS: [(&str, Body); 5] = [
    ("checkpoint", checkpoint::run),
    ("image", image_target::run),
    ("pickle", pickle::run),
    ("train_checkpoint", train_checkpoint::run),
    ("weights", weights::run),
];

/// Mutants per corpus input, and their seed.
const MUTANTS: u64 = 4;
const SEED: u64 = 0x22;

fn corpus_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus"))
}

/// splitmix64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mutant `k` of `data`: byte flips, a truncation, or a duplicated span (as libFuzzer's
/// simplest mutators do), from a hash of the file name, so each run is the same.
fn mutant(data: &[u8], name: &str, k: u64) -> Vec<u8> {
    let mut h = name.bytes().fold(SEED, |h, b| mix(h ^ u64::from(b)));
    let mut next = || {
        h = mix(h ^ k);
        h
    };
    let mut out = data.to_vec();
    if out.is_empty() {
        return vec![next() as u8];
    }
    let at = |r: u64, len: usize| (r % len as u64) as usize;
    match k % 3 {
        0 => {
            for _ in 0..1 + next() % 4 {
                let i = at(next(), out.len());
                out[i] ^= 1 << (next() % 8);
            }
        }
        1 => out.truncate(at(next(), out.len())),
        _ => {
            let a = at(next(), out.len());
            let b = (a + 1 + at(next(), 64)).min(out.len());
            let span = out[a..b].to_vec();
            let i = at(next(), out.len());
            out.splice(i..i, span);
        }
    }
    out
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_corpus_input_and_its_mutants_replay_without_a_crash() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus_root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fuzz corpus");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some((_, run)) = TARGETS.iter().find(|(t, _)| *t == name) else {
            panic!("fuzz/corpus/{name} has no replay: add fuzz/targets/{name}.rs to TARGETS");
        };
        let start = Instant::now();
        let inputs = files(&dir);
        for path in &inputs {
            let data = std::fs::read(path).unwrap();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            run(&data);
            for k in 0..MUTANTS {
                run(&mutant(&data, &file, k));
            }
        }
        eprintln!(
            "{name}: {} inputs x {} runs in {:.1} s",
            inputs.len(),
            1 + MUTANTS,
            start.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn mutants_are_deterministic_and_differ_from_the_input() {
    let data = b"\x89PNG\r\n\x1a\n0123456789abcdef";
    for k in 0..MUTANTS {
        assert_eq!(mutant(data, "f", k), mutant(data, "f", k));
    }
    assert!((0..MUTANTS).any(|k| mutant(data, "f", k) != data));
}
