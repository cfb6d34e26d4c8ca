//! Training: the infrastructure that does not depend on the network (optimiser, schedules, EMA,
//! checkpoints, stop signals, loss logs; the data comes from `crate::data`) and the loops that
//! compose it with a model's forward and backward passes.
//!
//! - [`params`]: one flat f32 buffer with named per-tensor views (weights, gradients, moments).
//! - [`clip`]: global gradient-norm clipping (`torch.nn.utils.clip_grad_norm_`).
//! - [`optim`]: AdamW with `torch.optim.AdamW` semantics.
//! - [`schedule`]: learning-rate schedules (score_sde's linear warm-up).
//! - [`ema`]: the exponential moving average of the weights.
//! - [`classify_run`]: the training loop of the digit classifier behind `host evaluate fid`.
//! - [`checkpoint`]: one atomic safetensors file with everything `--resume` needs.
//! - [`signal`]: the stop flag (SIGINT, SIGTERM, SIGHUP, …) the loop polls.
//! - [`log`]: `loss.csv` and the loss-curve PNG.
//!
//! Everything is single-threaded per element and deterministic: the same inputs give the same
//! bits whatever the thread count.

pub mod adm_run;
pub mod adm_trainer;
pub mod checkpoint;
pub mod classify_run;
pub mod clip;
pub mod ema;
pub mod log;
pub mod optim;
pub mod params;
pub mod schedule;
pub mod signal;
