//! CPU execution: a small persistent worker pool (std only) and the fixed rule that splits a
//! layer's output channels, groups or heads between its threads.
//!
//! Every kernel computes each output element in the same order whatever range it is given, so
//! the split only decides who computes what, never a value: outputs are bit-identical for any
//! thread count.

pub mod cuda;
pub mod ops;
pub mod pool;
pub mod profile;
pub mod reference;
pub mod scratch;

pub use pool::{part, Pool};
pub use scratch::ThreadScratch;

/// Lets the kernels use AVX2+FMA when this CPU has them (idempotent; call before starting
/// workers). The convolution's result then differs from the portable path by rounding, the
/// same way for every thread and batch.
pub fn enable_simd() {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { tweedie_kernels::enable_avx2_fma() };
    }
}
