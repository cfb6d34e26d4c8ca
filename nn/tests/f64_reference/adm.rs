//! guided-diffusion's `UNetModel` (docs/adm_unet.md) in f64, one sample at a time. The block
//! structure is walked as `UNetModel.__init__` lays it out (§6's construction rule) straight
//! from the `AdmConfig`; channel counts come from the weight shapes.

use tweedie_nn::model::adm::AdmConfig;
use tweedie_nn::weights::Weights;

use super::{attend, conv1x1, conv2d, group_norm, linear, shape, silu, Map, Record};

/// GroupNorm32: 32 groups, eps 1e-5 (adm_unet.md §2).
const GROUPS: usize = 32;
const EPS: f64 = 1e-5;

/// Resampling inside a ResBlock or standalone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resample {
    None,
    Up,
    Down,
}

struct Net<'a> {
    config: &'a AdmConfig,
    weights: &'a Weights,
    /// SiLU(emb): every ResBlock's `emb_layers` starts with SiLU.
    emb_silu: Vec<f64>,
}

/// The network output for one sample: x is [in_channels, h, w], t the timestep; returns
/// [out_channels, h, w]. `record` sees `emb_sinusoidal`, `emb` and every block's output.
pub fn forward(
    config: &AdmConfig,
    weights: &Weights,
    (x, t): (&[f32], f32),
    (h, w): (usize, usize),
    record: &mut Record<'_>,
) -> Vec<f64> {
    let sinusoid = timestep_embedding(t as f64, config.model_channels);
    record("emb_sinusoidal", &sinusoid);
    let hidden: Vec<f64> = linear(weights, "time_embed.0", &sinusoid)
        .into_iter()
        .map(silu)
        .collect();
    let emb = linear(weights, "time_embed.2", &hidden);
    record("emb", &emb);
    let net = Net {
        config,
        weights,
        emb_silu: emb.iter().map(|&v| silu(v)).collect(),
    };
    let x = Map::from_f32(config.in_channels, h, w, x);
    let h = net.unet(x, record);
    let h = group_norm(weights, "out.0", &h, GROUPS, EPS).map(silu);
    conv2d(weights, "out.2", &h, 1, 1).v
}

/// `timestep_embedding(t, dim, max_period=10000)`: [cos(t·f_i), sin(t·f_i)] with
/// f_i = exp(−ln(10000)·i/half), a zero appended when dim is odd (adm_unet.md §3).
fn timestep_embedding(t: f64, dim: usize) -> Vec<f64> {
    let half = dim / 2;
    let args: Vec<f64> = (0..half)
        .map(|i| t * (-(10000f64).ln() * i as f64 / half as f64).exp())
        .collect();
    let mut e: Vec<f64> = args.iter().map(|a| a.cos()).collect();
    e.extend(args.iter().map(|a| a.sin()));
    e.resize(dim, 0.0);
    e
}

impl Net<'_> {
    /// Encoder, middle block and decoder (adm_unet.md §6).
    fn unet(&self, x: Map, record: &mut Record<'_>) -> Map {
        let c = self.config;
        let attention_ds: Vec<usize> = c
            .attention_resolutions
            .iter()
            .map(|r| c.image_size / r)
            .collect();
        let levels = c.channel_mult.len();
        let mut h = conv2d(self.weights, "input_blocks.0.0", &x, 1, 1);
        record("input_blocks.0", &h.v);
        let mut hs = vec![h.clone()];
        let mut ds = 1;
        for level in 0..levels {
            for _ in 0..c.num_res_blocks {
                let name = format!("input_blocks.{}", hs.len());
                h = self.res_block(&format!("{name}.0"), &h, Resample::None);
                if attention_ds.contains(&ds) {
                    h = self.attention(&format!("{name}.1"), &h, c.num_heads);
                }
                record(&name, &h.v);
                hs.push(h.clone());
            }
            if level != levels - 1 {
                let name = format!("input_blocks.{}", hs.len());
                h = self.resample(&format!("{name}.0"), &h, Resample::Down);
                record(&name, &h.v);
                hs.push(h.clone());
                ds *= 2;
            }
        }
        h = self.res_block("middle_block.0", &h, Resample::None);
        h = self.attention("middle_block.1", &h, c.num_heads);
        h = self.res_block("middle_block.2", &h, Resample::None);
        record("middle_block", &h.v);
        let mut index = 0;
        for level in (0..levels).rev() {
            for i in 0..=c.num_res_blocks {
                let name = format!("output_blocks.{index}");
                let skip = hs.pop().expect("one encoder output per decoder block");
                h = self.res_block(&format!("{name}.0"), &h.concat(&skip), Resample::None);
                let mut next = 1;
                if attention_ds.contains(&ds) {
                    h = self.attention(&format!("{name}.1"), &h, c.num_heads_upsample);
                    next = 2;
                }
                if level > 0 && i == c.num_res_blocks {
                    h = self.resample(&format!("{name}.{next}"), &h, Resample::Up);
                    ds /= 2;
                }
                record(&name, &h.v);
                index += 1;
            }
        }
        assert!(hs.is_empty());
        h
    }

    /// A down/up step: a resampling ResBlock with resblock_updown, else a standalone
    /// `Downsample` (3×3 stride-2 conv `op`, or 2×2 average pool) or `Upsample` (nearest 2×,
    /// then the 3×3 conv `conv`).
    fn resample(&self, name: &str, x: &Map, how: Resample) -> Map {
        let (c, w) = (self.config, self.weights);
        match (c.resblock_updown, how, c.conv_resample) {
            (true, _, _) => self.res_block(name, x, how),
            (false, Resample::Down, true) => conv2d(w, &format!("{name}.op"), x, 2, 1),
            (false, Resample::Up, true) => conv2d(w, &format!("{name}.conv"), &nearest_2x(x), 1, 1),
            (false, Resample::Down, false) => avg_pool_2x(x),
            (false, Resample::Up, false) => nearest_2x(x),
            (false, Resample::None, _) => unreachable!("resample without a direction"),
        }
    }

    /// `ResBlock` (adm_unet.md §4): FiLM after the out GroupNorm with use_scale_shift_norm,
    /// else the embedding added before it; up/down resample between SiLU and the first conv
    /// and on the skip path.
    fn res_block(&self, p: &str, x: &Map, how: Resample) -> Map {
        let w = self.weights;
        let c_out = shape(w, &format!("{p}.in_layers.2.weight"))[0];
        let h = group_norm(w, &format!("{p}.in_layers.0"), x, GROUPS, EPS).map(silu);
        let (h, x) = match how {
            Resample::None => (h, x.clone()),
            Resample::Up => (nearest_2x(&h), nearest_2x(x)),
            Resample::Down => (avg_pool_2x(&h), avg_pool_2x(x)),
        };
        let mut h = conv2d(w, &format!("{p}.in_layers.2"), &h, 1, 1);
        let e = linear(w, &format!("{p}.emb_layers.1"), &self.emb_silu);
        let hw = h.h * h.w;
        let out_norm = format!("{p}.out_layers.0");
        if self.config.use_scale_shift_norm {
            let (scale, shift) = e.split_at(c_out);
            h = group_norm(w, &out_norm, &h, GROUPS, EPS);
            for (i, v) in h.v.iter_mut().enumerate() {
                *v = *v * (1.0 + scale[i / hw]) + shift[i / hw];
            }
        } else {
            for (i, v) in h.v.iter_mut().enumerate() {
                *v += e[i / hw];
            }
            h = group_norm(w, &out_norm, &h, GROUPS, EPS);
        }
        let h = conv2d(w, &format!("{p}.out_layers.3"), &h.map(silu), 1, 1);
        let skip = if x.c == c_out {
            x
        } else {
            conv1x1(w, &format!("{p}.skip_connection"), &x)
        };
        skip.zip(&h, |a, b| a + b)
    }

    /// `AttentionBlock` (adm_unet.md §5): heads = C / num_head_channels when set, else
    /// `heads`; qkv channels split heads-first (legacy) or q|k|v-first (new order).
    fn attention(&self, p: &str, x: &Map, heads: usize) -> Map {
        let w = self.weights;
        let c = x.c;
        let heads = self.config.num_head_channels.map_or(heads, |per| c / per);
        let ch = c / heads;
        let t = x.h * x.w;
        let qkv = conv1x1(
            w,
            &format!("{p}.qkv"),
            &group_norm(w, &format!("{p}.norm"), x, GROUPS, EPS),
        );
        let mut a = Vec::with_capacity(c * t);
        for head in 0..heads {
            // Row of q/k/v channel j of this head (part 0 = q, 1 = k, 2 = v).
            let row = |part: usize, j: usize| {
                if self.config.use_new_attention_order {
                    part * c + head * ch + j
                } else {
                    head * 3 * ch + part * ch + j
                }
            };
            let rows = |part: usize| (0..ch).map(|j| row(part, j)).collect::<Vec<_>>();
            let scale = 1.0 / (ch as f64).sqrt();
            a.extend(attend(&qkv.v, t, &rows(0), &rows(1), &rows(2), scale));
        }
        let proj = conv1x1(w, &format!("{p}.proj_out"), &Map::new(c, x.h, x.w, a));
        x.zip(&proj, |a, b| a + b)
    }
}

/// Nearest-neighbour 2× (`F.interpolate(scale_factor=2, mode="nearest")`).
fn nearest_2x(x: &Map) -> Map {
    let (h, w) = (2 * x.h, 2 * x.w);
    let mut v = Vec::with_capacity(x.c * h * w);
    for c in 0..x.c {
        let p = x.plane(c);
        for y in 0..h {
            v.extend((0..w).map(|xx| p[(y / 2) * x.w + xx / 2]));
        }
    }
    Map::new(x.c, h, w, v)
}

/// 2×2 average pool, stride 2.
fn avg_pool_2x(x: &Map) -> Map {
    let (h, w) = (x.h / 2, x.w / 2);
    let mut v = Vec::with_capacity(x.c * h * w);
    for c in 0..x.c {
        let p = x.plane(c);
        for y in 0..h {
            v.extend((0..w).map(|xx| {
                let at = |dy: usize, dx: usize| p[(2 * y + dy) * x.w + 2 * xx + dx];
                (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0
            }));
        }
    }
    Map::new(x.c, h, w, v)
}
