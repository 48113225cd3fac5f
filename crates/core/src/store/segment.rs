//! CommitLog segment files: the 64-byte header, names (start byte offset as 20 digits, as
//! RocketMQ) and allocation by writing zeros. A segment is allocated under a `.tmp` name and
//! renamed only once fully zeroed and synced, so a segment file with its final name is always
//! whole. This module never interprets records.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{IoContext, Result, StoreError};
use super::le;
use super::storage::{Storage, StorageFile};

/// Segment header size; the first record starts here.
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// Magic of a segment header ("MFCL").
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"MFCL");
/// Format version written in every segment header.
pub const FORMAT_VERSION: u16 = 1;

/// An allocated CommitLog segment.
#[derive(Debug)]
pub struct Segment {
    /// Absolute byte offset of the segment's first byte (its name).
    pub base: u64,
    /// Size in bytes, header included.
    pub size: u64,
    /// File path.
    pub path: PathBuf,
    /// Open handle.
    pub file: Arc<dyn StorageFile>,
}

impl Segment {
    /// Absolute position one past the segment.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// File name for a segment or queue file starting at `offset`.
pub fn file_name(offset: u64) -> String {
    format!("{offset:020}")
}

/// Parses a 20-digit file name.
pub fn parse_file_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// Encodes a segment header.
pub fn encode_header(base: u64, size: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
    h[8..16].copy_from_slice(&size.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Opens an existing segment and verifies its header against its name.
pub fn open_segment(storage: &dyn Storage, path: &Path, base: u64) -> Result<Segment> {
    let file = storage.open(path, false).at(path)?;
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    let corrupt = |reason: String| StoreError::Corruption {
        file: path.to_path_buf(),
        offset: 0,
        reason,
    };
    file.read_exact_at(0, &mut h)
        .map_err(|e| corrupt(format!("segment header unreadable: {e}")))?;
    let word = |at: usize| le::u32_at(&h, at);
    let long = |at: usize| le::u64_at(&h, at);
    if word(0) != SEGMENT_MAGIC {
        return Err(corrupt(format!("bad segment magic {:#010x}", word(0))));
    }
    if word(60) != crc32c::crc32c(&h[..60]) {
        return Err(corrupt("segment header crc mismatch".into()));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "unsupported segment format version {version}"
        )));
    }
    let header_len = u16::from_le_bytes([h[6], h[7]]);
    if u64::from(header_len) != SEGMENT_HEADER_LEN {
        return Err(corrupt(format!(
            "unsupported segment header length {header_len}"
        )));
    }
    let size = long(8);
    if long(16) != base {
        return Err(corrupt(format!(
            "header says base {}, name says {base}",
            long(16)
        )));
    }
    let len = file.size().at(path)?;
    if len != size || size <= SEGMENT_HEADER_LEN {
        return Err(corrupt(format!(
            "segment is {len} bytes, header says {size}"
        )));
    }
    Ok(Segment {
        base,
        size,
        path: path.to_path_buf(),
        file,
    })
}

/// Allocates a segment: header plus zeros written for real (not a sparse file), synced,
/// renamed into place, directory synced. Fails with [`StoreError::NoSpace`] on ENOSPC.
/// `cancelled` is polled between chunks so a closing log need not wait for a whole segment.
pub fn allocate_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    size: u64,
    cancelled: &dyn Fn() -> bool,
) -> Result<Segment> {
    let path = dir.join(file_name(base));
    let tmp = dir.join(format!("{}.tmp", file_name(base)));
    let no_space = |e: &std::io::Error| e.kind() == std::io::ErrorKind::StorageFull;
    let result = (|| -> std::io::Result<Arc<dyn StorageFile>> {
        let file = storage.open(&tmp, true)?;
        file.set_len(0)?;
        file.write_at(0, &encode_header(base, size))?;
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK as usize];
        let mut off = SEGMENT_HEADER_LEN;
        while off < size {
            if cancelled() {
                return Err(std::io::Error::other("allocation cancelled"));
            }
            let n = CHUNK.min(size - off);
            file.write_at(off, &zeros[..n as usize])?;
            off += n;
        }
        file.sync_data()?;
        storage.rename(&tmp, &path)?;
        storage.sync_dir(dir)?;
        Ok(file)
    })();
    match result {
        Ok(file) => Ok(Segment {
            base,
            size,
            path,
            file,
        }),
        Err(e) => {
            let _ = storage.remove(&tmp);
            if no_space(&e) {
                Err(StoreError::NoSpace { path })
            } else {
                Err(StoreError::io(&path, e))
            }
        }
    }
}

/// Sequential reads of a segment through a large buffer: recovery and inspect look at every
/// record, and one `pread` per record would dominate their time.
#[derive(Debug)]
pub struct SegmentReader {
    seg: Arc<Segment>,
    buf: Vec<u8>,
    start: u64,
    len: usize,
}

impl SegmentReader {
    /// Read-ahead size.
    const CHUNK: usize = 1 << 20;

    /// A reader of `seg`.
    pub fn new(seg: Arc<Segment>) -> Self {
        SegmentReader {
            seg,
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// The segment read.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    /// `n` bytes at in-file offset `off` (fails past the segment's end).
    pub fn read(&mut self, off: u64, n: usize) -> std::io::Result<&[u8]> {
        let end = off + n as u64;
        if off < self.start || end > self.start + self.len as u64 {
            if end > self.seg.size {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "past segment end",
                ));
            }
            let want = n.max(Self::CHUNK).min((self.seg.size - off) as usize);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            self.seg.file.read_exact_at(off, &mut self.buf[..want])?;
            self.start = off;
            self.len = want;
        }
        let at = (off - self.start) as usize;
        Ok(&self.buf[at..at + n])
    }
}
