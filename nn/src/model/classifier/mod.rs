//! The MNIST digit classifier behind `host evaluate fid` (the "judge" of sample quality).
//!
//! A small fixed CNN on 1×32×32 digits (MNIST padded 28 → 32 with the background value, data in
//! [-1, 1] exactly as [`u8_to_model`] maps bytes):
//!
//! | layer | output |
//! |---|---|
//! | conv 3×3, 1 → 16, ReLU, 2×2 average pool | 16×16×16 |
//! | conv 3×3, 16 → 32, ReLU, 2×2 average pool | 32×8×8 |
//! | conv 3×3, 32 → 64, ReLU, 2×2 average pool | 64×4×4 |
//! | linear 1024 → 128, ReLU (the **features**) | 128 |
//! | linear 128 → 10 (logits) | 10 |
//!
//! Every layer is a kernel of tweedie-kernels (conv, average pool, linear) except the ReLU and
//! the softmax cross-entropy, which are one line each here. The forward saves what the
//! backward ([`train`]) needs. One image at a time; callers split a batch by images, so the
//! bits never depend on the thread count.

pub mod train;

use anyhow::{anyhow, bail, Context, Result};
use tweedie_kernels::{self as k, Conv2d, Isa, WeightsRef};

use crate::data::{u8_to_model, DataRange, Dataset};
use crate::tensors::SafetensorsFile;

/// Input height and width (MNIST padded by 2).
pub const SIZE: usize = 32;
/// Pixels per input image.
pub const PIXELS: usize = SIZE * SIZE;
/// Feature dimension (the penultimate layer).
pub const FEATURES: usize = 128;
/// Digit classes.
pub const CLASSES: usize = 10;
/// Data range of the inputs.
pub const RANGE: DataRange = DataRange::MinusOneOne;

/// The three convolutions: (c_in, c_out, input size).
const CONVS: [(usize, usize, usize); 3] = [(1, 16, 32), (16, 32, 16), (32, 64, 8)];
/// Flattened size after the last pool.
const FLAT: usize = 64 * 4 * 4;

/// Parameter tensors in storage order: name and shape.
pub const TENSORS: [(&str, &[usize]); 10] = [
    ("conv1.weight", &[16, 1, 3, 3]),
    ("conv1.bias", &[16]),
    ("conv2.weight", &[32, 16, 3, 3]),
    ("conv2.bias", &[32]),
    ("conv3.weight", &[64, 32, 3, 3]),
    ("conv3.bias", &[64]),
    ("fc1.weight", &[FEATURES, FLAT]),
    ("fc1.bias", &[FEATURES]),
    ("fc2.weight", &[CLASSES, FEATURES]),
    ("fc2.bias", &[CLASSES]),
];

/// Element range of tensor `i` in the flat parameter buffer.
pub fn tensor_range(i: usize) -> std::ops::Range<usize> {
    let len = |j: usize| TENSORS[j].1.iter().product::<usize>();
    let start: usize = (0..i).map(len).sum();
    start..start + len(i)
}

/// Total number of parameters.
pub fn parameter_count() -> usize {
    tensor_range(TENSORS.len() - 1).end
}

fn conv(i: usize) -> Conv2d {
    Conv2d {
        c_in: CONVS[i].0,
        c_out: CONVS[i].1,
        kernel: 3,
        stride: 1,
        pad: 1,
    }
}

/// The classifier's weights (flat f32, [`TENSORS`] order).
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    params: Vec<f32>,
}

impl Classifier {
    /// He-uniform initialisation (bound √(6/fan_in), biases 0): tensor i, element e draws
    /// `noise::uniform(seed, i, COUNTER_INIT, e)`.
    pub fn init(seed: u64) -> Classifier {
        let mut params = vec![0.0f32; parameter_count()];
        for (i, (name, shape)) in TENSORS.iter().enumerate() {
            if !name.ends_with(".weight") {
                continue;
            }
            let fan_in: usize = shape[1..].iter().product();
            let bound = (6.0 / fan_in as f64).sqrt();
            for (e, p) in params[tensor_range(i)].iter_mut().enumerate() {
                let u = tweedie_core::noise::uniform(
                    seed,
                    i as u64,
                    tweedie_core::noise::COUNTER_INIT,
                    e as u64,
                );
                *p = ((2.0 * u - 1.0) * bound) as f32;
            }
        }
        Classifier { params }
    }

    /// Wraps a flat parameter buffer.
    pub fn from_params(params: Vec<f32>) -> Result<Classifier> {
        if params.len() != parameter_count() {
            bail!(
                "classifier: {} parameters, expected {}",
                params.len(),
                parameter_count()
            );
        }
        if params.iter().any(|v| !v.is_finite()) {
            bail!("classifier: non-finite parameter");
        }
        Ok(Classifier { params })
    }

    /// Reads the [`TENSORS`] of a safetensors file (f32 stored; other tensors are ignored).
    pub fn from_file(file: &SafetensorsFile) -> Result<Classifier> {
        let mut params = Vec::with_capacity(parameter_count());
        for (name, shape) in TENSORS {
            let t = file.tensor_f32(name)?;
            if t.shape != shape {
                bail!(
                    "{}: `{name}` has shape {:?}, expected {shape:?}",
                    file.label(),
                    t.shape
                );
            }
            params.extend_from_slice(&t.data);
        }
        Classifier::from_params(params).with_context(|| file.label().to_string())
    }

    /// The flat parameters.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The flat parameters, mutable (the optimiser's view).
    pub fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    /// (name, shape, values) of every tensor, for writing.
    pub fn tensors(&self) -> Vec<(&'static str, Vec<usize>, &[f32])> {
        TENSORS
            .iter()
            .enumerate()
            .map(|(i, (name, shape))| (*name, shape.to_vec(), &self.params[tensor_range(i)]))
            .collect()
    }

    fn t(&self, i: usize) -> &[f32] {
        &self.params[tensor_range(i)]
    }

    /// Runs the network on one image (`PIXELS` bytes), keeping every activation in `a`.
    pub fn forward(&self, image: &[u8], a: &mut Activations) -> Result<()> {
        if image.len() != PIXELS {
            bail!("classifier input: {} bytes, expected {PIXELS}", image.len());
        }
        for (x, &v) in a.input.iter_mut().zip(image) {
            *x = u8_to_model(v, RANGE);
        }
        let err = |e: k::KernelError| anyhow!("classifier forward: {e}");
        for (l, &(_, c_out, s)) in CONVS.iter().enumerate() {
            let inp: &[f32] = if l == 0 { &a.input } else { &a.pooled[l - 1] };
            let (w, b) = (WeightsRef::F32(self.t(2 * l)), self.t(2 * l + 1));
            conv(l)
                .forward_with(
                    a.isa,
                    k::Map::new(inp, s, s),
                    k::ConvParams { weight: w, bias: b },
                    0..c_out,
                    &mut a.pre[l],
                    &mut a.scratch,
                )
                .map_err(err)?;
            for (r, &c) in a.relu.iter_mut().zip(&a.pre[l]) {
                *r = relu(c);
            }
            let n = c_out * s * s;
            k::avg_pool2x2(&a.relu[..n], s, s, 0..c_out, &mut a.pooled[l]);
        }
        k::linear(
            &a.pooled[2],
            WeightsRef::F32(self.t(6)),
            self.t(7),
            FLAT,
            0..FEATURES,
            &mut a.hidden,
        )
        .map_err(err)?;
        for (f, &h) in a.features.iter_mut().zip(&a.hidden) {
            *f = relu(h);
        }
        k::linear(
            &a.features,
            WeightsRef::F32(self.t(8)),
            self.t(9),
            FEATURES,
            0..CLASSES,
            &mut a.logits,
        )
        .map_err(err)
    }

    /// Features and logits of `images` (`n·PIXELS` bytes), split by images over `threads`
    /// threads (each image's result is independent of the split).
    pub fn infer(&self, images: &[u8], threads: usize) -> Result<Inference> {
        if images.is_empty() || !images.len().is_multiple_of(PIXELS) {
            bail!(
                "classifier input: {} bytes is not a positive number of images",
                images.len()
            );
        }
        let n = images.len() / PIXELS;
        let mut features = vec![0.0f32; n * FEATURES];
        let mut logits = vec![0.0f32; n * CLASSES];
        let parts = threads.clamp(1, n);
        let per = n.div_ceil(parts);
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = images
                .chunks(per * PIXELS)
                .zip(features.chunks_mut(per * FEATURES))
                .zip(logits.chunks_mut(per * CLASSES))
                .map(|((imgs, f), l)| {
                    s.spawn(move || -> Result<()> {
                        let mut a = Activations::new();
                        for ((img, fo), lo) in imgs
                            .chunks_exact(PIXELS)
                            .zip(f.chunks_exact_mut(FEATURES))
                            .zip(l.chunks_exact_mut(CLASSES))
                        {
                            self.forward(img, &mut a)?;
                            fo.copy_from_slice(&a.features);
                            lo.copy_from_slice(&a.logits);
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow!("a classifier thread panicked"))??;
            }
            Ok(())
        })?;
        Ok(Inference {
            n,
            features,
            logits,
        })
    }
}

/// A 28×28 digit (bytes) centred in 32×32 with the background value 0, as MNIST is padded
/// for the diffusion models (`Preprocess::mnist32`).
pub fn pad_digit(digit: &[u8], out: &mut [u8]) -> Result<()> {
    if digit.len() != 28 * 28 || out.len() != PIXELS {
        bail!("pad_digit: {} bytes in, {} out", digit.len(), out.len());
    }
    out.fill(0);
    for (row, src) in out
        .chunks_exact_mut(SIZE)
        .skip(2)
        .zip(digit.chunks_exact(28))
    {
        row[2..30].copy_from_slice(src);
    }
    Ok(())
}

/// Every image of a 1×28×28 dataset padded to 32×32 ([`pad_digit`]), back to back.
pub fn padded_images(ds: &Dataset) -> Result<Vec<u8>> {
    if (ds.channels, ds.height, ds.width) != (1, 28, 28) {
        bail!(
            "the classifier needs 1x28x28 digits, the data are {}x{}x{}",
            ds.channels,
            ds.height,
            ds.width
        );
    }
    let mut out = vec![0u8; ds.len() * PIXELS];
    for (i, o) in out.chunks_exact_mut(PIXELS).enumerate() {
        pad_digit(ds.image(i), o)?;
    }
    Ok(out)
}

/// max(x, 0).
#[inline]
pub fn relu(x: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// The classifier's outputs for a set of images.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// Number of images.
    pub n: usize,
    /// `n × FEATURES`, row-major.
    pub features: Vec<f32>,
    /// `n × CLASSES`, row-major.
    pub logits: Vec<f32>,
}

impl Inference {
    /// The arg-max class of every image (the lowest index on ties).
    pub fn classes(&self) -> Vec<usize> {
        self.logits.chunks_exact(CLASSES).map(argmax).collect()
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Every activation of one forward pass (what the backward reads) and the conv scratch.
#[derive(Debug, Clone)]
pub struct Activations {
    isa: Isa,
    input: Vec<f32>,
    /// Conv outputs before the ReLU.
    pre: [Vec<f32>; 3],
    /// ReLU of the current conv (reused by each layer).
    relu: Vec<f32>,
    /// Pool outputs (inputs of the next layer).
    pooled: [Vec<f32>; 3],
    hidden: Vec<f32>,
    /// ReLU(hidden): the features.
    pub features: Vec<f32>,
    /// The class logits.
    pub logits: Vec<f32>,
    scratch: Vec<f32>,
}

impl Activations {
    /// Buffers for one image, with the conv microkernel of [`Isa::detected`] (after
    /// [`crate::backend::enable_simd`]).
    pub fn new() -> Activations {
        crate::backend::enable_simd();
        let map = |l: usize, s: usize| vec![0.0f32; CONVS[l].1 * s * s];
        let scratch = (0..3)
            .map(|l| {
                let s = CONVS[l].2;
                conv(l)
                    .scratch_len(s, s)
                    .max(conv(l).backward_scratch_len(s, s))
            })
            .max()
            .unwrap_or(0);
        Activations {
            isa: Isa::detected(),
            input: vec![0.0; PIXELS],
            pre: [map(0, 32), map(1, 16), map(2, 8)],
            relu: map(0, 32),
            pooled: [map(0, 16), map(1, 8), map(2, 4)],
            hidden: vec![0.0; FEATURES],
            features: vec![0.0; FEATURES],
            logits: vec![0.0; CLASSES],
            scratch: vec![0.0; scratch],
        }
    }
}

impl Default for Activations {
    fn default() -> Self {
        Activations::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_shapes() {
        assert_eq!(parameter_count(), 160 + 4640 + 18496 + 131200 + 1290);
        let c = Classifier::init(3);
        assert_eq!(c.tensors().len(), TENSORS.len());
        // Biases start at zero, weights inside the He bound.
        assert!(c.t(1).iter().all(|&b| b == 0.0));
        let bound = (6.0f32 / 9.0).sqrt();
        assert!(c.t(0).iter().all(|w| w.abs() <= bound));
        assert_ne!(Classifier::init(3), Classifier::init(4));
    }

    #[test]
    fn inference_is_independent_of_threads() {
        let c = Classifier::init(1);
        let images: Vec<u8> = (0..5 * PIXELS).map(|i| (i * 37 % 251) as u8).collect();
        let one = c.infer(&images, 1).unwrap();
        let three = c.infer(&images, 3).unwrap();
        assert_eq!(one, three);
        let mut a = Activations::new();
        c.forward(&images[PIXELS..2 * PIXELS], &mut a).unwrap();
        assert_eq!(a.features, one.features[FEATURES..2 * FEATURES]);
        assert!(c.infer(&images[..10], 1).is_err());
    }

    #[test]
    fn padding_matches_the_diffusion_models_preprocessing() {
        let digit: Vec<u8> = (0..784).map(|i| (i % 256) as u8).collect();
        let ds = Dataset::new(digit.clone(), None, 1, 28, 28).unwrap();
        let bytes = padded_images(&ds).unwrap();
        let mut want = vec![0.0f32; PIXELS];
        let pre = crate::data::Preprocess::mnist32(RANGE);
        ds.fill_batch(&[0], pre, &mut want).unwrap();
        let got: Vec<f32> = bytes.iter().map(|&v| u8_to_model(v, RANGE)).collect();
        assert_eq!(got, want);
        assert!(pad_digit(&digit[1..], &mut vec![0; PIXELS]).is_err());
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }
}
