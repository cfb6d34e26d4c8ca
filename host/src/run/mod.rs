//! Running the sampler from the command line: plans from flags ([`plan`]), measurements
//! ([`measurement`]), the multi-batch, multi-thread chain runner ([`runner`]), progress
//! ([`progress`]) and all-or-nothing output files ([`output`]).

pub mod device;
pub mod measurement;
pub mod output;
pub mod plan;
pub mod progress;
pub mod runner;
