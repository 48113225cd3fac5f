//! ConsumeQueues: per topic, a dense array of fixed 32-byte entries (log index, sub-record,
//! stream ID, size, flags), so a topic is read and seeked by stream ID without touching the
//! CommitLog. This module owns where entries live and how they are read, written and sought.
//!
//! Layout, chosen so a million small topics cost neither a million files nor a million fsyncs:
//! - a topic's first `slot_entries` entries live in its **arena slot**, a fixed region of the
//!   shared files `consumequeue/arena/<20-digit byte offset>`;
//! - a topic that outgrows its slot **migrates** to its own files
//!   `consumequeue/<topic id, 8 hex>/<20-digit byte offset>`, named as RocketMQ's, whose sizes
//!   double from `first_file_entries` up to `max_file_entries`. Entry `n` is at byte `n * 32`
//!   of the topic's address space in both cases.
//!
//! Every file handle goes through the bounded [`FileCache`]. This module never decides what a
//! topic contains: the dispatcher calls it in log order.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::entry::{LogIndex, StreamId};
use super::error::{IoContext, Result, StoreError};
use super::file_cache::{FileCache, FileKey, Unsynced};
use super::le;
use super::segment::file_name;
use super::storage::Storage;
use super::topics::{Topic, TopicId};

/// Size of one entry.
pub const CQ_ENTRY_LEN: u64 = 32;
/// Flag bit: the entry was deleted (XDEL).
pub const CQ_DELETED: u8 = 1;
/// Flag bit: the entry opened a stream node, as Redis would have packed the stream
/// ([`super::stream_node`]); written with the entry, never changed.
pub const CQ_NODE_START: u8 = 2;
/// Flag bit: the entry went into an older node than the entry before it did (XDEL had removed
/// the newest node, and Redis appends to the one before if it has room); that node is opened by
/// the `skip`-th entry with `CQ_NODE_START` before it. Written with the entry, never changed.
pub const CQ_NODE_JOIN: u8 = 4;
/// Sparse seek index: one remembered stream ID every this many entries.
const SPARSE_EVERY: u64 = 128;

/// One ConsumeQueue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    /// Log index of the entry holding the message.
    pub log_index: LogIndex,
    /// Sub-record number within that entry.
    pub sub: u16,
    /// Stream ID.
    pub id: StreamId,
    /// Size of the sub-record in bytes.
    pub size: u32,
    /// Flags (`CQ_DELETED`, `CQ_NODE_START`, `CQ_NODE_JOIN`).
    pub flags: u8,
    /// With `CQ_NODE_JOIN`: how many node-opening entries back its node was opened; else 0.
    pub skip: u8,
}

impl CqEntry {
    /// Whether XDEL removed it.
    pub fn is_deleted(&self) -> bool {
        self.flags & CQ_DELETED != 0
    }

    /// Whether it opened a stream node.
    pub fn opens_node(&self) -> bool {
        self.flags & CQ_NODE_START != 0
    }

    /// With how many node-opening entries back it joined an older node, if it did.
    pub fn joins_node(&self) -> Option<u8> {
        (self.flags & CQ_NODE_JOIN != 0).then_some(self.skip)
    }

    fn encode(&self) -> [u8; CQ_ENTRY_LEN as usize] {
        let mut b = [0u8; CQ_ENTRY_LEN as usize];
        b[0..8].copy_from_slice(&self.log_index.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.ms.to_le_bytes());
        b[16..24].copy_from_slice(&self.id.seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.size.to_le_bytes());
        b[28..30].copy_from_slice(&self.sub.to_le_bytes());
        b[30] = self.flags;
        b[31] = self.skip;
        b
    }

    fn decode(b: &[u8]) -> Self {
        let long = |at: usize| le::u64_at(b, at);
        CqEntry {
            log_index: long(0),
            id: StreamId::new(long(8), long(16)),
            size: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
            sub: u16::from_le_bytes([b[28], b[29]]),
            flags: b[30],
            skip: b[31],
        }
    }
}

/// ConsumeQueue settings.
#[derive(Debug, Clone)]
pub struct CqConfig {
    /// Entries in a topic's arena slot (default 16: 512 bytes).
    pub slot_entries: u64,
    /// Slots per arena file (default 131072: 64 MiB files).
    pub arena_file_slots: u64,
    /// Entries in a migrated topic's first file (default 64); each next file doubles.
    pub first_file_entries: u64,
    /// Cap on entries per file (default 2^20: 32 MiB).
    pub max_file_entries: u64,
    /// Open file handles kept (default 1024).
    pub max_open_files: usize,
}

impl Default for CqConfig {
    fn default() -> Self {
        CqConfig {
            slot_entries: 16,
            arena_file_slots: 131_072,
            first_file_entries: 64,
            max_file_entries: 1 << 20,
            max_open_files: 1024,
        }
    }
}

/// A queue file, named cheaply: the hot path hashes this, not a path.
#[derive(Debug, Clone)]
pub struct QueueFile {
    root: Arc<PathBuf>,
    which: Which,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Which {
    /// The arena file starting at this byte offset.
    Arena(u64),
    /// A migrated topic's file starting at this byte offset.
    Topic(TopicId, u64),
}

impl PartialEq for QueueFile {
    fn eq(&self, other: &Self) -> bool {
        self.which == other.which
    }
}
impl Eq for QueueFile {}
impl std::hash::Hash for QueueFile {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.which.hash(state);
    }
}

impl FileKey for QueueFile {
    fn path(&self) -> PathBuf {
        match self.which {
            Which::Arena(offset) => self.root.join("arena").join(file_name(offset)),
            Which::Topic(id, offset) => self.root.join(format!("{id:08x}")).join(file_name(offset)),
        }
    }
}

/// Where entry `n` of a topic is.
#[derive(Debug, Clone)]
struct Place {
    file: QueueFile,
    file_len: u64,
    offset: u64,
    /// Entries from `n` to the end of this file (or slot).
    room: u64,
}

/// All ConsumeQueues.
#[derive(Debug)]
pub struct ConsumeQueues {
    dir: Arc<PathBuf>,
    config: CqConfig,
    files: FileCache<QueueFile>,
    /// Stream ID of every `SPARSE_EVERY`-th entry of migrated topics, built on first seek.
    sparse: Mutex<HashMap<TopicId, Vec<StreamId>>>,
    /// XDELs since the last checkpoint: their flags reach the files only at a checkpoint (see
    /// `write_deletes`), so a crash never leaves a flag the checkpoint does not account for.
    pending_deletes: Mutex<HashMap<TopicId, BTreeSet<u64>>>,
}

impl ConsumeQueues {
    /// Opens the queues under `dir`, creating its arena directory.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path, config: CqConfig) -> Result<Self> {
        storage.create_dir_all(&dir.join("arena")).at(dir)?;
        Self::open_existing(storage, dir, config)
    }

    /// Opens the queues under `dir` without creating anything (for read-only inspection).
    pub fn open_existing(storage: Arc<dyn Storage>, dir: &Path, config: CqConfig) -> Result<Self> {
        if config.slot_entries == 0 || config.first_file_entries < config.slot_entries {
            return Err(StoreError::Config(
                "first_file_entries must be >= slot_entries > 0".into(),
            ));
        }
        if config.max_file_entries < config.first_file_entries {
            return Err(StoreError::Config(
                "max_file_entries must be >= first_file_entries".into(),
            ));
        }
        if config.arena_file_slots == 0 {
            return Err(StoreError::Config(
                "arena_file_slots must be positive".into(),
            ));
        }
        let files = FileCache::new(storage, config.max_open_files);
        Ok(ConsumeQueues {
            dir: Arc::new(dir.to_path_buf()),
            config,
            files,
            sparse: Mutex::new(HashMap::new()),
            pending_deletes: Mutex::new(HashMap::new()),
        })
    }

    /// The directory holding a migrated topic's files.
    pub fn topic_dir(&self, id: TopicId) -> PathBuf {
        self.dir.join(format!("{id:08x}"))
    }

    fn place(&self, topic: &Topic, n: u64) -> Place {
        let c = &self.config;
        if !topic.migrated {
            let slot_bytes = c.slot_entries * CQ_ENTRY_LEN;
            let file_no = u64::from(topic.slot) / c.arena_file_slots;
            let file_len = c.arena_file_slots * slot_bytes;
            let in_file = u64::from(topic.slot) % c.arena_file_slots;
            return Place {
                file: QueueFile {
                    root: self.dir.clone(),
                    which: Which::Arena(file_no * file_len),
                },
                file_len,
                offset: in_file * slot_bytes + n * CQ_ENTRY_LEN,
                room: c.slot_entries.saturating_sub(n),
            };
        }
        let (mut start, mut cap) = (0u64, c.first_file_entries);
        while n >= start + cap {
            start += cap;
            cap = (cap * 2).min(c.max_file_entries);
        }
        Place {
            file: QueueFile {
                root: self.dir.clone(),
                which: Which::Topic(topic.id, start * CQ_ENTRY_LEN),
            },
            file_len: cap * CQ_ENTRY_LEN,
            offset: (n - start) * CQ_ENTRY_LEN,
            room: start + cap - n,
        }
    }

    /// Whether entry `n` of `topic` is past its arena slot (the dispatcher migrates first).
    pub fn needs_migration(&self, topic: &Topic, n: u64) -> bool {
        !topic.migrated && n >= self.config.slot_entries
    }

    /// Copies the arena slot of `topic` into the topic's first own file. The caller then marks
    /// the topic migrated; the slot is never reused, so readers holding the old layout still
    /// read correct entries.
    pub fn migrate(&self, topic: &Topic) -> Result<()> {
        // As the files hold them: a pending deletion must not reach the disk before its
        // checkpoint, and it stays pending (by offset) across the move.
        let entries = self.read_disk(topic, 0, topic.len.min(self.config.slot_entries))?;
        let mut migrated = topic.clone();
        migrated.migrated = true;
        for (n, e) in entries.iter().enumerate() {
            self.write(&migrated, n as u64, e)?;
        }
        Ok(())
    }

    /// Writes entry `n` of `topic`.
    pub fn write(&self, topic: &Topic, n: u64, entry: &CqEntry) -> Result<()> {
        self.write_many(topic, n, std::slice::from_ref(entry))
    }

    /// Writes consecutive entries `n, n+1, ...` with one write per file touched.
    pub fn write_many(&self, topic: &Topic, n: u64, entries: &[CqEntry]) -> Result<()> {
        let mut done = 0usize;
        let mut buf = Vec::new();
        while done < entries.len() {
            let at = n + done as u64;
            let place = self.place(topic, at);
            let take = (place.room as usize).min(entries.len() - done);
            buf.clear();
            for e in &entries[done..done + take] {
                buf.extend_from_slice(&e.encode());
            }
            let file = self.files.get_for_write(&place.file, place.file_len)?;
            file.write_at(place.offset, &buf)
                .at_with(|| place.file.path())?;
            if topic.migrated {
                self.note_block_starts(topic.id, at, &entries[done..done + take]);
            }
            done += take;
        }
        self.files.sync_if_crowded()
    }

    /// Extends a built sparse index with the block-start entries among `entries` (at `at`).
    fn note_block_starts(&self, id: TopicId, at: u64, entries: &[CqEntry]) {
        let mut sparse = self.sparse.lock().unwrap_or_else(|p| p.into_inner());
        let Some(v) = sparse.get_mut(&id) else { return };
        for (k, e) in (at..).zip(entries) {
            if k.is_multiple_of(SPARSE_EVERY) && v.len() as u64 == k / SPARSE_EVERY {
                v.push(e.id);
            }
        }
    }

    /// Marks entry `n` deleted (XDEL). Readers see it at once; the flag reaches the file at
    /// the next checkpoint.
    pub fn mark_deleted(&self, topic: &Topic, n: u64) {
        self.pending(|p| p.entry(topic.id).or_default().insert(n));
    }

    fn pending<R>(&self, f: impl FnOnce(&mut HashMap<TopicId, BTreeSet<u64>>) -> R) -> R {
        f(&mut self
            .pending_deletes
            .lock()
            .unwrap_or_else(|p| p.into_inner()))
    }

    /// Deletions not yet written to the files, `(topic, entry)` in order.
    pub fn pending_deletes(&self) -> Vec<(TopicId, u64)> {
        self.pending(|p| {
            let mut v: Vec<(TopicId, u64)> = p
                .iter()
                .flat_map(|(id, ns)| ns.iter().map(move |n| (*id, *n)))
                .collect();
            v.sort_unstable();
            v
        })
    }

    /// Sets (or, to undo a checkpoint that never completed, clears) the deleted flag of
    /// entry `n` in its file. `topic` gives the layout.
    pub fn write_deleted_flag(&self, topic: &Topic, n: u64, deleted: bool) -> Result<()> {
        let place = self.place(topic, n);
        let file = self.files.get_for_write(&place.file, place.file_len)?;
        let path = || place.file.path();
        let mut b = [0u8; 1];
        file.read_exact_at(place.offset + 30, &mut b)
            .at_with(path)?;
        let flags = if deleted {
            b[0] | CQ_DELETED
        } else {
            b[0] & !CQ_DELETED
        };
        file.write_at(place.offset + 30, &[flags]).at_with(path)?;
        self.files.sync_if_crowded()
    }

    /// Sets the deleted flag of each `(topic, n)` (each topic as its current row places it:
    /// the caller holds the dispatcher lock, so no migration moves an entry meanwhile) and
    /// returns the files written, for the caller to sync after letting go of the lock. Touches
    /// only existing entries' flags, which dispatch never writes, and leaves the dirty set's
    /// syncing alone.
    pub fn write_deleted_flags(
        &self,
        deletes: &[(Topic, u64)],
    ) -> Result<Vec<(QueueFile, Arc<dyn super::storage::StorageFile>)>> {
        let mut written: Vec<(QueueFile, Arc<dyn super::storage::StorageFile>)> = Vec::new();
        for (topic, n) in deletes {
            let place = self.place(topic, *n);
            let file = self.files.get_for_write(&place.file, place.file_len)?;
            let path = || place.file.path();
            let mut b = [0u8; 1];
            file.read_exact_at(place.offset + 30, &mut b)
                .at_with(path)?;
            file.write_at(place.offset + 30, &[b[0] | CQ_DELETED])
                .at_with(path)?;
            if !written.iter().any(|(k, _)| *k == place.file) {
                written.push((place.file, file));
            }
        }
        Ok(written)
    }

    /// Takes the files written so far off the dirty set, to be synced by the caller (see
    /// `FileCache::take_dirty`: only while no dispatch is writing).
    pub fn take_unsynced(&self) -> Unsynced<QueueFile> {
        self.files.take_dirty()
    }

    /// Forgets pending deletions once their flags are in the files and a checkpoint names them.
    pub fn forget_deletes(&self, written: &[(TopicId, u64)]) {
        self.pending(|p| {
            for (id, n) in written {
                if let Some(ns) = p.get_mut(id) {
                    ns.remove(n);
                    if ns.is_empty() {
                        p.remove(id);
                    }
                }
            }
        });
    }

    /// Reads up to `count` entries from `from` (bounded by the topic's length), trimmed ones
    /// included; the caller filters by `first_live` and flags. Pending deletions count.
    ///
    /// The pending deletions are looked at before the files: a checkpoint writes a flag to its
    /// file before it forgets the pending deletion, so a deletion forgotten meanwhile is in
    /// what the files give (looked at after, it could be in neither).
    pub fn read(&self, topic: &Topic, from: u64, count: u64) -> Result<Vec<CqEntry>> {
        let end = from.saturating_add(count);
        let pending: Vec<u64> = self.pending(|p| {
            p.get(&topic.id)
                .map(|ns| ns.range(from..end).copied().collect())
                .unwrap_or_default()
        });
        let mut entries = self.read_disk(topic, from, count)?;
        for n in pending {
            if let Some(e) = entries.get_mut((n - from) as usize) {
                e.flags |= CQ_DELETED;
            }
        }
        Ok(entries)
    }

    /// Entries as the files hold them (no pending deletion applied).
    fn read_disk(&self, topic: &Topic, from: u64, count: u64) -> Result<Vec<CqEntry>> {
        let end = topic.len.min(from.saturating_add(count));
        let mut out = Vec::with_capacity(end.saturating_sub(from) as usize);
        let mut n = from;
        let mut buf = Vec::new();
        while n < end {
            let place = self.place(topic, n);
            let take = place.room.min(end - n);
            let file =
                self.files
                    .get(&place.file, None)?
                    .ok_or_else(|| StoreError::Corruption {
                        file: place.file.path(),
                        offset: place.offset,
                        reason: format!("queue file missing for entry {n} of topic {}", topic.id),
                    })?;
            buf.resize((take * CQ_ENTRY_LEN) as usize, 0);
            file.read_exact_at(place.offset, &mut buf)
                .at_with(|| place.file.path())?;
            for chunk in buf.chunks_exact(CQ_ENTRY_LEN as usize) {
                let e = CqEntry::decode(chunk);
                if e.log_index == 0 {
                    return Err(StoreError::Corruption {
                        file: place.file.path(),
                        offset: place.offset + (out.len() as u64 + from - n) * CQ_ENTRY_LEN,
                        reason: format!("empty queue entry {} below length {}", n, topic.len),
                    });
                }
                out.push(e);
            }
            n += take;
        }
        Ok(out)
    }

    /// Offset of the first entry in `[first_live, len)` whose stream ID is `>= id` (`len` if
    /// none). A binary search over queue entries only: no CommitLog read.
    pub fn seek(&self, topic: &Topic, id: StreamId) -> Result<u64> {
        let (mut lo, mut hi) = (topic.first_live, topic.len);
        if topic.migrated && hi - lo > SPARSE_EVERY {
            // Narrow to one block with the in-memory sparse index, then search the block.
            let blocks = self.sparse_blocks_below(topic, id)?;
            // Entries of block `blocks - 1` start below `id`; block `blocks` starts at or above.
            lo = lo.max(blocks.saturating_sub(1) * SPARSE_EVERY);
            hi = hi.min(blocks * SPARSE_EVERY + 1);
            if lo >= hi {
                return Ok(hi.min(topic.len).max(topic.first_live));
            }
        }
        let block = self.read(topic, lo, hi - lo)?;
        Ok(lo + block.partition_point(|e| e.id < id) as u64)
    }

    /// Offset of the entry with exactly `id`, if any.
    pub fn find(&self, topic: &Topic, id: StreamId) -> Result<Option<u64>> {
        let n = self.seek(topic, id)?;
        if n >= topic.len {
            return Ok(None);
        }
        let e = self.read(topic, n, 1)?;
        Ok(e.first().filter(|e| e.id == id).map(|_| n))
    }

    /// Number of sparse blocks whose first stream ID is below `id` (built on first use).
    fn sparse_blocks_below(&self, topic: &Topic, id: StreamId) -> Result<u64> {
        let want = topic.len.div_ceil(SPARSE_EVERY) as usize;
        {
            let sparse = self.sparse.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = sparse.get(&topic.id).filter(|v| v.len() >= want) {
                return Ok(v[..want].partition_point(|s| *s < id) as u64);
            }
        }
        // Build by reading the live part of the queue once, in large chunks. Blocks wholly
        // below `first_live` may have no files any more: they hold the smallest ID (nothing
        // is sought there); the block holding `first_live` is keyed by its first live entry.
        let b0 = topic.first_live / SPARSE_EVERY;
        let mut v = vec![StreamId::default(); b0 as usize];
        v.reserve(want.saturating_sub(v.len()));
        let mut n = topic.first_live;
        while n < topic.len {
            let chunk = self.read(topic, n, (SPARSE_EVERY * 64).min(topic.len - n))?;
            for (k, e) in (n..).zip(&chunk) {
                if (k.is_multiple_of(SPARSE_EVERY) || k == topic.first_live)
                    && v.len() as u64 == k / SPARSE_EVERY
                {
                    v.push(e.id);
                }
            }
            n += chunk.len() as u64;
        }
        let below = v.partition_point(|s| *s < id) as u64;
        self.sparse
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.id, v);
        Ok(below)
    }

    /// fdatasyncs every queue file written since the last call.
    pub fn sync(&self) -> Result<usize> {
        self.files.sync_dirty()
    }

    /// Syncs the files written so far, leaving them for the next `sync` (see
    /// `FileCache::presync_dirty`); safe while dispatch writes.
    pub fn presync(&self) -> Result<usize> {
        self.files.presync_dirty()
    }

    /// Removes a migrated topic's files whose entries all lie below `below` (all of them for a
    /// dropped topic: `u64::MAX`). Called only after a checkpoint recorded the trim or drop.
    pub fn remove_files(&self, storage: &dyn Storage, topic: &Topic, below: u64) -> Result<()> {
        if !topic.migrated {
            return Ok(());
        }
        let dir = self.topic_dir(topic.id);
        if !storage.exists(&dir) && storage.list(&dir).is_err() {
            return Ok(());
        }
        let mut removed = false;
        for name in storage.list(&dir).at(&dir)? {
            let Some(start) = super::segment::parse_file_name(&name).map(|b| b / CQ_ENTRY_LEN)
            else {
                continue;
            };
            let place = self.place(topic, start);
            if start + place.room <= below {
                let path = dir.join(&name);
                self.files.forget(&place.file);
                storage.remove(&path).at(&path)?;
                removed = true;
            }
        }
        if removed {
            storage.sync_dir(&dir).at(&dir)?;
        }
        if below == u64::MAX {
            self.sparse
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&topic.id);
        }
        Ok(())
    }

    /// Open file handles.
    pub fn open_handles(&self) -> usize {
        self.files.open_handles()
    }
}
