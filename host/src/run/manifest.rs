//! The manifest of a shard folder (`shard.json`): what the shard is (I/N, its global block of
//! units), what run it belongs to (the run.json of the single run, a hash of every argument
//! that changes results, the sha256 of the weights and of every input file) and what can
//! change its bits (backend, ISA class, convolution form, build). `host merge` accepts a set
//! of shards only when all of that agrees and the blocks tile the run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tweedie_nn::data::MnistSplit;
use tweedie_nn::sha256;

use super::output::json_bytes;
use super::output_policy::Outputs;
use super::shard::Shard;
use super::stream::ImageShape;

/// The manifest's file name in a shard folder.
pub const MANIFEST: &str = "shard.json";

/// The manifest format this build writes and reads.
/// (2: `--weights` and `--device` left the arguments hash for what they resolve to.)
pub const FORMAT: &str = "tweedie-shard/2";

/// Argument names that never change results (paths of outputs, the split, the speed knobs):
/// left out of [`arguments_hash`] wherever they occur in the arguments.
pub const NOT_RESULT_CHANGING: [&str; 6] = ["out", "shard", "threads", "batch", "quiet", "ptx"];

/// Argument names recorded by what they resolve to, not by their text: `--weights` by the
/// weights' sha256 (the default and `bundled:mnist-vp` are one model), `--device` by the backend
/// that ran (`auto` on a machine without a GPU is `cpu`). Left out of [`arguments_hash`] too,
/// as leaves (not a flag group of the same name).
pub const RECORDED_RESOLVED: [&str; 2] = ["weights", "device"];

/// One input file and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// The path as given.
    pub path: String,
    /// sha256, hex.
    pub sha256: String,
}

/// What can change the bits of a result besides the arguments and the inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitClass {
    /// The backend that ran the chains ("cpu" or "cuda").
    pub backend: String,
    /// The CPU instruction-set class of the convolution kernels (portable, AVX2+FMA, AVX-512).
    pub isa: String,
    /// How convolutions are formed (direct or Winograd, by the kernels' rule of this version).
    pub conv_form: String,
    /// The host version and profile.
    pub build: String,
}

/// The manifest of one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// "sample", "restore" or "evaluate restoration".
    pub command: String,
    /// I/N.
    pub shard: Shard,
    /// What is split: "chains", "images" or "digits".
    pub units: String,
    /// The number of units of the whole run.
    pub total: usize,
    /// This shard's global block [start, end).
    pub range: [usize; 2],
    /// sha256 of the result-changing arguments ([`arguments_hash`]).
    pub arguments_hash: String,
    /// sha256 of the weights (file, bundled bytes, or the `gaussian:` text).
    pub weights_sha256: String,
    /// sha256 of every input file, in a fixed order.
    pub inputs: Vec<InputFile>,
    /// Backend, ISA class, convolution form, build.
    pub bits: BitClass,
    /// The image every chain is ([`ImageShape::to_json`]).
    pub image: serde_json::Value,
    /// The names of this shard's images (restore with a folder), in global order.
    pub names: Vec<String>,
    /// Everything the single run writes to run.json (timings are this shard's).
    pub run: serde_json::Value,
    /// sha256 of every file of the shard folder but this manifest (path relative to it).
    pub files: BTreeMap<String, String>,
}

/// The `--weights` specs of the exact denoisers fitted to the MNIST training split in a folder
/// (`gaussian-fit:DIR` …): they name a folder, not a weights file.
pub const DATA_FIT_PREFIXES: [&str; 3] =
    ["gaussian-fit:", "gaussian-mixture-fit:", "training-set:"];

/// sha256 of what `--weights` names: the file, the bundled model's bytes, the spec text of a
/// closed-form prior, or for a data fit its kind and the training split's files.
pub fn weights_sha256(spec: Option<&str>) -> Result<String> {
    let spec = spec.unwrap_or("");
    let bundled = if spec.is_empty() {
        Some(crate::bundled::DEFAULT)
    } else {
        spec.strip_prefix(crate::bundled::PREFIX)
    };
    if let Some(name) = bundled {
        let model = crate::bundled::find(name)
            .with_context(|| format!("--weights {spec}: no bundled model {name}"))?;
        return Ok(sha256::of_bytes(model.bytes));
    }
    if spec.starts_with("gaussian:") {
        return Ok(sha256::of_bytes(spec.as_bytes()));
    }
    for prefix in DATA_FIT_PREFIXES {
        if let Some(dir) = spec.strip_prefix(prefix) {
            return data_fit_sha256(prefix, Path::new(dir))
                .with_context(|| format!("--weights {spec}"));
        }
    }
    sha256::of_file(Path::new(spec)).with_context(|| format!("--weights {spec}"))
}

/// sha256 of a data fit: its kind and the sha256 of each training-split file it is fitted to
/// (the folder's name does not matter, its contents do).
fn data_fit_sha256(prefix: &str, dir: &Path) -> Result<String> {
    let mut text = String::from(prefix);
    for (name, _) in MnistSplit::Train.files() {
        text += &format!("\n{name} {}", sha256::of_file(&dir.join(name))?);
    }
    Ok(sha256::of_bytes(text.as_bytes()))
}

/// The arguments without the [`NOT_RESULT_CHANGING`] and [`RECORDED_RESOLVED`] keys, at any
/// depth.
pub fn result_arguments(args: &serde_json::Value) -> serde_json::Value {
    match args {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .filter(|(k, v)| {
                    // A flag group may share a leaf's name (`device: {device, tensor_cores}`).
                    let resolved = RECORDED_RESOLVED.contains(&k.as_str()) && !v.is_object();
                    !NOT_RESULT_CHANGING.contains(&k.as_str()) && !resolved
                })
                .map(|(k, v)| (k.clone(), result_arguments(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// sha256 of the result-changing arguments, as JSON with sorted keys.
pub fn arguments_hash(args: &impl Serialize) -> Result<String> {
    let value = result_arguments(&serde_json::to_value(args)?);
    let sorted: BTreeMap<String, serde_json::Value> = match value {
        serde_json::Value::Object(m) => m.into_iter().collect(),
        other => [(String::new(), other)].into(),
    };
    Ok(sha256::of_bytes(serde_json::to_string(&sorted)?.as_bytes()))
}

/// The bit class of this process: the CPU backend with the kernels' ISA.
pub fn cpu_bit_class() -> BitClass {
    tweedie_nn::backend::enable_simd();
    let isa = tweedie_kernels::Isa::detected();
    BitClass {
        backend: "cpu".into(),
        isa: format!("{isa:?}"),
        conv_form: format!(
            "tweedie-kernels {} rule (direct GEMM or Winograd by map size)",
            env!("CARGO_PKG_VERSION")
        ),
        build: format!(
            "tweedie-host {} {}",
            env!("CARGO_PKG_VERSION"),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        ),
    }
}

/// What a shard's manifest records besides its arguments ([`Manifest::new`]).
pub struct ManifestParts<'a> {
    /// The subcommand (`sample`, `restore`, `evaluate restoration`).
    pub command: &'a str,
    /// Which shard of the run this is.
    pub shard: Shard,
    /// What the run is over and how many: `("chains", n)`, `("digits", count)`, ….
    pub units: (&'a str, usize),
    /// `--weights`, if given (its file is hashed).
    pub weights: Option<&'a str>,
    /// The input files (hashed).
    pub inputs: Vec<InputFile>,
    /// The backend that computed the bits (`cpu`, `cuda`, …).
    pub backend: &'a str,
    /// The run's run.json summary.
    pub run: serde_json::Value,
    /// The shape of the images written.
    pub image: ImageShape,
    /// The names of the units (inputs), when they have names.
    pub names: Vec<String>,
}

impl Manifest {
    /// The manifest of a shard run with these arguments.
    pub fn new(parts: ManifestParts, args: &impl Serialize) -> Result<Manifest> {
        let ManifestParts {
            command,
            shard,
            units,
            weights,
            inputs,
            backend,
            run,
            image,
            names,
        } = parts;
        let block = shard.block(units.1);
        let mut bits = cpu_bit_class();
        bits.backend = backend.to_string();
        Ok(Manifest {
            format: FORMAT.into(),
            command: command.into(),
            shard,
            units: units.0.into(),
            total: units.1,
            range: [block.start, block.end],
            arguments_hash: arguments_hash(args)?,
            weights_sha256: weights_sha256(weights)?,
            inputs,
            bits,
            image: image.to_json(),
            names,
            run,
            files: BTreeMap::new(),
        })
    }

    /// Records the sha256 of every file `out` wrote (call last, before writing the manifest).
    fn hash_files(&mut self, out: &Outputs) -> Result<()> {
        for rel in out.written_files() {
            let sha = sha256::of_file(&out.root().join(rel))?;
            self.files.insert(rel.to_string_lossy().into_owned(), sha);
        }
        Ok(())
    }

    /// Finishes shard folder `out`: records the sha256 of every file written to it, writes
    /// the manifest as its last file and commits the folder.
    pub fn seal(&mut self, mut out: Outputs) -> Result<()> {
        self.hash_files(&out)?;
        out.write(MANIFEST, &json_bytes(&serde_json::to_value(&*self)?)?)?;
        out.commit()
    }

    /// Checks that the files of shard folder `dir` are the ones this manifest recorded.
    pub fn verify_files(&self, dir: &Path) -> Result<()> {
        for (rel, sha) in &self.files {
            let path = dir.join(rel);
            if !path.is_file() || sha256::of_file(&path)? != *sha {
                bail!(
                    "{}: missing or changed since {} wrote it (rerun that shard)",
                    path.display(),
                    self.shard.label()
                );
            }
        }
        Ok(())
    }

    /// "chains 4..8 of 16", or "empty: no chains of 3 fall to it".
    pub fn describe_block(&self) -> String {
        if self.range[0] == self.range[1] {
            format!(
                "empty: none of the {} {} falls to it",
                self.total, self.units
            )
        } else {
            format!(
                "{} {}..{} of {}",
                self.units, self.range[0], self.range[1], self.total
            )
        }
    }

    /// The image shape of the run's chains.
    pub fn image_shape(&self) -> Result<ImageShape> {
        ImageShape::from_json(&self.image)
    }

    /// Reads `DIR/shard.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        if !dir.exists() {
            bail!(
                "{}: no such shard folder (did its job fail or not finish?)",
                dir.display()
            );
        }
        if !dir.is_dir() {
            bail!("{}: not a folder, so not a shard folder", dir.display());
        }
        let text = tweedie_nn::input::read_text(&path, "shard manifest").with_context(|| {
            format!(
                "{}: not a shard folder (no readable {MANIFEST})",
                dir.display()
            )
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid shard manifest", path.display()))?;
        if m.format != FORMAT {
            bail!(
                "{}: manifest format {:?}, this host reads {FORMAT:?}",
                path.display(),
                m.format
            );
        }
        Ok(m)
    }

    /// The global block as a range.
    pub fn block(&self) -> std::ops::Range<usize> {
        self.range[0]..self.range[1]
    }

    /// The first field in which `self` and `other` describe different runs, if any.
    fn differs_from(&self, other: &Manifest) -> Option<&'static str> {
        if self.command != other.command {
            Some("command")
        } else if self.shard.count != other.shard.count {
            Some("shard count N")
        } else if self.units != other.units || self.total != other.total {
            Some("number of units")
        } else if self.arguments_hash != other.arguments_hash {
            Some("result-changing arguments")
        } else if self.weights_sha256 != other.weights_sha256 {
            Some("weights (sha256)")
        } else if self.inputs != other.inputs {
            Some("input files (sha256)")
        } else if self.image != other.image {
            Some("image shape")
        } else if self.bits != other.bits {
            Some("bit class (backend, ISA, convolution form, build)")
        } else {
            None
        }
    }
}

/// Checks that `shards` are exactly the N shards of one run and returns them in index order.
/// The errors name the folders (foreign, duplicated) or the indices (missing, as ranges).
/// Memory follows the folders given, not N (a manifest may claim any N).
pub fn check_set(shards: Vec<(PathBuf, Manifest)>) -> Result<Vec<(PathBuf, Manifest)>> {
    let Some((first_dir, first)) = shards.first().cloned() else {
        bail!("no shard folders given");
    };
    let count = first.shard.count;
    let mut slots: BTreeMap<usize, &Path> = BTreeMap::new();
    for (dir, m) in &shards {
        if arguments_hash(&m.run["arguments"])? != m.arguments_hash {
            bail!(
                "{}: its run record's arguments do not give its arguments hash (edited \
                 shard.json?); rerun that shard",
                dir.display()
            );
        }
        if let Some(what) = m.differs_from(&first) {
            let (a, b) = (&m.run["arguments"], &first.run["arguments"]);
            // `--weights` is hashed by content: its text is named when that differs too.
            let weights =
                |v: &serde_json::Value| serde_json::json!({"weights": v["model"]["weights"]});
            let detail = match what {
                "result-changing arguments" => {
                    first_difference(&result_arguments(a), &result_arguments(b))
                }
                "weights (sha256)" => first_difference(&weights(a), &weights(b)),
                _ => None,
            }
            .map_or(String::new(), |d| format!(" ({d})"));
            bail!(
                "{} ({}) is foreign: its {what} differ(s){detail} from {} ({})",
                dir.display(),
                m.shard.label(),
                first_dir.display(),
                first.shard.label()
            );
        }
        if m.shard.index >= count || m.block() != m.shard.block(m.total) {
            bail!(
                "{}: {} with block {}..{} is not a valid block of {} {}",
                dir.display(),
                m.shard.label(),
                m.range[0],
                m.range[1],
                m.total,
                m.units
            );
        }
        if let Some(other) = slots.insert(m.shard.index, dir) {
            bail!(
                "{} and {} are both {}",
                other.display(),
                dir.display(),
                m.shard.label()
            );
        }
    }
    if slots.len() != count {
        let (missing, array) = missing_ranges(slots.keys().copied(), count);
        bail!("shard(s) {missing} of {count} missing (rerun them, e.g. sbatch --array={array})");
    }
    let mut sorted = shards;
    sorted.sort_by_key(|(_, m)| m.shard.index);
    Ok(sorted)
}

/// The first argument whose value differs between two argument records, as "--seed: 3 vs 4"
/// (the records nest flattened flag groups; the flag is the leaf's name).
fn first_difference(a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    fn leaves(v: &serde_json::Value, at: &str, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    leaves(v, &format!("{at}/{k}"), out);
                }
            }
            leaf => {
                out.insert(at.to_string(), leaf.clone());
            }
        }
    }
    let (mut x, mut y) = (BTreeMap::new(), BTreeMap::new());
    leaves(a, "", &mut x);
    leaves(b, "", &mut y);
    let none = serde_json::Value::Null;
    let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
    let first = keys.into_iter().find_map(|k| {
        let (u, v) = (x.get(k).unwrap_or(&none), y.get(k).unwrap_or(&none));
        let flag = k.rsplit('/').next().unwrap_or(k).replace('_', "-");
        (u != v).then(|| format!("--{flag}: {u} vs {v}"))
    });
    first
}

/// The indices below `count` absent from `present` (ascending) as "0, 2-5, 9" (at most
/// [`MISSING_SHOWN`] ranges, then "… (K more ranges)"), and the ranges shown as an sbatch
/// `--array` list ("0,2-5,9").
fn missing_ranges(present: impl Iterator<Item = usize>, count: usize) -> (String, String) {
    let mut ranges = Vec::new();
    let mut next = 0;
    for i in present.chain(std::iter::once(count)) {
        if i > next {
            ranges.push((next, i - 1));
        }
        next = i.saturating_add(1);
    }
    let shown: Vec<String> = ranges
        .iter()
        .take(MISSING_SHOWN)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    let more = ranges.len().saturating_sub(MISSING_SHOWN);
    let tail = if more > 0 {
        format!(", … ({more} more ranges)")
    } else {
        String::new()
    };
    (format!("{}{tail}", shown.join(", ")), shown.join(","))
}

/// How many ranges of missing shards an error lists.
const MISSING_SHOWN: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(index: usize, count: usize, total: usize) -> Manifest {
        let shard = Shard::new(index, count).unwrap();
        let b = shard.block(total);
        Manifest {
            format: FORMAT.into(),
            command: "sample".into(),
            shard,
            units: "chains".into(),
            total,
            range: [b.start, b.end],
            arguments_hash: arguments_hash(&serde_json::json!({"seed": 1})).unwrap(),
            weights_sha256: "w".into(),
            inputs: vec![],
            bits: cpu_bit_class(),
            image: serde_json::json!({"channels": 1, "size": 4, "data_range": "-1,1"}),
            names: vec![],
            run: serde_json::json!({"arguments": {"seed": 1}}),
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn weights_and_device_are_hashed_by_what_they_resolve_to() {
        let h = |v: serde_json::Value| arguments_hash(&v).unwrap();
        let plain = h(serde_json::json!({"seed": 1, "model": {"weights": null},
            "device": {"device": "cpu", "ptx": null}}));
        let spelled = h(
            serde_json::json!({"seed": 1, "model": {"weights": "bundled:mnist-vp"},
            "device": {"device": "auto", "ptx": "x.ptx"}}),
        );
        assert_eq!(plain, spelled);
        assert_ne!(
            plain,
            h(serde_json::json!({"seed": 2, "model": {"weights": null},
            "device": {"device": "cpu", "ptx": null}}))
        );
        assert_ne!(
            plain,
            h(serde_json::json!({"seed": 1, "model": {"weights": null},
            "device": {"device": "cpu", "ptx": null, "tensor_cores": true}}))
        );
    }

    fn set(ms: Vec<Manifest>) -> Vec<(PathBuf, Manifest)> {
        ms.into_iter()
            .map(|m| (PathBuf::from(format!("s{}", m.shard.index)), m))
            .collect()
    }

    #[test]
    fn a_complete_set_comes_back_in_index_order() {
        let ms = set(vec![
            manifest(2, 3, 10),
            manifest(0, 3, 10),
            manifest(1, 3, 10),
        ]);
        let sorted = check_set(ms).unwrap();
        let idx: Vec<usize> = sorted.iter().map(|(_, m)| m.shard.index).collect();
        assert_eq!(idx, [0, 1, 2]);
    }

    #[test]
    fn missing_duplicated_and_foreign_shards_are_named() {
        let e = check_set(set(vec![manifest(0, 4, 10), manifest(3, 4, 10)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("shard(s) 1-2 of 4 missing"), "{e}");
        assert!(e.contains("--array=1-2)"), "{e}");
        let mut dup = set(vec![manifest(0, 2, 10), manifest(1, 2, 10)]);
        dup.push((PathBuf::from("again"), manifest(1, 2, 10)));
        let e = check_set(dup).unwrap_err().to_string();
        assert!(e.contains("s1 and again are both shard 1/2"), "{e}");
        let mut foreign = manifest(1, 2, 10);
        foreign.arguments_hash = "b".into();
        foreign.run["arguments"]["run"] = serde_json::json!({"seed": 4});
        foreign.arguments_hash = arguments_hash(&foreign.run["arguments"]).unwrap();
        let e = check_set(set(vec![manifest(0, 2, 10), foreign]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s1 (shard 1/2) is foreign")
                && e.contains("arguments differ(s) (--seed: 4 vs null)"),
            "{e}"
        );
        let mut other_n = manifest(1, 3, 10);
        other_n.shard.count = 3;
        let e = check_set(set(vec![manifest(0, 2, 10), other_n]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("foreign") && e.contains("shard count"), "{e}");
        for field in ["weights", "inputs", "bits", "total"] {
            let mut m = manifest(1, 2, 10);
            match field {
                "weights" => m.weights_sha256 = "x".into(),
                "inputs" => m.inputs.push(InputFile {
                    path: "a.png".into(),
                    sha256: "0".into(),
                }),
                "bits" => m.bits.isa = "Other".into(),
                _ => m.total = 11,
            }
            let e = check_set(set(vec![manifest(0, 2, 10), m]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("s1 (shard 1/2) is foreign"), "{field}: {e}");
        }
        // Other weights: hashed by content, their text named where it differs.
        let with_weights = |index: usize, weights: serde_json::Value| {
            let mut m = manifest(index, 2, 10);
            m.run["arguments"]["model"] = serde_json::json!({ "weights": weights });
            m.arguments_hash = arguments_hash(&m.run["arguments"]).unwrap();
            m
        };
        let mut other = with_weights(1, "b.safetensors".into());
        other.weights_sha256 = "x".into();
        let e = check_set(set(vec![with_weights(0, serde_json::Value::Null), other]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("weights (sha256) differ(s) (--weights: \"b.safetensors\" vs null)"),
            "{e}"
        );
        // The run record (copied into the merged run.json) must be the hashed arguments.
        let mut edited = manifest(1, 2, 10);
        edited.run["arguments"]["seed"] = serde_json::json!(7);
        let e = check_set(set(vec![manifest(0, 2, 10), edited]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("s1: its run record's arguments"), "{e}");
        let mut bad_block = manifest(1, 2, 10);
        bad_block.range = [4, 10];
        let e = check_set(set(vec![manifest(0, 2, 10), bad_block]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid block"), "{e}");
        assert!(check_set(Vec::new()).is_err());
    }

    #[test]
    fn a_huge_shard_count_is_refused_without_allocating_for_it() {
        // One shard of 10^18 (as a hand-edited or hostile manifest may claim): the error
        // lists the missing ones as ranges, and memory follows the folders given.
        let e = check_set(set(vec![manifest(5, 1_000_000_000_000_000_000, 2)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shard(s) 0-4, 6-999999999999999999 of 1000000000000000000 missing"),
            "{e}"
        );
        let every_other: Vec<usize> = (0..40).step_by(2).collect();
        let (listed, array) = missing_ranges(every_other.into_iter(), 40);
        assert_eq!(listed, "1, 3, 5, 7, 9, 11, 13, 15, … (12 more ranges)");
        assert_eq!(array, "1,3,5,7,9,11,13,15");
        assert_eq!(missing_ranges([0, 1].into_iter(), 2).0, "");
        let last = [usize::MAX - 1].into_iter();
        assert_eq!(
            missing_ranges(last, usize::MAX).0,
            format!("0-{}", usize::MAX - 2)
        );
    }

    #[test]
    fn the_hash_ignores_exactly_the_non_result_arguments() {
        let a = serde_json::json!({"run": {"n": 4, "out": "x", "threads": 2, "batch": 1,
            "quiet": true, "shard": "0/4"}, "seed": 1});
        let b = serde_json::json!({"seed": 1, "run": {"n": 4, "out": "y", "threads": null,
            "batch": 4, "quiet": false, "shard": null}});
        assert_eq!(arguments_hash(&a).unwrap(), arguments_hash(&b).unwrap());
        let c = serde_json::json!({"seed": 2, "run": {"n": 4}});
        let d = serde_json::json!({"seed": 1, "run": {"n": 5}});
        let h = arguments_hash(&a).unwrap();
        assert_ne!(h, arguments_hash(&c).unwrap());
        assert_ne!(h, arguments_hash(&d).unwrap());
    }

    /// A data fit is identified by its kind and its files' contents, not its folder's name.
    #[test]
    fn data_fit_weights_hash_their_training_files() {
        let dir = std::env::temp_dir().join(format!("tweedie-fit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = |prefix: &str| format!("{prefix}{}", dir.display());
        let missing = format!(
            "{:#}",
            weights_sha256(Some(&spec("training-set:"))).unwrap_err()
        );
        assert!(missing.contains("--weights training-set:"), "{missing}");
        for (name, _) in MnistSplit::Train.files() {
            std::fs::write(dir.join(name), name).unwrap();
        }
        let fits: Vec<String> = DATA_FIT_PREFIXES
            .iter()
            .map(|p| weights_sha256(Some(&spec(p))).unwrap())
            .collect();
        assert!(fits[0] != fits[1] && fits[1] != fits[2] && fits[0] != fits[2]);
        let moved = dir.with_extension("moved");
        std::fs::rename(&dir, &moved).unwrap();
        let again = format!("training-set:{}", moved.display());
        assert_eq!(weights_sha256(Some(&again)).unwrap(), fits[2]);
        std::fs::write(moved.join(MnistSplit::Train.files()[1].0), "other labels").unwrap();
        assert_ne!(weights_sha256(Some(&again)).unwrap(), fits[2]);
        std::fs::remove_dir_all(&moved).unwrap();
    }

    #[test]
    fn manifests_round_trip_and_other_formats_are_refused() {
        let dir = std::env::temp_dir().join(format!("tweedie-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = manifest(1, 2, 5);
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(Manifest::read(&dir).unwrap(), m);
        let mut old = m.clone();
        old.format = "tweedie-shard/0".into();
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(Manifest::read(&dir)
            .unwrap_err()
            .to_string()
            .contains("format"));
        std::fs::remove_file(dir.join(MANIFEST)).unwrap();
        let e = format!("{:#}", Manifest::read(&dir).unwrap_err());
        assert!(e.contains("not a shard folder"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
