//! Tweedie's formula and the network parameterizations that turn a network's output into a
//! denoiser D(x, σ) on the VE scale (spec §2(c)–(d) = eqs. 4/5; §4.2 eq. 15; §4.3 eq. 17;
//! §6.1–6.2 = eqs. 12/13; §7; formats §3 "Semantics of `tweedie.output`").
//!
//! Precision: every coefficient (1/σ², σ, σ²·√ᾱ, √ᾱ) is computed once per call in f64 and
//! rounded to f32; the per-element arithmetic is f32 (one multiply and one add, no fused
//! multiply-add). The official code forms ᾱ and √ᾱ in float32 on the GPU (spec §6.2, §16
//! item 9), so the two agree to a few f32 ulps, not bit for bit.
//!
//! In-place forms exist because a sampler usually holds D (or the raw network output) in the
//! buffer that becomes the next quantity; Rust forbids passing the same slice as input and
//! output.

use crate::error::{check_len, check_positive};
use crate::{vp, Error};

/// Tweedie (eq. 5), one element: s = (D − x)·(1/σ²), with `inv_sigma_sq` = f32(1/σ²).
#[inline]
pub fn score_from_denoised_f32(x: f32, d: f32, inv_sigma_sq: f32) -> f32 {
    (d - x) * inv_sigma_sq
}

/// Tweedie (eq. 4), one element: D = x + σ²·s, with `sigma_sq` = f32(σ²). Also the form of
/// every score-type network: a VP score enters with `sigma_sq` = f32(σ²·√ᾱ) (eq. 13).
#[inline]
pub fn denoised_from_score_f32(x: f32, s: f32, sigma_sq: f32) -> f32 {
    x + sigma_sq * s
}

/// ε-parameterization (eq. 15), one element: D = x − σ·ε, with `sigma` = f32(σ).
#[inline]
pub fn denoised_from_eps_f32(x: f32, eps: f32, sigma: f32) -> f32 {
    x - sigma * eps
}

/// √ᾱ for a VE noise level: 1/√(1 + σ²) (eq. 12). It is both the VP network's input scale
/// (x^VP = √ᾱ·x^VE) and the factor of eq. 13.
#[inline]
pub fn sqrt_alpha_bar(sigma: f64) -> f64 {
    libm::sqrt(vp::alpha_bar_of_sigma(sigma))
}

/// The noise-input scale of VE ε-networks trained by `host train --preset ve` (metadata
/// `noise_input = log_sigma_x250`): the network's "time" is 250·ln σ, EDM's c_noise = ¼ ln σ
/// stretched to the sinusoidal embedding's 0..1000 design range.
pub const VE_NOISE_SCALE: f64 = 250.0;

/// The VE preconditioning's input scale c_in(σ) = 1/√(1 + σ²): the network sees c_in·x. The
/// one definition for training and sampling, so a trained model always matches its sampler.
#[inline]
pub fn ve_input_scale(sigma: f64) -> f64 {
    1.0 / libm::sqrt(1.0 + sigma * sigma)
}

/// The VE preconditioning's noise input 250·ln σ (see [`VE_NOISE_SCALE`]), rounded to f32.
#[inline]
pub fn ve_noise_input(sigma: f64) -> f32 {
    (VE_NOISE_SCALE * libm::log(sigma)) as f32
}

/// Score from a denoiser (eq. 5): out = (d − x)/σ².
pub fn score_from_denoised(x: &[f32], d: &[f32], sigma: f64, out: &mut [f32]) -> Result<(), Error> {
    check_len("denoised", x.len(), d.len())?;
    check_len("score", x.len(), out.len())?;
    let c = inv_sigma_sq(sigma)?;
    for ((o, &xi), &di) in out.iter_mut().zip(x).zip(d) {
        *o = score_from_denoised_f32(xi, di, c);
    }
    Ok(())
}

/// [`score_from_denoised`] in place: `d_to_score` holds D on entry and the score on return.
pub fn score_from_denoised_in_place(
    x: &[f32],
    d_to_score: &mut [f32],
    sigma: f64,
) -> Result<(), Error> {
    check_len("denoised", x.len(), d_to_score.len())?;
    let c = inv_sigma_sq(sigma)?;
    for (v, &xi) in d_to_score.iter_mut().zip(x) {
        *v = score_from_denoised_f32(xi, *v, c);
    }
    Ok(())
}

/// Denoiser from a score (eq. 4): out = x + σ²·s.
pub fn denoised_from_score(x: &[f32], s: &[f32], sigma: f64, out: &mut [f32]) -> Result<(), Error> {
    let c = check_positive(sigma, "sigma")?;
    affine(x, s, (c * c) as f32, out)
}

/// Eq. 13: the VE score at x from the VP score at √ᾱ·x: out = √ᾱ·s_vp.
pub fn ve_score_from_vp_score(s_vp: &[f32], sigma: f64, out: &mut [f32]) -> Result<(), Error> {
    let c = check_positive(sigma, "sigma")?;
    scale(s_vp, sqrt_alpha_bar(c) as f32, out)
}

/// Inverse of eq. 13: out = s_ve/√ᾱ = √(1 + σ²)·s_ve.
pub fn vp_score_from_ve_score(s_ve: &[f32], sigma: f64, out: &mut [f32]) -> Result<(), Error> {
    let c = check_positive(sigma, "sigma")?;
    scale(s_ve, (1.0 / sqrt_alpha_bar(c)) as f32, out)
}

/// 1/σ² as f32, σ checked.
fn inv_sigma_sq(sigma: f64) -> Result<f32, Error> {
    let s = check_positive(sigma, "sigma")?;
    Ok((1.0 / (s * s)) as f32)
}

/// out = x + c·y with y a score.
fn affine(x: &[f32], y: &[f32], c: f32, out: &mut [f32]) -> Result<(), Error> {
    check_len("score", x.len(), y.len())?;
    check_len("denoised", x.len(), out.len())?;
    for ((o, &xi), &yi) in out.iter_mut().zip(x).zip(y) {
        *o = denoised_from_score_f32(xi, yi, c);
    }
    Ok(())
}

/// out = c·v.
fn scale(v: &[f32], c: f32, out: &mut [f32]) -> Result<(), Error> {
    check_len("score", v.len(), out.len())?;
    for (o, &vi) in out.iter_mut().zip(v) {
        *o = c * vi;
    }
    Ok(())
}

/// Which scale a network works on (formats §3 `tweedie.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetKind {
    /// Sees the VP-scale input √ᾱ·x = x/√(1 + σ²) and the time t(σ) (guided-diffusion).
    Vp,
    /// Sees the VE-scale input x and σ (score_sde NCSN++).
    Ve,
}

/// What a network outputs (formats §3 `tweedie.output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetOutput {
    /// The noise ε (DDPM, eq. 14/15).
    Eps,
    /// The score of the noisy density on the network's own scale (NCSN, eq. 17).
    Score,
    /// The clean-signal estimate E[X | x] itself.
    Denoised,
}

impl NetKind {
    /// Parses the metadata value (`vp`, `ve`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "vp" => Some(NetKind::Vp),
            "ve" => Some(NetKind::Ve),
            _ => None,
        }
    }

    /// The metadata value.
    pub const fn name(self) -> &'static str {
        match self {
            NetKind::Vp => "vp",
            NetKind::Ve => "ve",
        }
    }
}

impl NetOutput {
    /// Parses the metadata value (`eps`, `score`, `denoised`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "eps" => Some(NetOutput::Eps),
            "score" => Some(NetOutput::Score),
            "denoised" => Some(NetOutput::Denoised),
            _ => None,
        }
    }

    /// The metadata value.
    pub const fn name(self) -> &'static str {
        match self {
            NetOutput::Eps => "eps",
            NetOutput::Score => "score",
            NetOutput::Denoised => "denoised",
        }
    }
}

/// How a network's output becomes D(x, σ) on the VE scale (formats §3). With x the VE-scale
/// input and ᾱ = 1/(1 + σ²):
///
/// | kind | output | network input | D |
/// |---|---|---|---|
/// | VE | ε | x | x − σ·ε |
/// | VP | ε | √ᾱ·x | x − σ·ε (eq. 15; the ε of x^VP = √ᾱx₀ + √(1−ᾱ)ε is the ε of x = x₀ + σε) |
/// | VE | score | x | x + σ²·s |
/// | VP | score | √ᾱ·x | x + σ²·√ᾱ·s (s is the VP-scale score; eq. 13 gives s_VE = √ᾱ·s) |
/// | VE | denoised | x | output |
/// | VP | denoised | √ᾱ·x | output (E[X₀ | √ᾱ·x] = E[X₀ | x]: the clean signal has no scale) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parameterization {
    /// The network's scale.
    pub kind: NetKind,
    /// The network's output.
    pub output: NetOutput,
}

impl Parameterization {
    /// A parameterization from its two parts.
    pub const fn new(kind: NetKind, output: NetOutput) -> Self {
        Parameterization { kind, output }
    }

    /// The factor the VE-scale iterate is multiplied by before it enters the network:
    /// VP √ᾱ = 1/√(1 + σ²), VE 1.
    pub fn input_scale(&self, sigma: f64) -> f64 {
        match self.kind {
            NetKind::Vp => sqrt_alpha_bar(sigma),
            NetKind::Ve => 1.0,
        }
    }

    /// The coefficient c of D = x + c·output for ε and score outputs (f64; see the table on
    /// [`Parameterization`]). `None` for a denoised output, which is D itself.
    pub fn output_coefficient(&self, sigma: f64) -> Result<Option<f64>, Error> {
        let sigma = check_positive(sigma, "sigma")?;
        Ok(match (self.kind, self.output) {
            (_, NetOutput::Eps) => Some(-sigma),
            (NetKind::Ve, NetOutput::Score) => Some(sigma * sigma),
            (NetKind::Vp, NetOutput::Score) => Some(sigma * sigma * sqrt_alpha_bar(sigma)),
            (_, NetOutput::Denoised) => None,
        })
    }

    /// D(x, σ) on the VE scale from the network output `net_out` (evaluated at
    /// `input_scale(σ)·x`), written to `out`. All three slices must have equal lengths.
    pub fn denoised_from_output(
        &self,
        x: &[f32],
        net_out: &[f32],
        sigma: f64,
        out: &mut [f32],
    ) -> Result<(), Error> {
        check_len("network output", x.len(), net_out.len())?;
        check_len("denoised", x.len(), out.len())?;
        match self.output_coefficient(sigma)? {
            Some(c) => apply_coefficient(self.output, x, net_out, c, out),
            None => out.copy_from_slice(net_out),
        }
        Ok(())
    }

    /// [`Parameterization::denoised_from_output`] in place: `out_to_d` holds the network
    /// output on entry and D on return.
    pub fn denoised_from_output_in_place(
        &self,
        x: &[f32],
        out_to_d: &mut [f32],
        sigma: f64,
    ) -> Result<(), Error> {
        check_len("network output", x.len(), out_to_d.len())?;
        if let Some(c) = self.output_coefficient(sigma)? {
            for (v, &xi) in out_to_d.iter_mut().zip(x) {
                *v = output_to_denoised(self.output, xi, *v, c);
            }
        }
        Ok(())
    }
}

/// out_i = D from x_i and the output y_i, for ε or score outputs with coefficient c.
fn apply_coefficient(output: NetOutput, x: &[f32], y: &[f32], c: f64, out: &mut [f32]) {
    for ((o, &xi), &yi) in out.iter_mut().zip(x).zip(y) {
        *o = output_to_denoised(output, xi, yi, c);
    }
}

/// One element of D for an ε or score output with coefficient c (from
/// [`Parameterization::output_coefficient`]); ε keeps the eq. 15 form x − σ·ε (c = −σ). The CPU
/// loops above and the device kernel both call this.
#[inline]
pub fn output_to_denoised(output: NetOutput, x: f32, y: f32, c: f64) -> f32 {
    match output {
        NetOutput::Eps => denoised_from_eps_f32(x, y, -c as f32),
        _ => denoised_from_score_f32(x, y, c as f32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The VE preconditioning went from std's `ln`/`sqrt` (host, before it lived here) to
    /// libm's: the same bits at every σ of a dense log grid over [10⁻⁴, 10⁴] (10⁶ points), so
    /// models trained before still match their sampler bit for bit.
    #[test]
    fn ve_preconditioning_matches_the_std_arithmetic_it_replaced() {
        let n = 1_000_000;
        for i in 0..=n {
            let sigma = 10f64.powf(-4.0 + 8.0 * i as f64 / n as f64);
            assert_eq!(
                ve_noise_input(sigma).to_bits(),
                ((250.0 * sigma.ln()) as f32).to_bits(),
                "σ = {sigma:e}"
            );
            assert_eq!(
                ve_input_scale(sigma).to_bits(),
                (1.0 / (1.0 + sigma * sigma).sqrt()).to_bits(),
                "σ = {sigma:e}"
            );
        }
    }

    /// The Gaussian prior X ~ N(μ, s² I) of spec §8.5, in f64.
    struct Gaussian {
        mu: f64,
        s: f64,
    }

    impl Gaussian {
        fn denoised(&self, x: f64, sigma: f64) -> f64 {
            let s2 = self.s * self.s;
            self.mu + s2 / (s2 + sigma * sigma) * (x - self.mu)
        }
        fn ve_score(&self, x: f64, sigma: f64) -> f64 {
            -(x - self.mu) / (self.s * self.s + sigma * sigma)
        }
        /// ∇ log f_{X^VP}(v), X^VP = √ᾱ X + √(1 − ᾱ) N.
        fn vp_score(&self, v: f64, sigma: f64) -> f64 {
            let ab = 1.0 / (1.0 + sigma * sigma);
            -(v - ab.sqrt() * self.mu) / (ab * self.s * self.s + 1.0 - ab)
        }
        /// Spec §8.5's VP ε-oracle.
        fn vp_eps(&self, v: f64, sigma: f64) -> f64 {
            let ab = 1.0 / (1.0 + sigma * sigma);
            (1.0 - ab).sqrt() * (v - ab.sqrt() * self.mu) / (ab * self.s * self.s + 1.0 - ab)
        }
        /// The VE ε-oracle: ε = (x − D)/σ.
        fn ve_eps(&self, x: f64, sigma: f64) -> f64 {
            sigma * (x - self.mu) / (self.s * self.s + sigma * sigma)
        }
    }

    const PRIOR: Gaussian = Gaussian { mu: 0.3, s: 0.7 };
    const SIGMAS: [f64; 5] = [vp::SIGMA_MIN, 0.2, 3.424136619, 50.0, vp::SIGMA_MAX];

    /// VE iterates around the prior at noise level σ: μ + σ·n for n in a fixed grid.
    fn iterates(sigma: f64) -> Vec<f32> {
        (0..41)
            .map(|i| (PRIOR.mu + (PRIOR.s + sigma) * (i as f64 - 20.0) / 8.0) as f32)
            .collect()
    }

    /// Checks D from a parameterization against the closed form, with an f32 error budget
    /// proportional to the magnitudes involved.
    fn check_denoiser(p: Parameterization, oracle: impl Fn(f64, f64) -> f64) {
        for sigma in SIGMAS {
            let x = iterates(sigma);
            let scale = p.input_scale(sigma);
            let net: Vec<f32> = x
                .iter()
                .map(|&xi| oracle(xi as f64 * scale, sigma) as f32)
                .collect();
            let mut d = vec![0.0f32; x.len()];
            p.denoised_from_output(&x, &net, sigma, &mut d).unwrap();
            let mut d_in_place = net.clone();
            p.denoised_from_output_in_place(&x, &mut d_in_place, sigma)
                .unwrap();
            assert_eq!(d, d_in_place);
            for (&xi, &di) in x.iter().zip(&d) {
                let want = PRIOR.denoised(xi as f64, sigma);
                let budget = 8.0 * f32::EPSILON as f64 * (xi.abs() as f64 + 1.0);
                assert!(
                    (di as f64 - want).abs() < budget,
                    "{p:?} σ {sigma} x {xi}: {di} vs {want}"
                );
            }
        }
    }

    #[test]
    fn vp_eps_oracle_gives_the_gaussian_denoiser() {
        check_denoiser(
            Parameterization::new(NetKind::Vp, NetOutput::Eps),
            |v, s| PRIOR.vp_eps(v, s),
        );
    }

    #[test]
    fn every_parameterization_gives_the_gaussian_denoiser() {
        use NetKind::*;
        use NetOutput::*;
        check_denoiser(Parameterization::new(Ve, Eps), |x, s| PRIOR.ve_eps(x, s));
        check_denoiser(Parameterization::new(Ve, Score), |x, s| {
            PRIOR.ve_score(x, s)
        });
        check_denoiser(Parameterization::new(Vp, Score), |v, s| {
            PRIOR.vp_score(v, s)
        });
        check_denoiser(Parameterization::new(Ve, Denoised), |x, s| {
            PRIOR.denoised(x, s)
        });
        // A VP denoised network sees √ᾱx and returns E[X₀ | x]: undo the input scale.
        check_denoiser(Parameterization::new(Vp, Denoised), |v, s| {
            PRIOR.denoised(v / sqrt_alpha_bar(s), s)
        });
    }

    /// Spec §6.2: the code's score −√(1/(1−ᾱ))·ε·√ᾱ equals (D − x)/σ² from our D.
    #[test]
    fn vp_eps_score_matches_the_official_formula() {
        let p = Parameterization::new(NetKind::Vp, NetOutput::Eps);
        for sigma in SIGMAS {
            let x = iterates(sigma);
            let ab = vp::alpha_bar_of_sigma(sigma);
            let eps: Vec<f32> = x
                .iter()
                .map(|&xi| PRIOR.vp_eps(xi as f64 * ab.sqrt(), sigma) as f32)
                .collect();
            let mut d = vec![0.0; x.len()];
            p.denoised_from_output(&x, &eps, sigma, &mut d).unwrap();
            score_from_denoised_in_place(&x, &mut d, sigma).unwrap();
            for (i, &s) in d.iter().enumerate() {
                let code = -(1.0 / (1.0 - ab)).sqrt() * eps[i] as f64 * ab.sqrt();
                // D − x cancels: the error is f32 rounding of x and D over σ².
                let budget =
                    8.0 * f32::EPSILON as f64 * (x[i].abs() as f64 + 1.0) / (sigma * sigma);
                assert!((s as f64 - code).abs() < budget, "σ {sigma}: {s} vs {code}");
            }
        }
    }

    #[test]
    fn input_scale_is_sqrt_alpha_bar_of_the_table() {
        let p = Parameterization::new(NetKind::Vp, NetOutput::Eps);
        for t in [0, 1, 499, 998, 999] {
            let want = vp::ALPHA_BAR[t].sqrt();
            assert!((p.input_scale(vp::SIGMA[t]) - want).abs() < 1e-13 * want.max(1e-3));
        }
        assert_eq!(
            Parameterization::new(NetKind::Ve, NetOutput::Score).input_scale(5.0),
            1.0
        );
    }

    #[test]
    fn score_and_denoiser_round_trip() {
        for sigma in SIGMAS {
            let x = iterates(sigma);
            let d: Vec<f32> = x
                .iter()
                .map(|&xi| PRIOR.denoised(xi as f64, sigma) as f32)
                .collect();
            let mut s = vec![0.0; x.len()];
            score_from_denoised(&x, &d, sigma, &mut s).unwrap();
            for (i, &si) in s.iter().enumerate() {
                let want = PRIOR.ve_score(x[i] as f64, sigma);
                let budget =
                    4.0 * f32::EPSILON as f64 * (x[i].abs() as f64 + 1.0) / (sigma * sigma);
                assert!((si as f64 - want).abs() < budget + 1e-6 * want.abs());
            }
            let mut back = vec![0.0; x.len()];
            denoised_from_score(&x, &s, sigma, &mut back).unwrap();
            for (i, (&b, &di)) in back.iter().zip(&d).enumerate() {
                let budget = 8.0 * f32::EPSILON * (x[i].abs() + 1.0);
                assert!((b - di).abs() < budget, "σ {sigma}: {b} vs {di}");
            }
        }
    }

    /// Eq. 13 on the Gaussian: √ᾱ·∇log f_VP(√ᾱx) = ∇log f_{X_σ}(x), and back.
    #[test]
    fn eq13_rescales_vp_scores_to_ve() {
        for sigma in SIGMAS {
            let x = iterates(sigma);
            let sa = sqrt_alpha_bar(sigma);
            let s_vp: Vec<f32> = x
                .iter()
                .map(|&xi| PRIOR.vp_score(xi as f64 * sa, sigma) as f32)
                .collect();
            let mut s_ve = vec![0.0; x.len()];
            ve_score_from_vp_score(&s_vp, sigma, &mut s_ve).unwrap();
            for (i, &s) in s_ve.iter().enumerate() {
                let want = PRIOR.ve_score(x[i] as f64, sigma);
                assert!((s as f64 - want).abs() <= 4e-7 * want.abs() + 1e-30);
            }
            let mut back = vec![0.0; x.len()];
            vp_score_from_ve_score(&s_ve, sigma, &mut back).unwrap();
            for (&b, &v) in back.iter().zip(&s_vp) {
                assert!((b - v).abs() <= 4.0 * f32::EPSILON * v.abs());
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for k in [NetKind::Vp, NetKind::Ve] {
            assert_eq!(NetKind::from_name(k.name()), Some(k));
        }
        for o in [NetOutput::Eps, NetOutput::Score, NetOutput::Denoised] {
            assert_eq!(NetOutput::from_name(o.name()), Some(o));
        }
        assert_eq!(NetOutput::from_name("v"), None);
        assert_eq!(NetKind::from_name("VP"), None);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let p = Parameterization::new(NetKind::Vp, NetOutput::Eps);
        let (x, y) = ([1.0f32; 4], [0.5f32; 4]);
        let mut out = [0.0f32; 4];
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = Err(Error::NotPositive("sigma"));
            assert_eq!(p.denoised_from_output(&x, &y, bad, &mut out), e);
            assert_eq!(p.denoised_from_output_in_place(&x, &mut out, bad), e);
            assert_eq!(score_from_denoised(&x, &y, bad, &mut out), e);
            assert_eq!(denoised_from_score(&x, &y, bad, &mut out), e);
            assert_eq!(ve_score_from_vp_score(&y, bad, &mut out), e);
            assert_eq!(vp_score_from_ve_score(&y, bad, &mut out), e);
        }
        let mismatch = |what, got| {
            Err(Error::LengthMismatch {
                what,
                expected: 4,
                got,
            })
        };
        assert_eq!(
            p.denoised_from_output(&x, &y[..3], 1.0, &mut out),
            mismatch("network output", 3)
        );
        assert_eq!(
            p.denoised_from_output(&x, &y, 1.0, &mut out[..2]),
            mismatch("denoised", 2)
        );
        assert_eq!(
            p.denoised_from_output_in_place(&x, &mut out[..1], 1.0),
            mismatch("network output", 1)
        );
        assert_eq!(
            score_from_denoised(&x, &y[..3], 1.0, &mut out),
            mismatch("denoised", 3)
        );
        assert_eq!(
            score_from_denoised(&x, &y, 1.0, &mut out[..3]),
            mismatch("score", 3)
        );
        assert_eq!(
            score_from_denoised_in_place(&x, &mut out[..3], 1.0),
            mismatch("denoised", 3)
        );
        assert_eq!(
            denoised_from_score(&x, &y[..3], 1.0, &mut out),
            mismatch("score", 3)
        );
        assert_eq!(
            ve_score_from_vp_score(&y, 1.0, &mut out[..3]),
            Err(Error::LengthMismatch {
                what: "score",
                expected: 4,
                got: 3
            })
        );
        // Nothing was written by the failing calls above that checked before writing.
        assert_eq!(out, [0.0; 4]);
    }
}
