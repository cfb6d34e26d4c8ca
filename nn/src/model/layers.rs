//! The layer vocabulary both networks share on the CPU: parameter views resolved by PyTorch
//! name and size from a [`Weights`] file ([`ParamResolver`], after candle's `VarBuilder`), and
//! the layer calls split over the worker pool ([`linear`], [`group_norm`], [`conv`]).
//!
//! Every split only decides which thread computes which outputs; the kernels compute each
//! element in the same order whatever range they get, so no split changes a bit.

use std::ops::Range;
use std::sync::Arc;

use anyhow::Result;
use tweedie_kernels::{self as k, Conv2d, Isa, KernelError, WeightsRef, Winograd};

use crate::backend::profile::{self, Kind};
use crate::backend::{Pool, ThreadScratch};
use crate::weights::Weights;

/// A convolution with its weights.
#[derive(Debug, Clone)]
pub struct ConvP<'w> {
    /// Shape.
    pub conv: Conv2d,
    /// Weights, OIHW.
    pub weight: WeightsRef<'w>,
    /// Bias, one per output channel.
    pub bias: &'w [f32],
    /// The Winograd form the CPU forward runs it in, if any ([`ConvP::set_form`]).
    pub wino: Option<WinoWeights>,
}

/// A convolution's Winograd form and its weights transformed for it (once per model load).
#[derive(Debug, Clone)]
pub struct WinoWeights {
    /// The form.
    pub wg: Winograd,
    /// [`Winograd::transform_forward_weights`] of the layer's weights (widened to f32).
    pub u: Arc<[f32]>,
}

/// How the CPU forward computes its 3×3 'same' convolutions (`--conv`). The device backends
/// always run the direct convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvPolicy {
    /// The direct convolution everywhere (the bits of the forward before Winograd).
    Direct,
    /// Winograd wherever it can compute the layer ([`ConvForm::chosen`]: thin, small and
    /// wide layers included; for tests and comparisons).
    Winograd,
    /// [`ConvForm::rule`].
    #[default]
    Auto,
}

impl std::str::FromStr for ConvPolicy {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<ConvPolicy> {
        match s {
            "direct" => Ok(ConvPolicy::Direct),
            "winograd" => Ok(ConvPolicy::Winograd),
            "auto" => Ok(ConvPolicy::Auto),
            _ => anyhow::bail!("{s}: expected direct, winograd or auto"),
        }
    }
}

/// The form one convolution of the CPU forward takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvForm {
    /// The direct convolution (implicit GEMM or the small-map direct path).
    Direct,
    /// Winograd F(2×2, 3×3): 2.25× fewer products.
    F2x2,
    /// Winograd F(4×4, 3×3): 4× fewer products.
    F4x4,
}

/// Most channel pairs (c_in·c_out) of a layer [`ConvForm::rule`] runs in Winograd form: its
/// transformed weights take 4× (F(4×4)) or 1.8× (F(2×2)) the memory of its weights, which the
/// wide, low-resolution layers repay least: in the FFHQ-256 ADM, the layers of 512 × 512
/// pairs and more (at 16×16 and 8×8) hold 60 M of its 77 M 3×3 weights and 7.5 % of its
/// multiply-adds; transforming them would add 660 MB to save 5.4 % of the multiply-adds and
/// break the 1 GB bound of its forward. With this bound it keeps 278 MB of transformed
/// weights (peak 946 MiB at batch 1, 2 threads).
pub const WINOGRAD_MAX_PAIRS: usize = 1 << 17;

impl ConvForm {
    /// The auto rule, a function of the layer's shape and input map only (never of the ISA,
    /// the thread count or the batch, so a model's bits are the same everywhere): a 3×3,
    /// stride-1, padding-1 convolution with 8 channels or more in and out and at most
    /// [`WINOGRAD_MAX_PAIRS`] channel pairs runs in F(4×4) on maps of 16 tiles of 4×4 or
    /// more (16×16), else in F(2×2) on maps of 16 tiles of 2×2 or more (8×8); every other
    /// one runs direct. (The map and channel thresholds are [`Winograd::for_map`]'s, the
    /// trainer's rule for its forward.)
    pub fn rule(conv: &Conv2d, h: usize, w: usize) -> ConvForm {
        if conv.c_in * conv.c_out > WINOGRAD_MAX_PAIRS {
            return ConvForm::Direct;
        }
        Winograd::for_map(conv, h, w).map_or(ConvForm::Direct, |wg| ConvForm::of(&wg))
    }

    /// The form `policy` gives a convolution on an h × w map: under
    /// [`ConvPolicy::Winograd`], [`Winograd::for_map`]'s form (whatever the channel pairs)
    /// where it names one, else F(2×2) where Winograd applies at all.
    pub fn chosen(policy: ConvPolicy, conv: &Conv2d, h: usize, w: usize) -> ConvForm {
        match policy {
            ConvPolicy::Direct => ConvForm::Direct,
            ConvPolicy::Auto => ConvForm::rule(conv, h, w),
            ConvPolicy::Winograd => match (Winograd::for_map(conv, h, w), Winograd::of(conv)) {
                (Some(wg), _) => ConvForm::of(&wg),
                (None, Some(_)) => ConvForm::F2x2,
                (None, None) => ConvForm::Direct,
            },
        }
    }

    fn of(wg: &Winograd) -> ConvForm {
        if wg.tile() == 4 {
            ConvForm::F4x4
        } else {
            ConvForm::F2x2
        }
    }

    /// The name run.json records: `direct`, `F2x2` or `F4x4`.
    pub fn name(self) -> &'static str {
        match self {
            ConvForm::Direct => "direct",
            ConvForm::F2x2 => "F2x2",
            ConvForm::F4x4 => "F4x4",
        }
    }
}

impl ConvP<'_> {
    /// Sets the form the CPU forward runs this convolution in on an h × w input map (by
    /// `policy`), transforming its weights when that is a Winograd form.
    pub fn set_form(&mut self, policy: ConvPolicy, h: usize, w: usize) -> Result<ConvForm> {
        let form = ConvForm::chosen(policy, &self.conv, h, w);
        self.wino = match (form, Winograd::of(&self.conv)) {
            (ConvForm::Direct, _) | (_, None) => None,
            (form, Some(wg)) => {
                let wg = if form == ConvForm::F4x4 {
                    wg.with_4x4_tiles()
                } else {
                    wg
                };
                let wide: Vec<f32> = match self.weight {
                    WeightsRef::F32(w) => w.to_vec(),
                    WeightsRef::F16(w) => w.iter().map(|v| v.to_f32()).collect(),
                };
                let mut u = vec![0.0; wg.forward_weights_len()];
                let mut whole = vec![0.0; wg.weights_len()];
                wg.transform_forward_weights(&wide, &mut u, &mut whole)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Some(WinoWeights { wg, u: u.into() })
            }
        };
        Ok(self.form())
    }

    /// The form the CPU forward runs it in.
    pub fn form(&self) -> ConvForm {
        self.wino
            .as_ref()
            .map_or(ConvForm::Direct, |w| ConvForm::of(&w.wg))
    }

    /// Scratch floats one thread needs for it on an h × w input.
    pub fn scratch_len(&self, h: usize, w: usize) -> usize {
        let wino = self.wino.as_ref().map_or(0, |t| t.wg.scratch_len(h, w));
        self.conv.scratch_len(h, w).max(wino)
    }

    /// Bytes of its transformed weights.
    pub fn wino_bytes(&self) -> usize {
        self.wino.as_ref().map_or(0, |w| 4 * w.u.len())
    }
}

/// One convolution's form in a model, as run.json records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerForm {
    /// The PyTorch name of the convolution.
    pub name: String,
    /// Input map height and width.
    pub map: (usize, usize),
    /// Channels in and out.
    pub channels: (usize, usize),
    /// Its form.
    pub form: ConvForm,
}

/// A GroupNorm layer: its shape and affine parameters.
#[derive(Debug, Clone, Copy)]
pub struct NormP<'w> {
    /// Normalised channels.
    pub channels: usize,
    /// Groups (dividing `channels`).
    pub groups: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Scale, one per channel.
    pub gamma: &'w [f32],
    /// Shift, one per channel.
    pub beta: &'w [f32],
}

impl NormP<'_> {
    /// Groups `g` of this GroupNorm (+FiLM `film` = (scale, shift), +SiLU) of one sample `x`
    /// of `hw`-pixel maps into `out`, the kernel's share of those groups.
    pub(crate) fn forward_groups(
        &self,
        x: &[f32],
        hw: usize,
        film: Option<(&[f32], &[f32])>,
        silu: bool,
        g: Range<usize>,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        k::GroupNorm {
            channels: self.channels,
            hw,
            groups: self.groups,
            eps: self.eps,
            silu,
        }
        .forward(
            x,
            &k::NormAffine {
                gamma: self.gamma,
                beta: self.beta,
                film,
            },
            g,
            out,
        )
    }
}

/// A Linear layer.
#[derive(Debug, Clone, Copy)]
pub struct LinearP<'w> {
    /// Weights, out × in.
    pub weight: WeightsRef<'w>,
    /// Bias, one per output feature.
    pub bias: &'w [f32],
    /// Input features.
    pub in_features: usize,
}

/// Looks up tensors by PyTorch name and checks their sizes.
#[derive(Clone, Copy)]
pub struct ParamResolver<'w> {
    /// The loaded weights.
    pub weights: &'w Weights,
}

impl<'w> ParamResolver<'w> {
    /// A weight in its storage precision (f32 or f16), `len` elements.
    pub fn any(&self, name: &str, len: usize) -> Result<WeightsRef<'w>> {
        self.weights.kernel_ref(name, len)
    }

    /// An f32 tensor of `len` elements (biases, norms).
    pub fn f32(&self, name: &str, len: usize) -> Result<&'w [f32]> {
        self.weights.f32_exact(name, len)
    }

    /// `{p}.weight` and `{p}.bias` of a GroupNorm over `channels` in `groups`.
    pub fn norm(&self, p: &str, channels: usize, groups: usize, eps: f32) -> Result<NormP<'w>> {
        Ok(NormP {
            channels,
            groups,
            eps,
            gamma: self.f32(&format!("{p}.weight"), channels)?,
            beta: self.f32(&format!("{p}.bias"), channels)?,
        })
    }

    /// `{p}.weight` and `{p}.bias` of a convolution.
    pub fn conv(&self, p: &str, conv: Conv2d) -> Result<ConvP<'w>> {
        let len = conv.c_out * conv.c_in * conv.kernel * conv.kernel;
        Ok(ConvP {
            conv,
            weight: self.any(&format!("{p}.weight"), len)?,
            bias: self.f32(&format!("{p}.bias"), conv.c_out)?,
            wino: None,
        })
    }

    /// `{p}.weight` and `{p}.bias` of a Linear layer.
    pub fn linear(&self, p: &str, in_features: usize, out_features: usize) -> Result<LinearP<'w>> {
        Ok(LinearP {
            weight: self.any(&format!("{p}.weight"), in_features * out_features)?,
            bias: self.f32(&format!("{p}.bias"), out_features)?,
            in_features,
        })
    }
}

/// `out = linear(x)` split over output features.
pub fn linear(pool: &Pool, x: &[f32], p: &LinearP, out: &mut [f32]) -> Result<(), KernelError> {
    linear_batch(pool, x, 1, p, out)
}

/// Output features a chunk of [`linear_batch`] runs for every sample before the next ones.
const LINEAR_ROWS: usize = 16;

/// `out[s] = linear(x[s])` for the `batch` samples of `x` `[batch, in]` into `out`
/// `[batch, out]`: one job split over output features, each chunk running its features in
/// blocks of [`LINEAR_ROWS`] for every sample in turn, so a block of weights is read once for
/// the whole batch. Each output is still the kernel's dot product of one row with one sample.
pub fn linear_batch(
    pool: &Pool,
    x: &[f32],
    batch: usize,
    p: &LinearP,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let inf = p.in_features;
    if x.len() != batch * inf {
        return Err(KernelError::Shape(
            "linear: input is not batch x in_features",
        ));
    }
    let _p = profile::scope(Kind::Linear, (out.len() * inf) as u64);
    pool.split_columns(out, batch, LINEAR_ROWS, |_, o, pieces| {
        for start in o.clone().step_by(LINEAR_ROWS) {
            let rows = start..(start + LINEAR_ROWS).min(o.end);
            let at = rows.start - o.start..rows.end - o.start;
            for (xs, piece) in x.chunks_exact(inf).zip(pieces.iter_mut()) {
                k::linear(
                    xs,
                    p.weight,
                    p.bias,
                    inf,
                    rows.clone(),
                    &mut piece[at.clone()],
                )?;
            }
        }
        Ok(())
    })
}

/// GroupNorm (+FiLM, +SiLU) of `channels` maps of `hw` pixels, split over groups.
pub fn group_norm(
    pool: &Pool,
    x: &[f32],
    hw: usize,
    p: &NormP,
    film: Option<(&[f32], &[f32])>,
    silu: bool,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let _p = profile::scope(Kind::GroupNorm, 0);
    pool.split(out, p.groups, 1, |_, g, piece| {
        p.forward_groups(x, hw, film, silu, g, piece)
    })
}

/// [`group_norm`] of `batch` samples (`x` and `out` `[batch, channels, hw]`) in one job split
/// over (sample, group); `film` holds per sample 2·channels values, the scale then the shift
/// (the ADM `emb_layers` output).
pub fn group_norm_batch(
    pool: &Pool,
    x: &[f32],
    (batch, hw): (usize, usize),
    p: &NormP,
    film: Option<&[f32]>,
    silu: bool,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (c, per) = (p.channels, p.channels * hw);
    if x.len() != batch * per || film.is_some_and(|f| f.len() != batch * 2 * c) {
        return Err(KernelError::Shape(
            "group_norm: input or FiLM is not batch x channels",
        ));
    }
    let _p = profile::scope(Kind::GroupNorm, 0);
    pool.split_batch(out, batch, p.groups, 1, |_, s, g, piece| {
        let film = film.map(|f| f[s * 2 * c..(s + 1) * 2 * c].split_at(c));
        p.forward_groups(&x[s * per..(s + 1) * per], hw, film, silu, g, piece)
    })
}

/// A convolution of an `h`×`w` input split between threads with the microkernels of `isa`:
/// [`conv_batch`] of one sample.
pub fn conv(
    pool: &Pool,
    scratch: &ThreadScratch,
    isa: Isa,
    x: &[f32],
    (h, w): (usize, usize),
    p: &ConvP,
    out: &mut [f32],
) -> Result<(), KernelError> {
    conv_batch(pool, scratch, isa, x, (1, h, w), p, out)
}

/// The convolution of `batch` samples of `h`×`w` (`x` `[batch, c_in, h, w]`, `out`
/// `[batch, c_out, oh, ow]`) in one job with the microkernels of `isa`, split between threads
/// over (sample, pixels or channels): in its Winograd form ([`ConvP::wino`]) by pixel ranges
/// of whole tile rows; else a map with more pixels than output channels by pixel ranges (each
/// thread then packs only its own im2col columns), others by output channels in multiples of
/// the microkernel's rows. The kernels run sample by sample on their ranges. `scratch` holds
/// one buffer per thread.
pub fn conv_batch(
    pool: &Pool,
    scratch: &ThreadScratch,
    isa: Isa,
    x: &[f32],
    (batch, h, w): (usize, usize, usize),
    p: &ConvP,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let kind = if p.conv.kernel == 1 {
        Kind::Conv1x1
    } else {
        Kind::Conv3x3
    };
    let k_total = p.conv.c_in * p.conv.kernel * p.conv.kernel;
    let _p = profile::scope(kind, (out.len() * k_total) as u64);
    let per = p.conv.c_in * h * w;
    if x.len() != batch * per {
        return Err(KernelError::Shape(
            "conv2d: input is not batch x c_in x h x w",
        ));
    }
    let sample = |s: usize| k::Map::new(&x[s * per..(s + 1) * per], h, w);
    let params = k::ConvParams {
        weight: p.weight,
        bias: p.bias,
    };
    let c_out = p.conv.c_out;
    if let Some(WinoWeights { wg, u }) = &p.wino {
        let band = wg.pixels_per_tile_row(w);
        return pool.split_batch_columns(out, batch, c_out, band, |i, s, px, rows| {
            let mut sc = scratch.lock(i);
            let u = k::ConvParams {
                weight: &u[..],
                bias: p.bias,
            };
            wg.forward_pixels(isa, sample(s), u, px, rows, &mut sc)
        });
    }
    let (oh, ow) = p.conv.out_size(h, w);
    if oh * ow >= 2 * c_out {
        return pool.split_batch_columns(out, batch, c_out, k::conv::NR, |i, s, px, rows| {
            let mut sc = scratch.lock(i);
            p.conv
                .forward_pixels(isa, sample(s), params, px, rows, &mut sc)
        });
    }
    pool.split_batch(out, batch, c_out, k::conv::MR, |i, s, co, piece| {
        let mut sc = scratch.lock(i);
        p.conv
            .forward_with(isa, sample(s), params, co, piece, &mut sc)
    })
}
