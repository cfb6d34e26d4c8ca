//! Multiply-add counts of the NCSN++ forward for one sample, counted as ncsnpp.md §7 does:
//! convolutions (3×3 and 1×1, bias excluded), NIN projections, attention matmuls (QKᵀ and AV),
//! Linears (temb MLP and every Dense_0). GroupNorm, SiLU, FIR resampling and additions are
//! not counted.

use super::arch::{Module, NcsnppArch};

/// MACs by kind of layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Macs {
    /// 2-D convolutions (ResBlock convs and shortcuts, input conv, heads, Combine).
    pub conv: u64,
    /// NIN projections (q, k, v, output) of attention.
    pub nin: u64,
    /// QKᵀ and AV.
    pub attention: u64,
    /// temb MLP and the ResBlocks' Dense_0.
    pub linear: u64,
}

impl Macs {
    /// The sum of all parts.
    pub fn total(&self) -> u64 {
        self.conv + self.nin + self.attention + self.linear
    }
}

/// MACs of a k×k convolution producing a `res`×`res` map.
fn conv(res: usize, c_in: usize, c_out: usize, k: usize) -> u64 {
    (res * res) as u64 * (c_in * c_out * k * k) as u64
}

impl NcsnppArch {
    /// MACs of one forward pass at `image_size` for one sample, by kind.
    pub fn macs_by_kind(&self) -> Macs {
        let mut m = Macs::default();
        for module in &self.modules {
            match *module {
                Module::Fourier { .. } | Module::HeadNorm { .. } => {}
                Module::Linear { c_in, c_out } => m.linear += (c_in * c_out) as u64,
                Module::Conv3x3 { c_in, c_out, res } => m.conv += conv(res, c_in, c_out, 3),
                Module::Combine { c_in, c_out, res } => m.conv += conv(res, c_in, c_out, 1),
                Module::Res(r) => {
                    let ro = r.res_out();
                    m.conv += conv(ro, r.c_in, r.c_out, 3) + conv(ro, r.c_out, r.c_out, 3);
                    if r.has_conv2() {
                        m.conv += conv(ro, r.c_in, r.c_out, 1);
                    }
                    m.linear += (self.temb_dim * r.c_out) as u64;
                }
                Module::Attn { channels, res } => {
                    let (t, c) = ((res * res) as u64, channels as u64);
                    m.nin += 4 * t * c * c;
                    m.attention += 2 * t * t * c;
                }
            }
        }
        m
    }

    /// Multiply-adds of one forward pass for one sample (multiply by the batch size).
    pub fn macs(&self) -> u64 {
        self.macs_by_kind().total()
    }
}

#[cfg(test)]
mod tests {
    use crate::model::ncsnpp::{NcsnppArch, NcsnppConfig};

    #[test]
    fn ffhq_costs_match_the_hook_counts() {
        // ncsnpp.md §7, counted by hooks on the real build.
        let arch = NcsnppArch::new(&NcsnppConfig::ffhq256()).unwrap();
        let m = arch.macs_by_kind();
        assert_eq!(m.conv, 265_575_424_000);
        assert_eq!(m.nin, 205_520_896);
        assert_eq!(m.attention, 100_794_368);
        assert_eq!(m.linear, 5_963_776);
        assert_eq!(arch.macs(), 265_887_703_040);
    }
}
