//! `AdmArch`: the layer list of guided-diffusion's `UNetModel`, derived from an `AdmConfig`
//! with the construction rule of `UNetModel.__init__` (adm_unet.md §6), under the PyTorch
//! module names (`input_blocks.3.1`, …). Channel counts and downsample factors are fixed here;
//! resolutions follow from an input size (H/ds, W/ds).

use anyhow::{bail, Result};
use tweedie_kernels::Conv2d;

use super::config::AdmConfig;

/// GroupNorm32: every normalised channel count must be a multiple of this.
pub const GROUPNORM_GROUPS: usize = 32;
/// GroupNorm32's epsilon.
pub const GROUPNORM_EPS: f32 = 1e-5;
/// `timestep_embedding`'s max_period.
pub const MAX_PERIOD: f32 = 10000.0;

/// The U-Net's 'same' 3×3 convolution.
pub fn conv3x3(c_in: usize, c_out: usize) -> Conv2d {
    Conv2d {
        c_in,
        c_out,
        kernel: 3,
        stride: 1,
        pad: 1,
    }
}

/// The U-Net's 1×1 convolution (ResBlock skips, attention's qkv and projection).
pub fn conv1x1(c_in: usize, c_out: usize) -> Conv2d {
    Conv2d {
        c_in,
        c_out,
        kernel: 1,
        stride: 1,
        pad: 0,
    }
}

/// The whole network: time MLP, encoder, middle, decoder, output head.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmArch {
    /// The configuration this was derived from.
    pub config: AdmConfig,
    /// `4 · model_channels`: width of the time MLP and of `emb` fed to every ResBlock.
    pub time_embed_dim: usize,
    /// `input_blocks.0 …`; block 0 is the stem conv.
    pub input_blocks: Vec<Block>,
    /// `middle_block`: ResBlock, AttentionBlock, ResBlock.
    pub middle_block: Block,
    /// `output_blocks.0 …`; each starts by concatenating [h, popped skip].
    pub output_blocks: Vec<Block>,
    /// `out`: GroupNorm, SiLU, 3x3 conv to `out_channels`.
    pub out: OutHead,
}

/// One `TimestepEmbedSequential`: layers run in order, ResBlocks also receive `emb`.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// PyTorch prefix, e.g. `input_blocks.3` or `middle_block`.
    pub name: String,
    /// The layers, named `<block>.<index>`.
    pub layers: Vec<Layer>,
    /// Channels entering the first layer (after the skip concatenation for output blocks).
    pub c_in: usize,
    /// Channels leaving the block.
    pub c_out: usize,
    /// Output blocks: channels of the encoder activation concatenated *second*; 0 otherwise.
    pub skip_channels: usize,
    /// Downsample factor of the block input (resolution = input size / ds).
    pub ds_in: usize,
    /// Downsample factor of the block output.
    pub ds_out: usize,
}

/// A layer of a block.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// The stem `input_blocks.0.0`: 3x3 conv, padding 1.
    Conv(Conv3x3),
    /// A `ResBlock`, possibly resampling (resblock_updown).
    Res(ResBlock),
    /// An `AttentionBlock`.
    Attention(Attention),
    /// A standalone `Downsample` (resblock_updown false).
    Downsample(Resample),
    /// A standalone `Upsample` (resblock_updown false).
    Upsample(Resample),
}

/// 3x3 convolution, stride 1, padding 1 (the stem).
#[derive(Debug, Clone, PartialEq)]
pub struct Conv3x3 {
    /// PyTorch prefix (`input_blocks.0.0`).
    pub name: String,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Downsample factor of its input.
    pub ds: usize,
}

/// Where a ResBlock resamples (between SiLU and the first conv, and on the skip path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updown {
    /// Same resolution.
    None,
    /// Nearest-neighbour 2x.
    Up,
    /// 2x2 average pool.
    Down,
}

impl Updown {
    /// The map size after resampling an h × w map.
    pub fn resampled(self, h: usize, w: usize) -> (usize, usize) {
        match self {
            Updown::None => (h, w),
            Updown::Up => (2 * h, 2 * w),
            Updown::Down => (h / 2, w / 2),
        }
    }
}

/// guided-diffusion `ResBlock` (adm_unet.md §4).
#[derive(Debug, Clone, PartialEq)]
pub struct ResBlock {
    /// PyTorch prefix, e.g. `output_blocks.1.0`.
    pub name: String,
    /// Input channels (GroupNorm of `in_layers.0`).
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Width of `emb` (the time MLP output).
    pub emb_dim: usize,
    /// FiLM: `emb_layers` gives 2·c_out (scale, shift); else c_out added before `out_layers`.
    pub scale_shift: bool,
    /// Resampling inside the block.
    pub updown: Updown,
    /// Downsample factor of its input.
    pub ds: usize,
}

/// Order of the qkv channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvOrder {
    /// `QKVAttentionLegacy`: split heads first, each head holds [q|k|v].
    Legacy,
    /// `QKVAttention`: split q|k|v first, then heads.
    New,
}

/// guided-diffusion `AttentionBlock` (adm_unet.md §5).
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    /// PyTorch prefix, e.g. `middle_block.1`.
    pub name: String,
    /// Channels C.
    pub channels: usize,
    /// Number of heads.
    pub heads: usize,
    /// Channel order of the qkv projection.
    pub order: QkvOrder,
    /// Downsample factor of its input (tokens T = (H/ds)·(W/ds)).
    pub ds: usize,
}

/// guided-diffusion `Downsample` / `Upsample` (factor 2).
#[derive(Debug, Clone, PartialEq)]
pub struct Resample {
    /// PyTorch prefix, e.g. `input_blocks.3.0`.
    pub name: String,
    /// Channels (in = out).
    pub channels: usize,
    /// With conv: Downsample is a 3x3 stride-2 pad-1 conv (`op`); Upsample is nearest 2x then a
    /// 3x3 pad-1 conv (`conv`). Without: 2x2 average pool / nearest 2x only.
    pub use_conv: bool,
    /// Downsample factor of its input.
    pub ds: usize,
}

/// The output head `out`: GroupNorm(`channels`), SiLU, 3x3 conv to `out_channels`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutHead {
    /// Channels in.
    pub channels: usize,
    /// Channels out (ε, then v when learn_sigma).
    pub out_channels: usize,
}

impl Layer {
    /// The layer's PyTorch prefix.
    pub fn name(&self) -> &str {
        match self {
            Layer::Conv(c) => &c.name,
            Layer::Res(r) => &r.name,
            Layer::Attention(a) => &a.name,
            Layer::Downsample(r) | Layer::Upsample(r) => &r.name,
        }
    }

    /// Downsample factor of the layer output.
    pub fn ds_out(&self) -> usize {
        match self {
            Layer::Conv(c) => c.ds,
            Layer::Res(r) => match r.updown {
                Updown::None => r.ds,
                Updown::Up => r.ds / 2,
                Updown::Down => r.ds * 2,
            },
            Layer::Attention(a) => a.ds,
            Layer::Downsample(r) => r.ds * 2,
            Layer::Upsample(r) => r.ds / 2,
        }
    }

    /// Channels of the layer output.
    pub fn c_out(&self) -> usize {
        match self {
            Layer::Conv(c) => c.c_out,
            Layer::Res(r) => r.c_out,
            Layer::Attention(a) => a.channels,
            Layer::Downsample(r) | Layer::Upsample(r) => r.channels,
        }
    }
}

impl Block {
    fn new(
        name: String,
        layers: Vec<Layer>,
        c_in: usize,
        skip_channels: usize,
        ds_in: usize,
    ) -> Block {
        let last = layers.last();
        let c_out = last.map_or(c_in, Layer::c_out);
        let ds_out = last.map_or(ds_in, Layer::ds_out);
        Block {
            name,
            layers,
            c_in,
            c_out,
            skip_channels,
            ds_in,
            ds_out,
        }
    }
}

/// Accumulates blocks while walking `UNetModel.__init__`'s loops.
struct Builder<'a> {
    config: &'a AdmConfig,
    emb_dim: usize,
    attention_ds: Vec<usize>,
}

impl Builder<'_> {
    fn res(
        &self,
        name: String,
        c_in: usize,
        c_out: usize,
        updown: Updown,
        ds: usize,
    ) -> Result<Layer> {
        check_groupnorm(&name, c_in)?;
        check_groupnorm(&name, c_out)?;
        Ok(Layer::Res(ResBlock {
            name,
            c_in,
            c_out,
            emb_dim: self.emb_dim,
            scale_shift: self.config.use_scale_shift_norm,
            updown,
            ds,
        }))
    }

    /// `AttentionBlock(ch, num_heads=…, num_head_channels=…)`: channels per head win.
    fn attention(
        &self,
        name: String,
        channels: usize,
        num_heads: usize,
        ds: usize,
    ) -> Result<Layer> {
        check_groupnorm(&name, channels)?;
        let heads = match self.config.num_head_channels {
            Some(per_head) if channels.is_multiple_of(per_head) => channels / per_head,
            Some(per_head) => bail!(
                "{name}: {channels} channels are not divisible by num_head_channels {per_head}"
            ),
            None if channels.is_multiple_of(num_heads) => num_heads,
            None => bail!("{name}: {channels} channels are not divisible into {num_heads} heads"),
        };
        let order = if self.config.use_new_attention_order {
            QkvOrder::New
        } else {
            QkvOrder::Legacy
        };
        Ok(Layer::Attention(Attention {
            name,
            channels,
            heads,
            order,
            ds,
        }))
    }

    fn wants_attention(&self, ds: usize) -> bool {
        self.attention_ds.contains(&ds)
    }
}

fn check_groupnorm(name: &str, channels: usize) -> Result<()> {
    if !channels.is_multiple_of(GROUPNORM_GROUPS) {
        bail!("{name}: GroupNorm({GROUPNORM_GROUPS}) needs a channel count divisible by {GROUPNORM_GROUPS}, got {channels}");
    }
    Ok(())
}

impl AdmArch {
    /// Derives the layer list exactly as `UNetModel.__init__` builds its modules.
    pub fn new(config: &AdmConfig) -> Result<AdmArch> {
        let c = config;
        let b = Builder {
            config: c,
            emb_dim: 4 * c.model_channels,
            attention_ds: c.attention_ds(),
        };
        let levels = c.channel_mult.len();
        // Each level halves the map: the image must halve cleanly down to the last level
        // (guided-diffusion's construction), which also bounds the level count.
        let max_ds = u32::try_from(levels.saturating_sub(1))
            .ok()
            .and_then(|l| 1usize.checked_shl(l))
            .filter(|&ds| ds <= c.image_size && c.image_size.is_multiple_of(ds));
        if levels == 0 || max_ds.is_none() {
            bail!(
                "channel_mult: {levels} levels need image_size {} divisible by 2^{} (each level halves the map)",
                c.image_size,
                levels.saturating_sub(1)
            );
        }
        let mut ch = c.level_channels(0);
        if ch == 0 {
            bail!(
                "channel_mult: level 0 has no channels ({} · {})",
                c.channel_mult[0],
                c.model_channels
            );
        }
        let stem = Layer::Conv(Conv3x3 {
            name: "input_blocks.0.0".into(),
            c_in: c.in_channels,
            c_out: ch,
            ds: 1,
        });
        let mut input_blocks = vec![Block::new(
            "input_blocks.0".into(),
            vec![stem],
            c.in_channels,
            0,
            1,
        )];
        let mut skip_chans = vec![ch];
        let mut ds = 1;
        for level in 0..levels {
            let width = c.level_channels(level);
            for _ in 0..c.num_res_blocks {
                let name = format!("input_blocks.{}", input_blocks.len());
                let mut layers = vec![b.res(format!("{name}.0"), ch, width, Updown::None, ds)?];
                if b.wants_attention(ds) {
                    layers.push(b.attention(format!("{name}.1"), width, c.num_heads, ds)?);
                }
                input_blocks.push(Block::new(name, layers, ch, 0, ds));
                ch = width;
                skip_chans.push(ch);
            }
            if level != levels - 1 {
                let name = format!("input_blocks.{}", input_blocks.len());
                let layer = if c.resblock_updown {
                    b.res(format!("{name}.0"), ch, ch, Updown::Down, ds)?
                } else {
                    Layer::Downsample(Resample {
                        name: format!("{name}.0"),
                        channels: ch,
                        use_conv: c.conv_resample,
                        ds,
                    })
                };
                input_blocks.push(Block::new(name, vec![layer], ch, 0, ds));
                skip_chans.push(ch);
                ds *= 2;
            }
        }
        let middle = vec![
            b.res("middle_block.0".into(), ch, ch, Updown::None, ds)?,
            b.attention("middle_block.1".into(), ch, c.num_heads, ds)?,
            b.res("middle_block.2".into(), ch, ch, Updown::None, ds)?,
        ];
        let middle_block = Block::new("middle_block".into(), middle, ch, 0, ds);
        let mut output_blocks = Vec::new();
        for level in (0..levels).rev() {
            let width = c.level_channels(level);
            for i in 0..=c.num_res_blocks {
                let name = format!("output_blocks.{}", output_blocks.len());
                let Some(skip) = skip_chans.pop() else {
                    bail!("internal: encoder skip stack exhausted at {name}");
                };
                let (c_in, block_ds) = (ch + skip, ds);
                let mut layers = vec![b.res(format!("{name}.0"), c_in, width, Updown::None, ds)?];
                ch = width;
                if b.wants_attention(ds) {
                    layers.push(b.attention(
                        format!("{name}.{}", layers.len()),
                        ch,
                        c.num_heads_upsample,
                        ds,
                    )?);
                }
                if level > 0 && i == c.num_res_blocks {
                    let lname = format!("{name}.{}", layers.len());
                    layers.push(if c.resblock_updown {
                        b.res(lname, ch, ch, Updown::Up, ds)?
                    } else {
                        Layer::Upsample(Resample {
                            name: lname,
                            channels: ch,
                            use_conv: c.conv_resample,
                            ds,
                        })
                    });
                    ds /= 2;
                }
                output_blocks.push(Block::new(name, layers, c_in, skip, block_ds));
            }
        }
        check_groupnorm("out.0", ch)?;
        let out = OutHead {
            channels: ch,
            out_channels: c.out_channels,
        };
        Ok(AdmArch {
            config: c.clone(),
            time_embed_dim: b.emb_dim,
            input_blocks,
            middle_block,
            output_blocks,
            out,
        })
    }

    /// All blocks in forward order: input blocks, middle block, output blocks.
    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.input_blocks
            .iter()
            .chain(std::iter::once(&self.middle_block))
            .chain(self.output_blocks.iter())
    }

    /// H and W must be multiples of this (one halving per level boundary, then doubling back).
    pub fn size_multiple(&self) -> usize {
        1 << (self.config.channel_mult.len() - 1)
    }

    /// Refuses an input size the network cannot run on.
    pub fn check_input_size(&self, h: usize, w: usize) -> Result<()> {
        let m = self.size_multiple();
        if h == 0 || w == 0 || !h.is_multiple_of(m) || !w.is_multiple_of(m) {
            bail!(
                "input size {h}x{w}: height and width must be positive multiples of {m} \
                 ({} levels)",
                self.config.channel_mult.len()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(layer: &Layer) -> &ResBlock {
        match layer {
            Layer::Res(r) => r,
            other => panic!("expected a ResBlock, got {other:?}"),
        }
    }

    #[test]
    fn ffhq_block_table() {
        // adm_unet.md §6 block list and §7 ResBlock prefixes.
        let arch = AdmArch::new(&AdmConfig::ffhq256()).unwrap();
        assert_eq!(arch.time_embed_dim, 512);
        assert_eq!(
            (arch.input_blocks.len(), arch.output_blocks.len()),
            (12, 12)
        );
        let ib5 = res(&arch.input_blocks[5].layers[0]);
        assert_eq!(
            (ib5.name.as_str(), ib5.c_in, ib5.c_out),
            ("input_blocks.5.0", 128, 256)
        );
        let ib10 = res(&arch.input_blocks[10].layers[0]);
        assert_eq!((ib10.updown, ib10.ds, ib10.c_out), (Updown::Down, 16, 512));
        match &arch.input_blocks[9].layers[1] {
            Layer::Attention(a) => assert_eq!(
                (a.heads, a.channels, a.ds, a.order),
                (8, 512, 16, QkvOrder::Legacy)
            ),
            other => panic!("{other:?}"),
        }
        // output_blocks.3: R 768→512, A 512, R↑ 512, 16→32.
        let ob3 = &arch.output_blocks[3];
        assert_eq!(
            (
                ob3.c_in,
                ob3.skip_channels,
                ob3.c_out,
                ob3.ds_in,
                ob3.ds_out
            ),
            (768, 256, 512, 16, 8)
        );
        assert!(matches!(&ob3.layers[1], Layer::Attention(a) if a.name == "output_blocks.3.1"));
        assert_eq!(res(&ob3.layers[2]).updown, Updown::Up);
        let ob9 = &arch.output_blocks[9];
        assert_eq!(
            (res(&ob9.layers[0]).c_in, res(&ob9.layers[1]).name.as_str()),
            (256, "output_blocks.9.1")
        );
        assert_eq!(arch.output_blocks[11].ds_out, 1);
        assert_eq!((arch.out.channels, arch.out.out_channels), (128, 6));
        assert_eq!(arch.size_multiple(), 32);
        assert!(arch.check_input_size(64, 96).is_ok());
        assert!(arch.check_input_size(48, 64).is_err());
    }

    #[test]
    fn variant_uses_standalone_resamplers() {
        // adm_variant README "Block layout".
        let config =
            AdmConfig::from_json(&json!({"arch": "adm", "image_size": 32, "num_channels": 32,
            "num_res_blocks": 2, "channel_mult": "1,2,2,2", "attention_resolutions": "16,8",
            "num_heads": 2, "use_new_attention_order": true, "in_channels": 1}))
            .unwrap();
        let arch = AdmArch::new(&config).unwrap();
        assert!(
            matches!(&arch.input_blocks[3].layers[0], Layer::Downsample(r) if r.use_conv && r.ds == 1)
        );
        assert!(
            matches!(&arch.output_blocks[5].layers[2], Layer::Upsample(r) if r.name == "output_blocks.5.2")
        );
        assert!(
            matches!(&arch.output_blocks[2].layers[1], Layer::Upsample(r) if r.name == "output_blocks.2.1")
        );
        assert_eq!(arch.output_blocks[8].c_in, 96);
        assert!(
            matches!(&arch.middle_block.layers[1], Layer::Attention(a) if a.heads == 2 && a.ds == 8)
        );
    }

    #[test]
    fn impossible_widths_are_refused_by_name() {
        let config =
            AdmConfig::from_json(&json!({"arch": "adm", "image_size": 32, "num_channels": 48,
            "num_res_blocks": 1, "channel_mult": "1,2"}))
            .unwrap();
        let e = format!("{:#}", AdmArch::new(&config).unwrap_err());
        assert!(
            e.contains("input_blocks.1.0") && e.contains("GroupNorm"),
            "{e}"
        );
        let config =
            AdmConfig::from_json(&json!({"arch": "adm", "image_size": 32, "num_channels": 32,
            "num_res_blocks": 1, "channel_mult": "1,2", "num_head_channels": 24}))
            .unwrap();
        let e = format!("{:#}", AdmArch::new(&config).unwrap_err());
        assert!(
            e.contains("input_blocks.3.1") && e.contains("num_head_channels"),
            "{e}"
        );
    }
}
