//! `host measure`: y = A x + σ_y n from a ground-truth image (formats.md §4), in the model's
//! data range (`--range=-1,1` for VP, `--range 0,1` for VE). With --sigma-y 0, exactly A x.
//! Writes the safetensors file and a PNG preview of y next to it ([`preview_path`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::image_io::{png_from_planes, read_image_native, to_planes};
use crate::outln;
use crate::run::measurement::{MeasureOptions, Measurement, Task};
use crate::run::output_policy::Outputs;
use tweedie_nn::weights::meta::DataRange;

/// `--task`: the metadata names of [`Task`] (formats §4).
impl clap::ValueEnum for Task {
    fn value_variants<'a>() -> &'a [Self] {
        &Task::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Task::Inpaint => {
                "Random inpainting: a fraction --p of pixel locations missing (seeded mask)"
            }
            Task::InpaintBox => {
                "A missing rectangle (--box x,y,w,h; default the centered half-size box)"
            }
            Task::Sr4 => "4× bicubic super-resolution (the DPS resizer)",
            Task::Denoise => "Denoising: A = I",
        };
        Some(clap::builder::PossibleValue::new(self.name()).help(help))
    }
}

const EXAMPLE: &str = "\
Examples:
  host measure --task sr4 --input gt.png --sigma-y 0.2 --seed 1 --out y.safetensors
  host measure --task inpaint --input gt.png --range 0,1 --sigma-y 0.2 --out y.safetensors";

/// Arguments of `host measure`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLE)]
pub struct MeasureArgs {
    /// The inverse problem.
    #[arg(long, value_enum)]
    pub task: Task,
    /// Ground-truth image (PNG or JPEG, gray or RGB).
    #[arg(long, value_name = "GT.png")]
    pub input: PathBuf,
    /// Measurement noise σ_y in data-range units (0: exactly A x).
    #[arg(allow_hyphen_values = true, long, default_value_t = 0.2)]
    pub sigma_y: f64,
    /// Seed of the noise and of the random mask.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data range: `-1,1` (VP models) or `0,1` (VE models).
    #[arg(long, default_value = "-1,1", allow_hyphen_values = true)]
    pub range: String,
    /// Missing fraction for --task inpaint (default 0.92).
    #[arg(long)]
    pub p: Option<f64>,
    /// Box x,y,w,h for --task inpaint-box (default: the centered half-size box).
    #[arg(long, value_name = "x,y,w,h")]
    pub r#box: Option<String>,
    /// Center-crop and area-resize the input to SIZE×SIZE first.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<usize>,
    /// Output measurement file.
    #[arg(long, value_name = "y.safetensors")]
    pub out: PathBuf,
}

/// The preview's path: `--out` with the extension `.png` (`y.preview.png` when `--out` is
/// itself a `.png`, so the preview never replaces the measurement).
pub fn preview_path(out: &Path) -> PathBuf {
    if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        out.with_extension("preview.png")
    } else {
        out.with_extension("png")
    }
}

/// Runs `host measure`.
pub fn run(args: &MeasureArgs) -> Result<ExitCode> {
    let range = match args.range.as_str() {
        "01" => DataRange::ZeroOne,
        "-11" => DataRange::MinusOneOne,
        r => r
            .parse::<DataRange>()
            .with_context(|| format!("--range {r}"))?,
    };
    let preview = preview_path(&args.out);
    Outputs::check_file(&args.out, "--out", &[&args.input])?;
    Outputs::check_file(&preview, "the preview", &[&args.input])?;
    let img = read_image_native(&args.input, range, args.size)?;
    let im = &img.image;
    let opts = MeasureOptions::new(
        args.task,
        args.sigma_y,
        args.seed,
        args.p,
        args.r#box.as_deref(),
    )?;
    let m = Measurement::make(
        &im.data,
        (im.c, im.h, im.w),
        &opts,
        range,
        Some(img.sha256.clone()),
    )
    .with_context(|| format!("measuring {}", args.input.display()))?;
    let shape = m.y_shape();
    let mut out = Outputs::files();
    out.write(&args.out, &m.to_bytes()?)?;
    out.write(
        &preview,
        &png_from_planes(&to_planes(&m.y, range), shape[1], shape[2], shape[3])?,
    )?;
    out.commit()?;
    outln!(
        "wrote {} (y {:?}, task {}, sigma_y {}) and {}",
        args.out.display(),
        shape,
        args.task.name(),
        args.sigma_y,
        preview.display()
    )?;
    Ok(ExitCode::SUCCESS)
}
