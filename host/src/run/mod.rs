//! Running the sampler from the command line: plans from flags ([`plan`]), measurements
//! ([`measurement`]), the multi-batch, multi-thread chain runner ([`runner`]), progress
//! ([`progress`]), what a command may write and how ([`output_policy`]), output encodings
//! ([`output`]) written chain by chain ([`stream`]), signals ([`interrupt`]), memory estimates ([`memory`]), and splitting a
//! run into shards ([`shard`], [`manifest`]).

pub mod aggregate;
pub mod device;
pub mod interrupt;
pub mod manifest;
pub mod measurement;
pub mod memory;
pub mod output;
pub mod output_policy;
pub mod plan;
pub mod progress;
pub mod runner;
pub mod shard;
pub mod stream;
