//! NCSN++ as the sampler's Tweedie denoiser (formats.md §3: `kind = ve`, `output = score`,
//! `noise_input = sigma`, data range [0, 1]): D(x, σ) = x + σ²·s(x, σ), evaluated at the plan
//! step's network noise level σ_net (which the score was conditioned on).

use tweedie_core::{Denoiser, Error, PlanStep};

use crate::model::ncsnpp::forward::{Input, NcsnppModel, Output};

/// An [`NcsnppModel`] behind [`tweedie_core::Denoiser`]. The chains are run one at a time
/// (batch-invariant by construction), nothing is allocated per call. A failing forward keeps
/// its full error for [`super::ModelDenoiser::take_failure`]; core's error only carries a
/// static summary.
#[derive(Debug)]
pub struct NcsnppDenoiser<'w> {
    model: NcsnppModel<'w>,
    failure: Option<anyhow::Error>,
}

impl<'w> NcsnppDenoiser<'w> {
    /// Wraps a model.
    pub fn new(model: NcsnppModel<'w>) -> Self {
        NcsnppDenoiser {
            model,
            failure: None,
        }
    }

    /// The wrapped model.
    pub fn model(&self) -> &NcsnppModel<'w> {
        &self.model
    }
}

impl Denoiser for NcsnppDenoiser<'_> {
    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let sigma = step.sigma_net as f32;
        if !(sigma > 0.0 && sigma.is_finite()) {
            return Err(Error::NotPositive("sigma_net"));
        }
        let s = self.model.arch().config.image_size;
        let per = self.model.arch().channels() * s * s;
        if x.len() != batch * per {
            return Err(Error::LengthMismatch {
                what: "ncsnpp denoiser input",
                expected: batch * per,
                got: x.len(),
            });
        }
        if out.len() != x.len() {
            return Err(Error::LengthMismatch {
                what: "ncsnpp denoiser output",
                expected: x.len(),
                got: out.len(),
            });
        }
        let sigmas = [sigma];
        for (xc, oc) in x.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
            let input = Input {
                x: xc,
                sigma: &sigmas,
                batch: 1,
            };
            if let Err(e) = self.model.forward(&input, Output::Denoised, oc) {
                self.failure
                    .get_or_insert(e.context(format!("NCSN++ forward at sigma {sigma}")));
                return Err(Error::Denoiser("the NCSN++ forward pass failed"));
            }
        }
        Ok(())
    }
}

impl super::ModelDenoiser for NcsnppDenoiser<'_> {
    fn take_failure(&mut self) -> Option<anyhow::Error> {
        self.failure.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ncsnpp::{NcsnppArch, NcsnppConfig};
    use crate::tensors::SafetensorsFile;
    use crate::testdata::golden;
    use crate::weights::{Precision, Weights};

    #[test]
    fn denoises_the_golden_inputs_as_x_plus_sigma2_score() {
        let dir = golden("ncsnpp_small");
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let config = NcsnppConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        let arch = NcsnppArch::new(&config).unwrap();
        let file = SafetensorsFile::open(&dir.join("weights.safetensors")).unwrap();
        let weights = Weights::load(&file, &arch.state_dict(), Precision::F32).unwrap();
        let io = SafetensorsFile::open(&dir.join("io.safetensors")).unwrap();
        let (x, sigma, score) = (
            io.tensor_f32("x").unwrap(),
            io.tensor_f32("sigma").unwrap(),
            io.tensor_f32("out").unwrap(),
        );
        let per = x.data.len() / 2;
        let mut d = NcsnppDenoiser::new(NcsnppModel::new(&arch, &weights, 2).unwrap());
        for i in 0..2 {
            let step = PlanStep::at_sigma(sigma.data[i] as f64);
            let xs = &x.data[i * per..][..per];
            let mut out = vec![0f32; per];
            d.denoise(xs, 1, &step, &mut out).unwrap();
            // Reference: x + σ²·out_ref, tolerance 2e-4 of the denoised image's scale.
            let s2 = (sigma.data[i] as f64).powi(2);
            let want: Vec<f64> = xs
                .iter()
                .zip(&score.data[i * per..][..per])
                .map(|(&xv, &sv)| xv as f64 + s2 * sv as f64)
                .collect();
            let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
            let err = out
                .iter()
                .zip(&want)
                .fold(0f64, |m, (&o, w)| m.max((o as f64 - w).abs()));
            assert!(err <= 2e-4 * scale, "sample {i}: {err:e}");
        }
        let bad = PlanStep::at_sigma(0.0);
        let mut out = vec![0f32; per];
        assert_eq!(
            d.denoise(&x.data[..per], 1, &bad, &mut out),
            Err(Error::NotPositive("sigma_net"))
        );
        let step = PlanStep {
            sigma_net: 1.0,
            ..bad
        };
        assert!(matches!(
            d.denoise(&x.data[..per], 2, &step, &mut out),
            Err(Error::LengthMismatch { .. })
        ));
        // Argument errors are core errors of their own; only a failing forward keeps one.
        use crate::denoiser::ModelDenoiser;
        assert!(d.take_failure().is_none());
    }
}
