//! `NcsnppArch`: score_sde's `NCSNpp.__init__` construction rule (ncsnpp.md §3, §6) applied to
//! an [`NcsnppConfig`]: the `all_modules` list in index order (state_dict prefix
//! `all_modules.{i}`) and the program the forward pass walks (`NCSNpp.forward`'s loops,
//! unrolled once), so the forward never re-derives where skips and heads go.

use anyhow::{bail, Result};

use super::config::NcsnppConfig;

/// GroupNorm's epsilon everywhere in NCSN++ (not PyTorch's default 1e-5).
pub const GROUPNORM_EPS: f32 = 1e-6;

/// `min(channels // 4, 32)`: the group count of every NCSN++ GroupNorm.
pub fn groupnorm_groups(channels: usize) -> usize {
    (channels / 4).min(32)
}

/// Where a ResBlock resamples (after GroupNorm_0 + SiLU, and on the shortcut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updown {
    /// Same resolution.
    None,
    /// FIR upsampling ×2.
    Up,
    /// FIR downsampling ×2.
    Down,
}

/// `ResnetBlockBigGANpp` (ncsnpp.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResBlock {
    /// Input channels (GroupNorm_0).
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Width of the input feature map.
    pub res: usize,
    /// Resampling inside the block.
    pub updown: Updown,
}

impl ResBlock {
    /// The 1×1 shortcut `Conv_2` exists iff the width changes or the block resamples.
    pub fn has_conv2(&self) -> bool {
        self.c_in != self.c_out || self.updown != Updown::None
    }

    /// Width of the output feature map.
    pub fn res_out(&self) -> usize {
        match self.updown {
            Updown::None => self.res,
            Updown::Up => 2 * self.res,
            Updown::Down => self.res / 2,
        }
    }
}

/// One entry of `all_modules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    /// `GaussianFourierProjection` with `size` frequencies (output 2·size).
    Fourier {
        /// Number of frequencies (nf).
        size: usize,
    },
    /// `nn.Linear` of the temb MLP.
    Linear {
        /// Input features.
        c_in: usize,
        /// Output features.
        c_out: usize,
    },
    /// A 3×3 conv, padding 1, with bias: the input conv and the output heads.
    Conv3x3 {
        /// Input channels.
        c_in: usize,
        /// Output channels.
        c_out: usize,
        /// Feature-map width.
        res: usize,
    },
    /// `ResnetBlockBigGANpp`.
    Res(ResBlock),
    /// `AttnBlockpp`, single head.
    Attn {
        /// Channels C.
        channels: usize,
        /// Feature-map width.
        res: usize,
    },
    /// `Combine` (sum): h + Conv_0(pyramid), Conv_0 a 1×1 conv image channels → `c_out`.
    Combine {
        /// Image channels.
        c_in: usize,
        /// Channels of h.
        c_out: usize,
        /// Feature-map width.
        res: usize,
    },
    /// The output head's `nn.GroupNorm` (followed by SiLU and a [`Module::Conv3x3`]).
    HeadNorm {
        /// Channels.
        channels: usize,
        /// Feature-map width.
        res: usize,
    },
}

/// One step of `NCSNpp.forward` after the noise embedding; indices are into `all_modules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// h = Conv3x3(input)(x_scaled).
    InputConv(usize),
    /// h = ResBlock(h, temb).
    Res(usize),
    /// h = Attn(h).
    Attn(usize),
    /// hs.push(h).
    Push,
    /// h = cat([h, hs.pop()], channels).
    PopConcat,
    /// input pyramid = FIR-down(input pyramid); h = Combine(pyramid, h).
    InputSkip(usize),
    /// head = Conv(SiLU(GroupNorm(h))); pyramid = head (first) or FIR-up(pyramid) + head.
    OutputHead {
        /// The head GroupNorm.
        norm: usize,
        /// The head conv.
        conv: usize,
        /// The lowest level: the pyramid starts here.
        first: bool,
    },
}

/// The whole network.
#[derive(Debug, Clone, PartialEq)]
pub struct NcsnppArch {
    /// The configuration this was derived from.
    pub config: NcsnppConfig,
    /// 4·nf: width of temb.
    pub temb_dim: usize,
    /// `all_modules`, in index order.
    pub modules: Vec<Module>,
    /// The forward's steps after the temb MLP (modules 0..=2).
    pub program: Vec<Op>,
}

/// Appends modules and steps in construction order.
struct Builder {
    modules: Vec<Module>,
    program: Vec<Op>,
}

impl Builder {
    fn module(&mut self, m: Module) -> usize {
        self.modules.push(m);
        self.modules.len() - 1
    }

    fn step(&mut self, m: Module, op: fn(usize) -> Op) {
        let i = self.module(m);
        self.program.push(op(i));
    }
}

impl NcsnppArch {
    /// Lays out `all_modules` and the forward program exactly as `NCSNpp.__init__` / `forward`
    /// do for the BigGAN / output_skip / input_skip / sum configuration.
    pub fn new(config: &NcsnppConfig) -> Result<NcsnppArch> {
        let c = config;
        let (nf, nrb) = (c.nf, c.num_res_blocks);
        let res = c.resolutions();
        let levels = res.len();
        let attn = |r: usize| c.attn_resolutions.contains(&r);
        let width = |l: usize| nf * c.ch_mult[l];
        let mut b = Builder {
            modules: Vec::new(),
            program: Vec::new(),
        };
        b.module(Module::Fourier { size: nf });
        b.module(Module::Linear {
            c_in: 2 * nf,
            c_out: 4 * nf,
        });
        b.module(Module::Linear {
            c_in: 4 * nf,
            c_out: 4 * nf,
        });
        b.step(
            Module::Conv3x3 {
                c_in: c.num_channels,
                c_out: nf,
                res: res[0],
            },
            Op::InputConv,
        );
        b.program.push(Op::Push);
        // Down path; hs_c mirrors the channel counts of the skip stack.
        let mut hs_c = vec![nf];
        let mut in_ch = nf;
        for (l, &r) in res.iter().enumerate() {
            for _ in 0..nrb {
                let rb = ResBlock {
                    c_in: in_ch,
                    c_out: width(l),
                    res: r,
                    updown: Updown::None,
                };
                b.step(Module::Res(rb), Op::Res);
                in_ch = width(l);
                if attn(r) {
                    b.step(
                        Module::Attn {
                            channels: in_ch,
                            res: r,
                        },
                        Op::Attn,
                    );
                }
                b.program.push(Op::Push);
                hs_c.push(in_ch);
            }
            if l + 1 != levels {
                let rb = ResBlock {
                    c_in: in_ch,
                    c_out: in_ch,
                    res: r,
                    updown: Updown::Down,
                };
                b.step(Module::Res(rb), Op::Res);
                let combine = Module::Combine {
                    c_in: c.num_channels,
                    c_out: in_ch,
                    res: r / 2,
                };
                b.step(combine, Op::InputSkip);
                b.program.push(Op::Push);
                hs_c.push(in_ch);
            }
        }
        // Mid block at the lowest resolution (attention unconditionally).
        let r_low = res[levels - 1];
        let mid = ResBlock {
            c_in: in_ch,
            c_out: in_ch,
            res: r_low,
            updown: Updown::None,
        };
        b.step(Module::Res(mid), Op::Res);
        b.step(
            Module::Attn {
                channels: in_ch,
                res: r_low,
            },
            Op::Attn,
        );
        b.step(Module::Res(mid), Op::Res);
        // Up path.
        for l in (0..levels).rev() {
            let r = res[l];
            for _ in 0..=nrb {
                let Some(skip) = hs_c.pop() else {
                    bail!("ncsnpp: skip stack underflow at level {l} (construction bug)");
                };
                b.program.push(Op::PopConcat);
                let rb = ResBlock {
                    c_in: in_ch + skip,
                    c_out: width(l),
                    res: r,
                    updown: Updown::None,
                };
                b.step(Module::Res(rb), Op::Res);
                in_ch = width(l);
            }
            if attn(r) {
                b.step(
                    Module::Attn {
                        channels: in_ch,
                        res: r,
                    },
                    Op::Attn,
                );
            }
            let norm = b.module(Module::HeadNorm {
                channels: in_ch,
                res: r,
            });
            let conv = b.module(Module::Conv3x3 {
                c_in: in_ch,
                c_out: c.num_channels,
                res: r,
            });
            b.program.push(Op::OutputHead {
                norm,
                conv,
                first: l + 1 == levels,
            });
            if l != 0 {
                let rb = ResBlock {
                    c_in: in_ch,
                    c_out: in_ch,
                    res: r,
                    updown: Updown::Up,
                };
                b.step(Module::Res(rb), Op::Res);
            }
        }
        if !hs_c.is_empty() {
            bail!(
                "ncsnpp: {} skips left on the stack (construction bug)",
                hs_c.len()
            );
        }
        let arch = NcsnppArch {
            config: config.clone(),
            temb_dim: 4 * nf,
            modules: b.modules,
            program: b.program,
        };
        arch.check_groups()?;
        Ok(arch)
    }

    /// Every normalised channel count must split into `min(C // 4, 32)` equal groups (PyTorch
    /// refuses the module otherwise).
    fn check_groups(&self) -> Result<()> {
        for (i, m) in self.modules.iter().enumerate() {
            let counts: &[usize] = match m {
                Module::Res(r) => &[r.c_in, r.c_out],
                Module::Attn { channels, .. } | Module::HeadNorm { channels, .. } => {
                    std::slice::from_ref(channels)
                }
                _ => &[],
            };
            for &ch in counts {
                let g = groupnorm_groups(ch);
                if g == 0 || !ch.is_multiple_of(g) {
                    bail!(
                        "ncsnpp: all_modules.{i} normalises {ch} channels, which do not split \
                         into min({ch} // 4, 32) = {g} groups"
                    );
                }
            }
        }
        Ok(())
    }

    /// The network only runs at its configured size: attention placement follows the live
    /// feature-map width (ncsnpp.md §2).
    pub fn check_input_size(&self, h: usize, w: usize) -> Result<()> {
        let s = self.config.image_size;
        if (h, w) != (s, s) {
            bail!("ncsnpp: input is {h}x{w}, but this network only runs at {s}x{s} (image_size)");
        }
        Ok(())
    }

    /// Image channels in and out.
    pub fn channels(&self) -> usize {
        self.config.num_channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffhq_module_table() {
        // ncsnpp.md §6 module index table.
        let arch = NcsnppArch::new(&NcsnppConfig::ffhq256()).unwrap();
        let m = &arch.modules;
        assert_eq!(m.len(), 77);
        let res = |c_in, c_out, res, updown| {
            Module::Res(ResBlock {
                c_in,
                c_out,
                res,
                updown,
            })
        };
        assert_eq!(m[6], res(128, 128, 256, Updown::Down));
        assert_eq!(
            m[7],
            Module::Combine {
                c_in: 3,
                c_out: 128,
                res: 128
            }
        );
        assert_eq!(m[12], res(128, 256, 64, Updown::None));
        assert_eq!(
            m[21],
            Module::Attn {
                channels: 256,
                res: 16
            }
        );
        assert_eq!(
            m[33],
            Module::Attn {
                channels: 256,
                res: 4
            }
        );
        assert_eq!(m[35], res(512, 256, 4, Updown::None));
        assert_eq!(
            m[38],
            Module::HeadNorm {
                channels: 256,
                res: 4
            }
        );
        assert_eq!(m[40], res(256, 256, 4, Updown::Up));
        assert_eq!(m[62], res(384, 256, 64, Updown::None));
        assert_eq!(m[66], res(384, 128, 128, Updown::None));
        assert_eq!(m[71], res(128, 128, 128, Updown::Up));
        assert_eq!(
            m[76],
            Module::Conv3x3 {
                c_in: 128,
                c_out: 3,
                res: 256
            }
        );
        let blocks = m.iter().filter(|x| matches!(x, Module::Res(_))).count();
        let attns = m
            .iter()
            .filter(|x| matches!(x, Module::Attn { .. }))
            .count();
        assert_eq!((blocks, attns), (49, 4));
        let pushes = arch.program.iter().filter(|o| **o == Op::Push).count();
        let pops = arch.program.iter().filter(|o| **o == Op::PopConcat).count();
        assert_eq!((pushes, pops), (21, 21));
        assert_eq!(groupnorm_groups(384), 32);
        assert_eq!(groupnorm_groups(48), 12);
    }

    #[test]
    fn size_and_group_checks() {
        let arch = NcsnppArch::new(&NcsnppConfig::ffhq256()).unwrap();
        assert!(arch.check_input_size(256, 256).is_ok());
        let e = format!("{:#}", arch.check_input_size(128, 128).unwrap_err());
        assert!(e.contains("only runs at 256x256"), "{e}");
        let mut c = NcsnppConfig::ffhq256();
        c.nf = 18; // 18 channels: min(18 // 4, 32) = 4 groups do not divide 18.
        let e = format!("{:#}", NcsnppArch::new(&c).unwrap_err());
        assert!(e.contains("do not split"), "{e}");
    }
}
