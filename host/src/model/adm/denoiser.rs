//! The bridge from the ADM network to the sampler: a [`Denoiser`] for a VP ε-network
//! (formats §3). The VE-scale iterate x is scaled to the network's input √ᾱ·x = x/√(1 + σ²),
//! the network runs at t = `step.t`, and its first `in_channels` output channels (ε; the
//! learned-variance channels are ignored) give D = x − σ·ε, both formulas from
//! [`Parameterization`].

use tweedie_core::plan::PlanStep;
use tweedie_core::tweedie::{NetKind, NetOutput, Parameterization};
use tweedie_core::{Denoiser, Error};

use super::forward::{AdmModel, Input};

/// [`AdmModel`] as a VP ε-prediction denoiser. Runs the batch one sample at a time through
/// buffers sized for one sample (so any batch works without allocating, and a chain's result
/// does not depend on the batch).
#[derive(Debug)]
pub struct AdmDenoiser<'w> {
    model: AdmModel<'w>,
    param: Parameterization,
    /// One sample of network input (√ᾱ·x).
    net_in: Vec<f32>,
    /// One sample of network output (ε, then v when learn_sigma).
    net_out: Vec<f32>,
    /// The message of the last failed forward pass (core's error type carries only a
    /// static text).
    last_error: Option<String>,
}

impl<'w> AdmDenoiser<'w> {
    /// Wraps a model (planned for the sampling resolution).
    pub fn new(model: AdmModel<'w>) -> AdmDenoiser<'w> {
        let c = &model.arch().config;
        let (h, w) = model.size();
        let (net_in, net_out) = (
            vec![0.0; c.in_channels * h * w],
            vec![0.0; c.out_channels * h * w],
        );
        AdmDenoiser {
            model,
            param: Parameterization::new(NetKind::Vp, NetOutput::Eps),
            net_in,
            net_out,
            last_error: None,
        }
    }

    /// The wrapped model.
    pub fn model(&self) -> &AdmModel<'w> {
        &self.model
    }

    /// Why the last [`Denoiser::denoise`] call failed in the network, if it did.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

impl Denoiser for AdmDenoiser<'_> {
    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let per = self.net_in.len();
        tweedie_core::error::check_len("denoiser input", batch * per, x.len())?;
        tweedie_core::error::check_len("denoiser output", x.len(), out.len())?;
        if !(step.t.is_finite() && (0.0..=999.0).contains(&step.t)) {
            return Err(Error::Denoiser(
                "ADM: the plan step has no VP time t in [0, 999]",
            ));
        }
        let sigma = step.sigma_net;
        let scale = self.param.input_scale(sigma);
        let (h, w) = self.model.size();
        let t = [step.t as f32];
        for (xi, oi) in x.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
            for (v, &u) in self.net_in.iter_mut().zip(xi) {
                *v = (scale * u as f64) as f32;
            }
            let input = Input {
                x: &self.net_in,
                t: &t,
                batch: 1,
                height: h,
                width: w,
            };
            if let Err(e) = self.model.forward(&input, &mut self.net_out) {
                self.last_error = Some(format!("{e:#}"));
                return Err(Error::Denoiser("ADM forward pass failed"));
            }
            // ε is the first in_channels channels, i.e. the first `per` values of the sample.
            self.param
                .denoised_from_output(xi, &self.net_out[..per], sigma, oi)?;
        }
        self.last_error = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::adm::AdmArch;
    use crate::model::config::ModelConfig;
    use crate::tensors::SafetensorsFile;
    use crate::testdata::golden;
    use crate::weights::{Precision, Weights};
    use tweedie_core::{Preset, StepPlan};

    #[test]
    fn adm_small_denoises_with_the_vp_eps_formula() {
        let dir = golden("adm_small");
        let config = ModelConfig::load(dir.join("config.json").to_str().unwrap()).unwrap();
        let arch = AdmArch::new(config.adm().unwrap()).unwrap();
        let file = SafetensorsFile::open(&dir.join("weights.safetensors")).unwrap();
        let weights = Weights::load(&file, &arch.state_dict(), Precision::F32).unwrap();
        let (batch, c, hw) = (2, 3, 32 * 32);
        let mut den = AdmDenoiser::new(AdmModel::new(&arch, &weights, 32, 32, 2).unwrap());
        let step = Preset::VpUncondPretrained.plan().step(500).unwrap();
        let x: Vec<f32> = (0..batch * c * hw)
            .map(|i| step.sigma * tweedie_core::noise::gaussian(7, 0, 0, i as u64) as f64)
            .map(|v| v as f32)
            .collect();
        let mut d = vec![f32::NAN; x.len()];
        den.denoise(&x, batch, &step, &mut d).unwrap();
        assert!(d.iter().all(|v| v.is_finite()));

        // The same numbers by hand: ε from the raw network at √ᾱ·x, then x − σ·ε.
        let scale = 1.0 / (1.0 + step.sigma * step.sigma).sqrt();
        let net_in: Vec<f32> = x.iter().map(|&u| (scale * u as f64) as f32).collect();
        let mut net_out = vec![0.0; batch * 6 * hw];
        let mut model = AdmModel::new(&arch, &weights, 32, 32, 1).unwrap();
        let t = [step.t as f32; 2];
        let input = Input {
            x: &net_in,
            t: &t,
            batch,
            height: 32,
            width: 32,
        };
        model.forward(&input, &mut net_out).unwrap();
        for n in 0..batch {
            for i in 0..c * hw {
                let (xi, eps) = (x[n * c * hw + i] as f64, net_out[n * 6 * hw + i] as f64);
                let want = xi - step.sigma * eps;
                let got = d[n * c * hw + i] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "sample {n} element {i}: {got} vs {want}"
                );
            }
        }
        // A step without a VP time is refused.
        let bad = PlanStep {
            t: f64::NAN,
            ..step
        };
        assert!(matches!(
            den.denoise(&x, batch, &bad, &mut d),
            Err(Error::Denoiser(_))
        ));
        assert!(den.denoise(&x[1..], batch, &step, &mut d[1..]).is_err());
    }
}
