//! Multiply-add counts of the ADM forward, counted as adm_unet.md §8 does: convolutions
//! (bias excluded), attention matmuls (QKᵀ and AV), Linears; norms, SiLU, resampling and
//! additions are free.

use super::arch::{AdmArch, Block, Layer, Updown};

/// MACs of a k×k convolution producing an `h`×`w` map.
fn conv(h: usize, w: usize, c_in: usize, c_out: usize, k: usize) -> u64 {
    (h * w) as u64 * (c_out * c_in * k * k) as u64
}

impl Layer {
    /// MACs for one sample whose network input is `h`×`w`.
    pub fn macs(&self, h: usize, w: usize) -> u64 {
        match self {
            Layer::Conv(c) => conv(h / c.ds, w / c.ds, c.c_in, c.c_out, 3),
            Layer::Res(r) => {
                let ds = match r.updown {
                    Updown::None => r.ds,
                    Updown::Up => r.ds / 2,
                    Updown::Down => r.ds * 2,
                };
                let (ho, wo) = (h / ds, w / ds);
                let emb_out = if r.scale_shift { 2 * r.c_out } else { r.c_out };
                let skip = if r.c_in != r.c_out {
                    conv(ho, wo, r.c_in, r.c_out, 1)
                } else {
                    0
                };
                conv(ho, wo, r.c_in, r.c_out, 3)
                    + (r.emb_dim * emb_out) as u64
                    + conv(ho, wo, r.c_out, r.c_out, 3)
                    + skip
            }
            Layer::Attention(a) => {
                let (t, c) = ((h / a.ds * (w / a.ds)) as u64, a.channels as u64);
                // qkv and proj_out projections, then QKᵀ and AV (C·T² each over all heads).
                t * 3 * c * c + t * c * c + 2 * c * t * t
            }
            Layer::Downsample(r) if r.use_conv => {
                conv(h / r.ds / 2, w / r.ds / 2, r.channels, r.channels, 3)
            }
            Layer::Upsample(r) if r.use_conv => {
                conv(h / r.ds * 2, w / r.ds * 2, r.channels, r.channels, 3)
            }
            Layer::Downsample(_) | Layer::Upsample(_) => 0,
        }
    }
}

impl Block {
    /// MACs of this block for one sample whose network input is `h`×`w`.
    pub fn macs(&self, h: usize, w: usize) -> u64 {
        self.layers.iter().map(|l| l.macs(h, w)).sum()
    }
}

impl AdmArch {
    /// MACs of the time MLP for one sample.
    pub fn time_embed_macs(&self) -> u64 {
        let (mc, ted) = (
            self.config.model_channels as u64,
            self.time_embed_dim as u64,
        );
        mc * ted + ted * ted
    }

    /// MACs of the output head for one sample.
    pub fn out_macs(&self, h: usize, w: usize) -> u64 {
        conv(h, w, self.out.channels, self.out.out_channels, 3)
    }

    /// Multiply-adds of one forward pass for one `h`×`w` sample (multiply by the batch size).
    pub fn macs(&self, h: usize, w: usize) -> u64 {
        let blocks: u64 = self.blocks().map(|b| b.macs(h, w)).sum();
        self.time_embed_macs() + blocks + self.out_macs(h, w)
    }
}

#[cfg(test)]
mod tests {
    use crate::model::adm::{AdmArch, AdmConfig};

    fn gmac(x: u64) -> f64 {
        x as f64 / 1e9
    }

    fn assert_rounds_to(x: u64, expect: f64, decimals: i32) {
        let scale = 10f64.powi(decimals);
        assert_eq!(
            (gmac(x) * scale).round() / scale,
            expect,
            "{} G MAC",
            gmac(x)
        );
    }

    #[test]
    fn ffhq_costs_193_97_gmac_at_256_and_12_12_at_64() {
        // adm_unet.md §8 (measured with forward hooks and FlopCounterMode).
        let arch = AdmArch::new(&AdmConfig::ffhq256()).unwrap();
        assert_rounds_to(arch.macs(256, 256), 193.97, 2);
        assert_rounds_to(arch.macs(64, 64), 12.12, 2);
    }

    #[test]
    fn ffhq_per_block_costs_match_the_table() {
        // adm_unet.md §6 block table (GMAC at 256x256).
        let arch = AdmArch::new(&AdmConfig::ffhq256()).unwrap();
        let table = [
            (&arch.input_blocks[0], 0.226, 3),
            (&arch.input_blocks[1], 19.33, 2),
            (&arch.input_blocks[2], 4.83, 2),
            (&arch.input_blocks[5], 3.76, 2),
            (&arch.input_blocks[9], 1.28, 2),
            (&arch.middle_block, 0.68, 2),
            (&arch.output_blocks[1], 1.70, 2),
            (&arch.output_blocks[3], 6.78, 2),
            (&arch.output_blocks[7], 25.77, 2),
            (&arch.output_blocks[11], 31.14, 2),
        ];
        for (block, expect, decimals) in table {
            assert_rounds_to(block.macs(256, 256), expect, decimals);
        }
        assert_rounds_to(arch.out_macs(256, 256), 0.45, 2);
    }
}
