//! The layer vocabulary both networks share on the CPU: parameter views resolved by PyTorch
//! name and size from a [`Weights`] file ([`ParamResolver`], after candle's `VarBuilder`), and
//! the layer calls split over the worker pool ([`linear`], [`group_norm`], [`conv`]).
//!
//! Every split only decides which thread computes which outputs; the kernels compute each
//! element in the same order whatever range they get, so no split changes a bit.

use std::ops::Range;
use std::sync::{Arc, Mutex};

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

/// A convolution's Winograd form and its weights transformed for it.
#[derive(Debug, Clone)]
pub struct WinoWeights {
    /// The form.
    pub wg: Winograd,
    /// Where its transformed weights come from.
    pub u: Transformed,
}

/// A Winograd layer's transformed weights: made once per model load, or at each call.
/// Either way they are the same floats ([`Winograd::transform_weights`] of the weights
/// widened to f32), so the choice never changes a bit.
#[derive(Debug, Clone)]
pub enum Transformed {
    /// [`Winograd::transform_forward_weights`], kept with the model.
    Cached(Arc<[f32]>),
    /// [`Winograd::transform_weights`] into the model's shared buffer before each call.
    PerCall(TransformBuffer),
}

/// The buffer the per-call Winograd layers of one model share: the forward runs one
/// convolution at a time, so one buffer of the largest layer's size serves them all.
#[derive(Debug, Clone, Default)]
pub struct TransformBuffer(Arc<Mutex<Vec<f32>>>);

impl TransformBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<f32>> {
        // A poisoned lock still hands the buffer out: it holds no state between calls.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Floats it holds.
    pub fn floats(&self) -> usize {
        self.lock().len()
    }

    /// Floats a per-call transform of `wg` for `weight` needs: the whole transform, then
    /// the weights widened to f32 when they are stored as f16.
    fn floats_for(wg: &Winograd, weight: WeightsRef) -> usize {
        wg.weights_len()
            + match weight {
                WeightsRef::F32(_) => 0,
                WeightsRef::F16(w) => w.len(),
            }
    }

    /// Transforms `weight` for `wg` into `buf` (at least [`TransformBuffer::floats_for`]
    /// floats) and returns the transformed weights.
    fn transform<'b>(
        wg: &Winograd,
        weight: WeightsRef,
        buf: &'b mut [f32],
    ) -> Result<&'b [f32], KernelError> {
        let (u, wide) = buf.split_at_mut(wg.weights_len());
        let weight = match weight {
            WeightsRef::F32(w) => w,
            WeightsRef::F16(w) => {
                let wide = &mut wide[..w.len()];
                for (d, s) in wide.iter_mut().zip(w) {
                    *d = s.to_f32();
                }
                &*wide
            }
        };
        wg.transform_weights(weight, u)?;
        Ok(u)
    }
}

/// Bytes of transformed Winograd weights a model keeps from one forward to the next; the
/// other Winograd layers transform theirs at each call ([`cached_forms`] picks which). The
/// FFHQ-256 NCSN++ has 635 MB of them (its 256-channel layers at 64 × 64 down to 8 × 8):
/// all kept, its forward (batch 1, 2 threads) peaks at 1280 MiB, over the 1 GB bound; with
/// 224 MiB kept, at 930 MiB (256 MiB: 962), about 5 % slower. The FFHQ-256 ADM keeps
/// 234 of its 278 MB: 918 MiB (931 with all), 1–4 % slower (measured on a quiet EPYC).
pub const WINOGRAD_CACHE_BYTES: usize = 224 << 20;

/// Which of `forms` keep their transformed weights under `budget` bytes: fewest tiles
/// first, since a transform costs the same whatever the map while the convolution's work
/// grows with its tiles, so per call it costs the most, relative to the layer, on small
/// maps; a layer that does not fit is passed over for the next.
pub fn cached_forms(forms: &[LayerForm], budget: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..forms.len()).collect();
    order.sort_by_key(|&i| (forms[i].tiles(), i));
    let mut keep = vec![false; forms.len()];
    let mut left = budget;
    for i in order {
        let bytes = forms[i].transformed_bytes();
        if bytes > 0 && bytes <= left {
            keep[i] = true;
            left -= bytes;
        }
    }
    keep
}

/// A model's convolutions, each with its name and input map (h, w), in layer order: the
/// callback the models' walks take.
pub type ConvVisit<'a> = dyn FnMut(&str, &mut ConvP, usize, usize) -> Result<()> + 'a;

/// Sets the form of every convolution `walk` visits by `policy` and lists the 3×3 'same'
/// ones. Given a cache of `budget` bytes ([`WINOGRAD_CACHE_BYTES`] in the models), also
/// transforms the Winograd layers' weights: kept for those [`cached_forms`] picks, made at
/// each call (into one shared buffer) for the others. Without, only lists what the forms
/// would be.
pub fn set_forms(
    policy: ConvPolicy,
    budget: Option<usize>,
    walk: &mut dyn FnMut(&mut ConvVisit) -> Result<()>,
) -> Result<Vec<LayerForm>> {
    let mut forms = Vec::new();
    walk(&mut |name, c, h, w| {
        if Winograd::of(&c.conv).is_some() {
            forms.push(LayerForm {
                name: name.to_string(),
                map: (h, w),
                channels: (c.conv.c_in, c.conv.c_out),
                form: ConvForm::chosen(policy, &c.conv, h, w),
            });
        }
        Ok(())
    })?;
    let Some(budget) = budget else {
        return Ok(forms);
    };
    let keep = cached_forms(&forms, budget);
    let buffer = TransformBuffer::default();
    let mut next = 0;
    walk(&mut |_, c, h, w| {
        let mut per_call = None;
        if Winograd::of(&c.conv).is_some() {
            per_call = (!keep[next]).then_some(&buffer);
            next += 1;
        }
        c.set_form(policy, h, w, per_call)?;
        Ok(())
    })?;
    Ok(forms)
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
    /// `policy`). A Winograd form transforms its weights here, or, given `per_call`, at
    /// each call into that buffer (grown here to fit).
    pub fn set_form(
        &mut self,
        policy: ConvPolicy,
        h: usize,
        w: usize,
        per_call: Option<&TransformBuffer>,
    ) -> Result<ConvForm> {
        let form = ConvForm::chosen(policy, &self.conv, h, w);
        self.wino = match (form, Winograd::of(&self.conv)) {
            (ConvForm::Direct, _) | (_, None) => None,
            (form, Some(wg)) => {
                let wg = if form == ConvForm::F4x4 {
                    wg.with_4x4_tiles()
                } else {
                    wg
                };
                let u = match per_call {
                    Some(buffer) => {
                        let mut buf = buffer.lock();
                        let len = TransformBuffer::floats_for(&wg, self.weight).max(buf.len());
                        buf.resize(len, 0.0);
                        Transformed::PerCall(buffer.clone())
                    }
                    None => {
                        let mut whole = vec![0.0; TransformBuffer::floats_for(&wg, self.weight)];
                        let all = TransformBuffer::transform(&wg, self.weight, &mut whole)
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        // Only what the forward reads (the packed copy where there is one).
                        Transformed::Cached(all[all.len() - wg.forward_weights_len()..].into())
                    }
                };
                Some(WinoWeights { wg, u })
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

    /// Bytes of the transformed weights it keeps (none when it makes them at each call).
    pub fn wino_bytes(&self) -> usize {
        match self.wino.as_ref().map(|w| &w.u) {
            Some(Transformed::Cached(u)) => 4 * u.len(),
            _ => 0,
        }
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

impl LayerForm {
    /// Its Winograd form, if any.
    fn winograd(&self) -> Option<Winograd> {
        let conv = Conv2d {
            c_in: self.channels.0,
            c_out: self.channels.1,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let wg = Winograd::of(&conv)?;
        match self.form {
            ConvForm::Direct => None,
            ConvForm::F2x2 => Some(wg),
            ConvForm::F4x4 => Some(wg.with_4x4_tiles()),
        }
    }

    /// Bytes of the transformed weights its forward reads (0 when direct).
    pub fn transformed_bytes(&self) -> usize {
        self.winograd().map_or(0, |wg| 4 * wg.forward_weights_len())
    }

    /// Tiles of its map (its pixels when direct).
    pub fn tiles(&self) -> usize {
        let t = self.winograd().map_or(1, |wg| wg.tile());
        self.map.0.div_ceil(t) * self.map.1.div_ceil(t)
    }
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
        let mut buf;
        let u: &[f32] = match u {
            Transformed::Cached(u) => u,
            Transformed::PerCall(buffer) => {
                buf = buffer.lock();
                TransformBuffer::transform(wg, p.weight, &mut buf)?
            }
        };
        let band = wg.pixels_per_tile_row(w);
        return pool.split_batch_columns(out, batch, c_out, band, |i, s, px, rows| {
            let mut sc = scratch.lock(i);
            let u = k::ConvParams {
                weight: u,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn conv_p<'w>(c_in: usize, c_out: usize, weight: WeightsRef<'w>, bias: &'w [f32]) -> ConvP<'w> {
        ConvP {
            conv: Conv2d {
                c_in,
                c_out,
                kernel: 3,
                stride: 1,
                pad: 1,
            },
            weight,
            bias,
            wino: None,
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32)
            .map(|v| v / (1u32 << 24) as f32 - 0.5)
            .collect()
    }

    /// A layer that transforms its weights at each call gives the bits of one that keeps
    /// them, in both forms, with f32 and f16 weights, and twice in a row (the buffer holds
    /// nothing between calls); a buffer shared with a larger layer serves a smaller one.
    #[test]
    fn per_call_transform_gives_the_cached_bits() {
        let (c_in, c_out, h, w, batch) = (12, 20, 16, 16, 2);
        let wf = values(c_out * c_in * 9, 1);
        let wh: Vec<half::f16> = wf.iter().map(|&v| half::f16::from_f32(v)).collect();
        let bias = values(c_out, 2);
        let x = values(batch * c_in * h * w, 3);
        let pool = Pool::new(2);
        let run = |p: &ConvP| {
            let scratch = ThreadScratch::new(2, p.scratch_len(h, w));
            let mut out = vec![0.0; batch * c_out * h * w];
            conv_batch(
                &pool,
                &scratch,
                Isa::detected(),
                &x,
                (batch, h, w),
                p,
                &mut out,
            )
            .unwrap();
            out
        };
        for weight in [WeightsRef::F32(&wf), WeightsRef::F16(&wh)] {
            for (map, form) in [(16, ConvForm::F4x4), (8, ConvForm::F2x2)] {
                let mut kept = conv_p(c_in, c_out, weight, &bias);
                assert_eq!(
                    kept.set_form(ConvPolicy::Auto, map, map, None).unwrap(),
                    form
                );
                let buffer = TransformBuffer::default();
                let mut made = conv_p(c_in, c_out, weight, &bias);
                assert_eq!(
                    made.set_form(ConvPolicy::Auto, map, map, Some(&buffer))
                        .unwrap(),
                    form
                );
                assert!(buffer.floats() > 0);
                assert_eq!(made.wino_bytes(), 0);
                assert!(kept.wino_bytes() > 0);
                let want = run(&kept);
                assert_eq!(run(&made), want, "{form:?}");
                assert_eq!(run(&made), want, "{form:?}, second call");
                // Grown by a larger layer (its weights never transformed here).
                let grown = buffer.floats() + 100_000;
                buffer.lock().resize(grown, f32::NAN);
                assert_eq!(run(&made), want, "{form:?}, larger buffer");
            }
        }
    }

    /// A model's walk: the layers [`cached_forms`] picks keep their weights, the others
    /// share one buffer, and the direct and 1×1 layers have neither.
    #[test]
    fn set_forms_keeps_what_the_cache_picks() {
        let w = values(64 * 64 * 9, 4);
        let mut convs = [
            (
                conv_p(16, 16, WeightsRef::F32(&w[..16 * 16 * 9]), &[0.0; 16]),
                32,
            ),
            (conv_p(64, 64, WeightsRef::F32(&w), &[0.0; 64]), 8),
            (
                conv_p(16, 16, WeightsRef::F32(&w[..16 * 16 * 9]), &[0.0; 16]),
                4,
            ),
            (
                conv_p(16, 16, WeightsRef::F32(&w[..16 * 16 * 9]), &[0.0; 16]),
                16,
            ),
        ];
        convs[2].0.conv.kernel = 1;
        let mut walk = |f: &mut ConvVisit| {
            for (c, map) in convs.iter_mut() {
                f("", c, *map, *map)?;
            }
            Ok(())
        };
        let listed = set_forms(ConvPolicy::Auto, None, &mut walk).unwrap();
        let forms: Vec<ConvForm> = listed.iter().map(|l| l.form).collect();
        assert_eq!(forms, [ConvForm::F4x4, ConvForm::F2x2, ConvForm::F4x4]);
        // Room for the 8 × 8 layer and the 16 × 16 one; the 32 × 32 one is made per call.
        let budget = listed[1].transformed_bytes() + listed[2].transformed_bytes();
        let set = set_forms(ConvPolicy::Auto, Some(budget), &mut walk).unwrap();
        assert_eq!(set, listed);
        let kept: Vec<bool> = convs.iter().map(|(c, _)| c.wino_bytes() > 0).collect();
        assert_eq!(kept, [false, true, false, true]);
        let per_call = |c: &ConvP| {
            matches!(
                c.wino,
                Some(WinoWeights {
                    u: Transformed::PerCall(_),
                    ..
                })
            )
        };
        let made: Vec<bool> = convs.iter().map(|(c, _)| per_call(c)).collect();
        assert_eq!(made, [true, false, false, false]);
        assert_eq!(convs[2].0.form(), ConvForm::Direct);
    }

    fn form(map: usize, channels: usize, form: ConvForm) -> LayerForm {
        LayerForm {
            name: String::new(),
            map: (map, map),
            channels: (channels, channels),
            form,
        }
    }

    /// The cache keeps the layers of fewest tiles first, skips one that does not fit for
    /// the next that does, and never keeps a direct one.
    #[test]
    fn the_cache_keeps_small_maps_first_within_its_budget() {
        let forms = [
            form(64, 64, ConvForm::F4x4),
            form(16, 128, ConvForm::F4x4),
            form(8, 64, ConvForm::F2x2),
            form(4, 64, ConvForm::Direct),
            form(32, 64, ConvForm::F4x4),
        ];
        let bytes: Vec<usize> = forms.iter().map(|f| f.transformed_bytes()).collect();
        assert_eq!(bytes[3], 0);
        assert_eq!(forms[0].tiles(), 256);
        assert_eq!(forms[2].tiles(), 16);
        assert_eq!(forms[3].tiles(), 16);
        assert_eq!(
            cached_forms(&forms, usize::MAX),
            [true, true, true, false, true]
        );
        assert_eq!(cached_forms(&forms, 0), [false; 5]);
        // Room for the 8 × 8 layer and the 16 × 16 one, not then the 32 × 32: the 64 × 64
        // one is as large as the 32 × 32 one, so it does not fit either.
        let budget = bytes[2] + bytes[1] + bytes[4] - 1;
        assert_eq!(
            cached_forms(&forms, budget),
            [false, true, true, false, false]
        );
        // Without room for the 16 × 16 layer, the 32 × 32 one (next by tiles) is kept.
        let budget = bytes[2] + bytes[4];
        assert_eq!(
            cached_forms(&forms, budget),
            [false, false, true, false, true]
        );
    }
}
