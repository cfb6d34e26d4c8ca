//! Running the sampler from the command line: plans from flags ([`plan`]), measurements
//! ([`measurement`]), the multi-batch, multi-thread chain runner ([`runner`]), progress
//! ([`progress`]), all-or-nothing output files ([`output`]) written chain by chain
//! ([`stream`]), and splitting a run into shards ([`shard`], [`manifest`]).

pub mod aggregate;
pub mod device;
pub mod manifest;
pub mod measurement;
pub mod output;
pub mod plan;
pub mod progress;
pub mod runner;
pub mod shard;
pub mod stream;
