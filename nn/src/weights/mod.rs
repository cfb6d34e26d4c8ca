//! Network weights: strictly checked against an architecture's expected state_dict, held in
//! one contiguous buffer per storage type with named views (llm.c style).
//!
//! Storage policy: [`Precision::F32`] keeps everything f32. [`Precision::F16`] stores conv and
//! linear weights ([`ParamKind::Weight`]) as f16 (half the memory; formats.md §7 tolerance
//! 2e-3) and keeps biases and GroupNorm affine parameters f32: they are tiny and kernels
//! apply them in f32 epilogues.

pub mod meta;
pub mod spec;

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};
use half::f16;
use safetensors::Dtype;

use crate::tensors::{decode_f16, decode_f32, is_float_dtype, SafetensorsFile};
use crate::weights::spec::{ParamKind, TensorSpec};
pub use meta::WeightsMeta;

/// Buffers a weights file may carry that no forward reads (score_sde's `sigmas`); ignored.
pub const IGNORED_BUFFERS: &[&str] = &["sigmas"];

/// How weights are stored in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Everything f32.
    F32,
    /// Conv/linear weights f16, biases and norms f32.
    F16,
}

/// Storage type of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// In [`Storage::f32`].
    F32,
    /// In [`Storage::f16`].
    F16,
}

impl Precision {
    /// Where a tensor of this role is stored under this precision.
    pub fn dtype_for(self, kind: ParamKind) -> StoredDtype {
        match (self, kind) {
            (Precision::F16, ParamKind::Weight { .. }) => StoredDtype::F16,
            _ => StoredDtype::F32,
        }
    }
}

/// All parameter values: one contiguous buffer per storage type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Storage {
    /// f32 tensors, back to back in state_dict order.
    pub f32: Vec<f32>,
    /// f16 tensors, back to back in state_dict order.
    pub f16: Vec<f16>,
}

/// One named view into [`Storage`].
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Name, shape and role.
    pub spec: TensorSpec,
    /// Which buffer.
    pub dtype: StoredDtype,
    /// First element in that buffer.
    pub offset: usize,
}

/// The values of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TensorData<'a> {
    /// f32 storage.
    F32(&'a [f32]),
    /// f16 storage.
    F16(&'a [f16]),
}

/// A borrowed tensor: name, shape, values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorRef<'a> {
    /// PyTorch name.
    pub name: &'a str,
    /// PyTorch shape.
    pub shape: &'a [usize],
    /// Values.
    pub data: TensorData<'a>,
}

/// Checked, loaded weights with named views.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    storage: Storage,
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    precision: Precision,
}

impl Weights {
    /// Loads `file` strictly against `expected`: every missing, unexpected, mis-shaped or
    /// non-float tensor is reported by name in one error, and nothing is loaded.
    pub fn load(
        file: &SafetensorsFile,
        expected: &[TensorSpec],
        precision: Precision,
    ) -> Result<Weights> {
        let st = file.view()?;
        let found: BTreeMap<&str, (Dtype, Vec<usize>)> = st
            .iter()
            .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec())))
            .collect();
        check_tensors(&found, expected).map_err(|e| anyhow::anyhow!("{}: {e}", file.label()))?;
        let mut weights = Weights::allocate(expected, precision);
        for entry in &weights.entries {
            let view = st.tensor(&entry.spec.name)?;
            let range = entry.offset..entry.offset + entry.spec.numel();
            // A NaN or ∞ weight would surface later as a diverging sampler: name it here.
            let bad = match entry.dtype {
                StoredDtype::F32 => {
                    let out = &mut weights.storage.f32[range];
                    decode_f32(view.dtype(), view.data(), out)?;
                    out.iter()
                        .position(|v| !v.is_finite())
                        .map(|i| (out[i], ""))
                }
                StoredDtype::F16 => {
                    let out = &mut weights.storage.f16[range];
                    decode_f16(view.dtype(), view.data(), out)?;
                    let bad = out.iter().position(|v| !v.is_finite());
                    bad.map(|i| (out[i].to_f32(), " as f16 (drop --f16)"))
                }
            };
            if let Some((v, how)) = bad {
                bail!(
                    "{}: tensor `{}` holds {v}{how}; the weights are unusable",
                    file.label(),
                    entry.spec.name
                );
            }
        }
        Ok(weights)
    }

    /// Random weights of the right shapes (for benchmarks): conv/linear weights N(0, 1/fan_in)
    /// from the counter-based noise of `tweedie_core::noise`, biases 0, norms γ = 1, β = 0.
    pub fn random(expected: &[TensorSpec], precision: Precision, seed: u64) -> Weights {
        let mut weights = Weights::allocate(expected, precision);
        for (chain, entry) in weights.entries.iter().enumerate() {
            let value = |i: usize| match entry.spec.kind {
                ParamKind::Weight { fan_in } => {
                    tweedie_core::noise::gaussian(seed, chain as u64, 0, i as u64)
                        / (fan_in.max(1) as f32).sqrt()
                }
                ParamKind::NormWeight => 1.0,
                ParamKind::Bias | ParamKind::NormBias => 0.0,
            };
            let (o, n) = (entry.offset, entry.spec.numel());
            match entry.dtype {
                StoredDtype::F32 => weights.storage.f32[o..o + n]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = value(i)),
                StoredDtype::F16 => weights.storage.f16[o..o + n]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = f16::from_f32(value(i))),
            }
        }
        weights
    }

    /// Lays out zeroed buffers and views in state_dict order.
    fn allocate(expected: &[TensorSpec], precision: Precision) -> Weights {
        let (mut n32, mut n16) = (0, 0);
        let entries: Vec<Entry> = expected
            .iter()
            .map(|spec| {
                let dtype = precision.dtype_for(spec.kind);
                let next = if dtype == StoredDtype::F32 {
                    &mut n32
                } else {
                    &mut n16
                };
                let offset = *next;
                *next += spec.numel();
                Entry {
                    spec: spec.clone(),
                    dtype,
                    offset,
                }
            })
            .collect();
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.spec.name.clone(), i))
            .collect();
        let storage = Storage {
            f32: vec![0.0; n32],
            f16: vec![f16::ZERO; n16],
        };
        Weights {
            storage,
            entries,
            index,
            precision,
        }
    }

    /// The tensor `name` as a kernel weight view, checked to hold exactly `len` values.
    pub fn kernel_ref(&self, name: &str, len: usize) -> Result<tweedie_kernels::WeightsRef<'_>> {
        let data = match self.get(name)?.data {
            TensorData::F32(d) => tweedie_kernels::WeightsRef::F32(d),
            TensorData::F16(d) => tweedie_kernels::WeightsRef::F16(d),
        };
        if data.len() != len {
            bail!(
                "weight tensor `{name}` has {} values, the architecture needs {len}",
                data.len()
            );
        }
        Ok(data)
    }

    /// The f32 tensor `name` (biases, norms), checked to hold exactly `len` values.
    pub fn f32_exact(&self, name: &str, len: usize) -> Result<&[f32]> {
        match self.kernel_ref(name, len)? {
            tweedie_kernels::WeightsRef::F32(d) => Ok(d),
            tweedie_kernels::WeightsRef::F16(_) => {
                bail!("weight tensor `{name}` is stored as f16, expected f32")
            }
        }
    }

    /// A tensor by PyTorch name, or an error naming it.
    pub fn get(&self, name: &str) -> Result<TensorRef<'_>> {
        let Some(&i) = self.index.get(name) else {
            bail!("no weight tensor `{name}`");
        };
        let e = &self.entries[i];
        let range = e.offset..e.offset + e.spec.numel();
        let data = match e.dtype {
            StoredDtype::F32 => TensorData::F32(&self.storage.f32[range]),
            StoredDtype::F16 => TensorData::F16(&self.storage.f16[range]),
        };
        Ok(TensorRef {
            name: &e.spec.name,
            shape: &e.spec.shape,
            data,
        })
    }

    /// An f32-stored tensor by name (biases and norms are always f32).
    pub fn f32(&self, name: &str) -> Result<&[f32]> {
        match self.get(name)?.data {
            TensorData::F32(d) => Ok(d),
            TensorData::F16(_) => bail!("weight tensor `{name}` is stored as f16"),
        }
    }

    /// The views in state_dict order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The underlying buffers.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The storage precision chosen at load time.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Number of parameters.
    pub fn parameter_count(&self) -> usize {
        self.storage.f32.len() + self.storage.f16.len()
    }

    /// Bytes of parameter storage.
    pub fn size_bytes(&self) -> usize {
        4 * self.storage.f32.len() + 2 * self.storage.f16.len()
    }
}

/// Compares a file's tensors with the expected state_dict; lists every problem by name.
fn check_tensors(
    found: &BTreeMap<&str, (Dtype, Vec<usize>)>,
    expected: &[TensorSpec],
) -> Result<()> {
    let (mut missing, mut shapes, mut dtypes) = (Vec::new(), Vec::new(), Vec::new());
    for spec in expected {
        match found.get(spec.name.as_str()) {
            None => missing.push(spec.name.clone()),
            Some((dtype, shape)) => {
                if *shape != spec.shape {
                    shapes.push(format!(
                        "{} (expected {:?}, file has {:?})",
                        spec.name, spec.shape, shape
                    ));
                }
                if !is_float_dtype(*dtype) {
                    dtypes.push(format!("{} ({dtype:?})", spec.name));
                }
            }
        }
    }
    let wanted: std::collections::HashSet<&str> =
        expected.iter().map(|s| s.name.as_str()).collect();
    let unexpected: Vec<String> = found
        .keys()
        .filter(|n| !wanted.contains(*n) && !IGNORED_BUFFERS.contains(*n))
        .map(|n| n.to_string())
        .collect();
    let groups = [
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", shapes),
        ("not F32/F16/F64", dtypes),
    ];
    let problems: Vec<String> = groups
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(what, list)| format!("{} {what}: {}", list.len(), list.join(", ")))
        .collect();
    if !problems.is_empty() {
        bail!(
            "weights do not match the model config; {}",
            problems.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::adm::AdmArch;
    use crate::model::config::ModelConfig;
    use crate::testdata::golden;
    use safetensors::tensor::TensorView;

    fn golden_parts(folder: &str) -> (SafetensorsFile, Vec<TensorSpec>) {
        let config =
            ModelConfig::load(golden(folder).join("config.json").to_str().unwrap()).unwrap();
        let arch = AdmArch::new(config.adm().unwrap()).unwrap();
        let file = SafetensorsFile::open(&golden(folder).join("weights.safetensors")).unwrap();
        (file, arch.state_dict())
    }

    /// A file with the expected tensors (values i/100 as f32), then edited by `edit`.
    fn synthetic(
        specs: &[TensorSpec],
        edit: impl Fn(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
    ) -> SafetensorsFile {
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = specs
            .iter()
            .map(|s| {
                let bytes = (0..s.numel())
                    .flat_map(|i| (i as f32 / 100.0).to_le_bytes())
                    .collect();
                (s.name.clone(), Dtype::F32, s.shape.clone(), bytes)
            })
            .collect();
        edit(&mut tensors);
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        SafetensorsFile::from_bytes(bytes, "w.safetensors".into()).unwrap()
    }

    fn specs() -> Vec<TensorSpec> {
        let t = |name: &str, shape: Vec<usize>, kind| TensorSpec {
            name: name.into(),
            shape,
            kind,
        };
        vec![
            t(
                "conv.weight",
                vec![2, 1, 3, 3],
                ParamKind::Weight { fan_in: 9 },
            ),
            t("conv.bias", vec![2], ParamKind::Bias),
            t("norm.weight", vec![2], ParamKind::NormWeight),
        ]
    }

    #[test]
    fn non_finite_weights_are_named() {
        let file = synthetic(&specs(), |t| {
            t[1].3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        });
        assert!(load_err(&file).contains("tensor `conv.bias` holds NaN"));
        let file = synthetic(&specs(), |t| {
            t[0].3[..4].copy_from_slice(&1e6f32.to_le_bytes());
        });
        Weights::load(&file, &specs(), Precision::F32).unwrap();
        let e = format!(
            "{:#}",
            Weights::load(&file, &specs(), Precision::F16).unwrap_err()
        );
        assert!(e.contains("`conv.weight` holds inf as f16"), "{e}");
    }

    fn load_err(file: &SafetensorsFile) -> String {
        format!(
            "{:#}",
            Weights::load(file, &specs(), Precision::F32).unwrap_err()
        )
    }

    #[test]
    fn adm_small_loads_in_f32_and_f16() {
        let (file, expected) = golden_parts("adm_small");
        let w = Weights::load(&file, &expected, Precision::F32).unwrap();
        assert_eq!(w.parameter_count(), 1_371_974);
        let reference = file.tensor_f32("input_blocks.3.1.qkv.weight").unwrap();
        let t = w.get("input_blocks.3.1.qkv.weight").unwrap();
        assert_eq!(
            (t.shape, t.data),
            (&[192usize, 64, 1][..], TensorData::F32(&reference.data[..]))
        );
        let h = Weights::load(&file, &expected, Precision::F16).unwrap();
        assert!(h.size_bytes() < w.size_bytes() * 51 / 100 + 4 * 10_000);
        match h.get("out.2.weight").unwrap().data {
            TensorData::F16(d) => assert_eq!(
                d[0],
                f16::from_f32(file.tensor_f32("out.2.weight").unwrap().data[0])
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            h.f32("out.2.bias").unwrap(),
            &file.tensor_f32("out.2.bias").unwrap().data[..]
        );
    }

    #[test]
    fn adm_variant_f16_file_converts_exactly() {
        let (file, expected) = golden_parts("adm_variant");
        let w = Weights::load(&file, &expected, Precision::F32).unwrap();
        assert_eq!(w.parameter_count(), 2_328_449);
        let st = file.view().unwrap();
        let raw = st
            .tensor("output_blocks.8.0.skip_connection.weight")
            .unwrap();
        assert_eq!(raw.dtype(), Dtype::F16);
        let stored = w.f32("output_blocks.8.0.skip_connection.weight").unwrap();
        for (v, b) in stored.iter().zip(raw.data().chunks_exact(2)) {
            assert_eq!(*v, f16::from_le_bytes([b[0], b[1]]).to_f32());
        }
        // Reloading as f16 storage gives back the stored bits for weights.
        let h = Weights::load(&file, &expected, Precision::F16).unwrap();
        let TensorData::F16(bits) = h
            .get("output_blocks.8.0.skip_connection.weight")
            .unwrap()
            .data
        else {
            panic!("weights are f16 under Precision::F16")
        };
        assert!(bits
            .iter()
            .zip(raw.data().chunks_exact(2))
            .all(|(v, b)| v.to_le_bytes() == [b[0], b[1]]));
    }

    #[test]
    fn exact_file_loads_and_sigmas_is_ignored() {
        let w = Weights::load(&synthetic(&specs(), |_| {}), &specs(), Precision::F32).unwrap();
        assert_eq!(w.f32("conv.bias").unwrap(), &[0.0, 0.01]);
        let with_sigmas = synthetic(&specs(), |t| {
            t.push(("sigmas".into(), Dtype::F64, vec![2], vec![0; 16]))
        });
        assert!(Weights::load(&with_sigmas, &specs(), Precision::F32).is_ok());
        assert!(w.get("nope").is_err());
    }

    #[test]
    fn every_problem_is_named_in_one_error() {
        let file = synthetic(&specs(), |t| {
            t.retain(|(n, ..)| n != "norm.weight");
            t.push(("extra.weight".into(), Dtype::F32, vec![1], vec![0; 4]));
            t[0].2 = vec![2, 1, 1, 9];
            t[1] = ("conv.bias".into(), Dtype::I32, vec![2], vec![0; 8]);
        });
        let e = load_err(&file);
        assert!(e.starts_with("w.safetensors: weights do not match"), "{e}");
        for part in [
            "1 missing: norm.weight",
            "1 unexpected: extra.weight",
            "1 mis-shaped: conv.weight (expected [2, 1, 3, 3], file has [2, 1, 1, 9])",
            "1 not F32/F16/F64: conv.bias (I32)",
        ] {
            assert!(e.contains(part), "{part} not in {e}");
        }
        assert!(!e.contains('\n'));
    }

    #[test]
    fn wrong_dtype_alone_is_refused() {
        let file = synthetic(&specs(), |t| {
            t[2] = ("norm.weight".into(), Dtype::I64, vec![2], vec![0; 16])
        });
        assert!(load_err(&file).contains("norm.weight (I64)"));
    }

    #[test]
    fn random_weights_have_the_requested_layout() {
        let w = Weights::random(&specs(), Precision::F16, 7);
        assert_eq!((w.storage().f16.len(), w.storage().f32.len()), (18, 4));
        assert_eq!(w.f32("norm.weight").unwrap(), &[1.0, 1.0]);
        let TensorData::F16(v) = w.get("conv.weight").unwrap().data else {
            panic!()
        };
        assert!(v.iter().any(|x| x.to_f32() != 0.0));
        assert_eq!(
            Weights::random(&specs(), Precision::F16, 7),
            w,
            "deterministic"
        );
    }
}
