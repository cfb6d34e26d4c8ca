//! Reading safetensors files (weights, network inputs, references) with one-line errors:
//! a missing, truncated or corrupt file is refused when opened, before anything runs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use half::f16;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

/// A whole safetensors file in memory, already validated (header, offsets, sizes).
pub struct SafetensorsFile {
    label: String,
    bytes: Vec<u8>,
}

/// A tensor converted to f32, with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorF32 {
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl SafetensorsFile {
    /// Reads and validates `path`.
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let label = path.display().to_string();
        let bytes = crate::input::read_capped(
            path,
            "safetensors file",
            crate::input::MAX_SAFETENSORS_BYTES,
        )?;
        Self::from_bytes(bytes, label)
    }

    /// Validates an in-memory file; `label` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, label: String) -> Result<SafetensorsFile> {
        if let Err(e) = SafeTensors::deserialize(&bytes) {
            bail!(
                "{label} is not a valid safetensors file ({} bytes): {e}",
                bytes.len()
            );
        }
        Ok(SafetensorsFile { label, bytes })
    }

    /// The name used in errors (the path).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Size of the file in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The parsed view (cannot fail after validation, but stays a `Result` rather than panic).
    pub fn view(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .with_context(|| format!("{} is not a valid safetensors file", self.label))
    }

    /// The `__metadata__` string map (empty when absent).
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes)
            .with_context(|| format!("{} is not a valid safetensors file", self.label))?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// A named tensor converted to f32 (f32, f16 and f64 are accepted).
    pub fn tensor_f32(&self, name: &str) -> Result<TensorF32> {
        let st = self.view()?;
        let view = st.tensor(name).map_err(|_| {
            let mut names = st.names();
            names.sort();
            anyhow::anyhow!(
                "{}: no tensor `{name}` (it has: {})",
                self.label,
                names.join(", ")
            )
        })?;
        let mut data = vec![0.0; view.shape().iter().product()];
        decode_f32(view.dtype(), view.data(), &mut data)
            .with_context(|| format!("{}: tensor `{name}`", self.label))?;
        Ok(TensorF32 {
            shape: view.shape().to_vec(),
            data,
        })
    }
}

/// Whether a stored dtype can be read as floating point.
pub fn is_float_dtype(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::F64)
}

fn unsupported(dtype: Dtype) -> anyhow::Error {
    anyhow::anyhow!("unsupported dtype {dtype:?} (expected F32, F16 or F64)")
}

/// Little-endian bytes of `dtype` → f32 (f16 exactly, subnormals included; f64 rounded).
pub fn decode_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_len(dtype, bytes, out.len())?;
    match dtype {
        Dtype::F32 => fill(out, bytes.chunks_exact(4), |b| {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }),
        Dtype::F16 => fill(out, bytes.chunks_exact(2), |b| {
            f16::from_le_bytes([b[0], b[1]]).to_f32()
        }),
        Dtype::F64 => fill(out, bytes.chunks_exact(8), |b| f64_le(b) as f32),
        other => return Err(unsupported(other)),
    }
    Ok(())
}

/// Little-endian bytes of `dtype` → f16 (one rounding from the stored value).
pub fn decode_f16(dtype: Dtype, bytes: &[u8], out: &mut [f16]) -> Result<()> {
    check_len(dtype, bytes, out.len())?;
    match dtype {
        Dtype::F32 => fill(out, bytes.chunks_exact(4), |b| {
            f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }),
        Dtype::F16 => fill(out, bytes.chunks_exact(2), |b| {
            f16::from_le_bytes([b[0], b[1]])
        }),
        Dtype::F64 => fill(out, bytes.chunks_exact(8), |b| f16::from_f64(f64_le(b))),
        other => return Err(unsupported(other)),
    }
    Ok(())
}

fn check_len(dtype: Dtype, bytes: &[u8], n: usize) -> Result<()> {
    if !is_float_dtype(dtype) {
        return Err(unsupported(dtype));
    }
    if bytes.len() * 8 != n * dtype.bitsize() {
        bail!("{} bytes for {n} {dtype:?} values", bytes.len());
    }
    Ok(())
}

fn f64_le(b: &[u8]) -> f64 {
    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn fill<'a, T>(out: &mut [T], chunks: impl Iterator<Item = &'a [u8]>, f: impl Fn(&[u8]) -> T) {
    for (o, b) in out.iter_mut().zip(chunks) {
        *o = f(b);
    }
}

/// One tensor to write: name, dtype, shape and its little-endian bytes.
pub type TensorBytes<'a> = (String, Dtype, Vec<usize>, &'a [u8]);

/// A safetensors file with one byte form: the data in the given order, the header's JSON keys
/// sorted (`safetensors::serialize` writes the metadata in HashMap order, which changes from
/// process to process, so identical runs would write different bytes).
pub fn serialize_sorted(
    tensors: &[TensorBytes<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    for (name, dtype, shape, bytes) in tensors {
        let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let expected = elements.and_then(|n| n.checked_mul(dtype.bitsize()));
        if expected != Some(8 * bytes.len()) {
            bail!(
                "tensor {name}: shape {shape:?} does not hold {} bytes of {dtype:?}",
                bytes.len()
            );
        }
    }
    let layout: Vec<(&str, Dtype, &[usize])> = tensors
        .iter()
        .map(|(n, d, s, _)| (n.as_str(), *d, &s[..]))
        .collect();
    let mut out = sorted_header(&layout, metadata)?;
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// The header of [`serialize_sorted`] alone (8-byte length, then the JSON with sorted keys
/// padded to 8 bytes) for tensors `(name, dtype, shape)` whose data follow in the given order:
/// what a writer that streams the data needs first.
pub fn sorted_header(
    tensors: &[(&str, Dtype, &[usize])],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(tensors.len());
    for &(name, dtype, shape) in tensors {
        let bits = shape
            .iter()
            .try_fold(dtype.bitsize(), |a, &d| a.checked_mul(d))
            .with_context(|| format!("tensor {name}: shape {shape:?} overflows"))?;
        let bytes = bits / 8;
        infos.push((
            name.to_string(),
            TensorInfo {
                dtype,
                shape: shape.to_vec(),
                data_offsets: (offset, offset + bytes),
            },
        ));
        offset += bytes;
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let header = Metadata::new((!meta.is_empty()).then_some(meta), infos)
        .context("cannot build the safetensors header")?;
    // Through serde_json::Value, whose maps are sorted by key.
    let mut json = serde_json::to_string(&serde_json::to_value(&header)?)?.into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn file(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> SafetensorsFile {
        let view = TensorView::new(dtype, shape, data).unwrap();
        let bytes = safetensors::serialize([("a", view)], None).unwrap();
        SafetensorsFile::from_bytes(bytes, "mem".into()).unwrap()
    }

    #[test]
    fn floats_of_every_width_decode() {
        let f64s: Vec<u8> = [1.5f64, -2.25, 1e-300]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = file(Dtype::F64, vec![3], &f64s).tensor_f32("a").unwrap();
        assert_eq!(t.data, vec![1.5, -2.25, 0.0]);
        // The smallest f16 subnormal 2^-24 must survive (adm_variant has 3,951 subnormals).
        let f16s: Vec<u8> = [f16::from_bits(1), f16::from_f32(-3.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = file(Dtype::F16, vec![1, 2], &f16s).tensor_f32("a").unwrap();
        assert_eq!((t.shape, t.data), (vec![1, 2], vec![2f32.powi(-24), -3.0]));
        let mut h = [f16::ZERO; 1];
        decode_f16(Dtype::F32, &0.1f32.to_le_bytes(), &mut h).unwrap();
        assert_eq!(h[0], f16::from_f32(0.1));
    }

    #[test]
    fn integers_and_missing_names_are_refused() {
        let t = file(Dtype::I32, vec![1], &7i32.to_le_bytes());
        let e = format!("{:#}", t.tensor_f32("a").unwrap_err());
        assert!(
            e.contains("tensor `a`") && e.contains("unsupported dtype I32"),
            "{e}"
        );
        let e = format!("{:#}", t.tensor_f32("b").unwrap_err());
        assert!(e.contains("no tensor `b` (it has: a)"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_files_are_refused() {
        let good = safetensors::serialize(
            [(
                "a",
                TensorView::new(Dtype::F32, vec![4], &[0u8; 16]).unwrap(),
            )],
            None,
        )
        .unwrap();
        for bytes in [
            good[..good.len() - 3].to_vec(),
            b"not a safetensors file".to_vec(),
            Vec::new(),
        ] {
            let e = SafetensorsFile::from_bytes(bytes, "x.safetensors".into())
                .err()
                .unwrap();
            assert!(format!("{e:#}").starts_with("x.safetensors is not a valid safetensors file"));
        }
        let e = SafetensorsFile::open(Path::new("/nonexistent/w.safetensors"))
            .err()
            .unwrap();
        assert!(format!("{e:#}").starts_with("cannot read /nonexistent/w.safetensors"));
    }

    #[test]
    fn sorted_serialisation_has_one_byte_form_and_reads_back() {
        let a: Vec<u8> = [1.0f32, -2.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let h: Vec<u8> = [f16::from_f32(0.5)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let meta: BTreeMap<String, String> = (0..12)
            .map(|i| (format!("key{i}"), format!("v{i}")))
            .collect();
        let tensors = [
            ("zeta".to_string(), Dtype::F32, vec![2], &a[..]),
            ("alpha".to_string(), Dtype::F16, vec![1, 1], &h[..]),
        ];
        let bytes = serialize_sorted(&tensors, &meta).unwrap();
        assert_eq!(serialize_sorted(&tensors, &meta).unwrap(), bytes);
        let file = SafetensorsFile::from_bytes(bytes, "x".into()).unwrap();
        assert_eq!(file.tensor_f32("zeta").unwrap().data, vec![1.0, -2.5]);
        assert_eq!(file.tensor_f32("alpha").unwrap().data, vec![0.5]);
        assert_eq!(file.metadata().unwrap().len(), 12);
        let short = [("x".to_string(), Dtype::F32, vec![3], &a[..])];
        assert!(serialize_sorted(&short, &meta).is_err());
    }
}
