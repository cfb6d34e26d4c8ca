//! Outputs written chain by chain, in global chain order: samples.safetensors and grid.png.
//! The single run and `host merge` both write them with these writers, so the files are the
//! same bytes whichever process held the chains, and a merge of 50,000 samples holds only one
//! row of grid images in memory.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::output::f32_safetensors_header;
use super::output_policy::Outputs;
use crate::image_io::to_planes;
use anyhow::{bail, Context, Result};
use tweedie_nn::weights::meta::DataRange;

/// Grid padding (white pixels) around and between images.
const PAD: usize = 2;

/// f32 values as little-endian bytes (the safetensors data layout).
pub fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes to `out` a PNG grid of `n` images (C×H×W u8 planes each, which `fill` pushes one
/// at a time in order) in `cols` columns, one row of images at a time: the layout of
/// [`crate::image_io::grid_planes_in_columns`].
pub fn stream_grid_png<W: Write>(
    out: W,
    (n, cols): (usize, usize),
    (c, h, w): (usize, usize, usize),
    fill: impl FnOnce(&mut GridWriter<'_, W>) -> Result<()>,
) -> Result<()> {
    let cols = cols.max(1);
    let rows = n.div_ceil(cols).max(1);
    let (gh, gw) = (rows * (h + PAD) + PAD, cols * (w + PAD) + PAD);
    let color = match c {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        other => bail!("cannot write a PNG with {other} channels (1 or 3)"),
    };
    let mut enc = png::Encoder::new(out, gw as u32, gh as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().context("PNG encoding failed")?;
    let png = writer.stream_writer().context("PNG encoding failed")?;
    let mut grid = GridWriter {
        png,
        n,
        cols,
        c,
        h,
        w,
        pending: Vec::with_capacity(cols * c * h * w),
        pushed: 0,
    };
    grid.white_rows(PAD)?;
    fill(&mut grid)?;
    grid.finish()?;
    writer.finish().context("PNG encoding failed")
}

/// The grid being written by [`stream_grid_png`].
pub struct GridWriter<'a, W: Write> {
    png: png::StreamWriter<'a, W>,
    n: usize,
    cols: usize,
    c: usize,
    h: usize,
    w: usize,
    pending: Vec<u8>,
    pushed: usize,
}

/// The columns of a square-ish grid of `n` images (as `grid_planes`).
pub fn square_columns(n: usize) -> usize {
    (1..=n.max(1)).find(|k| k * k >= n).unwrap_or(1)
}

impl<W: Write> GridWriter<'_, W> {
    fn row_bytes(&self) -> usize {
        (self.cols * (self.w + PAD) + PAD) * self.c
    }

    fn white_rows(&mut self, rows: usize) -> Result<()> {
        let line = vec![255u8; self.row_bytes()];
        for _ in 0..rows {
            self.png.write_all(&line).context("PNG encoding failed")?;
        }
        Ok(())
    }

    /// Adds the next image (C×H×W u8 planes).
    pub fn push(&mut self, planes: &[u8]) -> Result<()> {
        let len = self.c * self.h * self.w;
        if planes.len() != len || self.pushed >= self.n {
            bail!(
                "internal error: grid image {} of {} has the wrong size or is one too many",
                self.pushed,
                self.n
            );
        }
        self.pending.extend_from_slice(planes);
        self.pushed += 1;
        if self.pending.len() == self.cols * len {
            self.flush_row()?;
        }
        Ok(())
    }

    /// Writes the pending images as one row of the grid (empty cells white).
    fn flush_row(&mut self) -> Result<()> {
        let (c, h, w) = (self.c, self.h, self.w);
        let len = c * h * w;
        let mut line = vec![255u8; self.row_bytes()];
        for y in 0..h {
            for (i, img) in self.pending.chunks_exact(len).enumerate() {
                let x0 = PAD + i * (w + PAD);
                for x in 0..w {
                    for ch in 0..c {
                        line[(x0 + x) * c + ch] = img[ch * h * w + y * w + x];
                    }
                }
            }
            self.png.write_all(&line).context("PNG encoding failed")?;
        }
        self.pending.clear();
        self.white_rows(PAD)
    }

    /// Ends the image data; every one of the `n` images must have been pushed.
    fn finish(mut self) -> Result<()> {
        if self.pushed != self.n {
            bail!(
                "internal error: grid got {} of {} images",
                self.pushed,
                self.n
            );
        }
        if !self.pending.is_empty() || self.n == 0 {
            self.flush_row()?;
        }
        self.png.finish().context("PNG encoding failed")
    }
}

/// The image every chain is: channels, side, data range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    /// C.
    pub channels: usize,
    /// H = W.
    pub size: usize,
    /// The data range the values live in.
    pub range: DataRange,
}

impl ImageShape {
    /// Values per chain.
    pub fn len(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// Whether a chain has no values (never, for a real model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// As JSON (for shard manifests).
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({"channels": self.channels, "size": self.size,
            "data_range": self.range.as_str()})
    }

    /// From [`ImageShape::to_json`].
    pub fn from_json(v: &serde_json::Value) -> Result<ImageShape> {
        let field = |k: &str| v[k].as_u64().map(|x| x as usize);
        let (Some(channels), Some(size), Some(range)) = (
            field("channels"),
            field("size"),
            v["data_range"].as_str().and_then(|r| r.parse().ok()),
        ) else {
            bail!("image shape {v} is not channels, size, data_range");
        };
        Ok(ImageShape {
            channels,
            size,
            range,
        })
    }
}

/// Chains in global order, from memory or from files.
pub trait ChainSource {
    /// Calls `f` with every chain, in order.
    fn each(&self, f: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()>;
}

/// Chains back to back in memory.
pub struct InMemory<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Values per chain.
    pub len: usize,
}

impl ChainSource for InMemory<'_> {
    fn each(&self, f: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        self.data.chunks_exact(self.len).try_for_each(f)
    }
}

/// Writes the N×C×H×W tensor `samples` (with `tweedie.data_range` and the extra `metadata`)
/// of the `n` chains of `src` to `rel`.
pub fn write_samples_tensor(
    out: &mut Outputs,
    rel: &Path,
    shape: ImageShape,
    n: usize,
    src: &dyn ChainSource,
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    meta.insert("tweedie.data_range".into(), shape.range.as_str().into());
    let (c, s) = (shape.channels, shape.size);
    let header = f32_safetensors_header(&[("samples", &[n, c, s, s])], meta)?;
    out.write_with(rel, |w| {
        w.write_all(&header)?;
        let mut count = 0;
        src.each(&mut |chain| {
            count += 1;
            Ok(w.write_all(&f32_le_bytes(chain))?)
        })?;
        if count != n {
            bail!("internal error: {count} chains for a tensor of {n}");
        }
        Ok(())
    })
}

/// Writes grid.png of the `n` chains of `src` (square-ish, as `grid_png`).
pub fn write_grid(
    out: &mut Outputs,
    rel: &Path,
    shape: ImageShape,
    n: usize,
    src: &dyn ChainSource,
) -> Result<()> {
    let (c, s) = (shape.channels, shape.size);
    out.write_with(rel, |w| {
        stream_grid_png(w, (n, square_columns(n)), (c, s, s), |grid| {
            src.each(&mut |chain| grid.push(&to_planes(chain, shape.range)))
        })
    })
}

/// A samples.safetensors-layout file read chain by chain (a shard's `chains.safetensors`).
pub struct ChainsFile {
    path: PathBuf,
    data_start: u64,
    /// Chains in the file.
    pub count: usize,
    /// Values per chain.
    pub len: usize,
}

impl ChainsFile {
    /// Opens `path` and checks it holds one F32 tensor `samples` of [count, C, H, W] for
    /// `shape`.
    pub fn open(path: &Path, shape: ImageShape) -> Result<ChainsFile> {
        let label = path.display();
        let mut f = tweedie_nn::input::open_regular(path)?;
        let mut n8 = [0u8; 8];
        f.read_exact(&mut n8)
            .with_context(|| format!("{label}: not a safetensors file"))?;
        let n = u64::from_le_bytes(n8);
        if n > 100_000_000 {
            bail!("{label}: header of {n} bytes is not plausible");
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header)
            .with_context(|| format!("{label}: truncated header"))?;
        let meta: serde_json::Value = serde_json::from_slice(&header)
            .with_context(|| format!("{label}: header is not JSON"))?;
        let t = &meta["samples"];
        let dims: Vec<usize> = t["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .unwrap_or_default();
        let (c, s) = (shape.channels, shape.size);
        if t["dtype"] != "F32" || dims.len() != 4 || dims[1..] != [c, s, s] {
            bail!("{label}: tensor `samples` is not F32 [N, {c}, {s}, {s}]");
        }
        let count = dims[0];
        let bytes = (count * shape.len() * 4) as u64;
        let size = f
            .metadata()
            .with_context(|| format!("cannot read {label}"))?
            .len();
        if size != 8 + n + bytes || t["data_offsets"] != serde_json::json!([0, bytes]) {
            bail!("{label}: file size {size} does not fit its header");
        }
        Ok(ChainsFile {
            path: path.to_path_buf(),
            data_start: 8 + n,
            count,
            len: shape.len(),
        })
    }

    /// Calls `f` with every chain in the file, reading one chain at a time.
    pub fn each(&self, f: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        let label = self.path.display();
        let mut file = tweedie_nn::input::open_regular(&self.path)?;
        file.seek(SeekFrom::Start(self.data_start))
            .with_context(|| format!("cannot read {label}"))?;
        let mut r = std::io::BufReader::new(file);
        let mut bytes = vec![0u8; self.len * 4];
        let mut chain = vec![0.0f32; self.len];
        for _ in 0..self.count {
            r.read_exact(&mut bytes)
                .with_context(|| format!("{label}: truncated"))?;
            for (v, b) in chain.iter_mut().zip(bytes.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            f(&chain)?;
        }
        Ok(())
    }
}

/// The chains of several files, one after the other.
pub struct ChainFiles(pub Vec<ChainsFile>);

impl ChainSource for ChainFiles {
    fn each(&self, f: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        self.0.iter().try_for_each(|file| file.each(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_io::grid_planes_in_columns;
    use crate::run::output::safetensors_bytes;

    #[test]
    fn the_streamed_tensor_is_the_in_memory_file() {
        for shape in [vec![3usize, 1, 2, 2], vec![1, 3, 5, 5], vec![0, 1, 4, 4]] {
            let values: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|i| i as f32 * 0.25 - 1.0)
                .collect();
            let meta: HashMap<String, String> =
                [("tweedie.data_range".to_string(), "-1,1".to_string())].into();
            let want =
                safetensors_bytes(&[("samples", shape.clone(), &values)], meta.clone()).unwrap();
            let mut got = f32_safetensors_header(&[("samples", &shape)], meta).unwrap();
            got.extend(f32_le_bytes(&values));
            assert_eq!(got, want, "shape {shape:?}");
        }
    }

    #[test]
    fn the_streamed_grid_has_the_in_memory_grids_pixels() {
        for (n, c, cols) in [(5usize, 1usize, 3usize), (4, 3, 2), (1, 1, 1), (7, 3, 3)] {
            let (h, w) = (3, 4);
            let images: Vec<u8> = (0..n * c * h * w).map(|i| (i * 7 % 251) as u8).collect();
            let (planes, gh, gw) = grid_planes_in_columns(&images, n, cols, c, h, w);
            let mut bytes = Vec::new();
            stream_grid_png(&mut bytes, (n, cols), (c, h, w), |g| {
                images
                    .chunks_exact(c * h * w)
                    .try_for_each(|img| g.push(img))
            })
            .unwrap();
            let decoded = image::load_from_memory(&bytes).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (gw as u32, gh as u32));
            let raw = decoded.into_bytes();
            for y in 0..gh {
                for x in 0..gw {
                    for ch in 0..c {
                        assert_eq!(
                            raw[(y * gw + x) * c + ch],
                            planes[ch * gh * gw + y * gw + x],
                            "n {n} c {c} at ({x},{y},{ch})"
                        );
                    }
                }
            }
        }
    }
}
