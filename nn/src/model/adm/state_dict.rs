//! The state_dict an `AdmArch` expects: PyTorch names and shapes in module order
//! (adm_unet.md §7), the contract for the strict weights loader.

use super::arch::{AdmArch, Attention, Layer, ResBlock, Updown};
use crate::weights::spec::{ParamKind, TensorSpec};

/// Appends tensor specs under one module prefix.
struct Dict(Vec<TensorSpec>);

impl Dict {
    fn push(&mut self, name: String, shape: Vec<usize>, kind: ParamKind) {
        self.0.push(TensorSpec { name, shape, kind });
    }

    /// `nn.Linear(c_in → c_out)`: weight [out, in], bias [out].
    fn linear(&mut self, p: &str, c_in: usize, c_out: usize) {
        self.push(
            format!("{p}.weight"),
            vec![c_out, c_in],
            ParamKind::Weight { fan_in: c_in },
        );
        self.push(format!("{p}.bias"), vec![c_out], ParamKind::Bias);
    }

    /// Conv2d k×k (or Conv1d k=1 when `dims1`): weight [out, in, k, k] / [out, in, 1].
    fn conv(&mut self, p: &str, c_in: usize, c_out: usize, k: usize) {
        self.push(
            format!("{p}.weight"),
            vec![c_out, c_in, k, k],
            ParamKind::Weight {
                fan_in: c_in * k * k,
            },
        );
        self.push(format!("{p}.bias"), vec![c_out], ParamKind::Bias);
    }

    fn conv1d(&mut self, p: &str, c_in: usize, c_out: usize) {
        self.push(
            format!("{p}.weight"),
            vec![c_out, c_in, 1],
            ParamKind::Weight { fan_in: c_in },
        );
        self.push(format!("{p}.bias"), vec![c_out], ParamKind::Bias);
    }

    fn group_norm(&mut self, p: &str, c: usize) {
        self.push(format!("{p}.weight"), vec![c], ParamKind::NormWeight);
        self.push(format!("{p}.bias"), vec![c], ParamKind::NormBias);
    }

    fn res_block(&mut self, r: &ResBlock) {
        let p = &r.name;
        self.group_norm(&format!("{p}.in_layers.0"), r.c_in);
        self.conv(&format!("{p}.in_layers.2"), r.c_in, r.c_out, 3);
        let emb_out = if r.scale_shift { 2 * r.c_out } else { r.c_out };
        self.linear(&format!("{p}.emb_layers.1"), r.emb_dim, emb_out);
        self.group_norm(&format!("{p}.out_layers.0"), r.c_out);
        self.conv(&format!("{p}.out_layers.3"), r.c_out, r.c_out, 3);
        if r.c_in != r.c_out {
            debug_assert_eq!(r.updown, Updown::None, "up/down ResBlocks keep their width");
            self.conv(&format!("{p}.skip_connection"), r.c_in, r.c_out, 1);
        }
    }

    fn attention(&mut self, a: &Attention) {
        let (p, c) = (&a.name, a.channels);
        self.group_norm(&format!("{p}.norm"), c);
        self.conv1d(&format!("{p}.qkv"), c, 3 * c);
        self.conv1d(&format!("{p}.proj_out"), c, c);
    }

    fn layer(&mut self, layer: &Layer) {
        match layer {
            Layer::Conv(c) => self.conv(&c.name, c.c_in, c.c_out, 3),
            Layer::Res(r) => self.res_block(r),
            Layer::Attention(a) => self.attention(a),
            Layer::Downsample(r) if r.use_conv => {
                self.conv(&format!("{}.op", r.name), r.channels, r.channels, 3)
            }
            Layer::Upsample(r) if r.use_conv => {
                self.conv(&format!("{}.conv", r.name), r.channels, r.channels, 3)
            }
            Layer::Downsample(_) | Layer::Upsample(_) => {}
        }
    }
}

impl AdmArch {
    /// Every state_dict tensor in PyTorch module order (time_embed, input_blocks,
    /// middle_block, output_blocks, out).
    pub fn state_dict(&self) -> Vec<TensorSpec> {
        let mut d = Dict(Vec::new());
        let (mc, ted) = (self.config.model_channels, self.time_embed_dim);
        d.linear("time_embed.0", mc, ted);
        d.linear("time_embed.2", ted, ted);
        for block in self.blocks() {
            for layer in &block.layers {
                d.layer(layer);
            }
        }
        d.group_norm("out.0", self.out.channels);
        d.conv("out.2", self.out.channels, self.out.out_channels, 3);
        d.0
    }

    /// Total number of parameters.
    pub fn parameter_count(&self) -> usize {
        crate::weights::spec::parameter_count(&self.state_dict())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::adm::AdmConfig;
    use crate::model::config::ModelConfig;
    use crate::testdata::golden;

    fn shapes(specs: &[TensorSpec]) -> BTreeMap<String, Vec<usize>> {
        specs
            .iter()
            .map(|s| (s.name.clone(), s.shape.clone()))
            .collect()
    }

    fn golden_shapes(folder: &str) -> BTreeMap<String, Vec<usize>> {
        let bytes = std::fs::read(golden(folder).join("weights.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.iter()
            .map(|(n, v)| (n.to_string(), v.shape().to_vec()))
            .collect()
    }

    fn golden_arch(folder: &str) -> AdmArch {
        let path = golden(folder).join("config.json");
        let config = ModelConfig::load(path.to_str().unwrap()).unwrap();
        AdmArch::new(config.adm().unwrap()).unwrap()
    }

    #[test]
    fn ffhq_has_362_tensors_and_93_563_910_parameters() {
        // adm_unet.md §7.
        let arch = AdmArch::new(&AdmConfig::ffhq256()).unwrap();
        let dict = arch.state_dict();
        assert_eq!(dict.len(), 362);
        assert_eq!(arch.parameter_count(), 93_563_910);
        let map = shapes(&dict);
        assert_eq!(map["input_blocks.9.1.qkv.weight"], vec![1536, 512, 1]);
        assert_eq!(
            map["output_blocks.3.0.skip_connection.weight"],
            vec![512, 768, 1, 1]
        );
        assert_eq!(
            map["output_blocks.3.2.emb_layers.1.weight"],
            vec![1024, 512]
        );
        assert_eq!(map["out.2.weight"], vec![6, 128, 3, 3]);
        assert_eq!(map.len(), 362, "names are unique");
        let skips = dict
            .iter()
            .filter(|s| s.name.ends_with("skip_connection.weight"))
            .count();
        assert_eq!(skips, 14);
    }

    #[test]
    fn adm_small_matches_the_golden_state_dict() {
        let arch = golden_arch("adm_small");
        assert_eq!(arch.state_dict().len(), 198);
        assert_eq!(arch.parameter_count(), 1_371_974);
        assert_eq!(shapes(&arch.state_dict()), golden_shapes("adm_small"));
    }

    #[test]
    fn adm_variant_matches_the_golden_state_dict() {
        let arch = golden_arch("adm_variant");
        assert_eq!(arch.config.in_channels, 1);
        assert_eq!(arch.state_dict().len(), 334);
        assert_eq!(arch.parameter_count(), 2_328_449);
        assert_eq!(shapes(&arch.state_dict()), golden_shapes("adm_variant"));
    }
}
