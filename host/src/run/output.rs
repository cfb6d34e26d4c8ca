//! Output encodings (formats.md §5): safetensors files and JSON with one byte form for the
//! same content, and the build facts of run.json. Where and how files are written is
//! [`super::output_policy`].

use std::collections::HashMap;

use anyhow::{bail, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

/// A safetensors file of f32 tensors (name, shape, values) with string metadata, laid out as
/// `safetensors::serialize` lays it out (data sorted by name) but with the header's JSON keys
/// in sorted order, so the same tensors always give the same bytes (serialize writes the
/// metadata in HashMap order, which changes from process to process).
pub fn safetensors_bytes(
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut order: Vec<&(&str, Vec<usize>, &[f32])> = tensors.iter().collect();
    order.sort_by_key(|t| t.0);
    let shapes: Vec<(&str, &[usize])> = order.iter().map(|t| (t.0, &t.1[..])).collect();
    let mut out = f32_safetensors_header(&shapes, metadata)?;
    for (name, shape, values) in order {
        if shape.iter().product::<usize>() != values.len() {
            bail!(
                "tensor {name}: shape {shape:?} does not hold {} values",
                values.len()
            );
        }
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(out)
}

/// The header (8-byte length, JSON with sorted keys padded to 8 bytes) of a safetensors file
/// of f32 tensors `(name, shape)` whose data follow in the given order.
pub fn f32_safetensors_header(
    tensors: &[(&str, &[usize])],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut offset = 0;
    let infos = tensors
        .iter()
        .map(|(name, shape)| {
            let bytes = shape.iter().product::<usize>() * 4;
            offset += bytes;
            let info = TensorInfo {
                dtype: Dtype::F32,
                shape: shape.to_vec(),
                data_offsets: (offset - bytes, offset),
            };
            (name.to_string(), info)
        })
        .collect();
    let meta = Metadata::new((!metadata.is_empty()).then_some(metadata), infos)?;
    // Through serde_json::Value, whose maps are sorted by key.
    let mut json = serde_json::to_string(&serde_json::to_value(&meta)?)?.into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
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
