//! Shared helpers of the cross-crate tests: closed-form denoisers and statistics.
