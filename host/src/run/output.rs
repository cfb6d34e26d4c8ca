//! Output files (formats.md §5): each written to a temporary name in its folder and renamed
//! when complete. An [`Outputs`] set that is dropped without [`Outputs::commit`] (an error
//! anywhere) removes every file it wrote and the folders it created, so a failed run leaves no
//! partial output behind.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

/// The files of one command, all-or-nothing.
#[derive(Debug)]
pub struct Outputs {
    root: PathBuf,
    created_dirs: Vec<PathBuf>,
    written: Vec<PathBuf>,
    /// The files written, as given to `write` (relative to the root).
    files: Vec<PathBuf>,
    committed: bool,
}

/// Checks that `path`'s parent folder exists (the folder itself may not).
fn check_parent(path: &Path, what: &str) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "{what} {}: folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

impl Outputs {
    /// Outputs under folder `dir`: it must exist, or its parent must (then it is created at
    /// the first write, and removed again on failure). Checked now, before any work.
    pub fn in_folder(dir: &Path) -> Result<Outputs> {
        if dir.exists() && !dir.is_dir() {
            bail!("--out {}: exists and is not a folder", dir.display());
        }
        if !dir.exists() {
            check_parent(dir, "--out")?;
        }
        Ok(Outputs {
            root: dir.to_path_buf(),
            created_dirs: Vec::new(),
            written: Vec::new(),
            files: Vec::new(),
            committed: false,
        })
    }

    /// Outputs that are single files anywhere (their folders must exist).
    pub fn files() -> Outputs {
        Outputs {
            root: PathBuf::new(),
            created_dirs: Vec::new(),
            written: Vec::new(),
            files: Vec::new(),
            committed: false,
        }
    }

    /// Checks that a single output file can be created later (its folder exists).
    pub fn check_file(path: &Path, what: &str) -> Result<()> {
        if path.is_dir() {
            bail!("{what} {}: is a folder", path.display());
        }
        check_parent(path, what)
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every file written so far, relative to the root, in order.
    pub fn written_files(&self) -> &[PathBuf] {
        &self.files
    }

    fn ensure_dir(&mut self, dir: &Path) -> Result<()> {
        if dir.as_os_str().is_empty() || dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.ensure_dir(parent)?;
        }
        std::fs::create_dir(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
        self.created_dirs.push(dir.to_path_buf());
        Ok(())
    }

    /// Writes `bytes` to `rel` (relative to the root; an absolute or single-file path as is)
    /// through a temporary name in the same folder.
    pub fn write(&mut self, rel: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(rel.as_ref());
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.ensure_dir(&dir)?;
        let name = path
            .file_name()
            .with_context(|| format!("output path {} has no file name", path.display()))?;
        let tmp = dir.join(format!(".{}.partial", name.to_string_lossy()));
        self.written.push(tmp.clone());
        std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot rename to {}", path.display()))?;
        self.written.push(path);
        self.files.push(rel.as_ref().to_path_buf());
        Ok(())
    }

    /// Writes `rel` as [`Outputs::write`] does, from a writer `fill` streams into (so a large
    /// file never sits in memory).
    pub fn write_with(
        &mut self,
        rel: impl AsRef<Path>,
        fill: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let path = self.root.join(rel.as_ref());
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.ensure_dir(&dir)?;
        let name = path
            .file_name()
            .with_context(|| format!("output path {} has no file name", path.display()))?;
        let tmp = dir.join(format!(".{}.partial", name.to_string_lossy()));
        self.written.push(tmp.clone());
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mut w = BufWriter::new(file);
        fill(&mut w).with_context(|| format!("cannot write {}", path.display()))?;
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot rename to {}", path.display()))?;
        self.written.push(path);
        self.files.push(rel.as_ref().to_path_buf());
        Ok(())
    }

    /// Copies the file `src` to `rel`, streamed.
    pub fn copy_from(&mut self, rel: impl AsRef<Path>, src: &Path) -> Result<()> {
        let mut file =
            std::fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
        self.write_with(rel, |w| {
            std::io::copy(&mut file, w)
                .with_context(|| format!("cannot read {}", src.display()))?;
            Ok(())
        })
    }

    /// Keeps everything written.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for f in &self.written {
            let _ = std::fs::remove_file(f);
        }
        for d in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

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
    fn dropped_outputs_leave_nothing_and_committed_ones_stay() {
        let base = std::env::temp_dir().join(format!("tweedie-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let dir = base.join("run");
        {
            let mut o = Outputs::in_folder(&dir).unwrap();
            o.write("a.txt", b"1").unwrap();
            o.write("sub/b.txt", b"2").unwrap();
            assert!(dir.join("sub/b.txt").exists());
        }
        assert!(!dir.exists(), "a failed run leaves no folder");
        let mut o = Outputs::in_folder(&dir).unwrap();
        o.write("a.txt", b"1").unwrap();
        o.commit();
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"1");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary files remain");
        let e = Outputs::in_folder(&base.join("missing/run")).unwrap_err();
        assert!(format!("{e:#}").contains("does not exist"));
        std::fs::remove_dir_all(&base).unwrap();
    }

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
