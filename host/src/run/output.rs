//! Output encodings (formats.md §5): safetensors files and JSON with one byte form for the
//! same content, and the build facts of run.json. Where and how files are written is
//! [`super::output_policy`].

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};
use safetensors::Dtype;
use tweedie_nn::tensors::{serialize_sorted, sorted_header};

/// A safetensors file of f32 tensors (name, shape, values) with string metadata, the data
/// sorted by name, in nn's one byte form (`serialize_sorted`: header keys sorted), so the
/// same tensors always give the same bytes.
pub fn safetensors_bytes(
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut order: Vec<&(&str, Vec<usize>, &[f32])> = tensors.iter().collect();
    order.sort_by_key(|t| t.0);
    let mut encoded = Vec::with_capacity(order.len());
    for (name, shape, values) in order {
        if shape.iter().product::<usize>() != values.len() {
            bail!(
                "tensor {name}: shape {shape:?} does not hold {} values",
                values.len()
            );
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        encoded.push((name.to_string(), shape.clone(), bytes));
    }
    let views: Vec<_> = encoded
        .iter()
        .map(|(n, s, b)| (n.clone(), Dtype::F32, s.clone(), &b[..]))
        .collect();
    serialize_sorted(&views, &metadata.into_iter().collect())
}

/// The header of [`safetensors_bytes`] for f32 tensors `(name, shape)` whose data follow in
/// the given order (a streaming writer writes it first).
pub fn f32_safetensors_header(
    tensors: &[(&str, &[usize])],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let layout: Vec<(&str, Dtype, &[usize])> =
        tensors.iter().map(|&(n, s)| (n, Dtype::F32, s)).collect();
    let metadata: BTreeMap<String, String> = metadata.into_iter().collect();
    sorted_header(&layout, &metadata)
}

/// JSON text with a trailing newline.
pub fn json_bytes(value: &serde_json::Value) -> Result<Vec<u8>> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text.into_bytes())
}

/// Versions and build facts for run.json.
pub fn build_info() -> serde_json::Value {
    serde_json::json!({
        "tweedie_host": env!("CARGO_PKG_VERSION"),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "target_arch": std::env::consts::ARCH,
        "target_os": std::env::consts::OS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_files_read_back_and_have_one_byte_form() {
        let a = [1.0f32, -2.5, 3.25, 0.0];
        let b = [7.0f32; 6];
        let meta = || -> HashMap<String, String> {
            (0..12)
                .map(|i| (format!("key{i}"), format!("v{i}")))
                .collect()
        };
        let bytes =
            safetensors_bytes(&[("zeta", vec![2, 2], &a), ("alpha", vec![6], &b)], meta()).unwrap();
        for _ in 0..4 {
            let again =
                safetensors_bytes(&[("zeta", vec![2, 2], &a), ("alpha", vec![6], &b)], meta())
                    .unwrap();
            assert_eq!(again, bytes, "same tensors, same bytes");
        }
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let z = st.tensor("zeta").unwrap();
        assert_eq!(z.shape(), [2, 2]);
        let got: Vec<f32> = z
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, a);
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(m.metadata().clone().unwrap(), meta());
        assert!(safetensors_bytes(&[("x", vec![3], &a)], HashMap::new()).is_err());
    }
}
