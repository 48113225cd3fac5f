//! The hard state's file: the current term and the vote cast in it, written durably (temp
//! file, fsync, rename, directory fsync) when the core asks (`Action::SaveHardState`), before
//! anything that depends on them goes out; and the `identity` file naming the node a
//! directory belongs to and the incarnation it was created as. The driver's and the engine's
//! half: IO, no decisions.

use std::path::Path;

use crate::store::StoreError;
use crate::store::storage::{Storage, read_all, write_atomic};

pub use super::message::HardState;

/// File name under the data directory.
pub const HARD_STATE_FILE: &str = "hardstate";
/// Which node this data directory belongs to, and which incarnation of it the directory is.
pub const IDENTITY_FILE: &str = "identity";
const IDENTITY_MAGIC: u32 = u32::from_le_bytes(*b"MFID");

/// A data directory's identity: the node it belongs to and the random number it was created
/// with (a wiped disk comes back as another incarnation of the same node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub node: u64,
    /// Never 0 in a file this version writes; 0 read from a 16-byte file of an earlier one.
    pub incarnation: u64,
}

/// The data directory's identity: `Ok(None)` when it has none yet (a new directory), `Err`
/// when the file does not verify. A 16-byte file (before incarnations) has incarnation 0.
pub fn load_identity(storage: &dyn Storage, root: &Path) -> Result<Option<Identity>, StoreError> {
    let path = root.join(IDENTITY_FILE);
    if !storage.exists(&path) {
        return Ok(None);
    }
    let b = read_all(storage, &path).map_err(|e| StoreError::io(&path, e))?;
    let body = b.len().checked_sub(4).filter(|n| *n == 12 || *n == 20);
    let Some(n) = body.filter(|n| {
        b[..4] == IDENTITY_MAGIC.to_le_bytes() && crc32c::crc32c(&b[..*n]).to_le_bytes() == b[*n..]
    }) else {
        return Err(StoreError::Corruption {
            file: path,
            offset: 0,
            reason: "identity does not verify".into(),
        });
    };
    let long = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    };
    Ok(Some(Identity {
        node: long(4),
        incarnation: if n == 20 { long(12) } else { 0 },
    }))
}

/// A new incarnation: random, never 0.
pub fn new_incarnation() -> u64 {
    let b = super::handshake::nonce();
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a).max(1)
}

/// Gives the data directory its identity, durably (`magic, node id, incarnation, crc`).
pub fn save_identity(storage: &dyn Storage, root: &Path, id: Identity) -> Result<(), StoreError> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&IDENTITY_MAGIC.to_le_bytes());
    b.extend_from_slice(&id.node.to_le_bytes());
    b.extend_from_slice(&id.incarnation.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let path = root.join(IDENTITY_FILE);
    write_atomic(storage, &path, &b).map_err(|e| StoreError::io(&path, e))
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
