//! Schedules of the training hyper-parameters over the optimizer step count.
//!
//! - [`lr`]: learning-rate schedules (constant, score_sde's linear warm-up).

pub mod lr;

pub use lr::{LrSchedule, Warmup, WarmupCosine};
