//! Measurements y = A x + e (spec §10; file layout formats.md §4): the tasks, their operators
//! (core's), making y from a ground truth with counter-based noise
//! (`noise::COUNTER_MEASUREMENT`, chain 0, element index = position in y), and reading /
//! writing measurement files.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tweedie_core::operator::{
    fill_random_mask, BoxInpainting, Identity, Inpainting, SuperResolution4,
};
use tweedie_core::{noise, Error, ForwardOperator};

use super::output::safetensors_bytes;
use tweedie_nn::tensors::SafetensorsFile;
use tweedie_nn::weights::meta::DataRange;

/// Inverse problems (the command line's `--task`: `cli::measure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Random inpainting: a fraction --p of pixel locations missing (seeded mask).
    Inpaint,
    /// A missing rectangle (--box x,y,w,h; default the centered half-size box).
    InpaintBox,
    /// 4× bicubic super-resolution (the DPS resizer).
    Sr4,
    /// Denoising: A = I.
    Denoise,
}

impl Task {
    /// Every task, in the command line's order.
    pub const ALL: [Task; 4] = [Task::Inpaint, Task::InpaintBox, Task::Sr4, Task::Denoise];

    /// The metadata name (formats §4).
    pub fn name(self) -> &'static str {
        match self {
            Task::Inpaint => "inpaint",
            Task::InpaintBox => "inpaint-box",
            Task::Sr4 => "sr4",
            Task::Denoise => "denoise",
        }
    }

    fn from_name(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// Any of core's operators, for one chain.
pub enum AnyOperator<'a> {
    /// A = I.
    Identity(Identity),
    /// Mask.
    Inpaint(Inpainting<'a>),
    /// Box.
    Box(BoxInpainting),
    /// 4× SR.
    Sr4(SuperResolution4),
}

macro_rules! delegate {
    ($self:ident, $op:ident => $e:expr) => {
        match $self {
            AnyOperator::Identity($op) => $e,
            AnyOperator::Inpaint($op) => $e,
            AnyOperator::Box($op) => $e,
            AnyOperator::Sr4($op) => $e,
        }
    };
}

impl ForwardOperator for AnyOperator<'_> {
    fn input_len(&self) -> usize {
        delegate!(self, op => op.input_len())
    }
    fn output_len(&self) -> usize {
        delegate!(self, op => op.output_len())
    }
    fn scratch_len(&self) -> usize {
        delegate!(self, op => op.scratch_len())
    }
    fn forward(&self, x: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        delegate!(self, op => op.forward(x, out, scratch))
    }
    fn adjoint(&self, r: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        delegate!(self, op => op.adjoint(r, out, scratch))
    }
    fn norm_sq(&self) -> f64 {
        delegate!(self, op => op.norm_sq())
    }
}

/// A measurement and everything needed to use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The task.
    pub task: Task,
    /// The image shape x has (C, H, W).
    pub shape: (usize, usize, usize),
    /// y, [1, C, H', W'].
    pub y: Vec<f32>,
    /// The mask [1, 1, H, W] (1 = observed) for the inpainting tasks.
    pub mask: Option<Vec<f32>>,
    /// The box (x, y, w, h) of `inpaint-box`.
    pub rect: Option<(usize, usize, usize, usize)>,
    /// σ_y in data-range units.
    pub sigma_y: f64,
    /// The seed of the noise (and mask).
    pub seed: u64,
    /// The data range of y.
    pub data_range: DataRange,
    /// sha256 of the ground-truth PNG, when made from one.
    pub source_sha256: Option<String>,
}

/// Options of a measurement to make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasureOptions {
    /// The task.
    pub task: Task,
    /// σ_y ≥ 0.
    pub sigma_y: f64,
    /// Seed.
    pub seed: u64,
    /// Missing fraction for `inpaint`.
    pub p: f64,
    /// Box for `inpaint-box` (default centered, half the size).
    pub rect: Option<(usize, usize, usize, usize)>,
}

/// `--p` when not given: the official inpainting configs' missing fraction.
pub const DEFAULT_P: f64 = 0.92;

impl MeasureOptions {
    /// The options of `--task`, `--sigma-y`, `--seed`, `--p` and `--box`; a flag the task has
    /// no use for is an error (it would be silently ignored).
    pub fn new(
        task: Task,
        sigma_y: f64,
        seed: u64,
        p: Option<f64>,
        rect: Option<&str>,
    ) -> Result<MeasureOptions> {
        if p.is_some() && task != Task::Inpaint {
            bail!("--p applies to --task inpaint only, not {}", task.name());
        }
        if rect.is_some() && task != Task::InpaintBox {
            bail!(
                "--box applies to --task inpaint-box only, not {}",
                task.name()
            );
        }
        Ok(MeasureOptions {
            task,
            sigma_y,
            seed,
            p: p.unwrap_or(DEFAULT_P),
            rect: rect.map(parse_box).transpose()?,
        })
    }
}

/// Parses `x,y,w,h`.
pub fn parse_box(s: &str) -> Result<(usize, usize, usize, usize)> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--box {s}: expected x,y,w,h (pixels)"))?;
    let [x, y, w, h] = v[..] else {
        bail!("--box {s}: expected four numbers x,y,w,h");
    };
    Ok((x, y, w, h))
}

fn core(e: Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl Measurement {
    /// The operator of this measurement.
    pub fn operator(&self) -> Result<AnyOperator<'_>> {
        let (c, h, w) = self.shape;
        Ok(match self.task {
            Task::Denoise => AnyOperator::Identity(Identity::new(c, h, w).map_err(core)?),
            Task::Sr4 => AnyOperator::Sr4(
                SuperResolution4::new(c, h, w)
                    .map_err(|e| anyhow::anyhow!("sr4 on a {h}x{w} image: {e}"))?,
            ),
            Task::InpaintBox => {
                let rect = self.rect.context("inpaint-box without a box")?;
                AnyOperator::Box(
                    BoxInpainting::new(c, h, w, rect)
                        .map_err(|e| anyhow::anyhow!("--box {rect:?}: {e} ({w}x{h} image)"))?,
                )
            }
            Task::Inpaint => {
                let mask = self.mask.as_deref().context("inpaint without a mask")?;
                AnyOperator::Inpaint(Inpainting::new(c, h, w, mask).map_err(core)?)
            }
        })
    }

    /// The shape of y, [1, C, H', W'].
    pub fn y_shape(&self) -> Vec<usize> {
        let (c, h, w) = self.shape;
        match self.task {
            Task::Sr4 => vec![1, c, h / 4, w / 4],
            _ => vec![1, c, h, w],
        }
    }

    /// y = A x + σ_y n for a ground truth x (C×H×W in `range`); σ_y = 0 gives exactly A x.
    pub fn make(
        x: &[f32],
        shape: (usize, usize, usize),
        opts: &MeasureOptions,
        range: DataRange,
        source_sha256: Option<String>,
    ) -> Result<Measurement> {
        if !(opts.sigma_y.is_finite() && opts.sigma_y >= 0.0) {
            bail!("--sigma-y {}: must be a finite number >= 0", opts.sigma_y);
        }
        let (_, h, w) = shape;
        let mut m = Measurement {
            task: opts.task,
            shape,
            y: Vec::new(),
            mask: None,
            rect: None,
            sigma_y: opts.sigma_y,
            seed: opts.seed,
            data_range: range,
            source_sha256,
        };
        match opts.task {
            Task::Inpaint => {
                let mut mask = vec![0.0f32; h * w];
                fill_random_mask(&mut mask, h, w, opts.p, opts.seed)
                    .map_err(|e| anyhow::anyhow!("--p {}: {e}", opts.p))?;
                m.mask = Some(mask);
            }
            Task::InpaintBox => {
                let rect = opts.rect.unwrap_or((w / 4, h / 4, w / 2, h / 2));
                m.rect = Some(rect);
                let op = BoxInpainting::new(shape.0, h, w, rect)
                    .map_err(|e| anyhow::anyhow!("--box {rect:?}: {e} ({w}x{h} image)"))?;
                let mut mask = vec![0.0f32; h * w];
                op.write_mask(&mut mask).map_err(core)?;
                m.mask = Some(mask);
            }
            Task::Sr4 | Task::Denoise => {}
        }
        let op = m.operator()?;
        let mut y = vec![0.0f32; op.output_len()];
        let mut scratch = vec![0.0f32; op.scratch_len()];
        op.forward(x, &mut y, &mut scratch).map_err(core)?;
        if opts.sigma_y > 0.0 {
            let s = opts.sigma_y as f32;
            for (e, v) in y.iter_mut().enumerate() {
                *v += s * noise::gaussian(opts.seed, 0, noise::COUNTER_MEASUREMENT, e as u64);
            }
        }

        m.y = y;
        Ok(m)
    }

    /// The safetensors bytes (formats §4).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut meta = HashMap::new();
        meta.insert("tweedie.task".into(), self.task.name().into());
        meta.insert("tweedie.data_range".into(), self.data_range.as_str().into());
        meta.insert("tweedie.sigma_y".into(), self.sigma_y.to_string());
        meta.insert("tweedie.seed".into(), self.seed.to_string());
        if let Some((x, y, w, h)) = self.rect {
            meta.insert("tweedie.box".into(), format!("{x},{y},{w},{h}"));
        }
        if let Some(sha) = &self.source_sha256 {
            meta.insert("tweedie.source_sha256".into(), sha.clone());
        }
        let (_, h, w) = self.shape;
        let mut tensors = vec![("y", self.y_shape(), &self.y[..])];
        if let Some(mask) = &self.mask {
            tensors.push(("mask", vec![1, 1, h, w], &mask[..]));
        }
        safetensors_bytes(&tensors, meta)
    }

    /// Reads a measurement file for a model of `channels` × `size` × `size`.
    pub fn read(path: &Path, channels: usize, size: usize) -> Result<Measurement> {
        let file = SafetensorsFile::open(path)?;
        let label = file.label().to_string();
        let meta = file.metadata()?;
        let get = |k: &str| {
            meta.get(k)
                .with_context(|| format!("{label}: metadata {k} missing (formats.md §4)"))
        };
        let task_name = get("tweedie.task")?;
        let task = Task::from_name(task_name)
            .with_context(|| format!("{label}: tweedie.task `{task_name}` unknown"))?;
        let data_range = get("tweedie.data_range")?
            .parse::<DataRange>()
            .with_context(|| format!("{label}: tweedie.data_range"))?;
        let sigma_y: f64 = get("tweedie.sigma_y")?
            .parse()
            .with_context(|| format!("{label}: tweedie.sigma_y is not a number"))?;
        let seed: u64 = meta
            .get("tweedie.seed")
            .map(|s| s.parse())
            .transpose()
            .with_context(|| format!("{label}: tweedie.seed is not an integer"))?
            .unwrap_or(0);
        let rect = meta.get("tweedie.box").map(|b| parse_box(b)).transpose()?;
        let y = file.tensor_f32("y")?;
        if let Some(i) = y.data.iter().position(|v| !v.is_finite()) {
            bail!(
                "{label}: y holds {} at element {i}; a measurement must be finite",
                y.data[i]
            );
        }
        let mut m = Measurement {
            task,
            shape: (channels, size, size),
            y: y.data,
            mask: None,
            rect,
            sigma_y,
            seed,
            data_range,
            source_sha256: meta.get("tweedie.source_sha256").cloned(),
        };
        if y.shape != m.y_shape() {
            bail!(
                "{label}: y has shape {:?} but a {} measurement of a {channels}x{size}x{size} model has {:?}",
                y.shape,
                task.name(),
                m.y_shape()
            );
        }
        if task == Task::Inpaint {
            let mask = file.tensor_f32("mask")?;
            if mask.shape != [1, 1, size, size] {
                bail!(
                    "{label}: mask has shape {:?}, expected [1, 1, {size}, {size}]",
                    mask.shape
                );
            }
            m.mask = Some(mask.data);
        }
        if task == Task::InpaintBox && rect.is_none() {
            bail!("{label}: inpaint-box measurement without tweedie.box");
        }
        m.operator().with_context(|| label.clone())?;
        Ok(m)
    }

    /// y as an image of the input size for the measurement's own PSNR (spec §11.1): SR is
    /// upsampled 4× by nearest neighbour, the others are y itself.
    pub fn as_input_image(&self) -> Vec<f32> {
        let (c, h, w) = self.shape;
        match self.task {
            Task::Sr4 => {
                let (lh, lw) = (h / 4, w / 4);
                let mut out = vec![0.0; c * h * w];
                for ch in 0..c {
                    for r in 0..h {
                        for col in 0..w {
                            out[ch * h * w + r * w + col] =
                                self.y[ch * lh * lw + (r / 4) * lw + col / 4];
                        }
                    }
                }
                out
            }
            _ => self.y.clone(),
        }
    }
}
