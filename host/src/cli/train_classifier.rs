//! `host train-classifier`: trains the MNIST digit classifier of `host evaluate fid` on the
//! training split, then computes the reference statistics of both splits in its feature space
//! and writes everything as one judge file (`models/mnist-classifier.safetensors`).
//! Deterministic: the same flags give the same bits for any `--threads`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::common::threads;
use crate::eval::judge::{Judge, Reference};
use crate::run::output::build_info;
use crate::run::output_policy::Outputs;
use crate::run::progress::human_seconds;
use crate::{errln, outln};
use tweedie_nn::data::{Dataset, MnistSplit};
use tweedie_nn::model::classifier::{padded_images, parameter_count};
use tweedie_nn::sha256;
use tweedie_nn::train::classify_run::{accuracy, train_classifier, ClassifyConfig, Labelled};

const EXAMPLE: &str = "\
Example (the bundled judge, models/README.md):
  host train-classifier --data data/mnist --epochs 6 --seed 0 --out models/mnist-classifier.safetensors";

/// Arguments of `host train-classifier`.
#[derive(Debug, Args, Serialize)]
#[command(after_help = EXAMPLE)]
pub struct TrainClassifierArgs {
    /// MNIST folder (IDX files, scripts/fetch-mnist.sh; sha256-checked).
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    pub data: PathBuf,
    /// Passes over the 60,000 training digits.
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    /// Examples per step (a multiple of 8).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate (AdamW), decayed linearly to 0.
    #[arg(long, default_value_t = 2e-3, allow_hyphen_values = true)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4, allow_hyphen_values = true)]
    pub weight_decay: f64,
    /// Seed of the initialisation and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the stored reference subsets (precision/recall).
    #[arg(long, default_value_t = 17)]
    pub reference_seed: u64,
    /// Feature vectors stored per split for precision/recall.
    #[arg(long, default_value_t = 10_000)]
    pub reference_features: usize,
    /// Threads (default: all cores); never changes the result.
    #[arg(long)]
    pub threads: Option<usize>,
    /// The judge file to write.
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
}

/// Runs `host train-classifier`.
pub fn run(args: &TrainClassifierArgs) -> Result<ExitCode> {
    let start = Instant::now();
    Outputs::check_file(&args.out, "--out", &[&args.data])?;
    let threads = threads(args.threads);
    let cfg = ClassifyConfig {
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        seed: args.seed,
        threads,
    };
    cfg.validate()?;
    let load = |split| {
        Dataset::mnist(&args.data, split, true).with_context(|| {
            format!(
                "--data {}: MNIST files (scripts/fetch-mnist.sh)",
                args.data.display()
            )
        })
    };
    let (train, test) = (load(MnistSplit::Train)?, load(MnistSplit::Test)?);
    let (train_images, test_images) = (padded_images(&train)?, padded_images(&test)?);
    let labels = |ds: &Dataset| {
        ds.labels()
            .map(<[u8]>::to_vec)
            .context("MNIST without labels")
    };
    let (train_labels, test_labels) = (labels(&train)?, labels(&test)?);
    let train_set = Labelled {
        images: &train_images,
        labels: &train_labels,
    };
    let test_set = Labelled {
        images: &test_images,
        labels: &test_labels,
    };
    errln!(
        "training the digit classifier ({} parameters) on {} images, {} epochs, {threads} threads",
        parameter_count(),
        train.len(),
        args.epochs
    );
    let (classifier, epochs) = train_classifier(&cfg, &train_set, &test_set, |l| errln!("{l}"))?;
    let train_s = start.elapsed().as_secs_f64();
    let test_accuracy = accuracy(&classifier, &test_set, threads)?;
    let train_accuracy = accuracy(&classifier, &train_set, threads)?;
    let t = Instant::now();
    let reference = |images: &[u8], labels: &[u8]| -> Result<Reference> {
        let out = classifier.infer(images, threads)?;
        Reference::build(
            &out.features,
            labels,
            args.reference_features,
            args.reference_seed,
        )
    };
    let test_ref = reference(&test_images, &test_labels)?;
    let train_ref = reference(&train_images, &train_labels)?;
    let reference_s = t.elapsed().as_secs_f64();
    let record = json!({
        "command": "train-classifier",
        "arguments": args,
        "data_sha256": {
            "train-images-idx3-ubyte": sha256::of_file(&args.data.join("train-images-idx3-ubyte"))?,
            "t10k-images-idx3-ubyte": sha256::of_file(&args.data.join("t10k-images-idx3-ubyte"))?,
        },
        "epochs": epochs,
        "test_accuracy": test_accuracy,
        "train_accuracy": train_accuracy,
        "isa": format!("{:?}", tweedie_kernels::Isa::detected()),
        "build": build_info(),
    });
    let metadata = HashMap::from([
        ("tweedie.kind".to_string(), "mnist-classifier".to_string()),
        ("tweedie.train".to_string(), record.to_string()),
        (
            "tweedie.test_accuracy".to_string(),
            format!("{test_accuracy:.4}"),
        ),
        (
            "tweedie.reference".to_string(),
            format!(
                "features of MNIST padded 28->32 in [-1,1]; mean/cov over each whole split; \
                 {} features per split in the order epoch_permutation(n, {}, 0)",
                args.reference_features, args.reference_seed
            ),
        ),
    ]);
    let judge = Judge {
        classifier,
        test: test_ref,
        train: train_ref,
        metadata: HashMap::new(),
    };
    let bytes = judge.to_bytes(metadata)?;
    let mut out = Outputs::files();
    out.write(&args.out, &bytes)?;
    out.commit()?;
    outln!(
        "test accuracy {:.2} % ({} of {}), training accuracy {:.2} %",
        100.0 * test_accuracy,
        (test_accuracy * test.len() as f64).round(),
        test.len(),
        100.0 * train_accuracy
    )?;
    outln!(
        "wrote {} ({} bytes, sha256 {}); training {}, reference statistics {}",
        args.out.display(),
        bytes.len(),
        sha256::of_bytes(&bytes),
        human_seconds(train_s),
        human_seconds(reference_s)
    )?;
    Ok(ExitCode::SUCCESS)
}
