//! A whole-network f64 reference forward of the ADM U-Net (`adm`) and of NCSN++ (`ncsnpp`), for
//! accuracy checks of the f32 forwards: plain loops over the stored f32 weights widened to f64,
//! written from docs/adm_unet.md and docs/ncsnpp.md (and the PyTorch code they describe), with
//! nothing from the library's forwards or kernels — only its configs and weight loading.
//! Clarity over speed; the convolutions split their output channels over the machine's cores
//! so that the full FFHQ-256 networks run in minutes.
//!
//! The reference itself is checked against the PyTorch golden data in
//! nn/tests/f64_reference_golden.rs.

pub mod adm;
pub mod ncsnpp;

use tweedie_nn::weights::{TensorData, Weights};

/// Called with (activation name, values) for the activations the golden files store, under
/// their names without `act.` (`input_blocks.3`, `all_modules.12`, `x_scaled`, …).
pub type Record<'a> = dyn FnMut(&str, &[f64]) + 'a;

/// A feature map of one sample: `c` channels of `h`×`w`, row-major.
#[derive(Debug, Clone)]
pub struct Map {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub v: Vec<f64>,
}

impl Map {
    pub fn new(c: usize, h: usize, w: usize, v: Vec<f64>) -> Map {
        assert_eq!(v.len(), c * h * w, "map {c}x{h}x{w}");
        Map { c, h, w, v }
    }

    pub fn from_f32(c: usize, h: usize, w: usize, x: &[f32]) -> Map {
        Map::new(c, h, w, x.iter().map(|&v| v as f64).collect())
    }

    pub fn zeros(c: usize, h: usize, w: usize) -> Map {
        Map::new(c, h, w, vec![0.0; c * h * w])
    }

    pub fn plane(&self, c: usize) -> &[f64] {
        let hw = self.h * self.w;
        &self.v[c * hw..][..hw]
    }

    /// Element-wise `f`.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Map {
        Map::new(
            self.c,
            self.h,
            self.w,
            self.v.iter().map(|&v| f(v)).collect(),
        )
    }

    /// Element-wise `f(self, other)` of two maps of one shape.
    pub fn zip(&self, other: &Map, f: impl Fn(f64, f64) -> f64) -> Map {
        assert_eq!((self.c, self.h, self.w), (other.c, other.h, other.w));
        let v = self
            .v
            .iter()
            .zip(&other.v)
            .map(|(&a, &b)| f(a, b))
            .collect();
        Map::new(self.c, self.h, self.w, v)
    }

    /// Channel concatenation [self, other].
    pub fn concat(&self, other: &Map) -> Map {
        assert_eq!((self.h, self.w), (other.h, other.w));
        let v = self.v.iter().chain(&other.v).copied().collect();
        Map::new(self.c + other.c, self.h, self.w, v)
    }
}

/// A parameter tensor widened to f64.
pub fn param(weights: &Weights, name: &str) -> Vec<f64> {
    let t = weights
        .get(name)
        .unwrap_or_else(|e| panic!("reference: {e}"));
    match t.data {
        TensorData::F32(d) => d.iter().map(|&v| v as f64).collect(),
        TensorData::F16(d) => d.iter().map(|v| v.to_f32() as f64).collect(),
    }
}

/// A parameter's shape.
pub fn shape(weights: &Weights, name: &str) -> Vec<usize> {
    weights
        .get(name)
        .unwrap_or_else(|e| panic!("reference: {e}"))
        .shape
        .to_vec()
}

pub fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

/// `f(channel, plane)` for every channel plane of `out` (planes of `per` values), the channels
/// split in contiguous ranges over the machine's cores.
fn par_planes(out: &mut [f64], per: usize, f: impl Fn(usize, &mut [f64]) + Sync) {
    let planes = out.len() / per;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = planes.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (i, piece) in out.chunks_mut(chunk * per).enumerate() {
            let f = &f;
            s.spawn(move || {
                for (j, plane) in piece.chunks_mut(per).enumerate() {
                    f(i * chunk + j, plane);
                }
            });
        }
    });
}

/// PyTorch `Conv2d` (cross-correlation) with weight [c_out, c_in, k, k] of tensor
/// `{prefix}.weight` and bias `{prefix}.bias`, zero padding `pad`, stride `stride`.
pub fn conv2d(weights: &Weights, prefix: &str, x: &Map, stride: usize, pad: usize) -> Map {
    let wname = format!("{prefix}.weight");
    let s = shape(weights, &wname);
    assert!(
        s.len() == 4 && s[2] == s[3],
        "{prefix}: square 2-D kernels only"
    );
    let (co, ci, k) = (s[0], s[1], s[2]);
    assert_eq!(ci, x.c, "{prefix}: {ci} input channels, got {}", x.c);
    let wt = param(weights, &wname);
    let bias = param(weights, &format!("{prefix}.bias"));
    let ho = (x.h + 2 * pad - k) / stride + 1;
    let wo = (x.w + 2 * pad - k) / stride + 1;
    let mut out = Map::zeros(co, ho, wo);
    par_planes(&mut out.v, ho * wo, |o, plane| {
        plane.fill(bias[o]);
        for c in 0..ci {
            let xp = x.plane(c);
            let kern = &wt[(o * ci + c) * k * k..][..k * k];
            for dy in 0..k {
                for y in 0..ho {
                    let Some(yy) = (y * stride + dy).checked_sub(pad).filter(|&v| v < x.h) else {
                        continue;
                    };
                    let row = &xp[yy * x.w..][..x.w];
                    let orow = &mut plane[y * wo..][..wo];
                    for dx in 0..k {
                        conv_row(orow, row, kern[dy * k + dx], dx, stride, pad);
                    }
                }
            }
        }
    });
    out
}

/// orow[x] += kv · row[x·stride + dx − pad] where that index is inside the row.
fn conv_row(orow: &mut [f64], row: &[f64], kv: f64, dx: usize, stride: usize, pad: usize) {
    let lo = pad.saturating_sub(dx).div_ceil(stride);
    let hi = orow
        .len()
        .min((row.len() + pad).saturating_sub(dx).div_ceil(stride));
    if lo >= hi {
        return;
    }
    if stride == 1 {
        let src = &row[lo + dx - pad..hi + dx - pad];
        for (o, &v) in orow[lo..hi].iter_mut().zip(src) {
            *o += kv * v;
        }
    } else {
        for (x, o) in orow.iter_mut().enumerate().take(hi).skip(lo) {
            *o += kv * row[x * stride + dx - pad];
        }
    }
}

/// A 1×1 convolution (`Conv2d` k = 1 or `Conv1d` k = 1: weight [c_out, c_in, 1(, 1)]):
/// out[o, p] = b[o] + Σ_c W[o, c] x[c, p].
pub fn conv1x1(weights: &Weights, prefix: &str, x: &Map) -> Map {
    let wname = format!("{prefix}.weight");
    let s = shape(weights, &wname);
    assert!(s[2..].iter().all(|&d| d == 1), "{prefix}: not a 1x1 kernel");
    pointwise(
        &param(weights, &wname),
        &param(weights, &format!("{prefix}.bias")),
        x,
    )
}

/// out[o, p] = b[o] + Σ_c w[o·c_in + c] x[c, p].
pub fn pointwise(w: &[f64], b: &[f64], x: &Map) -> Map {
    let (co, hw) = (b.len(), x.h * x.w);
    assert_eq!(w.len(), co * x.c);
    let mut out = Map::zeros(co, x.h, x.w);
    par_planes(&mut out.v, hw, |o, plane| {
        plane.fill(b[o]);
        for c in 0..x.c {
            let wv = w[o * x.c + c];
            for (y, &v) in plane.iter_mut().zip(x.plane(c)) {
                *y += wv * v;
            }
        }
    });
    out
}

/// `nn.Linear`: y = W x + b, W [out, in] in `{prefix}.weight`.
pub fn linear(weights: &Weights, prefix: &str, x: &[f64]) -> Vec<f64> {
    let w = param(weights, &format!("{prefix}.weight"));
    let b = param(weights, &format!("{prefix}.bias"));
    assert_eq!(w.len(), b.len() * x.len(), "{prefix}");
    b.iter()
        .enumerate()
        .map(|(o, &bo)| bo + dot(&w[o * x.len()..][..x.len()], x))
        .collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `nn.GroupNorm(groups, C, eps)` with affine `{prefix}.weight` / `{prefix}.bias`: mean and
/// biased variance over each group's channels × positions.
pub fn group_norm(weights: &Weights, prefix: &str, x: &Map, groups: usize, eps: f64) -> Map {
    let gamma = param(weights, &format!("{prefix}.weight"));
    let beta = param(weights, &format!("{prefix}.bias"));
    assert!(gamma.len() == x.c && x.c.is_multiple_of(groups), "{prefix}");
    let per = x.c / groups * x.h * x.w;
    let hw = x.h * x.w;
    let mut out = x.clone();
    for (g, chunk) in out.v.chunks_mut(per).enumerate() {
        let mean = chunk.iter().sum::<f64>() / per as f64;
        let var = chunk.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / per as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (i, v) in chunk.iter_mut().enumerate() {
            let c = g * (x.c / groups) + i / hw;
            *v = (*v - mean) * inv * gamma[c] + beta[c];
        }
    }
    out
}

/// softmax(scale · qᵀk) applied to v for one head: q, k, v are `ch` rows of `t` positions
/// (given by their row indices into `rows`); returns `ch` rows of `t`.
pub fn attend(
    rows: &[f64],
    t: usize,
    q: &[usize],
    k: &[usize],
    v: &[usize],
    scale: f64,
) -> Vec<f64> {
    let row = |r: usize| &rows[r * t..][..t];
    let mut out = vec![0.0; v.len() * t];
    let mut logits = vec![0.0; t];
    for p in 0..t {
        for (s, l) in logits.iter_mut().enumerate() {
            *l = scale
                * q.iter()
                    .zip(k)
                    .map(|(&qr, &kr)| row(qr)[p] * row(kr)[s])
                    .sum::<f64>();
        }
        let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l));
        let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        for (c, &vr) in v.iter().enumerate() {
            let vrow = row(vr);
            out[c * t + p] = logits
                .iter()
                .zip(vrow)
                .map(|(l, x)| (l - max).exp() / z * x)
                .sum();
        }
    }
    out
}

/// The reference rounded to f32, for `tweedie_nn::parity::compare` (formats.md §7); the
/// rounding moves it by at most 2⁻²⁴ relative, far below every tolerance.
pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
