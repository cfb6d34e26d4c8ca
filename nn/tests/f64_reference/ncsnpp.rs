//! score_sde's `NCSNpp` (docs/ncsnpp.md) in f64, one sample at a time, for the code paths
//! `NcsnppConfig` supports (BigGAN ResBlocks with FIR [1,3,3,1] resampling, output_skip /
//! input_skip pyramids combined by sums, Gaussian Fourier embedding of ln σ). Written as
//! `NCSNpp.forward` reads: a running index into `all_modules`; channel counts come from the
//! weight shapes.

use std::f64::consts::{PI, SQRT_2};

use tweedie_nn::model::ncsnpp::NcsnppConfig;
use tweedie_nn::weights::Weights;

use super::{
    attend, conv1x1, conv2d, group_norm, linear, param, pointwise, shape, silu, Map, Record,
};

/// GroupNorm eps everywhere in NCSN++ (ncsnpp.md §4.1).
const EPS: f64 = 1e-6;

/// min(C // 4, 32) groups.
fn groups(c: usize) -> usize {
    (c / 4).min(32)
}

struct Net<'a, 'r, 'c> {
    config: &'a NcsnppConfig,
    weights: &'a Weights,
    /// SiLU(temb): every ResBlock applies the activation before its Dense_0.
    temb_silu: Vec<f64>,
    /// The next `all_modules` index.
    next: usize,
    record: &'r mut Record<'c>,
}

/// The score for one sample: x is [num_channels, image_size, image_size] in data space,
/// σ the noise level; returns `model(x, σ)` (divided by σ with scale_by_sigma). `record`
/// sees every golden activation: `x_scaled`, `all_modules.{i}`, the pyramids'
/// resampler inputs and outputs, `pre_sigma_division`.
pub fn forward(
    config: &NcsnppConfig,
    weights: &Weights,
    (x, sigma): (&[f32], f32),
    record: &mut Record<'_>,
) -> Vec<f64> {
    let sigma = sigma as f64;
    // Gaussian Fourier projection of ln σ: [sin(2π u W), cos(2π u W)], W stored with its scale.
    let freqs = param(weights, "all_modules.0.W");
    let phase: Vec<f64> = freqs.iter().map(|f| sigma.ln() * f * 2.0 * PI).collect();
    let mut emb: Vec<f64> = phase.iter().map(|p| p.sin()).collect();
    emb.extend(phase.iter().map(|p| p.cos()));
    record("all_modules.0", &emb);
    let hidden = linear(weights, "all_modules.1", &emb);
    record("all_modules.1", &hidden);
    let hidden: Vec<f64> = hidden.into_iter().map(silu).collect();
    let temb = linear(weights, "all_modules.2", &hidden);
    record("all_modules.2", &temb);
    let s = config.image_size;
    let x = Map::from_f32(config.num_channels, s, s, x);
    let x = if config.centered {
        x
    } else {
        x.map(|v| 2.0 * v - 1.0)
    };
    record("x_scaled", &x.v);
    let mut net = Net {
        config,
        weights,
        temb_silu: temb.iter().map(|&v| silu(v)).collect(),
        next: 3,
        record,
    };
    let pyramid = net.unet(x);
    (net.record)("pre_sigma_division", &pyramid.v);
    if config.scale_by_sigma {
        pyramid.v.iter().map(|v| v / sigma).collect()
    } else {
        pyramid.v
    }
}

impl Net<'_, '_, '_> {
    /// The next module's state_dict prefix; advances the index.
    fn module(&mut self) -> (usize, String) {
        self.next += 1;
        (self.next - 1, format!("all_modules.{}", self.next - 1))
    }

    fn done(&mut self, index: usize, h: Map) -> Map {
        (self.record)(&format!("all_modules.{index}"), &h.v);
        h
    }

    /// `NCSNpp.forward` after the embedding: down path with the input pyramid, middle, up
    /// path with the output pyramid (ncsnpp.md §3); returns the output pyramid.
    fn unet(&mut self, x: Map) -> Map {
        let c = self.config;
        let levels = c.ch_mult.len();
        let mut input_pyramid = x.clone();
        let (i, p) = self.module();
        let h = conv2d(self.weights, &p, &x, 1, 1);
        let mut hs = vec![self.done(i, h)];
        for level in 0..levels {
            for _ in 0..c.num_res_blocks {
                let mut h = self.res_block(hs.last().unwrap(), Fir::None);
                if c.attn_resolutions.contains(&h.w) {
                    h = self.attention(&h);
                }
                hs.push(h);
            }
            if level != levels - 1 {
                let h = self.res_block(hs.last().unwrap(), Fir::Down);
                let name = format!("pyramid_downsample.{level}");
                (self.record)(&format!("{name}.in"), &input_pyramid.v);
                input_pyramid = fir(&input_pyramid, Fir::Down);
                (self.record)(&format!("{name}.out"), &input_pyramid.v);
                // Combine (sum): h + Conv_0(pyramid), a 1×1 conv.
                let (i, p) = self.module();
                let skip = conv1x1(self.weights, &format!("{p}.Conv_0"), &input_pyramid);
                let h = h.zip(&skip, |a, b| a + b);
                hs.push(self.done(i, h));
            }
        }
        let mut h = hs.last().unwrap().clone();
        h = self.res_block(&h, Fir::None);
        h = self.attention(&h);
        h = self.res_block(&h, Fir::None);
        let mut pyramid: Option<Map> = None;
        for level in (0..levels).rev() {
            for _ in 0..=c.num_res_blocks {
                let skip = hs.pop().expect("one skip per up block");
                h = self.res_block(&h.concat(&skip), Fir::None);
            }
            if c.attn_resolutions.contains(&h.w) {
                h = self.attention(&h);
            }
            let head = self.head(&h);
            pyramid = Some(match pyramid {
                None => head,
                Some(p) => {
                    let name = format!("pyramid_upsample.{}", levels - 2 - level);
                    (self.record)(&format!("{name}.in"), &p.v);
                    let up = fir(&p, Fir::Up);
                    (self.record)(&format!("{name}.out"), &up.v);
                    up.zip(&head, |a, b| a + b)
                }
            });
            if level != 0 {
                h = self.res_block(&h, Fir::Up);
            }
        }
        assert!(hs.is_empty());
        pyramid.expect("at least one level")
    }

    /// Output head: Conv3x3(SiLU(GroupNorm(h))), two modules.
    fn head(&mut self, h: &Map) -> Map {
        let (i, p) = self.module();
        let n = group_norm(self.weights, &p, h, groups(h.c), EPS);
        let n = self.done(i, n);
        let (i, p) = self.module();
        let out = conv2d(self.weights, &p, &n.map(silu), 1, 1);
        self.done(i, out)
    }

    /// `ResnetBlockBigGANpp` (ncsnpp.md §4.2).
    fn res_block(&mut self, x: &Map, how: Fir) -> Map {
        let (i, p) = self.module();
        let w = self.weights;
        let c_out = shape(w, &format!("{p}.Conv_0.weight"))[0];
        let h = group_norm(w, &format!("{p}.GroupNorm_0"), x, groups(x.c), EPS).map(silu);
        let (h, x) = (fir(&h, how), fir(x, how));
        let mut h = conv2d(w, &format!("{p}.Conv_0"), &h, 1, 1);
        let dense = linear(w, &format!("{p}.Dense_0"), &self.temb_silu);
        let hw = h.h * h.w;
        for (j, v) in h.v.iter_mut().enumerate() {
            *v += dense[j / hw];
        }
        let h = group_norm(w, &format!("{p}.GroupNorm_1"), &h, groups(c_out), EPS).map(silu);
        let h = conv2d(w, &format!("{p}.Conv_1"), &h, 1, 1);
        let x = if x.c != c_out || how != Fir::None {
            conv1x1(w, &format!("{p}.Conv_2"), &x)
        } else {
            x
        };
        let out = self.rescale(x.zip(&h, |a, b| a + b));
        self.done(i, out)
    }

    /// `AttnBlockpp`: one head over all positions, scale C^−½, NIN weights stored [in, out].
    fn attention(&mut self, x: &Map) -> Map {
        let (i, p) = self.module();
        let c = x.c;
        let h = group_norm(self.weights, &format!("{p}.GroupNorm_0"), x, groups(c), EPS);
        let mut qkv = Vec::with_capacity(3 * c * h.h * h.w);
        for k in 0..3 {
            qkv.extend(self.nin(&format!("{p}.NIN_{k}"), &h).v);
        }
        let (q, k, v): (Vec<usize>, Vec<usize>, Vec<usize>) = (
            (0..c).collect(),
            (c..2 * c).collect(),
            (2 * c..3 * c).collect(),
        );
        let a = attend(&qkv, h.h * h.w, &q, &k, &v, 1.0 / (c as f64).sqrt());
        let o = self.nin(&format!("{p}.NIN_3"), &Map::new(c, h.h, h.w, a));
        let out = self.rescale(x.zip(&o, |a, b| a + b));
        self.done(i, out)
    }

    /// `NIN`: y[o, p] = Σ_c x[c, p] W[c, o] + b[o].
    fn nin(&self, p: &str, x: &Map) -> Map {
        let w = param(self.weights, &format!("{p}.W"));
        let b = param(self.weights, &format!("{p}.b"));
        let (ci, co) = (x.c, b.len());
        let transposed: Vec<f64> = (0..co * ci).map(|j| w[(j % ci) * co + j / ci]).collect();
        pointwise(&transposed, &b, x)
    }

    /// skip_rescale: residual sums divided by √2.
    fn rescale(&self, x: Map) -> Map {
        if self.config.skip_rescale {
            x.map(|v| v / SQRT_2)
        } else {
            x
        }
    }
}

/// FIR resampling with the [1,3,3,1] kernel (ncsnpp.md §5).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fir {
    None,
    /// `upsample_2d`, factor 2: gain 4, pad (2, 1), up 2.
    Up,
    /// `downsample_2d`, factor 2: gain 1, pad (1, 1), down 2.
    Down,
}

fn fir(x: &Map, how: Fir) -> Map {
    match how {
        Fir::None => x.clone(),
        Fir::Up => upfirdn2d(x, 4.0, 2, 1, (2, 1)),
        Fir::Down => upfirdn2d(x, 1.0, 1, 2, (1, 1)),
    }
}

/// `upfirdn2d_native` on every channel: zero-stuff by `up`, pad, convolve with the 4×4
/// kernel outer(k, k)/64 · gain (flipped: a true convolution), keep every `down`-th sample.
fn upfirdn2d(x: &Map, gain: f64, up: usize, down: usize, (p0, p1): (usize, usize)) -> Map {
    const K: [f64; 4] = [1.0, 3.0, 3.0, 1.0];
    let kern = |i: usize, j: usize| K[3 - i] * K[3 - j] / 64.0 * gain;
    let (ph, pw) = (x.h * up + p0 + p1, x.w * up + p0 + p1);
    let (oh, ow) = ((ph - 4) / down + 1, (pw - 4) / down + 1);
    // The zero-stuffed, padded input at (a, b).
    let padded = |plane: &[f64], a: usize, b: usize| -> f64 {
        let (Some(a), Some(b)) = (a.checked_sub(p0), b.checked_sub(p0)) else {
            return 0.0;
        };
        if a % up != 0 || b % up != 0 || a / up >= x.h || b / up >= x.w {
            return 0.0;
        }
        plane[(a / up) * x.w + b / up]
    };
    let mut v = Vec::with_capacity(x.c * oh * ow);
    for c in 0..x.c {
        let plane = x.plane(c);
        for y in 0..oh {
            for xx in 0..ow {
                let mut s = 0.0;
                for i in 0..4 {
                    for j in 0..4 {
                        s += kern(i, j) * padded(plane, y * down + i, xx * down + j);
                    }
                }
                v.push(s);
            }
        }
    }
    Map::new(x.c, oh, ow, v)
}
