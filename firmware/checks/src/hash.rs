//! FNV-1a (64 bit) over the little-endian bytes of the values: the fingerprint every check
//! reports. Not cryptographic; it only has to see every bit.

use tweedie_core::plan::StepPlan;
use tweedie_core::Error;

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// A running FNV-1a hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv1a {
    /// The empty hash (the FNV offset basis).
    pub const fn new() -> Self {
        Fnv1a(OFFSET)
    }

    /// Mixes in bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(PRIME);
        }
    }

    /// Mixes in the bits of an f64.
    pub fn f64(&mut self, v: f64) {
        self.bytes(&v.to_bits().to_le_bytes());
    }

    /// Mixes in the bits of every f32.
    pub fn f32s(&mut self, v: &[f32]) {
        for x in v {
            self.bytes(&x.to_bits().to_le_bytes());
        }
    }

    /// The hash value.
    pub const fn value(&self) -> u64 {
        self.0
    }
}

/// The hash of every f64 a plan yields: x₀'s std, then per step σ, σ_net, t, γ and T.
pub fn plan(plan: &impl StepPlan) -> Result<Fnv1a, Error> {
    let mut h = Fnv1a::new();
    h.f64(plan.init_std()?);
    for k in 0..plan.len() {
        let s = plan.step(k)?;
        for v in [s.sigma, s.sigma_net, s.t, s.gamma, s.temperature] {
            h.f64(v);
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_vectors() {
        // FNV-1a 64 test vectors (Fowler/Noll/Vo): "" and "a".
        assert_eq!(Fnv1a::new().value(), 0xcbf29ce484222325);
        let mut h = Fnv1a::new();
        h.bytes(b"a");
        assert_eq!(h.value(), 0xaf63dc4c8601ec8c);
    }
}
