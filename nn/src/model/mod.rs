//! Network descriptions: configurations, architectures, expected state_dicts, forward passes.

pub mod adm;
pub mod classifier;
pub mod config;
mod config_fields;
pub mod layers;
pub mod ncsnpp;
