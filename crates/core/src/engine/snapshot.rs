//! Snapshot files: the engine state (`state.rs`) as of a log index, one file per index under
//! `snapshots/`, named by the index as 20 digits.
//!
//! A snapshot is written **before** the store's dispatch checkpoint at the same index, so at
//! open the store's checkpoint always has its snapshot: the engine loads the snapshot at the
//! store's dispatch point and re-applies the log after it, with the dispatch outcomes the state
//! depends on. Snapshots below the newest checkpoint are removed after it; a snapshot above the
//! store's dispatch point (a crash between the two writes) is removed at open.
//! This module owns the files only; it never decides when to snapshot.

use std::path::{Path, PathBuf};

use super::state::EngineState;
use crate::store::storage::{Storage, read_all, write_atomic};
use crate::store::{LogIndex, StoreError};

/// Directory under the data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";
const MAGIC: u32 = u32::from_le_bytes(*b"MFSN");
const VERSION: u32 = 1;
const HEADER: usize = 24;

fn dir(root: &Path) -> PathBuf {
    root.join(SNAPSHOT_DIR)
}

fn path(root: &Path, index: LogIndex) -> PathBuf {
    dir(root).join(format!("{index:020}"))
}

/// Snapshot indexes present, ascending (names that are not 20 digits are ignored); `None`
/// when there is no `snapshots/` directory.
fn list(storage: &dyn Storage, root: &Path) -> Result<Option<Vec<LogIndex>>, StoreError> {
    let d = dir(root);
    let names = match storage.list(&d) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&d, e)),
    };
    let mut out: Vec<LogIndex> = names
        .iter()
        .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|n| n.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(Some(out))
}

/// Writes the snapshot of `state` at `index` durably.
pub fn write(
    storage: &dyn Storage,
    root: &Path,
    index: LogIndex,
    state: &[u8],
) -> Result<(), StoreError> {
    let d = dir(root);
    if list(storage, root)?.is_none() {
        storage
            .create_dir_all(&d)
            .map_err(|e| StoreError::io(&d, e))?;
        storage
            .sync_dir(root)
            .map_err(|e| StoreError::io(root, e))?;
    }
    let mut b = Vec::with_capacity(HEADER + state.len() + 4);
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&(state.len() as u64).to_le_bytes());
    b.extend_from_slice(state);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let p = path(root, index);
    write_atomic(storage, &p, &b).map_err(|e| StoreError::io(&p, e))
}

/// Loads the snapshot at `index`. `None` (the state is empty) for index 0 or when there is no
/// snapshot file at all; a missing or damaged file at `index` otherwise is `Corruption`.
pub fn load(
    storage: &dyn Storage,
    root: &Path,
    index: LogIndex,
) -> Result<Option<EngineState>, StoreError> {
    // Index 0: nothing was dispatched, the state is empty. No snapshot file at all: the
    // directory predates snapshots (or a crash came between creating `snapshots/` and writing
    // the first one); it held no engine state then.
    if index == 0 || list(storage, root)?.is_none_or(|l| l.is_empty()) {
        return Ok(None);
    }
    let p = path(root, index);
    let corrupt = |reason: String| StoreError::Corruption {
        file: p.clone(),
        offset: 0,
        reason,
    };
    if !storage.exists(&p) {
        return Err(corrupt(format!(
            "no snapshot at the store's dispatch point {index}"
        )));
    }
    let b = read_all(storage, &p).map_err(|e| StoreError::io(&p, e))?;
    if b.len() < HEADER + 4 {
        return Err(corrupt("snapshot is shorter than its header".into()));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let long = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(a)
    };
    if body[..4] != MAGIC.to_le_bytes()
        || crc32c::crc32c(body).to_le_bytes() != crc
        || body[4..8] != VERSION.to_le_bytes()
        || long(8) != index
        || long(16) != (body.len() - HEADER) as u64
    {
        return Err(corrupt("snapshot does not verify".into()));
    }
    EngineState::decode(&body[HEADER..])
        .map(Some)
        .map_err(|why| corrupt(format!("snapshot state: {why}")))
}

/// Removes snapshots below `keep` (older than the store's newest checkpoint) and above `upto`.
pub fn prune(
    storage: &dyn Storage,
    root: &Path,
    keep: LogIndex,
    upto: LogIndex,
) -> Result<(), StoreError> {
    for index in list(storage, root)?.unwrap_or_default() {
        if index < keep || index > upto {
            let p = path(root, index);
            storage.remove(&p).map_err(|e| StoreError::io(&p, e))?;
        }
    }
    Ok(())
}
