//! `host merge --out DIR SHARD_DIR...`: joins the shard folders of one `--shard I/N` run into
//! exactly what the single run writes. The shards must be the N shards of one run (same
//! result-changing arguments, weights, inputs, bit class and N; none missing, duplicated or
//! foreign); aggregates are recomputed chain by chain in global order by the code the single
//! run uses, so every file but run.json is byte-identical to the single run's. run.json is the
//! first shard's with `timings` replaced and a `shards` list added. Files are streamed (memory:
//! one chain, one row of grid images, the aggregates); the shard folders are only read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use tweedie_nn::input::MAX_JSON_BYTES;

use super::restore::{folder_names, write_estimates, ImageFacts, SHARD_IMAGE, SHARD_TRUTH};
use super::sample::SHARD_CHAINS;
use crate::errln;
use crate::run::manifest::{check_set, Manifest};
use crate::run::output::json_bytes;
use crate::run::output_policy::Outputs;
use crate::run::progress::human_seconds;
use crate::run::stream::{write_grid, write_samples_tensor, ChainFiles, ChainsFile};
use tweedie_nn::tensors::SafetensorsFile;

const EXAMPLE: &str = "\
Examples:
  host sample --n 64 --shard auto/4 --out parts/$SLURM_ARRAY_TASK_ID   # in each array task
  host merge --out samples parts/0 parts/1 parts/2 parts/3";

/// Arguments of `host merge`.
#[derive(Debug, Args, Serialize)]
#[command(after_help = EXAMPLE)]
pub struct MergeArgs {
    /// Output folder (created if its parent exists); the single run's files land here.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The shard folders of one run, in any order.
    #[arg(required = true, value_name = "SHARD_DIR")]
    pub shards: Vec<PathBuf>,
    /// No summary line.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `host merge`.
pub fn run(args: &MergeArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let out_dir = std::fs::canonicalize(&args.out).ok();
    let mut shards = Vec::with_capacity(args.shards.len());
    for dir in &args.shards {
        if out_dir.is_some() && std::fs::canonicalize(dir).ok() == out_dir {
            bail!(
                "--out {} is shard folder {}: merge never writes into a shard",
                args.out.display(),
                dir.display()
            );
        }
        shards.push((dir.clone(), Manifest::read(dir)?));
    }
    let shards = check_set(shards)?;
    for (dir, m) in &shards {
        m.verify_files(dir)?;
    }
    let inputs: Vec<&Path> = args.shards.iter().map(PathBuf::as_path).collect();
    let mut out = Outputs::in_folder(&args.out, &inputs)?;
    let first = &shards[0].1;
    match (first.command.as_str(), first.units.as_str()) {
        ("sample", "chains") => merge_chains(&mut out, &shards, false, start)?,
        ("restore", "chains") => merge_chains(&mut out, &shards, true, start)?,
        ("restore", "images") => merge_images(&mut out, &shards, start)?,
        ("evaluate restoration", "digits") => {
            super::evaluate::merge_restoration(&mut out, &shards, start)?
        }
        ("evaluate posterior", "digits") => super::posterior::merge(&mut out, &shards, start)?,
        (command, units) => bail!(
            "{}: cannot merge `{command}` split by {units}",
            shards[0].0.display()
        ),
    }
    out.commit()?;
    if !args.quiet {
        errln!(
            "merged {} shards ({} {}) into {} in {}",
            shards.len(),
            first.total,
            first.units,
            args.out.display(),
            human_seconds(start.elapsed().as_secs_f64())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The `shards` list of the merged run.json: each folder, its block and its timings.
pub fn shards_json(shards: &[(PathBuf, Manifest)]) -> serde_json::Value {
    shards
        .iter()
        .map(|(dir, m)| {
            json!({"folder": dir.display().to_string(), "index": m.shard.index,
                "count": m.shard.count, "range": m.range, "timings": m.run["timings"]})
        })
        .collect()
}

/// A shard's run.json content with the merge's timings and the `shards` list.
pub fn merged_run_json(
    run: &serde_json::Value,
    shards: &[(PathBuf, Manifest)],
    start: Instant,
) -> serde_json::Value {
    let mut info = run.clone();
    info["timings"] = json!({"merge_s": start.elapsed().as_secs_f64()});
    info["shards"] = shards_json(shards);
    info
}

/// `sample`, or `restore` of one image: the chains are split.
fn merge_chains(
    out: &mut Outputs,
    shards: &[(PathBuf, Manifest)],
    restore: bool,
    start: Instant,
) -> Result<()> {
    let (first_dir, first) = &shards[0];
    let shape = first.image_shape()?;
    let n = first.total;
    let mut files = Vec::with_capacity(shards.len());
    for (dir, m) in shards {
        let f = ChainsFile::open(&dir.join(SHARD_CHAINS), shape)?;
        if f.count != m.block().len() {
            bail!(
                "{}: {SHARD_CHAINS} holds {} chains, its block {}..{} has {}",
                dir.display(),
                f.count,
                m.range[0],
                m.range[1],
                m.block().len()
            );
        }
        files.push(f);
        for i in m.block() {
            let name = format!("sample_{i:04}.png");
            out.copy_from(&name, &dir.join(&name))?;
        }
    }
    let chains = ChainFiles(files);
    let root = Path::new("");
    write_samples_tensor(
        out,
        &root.join("samples.safetensors"),
        shape,
        n,
        &chains,
        &[],
    )?;
    write_grid(out, &root.join("grid.png"), shape, n, &chains)?;
    if restore {
        for name in ["measurement.png", "measurement.safetensors"] {
            out.copy_from(name, &first_dir.join(name))?;
        }
        let facts_path = first_dir.join(SHARD_IMAGE);
        let facts: serde_json::Value = serde_json::from_slice(&tweedie_nn::input::read_capped(
            &facts_path,
            "JSON file",
            MAX_JSON_BYTES,
        )?)
        .with_context(|| format!("{}: not JSON", facts_path.display()))?;
        let truth_path = first_dir.join(SHARD_TRUTH);
        let truth = if truth_path.exists() {
            Some(
                SafetensorsFile::open(&truth_path)?
                    .tensor_f32("truth")?
                    .data,
            )
        } else {
            None
        };
        if truth.as_ref().is_some_and(|t| t.len() != shape.len()) {
            bail!("{}: not one C×H×W image", truth_path.display());
        }
        let (Some(task), Some(sigma_y)) = (facts["task"].as_str(), facts["sigma_y"].as_f64())
        else {
            bail!("{}: task or sigma_y missing", facts_path.display());
        };
        let image = ImageFacts {
            task,
            sigma_y,
            truth: truth.as_deref(),
            measurement_scores: Some(facts["measurement_scores"].clone()).filter(|v| !v.is_null()),
            source_sha256: facts["source_sha256"].as_str().map(str::to_string),
        };
        write_estimates(out, root, shape, &image, n, &chains)?;
    }
    let info = merged_run_json(&first.run, shards, start);
    out.write("run.json", &json_bytes(&info)?)
}

/// `restore` of a folder: the images are split; each image's folder is copied as its shard
/// wrote it (the single run's files), with the `shards` list added to its run.json.
/// The image folders are named from the run's recorded inputs (as the single run names them),
/// never from a manifest's own list, and only files its manifest hashed are copied, so an
/// edited shard.json cannot write outside `--out` or drop an image.
fn merge_images(out: &mut Outputs, shards: &[(PathBuf, Manifest)], start: Instant) -> Result<()> {
    let (first_dir, first) = &shards[0];
    let inputs: Vec<PathBuf> = first
        .inputs
        .iter()
        .map(|i| PathBuf::from(&i.path))
        .collect();
    let names = folder_names(&inputs).with_context(|| format!("{}", first_dir.display()))?;
    if names.len() != first.total {
        bail!(
            "{}: {} input images recorded for a run of {}",
            first_dir.display(),
            names.len(),
            first.total
        );
    }
    for (dir, m) in shards {
        if m.names != names[m.block()] {
            bail!(
                "{}: its image names are not those of its inputs {}..{} (edited shard.json?)",
                dir.display(),
                m.range[0],
                m.range[1]
            );
        }
        for name in &m.names {
            let folder = dir.join(name);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
                .with_context(|| format!("cannot read {}", folder.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("cannot read {}", folder.display()))?;
            files.sort();
            for file in files {
                let Some(base) = file.file_name().and_then(|f| f.to_str()) else {
                    bail!("{}: a file name that is not UTF-8", folder.display());
                };
                if base.starts_with('.') {
                    continue; // a temporary file of an interrupted attempt
                }
                if !file.is_file() {
                    bail!("{}: not a plain file", file.display());
                }
                let rel = Path::new(name).join(base);
                if !m.files.contains_key(rel.to_string_lossy().as_ref()) {
                    bail!(
                        "{}: not a file {} wrote (its shard.json does not list it)",
                        file.display(),
                        m.shard.label()
                    );
                }
                if base == "run.json" {
                    let run: serde_json::Value = serde_json::from_slice(
                        &tweedie_nn::input::read_capped(&file, "JSON file", MAX_JSON_BYTES)?,
                    )
                    .with_context(|| format!("{}: not JSON", file.display()))?;
                    out.write(rel, &json_bytes(&merged_run_json(&run, shards, start))?)?;
                } else {
                    out.copy_from(rel, &file)?;
                }
            }
        }
    }
    Ok(())
}
