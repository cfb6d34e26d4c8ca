//! The NCSN++ parameters resolved by PyTorch name (`all_modules.i.…`): one [`ModP`] per module.

use super::*;

/// Resolves NCSN++'s `all_modules.N` by their PyTorch names.
struct Resolver<'w> {
    params: ParamResolver<'w>,
}

impl<'w> Resolver<'w> {
    fn any(&self, name: &str, len: usize) -> Result<WeightsRef<'w>> {
        self.params.any(name, len)
    }

    fn f32(&self, name: &str, len: usize) -> Result<&'w [f32]> {
        self.params.f32(name, len)
    }

    /// GroupNorm with min(C/4, 32) groups and eps 1e-6.
    fn norm(&self, p: &str, channels: usize) -> Result<NormP<'w>> {
        self.params
            .norm(p, channels, groupnorm_groups(channels), GROUPNORM_EPS)
    }

    /// A 'same' convolution (stride 1, padding kernel/2).
    fn conv(&self, p: &str, c_in: usize, c_out: usize, kernel: usize) -> Result<ConvP<'w>> {
        let conv = Conv2d {
            c_in,
            c_out,
            kernel,
            stride: 1,
            pad: kernel / 2,
        };
        self.params.conv(p, conv)
    }

    fn linear(&self, p: &str, in_features: usize, out_features: usize) -> Result<LinearP<'w>> {
        self.params.linear(p, in_features, out_features)
    }

    fn module(&self, i: usize, m: &Module, temb: usize) -> Result<ModP<'w>> {
        let p = format!("all_modules.{i}");
        Ok(match *m {
            Module::Fourier { size } => ModP::Fourier(self.f32(&format!("{p}.W"), size)?),
            Module::Linear { c_in, c_out } => ModP::Linear(self.linear(&p, c_in, c_out)?),
            Module::Conv3x3 { c_in, c_out, .. } => ModP::Conv(self.conv(&p, c_in, c_out, 3)?),
            Module::Combine { c_in, c_out, .. } => {
                ModP::Conv(self.conv(&format!("{p}.Conv_0"), c_in, c_out, 1)?)
            }
            Module::HeadNorm { channels, .. } => ModP::Norm(self.norm(&p, channels)?),
            Module::Res(r) => {
                let conv2 = if r.has_conv2() {
                    Some(self.conv(&format!("{p}.Conv_2"), r.c_in, r.c_out, 1)?)
                } else {
                    None
                };
                ModP::Res(Box::new(ResP {
                    block: r,
                    norm0: self.norm(&format!("{p}.GroupNorm_0"), r.c_in)?,
                    conv0: self.conv(&format!("{p}.Conv_0"), r.c_in, r.c_out, 3)?,
                    dense: self.linear(&format!("{p}.Dense_0"), temb, r.c_out)?,
                    norm1: self.norm(&format!("{p}.GroupNorm_1"), r.c_out)?,
                    conv1: self.conv(&format!("{p}.Conv_1"), r.c_out, r.c_out, 3)?,
                    conv2,
                }))
            }
            Module::Attn { channels, .. } => {
                let c = channels;
                let nin = |k: usize| -> Result<NinP<'w>> {
                    Ok(NinP {
                        weight: self.any(&format!("{p}.NIN_{k}.W"), c * c)?,
                        bias: self.f32(&format!("{p}.NIN_{k}.b"), c)?,
                    })
                };
                ModP::Attn(Box::new(AttnP {
                    channels: c,
                    norm: self.norm(&format!("{p}.GroupNorm_0"), c)?,
                    nin: [nin(0)?, nin(1)?, nin(2)?, nin(3)?],
                }))
            }
        })
    }
}

/// Every module of `arch` resolved by name and size.
pub(super) fn resolve<'w>(arch: &NcsnppArch, weights: &'w Weights) -> Result<Vec<ModP<'w>>> {
    let r = Resolver {
        params: ParamResolver { weights },
    };
    arch.modules
        .iter()
        .enumerate()
        .map(|(i, m)| r.module(i, m, arch.temb_dim))
        .collect()
}

/// The conv of module `i`.
pub(super) fn conv_p<'a, 'w>(params: &'a [ModP<'w>], i: usize) -> Result<&'a ConvP<'w>> {
    match &params[i] {
        ModP::Conv(c) => Ok(c),
        _ => bail!("all_modules.{i}: expected a conv"),
    }
}
