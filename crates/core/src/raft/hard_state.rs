//! The hard state's file: the current term and the vote cast in it, written durably (temp
//! file, fsync, rename, directory fsync) when the core asks (`Action::SaveHardState`), before
//! anything that depends on them goes out; and the `joining` marker of a data directory that
//! has not yet caught up with the group (created with a new directory, removed when the core
//! reports `Joined`); and the `identity` file naming the node a directory belongs to. The
//! driver's and the engine's half: IO, no decisions.

use std::path::Path;

use crate::store::StoreError;
use crate::store::storage::{Storage, read_all, write_atomic};

pub use super::message::HardState;

/// File name under the data directory.
pub const HARD_STATE_FILE: &str = "hardstate";
/// Present while this data directory has not caught up with its group since it was created.
pub const JOINING_FILE: &str = "joining";
/// Which node this data directory belongs to.
pub const IDENTITY_FILE: &str = "identity";
const IDENTITY_MAGIC: u32 = u32::from_le_bytes(*b"MFID");

/// The node a data directory belongs to: `Ok(None)` when it has no identity yet (a directory
/// from before identities, or a new one), `Err` when the file does not verify.
pub fn load_identity(storage: &dyn Storage, root: &Path) -> Result<Option<u64>, StoreError> {
    let path = root.join(IDENTITY_FILE);
    if !storage.exists(&path) {
        return Ok(None);
    }
    let b = read_all(storage, &path).map_err(|e| StoreError::io(&path, e))?;
    if b.len() != 16
        || b[..4] != IDENTITY_MAGIC.to_le_bytes()
        || crc32c::crc32c(&b[..12]).to_le_bytes() != b[12..16]
    {
        return Err(StoreError::Corruption {
            file: path,
            offset: 0,
            reason: "identity does not verify".into(),
        });
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&b[4..12]);
    Ok(Some(u64::from_le_bytes(id)))
}

/// Gives the data directory its node's identity, durably (`magic, node id, crc`).
pub fn save_identity(storage: &dyn Storage, root: &Path, node: u64) -> Result<(), StoreError> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&IDENTITY_MAGIC.to_le_bytes());
    b.extend_from_slice(&node.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let path = root.join(IDENTITY_FILE);
    write_atomic(storage, &path, &b).map_err(|e| StoreError::io(&path, e))
}

/// Whether the data directory at `root` is a member (it has caught up with its group once):
/// `false` while the `joining` marker is there; a directory with an empty log and no hard
/// state is new (a first start, or a wiped disk) — the marker is written durably and it is
/// not a member yet. A directory from before the marker existed, with a log or a hard state,
/// is a member.
pub fn load_membership(
    storage: &dyn Storage,
    root: &Path,
    log_empty: bool,
) -> Result<bool, StoreError> {
    let joining = root.join(JOINING_FILE);
    if storage.exists(&joining) {
        return Ok(false);
    }
    if log_empty && !storage.exists(&root.join(HARD_STATE_FILE)) {
        write_atomic(storage, &joining, b"caught up with the group: not yet\n")
            .map_err(|e| StoreError::io(&joining, e))?;
        return Ok(false);
    }
    Ok(true)
}

/// The directory caught up: the marker goes, durably.
pub fn save_joined(storage: &dyn Storage, root: &Path) -> Result<(), StoreError> {
    let joining = root.join(JOINING_FILE);
    if !storage.exists(&joining) {
        return Ok(());
    }
    storage
        .remove(&joining)
        .and_then(|()| storage.sync_dir(root))
        .map_err(|e| StoreError::io(&joining, e))
}
const MAGIC: u32 = u32::from_le_bytes(*b"MFHS");

impl HardState {
    /// Loads the hard state, default (term 0, no vote) when there is none.
    pub fn load(storage: &dyn Storage, root: &Path) -> Result<Self, StoreError> {
        let path = root.join(HARD_STATE_FILE);
        if !storage.exists(&path) {
            return Ok(HardState::default());
        }
        let b = read_all(storage, &path).map_err(|e| StoreError::io(&path, e))?;
        let corrupt = || StoreError::Corruption {
            file: path.clone(),
            offset: 0,
            reason: "hard state does not verify".into(),
        };
        if b.len() != 24
            || crc32c::crc32c(&b[..20]).to_le_bytes() != b[20..24]
            || b[..4] != MAGIC.to_le_bytes()
        {
            return Err(corrupt());
        }
        let long = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        Ok(HardState {
            term: long(4),
            voted_for: long(12),
        })
    }

    /// Writes the hard state durably (temp file, fsync, rename, directory fsync).
    pub fn store(&self, storage: &dyn Storage, root: &Path) -> Result<(), StoreError> {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&self.term.to_le_bytes());
        b.extend_from_slice(&self.voted_for.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let path = root.join(HARD_STATE_FILE);
        write_atomic(storage, &path, &b).map_err(|e| StoreError::io(&path, e))
    }
}
