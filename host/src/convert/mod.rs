//! `host convert`: PyTorch checkpoints (`torch.save` zip format) → self-describing
//! safetensors weights (formats.md §3).
//!
//! - [`zip`]: a bounds-checked reader for the stored (uncompressed) zip torch writes.
//! - [`pickle`]: a pickle interpreter that executes nothing; only tensor-checkpoint opcodes
//!   and an allow-list of globals are accepted, everything else is refused by name.
//! - [`checkpoint`]: the archive + pickle as a state_dict or a score_sde checkpoint; tensor
//!   values read one at a time, strided views gathered.
//! - [`export`]: weights set, config, strict name/shape checks, dtype conversion, metadata,
//!   atomic verified write.

pub mod checkpoint;
pub mod export;
pub mod pickle;
pub mod zip;

pub use checkpoint::{Checkpoint, Contents, Layout};
pub use export::{convert, verify_written, ConvertOptions, Converted};
