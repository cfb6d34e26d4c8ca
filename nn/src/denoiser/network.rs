//! A loaded network as a `tweedie_core::Denoiser` (formats.md §3, "Semantics of
//! `tweedie.output`"): the VE-scale iterate x is scaled by the kind's input factor (VP:
//! 1/√(1+σ²)), the noise input is formed from σ_net (`t`: the VP time, `sigma`, `log_sigma`),
//! the network runs, its first C output channels are the output (ε, score or D), and core's
//! `Parameterization` turns them into D on the VE scale.
//!
//! Core's error type carries only static text, so a failing forward keeps its full error and
//! the runner takes it (`super::ModelDenoiser::take_failure`) when a step fails.

use tweedie_core::plan::PlanStep;
use tweedie_core::tweedie::{self, Parameterization};
use tweedie_core::{Denoiser, Error, TimeMap};

use crate::model::adm::forward::{AdmModel, Input};
use crate::model::adm::AdmArch;
use crate::model::layers::ConvPolicy;
use crate::weights::Weights;

/// What the network's noise input is (`tweedie.noise_input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseInputKind {
    /// VP time t(σ) ∈ [0, 999] (guided-diffusion).
    Time,
    /// σ itself.
    Sigma,
    /// ln σ.
    LogSigma,
    /// 250·ln σ with the input scaled by 1/√(1 + σ²) whatever the kind (`host train`'s VE
    /// preset: EDM's c_noise = ¼ ln σ in the timestep embedding's 0..1000 range).
    LogSigmaX250,
}

impl NoiseInputKind {
    /// Parses the metadata / flag value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "t" => Some(NoiseInputKind::Time),
            "sigma" => Some(NoiseInputKind::Sigma),
            "log_sigma" => Some(NoiseInputKind::LogSigma),
            "log_sigma_x250" => Some(NoiseInputKind::LogSigmaX250),
            _ => None,
        }
    }

    /// The network's noise input for a step.
    pub fn value(self, step: &PlanStep) -> Result<f32, Error> {
        let sigma = step.sigma_net;
        Ok(match self {
            NoiseInputKind::Time if step.t.is_finite() => step.t as f32,
            NoiseInputKind::Time => TimeMap::Exact.map(sigma)?.t as f32,
            NoiseInputKind::Sigma => sigma as f32,
            NoiseInputKind::LogSigma => sigma.ln() as f32,
            NoiseInputKind::LogSigmaX250 => tweedie::ve_noise_input(sigma),
        })
    }

    /// The factor applied to the (VE-scale) iterate before the network: the kind's own
    /// (`param.input_scale`) except for [`NoiseInputKind::LogSigmaX250`], which fixes
    /// 1/√(1 + σ²).
    pub fn input_scale(self, param: &Parameterization, sigma: f64) -> f64 {
        match self {
            NoiseInputKind::LogSigmaX250 => tweedie::ve_input_scale(sigma),
            _ => param.input_scale(sigma),
        }
    }
}

/// The ADM U-Net as a denoiser; buffers grow to the largest batch seen.
pub struct AdmDenoiser<'a> {
    /// Architecture.
    pub arch: &'a AdmArch,
    /// Weights.
    pub weights: &'a Weights,
    /// How the output becomes D.
    pub param: Parameterization,
    /// What the noise input is.
    pub noise_input: NoiseInputKind,
    /// Threads for the forward pass.
    pub threads: usize,
    /// How the forward computes its 3×3 convolutions.
    pub conv: ConvPolicy,
    /// The full error of the first failed call, until taken.
    failure: Option<anyhow::Error>,
    /// Built on the first call (arena and worker pool), then reused for every step.
    model: Option<AdmModel<'a>>,
    input: Vec<f32>,
    output: Vec<f32>,
}

impl<'a> AdmDenoiser<'a> {
    /// A denoiser over a loaded network.
    pub fn new(
        arch: &'a AdmArch,
        weights: &'a Weights,
        param: Parameterization,
        noise_input: NoiseInputKind,
        (threads, conv): (usize, ConvPolicy),
    ) -> Self {
        AdmDenoiser {
            arch,
            weights,
            param,
            noise_input,
            threads,
            conv,
            failure: None,
            model: None,
            input: Vec::new(),
            output: Vec::new(),
        }
    }

    /// Keeps `e` (unless an earlier failure is kept) and returns core's short error.
    fn fail(&mut self, e: anyhow::Error) -> Error {
        self.failure.get_or_insert(e);
        Error::Denoiser("the network forward pass failed")
    }
}

impl super::ModelDenoiser for AdmDenoiser<'_> {
    fn take_failure(&mut self) -> Option<anyhow::Error> {
        self.failure.take()
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
        let c = &self.arch.config;
        let (ci, co, size) = (c.in_channels, c.out_channels, c.image_size);
        let plane = size * size;
        if batch == 0 || x.len() != batch * ci * plane || out.len() != x.len() {
            return Err(Error::Shape("network input is not batch x C x H x W"));
        }
        let sigma = step.sigma_net;
        let scale = self.noise_input.input_scale(&self.param, sigma) as f32;
        self.input.clear();
        self.input.extend(x.iter().map(|&v| scale * v));
        let t = vec![self.noise_input.value(step)?; batch];
        self.output.resize(batch * co * plane, 0.0);
        let input = Input {
            x: &self.input,
            t: &t,
            batch,
            height: size,
            width: size,
        };
        if self.model.is_none() {
            let (arch, weights, threads) = (self.arch, self.weights, self.threads);
            match AdmModel::with_policy(arch, weights, size, size, threads, self.conv) {
                Ok(m) => self.model = Some(m),
                Err(e) => return Err(self.fail(e)),
            }
        }
        let result = match self.model.as_mut() {
            Some(model) => model.forward(&input, &mut self.output),
            None => return Err(Error::Denoiser("the network could not be built")),
        };
        if let Err(e) = result {
            return Err(self.fail(e));
        }
        // Channels 0..C of each sample are ε / score / D (learn_sigma adds C more).
        for (o, n) in out
            .chunks_exact_mut(ci * plane)
            .zip(self.output.chunks_exact(co * plane))
        {
            o.copy_from_slice(&n[..ci * plane]);
        }
        self.param.denoised_from_output_in_place(x, out, sigma)
    }
}

#[cfg(test)]
mod log_sigma_x250_tests {
    use super::*;
    use tweedie_core::tweedie::{NetKind, NetOutput};

    /// `host train`'s VE noise input: 250·ln σ, input scaled by 1/√(1 + σ²) for any kind.
    #[test]
    fn log_sigma_x250_scales_input_and_noise() {
        let k = NoiseInputKind::parse("log_sigma_x250").unwrap();
        let step = PlanStep::at_sigma(3.0);
        assert_eq!(k.value(&step).unwrap(), (250.0 * 3f64.ln()) as f32);
        let ve = Parameterization::new(NetKind::Ve, NetOutput::Eps);
        assert_eq!(k.input_scale(&ve, 3.0), 1.0 / 10f64.sqrt());
        assert_eq!(NoiseInputKind::LogSigma.input_scale(&ve, 3.0), 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::ModelDenoiser;
    use crate::model::config::ModelConfig;
    use crate::tensors::SafetensorsFile;
    use crate::testdata::golden;
    use crate::weights::{Precision, Weights};
    use tweedie_core::tweedie::{NetKind, NetOutput};
    use tweedie_core::{Preset, StepPlan};

    #[test]
    fn adm_small_denoises_with_the_vp_eps_formula() {
        let dir = golden("adm_small");
        let config = ModelConfig::load(dir.join("config.json").to_str().unwrap()).unwrap();
        let arch = AdmArch::new(config.adm().unwrap()).unwrap();
        let file = SafetensorsFile::open(&dir.join("weights.safetensors")).unwrap();
        let weights = Weights::load(&file, &arch.state_dict(), Precision::F32).unwrap();
        let (batch, c, hw) = (2, 3, 32 * 32);
        let param = Parameterization::new(NetKind::Vp, NetOutput::Eps);
        let split = (2, ConvPolicy::Auto);
        let mut den = AdmDenoiser::new(&arch, &weights, param, NoiseInputKind::Time, split);
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
                    // f32 input scaling (an ulp of the input moves ε) and the f32 update.
                    (got - want).abs() <= 1e-5 * (1.0 + xi.abs() + (step.sigma * eps).abs()),
                    "sample {n} element {i}: {got} vs {want}"
                );
            }
        }
        assert!(den.take_failure().is_none());
        // A forward that cannot run keeps its full error for the runner, once; the step
        // returns core's short one.
        let mut broken = AdmDenoiser::new(
            &arch,
            &weights,
            param,
            NoiseInputKind::Time,
            (0, ConvPolicy::Auto),
        );
        let e = broken.denoise(&x, batch, &step, &mut d).unwrap_err();
        assert_eq!(e, Error::Denoiser("the network forward pass failed"));
        let full = broken.take_failure().expect("the forward's error");
        assert!(
            format!("{full:#}").contains("threads must be at least 1"),
            "{full:#}"
        );
        assert!(broken.take_failure().is_none());
        // A step without a VP time gets t(σ) from the exact time map.
        let untimed = PlanStep {
            t: f64::NAN,
            ..step
        };
        let mut d2 = vec![f32::NAN; x.len()];
        den.denoise(&x, batch, &untimed, &mut d2).unwrap();
        let exact = TimeMap::Exact.map(step.sigma_net).unwrap().t;
        assert!(
            (exact - step.t).abs() < 1.0,
            "t(σ) {exact} vs plan t {}",
            step.t
        );
        assert!(d2.iter().all(|v| v.is_finite()));
        assert!(den.denoise(&x[1..], batch, &step, &mut d[1..]).is_err());
    }
}
