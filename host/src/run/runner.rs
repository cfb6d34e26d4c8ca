//! Runs N chains through a plan: chains carry global indices 0..N−1 whatever the batch size
//! or thread count (noise is a function of (seed, chain, step, element)), batches are handed
//! to worker threads, results land at their global positions, so `--batch` and `--threads`
//! never change a sample.
//!
//! Each batch: x₀ from the plan's init law (shifted by [`Job::start`] for a warm start), K
//! steps of core's template loop (conditional when a likelihood is given) or core's VE PC
//! sampler, optionally a final denoise. A non-finite state stops everything with an error
//! naming the step and the chain.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Result};
use tweedie_core::classic::pc_sample;
use tweedie_core::metrics::psnr;
use tweedie_core::plan::{PlanStep, StepPlan};
use tweedie_core::sampler::{
    conditional_scratch_len, final_denoise, init_state, run, run_conditional, Chains, Likelihood,
    Observer,
};
use tweedie_core::Error;

use super::aggregate::ChainMoments;
use super::measurement::AnyOperator;
use super::plan::AnyPlan;
use super::progress::Progress;
use crate::image_io::{range_width, to_planes};
use tweedie_nn::denoiser::{Boxed, Model};

/// What to run.
pub struct Job<'a> {
    /// The plan.
    pub plan: &'a AnyPlan,
    /// N, the number of chains.
    pub n: usize,
    /// The global index of the first chain: chains first_chain .. first_chain + N run (a
    /// shard of a larger run draws the noise of its global chains).
    pub first_chain: usize,
    /// Chains per denoiser call.
    pub batch: usize,
    /// The seed.
    pub seed: u64,
    /// Output D(x_K, σ_{K−1}).
    pub final_denoise: bool,
    /// Keep a PNG-mapped copy of every chain every k steps.
    pub snapshot_every: Option<usize>,
    /// A warm start: x₀ = start + s·n with s the plan's x₀ std (one chain's image, shared by
    /// all chains) instead of x₀ = s·n.
    pub start: Option<&'a [f32]>,
    /// Conditional sampling: operator, y and σ_y.
    pub likelihood: Option<(&'a AnyOperator<'a>, &'a [f32], f64)>,
    /// Ground truth for the live PSNR.
    pub truth: Option<&'a [f32]>,
    /// Accumulate per-pixel moments (restore).
    pub moments: bool,
    /// Total threads.
    pub threads: usize,
}

/// Snapshots of every chain after step k (1-based count of steps done).
pub struct Snapshot {
    /// Steps done.
    pub steps_done: usize,
    /// PNG-mapped u8 planes of all N chains, in chain order.
    pub pixels: Vec<u8>,
}

/// What a run produced.
pub struct RunOutput {
    /// The final states, N × chain_len, in chain order.
    pub samples: Vec<f32>,
    /// Snapshots in step order.
    pub snapshots: Vec<Snapshot>,
    /// Per-pixel mean and m2 over the N samples (when asked), pushed in chain order.
    pub moments: Option<(Vec<f64>, Vec<f64>)>,
    /// Wall time of the sampling, seconds.
    pub seconds: f64,
    /// Denoiser evaluations per chain.
    pub evaluations_per_chain: usize,
}

struct BatchOutput {
    x: Vec<f32>,
    snapshots: Vec<(usize, Vec<u8>)>,
}

/// Reports progress, keeps snapshots, stops on abort.
struct Watch<'a> {
    progress: &'a Progress,
    batch: usize,
    every: Option<usize>,
    steps: usize,
    snapshots: Vec<(usize, Vec<u8>)>,
    truth: Option<&'a [f32]>,
    width: f64,
    range: tweedie_nn::weights::meta::DataRange,
    abort: &'a AtomicBool,
}

impl Observer for Watch<'_> {
    fn observe(&mut self, step: &PlanStep, x: &[f32]) -> Result<(), Error> {
        if self.abort.load(Ordering::Relaxed) {
            return Err(Error::Denoiser("stopped: another batch failed"));
        }
        if super::interrupt::requested() {
            return Err(Error::Denoiser("stopped by a signal"));
        }
        self.progress.advance(self.batch as u64);
        let done = step.k + 1;
        if let Some(every) = self.every {
            if done.is_multiple_of(every) && done < self.steps {
                self.snapshots.push((done, to_planes(x, self.range)));
            }
        }
        if let Some(truth) = self.truth {
            if let Ok(p) = psnr(truth, &x[..truth.len()], self.width) {
                self.progress
                    .set_message(format!("PSNR {p:.2} dB (chain 0 of batch)"));
            }
        }
        Ok(())
    }
}

/// Runs the job on `model`.
pub fn run_chains(job: &Job<'_>, model: &Model, progress: &Progress) -> Result<RunOutput> {
    if job.n == 0 || job.batch == 0 {
        bail!("--n and --batch must be at least 1");
    }
    let len = model.chain_len();
    let batches = job.n.div_ceil(job.batch);
    let (workers, inner) = model.split_threads(job.threads, batches);
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let results: Mutex<Vec<Option<BatchOutput>>> = Mutex::new((0..batches).map(|_| None).collect());
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let start = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut denoiser = Boxed(model.make(inner));
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches || abort.load(Ordering::Relaxed) {
                        break;
                    }
                    match run_batch(job, model, &mut denoiser, b, len, progress, &abort) {
                        Ok(out) => {
                            if let Ok(mut r) = results.lock() {
                                r[b] = Some(out);
                            }
                        }
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    super::interrupt::check()?;
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let seconds = start.elapsed().as_secs_f64();
    assemble(job, len, results.into_inner().unwrap_or_default(), seconds)
}

fn assemble(
    job: &Job<'_>,
    len: usize,
    results: Vec<Option<BatchOutput>>,
    seconds: f64,
) -> Result<RunOutput> {
    let mut samples = Vec::with_capacity(job.n * len);
    let mut snapshots: Vec<Snapshot> = Vec::new();
    for out in results {
        let Some(mut out) = out else {
            bail!("internal error: a batch produced no result");
        };
        samples.append(&mut out.x);
        for (i, (done, pixels)) in out.snapshots.into_iter().enumerate() {
            if snapshots.len() <= i {
                snapshots.push(Snapshot {
                    steps_done: done,
                    pixels: Vec::new(),
                });
            }
            snapshots[i].pixels.extend(pixels);
        }
    }
    let moments = if job.moments {
        let mut m = ChainMoments::new(len);
        for chain in samples.chunks_exact(len) {
            m.push(chain)?;
        }
        Some(m.into_parts())
    } else {
        None
    };
    let evaluations_per_chain = job.plan.len()
        * if matches!(job.plan, AnyPlan::VePc { .. }) {
            2
        } else {
            1
        }
        + usize::from(job.final_denoise);
    Ok(RunOutput {
        samples,
        snapshots,
        moments,
        seconds,
        evaluations_per_chain,
    })
}

fn core_error(e: Error, model: &Model, x: &[f32], first: usize, len: usize) -> anyhow::Error {
    match e {
        Error::NonFiniteState { step } => {
            let bad = x
                .chunks_exact(len)
                .position(|c| c.iter().any(|v| !v.is_finite()))
                .unwrap_or(0);
            anyhow::anyhow!(
                "the sampling state became NaN/Inf at step {step} in chain {}; try a smaller --c or another schedule",
                first + bad
            )
        }
        Error::Denoiser(msg) => match model.take_error() {
            Some(net) => anyhow::anyhow!("denoiser failed: {net}"),
            None => anyhow::anyhow!("denoiser failed: {msg}"),
        },
        other => anyhow::anyhow!("sampling failed: {other}"),
    }
}

/// x₀ += start for every chain of the batch (a warm start, [`Job::start`]).
fn add_start(x: &mut [f32], start: &[f32]) -> Result<(), Error> {
    if start.is_empty() || !x.len().is_multiple_of(start.len()) {
        return Err(Error::Shape("warm start length is not one chain's length"));
    }
    for chain in x.chunks_exact_mut(start.len()) {
        for (v, &s) in chain.iter_mut().zip(start) {
            *v += s;
        }
    }
    Ok(())
}

fn run_batch(
    job: &Job<'_>,
    model: &Model,
    denoiser: &mut Boxed<'_>,
    b: usize,
    len: usize,
    progress: &Progress,
    abort: &AtomicBool,
) -> Result<BatchOutput> {
    let count = job.batch.min(job.n - b * job.batch);
    let first = job.first_chain + b * job.batch;
    let chains = Chains {
        batch: count,
        first_chain: first as u64,
        seed: job.seed,
    };
    let mut x = vec![0.0f32; count * len];
    let plan = job.plan;
    let scratch_len = match job.likelihood {
        Some((op, ..)) => conditional_scratch_len(op, x.len()),
        None => x.len(),
    };
    let mut scratch = vec![0.0f32; scratch_len];
    let mut watch = Watch {
        progress,
        batch: count,
        every: job.snapshot_every,
        steps: plan.len(),
        snapshots: Vec::new(),
        truth: job.truth,
        width: range_width(model.data_range),
        range: model.data_range,
        abort,
    };
    let result = init_state(&mut x, chains, plan.init_std().unwrap_or(1.0)).and_then(|()| {
        if let Some(start) = job.start {
            add_start(&mut x, start)?;
        }
        match (plan, job.likelihood) {
            (AnyPlan::VePc { predictor, snr }, None) => pc_sample(
                denoiser,
                predictor,
                *snr,
                &mut x,
                chains,
                &mut scratch,
                &mut watch,
            ),
            (_, None) => run(denoiser, plan, &mut x, chains, &mut scratch, &mut watch),
            (_, Some((operator, y, sigma_y))) => {
                let likelihood = Likelihood {
                    operator,
                    y,
                    sigma_y,
                };
                run_conditional(
                    denoiser,
                    plan,
                    &likelihood,
                    &mut x,
                    chains,
                    &mut scratch,
                    &mut watch,
                )
            }
        }
    });
    result.map_err(|e| core_error(e, model, &x, first, len))?;
    if job.final_denoise {
        let out = &mut scratch[..x.len()];
        final_denoise(denoiser, plan, &x, count, out)
            .map_err(|e| core_error(e, model, &x, first, len))?;
        x.copy_from_slice(out);
        if let Some(bad) = x
            .chunks_exact(len)
            .position(|c| c.iter().any(|v| !v.is_finite()))
        {
            bail!(
                "the final denoise produced NaN/Inf in chain {}",
                first + bad
            );
        }
    }
    Ok(BatchOutput {
        x,
        snapshots: watch.snapshots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the exact denoiser of N(0, s²) the template step is affine in x with the same
    /// noise for both runs, x ← x (1 − γ/(s² + σ²)) + noise, so a warm start shifts x_K by
    /// start · Π_k (1 − γ_k/(s² + σ_k²)) exactly (up to f32 rounding).
    #[test]
    fn a_warm_start_shifts_the_gaussian_chain_by_its_contraction() {
        let (model, plan) = crate::cli::sample::model_and_plan(&[
            "--weights",
            "gaussian:0,0.5",
            "--size",
            "2",
            "--channels",
            "1",
            "--schedule",
            "geometric",
            "--sigma-max",
            "1",
            "--sigma-min",
            "0.1",
            "--steps",
            "6",
            "--c",
            "0.5",
            "--x0",
            "sigma0",
        ]);
        let start = [0.5f32, -1.0, 0.25, 2.0];
        let job = |start| Job {
            plan: &plan,
            n: 3,
            first_chain: 0,
            batch: 2,
            seed: 7,
            final_denoise: false,
            snapshot_every: None,
            start,
            likelihood: None,
            truth: None,
            moments: false,
            threads: 1,
        };
        let quiet = Progress::new(0, true);
        let cold = run_chains(&job(None), &model, &quiet).unwrap().samples;
        let warm = run_chains(&job(Some(&start[..])), &model, &quiet)
            .unwrap()
            .samples;
        let mut gain = 1.0f64;
        for k in 0..plan.len() {
            let s = plan.step(k).unwrap();
            gain *= 1.0 - s.gamma / (0.25 + s.sigma * s.sigma);
        }
        assert!(gain > 0.05 && gain < 0.95, "gain {gain}");
        for (i, (w, c)) in warm.iter().zip(&cold).enumerate() {
            let want = f64::from(start[i % 4]) * gain;
            assert!(
                (f64::from(w - c) - want).abs() < 1e-5,
                "element {i}: {} vs {want}",
                w - c
            );
        }
        let bad = [0.0f32; 3];
        assert!(run_chains(&job(Some(&bad[..])), &model, &quiet).is_err());
    }
}
