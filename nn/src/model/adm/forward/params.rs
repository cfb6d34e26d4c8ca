//! The ADM parameters resolved by PyTorch name: one [`LayerP`] per layer, grouped in
//! [`BlockP`]s, and the convolution forms chosen for one input size.

use super::*;

#[derive(Debug)]
pub(in crate::model::adm) struct ResP<'w> {
    pub(in crate::model::adm) c_in: usize,
    pub(in crate::model::adm) c_out: usize,
    pub(in crate::model::adm) updown: Updown,
    pub(in crate::model::adm) scale_shift: bool,
    pub(in crate::model::adm) in_norm: NormP<'w>,
    pub(in crate::model::adm) in_conv: ConvP<'w>,
    pub(in crate::model::adm) emb: LinearP<'w>,
    pub(in crate::model::adm) out_norm: NormP<'w>,
    pub(in crate::model::adm) out_conv: ConvP<'w>,
    pub(in crate::model::adm) skip: Option<ConvP<'w>>,
}

#[derive(Debug)]
pub(in crate::model::adm) struct AttnP<'w> {
    pub(in crate::model::adm) channels: usize,
    pub(in crate::model::adm) heads: usize,
    pub(in crate::model::adm) order: k::QkvOrder,
    pub(in crate::model::adm) norm: NormP<'w>,
    pub(in crate::model::adm) qkv: ConvP<'w>,
    pub(in crate::model::adm) proj: ConvP<'w>,
}

#[derive(Debug)]
pub(in crate::model::adm) enum Op<'w> {
    Conv(ConvP<'w>),
    Res(Box<ResP<'w>>),
    Attn(Box<AttnP<'w>>),
    Down {
        channels: usize,
        conv: Option<ConvP<'w>>,
    },
    Up {
        channels: usize,
        conv: Option<ConvP<'w>>,
    },
}

/// A layer: its PyTorch name, the downsample factor of its input, what it does.
#[derive(Debug)]
pub(in crate::model::adm) struct LayerP<'w> {
    pub(in crate::model::adm) name: String,
    pub(in crate::model::adm) ds: usize,
    pub(in crate::model::adm) op: Op<'w>,
}

#[derive(Debug)]
pub(in crate::model::adm) struct BlockP<'w> {
    pub(in crate::model::adm) name: String,
    pub(in crate::model::adm) layers: Vec<LayerP<'w>>,
    /// Channels of the decoder state entering an output block (before the concatenation).
    pub(in crate::model::adm) c_state: usize,
    pub(in crate::model::adm) skip_channels: usize,
    pub(in crate::model::adm) ds_in: usize,
    pub(in crate::model::adm) c_out: usize,
    pub(in crate::model::adm) ds_out: usize,
}

/// Resolves the ADM's layers by their PyTorch names.
struct Resolver<'w> {
    params: ParamResolver<'w>,
}

impl<'w> Resolver<'w> {
    fn norm(&self, p: &str, c: usize) -> Result<NormP<'w>> {
        self.params.norm(p, c, GROUPNORM_GROUPS, GROUPNORM_EPS)
    }

    fn conv(&self, p: &str, conv: Conv2d) -> Result<ConvP<'w>> {
        self.params.conv(p, conv)
    }

    fn linear(&self, p: &str, in_features: usize, out_features: usize) -> Result<LinearP<'w>> {
        self.params.linear(p, in_features, out_features)
    }

    fn layer(&self, layer: &Layer) -> Result<LayerP<'w>> {
        let name = layer.name().to_string();
        let (ds, op) = match layer {
            Layer::Conv(c) => (c.ds, Op::Conv(self.conv(&name, conv3x3(c.c_in, c.c_out))?)),
            Layer::Res(r) => {
                let emb_out = if r.scale_shift { 2 * r.c_out } else { r.c_out };
                let skip = if r.c_in != r.c_out {
                    let conv = Conv2d {
                        c_in: r.c_in,
                        c_out: r.c_out,
                        kernel: 1,
                        stride: 1,
                        pad: 0,
                    };
                    Some(self.conv(&format!("{name}.skip_connection"), conv)?)
                } else {
                    None
                };
                let res = ResP {
                    c_in: r.c_in,
                    c_out: r.c_out,
                    updown: r.updown,
                    scale_shift: r.scale_shift,
                    in_norm: self.norm(&format!("{name}.in_layers.0"), r.c_in)?,
                    in_conv: self.conv(&format!("{name}.in_layers.2"), conv3x3(r.c_in, r.c_out))?,
                    emb: self.linear(&format!("{name}.emb_layers.1"), r.emb_dim, emb_out)?,
                    out_norm: self.norm(&format!("{name}.out_layers.0"), r.c_out)?,
                    out_conv: self
                        .conv(&format!("{name}.out_layers.3"), conv3x3(r.c_out, r.c_out))?,
                    skip,
                };
                (r.ds, Op::Res(Box::new(res)))
            }
            Layer::Attention(a) => {
                let c = a.channels;
                let one = |c_out| Conv2d {
                    c_in: c,
                    c_out,
                    kernel: 1,
                    stride: 1,
                    pad: 0,
                };
                let attn = AttnP {
                    channels: c,
                    heads: a.heads,
                    order: match a.order {
                        QkvOrder::Legacy => k::QkvOrder::Legacy,
                        QkvOrder::New => k::QkvOrder::New,
                    },
                    norm: self.norm(&format!("{name}.norm"), c)?,
                    qkv: self.conv(&format!("{name}.qkv"), one(3 * c))?,
                    proj: self.conv(&format!("{name}.proj_out"), one(c))?,
                };
                (a.ds, Op::Attn(Box::new(attn)))
            }
            Layer::Downsample(r) => {
                let conv = if r.use_conv {
                    let stride2 = Conv2d {
                        stride: 2,
                        ..conv3x3(r.channels, r.channels)
                    };
                    Some(self.conv(&format!("{name}.op"), stride2)?)
                } else {
                    None
                };
                (
                    r.ds,
                    Op::Down {
                        channels: r.channels,
                        conv,
                    },
                )
            }
            Layer::Upsample(r) => {
                let conv = if r.use_conv {
                    Some(self.conv(&format!("{name}.conv"), conv3x3(r.channels, r.channels))?)
                } else {
                    None
                };
                (
                    r.ds,
                    Op::Up {
                        channels: r.channels,
                        conv,
                    },
                )
            }
        };
        Ok(LayerP { name, ds, op })
    }

    fn block(&self, b: &Block) -> Result<BlockP<'w>> {
        Ok(BlockP {
            name: b.name.clone(),
            layers: b
                .layers
                .iter()
                .map(|l| self.layer(l))
                .collect::<Result<_>>()?,
            c_state: b.c_in - b.skip_channels,
            skip_channels: b.skip_channels,
            ds_in: b.ds_in,
            c_out: b.c_out,
            ds_out: b.ds_out,
        })
    }
}

/// Every tensor of an [`AdmArch`] resolved by name and size check, in layer order: the CPU
/// forward runs from it and the device graph (`super::device`) uploads it.
pub(in crate::model::adm) struct Resolved<'w> {
    pub(in crate::model::adm) time: [LinearP<'w>; 2],
    pub(in crate::model::adm) input_blocks: Vec<BlockP<'w>>,
    pub(in crate::model::adm) middle: BlockP<'w>,
    pub(in crate::model::adm) output_blocks: Vec<BlockP<'w>>,
    pub(in crate::model::adm) out_norm: NormP<'w>,
    pub(in crate::model::adm) out_conv: ConvP<'w>,
}

/// Resolves every weight of `arch` (one clear error naming the first missing or mis-sized
/// tensor).
pub(in crate::model::adm) fn resolve<'w>(
    arch: &AdmArch,
    weights: &'w Weights,
) -> Result<Resolved<'w>> {
    let c = &arch.config;
    let r = Resolver {
        params: ParamResolver { weights },
    };
    let ted = arch.time_embed_dim;
    let blocks = |bs: &[Block]| bs.iter().map(|b| r.block(b)).collect::<Result<Vec<_>>>();
    Ok(Resolved {
        time: [
            r.linear("time_embed.0", c.model_channels, ted)?,
            r.linear("time_embed.2", ted, ted)?,
        ],
        input_blocks: blocks(&arch.input_blocks)?,
        middle: r.block(&arch.middle_block)?,
        output_blocks: blocks(&arch.output_blocks)?,
        out_norm: r.norm("out.0", arch.out.channels)?,
        out_conv: r.conv("out.2", conv3x3(arch.out.channels, arch.out.out_channels))?,
    })
}

impl Resolved<'_> {
    /// Calls `f(name, conv, h, w)` for every convolution with the size of its input map,
    /// in layer order, for `height`×`width` inputs.
    fn for_each_conv(&mut self, height: usize, width: usize, f: &mut ConvVisit) -> Result<()> {
        let blocks = self
            .input_blocks
            .iter_mut()
            .chain([&mut self.middle])
            .chain(self.output_blocks.iter_mut());
        for l in blocks.flat_map(|b| b.layers.iter_mut()) {
            let (h, w) = (height / l.ds, width / l.ds);
            let n = &l.name;
            match &mut l.op {
                Op::Conv(c) => f(n, c, h, w)?,
                Op::Res(r) => {
                    let (ho, wo) = r.updown.resampled(h, w);
                    f(&format!("{n}.in_layers.2"), &mut r.in_conv, ho, wo)?;
                    f(&format!("{n}.out_layers.3"), &mut r.out_conv, ho, wo)?;
                    if let Some(s) = &mut r.skip {
                        f(&format!("{n}.skip_connection"), s, ho, wo)?;
                    }
                }
                Op::Attn(a) => {
                    f(&format!("{n}.qkv"), &mut a.qkv, h, w)?;
                    f(&format!("{n}.proj_out"), &mut a.proj, h, w)?;
                }
                Op::Down { conv: Some(c), .. } => f(&format!("{n}.op"), c, h, w)?,
                Op::Up { conv: Some(c), .. } => f(&format!("{n}.conv"), c, 2 * h, 2 * w)?,
                Op::Down { .. } | Op::Up { .. } => {}
            }
        }
        f("out.2", &mut self.out_conv, height, width)
    }

    /// Sets every convolution's form by `policy` ([`layers::set_forms`]: given a cache,
    /// their Winograd weights transformed) and lists the 3×3 'same' ones.
    pub(super) fn set_forms(
        &mut self,
        height: usize,
        width: usize,
        policy: ConvPolicy,
        cache: Option<usize>,
    ) -> Result<Vec<LayerForm>> {
        layers::set_forms(policy, cache, &mut |f| self.for_each_conv(height, width, f))
    }
}

/// The form of every 3×3 'same' convolution of `arch` under `policy` for `height`×`width`
/// inputs, in layer order (what [`AdmModel::forms`] will be), without transforming weights.
pub fn conv_forms(
    arch: &AdmArch,
    weights: &Weights,
    height: usize,
    width: usize,
    policy: ConvPolicy,
) -> Result<Vec<LayerForm>> {
    arch.check_input_size(height, width)?;
    resolve(arch, weights)?.set_forms(height, width, policy, None)
}
