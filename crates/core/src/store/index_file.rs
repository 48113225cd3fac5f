//! IndexFiles: a hash index from (db, topic, message key) to the log positions of messages
//! with that key and their store timestamps, queried by key and time range — RocketMQ's
//! IndexFile: a slot table plus chained entries, newest first, threaded through an append-only
//! entry array.
//!
//! Files are `index/<20-digit first log index>`, created full size (sparse) with a static
//! header; their fill state (entry count, time and index range) is kept by the dispatch
//! checkpoint for the active file and written into the header once when a file is sealed.
//! Results are candidates: a hash collision can match another key, so the caller re-checks.
//!
//! Crash rule: entries are written as they come, slot values only at `sync`, after the entries
//! they point to are durable. A slot found pointing at or past the entry being (re)written was
//! written by a run that got further before a crash; the true previous link is then the one in
//! that durable entry, which re-dispatch is rewriting identically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::entry::LogIndex;
use super::error::{IoContext, Result, StoreError};
use super::file_cache::{FileCache, FileKey, Unsynced};
use super::le;
use super::segment::{file_name, parse_file_name};
use super::storage::Storage;

const MAGIC: u32 = u32::from_le_bytes(*b"MFIX");
const VERSION: u16 = 1;
/// Header size.
pub const INDEX_HEADER_LEN: u64 = 64;
/// Entry size.
pub const INDEX_ENTRY_LEN: u64 = 32;

/// IndexFile settings.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Hash slots per file (default 1,048,576: 4 MiB).
    pub slots: u32,
    /// Entries per file (default 4,194,304: 128 MiB).
    pub entries: u32,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            slots: 1 << 20,
            entries: 1 << 22,
        }
    }
}

/// Fill state of an index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexFill {
    /// First log index the file may hold (its name).
    pub first_index: LogIndex,
    /// Entries written; entry numbers run from 1 to `count`.
    pub count: u32,
    /// Store timestamp of the first and last entry (ms).
    pub begin_ms: u64,
    /// See `begin_ms`.
    pub end_ms: u64,
    /// Log index of the last entry.
    pub end_index: LogIndex,
}

/// A hit: where a message with the key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHit {
    /// Log index of the entry.
    pub log_index: LogIndex,
    /// Sub-record number.
    pub sub: u16,
    /// Store timestamp (ms).
    pub timestamp_ms: u64,
}

/// The hash of a key, as stored. Deterministic across nodes and versions (CRC32C).
pub fn key_hash(db: u8, topic: &[u8], key: &[u8]) -> u32 {
    let mut h = crc32c::crc32c(&[db]);
    h = crc32c::crc32c_append(h, &(topic.len() as u32).to_le_bytes());
    h = crc32c::crc32c_append(h, topic);
    crc32c::crc32c_append(h, key)
}

/// An index file, named by its first log index.
#[derive(Debug, Clone)]
pub struct IndexFileKey {
    dir: Arc<PathBuf>,
    first: LogIndex,
}

impl PartialEq for IndexFileKey {
    fn eq(&self, other: &Self) -> bool {
        self.first == other.first
    }
}
impl Eq for IndexFileKey {}
impl std::hash::Hash for IndexFileKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.first.hash(state);
    }
}

impl FileKey for IndexFileKey {
    fn path(&self) -> PathBuf {
        self.dir.join(file_name(self.first))
    }
}

/// All index files: sealed ones (fill state from their headers) and the active one.
#[derive(Debug)]
pub struct IndexFiles {
    storage: Arc<dyn Storage>,
    dir: Arc<PathBuf>,
    config: IndexConfig,
    files: FileCache<IndexFileKey>,
    sealed: Vec<IndexFill>,
    active: IndexFill,
    /// Files to seal (header write) before the next checkpoint.
    to_seal: Vec<IndexFill>,
    /// Slot values not yet written: (file first index, slot) -> entry number.
    dirty_slots: BTreeMap<(LogIndex, u32), u32>,
}

impl IndexFiles {
    /// Opens the files under `dir`; `active` is the fill state of the active file from the
    /// dispatch checkpoint (`None` for a new store).
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: IndexConfig,
        active: Option<IndexFill>,
    ) -> Result<Self> {
        if config.slots == 0 || config.entries == 0 {
            return Err(StoreError::Config(
                "index slots and entries must be positive".into(),
            ));
        }
        storage.create_dir_all(dir).at(dir)?;
        let files = FileCache::new(storage.clone(), 64);
        let active = active.unwrap_or(IndexFill {
            first_index: 1,
            ..IndexFill::default()
        });
        let mut sealed = Vec::new();
        for name in storage.list(dir).at(dir)? {
            let Some(first) = parse_file_name(&name) else {
                continue;
            };
            let path = dir.join(&name);
            if first > active.first_index {
                // Created after the checkpoint: its contents are rebuilt by re-dispatch.
                storage.remove(&path).at(&path)?;
                continue;
            }
            if first == active.first_index {
                continue;
            }
            let file = storage.open(&path, false).at(&path)?;
            let mut h = [0u8; INDEX_HEADER_LEN as usize];
            file.read_exact_at(0, &mut h).at(&path)?;
            sealed.push(decode_header(&h, &path, first)?.1);
        }
        Ok(IndexFiles {
            storage,
            dir: Arc::new(dir.to_path_buf()),
            config,
            files,
            sealed,
            active,
            to_seal: Vec::new(),
            dirty_slots: BTreeMap::new(),
        })
    }

    fn key(&self, first: LogIndex) -> IndexFileKey {
        IndexFileKey {
            dir: self.dir.clone(),
            first,
        }
    }

    fn path(&self, first: LogIndex) -> PathBuf {
        self.dir.join(file_name(first))
    }

    fn file_len(&self) -> u64 {
        INDEX_HEADER_LEN
            + u64::from(self.config.slots) * 4
            + u64::from(self.config.entries) * INDEX_ENTRY_LEN
    }

    fn entry_offset(&self, n: u32) -> u64 {
        INDEX_HEADER_LEN + u64::from(self.config.slots) * 4 + u64::from(n - 1) * INDEX_ENTRY_LEN
    }

    /// Fill state of the active file (for the dispatch checkpoint).
    pub fn active(&self) -> IndexFill {
        self.active
    }

    /// Adds a key at `log_index`/`sub`. Entries must come in log order.
    /// Called before the keys of the entry at `log_index` are added: starts a new file when
    /// `keys` would not fit the active one, so an entry's keys never straddle two files and two
    /// files never share a name. Keys beyond a whole file's capacity are not indexed.
    pub fn reserve(&mut self, log_index: LogIndex, keys: u32) {
        if self.active.count > 0 && self.active.count.saturating_add(keys) > self.config.entries {
            self.to_seal.push(self.active);
            self.sealed.push(self.active);
            self.active = IndexFill {
                first_index: log_index,
                ..IndexFill::default()
            };
        }
    }

    /// Adds a key at `log_index`/`sub`, after `reserve` for its entry. Entries must come in
    /// log order.
    pub fn add(
        &mut self,
        hash: u32,
        log_index: LogIndex,
        sub: u16,
        timestamp_ms: u64,
    ) -> Result<()> {
        if self.active.count >= self.config.entries {
            tracing::warn!(
                log_index,
                "entry has more keys than an index file holds; key not indexed"
            );
            return Ok(());
        }
        let key = self.key(self.active.first_index);
        let path = key.path();
        let file = self.files.get_for_write(&key, self.file_len())?;
        if self.active.count == 0 {
            file.write_at(
                0,
                &encode_header(&self.config, &IndexFill::default(), self.active.first_index),
            )
            .at(&path)?;
        }
        let n = self.active.count + 1;
        let first = self.active.first_index;
        let slot = hash % self.config.slots;
        let mut prev = self.slot_value(&file, &path, first, slot)?;
        if prev >= n {
            // Written by a run that got further before a crash: the durable entry `n` holds
            // the true link (see the module docs).
            let mut old = [0u8; INDEX_ENTRY_LEN as usize];
            read_or_zero(file.as_ref(), self.entry_offset(n), &mut old).at(&path)?;
            let same = old[0..4] == hash.to_le_bytes()
                && old[8..16] == log_index.to_le_bytes()
                && old[24..26] == sub.to_le_bytes();
            prev = if same {
                u32::from_le_bytes([old[4], old[5], old[6], old[7]])
            } else {
                0
            };
            if !same || prev >= n {
                tracing::warn!(file = %path.display(), entry = n, "index chain cut after a crash");
                prev = 0;
            }
        }
        let mut e = [0u8; INDEX_ENTRY_LEN as usize];
        e[0..4].copy_from_slice(&hash.to_le_bytes());
        e[4..8].copy_from_slice(&prev.to_le_bytes());
        e[8..16].copy_from_slice(&log_index.to_le_bytes());
        e[16..24].copy_from_slice(&timestamp_ms.to_le_bytes());
        e[24..26].copy_from_slice(&sub.to_le_bytes());
        file.write_at(self.entry_offset(n), &e).at(&path)?;
        self.dirty_slots.insert((first, slot), n);
        self.files.sync_if_crowded()?;
        if self.active.count == 0 {
            self.active.begin_ms = timestamp_ms;
        }
        self.active.count = n;
        self.active.end_ms = timestamp_ms;
        self.active.end_index = log_index;
        Ok(())
    }

    fn slot_value(
        &self,
        file: &Arc<dyn super::storage::StorageFile>,
        path: &Path,
        first: LogIndex,
        slot: u32,
    ) -> Result<u32> {
        if let Some(v) = self.dirty_slots.get(&(first, slot)) {
            return Ok(*v);
        }
        let mut b = [0u8; 4];
        read_or_zero(
            file.as_ref(),
            INDEX_HEADER_LEN + u64::from(slot) * 4,
            &mut b,
        )
        .at(path)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Newest-first hits for `hash` with a timestamp in `[from_ms, to_ms]`, at most `max`.
    pub fn query(&self, hash: u32, from_ms: u64, to_ms: u64, max: usize) -> Result<Vec<IndexHit>> {
        let mut out = Vec::new();
        let files = std::iter::once(&self.active).chain(self.sealed.iter().rev());
        for fill in files {
            if out.len() >= max {
                break;
            }
            if fill.count == 0 || fill.end_ms < from_ms || fill.begin_ms > to_ms {
                continue;
            }
            let path = self.path(fill.first_index);
            let Some(file) = self.files.get(&self.key(fill.first_index), None)? else {
                continue;
            };
            let mut n =
                self.slot_value(&file, &path, fill.first_index, hash % self.config.slots)?;
            let mut guard = 0u32;
            while n != 0 && n <= fill.count && out.len() < max && guard <= fill.count {
                guard += 1;
                let mut e = [0u8; INDEX_ENTRY_LEN as usize];
                read_or_zero(file.as_ref(), self.entry_offset(n), &mut e).at(&path)?;
                let word = |at: usize| le::u32_at(&e, at);
                let long = |at: usize| le::u64_at(&e, at);
                let ts = long(16);
                if ts < from_ms {
                    break; // the chain is newest first
                }
                if word(0) == hash && ts <= to_ms {
                    out.push(IndexHit {
                        log_index: long(8),
                        sub: u16::from_le_bytes([e[24], e[25]]),
                        timestamp_ms: ts,
                    });
                }
                let prev = word(4);
                if prev >= n {
                    break; // a link must point back
                }
                n = prev;
            }
        }
        Ok(out)
    }

    /// The index file named `first`, which must exist (it holds entries already added).
    fn existing(&self, first: LogIndex) -> Result<(PathBuf, Arc<dyn super::storage::StorageFile>)> {
        let path = self.path(first);
        let file =
            self.files
                .get(&self.key(first), None)?
                .ok_or_else(|| StoreError::Corruption {
                    file: path.clone(),
                    offset: 0,
                    reason: "index file written since the last sync is missing".into(),
                })?;
        Ok((path, file))
    }

    /// Makes everything added so far durable: entries first, then the slots pointing at them
    /// and the headers of sealed files.
    pub fn sync(&mut self) -> Result<()> {
        let capture = self.capture()?;
        capture.make_durable(self.storage.as_ref())?;
        self.captured(&capture);
        Ok(())
    }

    /// What a dispatch checkpoint needs of the index, taken under the dispatcher lock: the
    /// files written so far (taken off the dirty set), the slot values and seal headers to
    /// write, and the handles to write them to. Nothing is written; in-memory slots stay as
    /// they are (reads keep using them) until `captured`.
    pub fn capture(&mut self) -> Result<IndexCapture> {
        let mut files: Vec<(LogIndex, PathBuf, Arc<dyn super::storage::StorageFile>)> = Vec::new();
        let mut handle = |this: &Self, first: LogIndex| -> Result<usize> {
            if let Some(at) = files.iter().position(|f| f.0 == first) {
                return Ok(at);
            }
            let (path, file) = this.existing(first)?;
            files.push((first, path, file));
            Ok(files.len() - 1)
        };
        let mut slots = Vec::with_capacity(self.dirty_slots.len());
        for (&(first, slot), &n) in &self.dirty_slots {
            slots.push((handle(self, first)?, first, slot, n));
        }
        let mut seals = Vec::with_capacity(self.to_seal.len());
        for fill in &self.to_seal {
            let header = encode_header(&self.config, fill, fill.first_index);
            seals.push((handle(self, fill.first_index)?, fill.first_index, header));
        }
        Ok(IndexCapture {
            entries: self.files.take_dirty(),
            files,
            slots,
            seals,
        })
    }

    /// After the checkpoint holding `c` is durable: the slots written by it that dispatch has
    /// not changed since, and the files it sealed, are no longer pending.
    pub fn captured(&mut self, c: &IndexCapture) {
        for (_, first, slot, n) in &c.slots {
            if self.dirty_slots.get(&(*first, *slot)) == Some(n) {
                self.dirty_slots.remove(&(*first, *slot));
            }
        }
        self.to_seal
            .retain(|f| !c.seals.iter().any(|(_, first, _)| *first == f.first_index));
    }

    /// Removes sealed files whose entries all lie below `first_index` (log retention).
    pub fn remove_before(&mut self, first_index: LogIndex) -> Result<()> {
        let mut kept = Vec::new();
        let mut removed = false;
        let sealed = std::mem::take(&mut self.sealed);
        for fill in sealed {
            if fill.end_index < first_index
                && !self
                    .to_seal
                    .iter()
                    .any(|f| f.first_index == fill.first_index)
            {
                let path = self.path(fill.first_index);
                self.files.forget(&self.key(fill.first_index));
                self.storage.remove(&path).at(&path)?;
                removed = true;
            } else {
                kept.push(fill);
            }
        }
        self.sealed = kept;
        if removed {
            self.storage.sync_dir(&self.dir).at(self.dir.as_path())?;
        }
        Ok(())
    }

    /// Number of index files.
    pub fn file_count(&self) -> usize {
        self.sealed.len() + usize::from(self.active.count > 0)
    }
}

/// Reads what the file holds at `offset`; bytes past its end read as zeros (a file whose
/// length did not survive a crash is a file of zeros there, as the sparse file it was).
fn read_or_zero(
    file: &dyn super::storage::StorageFile,
    offset: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(offset + done as u64, &mut buf[done..])?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

fn encode_header(
    config: &IndexConfig,
    fill: &IndexFill,
    first: LogIndex,
) -> [u8; INDEX_HEADER_LEN as usize] {
    let mut h = [0u8; INDEX_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&config.slots.to_le_bytes());
    h[12..16].copy_from_slice(&config.entries.to_le_bytes());
    h[16..24].copy_from_slice(&first.to_le_bytes());
    h[24..28].copy_from_slice(&fill.count.to_le_bytes());
    h[32..40].copy_from_slice(&fill.begin_ms.to_le_bytes());
    h[40..48].copy_from_slice(&fill.end_ms.to_le_bytes());
    h[48..56].copy_from_slice(&fill.end_index.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn decode_header(h: &[u8], path: &Path, first: LogIndex) -> Result<(IndexConfig, IndexFill)> {
    let word = |at: usize| le::u32_at(h, at);
    let long = |at: usize| le::u64_at(h, at);
    if word(0) != MAGIC || word(60) != crc32c::crc32c(&h[..60]) || long(16) != first {
        return Err(StoreError::Corruption {
            file: path.to_path_buf(),
            offset: 0,
            reason: "index file header does not verify".into(),
        });
    }
    Ok((
        IndexConfig {
            slots: word(8),
            entries: word(12),
        },
        IndexFill {
            first_index: first,
            count: word(24),
            begin_ms: long(32),
            end_ms: long(40),
            end_index: long(48),
        },
    ))
}

/// The index part of a dispatch checkpoint, captured by `IndexFiles::capture` and made durable
/// by `make_durable` on any thread: entries first, then the slots pointing at them and the
/// headers of sealed files, so a slot on disk never points at an entry that is not durable.
#[derive(Debug)]
pub struct IndexCapture {
    entries: Unsynced<IndexFileKey>,
    files: Vec<(LogIndex, PathBuf, Arc<dyn super::storage::StorageFile>)>,
    /// `(file, file first index, slot, entry number)`.
    slots: Vec<(usize, LogIndex, u32, u32)>,
    /// `(file, file first index, header)`.
    seals: Vec<(usize, LogIndex, [u8; INDEX_HEADER_LEN as usize])>,
}

impl IndexCapture {
    /// `fdatasync` the entries written, write the slots and headers, `fdatasync` those files.
    /// Writes only slot words and headers, which dispatch never writes (it keeps newer slot
    /// values in memory until a later checkpoint), so it is safe beside dispatch.
    pub fn make_durable(&self, storage: &dyn Storage) -> Result<()> {
        self.entries.sync(storage)?;
        for (f, _, slot, n) in &self.slots {
            let (_, path, file) = &self.files[*f];
            file.write_at(INDEX_HEADER_LEN + u64::from(*slot) * 4, &n.to_le_bytes())
                .at(path)?;
        }
        for (f, _, header) in &self.seals {
            let (_, path, file) = &self.files[*f];
            file.write_at(0, header).at(path)?;
        }
        for (_, path, file) in &self.files {
            file.sync_data().at(path)?;
        }
        Ok(())
    }
}
