//! Training checkpoints: one safetensors file with everything `--resume` needs to continue
//! bit for bit, written atomically.
//!
//! Tensors (f32, PyTorch names and shapes of the [`ParamLayout`]):
//! `model.<name>` (raw weights), `ema.<name>`, `exp_avg.<name>`, `exp_avg_sq.<name>`.
//!
//! Metadata (strings; numbers in Rust's shortest round-trip form, so they parse back exactly):
//!
//! | key | value |
//! |---|---|
//! | `tweedie.checkpoint` | format version, `1` |
//! | `tweedie.step` | optimizer steps completed |
//! | `tweedie.adam.betas`, `tweedie.adam.eps`, `tweedie.adam.weight_decay` | AdamW hyper-parameters (`b1,b2`) |
//! | `tweedie.adam.steps` | AdamW's step count |
//! | `tweedie.ema.decay` | EMA decay |
//! | `tweedie.data.seed`, `tweedie.data.epoch`, `tweedie.data.position`, `tweedie.data.len` | the data order (see [`DataOrder`]) |
//!
//! plus any caller metadata (`tweedie.train` with the run's config JSON, `tweedie.config`, …),
//! which may not reuse the keys above.
//!
//! Reading is strict: every expected tensor present, f32, with its shape; no other tensor;
//! every key above present and parseable; all buffers the layout's size.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::ema::Ema;
use super::optim::{AdamW, AdamWConfig};
use super::params::ParamLayout;
use crate::data::DataOrder;
use crate::tensors::{decode_f32, SafetensorsFile};

/// The checkpoint format written by this version.
pub const FORMAT_VERSION: &str = "1";

const KEY_FORMAT: &str = "tweedie.checkpoint";
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
const RESERVED: [&str; 11] = [
    KEY_FORMAT,
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
        self.check(layout)?;
        let buffers = [
            le_bytes(&self.params),
            le_bytes(self.ema.weights()),
            le_bytes(self.optimizer.exp_avg()),
            le_bytes(self.optimizer.exp_avg_sq()),
        ];
        let mut tensors = Vec::with_capacity(4 * layout.views().len());
        for (prefix, bytes) in PREFIXES.iter().zip(&buffers) {
            for v in layout.views() {
                let data = &bytes[4 * v.offset..4 * (v.offset + v.len)];
                let view = TensorView::new(Dtype::F32, v.shape.clone(), data)
                    .with_context(|| format!("checkpoint tensor {prefix}{}", v.name))?;
                tensors.push((format!("{prefix}{}", v.name), view));
            }
        }
        let bytes = safetensors::serialize(tensors, Some(self.metadata_map()))
            .context("cannot serialise the checkpoint")?;
        write_atomic(path, &bytes)
    }

    fn metadata_map(&self) -> HashMap<String, String> {
        let cfg = self.optimizer.config();
        let mut meta: HashMap<String, String> = self.metadata.clone().into_iter().collect();
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

    /// Reads a checkpoint written by [`save`](Self::save) for this layout, strictly.
    pub fn load(path: &Path, layout: &ParamLayout) -> Result<TrainState> {
        let file = SafetensorsFile::open(path)?;
        let label = file.label().to_string();
        let st = file.view()?;
        let expected: BTreeMap<String, (&str, usize)> = PREFIXES
            .iter()
            .enumerate()
            .flat_map(|(b, p)| {
                layout
                    .views()
                    .iter()
                    .map(move |v| (format!("{p}{}", v.name), (p, b)))
            })
            .map(|(name, (p, b))| (name, (*p, b)))
            .collect();
        let unexpected: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|n| !expected.contains_key(*n))
            .collect();
        if !unexpected.is_empty() {
            bail!("{label}: unexpected tensors: {}", unexpected.join(", "));
        }
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
                decode_f32(t.dtype(), t.data(), &mut buffers[b][v.range()])
                    .with_context(|| format!("{label}: `{name}`"))?;
            }
        }
        let meta = Meta {
            map: file.metadata()?,
            label: &label,
        };
        let format = meta.get(KEY_FORMAT)?;
        if format != FORMAT_VERSION {
            bail!("{label}: checkpoint format {format}, this build reads {FORMAT_VERSION}");
        }
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
            step: meta.parse(KEY_STEP)?,
            params,
            ema: Ema::from_weights(meta.parse(KEY_EMA_DECAY)?, ema)
                .with_context(|| format!("{label}: EMA"))?,
            optimizer: AdamW::from_state(config, m, v, meta.parse(KEY_ADAM_STEPS)?)
                .with_context(|| format!("{label}: AdamW"))?,
            data,
            metadata,
        })
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
    let mut tensors = Vec::with_capacity(layout.views().len());
    for v in layout.views() {
        let data = &bytes[4 * v.offset..4 * (v.offset + v.len)];
        tensors.push((
            v.name.clone(),
            TensorView::new(Dtype::F32, v.shape.clone(), data)?,
        ));
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let out = safetensors::serialize(tensors, Some(meta)).context("cannot serialise weights")?;
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
