//! The classifier's loss and backward pass: softmax cross-entropy on the logits, then every
//! layer's kernel backward in reverse order. Gradients are accumulated (`+=`) into a flat
//! buffer laid out like the parameters, so a batch sums in the order the caller calls.

use anyhow::{anyhow, bail, Result};
use tweedie_kernels::{self as k, WeightsRef};

use super::{conv, tensor_range, Activations, Classifier, CLASSES, CONVS, FEATURES, FLAT};

/// Softmax cross-entropy of `logits` against class `label`: the loss (f64) and ∂loss/∂logits
/// (softmax − one-hot) times `scale` written into `dlogits`. The softmax is computed in f64
/// after subtracting the largest logit.
pub fn cross_entropy(logits: &[f32], label: usize, scale: f32, dlogits: &mut [f32]) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exps: Vec<f64> = logits.iter().map(|&v| f64::from(v - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    for (i, (d, e)) in dlogits.iter_mut().zip(&exps).enumerate() {
        let target = if i == label { 1.0 } else { 0.0 };
        *d = ((e / total - target) as f32) * scale;
    }
    total.ln() - f64::from(logits[label] - max)
}

/// Scratch of one backward pass (gradients of the activations).
#[derive(Debug, Clone)]
pub struct Backward {
    dfeatures: Vec<f32>,
    dflat: Vec<f32>,
    /// Gradient of a conv's output (after the ReLU mask), largest layer first.
    dconv: Vec<f32>,
    /// Gradient of the next conv's input (a pool output).
    dpooled: Vec<f32>,
}

impl Backward {
    /// Buffers for one image.
    pub fn new() -> Backward {
        Backward {
            dfeatures: vec![0.0; FEATURES],
            dflat: vec![0.0; FLAT],
            dconv: vec![0.0; CONVS[0].1 * CONVS[0].2 * CONVS[0].2],
            dpooled: vec![0.0; CONVS[1].0 * CONVS[1].2 * CONVS[1].2],
        }
    }
}

impl Default for Backward {
    fn default() -> Self {
        Backward::new()
    }
}

impl Classifier {
    /// Adds ∂loss/∂params to `grads` for the image whose forward left `a`, given
    /// `dlogits` = ∂loss/∂logits.
    pub fn backward(
        &self,
        a: &mut Activations,
        dlogits: &[f32],
        b: &mut Backward,
        grads: &mut [f32],
    ) -> Result<()> {
        if grads.len() != self.params.len() || dlogits.len() != CLASSES {
            bail!("classifier backward: buffer sizes");
        }
        let err = |e: k::KernelError| anyhow!("classifier backward: {e}");
        let (g6, g7) = split_pair(grads, 8);
        k::linear_backward_params(g6, g7, dlogits, &a.features, FEATURES, 0..CLASSES)
            .map_err(err)?;
        b.dfeatures.fill(0.0);
        let w = WeightsRef::F32(self.t(8));
        k::linear_backward_input(&mut b.dfeatures, dlogits, w, FEATURES, 0..FEATURES)
            .map_err(err)?;
        for (d, &h) in b.dfeatures.iter_mut().zip(&a.hidden) {
            *d = if h > 0.0 { *d } else { 0.0 };
        }
        let (g6, g7) = split_pair(grads, 6);
        k::linear_backward_params(g6, g7, &b.dfeatures, &a.pooled[2], FLAT, 0..FEATURES)
            .map_err(err)?;
        b.dflat.fill(0.0);
        let w = WeightsRef::F32(self.t(6));
        k::linear_backward_input(&mut b.dflat, &b.dfeatures, w, FLAT, 0..FLAT).map_err(err)?;
        for l in (0..3).rev() {
            let (c_in, c_out, s) = CONVS[l];
            let dpool: &[f32] = if l == 2 { &b.dflat } else { &b.dpooled };
            let dconv = &mut b.dconv[..c_out * s * s];
            dconv.fill(0.0);
            k::avg_pool2x2_backward(dconv, &dpool[..c_out * s * s / 4], s, s, 0..c_out)
                .map_err(err)?;
            for (d, &c) in dconv.iter_mut().zip(&a.pre[l]) {
                *d = if c > 0.0 { *d } else { 0.0 };
            }
            let inp: &[f32] = if l == 0 { &a.input } else { &a.pooled[l - 1] };
            let (gw, gb) = split_pair(grads, 2 * l);
            conv(l)
                .backward_params(
                    a.isa,
                    k::ConvGrads {
                        dweight: gw,
                        dbias: gb,
                    },
                    dconv,
                    k::Map::new(inp, s, s),
                    0..c_out,
                    &mut a.scratch,
                )
                .map_err(err)?;
            if l > 0 {
                let dinp = &mut b.dpooled[..c_in * s * s];
                dinp.fill(0.0);
                let w = WeightsRef::F32(self.t(2 * l));
                conv(l)
                    .backward_input(
                        a.isa,
                        k::MapMut::new(dinp, s, s),
                        dconv,
                        w,
                        0..c_in,
                        &mut a.scratch,
                    )
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

/// The gradient slices of tensors `i` (a weight) and `i + 1` (its bias), adjacent in the buffer.
fn split_pair(grads: &mut [f32], i: usize) -> (&mut [f32], &mut [f32]) {
    let (w, b) = (tensor_range(i), tensor_range(i + 1));
    let (head, tail) = grads[w.start..b.end].split_at_mut(w.len());
    (head, tail)
}

#[cfg(test)]
mod tests {
    use super::super::{parameter_count, PIXELS};
    use super::*;

    /// Loss of one image and label, in f64.
    fn loss(c: &Classifier, img: &[u8], label: usize) -> f64 {
        let mut a = Activations::new();
        c.forward(img, &mut a).unwrap();
        let mut d = [0.0f32; CLASSES];
        cross_entropy(&a.logits, label, 1.0, &mut d)
    }

    #[test]
    fn cross_entropy_of_known_logits() {
        // Two equal logits: loss ln 2, gradient (½ − 1, ½).
        let mut d = [0.0f32; 2];
        let l = cross_entropy(&[3.0, 3.0], 0, 1.0, &mut d);
        assert!((l - 2f64.ln()).abs() < 1e-12);
        assert_eq!(d, [-0.5, 0.5]);
        let l = cross_entropy(&[0.0, 1000.0], 1, 2.0, &mut d);
        assert!(l.abs() < 1e-12, "{l}");
        assert_eq!(d, [0.0, 0.0]);
    }

    /// The backward agrees with central differences of the loss on a sample of parameters
    /// of every tensor (f32 forward, so the tolerance is loose but far below a wrong sign or
    /// a missing term).
    #[test]
    fn gradient_matches_finite_differences() {
        let mut c = Classifier::init(5);
        // Non-zero biases, so the bias paths are exercised away from 0.
        for (i, p) in c.params_mut().iter_mut().enumerate() {
            if *p == 0.0 {
                *p = 0.01 * ((i % 7) as f32 - 3.0);
            }
        }
        // A textured image, so few pre-activations sit within h of a ReLU kink.
        let img: Vec<u8> = (0..PIXELS)
            .map(|i| (tweedie_core::noise::bits(1, 0, 0, i as u64) >> 56) as u8)
            .collect();
        let label = 3;
        let mut a = Activations::new();
        c.forward(&img, &mut a).unwrap();
        let mut d = [0.0f32; CLASSES];
        cross_entropy(&a.logits, label, 1.0, &mut d);
        let mut g = vec![0.0f32; parameter_count()];
        c.backward(&mut a, &d, &mut Backward::new(), &mut g)
            .unwrap();
        let mut checked = 0;
        for t in 0..super::super::TENSORS.len() {
            let r = tensor_range(t);
            for e in [r.start, r.start + r.len() / 2, r.end - 1] {
                let an = f64::from(g[e]);
                // The closest of two step sizes: a ReLU kink within h of some pre-activation
                // spoils one difference, rarely both.
                let err = [1e-3f32, 3e-4]
                    .iter()
                    .map(|&h| {
                        let p0 = c.params[e];
                        c.params[e] = p0 + h;
                        let up = loss(&c, &img, label);
                        c.params[e] = p0 - h;
                        let down = loss(&c, &img, label);
                        c.params[e] = p0;
                        ((up - down) / (2.0 * f64::from(h)) - an).abs()
                    })
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    err <= 1e-3 + 2e-2 * an.abs(),
                    "tensor {t} element {e}: backward {an}, finite differences off by {err}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 30);
    }
}
