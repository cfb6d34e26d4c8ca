//! Training checkpoints: one safetensors file with everything `--resume` needs to continue
//! bit for bit, written atomically, with an integrity hash.
//!
//! Tensors (f32, PyTorch names and shapes of the [`ParamLayout`]):
//! `model.<name>` (raw weights), `ema.<name>`, `exp_avg.<name>`, `exp_avg_sq.<name>`.
//!
//! Metadata (strings; numbers in Rust's shortest round-trip form, so they parse back exactly):
//!
//! | key | value |
//! |---|---|
//! | `tweedie.checkpoint` | format version, `2` (version `1`, without `tweedie.sha256`, still loads) |
//! | `tweedie.sha256` | the integrity hash (below) |
//! | `tweedie.step` | optimizer steps completed |
//! | `tweedie.adam.betas`, `tweedie.adam.eps`, `tweedie.adam.weight_decay` | AdamW hyper-parameters (`b1,b2`) |
//! | `tweedie.adam.steps` | AdamW's step count (equals `tweedie.step`) |
//! | `tweedie.ema.decay` | EMA decay |
//! | `tweedie.data.seed`, `tweedie.data.epoch`, `tweedie.data.position`, `tweedie.data.len` | the data order (see [`DataOrder`]) |
//!
//! plus any caller metadata (`tweedie.run` with the run's settings, `tweedie.config`, …),
//! which may not reuse the keys above.
//!
//! The hash is the lowercase hex SHA-256 of every metadata entry but itself, in key order,
//! then every tensor in the order of [`PREFIXES`] × layout; each key, value and name is
//! preceded by its byte length (u64 LE), each tensor's name by its length and followed by its
//! f32 LE bytes. It catches bit flips in weights or moments and edited metadata.
//!
//! Reading is strict: every expected tensor present, f32, with its shape, finite (NaN or ∞
//! anywhere, the EMA included, is an error; second moments are ≥ 0); no other tensor; every
//! key above present and parseable; the step counts equal; the hash matching (a version-1 file
//! has none and loads as [`Integrity::Unverified`]). The header is written with sorted keys,
//! so a checkpoint's bytes depend only on its contents.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use sha2::{Digest, Sha256};

use super::ema::Ema;
use super::optim::{AdamW, AdamWConfig};
use super::params::ParamLayout;
use crate::data::DataOrder;
use crate::tensors::{decode_f32, serialize_sorted, SafetensorsFile, TensorBytes};

/// The checkpoint format written by this version.
pub const FORMAT_VERSION: &str = "2";
/// The earlier format: the same content without `tweedie.sha256`.
const FORMAT_UNHASHED: &str = "1";

const KEY_FORMAT: &str = "tweedie.checkpoint";
const KEY_SHA: &str = "tweedie.sha256";
const KEY_STEP: &str = "tweedie.step";
const KEY_BETAS: &str = "tweedie.adam.betas";
const KEY_EPS: &str = "tweedie.adam.eps";
const KEY_WD: &str = "tweedie.adam.weight_decay";
const KEY_ADAM_STEPS: &str = "tweedie.adam.steps";
const KEY_EMA_DECAY: &str = "tweedie.ema.decay";
const KEY_DATA_SEED: &str = "tweedie.data.seed";
const KEY_DATA_EPOCH: &str = "tweedie.data.epoch";
const KEY_DATA_POSITION: &str = "tweedie.data.position";
const KEY_DATA_LEN: &str = "tweedie.data.len";
const RESERVED: [&str; 12] = [
    KEY_FORMAT,
    KEY_SHA,
    KEY_STEP,
    KEY_BETAS,
    KEY_EPS,
    KEY_WD,
    KEY_ADAM_STEPS,
    KEY_EMA_DECAY,
    KEY_DATA_SEED,
    KEY_DATA_EPOCH,
    KEY_DATA_POSITION,
    KEY_DATA_LEN,
];

/// Tensor-name prefixes of the four flat buffers, in file order.
pub const PREFIXES: [&str; 4] = ["model.", "ema.", "exp_avg.", "exp_avg_sq."];

/// Whether a loaded checkpoint's hash was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// The file's `tweedie.sha256` matched its contents.
    Verified,
    /// A format-1 file: no hash to check (and no data hash in its run settings).
    Unverified,
}

/// Everything a training run carries from step to step.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Raw weights (flat, in the layout's order).
    pub params: Vec<f32>,
    /// EMA of the weights.
    pub ema: Ema,
    /// AdamW moments and step count.
    pub optimizer: AdamW,
    /// The data stream position.
    pub data: DataOrder,
    /// Caller metadata stored with the checkpoint (`tweedie.train`, `tweedie.config`, …).
    pub metadata: BTreeMap<String, String>,
}

impl TrainState {
    /// The state before the first step: EMA started at `params`, zero AdamW moments, the
    /// data order at (epoch 0, position 0) of `data_len` examples.
    pub fn new(
        params: Vec<f32>,
        adam: AdamWConfig,
        ema_decay: f64,
        data_len: usize,
        data_seed: u64,
        metadata: BTreeMap<String, String>,
    ) -> Result<TrainState> {
        Ok(TrainState {
            step: 0,
            ema: Ema::new(ema_decay, &params)?,
            optimizer: AdamW::new(adam, params.len())?,
            data: DataOrder::new(data_len, data_seed)?,
            params,
            metadata,
        })
    }

    /// Errors unless every buffer matches the layout.
    pub fn check(&self, layout: &ParamLayout) -> Result<()> {
        layout.check_buffer(self.params.len())?;
        layout.check_buffer(self.ema.weights().len())?;
        layout.check_buffer(self.optimizer.exp_avg().len())?;
        layout.check_buffer(self.optimizer.exp_avg_sq().len())?;
        if let Some(k) = self
            .metadata
            .keys()
            .find(|k| RESERVED.contains(&k.as_str()))
        {
            bail!("checkpoint metadata key `{k}` is reserved");
        }
        Ok(())
    }

    /// Writes the checkpoint atomically to `path`.
    pub fn save(&self, path: &Path, layout: &ParamLayout) -> Result<()> {
        write_atomic(path, &self.to_bytes(layout)?)
    }

    /// The checkpoint file's bytes (see [`save`](Self::save)).
    pub fn to_bytes(&self, layout: &ParamLayout) -> Result<Vec<u8>> {
        self.check(layout)?;
        for (what, buffer) in [
            ("weights", &self.params[..]),
            ("EMA", self.ema.weights()),
            ("first moments", self.optimizer.exp_avg()),
            ("second moments", self.optimizer.exp_avg_sq()),
        ] {
            if let Some(i) = buffer.iter().position(|v| !v.is_finite()) {
                bail!(
                    "step {}: the {what} hold {} at element {i}; no checkpoint is written \
                     (the previous one is kept)",
                    self.step,
                    buffer[i]
                );
            }
        }
        let buffers = [
            le_bytes(&self.params),
            le_bytes(self.ema.weights()),
            le_bytes(self.optimizer.exp_avg()),
            le_bytes(self.optimizer.exp_avg_sq()),
        ];
        let mut tensors: Vec<TensorBytes<'_>> = Vec::with_capacity(4 * layout.views().len());
        for (prefix, bytes) in PREFIXES.iter().zip(&buffers) {
            for v in layout.views() {
                let data = &bytes[4 * v.offset..4 * (v.offset + v.len)];
                tensors.push((
                    format!("{prefix}{}", v.name),
                    Dtype::F32,
                    v.shape.clone(),
                    data,
                ));
            }
        }
        let mut meta = self.metadata_map();
        let mut hash = IntegrityHash::new(&meta);
        for (name, _, _, data) in &tensors {
            hash.tensor(name, data);
        }
        meta.insert(KEY_SHA.to_string(), hash.finish());
        serialize_sorted(&tensors, &meta).context("cannot serialise the checkpoint")
    }

    fn metadata_map(&self) -> BTreeMap<String, String> {
        let cfg = self.optimizer.config();
        let mut meta = self.metadata.clone();
        let mut put = |k: &str, v: String| meta.insert(k.to_string(), v);
        put(KEY_FORMAT, FORMAT_VERSION.to_string());
        put(KEY_STEP, self.step.to_string());
        put(KEY_BETAS, format!("{},{}", cfg.betas.0, cfg.betas.1));
        put(KEY_EPS, cfg.eps.to_string());
        put(KEY_WD, cfg.weight_decay.to_string());
        put(KEY_ADAM_STEPS, self.optimizer.steps().to_string());
        put(KEY_EMA_DECAY, self.ema.decay().to_string());
        put(KEY_DATA_SEED, self.data.seed().to_string());
        put(KEY_DATA_EPOCH, self.data.epoch().to_string());
        put(KEY_DATA_POSITION, self.data.position().to_string());
        put(KEY_DATA_LEN, self.data.len().to_string());
        meta
    }

    /// Reads a checkpoint written by [`save`](Self::save) for this layout and a data set of
    /// `data_len` examples, strictly (see the module docs); says whether its hash was checked.
    pub fn load(
        path: &Path,
        layout: &ParamLayout,
        data_len: usize,
    ) -> Result<(TrainState, Integrity)> {
        let file = SafetensorsFile::open(path)?;
        Self::from_file(&file, layout, data_len)
    }

    /// [`load`](Self::load) of a file already in memory.
    pub fn from_file(
        file: &SafetensorsFile,
        layout: &ParamLayout,
        data_len: usize,
    ) -> Result<(TrainState, Integrity)> {
        let label = file.label().to_string();
        let meta = Meta {
            map: file.metadata()?,
            label: &label,
        };
        let integrity = match meta.get(KEY_FORMAT)? {
            FORMAT_VERSION => Integrity::Verified,
            FORMAT_UNHASHED => Integrity::Unverified,
            other => bail!(
                "{label}: checkpoint format {other}, this build reads {FORMAT_UNHASHED} and {FORMAT_VERSION}"
            ),
        };
        let (buffers, digest) = read_buffers(file, layout, &meta.map)?;
        if integrity == Integrity::Verified {
            let stored = meta.get(KEY_SHA)?;
            if stored != digest {
                bail!(
                    "{label}: integrity check failed (sha256 {digest}, the file records {stored}): \
                     its tensors or metadata changed after it was written"
                );
            }
        }
        // Before the data order is rebuilt: its permutation has one entry per example.
        let stored: usize = meta.parse(KEY_DATA_LEN)?;
        if stored != data_len {
            bail!(
                "{label}: the checkpoint's data order covers {stored} examples, the data set \
                 has {data_len}"
            );
        }
        let state = Self::from_parts(&meta, buffers)?;
        Ok((state, integrity))
    }

    fn from_parts(meta: &Meta<'_>, buffers: [Vec<f32>; 4]) -> Result<TrainState> {
        let label = meta.label;
        let betas = meta.get(KEY_BETAS)?;
        let Some((b1, b2)) = betas.split_once(',') else {
            bail!("{label}: `{KEY_BETAS}` = `{betas}` is not `b1,b2`");
        };
        let config = AdamWConfig {
            betas: (
                meta.parse_str(KEY_BETAS, b1)?,
                meta.parse_str(KEY_BETAS, b2)?,
            ),
            eps: meta.parse(KEY_EPS)?,
            weight_decay: meta.parse(KEY_WD)?,
        };
        let step: u64 = meta.parse(KEY_STEP)?;
        let adam_steps: u64 = meta.parse(KEY_ADAM_STEPS)?;
        if step != adam_steps {
            bail!(
                "{label}: `{KEY_STEP}` = {step} but `{KEY_ADAM_STEPS}` = {adam_steps}; \
                 the checkpoint is inconsistent"
            );
        }
        let [params, ema, m, v] = buffers;
        let data = DataOrder::resume(
            meta.parse(KEY_DATA_LEN)?,
            meta.parse(KEY_DATA_SEED)?,
            meta.parse(KEY_DATA_EPOCH)?,
            meta.parse(KEY_DATA_POSITION)?,
        )
        .with_context(|| format!("{label}: data order"))?;
        let metadata = meta
            .map
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(TrainState {
            step,
            params,
            ema: Ema::from_weights(meta.parse(KEY_EMA_DECAY)?, ema)
                .with_context(|| format!("{label}: EMA"))?,
            optimizer: AdamW::from_state(config, m, v, adam_steps)
                .with_context(|| format!("{label}: AdamW"))?,
            data,
            metadata,
        })
    }
}

/// The four flat buffers of a checkpoint file, checked (names, dtypes, shapes, finite values),
/// and the integrity hash of the file's contents.
fn read_buffers(
    file: &SafetensorsFile,
    layout: &ParamLayout,
    metadata: &HashMap<String, String>,
) -> Result<([Vec<f32>; 4], String)> {
    let label = file.label();
    let st = file.view()?;
    let expected: std::collections::HashSet<String> = PREFIXES
        .iter()
        .flat_map(|p| layout.views().iter().map(move |v| format!("{p}{}", v.name)))
        .collect();
    let mut unexpected: Vec<&str> = st
        .names()
        .into_iter()
        .filter(|n| !expected.contains(*n))
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort_unstable();
        bail!("{label}: unexpected tensors: {}", unexpected.join(", "));
    }
    let sorted: BTreeMap<String, String> = metadata.clone().into_iter().collect();
    let mut hash = IntegrityHash::new(&sorted);
    let mut buffers = [
        layout.zeros(),
        layout.zeros(),
        layout.zeros(),
        layout.zeros(),
    ];
    for (b, prefix) in PREFIXES.iter().enumerate() {
        for v in layout.views() {
            let name = format!("{prefix}{}", v.name);
            let t = st
                .tensor(&name)
                .map_err(|_| anyhow::anyhow!("{label}: missing tensor `{name}`"))?;
            if t.dtype() != Dtype::F32 || t.shape() != v.shape.as_slice() {
                bail!(
                    "{label}: `{name}` is {:?} {:?}, expected F32 {:?}",
                    t.dtype(),
                    t.shape(),
                    v.shape
                );
            }
            let out = &mut buffers[b][v.range()];
            decode_f32(t.dtype(), t.data(), out).with_context(|| format!("{label}: `{name}`"))?;
            let second_moment = *prefix == "exp_avg_sq.";
            if let Some(i) = out
                .iter()
                .position(|x| !x.is_finite() || (second_moment && *x < 0.0))
            {
                bail!(
                    "{label}: `{name}` holds {} at element {i}; the checkpoint is unusable",
                    out[i]
                );
            }
            hash.tensor(&name, t.data());
        }
    }
    Ok((buffers, hash.finish()))
}

/// The checkpoint's integrity hash (module docs), fed in file order.
struct IntegrityHash(Sha256);

impl IntegrityHash {
    fn new(metadata: &BTreeMap<String, String>) -> IntegrityHash {
        let mut h = IntegrityHash(Sha256::new());
        for (k, v) in metadata.iter().filter(|(k, _)| k.as_str() != KEY_SHA) {
            h.field(k.as_bytes());
            h.field(v.as_bytes());
        }
        h
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn tensor(&mut self, name: &str, data: &[u8]) {
        self.field(name.as_bytes());
        self.0.update(data);
    }

    fn finish(self) -> String {
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

struct Meta<'a> {
    map: HashMap<String, String>,
    label: &'a str,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&str> {
        match self.map.get(key) {
            Some(v) => Ok(v),
            None => bail!("{}: metadata key `{key}` is missing", self.label),
        }
    }

    fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        self.parse_str(key, self.get(key)?)
    }

    fn parse_str<T: std::str::FromStr>(&self, key: &str, value: &str) -> Result<T> {
        match value.trim().parse() {
            Ok(v) => Ok(v),
            Err(_) => bail!("{}: metadata `{key}` = `{value}` is not valid", self.label),
        }
    }
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes a weights file (plain state_dict names, f32) from one flat buffer, e.g. the EMA
/// weights for `host sample`, with `tweedie.*` metadata (formats §3). Atomic.
pub fn export_weights(
    path: &Path,
    layout: &ParamLayout,
    values: &[f32],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    layout.check_buffer(values.len())?;
    let bytes = le_bytes(values);
    let tensors: Vec<TensorBytes<'_>> = layout
        .views()
        .iter()
        .map(|v| {
            let data = &bytes[4 * v.offset..4 * (v.offset + v.len)];
            (v.name.clone(), Dtype::F32, v.shape.clone(), data)
        })
        .collect();
    let out = serialize_sorted(&tensors, metadata).context("cannot serialise weights")?;
    write_atomic(path, &out)
}

/// Writes `bytes` to `path` atomically: a temporary file next to it (`<name>.tmp`), fsync,
/// rename over `path`, fsync of the folder. A crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path)?;
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // Persist the rename itself (directories can be opened and synced on Unix).
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

fn tmp_path(path: &Path) -> Result<PathBuf> {
    let Some(name) = path.file_name() else {
        bail!("{} is not a file path", path.display());
    };
    let mut tmp = name.to_os_string();
    tmp.push(".tmp");
    Ok(path.with_file_name(tmp))
}
