//! `AdmConfig`: the arguments of guided-diffusion's `UNetModel`, resolved from the
//! `create_model` keyword names of formats.md §2.
//!
//! Two JSON forms are read: the flat one (`{"arch": "adm", "image_size": 256, …}`) and the nested
//! one of the golden folders (a top-level `create_model_kwargs` object, `in_channels` at the top
//! level or in `unet_model_kwargs_derived`). Every value is checked here, so the architecture
//! derivation that follows can trust it.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::model::config_fields::{check_keys, opt_bool, opt_f64, opt_int, opt_usize, req_usize};

/// The `create_model` keyword names (plus `in_channels`) accepted in a flat or nested config.
const CREATE_MODEL_KEYS: &[&str] = &[
    "image_size",
    "num_channels",
    "num_res_blocks",
    "channel_mult",
    "attention_resolutions",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_scale_shift_norm",
    "resblock_updown",
    "learn_sigma",
    "use_new_attention_order",
    "class_cond",
    "dropout",
    "use_fp16",
    "use_checkpoint",
    "in_channels",
];

/// Extra keys a flat config may carry besides the `create_model` names.
const FLAT_EXTRA_KEYS: &[&str] = &["arch", "name"];

/// Resolved `UNetModel(...)` arguments (guided-diffusion `script_util.create_model` mapping).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmConfig {
    /// Training image size; only used to turn `attention_resolutions` into downsample factors
    /// and to pick the default `channel_mult` (the network itself is fully convolutional).
    pub image_size: usize,
    /// Input image channels (1 or 3 in practice).
    pub in_channels: usize,
    /// `num_channels`: the base width (`model_channels`).
    pub model_channels: usize,
    /// `in_channels`, doubled when `learn_sigma` (channels `0..in_channels` are ε).
    pub out_channels: usize,
    /// ResBlocks per level in the encoder (the decoder has one more).
    pub num_res_blocks: usize,
    /// `attention_resolutions` as given (feature-map sizes at the training image size).
    pub attention_resolutions: Vec<usize>,
    /// Width multiplier per level; level width = int(mult · model_channels) (0.5 occurs at 512).
    pub channel_mult: Vec<f64>,
    /// Heads of encoder and middle attention blocks (when `num_head_channels` is `None`).
    pub num_heads: usize,
    /// Channels per head; when set it wins over `num_heads` (`-1` in JSON is `None`).
    pub num_head_channels: Option<usize>,
    /// Heads of decoder attention blocks (`-1` in JSON resolves to `num_heads`).
    pub num_heads_upsample: usize,
    /// FiLM (`GN(h)·(1+scale)+shift`) instead of an additive time embedding.
    pub use_scale_shift_norm: bool,
    /// Resample with up/down ResBlocks instead of `Upsample`/`Downsample` layers.
    pub resblock_updown: bool,
    /// `Upsample`/`Downsample` carry a 3x3 conv (always true through `create_model`).
    pub conv_resample: bool,
    /// `QKVAttention` (split q|k|v first) instead of `QKVAttentionLegacy` (split heads first).
    pub use_new_attention_order: bool,
    /// The network also predicts the variance interpolation `v` (output channels doubled).
    pub learn_sigma: bool,
    /// Training dropout; identity at inference, kept for completeness.
    pub dropout: f64,
    /// The original ran its torso in f16; we always compute in f32 (recorded only).
    pub use_fp16: bool,
}

/// The name of the built-in DPS FFHQ-256 configuration (adm_unet.md §1).
pub const ADM_FFHQ256: &str = "adm-ffhq256";

impl AdmConfig {
    /// DPS's `configs/model_config.yaml` for `ffhq_10m.pt` (adm_unet.md §1).
    pub fn ffhq256() -> AdmConfig {
        let json = serde_json::json!({
            "arch": "adm", "image_size": 256, "num_channels": 128, "num_res_blocks": 1,
            "channel_mult": "", "learn_sigma": true, "class_cond": false,
            "use_checkpoint": false, "attention_resolutions": 16, "num_heads": 4,
            "num_head_channels": 64, "num_heads_upsample": -1, "use_scale_shift_norm": true,
            "dropout": 0.0, "resblock_updown": true, "use_fp16": false,
            "use_new_attention_order": false
        });
        match AdmConfig::from_json(&json) {
            Ok(config) => config,
            Err(e) => unreachable!("the built-in FFHQ config is valid: {e:#}"),
        }
    }

    /// Reads the flat form (`arch: "adm"`) or the nested golden form (`create_model_kwargs`).
    pub fn from_json(value: &Value) -> Result<AdmConfig> {
        let top = value
            .as_object()
            .context("the config must be a JSON object")?;
        match top.get("create_model_kwargs") {
            Some(kwargs) => Self::from_nested(top, kwargs),
            None => {
                check_keys(top, &[CREATE_MODEL_KEYS, FLAT_EXTRA_KEYS], "ADM", "")?;
                let in_channels = opt_usize(top, "in_channels", "")?.unwrap_or(3);
                Self::from_create_model(top, in_channels, "")
            }
        }
    }

    /// The nested golden form; unet_model_kwargs_derived, when present, must agree with us.
    fn from_nested(top: &Map<String, Value>, kwargs: &Value) -> Result<AdmConfig> {
        let ctx = "create_model_kwargs.";
        let kwargs = kwargs
            .as_object()
            .context("create_model_kwargs: must be a JSON object")?;
        check_keys(kwargs, &[CREATE_MODEL_KEYS], "ADM", ctx)?;
        let derived = match top.get("unet_model_kwargs_derived") {
            Some(d) => Some(
                d.as_object()
                    .context("unet_model_kwargs_derived: must be a JSON object")?,
            ),
            None => None,
        };
        let in_channels = match opt_usize(top, "in_channels", "")? {
            Some(c) => Some(c),
            None => opt_usize(kwargs, "in_channels", ctx)?,
        };
        let in_channels = match (in_channels, derived) {
            (Some(c), _) => c,
            (None, Some(d)) => {
                opt_usize(d, "in_channels", "unet_model_kwargs_derived.")?.unwrap_or(3)
            }
            (None, None) => 3,
        };
        let config = Self::from_create_model(kwargs, in_channels, ctx)?;
        if let Some(d) = derived {
            config.check_derived(d)?;
        }
        Ok(config)
    }

    /// guided-diffusion `create_model`: defaults, `channel_mult` default per image size,
    /// attention resolutions → downsample factors, `num_heads_upsample` −1 → `num_heads`.
    fn from_create_model(
        obj: &Map<String, Value>,
        in_channels: usize,
        ctx: &str,
    ) -> Result<AdmConfig> {
        if opt_bool(obj, "class_cond", ctx)?.unwrap_or(false) {
            bail!(
                "{ctx}class_cond: class-conditional ADM models are not supported (set it to false)"
            );
        }
        let image_size = req_usize(obj, "image_size", ctx)?;
        let model_channels = req_usize(obj, "num_channels", ctx)?;
        let num_res_blocks = req_usize(obj, "num_res_blocks", ctx)?;
        positive(image_size, "image_size", ctx)?;
        positive(model_channels, "num_channels", ctx)?;
        positive(num_res_blocks, "num_res_blocks", ctx)?;
        positive(in_channels, "in_channels", ctx)?;
        let channel_mult = channel_mult(obj.get("channel_mult"), image_size, ctx)?;
        let attention_resolutions =
            attention_resolutions(obj.get("attention_resolutions"), image_size, ctx)?;
        let num_heads = opt_int(obj, "num_heads", ctx)?.unwrap_or(1);
        if num_heads < 1 {
            bail!("{ctx}num_heads: must be at least 1, got {num_heads}");
        }
        let num_heads = num_heads as usize;
        let num_head_channels = minus_one_or_positive(obj, "num_head_channels", ctx)?;
        let num_heads_upsample =
            minus_one_or_positive(obj, "num_heads_upsample", ctx)?.unwrap_or(num_heads);
        let dropout = opt_f64(obj, "dropout", ctx)?.unwrap_or(0.0);
        if !(0.0..1.0).contains(&dropout) {
            bail!("{ctx}dropout: must be in [0, 1), got {dropout}");
        }
        let learn_sigma = opt_bool(obj, "learn_sigma", ctx)?.unwrap_or(false);
        // use_checkpoint only trades memory for recomputation in training: read and checked.
        opt_bool(obj, "use_checkpoint", ctx)?;
        Ok(AdmConfig {
            image_size,
            in_channels,
            model_channels,
            out_channels: if learn_sigma {
                2 * in_channels
            } else {
                in_channels
            },
            num_res_blocks,
            attention_resolutions,
            channel_mult,
            num_heads,
            num_head_channels,
            num_heads_upsample,
            use_scale_shift_norm: opt_bool(obj, "use_scale_shift_norm", ctx)?.unwrap_or(false),
            resblock_updown: opt_bool(obj, "resblock_updown", ctx)?.unwrap_or(false),
            conv_resample: true,
            use_new_attention_order: opt_bool(obj, "use_new_attention_order", ctx)?
                .unwrap_or(false),
            learn_sigma,
            dropout,
            use_fp16: opt_bool(obj, "use_fp16", ctx)?.unwrap_or(false),
        })
    }

    /// Attention placement as downsample factors: `image_size // res` for each resolution.
    pub fn attention_ds(&self) -> Vec<usize> {
        self.attention_resolutions
            .iter()
            .map(|&res| self.image_size / res)
            .collect()
    }

    /// Width of a level: `int(mult · model_channels)` as in `UNetModel.__init__`.
    pub fn level_channels(&self, level: usize) -> usize {
        (self.channel_mult[level] * self.model_channels as f64) as usize
    }

    /// Cross-checks the golden file's `unet_model_kwargs_derived` against our derivation.
    fn check_derived(&self, d: &Map<String, Value>) -> Result<()> {
        let ctx = "unet_model_kwargs_derived.";
        let ours: [(&str, Value); 5] = [
            ("out_channels", self.out_channels.into()),
            ("model_channels", self.model_channels.into()),
            ("num_res_blocks", self.num_res_blocks.into()),
            ("attention_resolutions_ds", self.attention_ds().into()),
            ("num_heads_upsample", self.num_heads_upsample.into()),
        ];
        for (key, expected) in ours {
            if let Some(given) = d.get(key) {
                if given != &expected {
                    bail!("{ctx}{key}: the file says {given}, create_model_kwargs give {expected}");
                }
            }
        }
        if let Some(given) = d.get("channel_mult") {
            let given: Vec<f64> = serde_json::from_value(given.clone())
                .with_context(|| format!("{ctx}channel_mult: expected a list of numbers"))?;
            if given != self.channel_mult {
                bail!(
                    "{ctx}channel_mult: the file says {given:?}, create_model_kwargs give {:?}",
                    self.channel_mult
                );
            }
        }
        Ok(())
    }

    /// The flat JSON form of formats.md §2 (what `tweedie.config` stores); reads back equal.
    pub fn to_json(&self) -> Value {
        let mult: Vec<String> = self.channel_mult.iter().map(|m| m.to_string()).collect();
        let res: Vec<String> = self
            .attention_resolutions
            .iter()
            .map(|r| r.to_string())
            .collect();
        serde_json::json!({
            "arch": "adm",
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "num_channels": self.model_channels,
            "num_res_blocks": self.num_res_blocks,
            "channel_mult": mult.join(","),
            "attention_resolutions": res.join(","),
            "num_heads": self.num_heads,
            "num_head_channels": self.num_head_channels.map_or(-1, |c| c as i64),
            "num_heads_upsample": self.num_heads_upsample,
            "use_scale_shift_norm": self.use_scale_shift_norm,
            "resblock_updown": self.resblock_updown,
            "learn_sigma": self.learn_sigma,
            "use_new_attention_order": self.use_new_attention_order,
            "class_cond": false,
            "dropout": self.dropout,
            "use_fp16": self.use_fp16,
            "use_checkpoint": false,
        })
    }
}

/// guided-diffusion's default channel multipliers for an empty `channel_mult`.
fn default_channel_mult(image_size: usize, ctx: &str) -> Result<Vec<f64>> {
    Ok(match image_size {
        512 => vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        128 => vec![1.0, 1.0, 2.0, 3.0, 4.0],
        64 => vec![1.0, 2.0, 3.0, 4.0],
        _ => bail!(
            "{ctx}channel_mult: \"\" has no default for image_size {image_size} \
             (guided-diffusion knows 64, 128, 256, 512); give it explicitly, e.g. \"1,2,2\""
        ),
    })
}

/// `channel_mult`: "" (default), "1,2,2", or a JSON list of numbers.
fn channel_mult(value: Option<&Value>, image_size: usize, ctx: &str) -> Result<Vec<f64>> {
    let field = format!("{ctx}channel_mult");
    let mult: Vec<f64> = match value {
        None => return default_channel_mult(image_size, ctx),
        Some(Value::String(s)) if s.trim().is_empty() => {
            return default_channel_mult(image_size, ctx)
        }
        Some(Value::String(s)) => s
            .split(',')
            .map(|part| {
                part.trim()
                    .parse::<f64>()
                    .with_context(|| format!("{field}: `{part}` is not a number in \"{s}\""))
            })
            .collect::<Result<_>>()?,
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_f64()
                    .with_context(|| format!("{field}: {v} is not a number"))
            })
            .collect::<Result<_>>()?,
        Some(v) => bail!("{field}: expected a string like \"1,2,2\", got {v}"),
    };
    if mult.is_empty() || mult.iter().any(|&m| !(m > 0.0 && m.is_finite())) {
        bail!("{field}: every multiplier must be a positive number, got {mult:?}");
    }
    Ok(mult)
}

/// `attention_resolutions`: "16", "32,16,8", an integer, or a JSON list of integers.
fn attention_resolutions(
    value: Option<&Value>,
    image_size: usize,
    ctx: &str,
) -> Result<Vec<usize>> {
    let field = format!("{ctx}attention_resolutions");
    let parse_one = |v: &Value| -> Result<usize> {
        v.as_u64()
            .map(|u| u as usize)
            .with_context(|| format!("{field}: {v} is not a non-negative integer"))
    };
    let res: Vec<usize> = match value {
        None => vec![16],
        Some(Value::String(s)) if s.trim().is_empty() => Vec::new(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|part| {
                part.trim()
                    .parse::<usize>()
                    .with_context(|| format!("{field}: `{part}` is not an integer in \"{s}\""))
            })
            .collect::<Result<_>>()?,
        Some(v @ Value::Number(_)) => vec![parse_one(v)?],
        Some(Value::Array(items)) => items.iter().map(parse_one).collect::<Result<_>>()?,
        Some(v) => bail!("{field}: expected a string like \"32,16,8\" or an integer, got {v}"),
    };
    if let Some(&bad) = res.iter().find(|&&r| r == 0 || r > image_size) {
        bail!("{field}: resolution {bad} is outside 1..={image_size} (image_size)");
    }
    Ok(res)
}

fn positive(value: usize, key: &str, ctx: &str) -> Result<()> {
    if value == 0 {
        bail!("{ctx}{key}: must be positive, got 0");
    }
    Ok(())
}

/// `-1` means "not set" (guided-diffusion's convention); otherwise a positive integer.
fn minus_one_or_positive(obj: &Map<String, Value>, key: &str, ctx: &str) -> Result<Option<usize>> {
    match opt_int(obj, key, ctx)? {
        None | Some(-1) => Ok(None),
        Some(i) if i >= 1 => Ok(Some(i as usize)),
        Some(i) => bail!("{ctx}{key}: must be -1 or a positive integer, got {i}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(value: Value) -> String {
        match AdmConfig::from_json(&value) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn ffhq256_matches_the_dps_table() {
        // adm_unet.md §1 mapping table.
        let c = AdmConfig::ffhq256();
        assert_eq!(c.in_channels, 3);
        assert_eq!(c.model_channels, 128);
        assert_eq!(c.out_channels, 6);
        assert_eq!(c.channel_mult, vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0]);
        assert_eq!(c.attention_ds(), vec![16]);
        assert_eq!(c.num_head_channels, Some(64));
        assert_eq!(c.num_heads_upsample, 4);
        assert!(c.use_scale_shift_norm && c.resblock_updown && !c.use_new_attention_order);
    }

    #[test]
    fn flat_form_with_strings_and_defaults() {
        let c = AdmConfig::from_json(&json!({
            "arch": "adm", "image_size": 32, "num_channels": 32, "num_res_blocks": 2,
            "channel_mult": "1, 2,2", "attention_resolutions": "16,8", "in_channels": 1
        }))
        .unwrap();
        assert_eq!(c.channel_mult, vec![1.0, 2.0, 2.0]);
        assert_eq!(c.attention_ds(), vec![2, 4]);
        assert_eq!((c.in_channels, c.out_channels), (1, 1));
        // create_model defaults: num_heads 1, num_head_channels −1, upsample heads follow.
        assert_eq!(
            (c.num_heads, c.num_head_channels, c.num_heads_upsample),
            (1, None, 1)
        );
        assert!(!c.use_scale_shift_norm && !c.resblock_updown && c.conv_resample);
    }

    #[test]
    fn default_channel_mult_per_image_size() {
        let mult = |size: usize| {
            AdmConfig::from_json(&json!({"arch": "adm", "image_size": size,
                "num_channels": 64, "num_res_blocks": 1, "attention_resolutions": "8"}))
            .unwrap()
            .channel_mult
        };
        assert_eq!(mult(64), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mult(128), vec![1.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mult(512), vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]);
        assert!(
            err(json!({"arch": "adm", "image_size": 32, "num_channels": 64,
            "num_res_blocks": 1}))
            .contains("channel_mult")
        );
    }

    #[test]
    fn flat_json_round_trips() {
        let c = AdmConfig::ffhq256();
        assert_eq!(AdmConfig::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn bad_values_name_their_field() {
        let base = json!({"arch": "adm", "image_size": 64, "num_channels": 64,
            "num_res_blocks": 1});
        let with = |key: &str, v: Value| {
            let mut o = base.clone();
            o[key] = v;
            err(o)
        };
        assert!(with("class_cond", json!(true)).contains("class_cond"));
        assert!(with("num_heads", json!(0)).contains("num_heads"));
        assert!(with("num_head_channels", json!(-2)).contains("num_head_channels"));
        assert!(with("channel_mult", json!("1,x")).contains("channel_mult"));
        assert!(with("attention_resolutions", json!("0")).contains("attention_resolutions"));
        assert!(with("attention_resolutions", json!(true)).contains("attention_resolutions"));
        assert!(with("use_fp16", json!("no")).contains("use_fp16"));
        assert!(with("dropout", json!(1.5)).contains("dropout"));
        assert!(with("num_channel", json!(3)).contains("num_channel: unknown"));
        assert!(with("num_res_blocks", json!(-1)).contains("num_res_blocks"));
        assert!(err(json!({"arch": "adm", "image_size": 64})).contains("num_channels: required"));
        assert!(err(json!([1, 2])).contains("JSON object"));
    }

    #[test]
    fn nested_form_checks_the_derived_values() {
        let kwargs = json!({"image_size": 32, "num_channels": 32, "num_res_blocks": 1,
            "channel_mult": "1,2", "attention_resolutions": "16", "learn_sigma": true});
        let c = AdmConfig::from_json(&json!({"create_model_kwargs": kwargs,
            "unet_model_kwargs_derived": {"in_channels": 1, "out_channels": 2,
                "attention_resolutions_ds": [2], "channel_mult": [1, 2]}}))
        .unwrap();
        assert_eq!((c.in_channels, c.out_channels), (1, 2));
        let e = err(json!({"create_model_kwargs": kwargs,
            "unet_model_kwargs_derived": {"out_channels": 5}}));
        assert!(e.contains("unet_model_kwargs_derived.out_channels"), "{e}");
        let e = err(json!({"create_model_kwargs": {"image_size": 32}}));
        assert!(e.contains("create_model_kwargs.num_channels"), "{e}");
    }
}
