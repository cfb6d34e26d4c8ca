//! The sampling template (eq. 10/11) and its conditional form (eq. 24):
//!
//! x_{k+1} = x_k + (γ_k/σ_k²)(D(x_k, σ_k) − x_k) + (γ_k/σ_y²) Aᵀ(y − A x_k) + sqrt(2 γ_k T_k) n_k
//!
//! Both drift terms are evaluated at the same x_k (the official code's order, spec §10.3).
//! A plan ([`StepPlan`]) supplies σ_k, γ_k, T_k in f64; [`UpdateCoefficients`] rounds them to
//! f32 once per step; [`update_element`] is the only place the update formula lives, and the
//! slice drivers, the CPU kernels and the GPU all call it.
//!
//! Noise: step k of chain c draws element e as `noise::gaussian(seed, c, k, e)`, so a chain
//! split across threads ([`update_range`] with `first_element`) or chains split across
//! batches give identical bits. x₀ uses counter [`noise::COUNTER_INIT`].
//!
//! Memory: everything is the caller's. [`sample_scratch_len`] and
//! [`conditional_scratch_len`] say how much scratch the whole-loop drivers need;
//! [`conditional_scratch_len_for`] and [`likelihood_scratch_len_for`] are their `const fn`
//! forms for static buffers, from an operator's `lens_for(c, h, w)`.

use half::f16;

use crate::error::{check_len, check_positive};
use crate::operator::{ForwardOperator, OperatorLens};
use crate::plan::{PlanStep, StepPlan};
use crate::{noise, Denoiser, Error};

/// The f32 coefficients of one update, computed once per step from a [`PlanStep`] in f64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateCoefficients {
    /// γ_k/σ_k², the weight of D − x (the score times γ, via Tweedie).
    pub drift: f32,
    /// γ_k/σ_y², the weight of Aᵀ(y − A x); 0 when unconditional.
    pub likelihood: f32,
    /// sqrt(2 γ_k T_k), the std of the injected noise; 0 on a noise-free step.
    pub noise: f32,
}

impl UpdateCoefficients {
    /// Unconditional coefficients (eq. 11). σ must be > 0, γ ≥ 0 and T ≥ 0, all finite.
    pub fn new(step: &PlanStep) -> Result<Self, Error> {
        let sigma = check_positive(step.sigma, "sigma_k")?;
        if !(step.gamma.is_finite() && step.gamma >= 0.0) {
            return Err(Error::OutOfRange(
                "step size gamma_k (must be finite, >= 0)",
            ));
        }
        if !(step.temperature.is_finite() && step.temperature >= 0.0) {
            return Err(Error::OutOfRange("temperature T_k (must be finite, >= 0)"));
        }
        Ok(UpdateCoefficients {
            drift: (step.gamma / (sigma * sigma)) as f32,
            likelihood: 0.0,
            noise: libm::sqrt(2.0 * step.gamma * step.temperature) as f32,
        })
    }

    /// Conditional coefficients (eq. 24) for measurement noise std σ_y > 0.
    pub fn conditional(step: &PlanStep, sigma_y: f64) -> Result<Self, Error> {
        let sigma_y = check_positive(sigma_y, "sigma_y")?;
        let mut c = Self::new(step)?;
        c.likelihood = (step.gamma / (sigma_y * sigma_y)) as f32;
        Ok(c)
    }
}

/// One element of the template update: x + drift·(d − x) + likelihood·g + noise·n.
///
/// `d` = D(x_k, σ_k), `lik_grad` = [Aᵀ(y − A x_k)]_e (0 when unconditional), `n` the standard
/// normal draw (0 on a noise-free step). The operation order is fixed (no fused multiply-add),
/// so every caller gets the same bits.
#[inline]
pub fn update_element(x: f32, d: f32, lik_grad: f32, n: f32, coef: &UpdateCoefficients) -> f32 {
    x + coef.drift * (d - x) + coef.likelihood * lik_grad + coef.noise * n
}

/// The noise stream of one chain at one step: `noise::gaussian(seed, chain, counter, e)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainNoise {
    /// The run's seed.
    pub seed: u64,
    /// The global chain index (first_chain + position in the batch).
    pub chain: u64,
    /// The step counter (k for the template's step k).
    pub counter: u64,
}

impl ChainNoise {
    /// The draw for element e; 0 when the step injects no noise (no draw is made).
    #[inline]
    pub fn draw(&self, coef: &UpdateCoefficients, element: usize) -> f32 {
        if coef.noise == 0.0 {
            0.0
        } else {
            noise::gaussian(self.seed, self.chain, self.counter, element as u64)
        }
    }
}

/// Updates elements `first_element ..` of one chain in place: `x`, `denoised` and (if any)
/// `lik_grad` are the same range of that chain. Returns `Ok(true)` when every new value is
/// finite (the NaN/Inf check rides along in the same pass).
pub fn update_range(
    x: &mut [f32],
    denoised: &[f32],
    lik_grad: Option<&[f32]>,
    coef: &UpdateCoefficients,
    noise: ChainNoise,
    first_element: usize,
) -> Result<bool, Error> {
    check_len("denoised", x.len(), denoised.len())?;
    let mut finite = true;
    match lik_grad {
        Some(g) => {
            check_len("likelihood gradient", x.len(), g.len())?;
            for (i, ((v, &d), &g)) in x.iter_mut().zip(denoised).zip(g).enumerate() {
                *v = update_element(*v, d, g, noise.draw(coef, first_element + i), coef);
                finite &= v.is_finite();
            }
        }
        None => {
            for (i, (v, &d)) in x.iter_mut().zip(denoised).enumerate() {
                *v = update_element(*v, d, 0.0, noise.draw(coef, first_element + i), coef);
                finite &= v.is_finite();
            }
        }
    }
    Ok(finite)
}

/// [`update_range`] for a state stored in f16: each element is widened to f32, updated with
/// [`update_element`] and rounded back. Overflow past f16's range (65504) shows as non-finite.
pub fn update_range_f16(
    x: &mut [f16],
    denoised: &[f32],
    lik_grad: Option<&[f32]>,
    coef: &UpdateCoefficients,
    noise: ChainNoise,
    first_element: usize,
) -> Result<bool, Error> {
    check_len("denoised", x.len(), denoised.len())?;
    if let Some(g) = lik_grad {
        check_len("likelihood gradient", x.len(), g.len())?;
    }
    let mut finite = true;
    for (i, (v, &d)) in x.iter_mut().zip(denoised).enumerate() {
        let g = lik_grad.map_or(0.0, |g| g[i]);
        let n = noise.draw(coef, first_element + i);
        *v = f16::from_f32(update_element(v.to_f32(), d, g, n, coef));
        finite &= v.is_finite();
    }
    Ok(finite)
}

/// Scratch that [`likelihood_gradient`] needs: the residual plus the operator's own scratch.
pub fn likelihood_scratch_len(op: &impl ForwardOperator) -> usize {
    likelihood_scratch_len_for(op.lens())
}

/// [`likelihood_scratch_len`] from an operator's lengths, at compile time.
pub const fn likelihood_scratch_len_for(op: OperatorLens) -> usize {
    op.output.saturating_add(op.scratch)
}

/// out = Aᵀ(y − A x) for one chain (σ_y² times the likelihood score, eq. 23).
pub fn likelihood_gradient(
    op: &impl ForwardOperator,
    x: &[f32],
    y: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), Error> {
    check_len("x (operator input)", op.input_len(), x.len())?;
    check_len("y (measurement)", op.output_len(), y.len())?;
    check_len("likelihood gradient", op.input_len(), out.len())?;
    let need = likelihood_scratch_len(op);
    if scratch.len() < need {
        return Err(Error::LengthMismatch {
            what: "likelihood scratch",
            expected: need,
            got: scratch.len(),
        });
    }
    let (residual, rest) = scratch.split_at_mut(op.output_len());
    op.forward(x, residual, rest)?;
    for (r, &yv) in residual.iter_mut().zip(y) {
        *r = yv - *r;
    }
    op.adjoint(residual, out, rest)
}

/// Which chains a buffer holds and how they draw noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chains {
    /// Number of chains in the buffer (> 0; the buffer length is a multiple of it).
    pub batch: usize,
    /// Global index of the buffer's first chain (chain i of the buffer is first_chain + i).
    pub first_chain: u64,
    /// The run's seed.
    pub seed: u64,
}

impl Chains {
    /// Length of one chain in a buffer of `len` elements.
    pub fn chain_len(&self, len: usize) -> Result<usize, Error> {
        if self.batch == 0 {
            return Err(Error::Shape("batch must be at least 1"));
        }
        if !len.is_multiple_of(self.batch) || len == 0 {
            return Err(Error::Shape(
                "state length is not a positive multiple of batch",
            ));
        }
        Ok(len / self.batch)
    }

    /// The noise stream of buffer chain i at `counter`.
    pub fn noise(&self, i: usize, counter: u64) -> ChainNoise {
        ChainNoise {
            seed: self.seed,
            chain: self.first_chain + i as u64,
            counter,
        }
    }
}

/// x₀ ~ N(0, std² I) for every chain, with counter [`noise::COUNTER_INIT`]
/// (std = 1 gives the draws themselves, bit for bit).
pub fn init_state(x: &mut [f32], chains: Chains, std: f64) -> Result<(), Error> {
    let n = chains.chain_len(x.len())?;
    let std = check_positive(std, "initial std")? as f32;
    for (i, chain) in x.chunks_exact_mut(n).enumerate() {
        let key = chains.noise(i, noise::COUNTER_INIT);
        for (e, v) in chain.iter_mut().enumerate() {
            *v = std * noise::gaussian(key.seed, key.chain, key.counter, e as u64);
        }
    }
    Ok(())
}

/// Sees the state after every step (progress bars, snapshots, live metrics).
pub trait Observer {
    /// Called after step `step.k` with the new state x_{k+1}. An error stops sampling.
    fn observe(&mut self, step: &PlanStep, x: &[f32]) -> Result<(), Error>;
}

/// No observer.
impl Observer for () {
    fn observe(&mut self, _: &PlanStep, _: &[f32]) -> Result<(), Error> {
        Ok(())
    }
}

/// Any closure `|step, x| ...` is an observer.
impl<F: FnMut(&PlanStep, &[f32])> Observer for F {
    fn observe(&mut self, step: &PlanStep, x: &[f32]) -> Result<(), Error> {
        self(step, x);
        Ok(())
    }
}

/// The measurement side of conditional sampling (eq. 24).
#[derive(Clone, Copy, Debug)]
pub struct Likelihood<'a, O: ForwardOperator> {
    /// The forward operator A (one chain).
    pub operator: &'a O,
    /// y: one measurement shared by all chains (`output_len`), or one per chain
    /// (`batch · output_len`, back to back).
    pub y: &'a [f32],
    /// σ_y > 0, the measurement noise std.
    pub sigma_y: f64,
}

/// Scratch the unconditional drivers need for a state of `x_len` elements (the denoised batch).
pub const fn sample_scratch_len(x_len: usize) -> usize {
    x_len
}

/// Scratch the conditional drivers need: the denoised batch, one chain's likelihood gradient
/// and [`likelihood_scratch_len`].
pub fn conditional_scratch_len(op: &impl ForwardOperator, x_len: usize) -> usize {
    conditional_scratch_len_for(op.lens(), x_len)
}

/// [`conditional_scratch_len`] from an operator's lengths, at compile time, e.g.
/// `[0.0f32; conditional_scratch_len_for(SuperResolution4::lens_for(1, 8, 8), 2 * 64)]`.
pub const fn conditional_scratch_len_for(op: OperatorLens, x_len: usize) -> usize {
    x_len
        .saturating_add(op.input)
        .saturating_add(likelihood_scratch_len_for(op))
}

/// Unconditional sampling from scratch: x ← x₀ (the plan's init law), then K template steps.
pub fn sample(
    denoiser: &mut impl Denoiser,
    plan: &impl StepPlan,
    x: &mut [f32],
    batch: usize,
    first_chain: u64,
    seed: u64,
    scratch: &mut [f32],
) -> Result<(), Error> {
    let chains = Chains {
        batch,
        first_chain,
        seed,
    };
    // K = 0 must say so before x₀'s law (which may read step 0) is asked for.
    if plan.is_empty() {
        return Err(Error::ZeroSteps);
    }
    init_state(x, chains, plan.init_std()?)?;
    run(denoiser, plan, x, chains, scratch, &mut ())
}

/// Conditional sampling from scratch: x ← x₀, then K steps of eq. 24.
pub fn sample_conditional<O: ForwardOperator>(
    denoiser: &mut impl Denoiser,
    plan: &impl StepPlan,
    likelihood: &Likelihood<'_, O>,
    x: &mut [f32],
    chains: Chains,
    scratch: &mut [f32],
) -> Result<(), Error> {
    if plan.is_empty() {
        return Err(Error::ZeroSteps);
    }
    init_state(x, chains, plan.init_std()?)?;
    run_conditional(denoiser, plan, likelihood, x, chains, scratch, &mut ())
}

/// K unconditional template steps from the given x (not re-initialised).
pub fn run(
    denoiser: &mut impl Denoiser,
    plan: &impl StepPlan,
    x: &mut [f32],
    chains: Chains,
    scratch: &mut [f32],
    observer: &mut impl Observer,
) -> Result<(), Error> {
    run_loop::<NoOperator>(denoiser, plan, None, x, chains, scratch, observer)
}

/// K conditional template steps (eq. 24) from the given x.
pub fn run_conditional<O: ForwardOperator>(
    denoiser: &mut impl Denoiser,
    plan: &impl StepPlan,
    likelihood: &Likelihood<'_, O>,
    x: &mut [f32],
    chains: Chains,
    scratch: &mut [f32],
    observer: &mut impl Observer,
) -> Result<(), Error> {
    run_loop(
        denoiser,
        plan,
        Some(likelihood),
        x,
        chains,
        scratch,
        observer,
    )
}

/// Tweedie's estimate D(x_K, σ_{K−1}) of the final state (formats §8, `--final-denoise`):
/// one extra denoiser evaluation, written to `out`.
pub fn final_denoise(
    denoiser: &mut impl Denoiser,
    plan: &impl StepPlan,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
) -> Result<(), Error> {
    check_len("final denoise output", x.len(), out.len())?;
    let last = plan.len().checked_sub(1).ok_or(Error::ZeroSteps)?;
    denoiser.denoise(x, batch, &plan.step(last)?, out)
}

/// The loop shared by every driver: per step one denoiser call, then one fused pass over
/// the state (likelihood gradient per chain, update, finiteness check).
fn run_loop<O: ForwardOperator>(
    denoiser: &mut impl Denoiser,
    plan: &impl StepPlan,
    likelihood: Option<&Likelihood<'_, O>>,
    x: &mut [f32],
    chains: Chains,
    scratch: &mut [f32],
    observer: &mut impl Observer,
) -> Result<(), Error> {
    if plan.is_empty() {
        return Err(Error::ZeroSteps);
    }
    let n = chains.chain_len(x.len())?;
    let need = match likelihood {
        Some(l) => {
            check_len("x chain (operator input)", l.operator.input_len(), n)?;
            check_positive(l.sigma_y, "sigma_y")?;
            conditional_scratch_len(l.operator, x.len())
        }
        None => sample_scratch_len(x.len()),
    };
    if scratch.len() < need {
        return Err(Error::LengthMismatch {
            what: "sampler scratch",
            expected: need,
            got: scratch.len(),
        });
    }
    let (denoised, rest) = scratch.split_at_mut(x.len());
    for k in 0..plan.len() {
        let step = plan.step(k)?;
        denoiser.denoise(x, chains.batch, &step, denoised)?;
        let finite = match likelihood {
            None => {
                let coef = UpdateCoefficients::new(&step)?;
                update_chains(x, denoised, &coef, chains, k as u64)?
            }
            Some(l) => {
                let sigma_y = plan.likelihood_sigma_y(&step, l.sigma_y);
                let coef = UpdateCoefficients::conditional(&step, sigma_y)?;
                update_chains_conditional(x, denoised, l, &coef, chains, k as u64, rest)?
            }
        };
        if !finite {
            return Err(Error::NonFiniteState { step: k });
        }
        observer.observe(&step, x)?;
    }
    Ok(())
}

/// Unconditional update of every chain of the buffer with noise counter `counter`.
/// Returns whether the new state is finite.
pub fn update_chains(
    x: &mut [f32],
    denoised: &[f32],
    coef: &UpdateCoefficients,
    chains: Chains,
    counter: u64,
) -> Result<bool, Error> {
    let n = chains.chain_len(x.len())?;
    check_len("denoised", x.len(), denoised.len())?;
    let mut finite = true;
    for (i, (xc, dc)) in x
        .chunks_exact_mut(n)
        .zip(denoised.chunks_exact(n))
        .enumerate()
    {
        finite &= update_range(xc, dc, None, coef, chains.noise(i, counter), 0)?;
    }
    Ok(finite)
}

/// Conditional update of every chain: per chain Aᵀ(y − A x_k) into scratch, then the update.
/// `scratch` holds at least `input_len + likelihood_scratch_len(op)`.
pub fn update_chains_conditional<O: ForwardOperator>(
    x: &mut [f32],
    denoised: &[f32],
    likelihood: &Likelihood<'_, O>,
    coef: &UpdateCoefficients,
    chains: Chains,
    counter: u64,
    scratch: &mut [f32],
) -> Result<bool, Error> {
    let n = chains.chain_len(x.len())?;
    check_len("denoised", x.len(), denoised.len())?;
    let op = likelihood.operator;
    let m = op.output_len();
    let per_chain_y = if likelihood.y.len() == m {
        false
    } else {
        check_len(
            "y (one or one per chain)",
            m * chains.batch,
            likelihood.y.len(),
        )?;
        true
    };
    if scratch.len() < n + likelihood_scratch_len(op) {
        return Err(Error::LengthMismatch {
            what: "conditional scratch",
            expected: n + likelihood_scratch_len(op),
            got: scratch.len(),
        });
    }
    let (grad, lik_scratch) = scratch.split_at_mut(n);
    let mut finite = true;
    for (i, (xc, dc)) in x
        .chunks_exact_mut(n)
        .zip(denoised.chunks_exact(n))
        .enumerate()
    {
        let y = if per_chain_y {
            &likelihood.y[i * m..(i + 1) * m]
        } else {
            likelihood.y
        };
        likelihood_gradient(op, xc, y, grad, lik_scratch)?;
        finite &= update_range(xc, dc, Some(grad), coef, chains.noise(i, counter), 0)?;
    }
    Ok(finite)
}

/// Stand-in operator type for the unconditional loop (never called).
struct NoOperator;

impl ForwardOperator for NoOperator {
    fn input_len(&self) -> usize {
        0
    }
    fn output_len(&self) -> usize {
        0
    }
    fn scratch_len(&self) -> usize {
        0
    }
    fn forward(&self, _: &[f32], _: &mut [f32], _: &mut [f32]) -> Result<(), Error> {
        Ok(())
    }
    fn adjoint(&self, _: &[f32], _: &mut [f32], _: &mut [f32]) -> Result<(), Error> {
        Ok(())
    }
    fn norm_sq(&self) -> f64 {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::GaussianOracle;
    use crate::plan::{NoiseInput, Plan, StepRule, Temperature};
    use crate::schedule::Schedule;
    use crate::timemap::TimeMap;

    const ORACLE: GaussianOracle = GaussianOracle {
        mean: 0.25,
        std: 0.5,
    };

    fn oracle() -> GaussianOracle {
        ORACLE
    }

    /// formats §7: max |a − b| ≤ tol · max(1, max |b|).
    fn assert_close(a: &[f32], b: &[f64], tol: f64) {
        let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y).abs()));
        assert!(err <= tol * scale, "max error {err} > {tol} * {scale}");
    }

    fn vp_plan(steps: usize, rule: StepRule) -> Plan {
        Plan::new(
            steps,
            Schedule::VpPretrained,
            NoiseInput::Vp(TimeMap::Exact),
            rule,
            Temperature {
                start: 0.4,
                end: 1.0,
            },
        )
    }

    /// A test operator R^{2m} → R^m: y_i = w_i (x_{2i} + x_{2i+1})/2 (non-square, not a
    /// projection), with its exact adjoint.
    struct PairMean {
        weights: [f32; 4],
    }

    impl ForwardOperator for PairMean {
        fn input_len(&self) -> usize {
            8
        }
        fn output_len(&self) -> usize {
            4
        }
        fn scratch_len(&self) -> usize {
            1
        }
        fn forward(&self, x: &[f32], out: &mut [f32], _: &mut [f32]) -> Result<(), Error> {
            for (i, o) in out.iter_mut().enumerate() {
                *o = self.weights[i] * 0.5 * (x[2 * i] + x[2 * i + 1]);
            }
            Ok(())
        }
        fn adjoint(&self, r: &[f32], out: &mut [f32], _: &mut [f32]) -> Result<(), Error> {
            for (i, &v) in r.iter().enumerate() {
                out[2 * i] = self.weights[i] * 0.5 * v;
                out[2 * i + 1] = self.weights[i] * 0.5 * v;
            }
            Ok(())
        }
        fn norm_sq(&self) -> f64 {
            0.5
        }
    }

    #[test]
    fn update_element_is_eq_24() {
        let c = UpdateCoefficients {
            drift: 0.5,
            likelihood: 0.25,
            noise: 2.0,
        };
        // 1 + 0.5·(3 − 1) + 0.25·4 + 2·(−0.5) = 2.
        assert_eq!(update_element(1.0, 3.0, 4.0, -0.5, &c), 2.0);
    }

    #[test]
    fn coefficients_follow_the_plan_step() {
        let step = PlanStep {
            k: 0,
            sigma: 2.0,
            sigma_net: 2.0,
            t: f64::NAN,
            gamma: 0.4 * 4.0,
            temperature: 0.5,
        };
        let c = UpdateCoefficients::conditional(&step, 0.2).unwrap();
        assert_eq!(c.drift, 0.4f32);
        assert_eq!(c.noise, (2.0 * libm::sqrt(0.4)) as f32);
        assert_eq!(c.likelihood, (1.6 / 0.04) as f32);
        assert_eq!(UpdateCoefficients::new(&step).unwrap().likelihood, 0.0);
        let bad = PlanStep { sigma: 0.0, ..step };
        assert_eq!(
            UpdateCoefficients::new(&bad),
            Err(Error::NotPositive("sigma_k"))
        );
        let bad = PlanStep {
            temperature: f64::NAN,
            ..step
        };
        assert!(UpdateCoefficients::new(&bad).is_err());
        assert_eq!(
            UpdateCoefficients::conditional(&step, -1.0),
            Err(Error::NotPositive("sigma_y"))
        );
    }

    /// eq. 11 written out in f64 with the same draws, for `batch` chains of `n` elements.
    fn reference_loop(plan: &Plan, batch: usize, n: usize, seed: u64) -> Vec<f64> {
        let mut x: Vec<f64> = (0..batch * n)
            .map(|i| {
                noise::gaussian(seed, (i / n) as u64, noise::COUNTER_INIT, (i % n) as u64) as f64
            })
            .collect();
        for k in 0..plan.steps {
            let s = plan.step(k).unwrap();
            for (i, v) in x.iter_mut().enumerate() {
                let z = noise::gaussian(seed, (i / n) as u64, k as u64, (i % n) as u64) as f64;
                let score = (ORACLE.denoised(*v, s.sigma) - *v) / (s.sigma * s.sigma);
                *v += s.gamma * score + libm::sqrt(2.0 * s.gamma * s.temperature) * z;
            }
        }
        x
    }

    #[test]
    fn sample_matches_eq_11_written_out() {
        let plan = vp_plan(1000, StepRule::Paper { c: 0.4 });
        let (batch, n) = (3, 16);
        let mut x = vec![0.0f32; batch * n];
        let mut scratch = vec![0.0f32; sample_scratch_len(x.len())];
        sample(&mut oracle(), &plan, &mut x, batch, 0, 11, &mut scratch).unwrap();
        assert_close(&x, &reference_loop(&plan, batch, n, 11), 1e-5);
    }

    #[test]
    fn batch_and_thread_splits_give_identical_bits() {
        let plan = vp_plan(50, StepRule::Paper { c: 0.3 });
        let n = 10;
        let mut both = vec![0.0f32; 2 * n];
        let mut scratch = vec![0.0f32; 2 * n];
        sample(&mut oracle(), &plan, &mut both, 2, 4, 9, &mut scratch).unwrap();
        for i in 0..2 {
            let mut one = vec![0.0f32; n];
            sample(
                &mut oracle(),
                &plan,
                &mut one,
                1,
                4 + i as u64,
                9,
                &mut scratch,
            )
            .unwrap();
            assert_eq!(one, both[i * n..(i + 1) * n]);
        }
        // One chain split in two ranges (two threads) equals the whole range.
        let coef = UpdateCoefficients {
            drift: 0.3,
            likelihood: 0.0,
            noise: 0.7,
        };
        let key = ChainNoise {
            seed: 1,
            chain: 2,
            counter: 3,
        };
        let d: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let mut whole = vec![1.0f32; n];
        let mut split = whole.clone();
        update_range(&mut whole, &d, None, &coef, key, 0).unwrap();
        let (a, b) = split.split_at_mut(4);
        update_range(a, &d[..4], None, &coef, key, 0).unwrap();
        update_range(b, &d[4..], None, &coef, key, 4).unwrap();
        assert_eq!(whole, split);
    }

    #[test]
    fn conditional_sampling_matches_eq_24_written_out() {
        let op = PairMean {
            weights: [1.0, 0.5, 0.0, 2.0],
        };
        let rule = StepRule::Code {
            c: 0.5,
            sigma_y: 0.2,
        };
        let plan = vp_plan(300, rule);
        let chains = Chains {
            batch: 2,
            first_chain: 0,
            seed: 5,
        };
        // One y per chain.
        let y = [0.1f32, -0.3, 0.7, 0.2, -0.5, 0.0, 0.9, 0.4];
        let lik = Likelihood {
            operator: &op,
            y: &y,
            sigma_y: 0.2,
        };
        let mut x = vec![0.0f32; 16];
        let mut scratch = vec![0.0f32; conditional_scratch_len(&op, 16)];
        sample_conditional(&mut oracle(), &plan, &lik, &mut x, chains, &mut scratch).unwrap();

        let mut r: Vec<f64> = (0..16)
            .map(|i| noise::gaussian(5, i / 8, noise::COUNTER_INIT, i % 8) as f64)
            .collect();
        for k in 0..plan.steps {
            let s = plan.step(k).unwrap();
            let old = r.clone();
            for (i, v) in r.iter_mut().enumerate() {
                let (c, e) = (i / 8, i % 8);
                let w = op.weights[e / 2] as f64;
                let ax = w * 0.5 * (old[c * 8 + 2 * (e / 2)] + old[c * 8 + 2 * (e / 2) + 1]);
                let grad = w * 0.5 * (y[c * 4 + e / 2] as f64 - ax);
                let z = noise::gaussian(5, c as u64, k as u64, e as u64) as f64;
                let score = (ORACLE.denoised(old[i], s.sigma) - old[i]) / (s.sigma * s.sigma);
                *v = old[i]
                    + s.gamma * score
                    + s.gamma / 0.04 * grad
                    + libm::sqrt(2.0 * s.gamma * s.temperature) * z;
            }
        }
        assert_close(&x, &r, 1e-5);
    }

    #[test]
    fn shared_measurement_equals_repeated_measurement() {
        let op = PairMean {
            weights: [1.0, 1.0, 1.0, 1.0],
        };
        let plan = vp_plan(
            20,
            StepRule::Code {
                c: 0.5,
                sigma_y: 0.2,
            },
        );
        let chains = Chains {
            batch: 2,
            first_chain: 0,
            seed: 1,
        };
        let y = [0.1f32, 0.2, 0.3, 0.4];
        let yy = [0.1f32, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4];
        let mut scratch = vec![0.0f32; conditional_scratch_len(&op, 16)];
        let mut a = vec![0.0f32; 16];
        let mut b = vec![0.0f32; 16];
        for (x, y) in [(&mut a, &y[..]), (&mut b, &yy[..])] {
            let lik = Likelihood {
                operator: &op,
                y,
                sigma_y: 0.2,
            };
            sample_conditional(&mut oracle(), &plan, &lik, x, chains, &mut scratch).unwrap();
        }
        assert_eq!(a, b);
        let lik = Likelihood {
            operator: &op,
            y: &yy[..6],
            sigma_y: 0.2,
        };
        assert!(matches!(
            sample_conditional(&mut oracle(), &plan, &lik, &mut a, chains, &mut scratch),
            Err(Error::LengthMismatch { .. })
        ));
    }

    struct NanAt(usize);

    impl Denoiser for NanAt {
        fn denoise(
            &mut self,
            x: &[f32],
            _: usize,
            s: &PlanStep,
            out: &mut [f32],
        ) -> Result<(), Error> {
            out.copy_from_slice(x);
            if s.k == self.0 {
                out[3] = f32::NAN;
            }
            Ok(())
        }
    }

    #[test]
    fn non_finite_state_is_reported_with_its_step() {
        let plan = vp_plan(10, StepRule::Paper { c: 0.5 });
        let mut x = vec![0.0f32; 8];
        let mut scratch = vec![0.0f32; 8];
        assert_eq!(
            sample(&mut NanAt(3), &plan, &mut x, 2, 0, 0, &mut scratch),
            Err(Error::NonFiniteState { step: 3 })
        );
    }

    #[test]
    fn bad_buffers_are_typed_errors() {
        let plan = vp_plan(10, StepRule::Paper { c: 0.5 });
        let mut o = oracle();
        let mut x = vec![0.0f32; 8];
        let mut s = vec![0.0f32; 8];
        assert!(matches!(
            sample(&mut o, &plan, &mut x, 0, 0, 0, &mut s),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            sample(&mut o, &plan, &mut x, 3, 0, 0, &mut s),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            sample(&mut o, &plan, &mut x, 2, 0, 0, &mut s[..7]),
            Err(Error::LengthMismatch {
                what: "sampler scratch",
                expected: 8,
                got: 7
            })
        ));
        let empty = Plan { steps: 0, ..plan };
        assert_eq!(
            run(
                &mut o,
                &empty,
                &mut x,
                Chains {
                    batch: 1,
                    first_chain: 0,
                    seed: 0
                },
                &mut s,
                &mut ()
            ),
            Err(Error::ZeroSteps)
        );
        let coef = UpdateCoefficients::new(&plan.step(0).unwrap()).unwrap();
        let key = ChainNoise {
            seed: 0,
            chain: 0,
            counter: 0,
        };
        assert!(update_range(&mut x, &s[..4], None, &coef, key, 0).is_err());
        let op = PairMean { weights: [1.0; 4] };
        let mut g = [0.0f32; 8];
        assert!(likelihood_gradient(&op, &x, &[0.0; 3], &mut g, &mut [0.0; 5]).is_err());
        assert!(likelihood_gradient(&op, &x, &[0.0; 4], &mut g, &mut [0.0; 4]).is_err());
    }

    #[test]
    fn f16_state_follows_the_f32_update() {
        let step = vp_plan(100, StepRule::Paper { c: 0.5 }).step(80).unwrap();
        let coef = UpdateCoefficients::new(&step).unwrap();
        let key = ChainNoise {
            seed: 3,
            chain: 0,
            counter: 80,
        };
        let x32: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) * 0.05).collect();
        let d: Vec<f32> = x32.iter().map(|v| 0.5 * v).collect();
        let mut x16: Vec<f16> = x32.iter().map(|&v| f16::from_f32(v)).collect();
        let start: Vec<f32> = x16.iter().map(|v| v.to_f32()).collect();
        let mut want = start.clone();
        update_range(&mut want, &d, None, &coef, key, 0).unwrap();
        assert!(update_range_f16(&mut x16, &d, None, &coef, key, 0).unwrap());
        for (h, w) in x16.iter().zip(&want) {
            assert_eq!(*h, f16::from_f32(*w));
        }
        // Overflow of the f16 range is reported as non-finite.
        let mut big = [f16::from_f32(60000.0)];
        let boost = UpdateCoefficients {
            drift: 1.0,
            likelihood: 0.0,
            noise: 0.0,
        };
        assert!(!update_range_f16(&mut big, &[1e6], None, &boost, key, 0).unwrap());
    }

    #[test]
    fn observer_sees_every_step_and_final_denoise_uses_the_last_level() {
        let plan = vp_plan(25, StepRule::Paper { c: 0.5 });
        let mut seen = Vec::new();
        let mut x = vec![0.5f32; 4];
        let mut s = vec![0.0f32; 4];
        let chains = Chains {
            batch: 1,
            first_chain: 0,
            seed: 0,
        };
        run(
            &mut oracle(),
            &plan,
            &mut x,
            chains,
            &mut s,
            &mut |st: &PlanStep, _: &[f32]| seen.push(st.k),
        )
        .unwrap();
        assert_eq!(seen, (0..25).collect::<Vec<_>>());
        let mut out = vec![0.0f32; 4];
        final_denoise(&mut oracle(), &plan, &x, 1, &mut out).unwrap();
        let sigma = plan.step(24).unwrap().sigma;
        assert_eq!(out[0], ORACLE.denoised(x[0] as f64, sigma) as f32);
    }

    #[test]
    fn init_is_the_counter_stream_scaled() {
        let mut x = vec![0.0f32; 6];
        let chains = Chains {
            batch: 2,
            first_chain: 7,
            seed: 2,
        };
        init_state(&mut x, chains, 1.0).unwrap();
        assert_eq!(x[4], noise::gaussian(2, 8, noise::COUNTER_INIT, 1));
        init_state(&mut x, chains, 3.0).unwrap();
        assert_eq!(x[4], 3.0 * noise::gaussian(2, 8, noise::COUNTER_INIT, 1));
        assert!(init_state(&mut x, chains, 0.0).is_err());
    }
}
