//! Network descriptions: configurations, architectures, expected state_dicts, forward passes.

pub mod adm;
pub mod classifier;
pub mod config;
pub mod layers;
pub mod ncsnpp;
