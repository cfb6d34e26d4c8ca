//! `host sample`: unconditional sampling. Writes sample_0000.png …, samples.safetensors
//! ([N, C, H, W] final float state), grid.png, snapshots/step_KKKKK.png with
//! --snapshot-every, and run.json (formats.md §5).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::common::threads;
use super::plan_args::PlanArgs;
use crate::cli::device::{self, Device, DeviceArgs};
use crate::cli::model_args::{conv_json, ModelArgs};
use crate::errln;
use crate::image_io::{grid_planes, png_from_planes, to_planes};
use crate::run::manifest::{Manifest, ManifestParts};
use crate::run::memory;
use crate::run::output::{build_info, json_bytes};
use crate::run::output_policy::Outputs;
use crate::run::plan::{AnyPlan, Purpose};
use crate::run::progress::{human_seconds, Progress};
use crate::run::runner::{run_chains, Job, RunOutput};
use crate::run::shard::{parse_shard_arg, Shard, ShardArg};
use crate::run::stream::{write_grid, write_samples_tensor, ImageShape, InMemory};
use tweedie_nn::backend::cuda::Resolved;
use tweedie_nn::denoiser::Model;

const EXAMPLE: &str = "\
Examples:
  host sample --weights W.safetensors --preset vp-uncond-sigmoid --n 16 --batch 4 --out run1
  host sample --weights gaussian:0,0.5 --kind ve --size 8 --schedule geometric --steps 50 \\
              --c 0.2 --t0 0.5 --n 100 --seed 3 --out g1";

/// Flags shared by the sampling commands.
#[derive(Debug, Clone, Args, Serialize)]
pub struct RunArgs {
    /// Number of chains (samples).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Chains per denoiser call (default min(N, 32)); never changes the samples.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores); never changes the samples.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Output folder (created if its parent exists).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Keep a grid of all chains every k steps (snapshots/step_KKKKK.png).
    #[arg(long, value_name = "k", value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: Option<u64>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    /// Run only shard I of N (0-based) and write a shard folder for `host merge`: sample
    /// splits its chains, restore its images (one image: its chains) into contiguous blocks
    /// ⌊I·T/N⌋..⌊(I+1)·T/N⌋. `auto/N` takes I from SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX. Results are those of the single run, bit for bit.
    #[arg(long, value_name = "I/N|auto/N", value_parser = parse_shard_arg)]
    pub shard: Option<ShardArg>,
}

/// Arguments of `host sample`.
#[derive(Debug, Args, Serialize)]
#[command(after_help = EXAMPLE)]
pub struct SampleArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub plan: PlanArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub device: DeviceArgs,
}

/// The device `--device` asks for, for this job: the GPU when it is usable and the job is one
/// the device path covers, else the CPU (`auto` says why in one line; `cuda` is an error).
fn choose_device(
    args: &DeviceArgs,
    job: &Job<'_>,
    model: &Model,
    progress: &Progress,
) -> Result<Resolved> {
    if args.device == Device::Cpu {
        return Ok(Resolved::Cpu);
    }
    if let Some(reason) = crate::run::device::unsupported(job, model) {
        if args.device == Device::Cuda {
            anyhow::bail!("--device cuda: {reason} (use --device cpu or auto)");
        }
        progress.println(&format!(
            "note: --device auto: {reason}; running on the CPU"
        ));
        return Ok(Resolved::Cpu);
    }
    device::open(args.device, args.ptx.as_deref())
}

/// The backend's name in a shard manifest: shards on different backends differ in bits.
fn backend_name(device: &Resolved) -> String {
    match device {
        Resolved::Cpu => "cpu".into(),
        #[cfg(feature = "cuda")]
        Resolved::Cuda(gpu) => format!("cuda ({})", gpu.info.name),
    }
}

/// Runs the job on `device` (`args` has the GPU's options).
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn run_on_device(
    device: Resolved,
    args: &DeviceArgs,
    job: &Job<'_>,
    model: &Model,
    progress: &Progress,
) -> Result<RunOutput> {
    match device {
        Resolved::Cpu => run_chains(job, model, progress),
        #[cfg(feature = "cuda")]
        Resolved::Cuda(gpu) => {
            use tweedie_nn::backend::ops::DeviceOps;
            let tc = gpu.use_tensor_cores(args.tensor_cores);
            if args.tensor_cores && !tc {
                progress
                    .println("note: --tensor-cores: this GPU has none (compute < 8.0); not used");
            }
            progress.println(&format!(
                "device: {} (CUDA{})",
                gpu.info.name,
                if tc { ", tensor cores" } else { "" }
            ));
            crate::run::device::run_chains_on(gpu.as_ref(), job, model, progress)
        }
    }
}

/// The default `--batch` cap. The README's main job (64 chains, K = 100, 2 threads, AMD EPYC,
/// 2026-12-07, `scripts/batch-sweep.sh`) ran 19.2 s at batch 1 and 12.0–12.5 s at every batch
/// from 2 to 64, fastest at 32 and 64 (12.0 s); under load the larger batches lose less (fewer
/// layer synchronisations per image). Peak RSS 28 MiB at 1, 50 MiB at 32. Larger networks
/// run one sample per pass anyway, so a batch there only holds more chains' state. Also
/// `evaluate restoration` and `evaluate posterior`'s.
pub(crate) const DEFAULT_BATCH: usize = 32;

impl RunArgs {
    /// The batch size.
    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(self.n.min(DEFAULT_BATCH)).max(1)
    }

    /// Refuses a run of `chains` chains of `steps` steps whose estimated memory is above the
    /// limit (run::memory).
    pub fn check_memory(&self, model: &Model, chains: usize, steps: usize) -> Result<()> {
        let snapshots = self.snapshot_every.map_or(0, |k| steps as u64 / k);
        let threads = threads(self.threads.map(|j| j as usize)) as u64;
        let bytes = memory::sampling_bytes(
            model,
            chains as u64,
            self.batch().min(chains.max(1)) as u64,
            threads,
            snapshots,
        );
        memory::check(&format!("sampling {chains} chains"), bytes)
    }

    /// Checks N and the batch.
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 {
            anyhow::bail!("--n 0: need at least one chain");
        }
        if self.batch == Some(0) {
            anyhow::bail!("--batch 0: need at least one chain per batch");
        }
        Ok(())
    }

    /// The shard this process runs, if any (`auto/N` read from the environment now).
    pub fn shard(&self) -> Result<Option<Shard>> {
        let Some(arg) = self.shard else {
            return Ok(None);
        };
        if self.snapshot_every.is_some() {
            anyhow::bail!(
                "--snapshot-every with --shard: snapshots are grids of every chain, which no \
                 single shard has; run without --shard to keep snapshots"
            );
        }
        arg.resolve().map(Some)
    }
}

/// The image shape of `model`'s chains.
pub fn image_shape(model: &Model) -> ImageShape {
    ImageShape {
        channels: model.channels,
        size: model.size,
        range: model.data_range,
    }
}

/// sample_NNNN.png for chains `first`, `first + 1`, … of `samples`.
pub fn write_sample_pngs(
    out: &mut Outputs,
    prefix: &std::path::Path,
    shape: ImageShape,
    samples: &[f32],
    first: usize,
) -> Result<()> {
    let (c, s) = (shape.channels, shape.size);
    for (i, chain) in samples.chunks_exact(shape.len()).enumerate() {
        let png = png_from_planes(&to_planes(chain, shape.range), c, s, s)?;
        out.write(prefix.join(format!("sample_{:04}.png", first + i)), &png)?;
    }
    Ok(())
}

/// The chains' file of a shard folder: its samples, as samples.safetensors holds them.
pub const SHARD_CHAINS: &str = "chains.safetensors";

/// A shard's chains `first`.. : sample_NNNN.png under their global indices and
/// chains.safetensors.
pub fn write_chain_shard(
    out: &mut Outputs,
    prefix: &std::path::Path,
    shape: ImageShape,
    samples: &[f32],
    first: usize,
) -> Result<()> {
    write_sample_pngs(out, prefix, shape, samples, first)?;
    let chains = InMemory {
        data: samples,
        len: shape.len(),
    };
    write_samples_tensor(
        out,
        &prefix.join(SHARD_CHAINS),
        shape,
        samples.len() / shape.len(),
        &chains,
        &[("tweedie.first_chain", first.to_string())],
    )
}

/// What an empty shard "ran".
pub fn no_chains(plan: &AnyPlan, final_denoise: bool) -> RunOutput {
    let per_step = if matches!(plan, AnyPlan::VePc { .. }) {
        2
    } else {
        1
    };
    RunOutput {
        samples: Vec::new(),
        snapshots: Vec::new(),
        moments: None,
        seconds: 0.0,
        evaluations_per_chain: plan_len(plan) * per_step + usize::from(final_denoise),
    }
}

/// Writes the per-sample PNGs, samples.safetensors, grid.png and snapshots.
/// `prefix` is a sub-folder of the outputs ("" for the root).
pub fn write_samples(
    out: &mut Outputs,
    prefix: &std::path::Path,
    model: &Model,
    result: &RunOutput,
    n: usize,
) -> Result<()> {
    let shape = image_shape(model);
    let (c, s) = (shape.channels, shape.size);
    write_sample_pngs(out, prefix, shape, &result.samples, 0)?;
    let chains = InMemory {
        data: &result.samples,
        len: shape.len(),
    };
    let tensor = prefix.join("samples.safetensors");
    write_samples_tensor(out, &tensor, shape, n, &chains, &[])?;
    write_grid(out, &prefix.join("grid.png"), shape, n, &chains)?;
    for snap in &result.snapshots {
        let (planes, gh, gw) = grid_planes(&snap.pixels, n, c, s, s);
        out.write(
            prefix.join(format!("snapshots/step_{:05}.png", snap.steps_done)),
            &png_from_planes(&planes, c, gh, gw)?,
        )?;
    }
    Ok(())
}

/// The run.json common part.
pub fn run_json(
    command: &str,
    args: &impl Serialize,
    model: &Model,
    plan_args: &PlanArgs,
    plan: &AnyPlan,
    result: &RunOutput,
    total_seconds: f64,
) -> serde_json::Value {
    let evals =
        result.evaluations_per_chain as f64 * (result.samples.len() / model.chain_len()) as f64;
    json!({
        "command": command,
        "arguments": args,
        "model": model.description,
        "conv": conv_json(model).unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
        "plan": plan_args.describe(plan),
        "build": build_info(),
        "timings": {
            "total_s": total_seconds,
            "sampling_s": result.seconds,
            "denoiser_evaluations": evals,
            "seconds_per_chain_step": result.seconds / evals.max(1.0),
        },
    })
}

/// Runs `host sample`.
pub fn run(args: &SampleArgs) -> Result<ExitCode> {
    let start = std::time::Instant::now();
    args.run.validate()?;
    let shard = args.run.shard()?;
    let weights: Vec<&Path> = args.model.weights_file().into_iter().collect();
    let mut out = Outputs::in_folder(&args.run.out, &weights)?;
    let model = args.model.load()?;
    let plan = args.plan.build(&model, Purpose::Unconditional)?;
    let n = args.run.n;
    let block = shard.map_or(0..n, |s| s.block(n));
    args.run
        .check_memory(&model, block.len(), plan_len(&plan))?;
    let job = Job {
        plan: &plan,
        n: block.len(),
        first_chain: block.start,
        batch: args.run.batch(),
        seed: args.run.seed,
        final_denoise: args.plan.final_denoise,
        snapshot_every: args.run.snapshot_every.map(|k| k as usize),
        start: None,
        likelihood: None,
        truth: None,
        moments: false,
        threads: threads(args.run.threads.map(|j| j as usize)),
    };
    let progress = Progress::new((job.n * plan_len(&plan)) as u64, args.run.quiet);
    progress.println(&format!(
        "sampling {} chains of {}x{}x{} with {} steps{}",
        job.n,
        model.channels,
        model.size,
        model.size,
        plan_len(&plan),
        shard.map_or(String::new(), |s| format!(
            " ({}: chains {}..{} of {n})",
            s.label(),
            block.start,
            block.end
        ))
    ));
    // An empty shard resolves the device as its siblings do: the backend is in the manifest.
    let device = choose_device(&args.device, &job, &model, &progress)?;
    let backend = backend_name(&device);
    let result = if block.is_empty() {
        Ok(no_chains(&plan, args.plan.final_denoise))
    } else {
        run_on_device(device, &args.device, &job, &model, &progress)
    };
    progress.finish();
    let result = result?;
    if let Some(shard) = shard {
        let shape = image_shape(&model);
        let root = std::path::Path::new("");
        write_chain_shard(&mut out, root, shape, &result.samples, block.start)?;
        let info = run_json(
            "sample",
            args,
            &model,
            &args.plan,
            &plan,
            &result,
            start.elapsed().as_secs_f64(),
        );
        let mut manifest = Manifest::new(
            ManifestParts {
                command: "sample",
                shard,
                units: ("chains", n),
                weights: args.model.weights.as_deref(),
                inputs: Vec::new(),
                backend: &backend,
                run: info,
                image: shape,
                names: Vec::new(),
            },
            args,
        )?;
        manifest.seal(out)?;
        if !args.run.quiet {
            errln!(
                "wrote {} ({}) to {}",
                shard.label(),
                manifest.describe_block(),
                args.run.out.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    write_samples(&mut out, std::path::Path::new(""), &model, &result, n)?;
    let mut info = run_json(
        "sample",
        args,
        &model,
        &args.plan,
        &plan,
        &result,
        start.elapsed().as_secs_f64(),
    );
    if backend != "cpu" {
        info["conv"] = json!({"policy": "direct", "forms": null, "backend": backend});
    }
    out.write("run.json", &json_bytes(&info)?)?;
    out.commit()?;
    if !args.run.quiet {
        errln!(
            "wrote {n} samples to {} in {}",
            args.run.out.display(),
            human_seconds(start.elapsed().as_secs_f64())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Steps the observer sees per chain.
pub fn plan_len(plan: &AnyPlan) -> usize {
    use tweedie_core::plan::StepPlan;
    plan.len()
}

/// `host sample ARGS…`'s model and unconditional plan, for tests that drive the runner.
#[cfg(test)]
pub(crate) fn model_and_plan(args: &[&str]) -> (tweedie_nn::denoiser::Model, AnyPlan) {
    use clap::Parser;
    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        sample: SampleArgs,
    }
    let argv = ["sample"].iter().chain(args).chain(&["--out", "unused"]);
    let cmd = Cmd::try_parse_from(argv).unwrap();
    let model = cmd.sample.model.load().unwrap();
    let plan = cmd
        .sample
        .plan
        .build(&model, Purpose::Unconditional)
        .unwrap();
    (model, plan)
}
