//! Deterministic, counter-based noise (formats.md §6).
//!
//! Every random number is a pure function of `(seed, chain, counter, element)`: there is no
//! generator state to carry, so any element can be drawn on its own. A batch of 64 chains or
//! four batches of 16, one thread or two splitting a chain, and the GPU all draw the same bits.
//!
//! Construction (keep in sync with README.md, "Noise"):
//! 1. `mix(x)` = the first output of `rand_xoshiro::SplitMix64` seeded with `x` (a bijective
//!    64-bit finaliser of `x + 0x9e3779b97f4a7c15`).
//! 2. `key = mix(mix(mix(mix(seed) ^ chain) ^ counter) ^ element)`.
//! 3. Two 53-bit uniforms: `u1 = ((mix(key) >> 11) + 1) · 2⁻⁵³ ∈ (0, 1]`,
//!    `u2 = (mix(key ^ 0xD1B54A32D192ED03) >> 11) · 2⁻⁵³ ∈ [0, 1)`.
//! 4. Box–Muller, cosine branch only, in f64 through `libm`: `z = sqrt(−2 ln u1) · cos(2π u2)`,
//!    then rounded once to f32. (Using one branch wastes the sine, but keeps every element
//!    independent of its neighbours.)
//!
//! Counters: sampling step k draws with `counter = k`; the initial state x₀ uses
//! [`COUNTER_INIT`]; other consumers (measurement noise, masks, training) use the named
//! counters below so their streams never overlap with a sampler's.

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::SplitMix64;

/// Counter of the initial state x₀ of a chain.
pub const COUNTER_INIT: u64 = u64::MAX;
/// Counter of the measurement noise e in y = A x + e.
pub const COUNTER_MEASUREMENT: u64 = u64::MAX - 1;
/// Counter of the random inpainting mask.
pub const COUNTER_MASK: u64 = u64::MAX - 2;
/// First counter of the training streams (noise levels, noise images, data order);
/// training step s uses counters `COUNTER_TRAIN_BASE - 4·s - j`, j = 0..3.
pub const COUNTER_TRAIN_BASE: u64 = u64::MAX - 16;

const SECOND_STREAM: u64 = 0xD1B5_4A32_D192_ED03;
const TWO_POW_M53: f64 = 1.0 / 9_007_199_254_740_992.0;

/// SplitMix64's output function: a bijective mix of a 64-bit word.
#[inline]
pub fn mix(x: u64) -> u64 {
    SplitMix64::seed_from_u64(x).next_u64()
}

/// The 64-bit key of one draw.
#[inline]
pub fn key(seed: u64, chain: u64, counter: u64, element: u64) -> u64 {
    mix(mix(mix(mix(seed) ^ chain) ^ counter) ^ element)
}

/// 64 uniformly distributed bits for one `(seed, chain, counter, element)`.
#[inline]
pub fn bits(seed: u64, chain: u64, counter: u64, element: u64) -> u64 {
    mix(key(seed, chain, counter, element))
}

/// A uniform draw in [0, 1) with 53 random bits.
#[inline]
pub fn uniform(seed: u64, chain: u64, counter: u64, element: u64) -> f64 {
    (bits(seed, chain, counter, element) >> 11) as f64 * TWO_POW_M53
}

/// A standard normal draw N(0, 1), rounded to f32.
#[inline]
pub fn gaussian(seed: u64, chain: u64, counter: u64, element: u64) -> f32 {
    gaussian_f64(seed, chain, counter, element) as f32
}

/// A standard normal draw N(0, 1) in f64 (the value [`gaussian`] rounds).
#[inline]
pub fn gaussian_f64(seed: u64, chain: u64, counter: u64, element: u64) -> f64 {
    let k = key(seed, chain, counter, element);
    let u1 = ((mix(k) >> 11) + 1) as f64 * TWO_POW_M53;
    let u2 = (mix(k ^ SECOND_STREAM) >> 11) as f64 * TWO_POW_M53;
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(core::f64::consts::TAU * u2)
}

/// Fills `out[i]` with `gaussian(seed, chain, counter, first_element + i)`.
pub fn fill_gaussian(out: &mut [f32], seed: u64, chain: u64, counter: u64, first_element: u64) {
    for (i, v) in out.iter_mut().enumerate() {
        *v = gaussian(seed, chain, counter, first_element + i as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_splitmix64_reference() {
        // First output of splitmix64.c seeded with 1477776061723855037.
        assert_eq!(mix(1477776061723855037), 1985237415132408290);
    }

    #[test]
    fn draws_are_pure_functions_of_their_counters() {
        let a = gaussian(7, 3, 11, 12345);
        let mut buf = [0.0f32; 4];
        fill_gaussian(&mut buf, 7, 3, 11, 12343);
        assert_eq!(buf[2].to_bits(), a.to_bits());
        assert_ne!(gaussian(7, 4, 11, 12345), a);
        assert_ne!(gaussian(7, 3, 12, 12345), a);
        assert_ne!(gaussian(8, 3, 11, 12345), a);
    }

    #[test]
    fn moments_are_standard_normal() {
        let n = 200_000u64;
        let (mut s1, mut s2, mut s4) = (0.0f64, 0.0f64, 0.0f64);
        for e in 0..n {
            let z = gaussian_f64(42, 0, 0, e);
            s1 += z;
            s2 += z * z;
            s4 += z * z * z * z;
        }
        let nf = n as f64;
        let (m, v, k) = (s1 / nf, s2 / nf, s4 / nf);
        // 5 standard errors: se(mean) = 1/sqrt(n), se(var) = sqrt(2/n), se(4th moment) = sqrt(96/n).
        assert!(m.abs() < 5.0 / nf.sqrt(), "mean {m}");
        assert!((v - 1.0).abs() < 5.0 * (2.0 / nf).sqrt(), "var {v}");
        assert!((k - 3.0).abs() < 5.0 * (96.0 / nf).sqrt(), "kurtosis {k}");
        let u = uniform(1, 2, 3, 4);
        assert!((0.0..1.0).contains(&u));
    }
}
