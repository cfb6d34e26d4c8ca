//! `host schedule`: the plan's σ_k, σ_net,k, t_k, γ_k and T_k as CSV (stdout or --out), and
//! with --plot a PNG of σ_k and γ_k against k on a log scale (σ blue, γ red; grey lines at
//! powers of ten).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use image::{Rgb, RgbImage};
use tweedie_core::plan::{PlanStep, StepPlan};

use super::plan_args::PlanArgs;
use crate::cli::model_args::ModelArgs;
use crate::outln;
use crate::run::measurement::Task;
use crate::run::output_policy::{OutputFile, Outputs};
use crate::run::plan::{Purpose, PRESETS};

const EXAMPLE: &str = "\
Examples:
  host schedule --kind vp --preset vp-uncond-sigmoid --plot sigmoid.png > sigmoid.csv
  host schedule --kind ve --schedule geometric --steps 100 --c 0.2 --t0 0.4
  host schedule --kind vp --preset vp-sr4 --sigma-y 0.2 --task sr4 --step-rule lipschitz";

/// Arguments of `host schedule`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLE)]
pub struct ScheduleArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub plan: PlanArgs,
    /// σ_y of a conditional plan (default 0.2 with a conditional preset).
    #[arg(allow_hyphen_values = true, long)]
    pub sigma_y: Option<f64>,
    /// Task of a conditional plan (‖A‖² for --step-rule lipschitz: sr4 1/16, else 1).
    #[arg(long, value_enum)]
    pub task: Option<Task>,
    /// Write the CSV here instead of stdout.
    #[arg(long, value_name = "FILE.csv")]
    pub out: Option<PathBuf>,
    /// Draw σ_k and γ_k against k (log scale) into this PNG.
    #[arg(long, value_name = "out.png")]
    pub plot: Option<PathBuf>,
}

fn purpose(args: &ScheduleArgs) -> Result<Purpose> {
    let conditional_preset = args
        .plan
        .preset
        .as_deref()
        .and_then(|p| PRESETS.iter().find(|(n, _)| *n == p))
        .is_some_and(|(_, p)| p.is_conditional());
    if args.sigma_y.is_none() && !conditional_preset && args.task.is_none() {
        return Ok(Purpose::Unconditional);
    }
    let sigma_y = args.sigma_y.unwrap_or(tweedie_core::plan::PRESET_SIGMA_Y);
    if !(sigma_y.is_finite() && sigma_y > 0.0) {
        bail!("--sigma-y {sigma_y}: must be a finite number > 0");
    }
    let sr = args.task == Some(Task::Sr4)
        || args
            .plan
            .preset
            .as_deref()
            .is_some_and(|p| p.ends_with("sr4"));
    Ok(Purpose::Conditional {
        sigma_y,
        norm_sq: if sr { 1.0 / 16.0 } else { 1.0 },
        sr,
    })
}

/// Runs `host schedule`.
pub fn run(args: &ScheduleArgs) -> Result<ExitCode> {
    let text_out = args.out.as_deref().filter(|p| !OutputFile::is_stdout(p));
    if let Some(path) = text_out {
        Outputs::check_file(path, "--out", &[])?;
    }
    if let Some(path) = &args.plot {
        Outputs::check_file(path, "--plot", &[])?;
        if text_out == Some(path.as_path()) {
            bail!("--plot {}: is also --out", path.display());
        }
    }
    let model = args.model.schedule_only()?;
    let plan = args.plan.build(&model, purpose(args)?)?;
    let steps = (0..plan.len())
        .map(|k| plan.step(k).map_err(|e| anyhow::anyhow!("step {k}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let mut csv = String::from("k,sigma,sigma_net,t,gamma,temperature\n");
    for s in &steps {
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            s.k, s.sigma, s.sigma_net, s.t, s.gamma, s.temperature
        ));
    }
    let mut out = Outputs::files();
    match text_out {
        Some(path) => out.write(path, csv.as_bytes())?,
        None => outln!("{}", csv.trim_end_matches('\n'))?,
    }
    if let Some(path) = &args.plot {
        let mut png = Vec::new();
        plot(&steps).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        out.write(path, &png)?;
    }
    out.commit()?;
    Ok(ExitCode::SUCCESS)
}

const W: u32 = 800;
const H: u32 = 500;
const MARGIN: u32 = 40;

/// σ_k (blue) and γ_k (red) against k on a log-y axis.
pub fn plot(steps: &[PlanStep]) -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let values = steps
        .iter()
        .flat_map(|s| [s.sigma, s.gamma])
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return img;
    }
    let (l0, l1) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let (pw, ph) = (f64::from(W - 2 * MARGIN), f64::from(H - 2 * MARGIN));
    let kmax = (steps.len().max(2) - 1) as f64;
    let px = |k: f64| f64::from(MARGIN) + pw * k / kmax;
    let py = |v: f64| f64::from(MARGIN) + ph * (1.0 - (v.log10() - l0) / (l1 - l0));
    // Decade grid lines and axes.
    let mut decade = l0;
    while decade <= l1 {
        let y = py(10f64.powf(decade));
        line(&mut img, (px(0.0), y), (px(kmax), y), Rgb([220, 220, 220]));
        decade += 1.0;
    }
    let black = Rgb([0, 0, 0]);
    line(
        &mut img,
        (px(0.0), py(10f64.powf(l0))),
        (px(kmax), py(10f64.powf(l0))),
        black,
    );
    line(
        &mut img,
        (px(0.0), py(10f64.powf(l0))),
        (px(0.0), py(10f64.powf(l1))),
        black,
    );
    for (pick, color) in [(0usize, Rgb([30, 90, 220])), (1usize, Rgb([220, 40, 40]))] {
        let pts: Vec<(f64, f64)> = steps
            .iter()
            .filter_map(|s| {
                let v = if pick == 0 { s.sigma } else { s.gamma };
                (v > 0.0 && v.is_finite()).then(|| (px(s.k as f64), py(v)))
            })
            .collect();
        for pair in pts.windows(2) {
            line(&mut img, pair[0], pair[1], color);
        }
        // Legend swatch.
        for dx in 0..12 {
            for dy in 0..6 {
                img.put_pixel(W - MARGIN - 30 + dx, 10 + 10 * pick as u32 + dy, color);
            }
        }
    }
    img
}

/// A straight line by uniform stepping (enough samples to touch every pixel).
fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), color: Rgb<u8>) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}
