//! The training loop of the digit classifier (`host train-classifier`): seeded epoch order,
//! softmax cross-entropy, AdamW, a linear warm-up then a linear decay to zero.
//!
//! Determinism: a batch is cut into fixed groups of [`GROUP`] examples; each group sums its
//! examples' gradients in order into its own buffer, and the groups are summed in order.
//! Threads only decide who computes which group, so the same seed gives the same bits for any
//! thread count.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};

use super::optim::{AdamW, AdamWConfig};
use crate::backend::part;
use crate::data::DataOrder;
use crate::model::classifier::train::{cross_entropy, Backward};
use crate::model::classifier::{parameter_count, Activations, Classifier, PIXELS};

/// Examples per gradient group (the unit of work of a thread).
pub const GROUP: usize = 8;

/// The settings of a classifier run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifyConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step (a multiple of [`GROUP`]).
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps (linear from lr/warmup to lr).
    pub warmup: u64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seed of the initialisation and of the data order.
    pub seed: u64,
    /// Threads (never changes the result).
    pub threads: usize,
}

impl ClassifyConfig {
    /// Errors unless every setting is usable (each message names its flag).
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || !self.batch.is_multiple_of(GROUP) || self.epochs == 0 {
            bail!(
                "--batch must be a positive multiple of {GROUP} and --epochs at least 1 (got {} and {})",
                self.batch,
                self.epochs
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr {}: must be a finite number > 0", self.lr);
        }
        let wd = self.weight_decay;
        if !(wd.is_finite() && wd >= 0.0) {
            bail!("--weight-decay {wd}: must be a finite number >= 0");
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based) of `total`: linear warm-up, then a linear
    /// decay to 0 at `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let warm = ((step + 1) as f64 / self.warmup.max(1) as f64).min(1.0);
        let decay = 1.0 - step as f64 / total.max(1) as f64;
        self.lr * warm * decay
    }
}

/// One epoch's summary.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training cross-entropy over the epoch's steps.
    pub train_loss: f64,
    /// Fraction of the test images classified correctly after the epoch.
    pub test_accuracy: f64,
    /// Wall-clock seconds of the epoch (training only).
    pub seconds: f64,
}

/// Labelled images: `PIXELS` bytes each (32×32 padded digits) and one label each.
pub struct Labelled<'a> {
    /// The images, back to back.
    pub images: &'a [u8],
    /// The labels (0..10).
    pub labels: &'a [u8],
}

impl Labelled<'_> {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.labels.is_empty() || self.images.len() != self.labels.len() * PIXELS {
            bail!(
                "{what}: {} image bytes for {} labels",
                self.images.len(),
                self.labels.len()
            );
        }
        if self.labels.iter().any(|&l| l >= 10) {
            bail!("{what}: a label is not a digit 0..9");
        }
        Ok(())
    }
}

/// The fraction of `set` that `model` classifies correctly.
pub fn accuracy(model: &Classifier, set: &Labelled, threads: usize) -> Result<f64> {
    set.check("accuracy")?;
    let out = model.infer(set.images, threads)?;
    let right = out
        .classes()
        .iter()
        .zip(set.labels)
        .filter(|(&c, &l)| c == usize::from(l))
        .count();
    Ok(right as f64 / set.len() as f64)
}

/// Trains a classifier from [`Classifier::init`]`(cfg.seed)`; `say` receives a progress line
/// every few hundred steps and after each epoch.
pub fn train_classifier(
    cfg: &ClassifyConfig,
    train: &Labelled,
    test: &Labelled,
    mut say: impl FnMut(&str),
) -> Result<(Classifier, Vec<EpochReport>)> {
    train.check("training set")?;
    test.check("test set")?;
    cfg.validate()?;
    let mut model = Classifier::init(cfg.seed);
    let adamw = AdamWConfig {
        weight_decay: cfg.weight_decay,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(adamw, parameter_count())?;
    let mut order = DataOrder::new(train.len(), cfg.seed)?;
    let steps_per_epoch = (train.len() / cfg.batch) as u64;
    let total = steps_per_epoch * cfg.epochs as u64;
    let groups = cfg.batch / GROUP;
    let mut group_grads = vec![vec![0.0f32; parameter_count()]; groups];
    let mut group_loss = vec![0.0f64; groups];
    let mut grads = vec![0.0f32; parameter_count()];
    let mut batch = vec![0usize; cfg.batch];
    let mut reports = Vec::new();
    let mut step = 0u64;
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();
        let mut loss_sum = 0.0;
        for s in 0..steps_per_epoch {
            order.next_batch(&mut batch)?;
            batch_gradients(
                &model,
                train,
                &batch,
                cfg.threads,
                &mut group_grads,
                &mut group_loss,
            )?;
            grads.fill(0.0);
            for g in &group_grads {
                for (a, &b) in grads.iter_mut().zip(g) {
                    *a += b;
                }
            }
            let loss = group_loss.iter().sum::<f64>() / cfg.batch as f64;
            if !loss.is_finite() {
                bail!("the loss is not finite at step {step}");
            }
            loss_sum += loss;
            opt.step(model.params_mut(), &grads, cfg.lr_at(step, total))?;
            step += 1;
            if (s + 1) % 200 == 0 {
                say(&format!(
                    "epoch {epoch} step {}/{steps_per_epoch}: loss {:.4} ({:.0} images/s)",
                    s + 1,
                    loss_sum / (s + 1) as f64,
                    ((s + 1) as usize * cfg.batch) as f64 / start.elapsed().as_secs_f64()
                ));
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let test_accuracy = accuracy(&model, test, cfg.threads)?;
        let r = EpochReport {
            epoch,
            train_loss: loss_sum / steps_per_epoch as f64,
            test_accuracy,
            seconds,
        };
        say(&format!(
            "epoch {epoch}: train loss {:.4}, test accuracy {:.2} % ({seconds:.0} s)",
            r.train_loss,
            100.0 * test_accuracy
        ));
        reports.push(r);
    }
    Ok((model, reports))
}

/// Fills `group_grads[g]` with the summed gradient (scaled by 1/batch) of the batch's group g
/// and `group_loss[g]` with its summed loss.
fn batch_gradients(
    model: &Classifier,
    set: &Labelled,
    batch: &[usize],
    threads: usize,
    group_grads: &mut [Vec<f32>],
    group_loss: &mut [f64],
) -> Result<()> {
    let groups = group_grads.len();
    let parts = threads.clamp(1, groups);
    let scale = 1.0 / batch.len() as f32;
    let mut jobs: Vec<(usize, &mut Vec<f32>, &mut f64)> = group_grads
        .iter_mut()
        .zip(group_loss.iter_mut())
        .enumerate()
        .map(|(g, (gr, l))| (g, gr, l))
        .collect();
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        let mut rest = jobs.as_mut_slice();
        for t in 0..parts {
            let n = part(groups, parts, 1, t).len();
            let (mine, tail) = rest.split_at_mut(n);
            rest = tail;
            handles.push(s.spawn(move || -> Result<()> {
                let mut a = Activations::new();
                let mut b = Backward::new();
                let mut d = [0.0f32; 10];
                for (g, gr, loss) in mine.iter_mut() {
                    gr.fill(0.0);
                    **loss = 0.0;
                    for &i in &batch[*g * GROUP..(*g + 1) * GROUP] {
                        let img = &set.images[i * PIXELS..(i + 1) * PIXELS];
                        model.forward(img, &mut a)?;
                        let label = usize::from(set.labels[i]);
                        **loss += cross_entropy(&a.logits, label, scale, &mut d);
                        model.backward(&mut a, &d, &mut b, gr)?;
                    }
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("a training thread panicked"))??;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny separable problem: class = which quarter of the image is lit.
    fn toy(n: usize) -> (Vec<u8>, Vec<u8>) {
        let mut images = vec![0u8; n * PIXELS];
        let mut labels = Vec::new();
        for i in 0..n {
            let c = i % 4;
            let (y0, x0) = (c / 2 * 16, c % 2 * 16);
            for y in y0 + 4..y0 + 12 {
                for x in x0 + 4..x0 + 12 {
                    images[i * PIXELS + y * 32 + x] = (150 + (i * 7 % 100)) as u8;
                }
            }
            labels.push(c as u8);
        }
        (images, labels)
    }

    #[test]
    fn learns_a_toy_problem_with_the_same_bits_for_any_thread_count() {
        let (images, labels) = toy(64);
        let set = Labelled {
            images: &images,
            labels: &labels,
        };
        let cfg = |threads| ClassifyConfig {
            epochs: 3,
            batch: 16,
            lr: 3e-3,
            warmup: 2,
            weight_decay: 0.0,
            seed: 7,
            threads,
        };
        let (one, r1) = train_classifier(&cfg(1), &set, &set, |_| {}).unwrap();
        let (two, r2) = train_classifier(&cfg(3), &set, &set, |_| {}).unwrap();
        assert_eq!(one.params(), two.params());
        assert_eq!(r1.len(), 3);
        assert_eq!(r1[2].test_accuracy, r2[2].test_accuracy);
        assert_eq!(r1[2].test_accuracy, 1.0, "{r1:?}");
        assert!(r1[2].train_loss < r1[0].train_loss);
    }

    #[test]
    fn learning_rate_warms_up_and_decays_to_zero() {
        let c = ClassifyConfig {
            epochs: 1,
            batch: 8,
            lr: 1.0,
            warmup: 4,
            weight_decay: 0.0,
            seed: 0,
            threads: 1,
        };
        assert_eq!(c.lr_at(0, 100), 0.25);
        assert_eq!(c.lr_at(3, 100), 0.97);
        assert_eq!(c.lr_at(50, 100), 0.5);
        assert_eq!(c.lr_at(100, 100), 0.0);
    }

    #[test]
    fn bad_settings_are_named() {
        let ok = ClassifyConfig {
            epochs: 1,
            batch: GROUP,
            lr: 1e-3,
            warmup: 0,
            weight_decay: 0.0,
            seed: 0,
            threads: 1,
        };
        ok.validate().unwrap();
        for (bad, flag) in [
            (ClassifyConfig { lr: f64::NAN, ..ok }, "--lr NaN"),
            (ClassifyConfig { lr: -1.0, ..ok }, "--lr -1"),
            (
                ClassifyConfig {
                    weight_decay: f64::INFINITY,
                    ..ok
                },
                "--weight-decay inf",
            ),
            (ClassifyConfig { batch: 3, ..ok }, "--batch"),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
    }
}
