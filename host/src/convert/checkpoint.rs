//! A PyTorch zip checkpoint opened for reading: the archive, its unpickled `data.pkl`, and
//! the interpretation of the object graph as a plain state_dict (DPS, guided-diffusion) or a
//! score_sde training checkpoint (`model`, `ema`, `optimizer`, `step`).
//!
//! Tensor values are read only on request, one tensor at a time, after the caller has checked
//! its shape against the model: no allocation is sized by the pickle alone.

use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::Dtype;

use super::pickle::{unpickle, Limits, Object, Pickle, StorageDtype, TensorMeta};
use super::zip::{printable, ZipIndex};
use tweedie_nn::weights::meta::WeightsSet;

/// The prefix DataParallel adds to every state_dict key.
pub const DATA_PARALLEL_PREFIX: &str = "module.";

/// Tensors of a score_sde `model` that have no EMA shadow (not `requires_grad`): the unused
/// `sigmas` buffer and NCSN++'s fixed Fourier frequencies (ncsnpp.md, checkpoint container).
pub const NOT_TRAINABLE: &[&str] = &["sigmas", "all_modules.0.W"];

/// What kind of object the checkpoint holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// A dict of tensors (`torch.save(model.state_dict())`), or a dict with a `state_dict`.
    StateDict,
    /// score_sde's `save_checkpoint` dict.
    ScoreSde {
        /// Whether `ema.shadow_params` is present.
        has_ema: bool,
        /// The training step, when it is an int or a 0-dim integer/float tensor.
        step: Option<i64>,
    },
}

/// The interpreted contents: named model tensors and, for score_sde, the EMA shadows.
#[derive(Debug, Clone)]
pub struct Contents {
    /// Which layout was recognised.
    pub layout: Layout,
    /// Model tensors in file order, names without the `module.` prefix.
    pub model: Vec<(String, TensorMeta)>,
    /// `ema.shadow_params` in order (score_sde only).
    pub ema: Option<Vec<TensorMeta>>,
    /// Whether the `module.` prefix was removed.
    pub stripped_prefix: bool,
}

/// An opened checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    label: String,
    bytes: Vec<u8>,
    zip: ZipIndex,
    prefix: String,
    pickle: Pickle,
}

impl Checkpoint {
    /// Reads `path` whole and opens it.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let label = path.display().to_string();
        let bytes = tweedie_nn::input::read_capped(
            path,
            "PyTorch checkpoint",
            tweedie_nn::input::MAX_CHECKPOINT_BYTES,
        )?;
        Self::from_bytes(bytes, label)
    }

    /// Opens an in-memory checkpoint; `label` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, label: String) -> Result<Checkpoint> {
        Self::parse(bytes, &label).with_context(|| label.clone())
    }

    fn parse(bytes: Vec<u8>, label: &str) -> Result<Checkpoint> {
        let zip = match ZipIndex::parse(&bytes) {
            Ok(zip) => zip,
            Err(_) if bytes.first() == Some(&0x80) => bail!(
                "this is the legacy torch.save format (PyTorch < 1.6, a bare pickle); load and \
                 re-save it with a recent PyTorch to get the zip format"
            ),
            Err(e) => return Err(e.context("not a PyTorch zip checkpoint")),
        };
        let prefix = data_pkl_prefix(&zip)?;
        if let Some(order) = zip.get(&format!("{prefix}byteorder")) {
            if zip.data(&bytes, order)? != b"little" {
                bail!("only little-endian checkpoints are supported (byteorder is not `little`)");
            }
        }
        let pkl_entry = zip
            .get(&format!("{prefix}data.pkl"))
            .context("data.pkl vanished")?;
        let limits = Limits {
            storage_bytes: bytes.len(),
        };
        let pickle = unpickle(zip.data(&bytes, pkl_entry)?, limits)
            .with_context(|| format!("{prefix}data.pkl"))?;
        Ok(Checkpoint {
            label: label.to_string(),
            bytes,
            zip,
            prefix,
            pickle,
        })
    }

    /// The name used in errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The unpickled object graph.
    pub fn pickle(&self) -> &Pickle {
        &self.pickle
    }

    /// Recognises the layout and collects the tensors.
    pub fn contents(&self) -> Result<Contents> {
        interpret(&self.pickle).with_context(|| self.label.clone())
    }

    /// The values of `t` in row-major order as little-endian bytes of a float dtype (F64,
    /// F32 or F16; bfloat16 is widened to F32 exactly). `name` is used in errors.
    pub fn tensor_bytes(&self, t: &TensorMeta, name: &str) -> Result<(Dtype, Vec<u8>)> {
        self.gather(t)
            .with_context(|| format!("{}: tensor `{}`", self.label, printable(name)))
    }

    fn gather(&self, t: &TensorMeta) -> Result<(Dtype, Vec<u8>)> {
        let s = &t.storage;
        let key = format!("{}data/{}", self.prefix, s.key);
        let entry = self
            .zip
            .get(&key)
            .with_context(|| format!("storage entry `{}` is missing", printable(&key)))?;
        let es = s.dtype.size();
        if entry.len != s.numel * es {
            bail!(
                "storage `{}` holds {} bytes but the pickle says {} {} values ({} bytes)",
                printable(&key),
                entry.len,
                s.numel,
                s.dtype.name(),
                s.numel * es
            );
        }
        let data = self.zip.data(&self.bytes, entry)?;
        let dtype = match s.dtype {
            StorageDtype::F64 => Dtype::F64,
            StorageDtype::F32 | StorageDtype::BF16 => Dtype::F32,
            StorageDtype::F16 => Dtype::F16,
            other => bail!("dtype {} is not floating point", other.name()),
        };
        let numel = t.numel();
        let mut out = Vec::with_capacity(numel * dtype.bitsize() / 8);
        let mut put = |i: usize| {
            let b = &data[i * es..(i + 1) * es];
            if s.dtype == StorageDtype::BF16 {
                out.extend_from_slice(&[0, 0, b[0], b[1]]); // bf16 is the top half of an f32
            } else {
                out.extend_from_slice(b);
            }
        };
        if t.is_contiguous() {
            (t.offset..t.offset + numel).for_each(put);
        } else if numel > 0 {
            // Odometer over the multi-index; the pickle reader checked that the last element
            // of the view lies inside the storage, so every index does.
            let mut idx = vec![0usize; t.shape.len()];
            let mut at = t.offset;
            for _ in 0..numel {
                put(at);
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    at += t.stride[d];
                    if idx[d] < t.shape[d] {
                        break;
                    }
                    at -= t.stride[d] * t.shape[d];
                    idx[d] = 0;
                }
            }
        }
        Ok((dtype, out))
    }
}

/// The folder holding `data.pkl` (`archive/` for most checkpoints, the file stem for newer
/// ones), with its trailing slash.
fn data_pkl_prefix(zip: &ZipIndex) -> Result<String> {
    let found: Vec<&str> = zip
        .entries()
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .collect();
    match found[..] {
        [name] => Ok(name[..name.len() - "data.pkl".len()].to_string()),
        [] => bail!("no data.pkl in the archive (not a torch.save checkpoint?)"),
        _ => bail!(
            "{} data.pkl entries in the archive (expected one)",
            found.len()
        ),
    }
}

/// Recognises the layout of an unpickled checkpoint object and collects its tensors.
pub fn interpret(p: &Pickle) -> Result<Contents> {
    let root = p.str_dict(p.root(), "the checkpoint")?;
    let get = |key: &str| root.iter().find(|(k, _)| k == key).map(|&(_, v)| v);
    if root.is_empty() {
        bail!("the checkpoint is an empty dict");
    }
    if root
        .iter()
        .all(|(_, v)| matches!(p.get(*v), Object::Tensor(_)))
    {
        return state_dict(p, p.root(), "the checkpoint", Layout::StateDict, None);
    }
    if let Some(model) = get("model") {
        let ema = get("ema").map(|e| shadow_params(p, e)).transpose()?;
        let layout = Layout::ScoreSde {
            has_ema: ema.is_some(),
            step: get("step").and_then(|s| step_value(p, s)),
        };
        return state_dict(p, model, "`model`", layout, ema);
    }
    if let Some(sd) = get("state_dict") {
        return state_dict(p, sd, "`state_dict`", Layout::StateDict, None);
    }
    let keys: Vec<String> = root.iter().take(12).map(|(k, _)| printable(k)).collect();
    bail!(
        "unrecognised checkpoint: a dict with keys [{}] that is neither a state_dict of tensors \
         nor a score_sde checkpoint (model, ema, optimizer, step)",
        keys.join(", ")
    )
}

fn state_dict(
    p: &Pickle,
    dict: usize,
    what: &str,
    layout: Layout,
    ema: Option<Vec<TensorMeta>>,
) -> Result<Contents> {
    let items = p.str_dict(dict, what)?;
    let mut model = Vec::with_capacity(items.len());
    for (name, v) in items {
        match p.get(v) {
            Object::Tensor(t) => model.push((name, t.clone())),
            other => bail!(
                "{what}: entry `{}` is a {}, not a tensor",
                printable(&name),
                other.type_name()
            ),
        }
    }
    if model.is_empty() {
        bail!("{what} holds no tensors");
    }
    let stripped_prefix = model
        .iter()
        .all(|(n, _)| n.starts_with(DATA_PARALLEL_PREFIX));
    if stripped_prefix {
        for (n, _) in &mut model {
            n.drain(..DATA_PARALLEL_PREFIX.len());
        }
    }
    Ok(Contents {
        layout,
        model,
        ema,
        stripped_prefix,
    })
}

/// `ema` = {decay, num_updates, shadow_params: [tensor, …]}.
fn shadow_params(p: &Pickle, ema: usize) -> Result<Vec<TensorMeta>> {
    let items = p.str_dict(ema, "`ema`")?;
    let list = items
        .iter()
        .find(|(k, _)| k == "shadow_params")
        .map(|&(_, v)| v)
        .context("`ema` has no shadow_params")?;
    let Object::List(ids) = p.get(list) else {
        bail!(
            "`ema.shadow_params` is a {}, not a list",
            p.get(list).type_name()
        );
    };
    ids.iter()
        .enumerate()
        .map(|(i, &id)| match p.get(id) {
            Object::Tensor(t) => Ok(t.clone()),
            other => bail!(
                "`ema.shadow_params[{i}]` is a {}, not a tensor",
                other.type_name()
            ),
        })
        .collect()
}

/// score_sde keeps `step` as an int; a 0-dim tensor is accepted and left unread.
fn step_value(p: &Pickle, id: usize) -> Option<i64> {
    match p.get(id) {
        Object::Int(v) => Some(*v),
        _ => None,
    }
}

impl Contents {
    /// The named tensors of the requested set. `Model`: the model dict as it is. `Ema`: the
    /// shadow parameters named by the order of the trainable model tensors (model minus
    /// [`NOT_TRAINABLE`]), plus `all_modules.0.W` from the model; `sigmas` is dropped.
    pub fn select(&self, set: WeightsSet) -> Result<Vec<(String, TensorMeta)>> {
        match (set, &self.ema) {
            (WeightsSet::Model, _) => Ok(self.model.clone()),
            (WeightsSet::Ema, Some(shadows)) => self.ema_named(shadows),
            (WeightsSet::Ema, None) if self.layout == Layout::StateDict => bail!(
                "a plain state_dict holds one set of weights; --weights-set ema only applies \
                 to score_sde checkpoints (label the file with --weights-set model, or omit it)"
            ),
            (WeightsSet::Ema, None) => {
                bail!("the checkpoint has no `ema`; use --weights-set model")
            }
            (WeightsSet::Raw, _) => bail!("--weights-set raw does not apply to a checkpoint"),
        }
    }

    fn ema_named(&self, shadows: &[TensorMeta]) -> Result<Vec<(String, TensorMeta)>> {
        let trainable: Vec<&(String, TensorMeta)> = self
            .model
            .iter()
            .filter(|(n, _)| !NOT_TRAINABLE.contains(&n.as_str()))
            .collect();
        if trainable.len() != shadows.len() {
            bail!(
                "`ema.shadow_params` has {} tensors but `model` has {} trainable parameters \
                 (all but {}); cannot name the shadows",
                shadows.len(),
                trainable.len(),
                NOT_TRAINABLE.join(", ")
            );
        }
        for (j, ((name, m), s)) in trainable.iter().zip(shadows).enumerate() {
            if m.shape != s.shape {
                bail!(
                    "`ema.shadow_params[{j}]` has shape {:?} but the {j}-th trainable parameter \
                     `{}` has {:?}; the shadows are not in model.parameters() order",
                    s.shape,
                    printable(name),
                    m.shape
                );
            }
        }
        let mut shadow = shadows.iter();
        let mut out = Vec::with_capacity(self.model.len());
        for (name, m) in &self.model {
            match name.as_str() {
                "sigmas" => {}
                "all_modules.0.W" => out.push((name.clone(), m.clone())),
                _ => out.push((name.clone(), shadow.next().context("shadow count")?.clone())),
            }
        }
        Ok(out)
    }
}
