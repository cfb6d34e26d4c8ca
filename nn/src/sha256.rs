//! SHA-256 as lowercase hex: of bytes and of files (streamed, regular files only). The one
//! form every pin, manifest, metadata key and data check uses.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The hex sha256 of `bytes`.
pub fn of_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The hex sha256 of the file at `path`, read in 1 MiB pieces.
pub fn of_file(path: &Path) -> Result<String> {
    let mut file = crate::input::open_regular(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A digest as lowercase hex.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-2 test vector, for bytes and for a file.
    #[test]
    fn abc() {
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(of_bytes(b"abc"), want);
        let path = std::env::temp_dir().join(format!("tweedie-sha-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(of_file(&path).unwrap(), want);
        std::fs::remove_file(&path).unwrap();
    }
}
