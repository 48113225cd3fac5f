//! The checkpoint: the points up to which the CommitLog and the log-index map are known to be
//! durable, and the first index still held. Recovery scans from here instead of from the start,
//! which is what keeps recovery time independent of the log's size. Written atomically
//! (`write_atomic`); never updated in place.

use std::path::Path;

use super::entry::LogIndex;
use super::error::{IoContext, Result, StoreError};
use super::le;
use super::storage::{Storage, read_all, write_atomic};

/// File name under the data directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
const MAGIC: u32 = u32::from_le_bytes(*b"MFCP");
const VERSION: u16 = 1;
const LEN: usize = 64;

/// Durable points of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// First index still held (older segments were deleted).
    pub first_index: LogIndex,
    /// Every entry up to here was fdatasynced; bad bytes at or below it are corruption.
    pub flushed_index: LogIndex,
    /// Every log-index map record up to here was fdatasynced.
    pub map_flushed_index: LogIndex,
    /// Recovery verifies every entry after this one, so entries in
    /// `(verify_from_index, flushed_index]` that fail to verify are reported as corruption
    /// rather than cut as a torn tail. The writer sets it to the previous checkpoint's flushed
    /// index; recovery keeps its own scan start; `truncate_after` lowers it to the cut.
    pub verify_from_index: LogIndex,
}

impl Checkpoint {
    /// Encodes to the 64-byte file image.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.first_index.to_le_bytes());
        b[16..24].copy_from_slice(&self.flushed_index.to_le_bytes());
        b[24..32].copy_from_slice(&self.map_flushed_index.to_le_bytes());
        b[32..40].copy_from_slice(&self.verify_from_index.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and verifies.
    pub fn decode(b: &[u8], path: &Path) -> Result<Self> {
        let corrupt = |reason: &str| StoreError::Corruption {
            file: path.to_path_buf(),
            offset: 0,
            reason: reason.into(),
        };
        if b.len() != LEN {
            return Err(corrupt("checkpoint has the wrong size"));
        }
        let long = |at: usize| le::u64_at(b, at);
        let word = |at: usize| le::u32_at(b, at);
        if word(0) != MAGIC || word(60) != crc32c::crc32c(&b[..60]) {
            return Err(corrupt("checkpoint magic or crc mismatch"));
        }
        if u16::from_le_bytes([b[4], b[5]]) != VERSION {
            return Err(corrupt("unsupported checkpoint version"));
        }
        Ok(Checkpoint {
            first_index: long(8),
            flushed_index: long(16),
            map_flushed_index: long(24),
            verify_from_index: long(32),
        })
    }

    /// Reads the checkpoint under `dir`, `None` if there is none.
    pub fn load(storage: &dyn Storage, dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(CHECKPOINT_FILE);
        if !storage.exists(&path) {
            return Ok(None);
        }
        let bytes = read_all(storage, &path).at(&path)?;
        Self::decode(&bytes, &path).map(Some)
    }

    /// Writes the checkpoint atomically.
    pub fn store(&self, storage: &dyn Storage, dir: &Path) -> Result<()> {
        let path = dir.join(CHECKPOINT_FILE);
        write_atomic(storage, &path, &self.encode()).at(path)
    }
}
