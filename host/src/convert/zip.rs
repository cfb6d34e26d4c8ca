//! A small, read-only zip reader for PyTorch checkpoints (`torch.save` since 1.6).
//!
//! torch writes a plain zip whose entries are *stored* (not compressed), with sizes in the
//! central directory (general-purpose flag bit 3, data descriptors) and a 64-byte alignment
//! padding in each local header's extra field. So the reader trusts the central directory,
//! takes each entry's data start from its local header, and returns borrowed slices of the
//! file: nothing is allocated per entry. Zip64 records (files over 4 GiB) are understood.
//! Compressed or encrypted entries are refused, with a message saying why.
//!
//! Every offset and size comes from the untrusted file, so each one is checked against the
//! file length before it is used; a failed check is an error naming the entry, never a panic.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;

/// One entry of the central directory, already bounds-checked against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// Name as stored (`archive/data/0`).
    pub name: String,
    /// CRC-32 of the data, from the central directory.
    pub crc32: u32,
    /// Byte range of the data in the file.
    pub start: usize,
    /// Length of the data.
    pub len: usize,
}

/// The entries of a zip file held in memory.
#[derive(Debug)]
pub struct ZipIndex {
    entries: Vec<ZipEntry>,
    by_name: HashMap<String, usize>,
}

/// Little-endian reads that fail instead of panicking.
fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    let s = b
        .get(at..at.saturating_add(2))
        .context("truncated zip structure")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let s = b
        .get(at..at.saturating_add(4))
        .context("truncated zip structure")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    let s = b
        .get(at..at.saturating_add(8))
        .context("truncated zip structure")?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// A u64 from the file as an in-file offset or length (it must fit in the file).
fn in_file(v: u64, file_len: usize, what: &str) -> Result<usize> {
    match usize::try_from(v) {
        Ok(v) if v <= file_len => Ok(v),
        _ => bail!("zip {what} {v} lies beyond the end of the file ({file_len} bytes)"),
    }
}

/// Where the central directory is and how many entries it claims.
struct Directory {
    offset: usize,
    size: usize,
    count: u64,
}

/// Finds the end-of-central-directory record (searching back over a possible comment).
fn find_eocd(b: &[u8]) -> Result<usize> {
    if b.len() < EOCD_LEN {
        bail!(
            "not a zip file ({} bytes, too short for a zip directory)",
            b.len()
        );
    }
    let lowest = b.len().saturating_sub(EOCD_LEN + u16::MAX as usize);
    (lowest..=b.len() - EOCD_LEN)
        .rev()
        .find(|&at| u32_at(b, at).ok() == Some(EOCD_SIG))
        .context("not a zip file (no end-of-central-directory record; truncated?)")
}

fn directory(b: &[u8]) -> Result<Directory> {
    let eocd = find_eocd(b)?;
    let count = u64::from(u16_at(b, eocd + 10)?);
    let size = u64::from(u32_at(b, eocd + 12)?);
    let offset = u64::from(u32_at(b, eocd + 16)?);
    let (count, size, offset, end) =
        if count == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
            let loc = eocd
                .checked_sub(20)
                .context("zip64 locator missing before the end record")?;
            if u32_at(b, loc)? != ZIP64_LOCATOR_SIG {
                bail!("zip64 locator missing before the end record");
            }
            let rec = in_file(u64_at(b, loc + 8)?, b.len(), "zip64 record offset")?;
            if u32_at(b, rec)? != ZIP64_EOCD_SIG {
                bail!("zip64 end record not found where the locator points");
            }
            (
                u64_at(b, rec + 32)?,
                u64_at(b, rec + 40)?,
                u64_at(b, rec + 48)?,
                rec,
            )
        } else {
            (count, size, offset, eocd)
        };
    let offset = in_file(offset, end, "central directory offset")?;
    let size = in_file(size, end - offset, "central directory size")?;
    if count > (size / CENTRAL_LEN) as u64 {
        bail!("zip directory claims {count} entries but holds only {size} bytes");
    }
    Ok(Directory {
        offset,
        size,
        count,
    })
}

/// The zip64 extra field (id 1) holds, in order, the u64 values whose 32-bit fields are full.
fn zip64_extra(extra: &[u8], wanted: &mut [&mut u64]) -> Result<()> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, at)?, u16_at(extra, at + 2)? as usize);
        let body = extra
            .get(at + 4..at + 4 + len)
            .context("truncated zip extra field")?;
        if id == 1 {
            let full = wanted.iter_mut().filter(|v| ***v == 0xFFFF_FFFF);
            for (k, v) in full.enumerate() {
                **v = u64_at(body, 8 * k)?;
            }
            return Ok(());
        }
        at += 4 + len;
    }
    Ok(())
}

/// Reads one central-directory record at `at`; returns the entry and the next record's offset.
fn central_entry(b: &[u8], at: usize, dir_end: usize) -> Result<(ZipEntry, usize)> {
    if u32_at(b, at)? != CENTRAL_SIG {
        bail!("corrupt zip directory (bad record signature at byte {at})");
    }
    let flags = u16_at(b, at + 8)?;
    let method = u16_at(b, at + 10)?;
    let crc32 = u32_at(b, at + 16)?;
    let mut comp = u64::from(u32_at(b, at + 20)?);
    let mut size = u64::from(u32_at(b, at + 24)?);
    let name_len = u16_at(b, at + 28)? as usize;
    let extra_len = u16_at(b, at + 30)? as usize;
    let comment_len = u16_at(b, at + 32)? as usize;
    let mut local = u64::from(u32_at(b, at + 42)?);
    let name_at = at + CENTRAL_LEN;
    let next = name_at + name_len + extra_len + comment_len;
    if next > dir_end {
        bail!("corrupt zip directory (record at byte {at} runs past the directory)");
    }
    let name = String::from_utf8_lossy(&b[name_at..name_at + name_len]).into_owned();
    let extra = &b[name_at + name_len..name_at + name_len + extra_len];
    zip64_extra(extra, &mut [&mut size, &mut comp, &mut local])?;
    let shown = printable(&name);
    if flags & 1 != 0 {
        bail!("zip entry `{shown}` is encrypted");
    }
    match method {
        0 => {}
        8 => bail!(
            "zip entry `{shown}` is deflate-compressed; only stored (uncompressed) entries are \
             read, as torch.save writes them (re-save the checkpoint with torch.save)"
        ),
        m => bail!("zip entry `{shown}` uses compression method {m}; only stored entries are read"),
    }
    if comp != size {
        bail!("zip entry `{shown}` is stored but its sizes differ ({comp} vs {size})");
    }
    let start = local_data_start(b, in_file(local, b.len(), "local header offset")?)
        .with_context(|| format!("zip entry `{shown}`"))?;
    let len = in_file(size, b.len() - start, "entry size")
        .with_context(|| format!("zip entry `{shown}` (truncated file?)"))?;
    Ok((
        ZipEntry {
            name,
            crc32,
            start,
            len,
        },
        next,
    ))
}

/// The data of an entry starts after its local header, whose extra field torch uses for
/// alignment padding (so it differs from the central directory's).
fn local_data_start(b: &[u8], at: usize) -> Result<usize> {
    if u32_at(b, at)? != LOCAL_SIG {
        bail!("no local header at byte {at}");
    }
    let n = u16_at(b, at + 26)? as usize + u16_at(b, at + 28)? as usize;
    let start = at + LOCAL_LEN + n;
    if start > b.len() {
        bail!("local header at byte {at} runs past the end of the file");
    }
    Ok(start)
}

impl ZipIndex {
    /// Reads the central directory of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<ZipIndex> {
        let dir = directory(bytes)?;
        let dir_end = dir.offset + dir.size;
        let mut entries = Vec::with_capacity(dir.count as usize);
        let mut by_name = HashMap::new();
        let mut at = dir.offset;
        for _ in 0..dir.count {
            let (entry, next) = central_entry(bytes, at, dir_end)?;
            if by_name.insert(entry.name.clone(), entries.len()).is_some() {
                bail!("zip entry `{}` appears twice", printable(&entry.name));
            }
            entries.push(entry);
            at = next;
        }
        Ok(ZipIndex { entries, by_name })
    }

    /// All entries in directory order.
    pub fn entries(&self) -> &[ZipEntry] {
        &self.entries
    }

    /// An entry by exact name.
    pub fn get(&self, name: &str) -> Option<&ZipEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The data of `entry` in `bytes` (the same bytes `parse` read), CRC-checked.
    pub fn data<'a>(&self, bytes: &'a [u8], entry: &ZipEntry) -> Result<&'a [u8]> {
        let data = bytes
            .get(entry.start..entry.start + entry.len)
            .context("zip entry outside the file")?;
        let crc = crc32(data);
        if crc != entry.crc32 {
            bail!(
                "zip entry `{}` is corrupt (CRC-32 {crc:08x}, directory says {:08x})",
                printable(&entry.name),
                entry.crc32
            );
        }
        Ok(data)
    }
}

/// An untrusted string made safe for a one-line message: control characters escaped,
/// at most 80 characters.
pub fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().nth(80).is_some() {
        out.push('…');
    }
    out
}

/// CRC-32 (IEEE, reflected, as zip uses), table-driven.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// Writes a zip of stored entries (tests, fuzz seeds): local headers, central directory,
/// end record; no zip64, no padding.
pub fn write_stored(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let (crc, len, n) = (crc32(data), data.len() as u32, name.len() as u16);
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(&n.to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes());
        };
        out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
        central.extend_from_slice(&[20, 0]);
        common(&mut central);
        central.extend_from_slice(&[0; 10]); // comment, disk, attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let (dir_offset, dir_size) = (out.len() as u32, central.len() as u32);
    out.extend_from_slice(&central);
    out.extend_from_slice(&EOCD_SIG.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let count = entries.len() as u16;
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&dir_size.to_le_bytes());
    out.extend_from_slice(&dir_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn written_zip_reads_back() {
        let bytes = write_stored(&[("a/data.pkl", b"xyz"), ("a/data/0", &[1, 2, 3, 4])]);
        let zip = ZipIndex::parse(&bytes).unwrap();
        assert_eq!(zip.entries().len(), 2);
        let e = zip.get("a/data/0").unwrap();
        assert_eq!(zip.data(&bytes, e).unwrap(), &[1, 2, 3, 4]);
    }

    #[test]
    fn zip64_end_records_are_followed() {
        let mut bytes = write_stored(&[("a/data.pkl", b"xyz")]);
        let eocd = bytes.len() - EOCD_LEN;
        let (count, size, offset) = (
            u64::from(u16_at(&bytes, eocd + 10).unwrap()),
            u64::from(u32_at(&bytes, eocd + 12).unwrap()),
            u64::from(u32_at(&bytes, eocd + 16).unwrap()),
        );
        bytes.truncate(eocd);
        let rec = bytes.len() as u64;
        bytes.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
        bytes.extend_from_slice(&44u64.to_le_bytes()); // size of the rest of the record
        bytes.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for v in [count, count, size, offset] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&rec.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&EOCD_SIG.to_le_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        bytes.extend_from_slice(&[0xFF; 8]);
        bytes.extend_from_slice(&[0, 0]);
        let zip = ZipIndex::parse(&bytes).unwrap();
        let e = zip.get("a/data.pkl").unwrap();
        assert_eq!(zip.data(&bytes, e).unwrap(), b"xyz");
    }

    #[test]
    fn damage_is_reported_not_panicked() {
        let bytes = write_stored(&[("a/data.pkl", b"xyz"), ("a/data/0", &[1, 2, 3, 4])]);
        // Every truncation fails cleanly.
        for cut in 0..bytes.len() {
            let _ = ZipIndex::parse(&bytes[..cut]).map(|z| {
                for e in z.entries() {
                    let _ = z.data(&bytes[..cut], e);
                }
            });
        }
        let e = ZipIndex::parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            format!("{e:#}").contains("no end-of-central-directory"),
            "{e:#}"
        );
        // A flipped data byte fails the CRC.
        let mut bad = bytes.clone();
        let start = ZipIndex::parse(&bytes)
            .unwrap()
            .get("a/data/0")
            .unwrap()
            .start;
        bad[start] ^= 1;
        let z = ZipIndex::parse(&bad).unwrap();
        let e = z.data(&bad, z.get("a/data/0").unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("is corrupt (CRC-32"), "{e:#}");
        // Deflate is refused by name.
        let mut deflated = bytes.clone();
        let dir = u32_at(&bytes, bytes.len() - 6).unwrap() as usize;
        deflated[dir + 10] = 8;
        let e = ZipIndex::parse(&deflated).unwrap_err();
        assert!(format!("{e:#}").contains("deflate-compressed"), "{e:#}");
    }
}
