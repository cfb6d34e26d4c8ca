//! Learning-rate schedules, as a function of the 0-based optimizer step.

/// A learning rate per optimizer step.
pub trait LrSchedule {
    /// The learning rate of step `step` (0 = the first optimizer step).
    fn lr(&self, step: u64) -> f64;
}

/// A constant learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constant(pub f64);

impl LrSchedule for Constant {
    fn lr(&self, _step: u64) -> f64 {
        self.0
    }
}

/// score_sde's linear warm-up (`losses.optimization_manager`):
/// `lr · min(step / warmup, 1)` with `step` the number of optimizer steps already taken
/// (score_sde passes `state['step']` before incrementing it). Note that the first step
/// (step 0) therefore has learning rate 0, exactly as in score_sde. `warmup = 0` means no
/// warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    /// The base learning rate.
    pub lr: f64,
    /// Warm-up length in steps.
    pub warmup: u64,
}

impl LrSchedule for Warmup {
    fn lr(&self, step: u64) -> f64 {
        if self.warmup == 0 {
            return self.lr;
        }
        self.lr * (step as f64 / self.warmup as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_then_flat() {
        let s = Warmup {
            lr: 2e-4,
            warmup: 5000,
        };
        assert_eq!(s.lr(0), 0.0);
        assert_eq!(s.lr(2500), 2e-4 * 0.5);
        assert_eq!(s.lr(1), 2e-4 * (1.0 / 5000.0));
        assert_eq!(s.lr(5000), 2e-4);
        assert_eq!(s.lr(1_000_000), 2e-4);
        let none = Warmup {
            lr: 1e-3,
            warmup: 0,
        };
        assert_eq!(none.lr(0), 1e-3);
        assert_eq!(Constant(3e-4).lr(7), 3e-4);
    }
}
