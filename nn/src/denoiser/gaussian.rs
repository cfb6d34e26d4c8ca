//! The closed-form denoiser of a Gaussian prior X ~ N(μ, s² I) (spec §8.5), standing in for a
//! network: `--weights gaussian:MEAN,STD`.
//!
//! Kind `ve` evaluates D(x, σ) = μ + s²/(s² + σ²)(x − μ) directly (core's `GaussianOracle`).
//! Kind `vp` goes the way a VP ε-network does: input x/√(1+σ²), the ε-oracle at ᾱ = 1/(1+σ²),
//! then D = x − σ ε (core's `Parameterization`), and σ must lie in the VP table's range.

use anyhow::{bail, Context, Result};
use tweedie_core::denoiser::GaussianOracle;
use tweedie_core::plan::PlanStep;
use tweedie_core::tweedie::{NetKind, NetOutput, Parameterization};
use tweedie_core::{Denoiser, Error, TimeMap};

use crate::weights::meta::Kind;

/// The prior and the scale it is evaluated on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianPrior {
    /// μ and s.
    pub oracle: GaussianOracle,
    /// VP (ε path) or VE (direct).
    pub kind: Kind,
}

/// Parses `MEAN,STD` (the part after `gaussian:`); STD must be > 0.
pub fn parse_gaussian(spec: &str) -> Result<GaussianOracle> {
    let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
    let [mean, std] = parts[..] else {
        bail!("--weights gaussian:{spec}: expected gaussian:MEAN,STD (e.g. gaussian:0,0.5)");
    };
    let mean: f64 = mean
        .parse()
        .ok()
        .filter(|m: &f64| m.is_finite())
        .with_context(|| format!("--weights gaussian:{spec}: MEAN `{mean}` is not a number"))?;
    let std: f64 = std
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0)
        .with_context(|| format!("--weights gaussian:{spec}: STD `{std}` must be a number > 0"))?;
    Ok(GaussianOracle { mean, std })
}

impl Denoiser for GaussianPrior {
    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error> {
        match self.kind {
            Kind::Ve => self.oracle.denoise(x, batch, step, out),
            Kind::Vp => {
                let sigma = step.sigma_net;
                // A VP network can only be asked for σ inside its table (formats §1).
                TimeMap::Exact.map(sigma)?;
                let param = Parameterization::new(NetKind::Vp, NetOutput::Eps);
                let scale = param.input_scale(sigma) as f32;
                let alpha_bar = 1.0 / (1.0 + sigma * sigma);
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = self.oracle.eps(f64::from(scale * v), alpha_bar) as f32;
                }
                param.denoised_from_output_in_place(x, out, sigma)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_give_the_closed_form() {
        let oracle = parse_gaussian("0.25, 0.5").unwrap();
        let x = [-2.0f32, 0.0, 0.7, 3.0];
        for kind in [Kind::Ve, Kind::Vp] {
            let mut g = GaussianPrior { oracle, kind };
            for sigma in [0.02, 0.5, 3.0, 100.0] {
                let step = PlanStep::at_sigma(sigma);
                let mut out = [0.0f32; 4];
                g.denoise(&x, 1, &step, &mut out).unwrap();
                for (o, &v) in out.iter().zip(&x) {
                    let want = oracle.denoised(f64::from(v), sigma);
                    assert!(
                        (f64::from(*o) - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "{kind:?} {sigma}"
                    );
                }
            }
        }
        let mut vp = GaussianPrior {
            oracle,
            kind: Kind::Vp,
        };
        let far = PlanStep::at_sigma(348.0);
        let mut out = [0.0f32; 4];
        assert!(matches!(
            vp.denoise(&x, 1, &far, &mut out),
            Err(Error::SigmaOutsideVpTable { .. })
        ));
        assert!(parse_gaussian("1").is_err());
        assert!(parse_gaussian("0,-1").is_err());
        assert!(parse_gaussian("a,1").is_err());
    }
}
