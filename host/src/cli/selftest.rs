//! `host selftest --device cuda`: the first run on a GPU machine. It refuses to run without a
//! usable GPU (it never compares the CPU with itself), logs the GPU and driver, then checks
//! every kernel of the PTX module against the CPU path on random inputs (largest error per
//! kernel), one template step and a 100-step run (drift), and times the FFHQ-256 shapes. The
//! JSON report is rewritten after every result, so a run cut off by a time limit still reports.
//!
//! It also runs the full ADM forward on the device against the adm_small golden output, a
//! 10-step ADM sampling run against the CPU, and times the FFHQ-256 forward (batch 1 and 8,
//! f32 and f16 weights) and sampling steps. The checks themselves (`checks`) are generic over
//! the device and are unit-tested here with the CPU reference ops on both sides.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Map, Value};

use crate::cli::device::{self, Device};
use crate::outln;
use tweedie_nn::backend::cuda::Resolved;

const EXAMPLE: &str = "\
Example (on a GPU machine; scripts/gpu-check.sh runs it):
  host selftest --device cuda --ptx tweedie_kernels.ptx --json selftest.json";

/// Arguments of `host selftest`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLE)]
pub struct SelftestArgs {
    /// The backend under test: only `cuda` is accepted (the reference is the CPU path).
    #[arg(long, value_enum, default_value = "cuda")]
    pub device: Device,
    /// PTX module (scripts/build-ptx.sh); not needed when built with --features embed-ptx.
    #[arg(long, value_name = "PATH")]
    pub ptx: Option<PathBuf>,
    /// Write the report here as JSON (rewritten after every result).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Folder of the adm_small golden data (config.json, weights.safetensors, io.safetensors).
    #[arg(long, value_name = "DIR")]
    pub golden: Option<PathBuf>,
    /// Skip the timings (kernel checks only).
    #[arg(long)]
    pub no_timings: bool,
}

/// The report: printed line by line and mirrored to `--json` after every entry.
pub struct Report {
    path: Option<PathBuf>,
    root: Map<String, Value>,
    failed: usize,
    passed: usize,
}

impl Report {
    /// An empty report mirrored to `path` (if any).
    pub fn new(path: Option<PathBuf>) -> Self {
        Report {
            path,
            root: Map::new(),
            failed: 0,
            passed: 0,
        }
    }

    /// Sets a top-level entry and rewrites the JSON file.
    pub fn set(&mut self, key: &str, value: Value) -> Result<()> {
        self.root.insert(key.into(), value);
        self.flush()
    }

    /// Appends a check result to `section` (an array) and counts it.
    pub fn check(&mut self, section: &str, entry: Value, pass: bool) -> Result<()> {
        if pass {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        outln!("{} {section}: {entry}", if pass { "PASS" } else { "FAIL" })?;
        let arr = self
            .root
            .entry(section)
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = arr {
            a.push(entry);
        }
        self.root.insert(
            "summary".into(),
            json!({"passed": self.passed, "failed": self.failed}),
        );
        self.flush()
    }

    fn flush(&self) -> Result<()> {
        if let Some(p) = &self.path {
            let text = serde_json::to_vec_pretty(&Value::Object(self.root.clone()))?;
            tweedie_nn::train::checkpoint::write_atomic(p, &text)?;
        }
        Ok(())
    }
}

/// Runs `host selftest`.
pub fn run(args: &SelftestArgs) -> Result<ExitCode> {
    if args.device != Device::Cuda {
        bail!("selftest compares the GPU with the CPU path, so it runs only with --device cuda");
    }
    let backend = device::open(Device::Cuda, args.ptx.as_deref())?;
    match backend {
        Resolved::Cpu => bail!("selftest needs a GPU and none was opened"),
        #[cfg(feature = "cuda")]
        Resolved::Cuda(gpu) => {
            let mut report = Report::new(args.json.clone());
            report.set("status", json!("running"))?;
            let plan = checks::Plan {
                golden: args.golden.as_deref(),
                timing: (!args.no_timings)
                    .then(|| (tweedie_nn::model::adm::AdmConfig::ffhq256(), vec![1, 8])),
            };
            outln!(
                "gpu: {} (compute {}), driver API {}, {:.1} GiB",
                gpu.info.name,
                gpu.info.compute_capability,
                gpu.info.driver,
                gpu.info.total_mem as f64 / (1u64 << 30) as f64
            )?;
            report.set("device", serde_json::to_value(&gpu.info)?)?;
            checks::run(gpu.as_ref(), &plan, &mut report)?;
            report.set("status", json!("done"))?;
            outln!("{} passed, {} failed", report.passed, report.failed)?;
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(super::EXIT_CHECK_FAILED)
            })
        }
    }
}

#[cfg(any(feature = "cuda", test))]
mod checks;

#[cfg(test)]
mod tests {
    use super::*;

    fn args(device: Device) -> SelftestArgs {
        SelftestArgs {
            device,
            ptx: Some("/nonexistent/tweedie_kernels.ptx".into()),
            json: None,
            golden: None,
            no_timings: true,
        }
    }

    #[test]
    fn refuses_the_cpu() {
        for d in [Device::Cpu, Device::Auto] {
            let e = run(&args(d)).unwrap_err();
            assert!(format!("{e:#}").contains("--device cuda"));
        }
    }

    #[test]
    fn without_a_usable_gpu_it_is_one_clear_error() {
        // The PTX path does not exist, so this fails on every machine (no feature, no driver,
        // no device, or the unreadable module), with one line.
        let msg = format!("{:#}", run(&args(Device::Cuda)).unwrap_err());
        assert!(!msg.is_empty() && !msg.contains('\n'), "{msg}");
    }
}
