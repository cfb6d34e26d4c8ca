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

/// [`Warmup`], then from step `start` a half-cosine from the base rate down to 0 at step
/// `end` (0 after it). Before `start` the rate is exactly [`Warmup`]'s, so a run that adopts
/// a decay on resume keeps the bits of every step it already took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    /// Warm-up and base rate.
    pub warmup: Warmup,
    /// First step of the decay (rate still the base rate there).
    pub start: u64,
    /// Step at which the rate reaches 0.
    pub end: u64,
}

impl LrSchedule for WarmupCosine {
    fn lr(&self, step: u64) -> f64 {
        let base = self.warmup.lr(step);
        if step <= self.start {
            return base;
        }
        if step >= self.end {
            return 0.0;
        }
        let t = (step - self.start) as f64 / (self.end - self.start) as f64;
        base * 0.5 * (1.0 + (core::f64::consts::PI * t).cos())
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

    #[test]
    fn cosine_keeps_warmup_bits_then_halves_at_midpoint() {
        let warmup = Warmup {
            lr: 1e-3,
            warmup: 100,
        };
        let s = WarmupCosine {
            warmup,
            start: 1000,
            end: 3000,
        };
        for step in [0, 1, 50, 100, 999, 1000] {
            assert_eq!(s.lr(step).to_bits(), warmup.lr(step).to_bits());
        }
        assert!((s.lr(2000) - 5e-4).abs() < 1e-18);
        assert!((s.lr(1500) - 1e-3 * (0.5 + 0.5 * 0.5f64.sqrt())).abs() < 1e-15);
        assert!(s.lr(2999) > 0.0 && s.lr(2999) < 1e-8);
        assert_eq!(s.lr(3000), 0.0);
        assert_eq!(s.lr(10_000), 0.0);
        let mut last = f64::INFINITY;
        for step in 1000..3001 {
            assert!(s.lr(step) <= last);
            last = s.lr(step);
        }
    }
}
