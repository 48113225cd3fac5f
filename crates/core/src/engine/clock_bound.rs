//! The clock bound: a durable upper bound on every timestamp the proposer has stamped, so that
//! an auto ID is never reused for different content after an unclean restart in `async` mode.
//!
//! In `async` mode an entry is acknowledged (and readers see its ID) before it is on disk, so a
//! power cut can lose entries whose IDs clients hold. The proposer's clock restarts from the last
//! entry that survived, which can be older than the lost ones; a wall clock stepped back, or a
//! restart within the same millisecond, would then hand out the lost IDs again for different
//! content. The proposer therefore never stamps a timestamp beyond the bound on disk: when its
//! clock passes the bound it first makes `clock + lease` durable. After an unclean restart the
//! clock starts at `bound + 1`, so every topic's auto-ID floor is `max(last ID, now)` with "now"
//! later than anything handed out before the crash.
//!
//! This module owns the `clockbound` file only; it never reads the wall clock itself.

use std::path::Path;

use crate::store::StoreError;
use crate::store::storage::{Storage, read_all, write_atomic};

/// File name under the data directory.
pub const CLOCK_BOUND_FILE: &str = "clockbound";
const MAGIC: u32 = u32::from_le_bytes(*b"MFCB");
const LEN: usize = 16;

/// Loads the bound (milliseconds since the Unix epoch); 0 when there is none.
pub fn load(storage: &dyn Storage, root: &Path) -> Result<u64, StoreError> {
    let path = root.join(CLOCK_BOUND_FILE);
    if !storage.exists(&path) {
        return Ok(0);
    }
    let b = read_all(storage, &path).map_err(|e| StoreError::io(&path, e))?;
    if b.len() != LEN
        || b[..4] != MAGIC.to_le_bytes()
        || crc32c::crc32c(&b[..12]).to_le_bytes() != b[12..16]
    {
        return Err(StoreError::Corruption {
            file: path,
            offset: 0,
            reason: "clock bound does not verify".into(),
        });
    }
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&b[4..12]);
    Ok(u64::from_le_bytes(ms))
}

/// Writes the bound durably (temp file, fsync, rename, directory fsync).
pub fn store(storage: &dyn Storage, root: &Path, bound_ms: u64) -> Result<(), StoreError> {
    let mut b = Vec::with_capacity(LEN);
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&bound_ms.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let path = root.join(CLOCK_BOUND_FILE);
    write_atomic(storage, &path, &b).map_err(|e| StoreError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SimDisk;

    #[test]
    fn round_trips_and_rejects_damage() -> Result<(), StoreError> {
        let disk = SimDisk::new();
        let root = Path::new("/d");
        assert_eq!(load(&disk, root)?, 0);
        disk.create_dir_all(root)
            .map_err(|e| StoreError::io(root, e))?;
        store(&disk, root, 1_700_000_000_123)?;
        assert_eq!(load(&disk, root)?, 1_700_000_000_123);
        let path = root.join(CLOCK_BOUND_FILE);
        let f = disk
            .open(&path, false)
            .map_err(|e| StoreError::io(&path, e))?;
        f.write_at(6, &[0xff])
            .map_err(|e| StoreError::io(&path, e))?;
        assert!(matches!(
            load(&disk, root),
            Err(StoreError::Corruption { .. })
        ));
        Ok(())
    }
}
