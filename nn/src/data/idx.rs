//! The IDX format of MNIST (data.md §1.1): a big-endian u32 magic `0x0000_08NN` (0x08 =
//! unsigned bytes, NN = number of dimensions), one big-endian u32 per dimension, then the
//! bytes row-major.
//!
//! Every header field is checked against the file length before anything is allocated or
//! sliced: a wrong magic, a truncated file or trailing bytes is a one-line error, never a
//! panic, and no allocation is sized by an unchecked header.

use std::path::Path;

use anyhow::{bail, Result};

/// Magic of a 3-D unsigned-byte IDX file (images).
pub const MAGIC_IMAGES: u32 = 0x0000_0803;
/// Magic of a 1-D unsigned-byte IDX file (labels).
pub const MAGIC_LABELS: u32 = 0x0000_0801;

/// Images of an IDX3 file: `count` × `rows` × `cols` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// `count · rows · cols` bytes, row-major.
    pub pixels: Vec<u8>,
}

/// Parses an IDX3 image file held in memory; `label` names it in errors.
pub fn parse_images(bytes: &[u8], label: &str) -> Result<IdxImages> {
    let (dims, data) = parse(bytes, 3, label)?;
    Ok(IdxImages {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels: data.to_vec(),
    })
}

/// Parses an IDX1 label file held in memory; `label` names it in errors.
pub fn parse_labels(bytes: &[u8], label: &str) -> Result<Vec<u8>> {
    let (_, data) = parse(bytes, 1, label)?;
    Ok(data.to_vec())
}

/// Reads an IDX3 image file.
pub fn read_images(path: &Path) -> Result<IdxImages> {
    parse_images(&read(path)?, &path.display().to_string())
}

/// Reads an IDX1 label file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    parse_labels(&read(path)?, &path.display().to_string())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    crate::input::read_capped(path, "IDX file", crate::input::MAX_IDX_BYTES)
}

/// Checks the header of an unsigned-byte IDX file with `ndims` dimensions and returns the
/// dimensions and the data bytes (exactly their product).
fn parse<'a>(bytes: &'a [u8], ndims: usize, label: &str) -> Result<(Vec<usize>, &'a [u8])> {
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        bail!(
            "{label}: truncated IDX file ({} bytes, the header alone needs {header})",
            bytes.len()
        );
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let magic = word(0);
    let expected = 0x0800 | ndims as u32;
    if magic != expected {
        bail!(
            "{label}: not an unsigned-byte IDX file with {ndims} dimension(s): \
             magic {magic:#010x}, expected {expected:#010x}"
        );
    }
    let dims: Vec<usize> = (0..ndims).map(|d| word(4 + 4 * d) as usize).collect();
    let need = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let have = bytes.len() - header;
    match need {
        Some(n) if n == have => Ok((dims, &bytes[header..])),
        Some(n) if n > have => bail!(
            "{label}: truncated IDX file: dimensions {dims:?} need {n} data bytes, found {have}"
        ),
        Some(n) => bail!(
            "{label}: size mismatch: dimensions {dims:?} need {n} data bytes, \
             found {have} ({} trailing)",
            have - n
        ),
        None => bail!("{label}: IDX dimensions {dims:?} overflow"),
    }
}

/// Builds an IDX file in memory (tests and fixtures).
pub fn encode(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..24).collect();
        let images = parse_images(&encode(MAGIC_IMAGES, &[2, 3, 4], &data), "t").unwrap();
        assert_eq!((images.count, images.rows, images.cols), (2, 3, 4));
        assert_eq!(images.pixels, data);
        let labels = parse_labels(&encode(MAGIC_LABELS, &[3], &[7, 0, 9]), "l").unwrap();
        assert_eq!(labels, vec![7, 0, 9]);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let err = |bytes: &[u8]| parse_images(bytes, "f").unwrap_err().to_string();
        assert!(err(&[0, 0, 8]).contains("truncated"));
        assert!(err(&encode(MAGIC_LABELS, &[1, 1, 1], &[0])).contains("magic"));
        assert!(err(&encode(0x0000_0d03, &[1, 1, 1], &[0])).contains("magic"));
        assert!(err(&encode(MAGIC_IMAGES, &[2, 2, 2], &[0; 7])).contains("truncated"));
        assert!(err(&encode(MAGIC_IMAGES, &[1, 2, 2], &[0; 5])).contains("trailing"));
        // A huge header on a tiny file: refused before any allocation.
        let e = err(&encode(
            MAGIC_IMAGES,
            &[u32::MAX, u32::MAX, u32::MAX],
            &[0; 4],
        ));
        assert!(e.contains("overflow") || e.contains("truncated"), "{e}");
        assert!(err(&encode(MAGIC_IMAGES, &[60000, 28, 28], &[0; 16])).contains("truncated"));
        assert!(parse_labels(&encode(MAGIC_LABELS, &[3], &[1, 2]), "l").is_err());
        assert!(read_labels(Path::new("/nonexistent/idx")).is_err());
    }
}
