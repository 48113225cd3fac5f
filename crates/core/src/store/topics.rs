//! The topic table: every topic's metadata (name, db, incarnation, ConsumeQueue location and
//! length, trim point, last dispatched position) in memory, and on disk as one append-only file
//! of row records (`consumequeue/topics-<generation>`), not a directory per topic.
//!
//! Rows are written only at dispatch checkpoints, for the topics that changed; the checkpoint
//! records the file's valid length, so a row written after it (torn or not) is ignored at open.
//! When the file holds more than twice its live rows it is rewritten as the next generation.
//! This module must never touch queue files; it only holds where they are.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::hash::BuildHasher;

use bytes::Bytes;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::entry::{LogIndex, StreamId};
use super::error::{IoContext, Result, StoreError};
use super::le;
use super::storage::{Storage, StorageFile};
use super::stream_node::TailNode;

/// Dense id of a topic incarnation, assigned in dispatch order.
pub type TopicId = u32;

/// One topic incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Id (its row).
    pub id: TopicId,
    /// Redis database.
    pub db: u8,
    /// Topic key.
    pub key: Bytes,
    /// Log index of the entry that created this incarnation.
    pub incarnation: LogIndex,
    /// ConsumeQueue entries written (including trimmed and deleted ones).
    pub len: u64,
    /// Entries below this offset are trimmed.
    pub first_live: u64,
    /// Position `(log index, sub-record)` of the last sub-record applied to this topic: a
    /// re-dispatch after a crash skips everything at or before it.
    pub last_applied: (LogIndex, u16),
    /// Arena slot holding the first entries.
    pub slot: u32,
    /// Entries live in the topic's own files (the arena slot overflowed).
    pub migrated: bool,
    /// The topic was dropped; it stays in the table until the next compaction.
    pub dropped: bool,
    /// Stream ID of the last message.
    pub last_id: StreamId,
    /// Queue files holding only entries below this were removed (`u64::MAX`: all of them,
    /// for a dropped topic). Trims and drops remove files after the checkpoint recording
    /// them; this says how far that went, so a crash in between is finished at open.
    pub removed_below: u64,
    /// Entries at or above `first_live` flagged deleted (XDEL).
    pub deleted: u64,
    /// Largest ID removed by XDEL or a trim (XINFO's max-deleted-entry-id).
    pub max_deleted_id: StreamId,
    /// Entries ever added to this incarnation (XINFO's entries-added): `len` plus what XSETID
    /// ENTRIESADDED set beyond it (rows written before XSETID existed hold `len`).
    pub entries_added: u64,
    /// The stream's newest Redis node, which the next message joins if it has room (`None`:
    /// the next message opens one). See [`super::stream_node`].
    pub tail: Option<TailNode>,
    /// Redis nodes the stream has (XINFO's `radix-tree-keys`).
    pub nodes: u64,
    /// The node holding `first_live` has no live entry but Redis keeps it: an exact MINID trim
    /// emptied it (an XDEL that empties a node removes it). It still counts in `nodes`.
    pub head_kept: bool,
    /// When a trim cut into the oldest node: the position of the entry that opened it (below
    /// `first_live`). Its queue entries are kept (`removable_below`), so it can be read whole
    /// when it becomes the tail node again.
    pub head_start: Option<u64>,
    /// Retention cut into that node: the CommitLog may lose its first messages, so it is never
    /// read whole again.
    pub head_gone: bool,
}

impl Topic {
    /// Entries in the stream now: neither trimmed nor deleted (XLEN).
    pub fn live_len(&self) -> u64 {
        // Rows are checksummed and kept consistent; saturate all the same (never panic).
        self.len
            .saturating_sub(self.first_live)
            .saturating_sub(self.deleted)
    }

    /// How far this topic's queue files should be removed: everything for a dropped topic,
    /// below the trim point otherwise.
    pub fn removable_below(&self) -> u64 {
        if self.dropped {
            u64::MAX
        } else {
            self.head_start
                .map_or(self.first_live, |h| h.min(self.first_live))
        }
    }
}

/// A row's fixed part: 176 bytes (the stream nodes at 112); rows written before them had 112
/// (`entries_added` at 104), and before that 104.
const ROW_FIXED: usize = 176;
const ROW_FIXED_V2: usize = 112;
const ROW_FIXED_V1: usize = 104;
const FLAG_MIGRATED: u8 = 1;
const FLAG_DROPPED: u8 = 2;
const FLAG_HEAD_KEPT: u8 = 4;
const FLAG_HEAD_GONE: u8 = 8;
/// `tail_start` of a row without a tail node.
const NO_TAIL: u64 = u64::MAX;

impl Topic {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let size = (ROW_FIXED + self.key.len()) as u32;
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // crc, patched below
        out.extend_from_slice(&self.id.to_le_bytes());
        out.push(self.db);
        out.push(
            if self.migrated { FLAG_MIGRATED } else { 0 }
                | if self.dropped { FLAG_DROPPED } else { 0 }
                | if self.head_kept { FLAG_HEAD_KEPT } else { 0 }
                | if self.head_gone { FLAG_HEAD_GONE } else { 0 },
        );
        out.extend_from_slice(&self.last_applied.1.to_le_bytes());
        out.extend_from_slice(&self.incarnation.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.first_live.to_le_bytes());
        out.extend_from_slice(&self.last_applied.0.to_le_bytes());
        out.extend_from_slice(&self.slot.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.last_id.ms.to_le_bytes());
        out.extend_from_slice(&self.last_id.seq.to_le_bytes());
        out.extend_from_slice(&self.removed_below.to_le_bytes());
        out.extend_from_slice(&self.deleted.to_le_bytes());
        out.extend_from_slice(&self.max_deleted_id.ms.to_le_bytes());
        out.extend_from_slice(&self.max_deleted_id.seq.to_le_bytes());
        out.extend_from_slice(&self.entries_added.to_le_bytes());
        let tail = self.tail.unwrap_or(TailNode {
            start: NO_TAIL,
            entries: 0,
            live: 0,
            bytes: 0,
            master: StreamId::default(),
            fields: 0,
            skip: 0,
        });
        out.extend_from_slice(&tail.start.to_le_bytes());
        out.extend_from_slice(&tail.entries.to_le_bytes());
        out.extend_from_slice(&tail.live.to_le_bytes());
        // A node closes at 1 GiB plus one message: its size fits 32 bits.
        out.extend_from_slice(&(tail.bytes.min(u64::from(u32::MAX)) as u32).to_le_bytes());
        out.extend_from_slice(&u32::from(tail.skip).to_le_bytes());
        out.extend_from_slice(&tail.master.ms.to_le_bytes());
        out.extend_from_slice(&tail.master.seq.to_le_bytes());
        out.extend_from_slice(&tail.fields.to_le_bytes());
        out.extend_from_slice(&self.nodes.to_le_bytes());
        out.extend_from_slice(&self.head_start.unwrap_or(NO_TAIL).to_le_bytes());
        out.extend_from_slice(&self.key);
        debug_assert_eq!(out.len() - start, size as usize);
        let crc = crc32c::crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one row at the start of `b`; returns it and its size.
    fn decode(b: &[u8]) -> Option<(Topic, usize)> {
        let word = |at: usize| le::u32_at(b, at);
        let long = |at: usize| le::u64_at(b, at);
        if b.len() < ROW_FIXED_V1 {
            return None;
        }
        let size = word(0) as usize;
        if size < ROW_FIXED_V1 || size > b.len() || crc32c::crc32c(&b[8..size]) != word(4) {
            return None;
        }
        let key_len = word(52) as usize;
        let fixed = size.checked_sub(key_len)?;
        if fixed != ROW_FIXED && fixed != ROW_FIXED_V2 && fixed != ROW_FIXED_V1 {
            return None;
        }
        let entries_added = if fixed >= ROW_FIXED_V2 {
            long(104)
        } else {
            long(24)
        };
        // Rows from before the node model: no tail node (the next message opens one) and a
        // node count as if every node were full.
        let (tail, nodes, head_start) = if fixed == ROW_FIXED {
            let tail = (long(112) != NO_TAIL).then(|| TailNode {
                start: long(112),
                entries: word(120),
                live: word(124),
                bytes: u64::from(word(128)),
                master: StreamId::new(long(136), long(144)),
                fields: long(152),
                skip: u8::try_from(word(132)).unwrap_or(0),
            });
            let head_start = (long(168) != NO_TAIL).then(|| long(168));
            (tail, long(160), head_start)
        } else {
            let live = long(24).saturating_sub(long(32)).saturating_sub(long(80));
            let nodes = live.div_ceil(u64::from(super::stream_node::NODE_MAX_ENTRIES));
            (None, nodes, None)
        };
        let flags = b[13];
        Some((
            Topic {
                id: word(8),
                db: b[12],
                key: Bytes::copy_from_slice(&b[fixed..size]),
                incarnation: long(16),
                len: long(24),
                first_live: long(32),
                last_applied: (long(40), u16::from_le_bytes([b[14], b[15]])),
                slot: word(48),
                migrated: flags & FLAG_MIGRATED != 0,
                dropped: flags & FLAG_DROPPED != 0,
                last_id: StreamId::new(long(56), long(64)),
                removed_below: long(72),
                deleted: long(80),
                max_deleted_id: StreamId::new(long(88), long(96)),
                entries_added,
                tail,
                nodes,
                head_kept: flags & FLAG_HEAD_KEPT != 0,
                head_start,
                head_gone: flags & FLAG_HEAD_GONE != 0,
            },
            size,
        ))
    }
}

fn key_hash(hasher: &DefaultHashBuilder, db: u8, key: &[u8]) -> u64 {
    hasher.hash_one((db, key))
}

/// Where the table's rows are on disk, as recorded by a dispatch checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableMark {
    /// File generation.
    pub generation: u64,
    /// Valid bytes in that file.
    pub len: u64,
}

/// The table.
#[derive(Debug)]
pub struct TopicTable {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    topics: Vec<Topic>,
    live: HashTable<TopicId>,
    hasher: DefaultHashBuilder,
    dirty: Vec<TopicId>,
    is_dirty: Vec<bool>,
    file: Option<Arc<dyn StorageFile>>,
    mark: TableMark,
    /// A generation replaced by compaction, removable once a checkpoint names the new one.
    stale_generation: Option<u64>,
    live_row_bytes: u64,
}

fn table_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("topics-{generation:08}"))
}

/// The rows recorded up to `mark`, in file order (a later row of an id supersedes an earlier
/// one). Read-only.
pub fn read_rows(storage: &dyn Storage, dir: &Path, mark: TableMark) -> Result<Vec<Topic>> {
    read_rows_with_file(storage, dir, mark).map(|(rows, _)| rows)
}

/// Rows read from the table and the file they came from.
type RowsAndFile = (Vec<Topic>, Option<Arc<dyn StorageFile>>);

fn read_rows_with_file(storage: &dyn Storage, dir: &Path, mark: TableMark) -> Result<RowsAndFile> {
    let path = table_path(dir, mark.generation);
    if mark.len == 0 && !storage.exists(&path) {
        return Ok((Vec::new(), None));
    }
    let file = storage.open(&path, false).at(&path)?;
    let mut buf = vec![0u8; mark.len as usize];
    file.read_exact_at(0, &mut buf)
        .map_err(|e| StoreError::Corruption {
            file: path.clone(),
            offset: 0,
            reason: format!("topic table shorter than its checkpoint: {e}"),
        })?;
    let mut rows = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        let (topic, size) = Topic::decode(&buf[at..]).ok_or_else(|| StoreError::Corruption {
            file: path.clone(),
            offset: at as u64,
            reason: "topic row does not verify".into(),
        })?;
        rows.push(topic);
        at += size;
    }
    Ok((rows, Some(file)))
}

impl TopicTable {
    /// Loads the rows up to `mark` (rows past it were written after the last checkpoint).
    pub fn open(storage: Arc<dyn Storage>, dir: &Path, mark: TableMark) -> Result<Self> {
        storage.create_dir_all(dir).at(dir)?;
        let mut table = TopicTable {
            storage,
            dir: dir.to_path_buf(),
            topics: Vec::new(),
            live: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            dirty: Vec::new(),
            is_dirty: Vec::new(),
            file: None,
            mark,
            stale_generation: None,
            live_row_bytes: 0,
        };
        let (rows, file) = read_rows_with_file(table.storage.as_ref(), dir, mark)?;
        // Generations other than the checkpoint's: a compaction whose old file a crash kept,
        // or a new one whose checkpoint never came.
        for name in table.storage.list(dir).at(dir)? {
            let other = name
                .strip_prefix("topics-")
                .and_then(|g| g.parse::<u64>().ok());
            if other.is_some_and(|g| g != mark.generation) {
                let path = dir.join(&name);
                table.storage.remove(&path).at(&path)?;
            }
        }
        for topic in rows {
            table.put(topic);
        }
        if file.is_some() {
            // The file may come from a process killed before its name was synced (a first
            // compaction begun and never finished): rows appended to it later must not
            // vanish with its name in a power cut.
            table.storage.sync_dir(dir).at(dir)?;
        }
        table.file = file;
        table.dirty.clear();
        table.is_dirty.iter_mut().for_each(|d| *d = false);
        Ok(table)
    }

    /// Inserts or replaces a row (from disk or from dispatch) and marks it dirty.
    fn put(&mut self, topic: Topic) {
        let id = topic.id as usize;
        if id >= self.topics.len() {
            self.topics.resize_with(id + 1, || Topic {
                id: u32::MAX,
                db: 0,
                key: Bytes::new(),
                incarnation: 0,
                len: 0,
                first_live: 0,
                last_applied: (0, 0),
                slot: 0,
                migrated: false,
                dropped: true,
                last_id: StreamId::default(),
                removed_below: u64::MAX,
                deleted: 0,
                max_deleted_id: StreamId::default(),
                entries_added: 0,
                tail: None,
                nodes: 0,
                head_kept: false,
                head_start: None,
                head_gone: false,
            });
            self.is_dirty.resize(id + 1, false);
        }
        let was_live = self.topics[id].id != u32::MAX && !self.topics[id].dropped;
        if was_live {
            self.unindex(id as TopicId);
        }
        if !topic.dropped {
            let hash = key_hash(&self.hasher, topic.db, &topic.key);
            let (topics, hasher) = (&self.topics, &self.hasher);
            self.live.insert_unique(hash, topic.id, |i| {
                let t = &topics[*i as usize];
                key_hash(hasher, t.db, &t.key)
            });
        }
        self.topics[id] = topic;
        self.touch(id as TopicId);
    }

    fn unindex(&mut self, id: TopicId) {
        let t = &self.topics[id as usize];
        let hash = key_hash(&self.hasher, t.db, &t.key);
        if let Ok(entry) = self.live.find_entry(hash, |i| *i == id) {
            entry.remove();
        }
    }

    fn touch(&mut self, id: TopicId) {
        if !self.is_dirty[id as usize] {
            self.is_dirty[id as usize] = true;
            self.dirty.push(id);
        }
    }

    /// The live topic `(db, key)`.
    pub fn find(&self, db: u8, key: &[u8]) -> Option<&Topic> {
        let hash = key_hash(&self.hasher, db, key);
        let topics = &self.topics;
        self.live
            .find(hash, |i| {
                let t = &topics[*i as usize];
                t.db == db && t.key == key
            })
            .map(|i| &topics[*i as usize])
    }

    /// A topic by id (dropped ones included).
    pub fn get(&self, id: TopicId) -> Option<&Topic> {
        self.topics.get(id as usize).filter(|t| t.id == id)
    }

    /// Creates a new incarnation; the caller chose `id` and `slot`.
    pub fn create(&mut self, topic: Topic) {
        self.put(topic);
    }

    /// Changes a topic; marks it for the next checkpoint.
    pub fn update(&mut self, id: TopicId, f: impl FnOnce(&mut Topic)) {
        let Some(t) = self.topics.get_mut(id as usize) else {
            return;
        };
        let was_live = !t.dropped;
        f(t);
        if was_live && self.topics[id as usize].dropped {
            self.unindex(id); // the key is unchanged, so its hash is too
        }
        self.touch(id);
    }

    /// Live topics (for listing).
    pub fn live(&self) -> impl Iterator<Item = &Topic> {
        self.live.iter().map(|i| &self.topics[*i as usize])
    }

    /// Number of live topics.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Id the next created topic gets.
    pub fn next_id(&self) -> TopicId {
        self.topics.len() as TopicId
    }

    /// Writes the changed rows (or a compacted generation) and syncs; returns the new mark.
    /// The caller records the mark in the dispatch checkpoint, which is what makes the rows count.
    pub fn persist(&mut self) -> Result<TableMark> {
        let (mark, write) = self.write_rows()?;
        write.sync(self.storage.as_ref())?;
        Ok(mark)
    }

    /// Writes the changed rows (or a compacted generation) to the page cache and returns the
    /// new mark with what [`TableWrite::sync`] must make durable before a checkpoint names
    /// that mark. Rows changed afterwards are the next call's.
    pub fn write_rows(&mut self) -> Result<(TableMark, TableWrite)> {
        let mut write = TableWrite::default();
        if self.dirty.is_empty() && self.file.is_some() {
            return Ok((self.mark, write));
        }
        let mut buf = Vec::new();
        // A dropped topic's row stays until its files are gone: open finishes removals from it.
        let kept = |t: &&Topic| t.id != u32::MAX && (!t.dropped || t.removed_below != u64::MAX);
        let live_bytes: u64 = self
            .topics
            .iter()
            .filter(kept)
            .map(|t| (ROW_FIXED + t.key.len()) as u64)
            .sum::<u64>();
        self.live_row_bytes = live_bytes;
        let compact = self.file.is_none() || self.mark.len > 2 * live_bytes + (4 << 20);
        if compact {
            for t in self.topics.iter().filter(kept) {
                t.encode(&mut buf);
            }
            let generation = if self.file.is_some() {
                self.mark.generation + 1
            } else {
                self.mark.generation
            };
            let path = table_path(&self.dir, generation);
            let file = self.storage.open(&path, true).at(&path)?;
            file.set_len(0).at(&path)?;
            file.write_at(0, &buf).at(&path)?;
            if self.file.is_some() {
                self.stale_generation = Some(self.mark.generation);
            }
            self.file = Some(file.clone());
            self.mark = TableMark {
                generation,
                len: buf.len() as u64,
            };
            write.file = Some((path, file));
            write.dir = Some(self.dir.clone());
        } else {
            for id in &self.dirty {
                self.topics[*id as usize].encode(&mut buf);
            }
            let path = table_path(&self.dir, self.mark.generation);
            let file = self.file.clone().ok_or(StoreError::Closed)?;
            file.write_at(self.mark.len, &buf).at(&path)?;
            self.mark.len += buf.len() as u64;
            write.file = Some((path, file));
        }
        for id in self.dirty.drain(..) {
            self.is_dirty[id as usize] = false;
        }
        Ok((self.mark, write))
    }

    /// Removes the generation a compaction replaced, once the checkpoint naming the new one
    /// is durable (the caller's job to call it only then).
    pub fn remove_stale_generation(&mut self) -> Result<()> {
        if let Some(g) = self.stale_generation.take() {
            let path = table_path(&self.dir, g);
            if self.storage.exists(&path) {
                self.storage.remove(&path).at(&path)?;
                self.storage.sync_dir(&self.dir).at(&self.dir)?;
            }
        }
        Ok(())
    }

    /// Topics with queue files still to remove after a trim or drop.
    pub fn with_pending_removals(&self) -> Vec<TopicId> {
        self.topics
            .iter()
            .filter(|t| t.id != u32::MAX && t.removed_below < t.removable_below())
            .map(|t| t.id)
            .collect()
    }

    /// Bytes of live rows on disk.
    pub fn live_row_bytes(&self) -> u64 {
        self.live_row_bytes
    }
}

/// Rows written by `TopicTable::write_rows` and not yet durable.
#[derive(Debug, Default)]
pub struct TableWrite {
    file: Option<(PathBuf, Arc<dyn StorageFile>)>,
    /// Set when a new generation's file was created: its directory entry is synced too.
    dir: Option<PathBuf>,
}

impl TableWrite {
    /// fdatasyncs the rows written (and the directory of a new generation).
    pub fn sync(&self, storage: &dyn Storage) -> Result<()> {
        if let Some((path, file)) = &self.file {
            file.sync_data().at(path)?;
        }
        if let Some(dir) = &self.dir {
            storage.sync_dir(dir).at(dir)?;
        }
        Ok(())
    }
}
