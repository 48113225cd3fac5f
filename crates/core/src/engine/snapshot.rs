//! Snapshot and journal files under `snapshots/`: the engine state (`state.rs`) as of a log
//! index (`<index as 20 digits>`), and apply journals (`<index>.journal`) that carry a
//! snapshot's state forward to a later index (`journal.rs`).
//!
//! The store's dispatch checkpoint at index `d` is written only after the engine state at `d`
//! is durable, in one of two forms: a snapshot at `d` (written by the applier itself: at
//! close), or a journal at `d` naming an earlier snapshot `b` it carries forward (the applier's
//! periodic checkpoints: the snapshot at `b` was written off the applier thread while apply
//! went on, and the journal records what apply read from the store from `b` to `d`). Open
//! loads whichever the dispatch point has; everything else is removed once a checkpoint no
//! longer needs it. This module owns the files only; it never decides when to snapshot.

use std::path::{Path, PathBuf};

use super::journal::{self, JournalEntry};
use super::state::EngineState;
use crate::store::storage::{Storage, read_all, write_atomic};
use crate::store::{LogIndex, StoreError};

/// Directory under the data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";
const MAGIC: u32 = u32::from_le_bytes(*b"MFSN");
const VERSION: u32 = 1;
const HEADER: usize = 24;
const JOURNAL_MAGIC: u32 = u32::from_le_bytes(*b"MFJN");
const JOURNAL_HEADER: usize = 32;
const JOURNAL_SUFFIX: &str = ".journal";

fn dir(root: &Path) -> PathBuf {
    root.join(SNAPSHOT_DIR)
}

fn path(root: &Path, index: LogIndex) -> PathBuf {
    dir(root).join(format!("{index:020}"))
}

fn journal_path(root: &Path, index: LogIndex) -> PathBuf {
    dir(root).join(format!("{index:020}{JOURNAL_SUFFIX}"))
}

/// A file of `snapshots/`, by what its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Snapshot(LogIndex),
    Journal(LogIndex),
}

fn parse_index(n: &str) -> Option<LogIndex> {
    (n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// Snapshots and journals present (other names, `.tmp` files included, are ignored); `None`
/// when there is no `snapshots/` directory.
fn list(storage: &dyn Storage, root: &Path) -> Result<Option<Vec<Name>>, StoreError> {
    let d = dir(root);
    let names = match storage.list(&d) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&d, e)),
    };
    Ok(Some(
        names
            .iter()
            .filter_map(|n| match n.strip_suffix(JOURNAL_SUFFIX) {
                Some(stem) => parse_index(stem).map(Name::Journal),
                None => parse_index(n).map(Name::Snapshot),
            })
            .collect(),
    ))
}

fn ensure_dir(storage: &dyn Storage, root: &Path) -> Result<(), StoreError> {
    let d = dir(root);
    if list(storage, root)?.is_none() {
        storage
            .create_dir_all(&d)
            .map_err(|e| StoreError::io(&d, e))?;
        storage
            .sync_dir(root)
            .map_err(|e| StoreError::io(root, e))?;
    }
    Ok(())
}

/// Writes the snapshot of `state` at `index` durably.
pub fn write(
    storage: &dyn Storage,
    root: &Path,
    index: LogIndex,
    state: &[u8],
) -> Result<(), StoreError> {
    ensure_dir(storage, root)?;
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

/// Writes the journal that carries the snapshot at `base` to `upto` durably.
pub fn write_journal(
    storage: &dyn Storage,
    root: &Path,
    base: LogIndex,
    upto: LogIndex,
    entries: &[JournalEntry],
) -> Result<(), StoreError> {
    ensure_dir(storage, root)?;
    let body = journal::encode(entries);
    let mut b = Vec::with_capacity(JOURNAL_HEADER + body.len() + 4);
    b.extend_from_slice(&JOURNAL_MAGIC.to_le_bytes());
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&upto.to_le_bytes());
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&(body.len() as u64).to_le_bytes());
    b.extend_from_slice(&body);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let p = journal_path(root, upto);
    write_atomic(storage, &p, &b).map_err(|e| StoreError::io(&p, e))
}

/// The engine state open starts from.
#[derive(Debug)]
pub struct Loaded {
    /// The snapshot's index.
    pub base: LogIndex,
    /// The state at `base`.
    pub state: EngineState,
    /// What applying each entry after `base`, up to the dispatch point, read from the store
    /// (empty when the snapshot is at the dispatch point).
    pub journal: Vec<JournalEntry>,
}

/// Loads the engine state at the store's dispatch point `index`: the snapshot at `index`, or
/// the journal at `index` and the snapshot it names. `None` (the state is empty) for index 0 or
/// when there is no snapshot or journal file at all; anything missing or damaged otherwise is
/// `Corruption`.
pub fn load(
    storage: &dyn Storage,
    root: &Path,
    index: LogIndex,
) -> Result<Option<Loaded>, StoreError> {
    // Index 0: nothing was dispatched, the state is empty. No file at all: the directory
    // predates snapshots (or a crash came between creating `snapshots/` and writing the first
    // file); it held no engine state then.
    let names = list(storage, root)?.unwrap_or_default();
    if index == 0 || names.is_empty() {
        return Ok(None);
    }
    if names.contains(&Name::Snapshot(index)) {
        return Ok(Some(Loaded {
            base: index,
            state: load_snapshot(storage, root, index)?,
            journal: Vec::new(),
        }));
    }
    let p = journal_path(root, index);
    let corrupt = |reason: String| StoreError::Corruption {
        file: p.clone(),
        offset: 0,
        reason,
    };
    if !names.contains(&Name::Journal(index)) {
        return Err(corrupt(format!(
            "no snapshot or journal at the store's dispatch point {index}"
        )));
    }
    let b = read_all(storage, &p).map_err(|e| StoreError::io(&p, e))?;
    if b.len() < JOURNAL_HEADER + 4 {
        return Err(corrupt("journal is shorter than its header".into()));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let long = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let base = long(16);
    if body[..4] != JOURNAL_MAGIC.to_le_bytes()
        || crc32c::crc32c(body).to_le_bytes() != crc
        || body[4..8] != VERSION.to_le_bytes()
        || long(8) != index
        || base >= index
        || long(24) != (body.len() - JOURNAL_HEADER) as u64
    {
        return Err(corrupt("journal does not verify".into()));
    }
    let journal = journal::decode(&body[JOURNAL_HEADER..])
        .map_err(|why| corrupt(format!("journal: {why}")))?;
    // One entry for every index after the snapshot, in order.
    if journal.len() as u64 != index - base
        || journal.iter().zip(base + 1..).any(|(e, i)| e.index != i)
    {
        return Err(corrupt(format!(
            "journal does not cover {} to {index} entry by entry",
            base + 1
        )));
    }
    let state = if base == 0 {
        EngineState::default()
    } else {
        load_snapshot(storage, root, base)?
    };
    Ok(Some(Loaded {
        base,
        state,
        journal,
    }))
}

/// Loads and verifies the snapshot file at `index`.
fn load_snapshot(
    storage: &dyn Storage,
    root: &Path,
    index: LogIndex,
) -> Result<EngineState, StoreError> {
    let p = path(root, index);
    let corrupt = |reason: String| StoreError::Corruption {
        file: p.clone(),
        offset: 0,
        reason,
    };
    if !storage.exists(&p) {
        return Err(corrupt(format!("snapshot {index} is missing")));
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
    EngineState::decode(&body[HEADER..]).map_err(|why| corrupt(format!("snapshot state: {why}")))
}

/// Removes every snapshot and journal the store's dispatch point `keep` does not need: it
/// needs the snapshot at `keep` if there is one, otherwise the journal at `keep` and the
/// snapshot that journal names.
pub fn prune(storage: &dyn Storage, root: &Path, keep: LogIndex) -> Result<(), StoreError> {
    let names = list(storage, root)?.unwrap_or_default();
    let needed: Vec<Name> = if names.contains(&Name::Snapshot(keep)) {
        vec![Name::Snapshot(keep)]
    } else if names.contains(&Name::Journal(keep)) {
        let p = journal_path(root, keep);
        let base = read_all(storage, &p)
            .ok()
            .filter(|b| b.len() >= JOURNAL_HEADER)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[16..24]);
                u64::from_le_bytes(a)
            });
        let mut needed = vec![Name::Journal(keep)];
        needed.extend(base.map(Name::Snapshot));
        needed
    } else {
        Vec::new()
    };
    for name in names {
        if needed.contains(&name) {
            continue;
        }
        let p = match name {
            Name::Snapshot(i) => path(root, i),
            Name::Journal(i) => journal_path(root, i),
        };
        storage.remove(&p).map_err(|e| StoreError::io(&p, e))?;
    }
    Ok(())
}
