//! The ADM forward pass (adm_unet.md §6). Placeholder: checks its arguments, then reports
//! that the numeric forward is not implemented yet (the next step replaces the body).

use anyhow::{bail, Result};

use super::arch::AdmArch;
use crate::weights::Weights;

/// A batch of network inputs, NCHW.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// `[batch, in_channels, height, width]`, row-major.
    pub x: &'a [f32],
    /// One timestep per sample (0..999, fractional allowed).
    pub t: &'a [f32],
    /// Number of samples.
    pub batch: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
}

/// Runs the network: `out` is `[batch, out_channels, height, width]`.
pub fn forward(
    arch: &AdmArch,
    weights: &Weights,
    input: &Input<'_>,
    threads: usize,
    out: &mut [f32],
) -> Result<()> {
    let c = &arch.config;
    let (n, h, w) = (input.batch, input.height, input.width);
    arch.check_input_size(h, w)?;
    if input.x.len() != n * c.in_channels * h * w {
        bail!(
            "forward: x has {} values, expected {n}x{}x{h}x{w}",
            input.x.len(),
            c.in_channels
        );
    }
    if input.t.len() != n {
        bail!(
            "forward: t has {} values, expected one per sample ({n})",
            input.t.len()
        );
    }
    if out.len() != n * c.out_channels * h * w {
        bail!(
            "forward: out has {} values, expected {n}x{}x{h}x{w}",
            out.len(),
            c.out_channels
        );
    }
    if threads == 0 {
        bail!("forward: threads must be at least 1");
    }
    let _ = weights;
    bail!("the ADM forward pass is not implemented yet")
}
