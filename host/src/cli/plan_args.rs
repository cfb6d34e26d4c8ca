//! The schedule / sampler flags shared by `sample`, `restore` and `schedule`, and the plan
//! they build: a preset of spec §12.1, optionally modified, or an explicit schedule; the
//! template sampler or one of core's classic samplers.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::json;
use tweedie_core::classic::{Ddpm, DdpmVariance, Levels, Ncsn, VeReverseDiffusion};
use tweedie_core::plan::{Init, NoiseInput, Plan, Preset, StepPlan, StepRule, Temperature};
use tweedie_core::{vp, Error, Schedule, TimeMap};

use crate::cli::model_args::narrows_vp_table;
use crate::run::memory;
use crate::run::plan::{AnyPlan, PlanSource, Purpose, PRESETS};
use tweedie_nn::denoiser::Model;
use tweedie_nn::weights::meta::Kind;

/// Noise schedules by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleName {
    /// VP: the DDPM table interpolated (spec §9.1); VE: geometric over the model's range.
    Pretrained,
    /// Chen's sigmoid (start 0, end 3, τ 0.3) over the model's range (spec §9.3).
    Sigmoid,
    /// σ linear in k (spec §9.4).
    Linear,
    /// σ geometric in k (spec §9.2).
    Geometric,
    /// Karras et al. ρ-schedule (--rho).
    Karras,
}

/// Samplers by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerName {
    /// The paper's template (eq. 11 / 24).
    Template,
    /// DDPM ancestral sampling (Ho et al. Alg. 2, K = 1000) as a template instance
    /// (host sample only: its fixed steps diverge under eq. 24's likelihood term).
    Ddpm,
    /// NCSN annealed Langevin (Song & Ermon Alg. 1): --ncsn-levels × --steps-per-level steps
    /// (host sample only, as DDPM).
    Ncsn,
    /// score_sde's VE predictor–corrector sampler (--snr), K = --steps levels.
    VePc,
}

/// Step-size rules (formats §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepRuleName {
    /// γ = c σ².
    Paper,
    /// γ = min(c σ², σ_y²) (official code, conditional).
    Code,
    /// γ = min(c σ², σ_y²/‖A‖²).
    Lipschitz,
    /// Annealed σ_y: σ_y,k² = σ_y² + ‖A‖² σ_k² in the likelihood weight and in the
    /// Lipschitz bound (conditional only).
    Annealed,
}

/// Law of x₀ (formats §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum X0Name {
    /// N(0, I) (official code).
    Unit,
    /// N(0, σ₀² I).
    Sigma0,
}

/// VP time maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TmapName {
    /// Exact inversion of σ(t).
    Exact,
    /// The official 10⁶-point grid snapping.
    Grid,
}

/// DDPM reverse variances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DdpmVarianceName {
    /// σ'² = β.
    Beta,
    /// σ'² = β̃.
    BetaTilde,
}

/// Schedule and sampler flags.
#[derive(Debug, Clone, Args, Serialize)]
pub struct PlanArgs {
    /// A released configuration (spec §12.1): vp-uncond-pretrained, vp-uncond-sigmoid,
    /// ve-uncond, vp-inpaint, vp-sr4, ve-inpaint, ve-sr4. Other flags modify it.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Noise schedule (replaces the preset's).
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleName>,
    /// K, the number of steps.
    #[arg(long, value_name = "K")]
    pub steps: Option<usize>,
    /// Step constant c (γ = c σ²).
    #[arg(allow_hyphen_values = true, long, value_name = "C")]
    pub c: Option<f64>,
    /// Starting temperature T₀ (T_k linear from T₀ to --t-end).
    #[arg(allow_hyphen_values = true, long, value_name = "T0")]
    pub t0: Option<f64>,
    /// Final temperature (default 1).
    #[arg(allow_hyphen_values = true, long, value_name = "T")]
    pub t_end: Option<f64>,
    /// Sampler.
    #[arg(long, value_enum, default_value_t = SamplerName::Template)]
    pub sampler: SamplerName,
    /// Step-size rule (sample: paper; restore: code).
    #[arg(long, value_enum)]
    pub step_rule: Option<StepRuleName>,
    /// Law of x₀.
    #[arg(long, value_enum)]
    pub x0: Option<X0Name>,
    /// VP time map (default grid, as the official code).
    #[arg(long, value_enum)]
    pub tmap: Option<TmapName>,
    /// Output D(x_K, σ_{K−1}) instead of x_K (one extra network evaluation).
    #[arg(long)]
    pub final_denoise: bool,
    /// ρ of the Karras schedule.
    #[arg(long, default_value_t = 7.0)]
    pub rho: f64,
    /// DDPM reverse variance.
    #[arg(long, value_enum, default_value_t = DdpmVarianceName::Beta)]
    pub ddpm_variance: DdpmVarianceName,
    /// NCSN: number of geometric levels over the model's σ range.
    #[arg(long, default_value_t = 10)]
    pub ncsn_levels: usize,
    /// NCSN: Langevin steps per level.
    #[arg(long, default_value_t = 100)]
    pub steps_per_level: usize,
    /// NCSN: ε (γ = ε σ²/(2 σ_L²)).
    #[arg(long, default_value_t = 2e-5)]
    pub ncsn_eps: f64,
    /// VE PC sampler: corrector signal-to-noise ratio.
    #[arg(long, default_value_t = 0.075)]
    pub snr: f64,
}
fn preset_kind(p: Preset) -> Kind {
    match p {
        Preset::VpUncondPretrained
        | Preset::VpUncondSigmoid
        | Preset::VpInpainting
        | Preset::VpSuperResolution => Kind::Vp,
        _ => Kind::Ve,
    }
}

/// A sigmoid schedule's shape over [lo, hi] (other schedules are returned as they are).
fn over_range(schedule: Schedule, lo: f64, hi: f64) -> Schedule {
    match schedule {
        Schedule::Sigmoid {
            start,
            end,
            tau,
            clip_min,
            ..
        } => Schedule::Sigmoid {
            start,
            end,
            tau,
            clip_min,
            sigma_min: lo,
            sigma_max: hi,
        },
        other => other,
    }
}

/// The error for the pretrained VP schedule (the DDPM table itself, from σ_max of the table)
/// with a σ range narrower than the table: it cannot honour the range.
fn pretrained_narrowed(lo: f64, hi: f64) -> String {
    format!(
        "the σ range [{lo}, {hi}] is narrower than the VP table, but the pretrained VP \
         schedule is the DDPM table itself; add --schedule sigmoid|geometric|linear|karras to \
         run over that range"
    )
}

fn core(e: Error, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {e}")
}

/// Memory per plan step: the step (σ, σ_net, t, γ, T) and its tables, with room to spare.
const PLAN_STEP_BYTES: u64 = 128;
impl PlanArgs {
    fn preset(&self, kind: Kind, purpose: Purpose) -> Result<(String, Preset)> {
        let name = match (&self.preset, kind, purpose) {
            (Some(p), ..) => p.clone(),
            (None, Kind::Vp, Purpose::Unconditional) => "vp-uncond-sigmoid".into(),
            (None, Kind::Ve, Purpose::Unconditional) => "ve-uncond".into(),
            (None, k, Purpose::Conditional { sr, .. }) => {
                format!("{}-{}", k.as_str(), if sr { "sr4" } else { "inpaint" })
            }
        };
        let preset = PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .with_context(|| {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                format!("--preset {name}: unknown (one of {})", names.join(", "))
            })?;
        if preset_kind(preset) != kind {
            bail!(
                "--preset {name} is for {} models but the model is {} (pass --kind or another preset)",
                preset_kind(preset).as_str(),
                kind.as_str()
            );
        }
        match (preset.is_conditional(), purpose) {
            (true, Purpose::Unconditional) => {
                bail!("--preset {name} is a conditional preset; use it with host restore")
            }
            (false, Purpose::Conditional { .. }) if self.preset.is_some() => {
                bail!("--preset {name} is unconditional; use it with host sample")
            }
            _ => {}
        }
        Ok((name, preset))
    }

    /// The model's σ range for schedules (VP: the table, narrowed by --sigma-min/--sigma-max
    /// when given; VE: the weights' metadata or those flags).
    fn range(model: &Model) -> Result<(f64, f64)> {
        match (model.kind, model.sigma_range) {
            // On the table: the model flags refuse a VP range that leaves it.
            (Kind::Vp, Some(range)) => Ok(range),
            (Kind::Vp, None) => Ok((vp::SIGMA_MIN, vp::SIGMA_MAX)),
            (Kind::Ve, _) => model.require_sigma_range(),
        }
    }

    /// Builds the plan for `model` and `purpose`; every bad value is one error naming its flag.
    pub fn build(&self, model: &Model, purpose: Purpose) -> Result<AnyPlan> {
        if self.steps == Some(0) {
            bail!("--steps 0: the number of steps K must be at least 1");
        }
        if let (
            Purpose::Conditional {
                sigma_y, norm_sq, ..
            },
            SamplerName::Ddpm | SamplerName::Ncsn,
        ) = (purpose, self.sampler)
        {
            bail!(
                "--sampler {} is unconditional only: its step sizes γ_k are fixed by the \
                 algorithm (DDPM: β_t/ᾱ_t, up to 495; NCSN: ε σ²/(2σ_L²)), far above the \
                 likelihood step's stability bound σ_y²/‖A‖² = {:.3e}, so eq. 24 diverges; \
                 clipping γ_k (spec §10.2) breaks the algorithm's own start law. Use \
                 --sampler template with host restore",
                if self.sampler == SamplerName::Ddpm {
                    "ddpm"
                } else {
                    "ncsn"
                },
                sigma_y * sigma_y / norm_sq
            );
        }
        let steps = self
            .steps
            .unwrap_or(0)
            .max(self.ncsn_levels.saturating_mul(self.steps_per_level));
        memory::check(
            &format!("a plan of {steps} steps"),
            memory::product(&[steps as u64, PLAN_STEP_BYTES]),
        )?;
        let plan = match self.sampler {
            SamplerName::Template => AnyPlan::Template(self.template(model, purpose)?),
            SamplerName::Ddpm => AnyPlan::Ddpm(Ddpm {
                variance: match self.ddpm_variance {
                    DdpmVarianceName::Beta => DdpmVariance::Beta,
                    DdpmVarianceName::BetaTilde => DdpmVariance::BetaTilde,
                },
            }),
            SamplerName::Ncsn => {
                let (lo, hi) = Self::range(model)?;
                if self.ncsn_levels == 0 || self.steps_per_level == 0 {
                    bail!("--ncsn-levels and --steps-per-level must be at least 1");
                }
                AnyPlan::Ncsn(Ncsn {
                    levels: Levels::Schedule {
                        schedule: Schedule::Geometric {
                            sigma_max: hi,
                            sigma_min: lo,
                        },
                        count: self.ncsn_levels,
                    },
                    steps_per_level: self.steps_per_level,
                    eps: self.ncsn_eps,
                })
            }
            SamplerName::VePc => {
                if !matches!(purpose, Purpose::Unconditional) {
                    bail!("--sampler ve-pc is unconditional only (use --sampler template with host restore)");
                }
                let (lo, hi) = Self::range(model)?;
                AnyPlan::VePc {
                    predictor: VeReverseDiffusion {
                        levels: Levels::Schedule {
                            schedule: Schedule::Geometric {
                                sigma_max: hi,
                                sigma_min: lo,
                            },
                            count: self.steps.unwrap_or(1000),
                        },
                        noise_removal: true,
                    },
                    snr: self.snr,
                }
            }
        };
        if self.sampler != SamplerName::Template {
            for (flag, set) in [
                ("--preset", self.preset.is_some()),
                ("--schedule", self.schedule.is_some()),
                ("--c", self.c.is_some()),
                ("--t0", self.t0.is_some()),
                ("--x0", self.x0.is_some()),
            ] {
                if set {
                    bail!("{flag} applies to --sampler template only");
                }
            }
        }
        if plan.is_empty() {
            bail!("the number of steps K must be at least 1");
        }
        // Every step is computed once up front: a bad schedule fails here, not mid-run.
        for k in [0, plan.len() - 1] {
            plan.step(k).map_err(|e| core(e, "plan"))?;
        }
        Ok(plan)
    }

    fn template(&self, model: &Model, purpose: Purpose) -> Result<Plan> {
        let (_, preset) = self.preset(model.kind, purpose)?;
        let mut plan = preset.plan();
        let (lo, hi) = Self::range(model)?;
        if model.kind == Kind::Ve {
            // VE presets take σ_min/σ_max from the weights (spec §7 uses 0.01 / 348).
            plan.schedule = Schedule::Geometric {
                sigma_max: hi,
                sigma_min: lo,
            };
            if let NoiseInput::VeContinuous { t_end, .. } = plan.noise_input {
                plan.noise_input = NoiseInput::VeContinuous {
                    sigma_min: lo,
                    sigma_max: hi,
                    t_end,
                };
            }
        }
        if model.kind == Kind::Vp && self.schedule.is_none() && narrows_vp_table((lo, hi)) {
            // A VP network trained on part of the table (or flags that say so): the preset's
            // schedule shape runs over that part, as an explicit --schedule does.
            plan.schedule = match plan.schedule {
                sigmoid @ Schedule::Sigmoid { .. } => over_range(sigmoid, lo, hi),
                _ => bail!(pretrained_narrowed(lo, hi)),
            };
        }
        if let Some(k) = self.steps {
            plan.steps = k;
        }
        if let Some(name) = self.schedule {
            plan.schedule = match (name, model.kind) {
                (ScheduleName::Pretrained, Kind::Vp) if narrows_vp_table((lo, hi)) => {
                    bail!(pretrained_narrowed(lo, hi))
                }
                (ScheduleName::Pretrained, Kind::Vp) => Schedule::VpPretrained,
                (ScheduleName::Pretrained | ScheduleName::Geometric, _) => Schedule::Geometric {
                    sigma_max: hi,
                    sigma_min: lo,
                },
                (ScheduleName::Sigmoid, _) => over_range(Schedule::sigmoid_paper(), lo, hi),
                (ScheduleName::Linear, _) => Schedule::Linear {
                    sigma_max: hi,
                    sigma_min: lo,
                },
                (ScheduleName::Karras, _) => Schedule::Karras {
                    sigma_max: hi,
                    sigma_min: lo,
                    rho: self.rho,
                },
            };
            if model.kind == Kind::Ve {
                plan.noise_input = NoiseInput::Ve;
            }
        }
        if let Some(tmap) = self.tmap {
            if model.kind == Kind::Ve {
                bail!("--tmap applies to VP models only");
            }
            plan.noise_input = NoiseInput::Vp(match tmap {
                TmapName::Exact => TimeMap::Exact,
                TmapName::Grid => TimeMap::Grid,
            });
        }
        let c = match plan.step_rule {
            StepRule::Paper { c }
            | StepRule::Code { c, .. }
            | StepRule::Lipschitz { c, .. }
            | StepRule::Annealed { c, .. } => c,
        };
        let c = self.c.unwrap_or(c);
        plan.step_rule = match (self.step_rule, purpose) {
            (None | Some(StepRuleName::Paper), Purpose::Unconditional) => StepRule::Paper { c },
            (Some(_), Purpose::Unconditional) => {
                bail!("--step-rule code|lipschitz|annealed needs a measurement (use host restore)")
            }
            (Some(StepRuleName::Paper), Purpose::Conditional { .. }) => StepRule::Paper { c },
            (None | Some(StepRuleName::Code), Purpose::Conditional { sigma_y, .. }) => {
                StepRule::Code { c, sigma_y }
            }
            (
                Some(StepRuleName::Lipschitz),
                Purpose::Conditional {
                    sigma_y, norm_sq, ..
                },
            ) => StepRule::Lipschitz {
                c,
                sigma_y,
                norm_sq,
            },
            (
                Some(StepRuleName::Annealed),
                Purpose::Conditional {
                    sigma_y, norm_sq, ..
                },
            ) => StepRule::Annealed {
                c,
                sigma_y,
                norm_sq,
            },
        };
        plan.temperature = Temperature {
            start: self.t0.unwrap_or(plan.temperature.start),
            end: self.t_end.unwrap_or(plan.temperature.end),
        };
        if let Some(x0) = self.x0 {
            plan.init = match x0 {
                X0Name::Unit => Init::Unit,
                X0Name::Sigma0 => Init::Sigma0,
            };
        }
        plan.validate().map_err(|e| {
            anyhow::anyhow!("plan: {e} (check --steps, --c, --t0, --t-end, --schedule)")
        })?;
        Ok(plan)
    }

    /// A JSON summary of the plan for run.json.
    pub fn describe(&self, plan: &AnyPlan) -> serde_json::Value {
        let first = plan.step(0).ok();
        let last = plan.step(plan.len().saturating_sub(1)).ok();
        let preset = self.preset.clone();
        json!({
            "flags": self,
            "plan": format!("{plan:?}"),
            "steps": plan.len(),
            "sigma_first": first.map(|s| s.sigma),
            "sigma_last": last.map(|s| s.sigma),
            "preset": preset,
        })
    }
}

impl PlanSource for PlanArgs {
    fn build(&self, model: &Model, purpose: Purpose) -> Result<AnyPlan> {
        PlanArgs::build(self, model, purpose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::model_args::ModelArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        plan: PlanArgs,
    }

    fn build(args: &[&str], purpose: Purpose) -> Result<AnyPlan> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
        let model = cli.model.schedule_only()?;
        cli.plan.build(&model, purpose)
    }

    #[test]
    fn presets_are_the_released_configs() {
        let p = build(
            &["--kind", "vp", "--preset", "vp-uncond-sigmoid"],
            Purpose::Unconditional,
        )
        .unwrap();
        assert_eq!(p, AnyPlan::Template(Preset::VpUncondSigmoid.plan()));
        let p = build(&["--kind", "ve"], Purpose::Unconditional).unwrap();
        assert_eq!(p, AnyPlan::Template(Preset::VeUncondPretrained.plan()));
        let cond = Purpose::Conditional {
            sigma_y: 0.2,
            norm_sq: 1.0,
            sr: false,
        };
        let p = build(&["--kind", "vp"], cond).unwrap();
        assert_eq!(p, AnyPlan::Template(Preset::VpInpainting.plan()));
    }

    #[test]
    fn bad_flags_are_named() {
        let e = |args: &[&str]| format!("{:#}", build(args, Purpose::Unconditional).unwrap_err());
        assert!(e(&["--kind", "vp", "--steps", "0"]).contains("--steps 0"));
        assert!(e(&["--kind", "ve", "--preset", "vp-uncond-sigmoid"]).contains("is for vp models"));
        assert!(e(&["--kind", "vp", "--preset", "vp-sr4"]).contains("conditional preset"));
        assert!(e(&["--kind", "vp", "--c", "-1"]).contains("step constant c"));
        assert!(e(&["--kind", "vp", "--preset", "nope"]).contains("--preset nope: unknown"));
        assert!(e(&["--kind", "vp", "--step-rule", "code"]).contains("needs a measurement"));
    }

    #[test]
    fn annealed_sigma_y_reaches_the_sampler_through_the_host_plan() {
        let cond = Purpose::Conditional {
            sigma_y: 0.2,
            norm_sq: 1.0 / 16.0,
            sr: true,
        };
        let plan = build(&["--kind", "vp", "--step-rule", "annealed"], cond).unwrap();
        let first = plan.step(0).unwrap();
        // σ_y,0² = 0.04 + σ_max²/16 through AnyPlan, the plan the runner hands to core.
        let s_y = plan.likelihood_sigma_y(&first, 0.2);
        let want = (0.04 + first.sigma * first.sigma / 16.0).sqrt();
        assert!((s_y - want).abs() < 1e-12 * want, "{s_y} {want}");
        let e = build(
            &["--kind", "vp", "--step-rule", "annealed"],
            Purpose::Unconditional,
        );
        assert!(format!("{:#}", e.unwrap_err()).contains("needs a measurement"));
    }

    /// DDPM and NCSN fix γ_k themselves; under eq. 24 they diverge, so restore refuses them.
    #[test]
    fn fixed_step_samplers_are_refused_for_restoration() {
        let cond = Purpose::Conditional {
            sigma_y: 0.05,
            norm_sq: 1.0,
            sr: false,
        };
        for sampler in ["ddpm", "ncsn"] {
            let args = ["--kind", "vp", "--sampler", sampler];
            let e = format!("{:#}", build(&args, cond).unwrap_err());
            assert!(
                e.contains(&format!("--sampler {sampler} is unconditional only"))
                    && e.contains("2.500e-3"),
                "{e}"
            );
            assert!(build(&args, Purpose::Unconditional).is_ok());
        }
    }

    /// A VP model's schedules span the DDPM table unless --sigma-min/--sigma-max narrow it
    /// (a run that starts at a lower noise level); flags outside the table are an error.
    #[test]
    fn vp_schedules_honour_a_narrowed_sigma_range() {
        let first = |args: &[&str]| match build(args, Purpose::Unconditional).unwrap() {
            AnyPlan::Template(p) => (p.step(0).unwrap().sigma, p.step(p.len() - 1).unwrap().sigma),
            _ => unreachable!(),
        };
        let base = ["--kind", "vp", "--schedule", "geometric", "--steps", "20"];
        let (hi, lo) = first(&base);
        assert!((hi - vp::SIGMA_MAX).abs() < 1e-9 * hi && (lo - vp::SIGMA_MIN).abs() < 1e-9);
        let narrowed = [&base[..], &["--sigma-max", "1", "--sigma-min", "0.05"]].concat();
        let (hi, lo) = first(&narrowed);
        assert!(
            (hi - 1.0).abs() < 1e-6 && (lo - 0.05).abs() < 1e-6,
            "{hi} {lo}"
        );
        // A preset's sigmoid runs over the narrowed range too (it ignored it before); the
        // pretrained table cannot, and says so.
        let words = |text: &str| text.split(' ').map(String::from).collect::<Vec<_>>();
        let ends = |text: &str| {
            let args = words(text);
            first(&args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let (hi, lo) = ends("--kind vp --preset vp-uncond-sigmoid --steps 20");
        assert!((hi - vp::SIGMA_MAX).abs() < 1e-9 * hi && (lo - vp::SIGMA_MIN).abs() < 1e-9);
        let (hi, lo) = ends("--kind vp --preset vp-uncond-sigmoid --steps 20 --sigma-max 1");
        assert!((hi - 1.0).abs() < 1e-6 && (lo - vp::SIGMA_MIN).abs() < 1e-9);
        for text in [
            "--kind vp --preset vp-uncond-pretrained --sigma-max 1",
            "--kind vp --schedule pretrained --sigma-min 0.1",
        ] {
            let args = words(text);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let e = format!("{:#}", build(&args, Purpose::Unconditional).unwrap_err());
            assert!(e.contains("narrower than the VP table"), "{e}");
        }
        for flag in [["--sigma-max", "1000"], ["--sigma-min", "0.001"]] {
            let wide = [&base[..], &flag[..]].concat();
            let e = format!("{:#}", build(&wide, Purpose::Unconditional).unwrap_err());
            assert!(e.contains("leaves the VP table"), "{e}");
        }
    }
}
