//! Unconditional template sampling with every buffer on a device ([`DeviceOps`]): x₀ drawn
//! there with core's counter-based noise, then per step the network input √ᾱ·x, the ADM
//! forward, D from the network output and the fused update (noise drawn in the kernel). Only
//! the step's scalars go to the device and only the final state comes back, plus a one-word
//! non-finite flag every [`CHECK_EVERY`] steps.
//!
//! Every element follows the CPU path's formulas in the CPU path's order (core's
//! `update_element`, `output_to_denoised`, the same noise keys: counter COUNTER_INIT for x₀
//! and k for step k), so on the reference ops a run gives the CPU runner's bits, and on a
//! GPU it differs only by the kernels' rounding.

use anyhow::{anyhow, bail, Result};
use tweedie_core::plan::StepPlan;
use tweedie_core::sampler::UpdateCoefficients;
use tweedie_core::tweedie::Parameterization;

use super::plan::AnyPlan;
use super::progress::Progress;
use super::runner::{Job, RunOutput};
use tweedie_nn::backend::ops::{Chains, DeviceOps, NetReadout, UpdateStep};
use tweedie_nn::denoiser::network::NoiseInputKind;
use tweedie_nn::denoiser::{Model, Source};
use tweedie_nn::model::adm::device::DeviceAdm;
use tweedie_nn::model::adm::AdmArch;
use tweedie_nn::model::layers::ConvPolicy;
use tweedie_nn::weights::Weights;

/// Steps between reads of the non-finite flag (each read waits for the device).
pub const CHECK_EVERY: usize = 10;

/// An ADM network on a device with the sampling state beside it.
pub struct DeviceSampler<'o, O: DeviceOps> {
    ops: &'o O,
    net: DeviceAdm<'o, O>,
    param: Parameterization,
    noise_input: NoiseInputKind,
    x: O::Buf,
    net_in: O::Buf,
    net_out: O::Buf,
    denoised: O::Buf,
}

impl<'o, O: DeviceOps> DeviceSampler<'o, O> {
    /// Uploads the network and allocates the state for up to `max_batch` chains.
    pub fn new(
        ops: &'o O,
        arch: &AdmArch,
        weights: &Weights,
        param: Parameterization,
        noise_input: NoiseInputKind,
        max_batch: usize,
    ) -> Result<Self> {
        let c = &arch.config;
        let size = c.image_size;
        let net = DeviceAdm::new(ops, arch, weights, size, size, max_batch)?;
        let (len, out) = (c.in_channels * size * size, c.out_channels * size * size);
        Ok(DeviceSampler {
            ops,
            net,
            param,
            noise_input,
            x: ops.alloc(max_batch * len)?,
            net_in: ops.alloc(max_batch * len)?,
            net_out: ops.alloc(max_batch * out)?,
            denoised: ops.alloc(max_batch * len)?,
        })
    }

    /// Floats of one chain.
    pub fn chain_len(&self) -> usize {
        let c = &self.net.arch().config;
        c.in_channels * c.image_size * c.image_size
    }

    /// Samples chains first_chain .. first_chain + batch: x₀, then the plan's K steps;
    /// `out` receives the final states. `after_step(k)` runs after queueing step k.
    pub fn sample(
        &mut self,
        plan: &impl StepPlan,
        batch: usize,
        first_chain: u64,
        seed: u64,
        out: &mut [f32],
        after_step: &mut dyn FnMut(usize),
    ) -> Result<()> {
        let len = self.chain_len();
        let n = batch * len;
        if out.len() != n {
            bail!(
                "device sampling: output holds {} floats, expected {batch} chains of {len}",
                out.len()
            );
        }
        if plan.is_empty() {
            bail!("device sampling: the plan has no steps");
        }
        let std = plan.init_std().unwrap_or(1.0);
        if !(std.is_finite() && std > 0.0) {
            bail!("device sampling: initial std {std} is not a positive number");
        }
        let chains = Chains { n, chain_len: len };
        self.ops
            .init_state(&mut self.x, chains, std as f32, seed, first_chain)?;
        for k in 0..plan.len() {
            self.step(plan, k, batch, first_chain, seed)?;
            after_step(k);
        }
        self.ops.read(&self.x, out)
    }

    /// Step k: D(x) on the device, then the fused update with noise counter k.
    fn step(
        &mut self,
        plan: &impl StepPlan,
        k: usize,
        batch: usize,
        first_chain: u64,
        seed: u64,
    ) -> Result<()> {
        let core = |e: tweedie_core::Error| anyhow!("step {k}: {e}");
        let step = plan.step(k).map_err(core)?;
        self.denoise(&step, batch)?;
        let coef = UpdateCoefficients::new(&step).map_err(core)?;
        let update = UpdateStep {
            coef,
            seed,
            first_chain,
            counter: k as u64,
        };
        let len = self.chain_len();
        let check = (k + 1).is_multiple_of(CHECK_EVERY) || k + 1 == plan.len();
        let chains = Chains {
            n: batch * len,
            chain_len: len,
        };
        let nonfinite =
            self.ops
                .template_update(&mut self.x, &self.denoised, None, chains, &update, check)?;
        if nonfinite {
            bail!("the sampling state became NaN/Inf by step {k}; try a smaller --c or another schedule");
        }
        Ok(())
    }

    /// `denoised` = D(x, σ_net) of the step, as `denoiser::network::AdmDenoiser` computes it.
    fn denoise(&mut self, step: &tweedie_core::plan::PlanStep, batch: usize) -> Result<()> {
        let core = |e: tweedie_core::Error| anyhow!("step {}: {e}", step.k);
        let c = &self.net.arch().config;
        let len = self.chain_len();
        let (n, stride) = (batch * len, c.out_channels * c.image_size * c.image_size);
        let sigma = step.sigma_net;
        let scale = self.noise_input.input_scale(&self.param, sigma) as f32;
        self.ops.scale(&mut self.net_in, &self.x, n, scale)?;
        let t = vec![self.noise_input.value(step).map_err(core)?; batch];
        self.net
            .forward(&self.net_in, &t, &mut self.net_out, batch)?;
        let coef = self.param.output_coefficient(sigma).map_err(core)?;
        let readout = NetReadout {
            stride,
            output: self.param.output,
            coef: coef.unwrap_or(0.0),
        };
        let chains = Chains { n, chain_len: len };
        self.ops
            .denoised_from_output(&mut self.denoised, &self.x, &self.net_out, chains, readout)
    }
}

/// Why `job` cannot run on a device yet (`None`: it can): the device path covers
/// unconditional sampling of ADM networks with template-shaped plans (the paper's template,
/// DDPM, NCSN), without snapshots or a final denoise.
pub fn unsupported(job: &Job<'_>, model: &Model) -> Option<&'static str> {
    if !matches!(model.source, Source::Adm { .. }) {
        return Some("only ADM networks run on the device");
    }
    if model.conv == ConvPolicy::Winograd {
        return Some("--conv winograd runs on the CPU only (the device convolutions are direct)");
    }
    if matches!(job.plan, AnyPlan::VePc { .. }) {
        return Some("the VE predictor-corrector sampler does not run on the device");
    }
    if job.likelihood.is_some() || job.start.is_some() {
        return Some("conditional sampling and warm starts do not run on the device yet");
    }
    if job.snapshot_every.is_some() || job.final_denoise || job.moments {
        return Some(
            "--snapshot-every, --final-denoise and moments are not available on the device",
        );
    }
    None
}

/// Runs `job` on a device: batches one after another through one [`DeviceSampler`], chains
/// carrying their global indices as on the CPU. Errors when [`unsupported`] says so.
pub fn run_chains_on<O: DeviceOps>(
    ops: &O,
    job: &Job<'_>,
    model: &Model,
    progress: &Progress,
) -> Result<RunOutput> {
    if let Some(reason) = unsupported(job, model) {
        bail!("{reason}");
    }
    let Source::Adm {
        arch,
        weights,
        param,
        noise_input,
    } = &model.source
    else {
        bail!("only ADM networks run on the device");
    };
    if job.n == 0 || job.batch == 0 {
        bail!("--n and --batch must be at least 1");
    }
    let batch = job.batch.min(job.n);
    let start = std::time::Instant::now();
    let mut sampler = DeviceSampler::new(ops, arch, weights, *param, *noise_input, batch)?;
    let len = sampler.chain_len();
    let mut samples = vec![0.0; job.n * len];
    for (b, out) in samples.chunks_mut(batch * len).enumerate() {
        let count = out.len() / len;
        let first = (job.first_chain + b * batch) as u64;
        sampler
            .sample(job.plan, count, first, job.seed, out, &mut |_| {
                progress.advance(count as u64)
            })
            .map_err(|e| anyhow!("chains {first}..{}: {e:#}", first + count as u64))?;
        if let Some(bad) = out
            .chunks_exact(len)
            .position(|c| c.iter().any(|v| !v.is_finite()))
        {
            bail!(
                "the sampling state became NaN/Inf in chain {}",
                first + bad as u64
            );
        }
    }
    Ok(RunOutput {
        samples,
        snapshots: Vec::new(),
        moments: None,
        seconds: start.elapsed().as_secs_f64(),
        evaluations_per_chain: job.plan.len(),
    })
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::run::plan::FirstSteps;
    use tweedie_core::sampler::{init_state, run, Chains};
    use tweedie_core::tweedie::{NetKind, NetOutput};
    use tweedie_core::Preset;
    use tweedie_nn::backend::reference::ReferenceOps;
    use tweedie_nn::denoiser::network::AdmDenoiser;
    use tweedie_nn::model::config::ModelConfig;
    use tweedie_nn::tensors::SafetensorsFile;
    use tweedie_nn::testdata::golden;
    use tweedie_nn::weights::Precision;

    /// On the reference ops the device loop gives the CPU sampler's bits (adm_small, a few
    /// steps of the pretrained VP plan, chains 5 and 6).
    #[test]
    fn matches_the_cpu_sampler_bit_for_bit() {
        let dir = golden("adm_small");
        let config = ModelConfig::load(dir.join("config.json").to_str().unwrap()).unwrap();
        let arch = AdmArch::new(config.adm().unwrap()).unwrap();
        let file = SafetensorsFile::open(&dir.join("weights.safetensors")).unwrap();
        let weights = Weights::load(&file, &arch.state_dict(), Precision::F32).unwrap();
        let param = Parameterization::new(NetKind::Vp, NetOutput::Eps);
        let plan = FirstSteps(Preset::VpUncondPretrained.plan(), 4);
        let (batch, len, seed) = (2, 3 * 32 * 32, 9);

        // The device convolutions are direct: so is the CPU sampler they must equal.
        let split = (1, ConvPolicy::Direct);
        let mut den = AdmDenoiser::new(&arch, &weights, param, NoiseInputKind::Time, split);
        let chains = Chains {
            batch,
            first_chain: 5,
            seed,
        };
        let mut want = vec![0.0; batch * len];
        init_state(&mut want, chains, plan.init_std().unwrap()).unwrap();
        let mut scratch = vec![0.0; want.len()];
        run(&mut den, &plan, &mut want, chains, &mut scratch, &mut ()).unwrap();

        let ops = ReferenceOps;
        let mut dev =
            DeviceSampler::new(&ops, &arch, &weights, param, NoiseInputKind::Time, 3).unwrap();
        let mut got = vec![0.0; batch * len];
        let mut steps = Vec::new();
        dev.sample(&plan, batch, 5, seed, &mut got, &mut |k| steps.push(k))
            .unwrap();
        assert_eq!(steps, [0, 1, 2, 3]);
        assert_eq!(got, want);
        assert!(dev
            .sample(&plan, batch, 5, seed, &mut got[1..], &mut |_| {})
            .is_err());
    }

    /// The sampling command's job on the reference ops gives the CPU runner's bits, over
    /// batches of 2 and 1 (global chain indices), and the progress counts every chain step.
    #[test]
    fn a_sample_job_on_the_reference_ops_equals_the_cpu_run() {
        let (model, plan) = crate::cli::sample::model_and_plan(&[
            "--preset",
            "vp-uncond-sigmoid",
            "--steps",
            "3",
            "--conv",
            "direct",
        ]);
        let job = Job {
            plan: &plan,
            n: 3,
            first_chain: 0,
            batch: 2,
            seed: 4,
            final_denoise: false,
            snapshot_every: None,
            start: None,
            likelihood: None,
            truth: None,
            moments: false,
            threads: 1,
        };
        assert_eq!(unsupported(&job, &model), None);
        let (winograd, _) = crate::cli::sample::model_and_plan(&["--conv", "winograd"]);
        assert!(unsupported(&job, &winograd).is_some());
        let quiet = Progress::new(9, true);
        let cpu = crate::run::runner::run_chains(&job, &model, &quiet).unwrap();
        let dev = run_chains_on(&ReferenceOps, &job, &model, &quiet).unwrap();
        assert_eq!(dev.samples, cpu.samples);
        assert_eq!(dev.evaluations_per_chain, 3);
        let with_snapshots = Job {
            snapshot_every: Some(1),
            ..job
        };
        assert!(unsupported(&with_snapshots, &model).is_some());
        assert!(run_chains_on(&ReferenceOps, &with_snapshots, &model, &quiet).is_err());
    }
}
