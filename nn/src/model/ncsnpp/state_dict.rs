//! The state_dict an `NcsnppArch` expects: PyTorch names (`all_modules.{i}.…`, no `module.`
//! prefix) and shapes in module order (ncsnpp.md §6), the contract for the strict loader.
//! score_sde's `sigmas` buffer is not listed: the forward never reads it, and the loader
//! ignores it when present (formats.md §3).

use super::arch::{Module, NcsnppArch, ResBlock};
use crate::weights::spec::{ParamKind, TensorSpec};

/// Appends tensor specs.
struct Dict(Vec<TensorSpec>);

impl Dict {
    fn push(&mut self, name: String, shape: Vec<usize>, kind: ParamKind) {
        self.0.push(TensorSpec { name, shape, kind });
    }

    fn weight_bias(&mut self, p: &str, shape: Vec<usize>, fan_in: usize, c_out: usize) {
        self.push(format!("{p}.weight"), shape, ParamKind::Weight { fan_in });
        self.push(format!("{p}.bias"), vec![c_out], ParamKind::Bias);
    }

    fn conv(&mut self, p: &str, c_in: usize, c_out: usize, k: usize) {
        self.weight_bias(p, vec![c_out, c_in, k, k], c_in * k * k, c_out);
    }

    fn group_norm(&mut self, p: &str, c: usize) {
        self.push(format!("{p}.weight"), vec![c], ParamKind::NormWeight);
        self.push(format!("{p}.bias"), vec![c], ParamKind::NormBias);
    }

    /// `NIN`: weight `W` stored [in, out], bias `b`.
    fn nin(&mut self, p: &str, c: usize) {
        self.push(
            format!("{p}.W"),
            vec![c, c],
            ParamKind::Weight { fan_in: c },
        );
        self.push(format!("{p}.b"), vec![c], ParamKind::Bias);
    }

    fn res_block(&mut self, p: &str, r: &ResBlock, temb: usize) {
        self.group_norm(&format!("{p}.GroupNorm_0"), r.c_in);
        self.conv(&format!("{p}.Conv_0"), r.c_in, r.c_out, 3);
        self.weight_bias(&format!("{p}.Dense_0"), vec![r.c_out, temb], temb, r.c_out);
        self.group_norm(&format!("{p}.GroupNorm_1"), r.c_out);
        self.conv(&format!("{p}.Conv_1"), r.c_out, r.c_out, 3);
        if r.has_conv2() {
            self.conv(&format!("{p}.Conv_2"), r.c_in, r.c_out, 1);
        }
    }
}

impl NcsnppArch {
    /// Every state_dict tensor in PyTorch module order.
    ///
    /// The Fourier frequencies `all_modules.0.W` are recorded as [`ParamKind::Bias`] so that
    /// f16 weight storage keeps them f32 (formats.md §3: f16 phases would move the output by
    /// ~0.5) and random benchmark weights set them to 0; they are a fixed, untrained vector.
    pub fn state_dict(&self) -> Vec<TensorSpec> {
        let mut d = Dict(Vec::new());
        for (i, m) in self.modules.iter().enumerate() {
            let p = format!("all_modules.{i}");
            match *m {
                Module::Fourier { size } => d.push(format!("{p}.W"), vec![size], ParamKind::Bias),
                Module::Linear { c_in, c_out } => d.weight_bias(&p, vec![c_out, c_in], c_in, c_out),
                Module::Conv3x3 { c_in, c_out, .. } => d.conv(&p, c_in, c_out, 3),
                Module::Res(r) => d.res_block(&p, &r, self.temb_dim),
                Module::Attn { channels, .. } => {
                    d.group_norm(&format!("{p}.GroupNorm_0"), channels);
                    for k in 0..4 {
                        d.nin(&format!("{p}.NIN_{k}"), channels);
                    }
                }
                Module::Combine { c_in, c_out, .. } => {
                    d.conv(&format!("{p}.Conv_0"), c_in, c_out, 1)
                }
                Module::HeadNorm { channels, .. } => d.group_norm(&p, channels),
            }
        }
        d.0
    }

    /// Total number of parameters (the fixed Fourier frequencies included).
    pub fn parameter_count(&self) -> usize {
        crate::weights::spec::parameter_count(&self.state_dict())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::ncsnpp::NcsnppConfig;
    use crate::testdata::golden;

    pub(crate) fn golden_arch() -> NcsnppArch {
        let text = std::fs::read_to_string(golden("ncsnpp_small").join("config.json")).unwrap();
        let config = NcsnppConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        NcsnppArch::new(&config).unwrap()
    }

    #[test]
    fn ffhq_has_645_parameters_tensors_and_65_574_549_values() {
        // ncsnpp.md §6: 646 entries = 645 parameters + the `sigmas` buffer (not listed here).
        let arch = NcsnppArch::new(&NcsnppConfig::ffhq256()).unwrap();
        let dict = arch.state_dict();
        assert_eq!(dict.len(), 645);
        assert_eq!(arch.parameter_count(), 65_574_549);
        let map: BTreeMap<_, _> = dict.iter().map(|s| (s.name.as_str(), &s.shape)).collect();
        assert_eq!(map.len(), 645, "names are unique");
        assert_eq!(map["all_modules.0.W"], &vec![128]);
        assert_eq!(map["all_modules.1.weight"], &vec![512, 256]);
        assert_eq!(map["all_modules.62.Conv_0.weight"], &vec![256, 384, 3, 3]);
        assert_eq!(map["all_modules.21.NIN_3.W"], &vec![256, 256]);
        assert_eq!(map["all_modules.29.Conv_0.weight"], &vec![256, 3, 1, 1]);
        assert_eq!(map["all_modules.76.weight"], &vec![3, 128, 3, 3]);
        // By module type (ncsnpp.md §6).
        let count = |f: &dyn Fn(&Module) -> bool| -> usize {
            arch.modules
                .iter()
                .enumerate()
                .filter(|(_, m)| f(m))
                .map(|(i, _)| {
                    let p = format!("all_modules.{i}.");
                    dict.iter()
                        .filter(|s| s.name.starts_with(&p))
                        .map(TensorSpec::numel)
                        .sum::<usize>()
                })
                .sum()
        };
        assert_eq!(count(&|m| matches!(m, Module::Res(_))), 64_072_192);
        assert_eq!(count(&|m| matches!(m, Module::Attn { .. })), 1_054_720);
        assert_eq!(count(&|m| matches!(m, Module::Linear { .. })), 394_240);
        assert_eq!(count(&|m| matches!(m, Module::Conv3x3 { .. })), 45_077);
        assert_eq!(count(&|m| matches!(m, Module::Combine { .. })), 5_120);
        assert_eq!(count(&|m| matches!(m, Module::HeadNorm { .. })), 3_072);
        let conv2 = dict
            .iter()
            .filter(|s| s.name.ends_with("Conv_2.weight"))
            .count();
        assert_eq!(conv2, 34);
    }

    #[test]
    fn small_matches_the_golden_weights_file() {
        let arch = golden_arch();
        assert_eq!(arch.modules.len(), 37);
        let bytes = std::fs::read(golden("ncsnpp_small").join("weights.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut file: BTreeMap<String, Vec<usize>> = st
            .iter()
            .map(|(n, v)| (n.to_string(), v.shape().to_vec()))
            .collect();
        assert_eq!(file.remove("sigmas"), Some(vec![2000]));
        let ours: BTreeMap<String, Vec<usize>> = arch
            .state_dict()
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect();
        assert_eq!(ours, file);
        // 301 parameters holding 444,969 values (golden README).
        assert_eq!(ours.len(), 301);
        assert_eq!(arch.parameter_count(), 444_969);
    }
}
