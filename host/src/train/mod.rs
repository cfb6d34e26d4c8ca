//! Training infrastructure that does not depend on the network: data, optimiser, schedules,
//! EMA, checkpoints, stop signals and loss logs. The training loop composes them with a
//! model's forward and backward passes.
//!
//! - [`data`]: MNIST IDX and PNG-folder datasets, conversion to the model range (formats §1),
//!   and the seeded, resumable epoch order.
//! - [`params`]: one flat f32 buffer with named per-tensor views (weights, gradients, moments).
//! - [`clip`]: global gradient-norm clipping (`torch.nn.utils.clip_grad_norm_`).
//! - [`optim`]: AdamW with `torch.optim.AdamW` semantics.
//! - [`schedule`]: learning-rate schedules (score_sde's linear warm-up).
//! - [`ema`]: the exponential moving average of the weights.
//! - [`classify_run`]: the training loop of the digit classifier behind `host evaluate fid`.
//! - [`checkpoint`]: one atomic safetensors file with everything `--resume` needs.
//! - [`signal`]: the SIGINT/SIGTERM flag the loop polls.
//! - [`log`]: `loss.csv` and the loss-curve PNG.
//!
//! Everything is single-threaded per element and deterministic: the same inputs give the same
//! bits whatever the thread count.

pub mod adm_run;
pub mod checkpoint;
pub mod classify_run;
pub mod clip;
pub mod data;
pub mod ema;
pub mod log;
pub mod optim;
pub mod params;
pub mod schedule;
pub mod signal;
