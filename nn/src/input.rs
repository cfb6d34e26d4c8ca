//! Opening input files, for every reader of the project: regular files only (a folder, FIFO,
//! device node or socket is refused by name before it is opened, so `/dev/zero` fails at once
//! and a FIFO never blocks), and whole-file reads capped by what the format allows, so no
//! input can make a run read without end.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The largest safetensors file read whole (weights, checkpoints, references): 64 GiB.
pub const MAX_SAFETENSORS_BYTES: u64 = 64 << 30;
/// The largest PyTorch checkpoint (`host convert --from`): 64 GiB.
pub const MAX_CHECKPOINT_BYTES: u64 = 64 << 30;
/// The largest IDX dataset file: 4 GiB (MNIST's training images are 47 MB).
pub const MAX_IDX_BYTES: u64 = 4 << 30;
/// The largest encoded image file: 256 MiB (decoded size is bounded separately).
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;
/// The most pixels an input image may have (decoded: 8192×8192; a 13000×13000 PNG of a few
/// hundred kilobytes is refused from its header, before decoding).
pub const MAX_IMAGE_PIXELS: u64 = 8192 * 8192;
/// The most memory the image decoder may allocate for one image: 1 GiB.
const MAX_IMAGE_ALLOC: u64 = 1 << 30;
/// The largest JSON file (configs, manifests, run records): 256 MiB.
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// What a non-regular file is, for messages.
fn special_kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (a symlink to one is fine).
pub fn open_regular(path: &Path) -> Result<File> {
    let cannot = || format!("cannot read {}", path.display());
    let meta = std::fs::metadata(path).with_context(cannot)?;
    if !meta.file_type().is_file() {
        bail!(
            "cannot read {}: {}, not a regular file",
            path.display(),
            special_kind(meta.file_type())
        );
    }
    let file = File::open(path).with_context(cannot)?;
    // The path may have been replaced between the two calls: check what was opened.
    if !file.metadata().with_context(cannot)?.file_type().is_file() {
        bail!("cannot read {}: not a regular file", path.display());
    }
    Ok(file)
}

/// Reads regular file `path` whole, refusing it above `max` bytes, the most a `what` (a
/// format, for the message) may have: checked before reading, and again while reading, in
/// case the file grows.
pub fn read_capped(path: &Path, what: &str, max: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > max {
        bail!(
            "{}: {len} bytes is more than a {what} may have ({max} bytes)",
            path.display()
        );
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|_| anyhow::anyhow!("{}: not enough memory for {len} bytes", path.display()))?;
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!("{}: grew past {max} bytes while being read", path.display());
    }
    Ok(bytes)
}

/// Reads a UTF-8 text file (JSON) whole, capped at [`MAX_JSON_BYTES`].
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    String::from_utf8(read_capped(path, what, MAX_JSON_BYTES)?)
        .map_err(|_| anyhow::anyhow!("{}: is not UTF-8 text", path.display()))
}

/// Decodes an encoded image (format from its first bytes), refusing one above
/// [`MAX_IMAGE_PIXELS`] from its header, before decoding; `label` names it in errors.
pub fn decode_image(bytes: &[u8], label: &str) -> Result<image::DynamicImage> {
    let reader = || -> Result<image::ImageReader<std::io::Cursor<&[u8]>>> {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .with_context(|| format!("{label} is not a readable PNG or JPEG image"))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .with_context(|| format!("{label} is not a readable PNG or JPEG image"))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_IMAGE_PIXELS {
        bail!(
            "{label}: {w}x{h} pixels is more than an input image may have ({MAX_IMAGE_PIXELS} \
             pixels); resize it first"
        );
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    let mut decoder = reader()?;
    decoder.limits(limits);
    decoder
        .decode()
        .with_context(|| format!("{label} is not a readable PNG or JPEG image"))
}

/// Reads and decodes image file `path` (capped at [`MAX_IMAGE_BYTES`] and
/// [`MAX_IMAGE_PIXELS`]).
pub fn read_image(path: &Path) -> Result<image::DynamicImage> {
    let bytes = read_capped(path, "image file", MAX_IMAGE_BYTES)?;
    decode_image(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<Vec<u8>>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn special_files_are_refused_by_name_without_blocking() {
        let e = err(read_capped(Path::new("/dev/zero"), "weights file", 1 << 20));
        assert_eq!(
            e,
            "cannot read /dev/zero: a character device, not a regular file"
        );
        let dir = std::env::temp_dir().join(format!("tweedie-input-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let e = err(read_capped(&dir, "image", 10));
        assert!(e.contains("a folder, not a regular file"), "{e}");
        let fifo = dir.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        // Opening a FIFO for reading would block until a writer came: refused first.
        let e = err(read_capped(&fifo, "image", 10));
        assert!(e.contains("a FIFO, not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A PNG chunk: length, type, data, CRC-32.
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = !0u32;
        for &byte in kind.iter().chain(data) {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&(!crc).to_be_bytes());
        out
    }

    /// The header of a 13000×13000 RGB PNG (a real bomb's zeros compress to ~500 KB; the
    /// refusal needs only the header).
    #[test]
    fn an_image_bomb_is_refused_from_its_header() {
        let mut ihdr = 13_000u32.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&13_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &ihdr));
        png.extend(chunk(
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ));
        png.extend(chunk(b"IEND", &[]));
        let e = format!("{:#}", decode_image(&png, "bomb.png").unwrap_err());
        assert_eq!(
            e,
            "bomb.png: 13000x13000 pixels is more than an input image may have (67108864 \
             pixels); resize it first"
        );
        let small = image::DynamicImage::new_luma8(3, 2);
        let mut bytes = Vec::new();
        small
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        assert_eq!(decode_image(&bytes, "ok.png").unwrap(), small);
        assert!(decode_image(b"not an image", "x").is_err());
    }

    #[test]
    fn reads_are_capped_and_regular_files_read_whole() {
        let dir = std::env::temp_dir().join(format!("tweedie-input-cap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_capped(&path, "f", 10).unwrap(), b"0123456789");
        let e = err(read_capped(&path, "test file", 9));
        assert!(
            e.ends_with("f: 10 bytes is more than a test file may have (9 bytes)"),
            "{e}"
        );
        let e = err(read_capped(&dir.join("missing"), "test file", 9));
        assert!(e.starts_with("cannot read /"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
