//! The message store: the CommitLog plus what is derived from it — the topic table, the
//! ConsumeQueues and the IndexFiles — kept in step by a dispatcher that follows a **dispatch
//! point given by the caller** (the commit index), never the raw log end.
//!
//! Derived state is made durable by dispatch checkpoints (queue and index files synced, changed
//! topic rows written, then the `dispatch` file naming all of it). After a crash it is rebuilt by
//! re-dispatching the log past the last checkpoint; each topic remembers the last sub-record it
//! applied, so re-dispatch is idempotent. This module must never dispatch past the caller's
//! point nor let the log lose (truncate or delete) an entry it has dispatched but not
//! checkpointed.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::commitlog::{CommitLog, LogConfig};
use super::consume_queue::{
    CQ_NODE_JOIN, CQ_NODE_START, ConsumeQueues, CqConfig, CqEntry, QueueFile,
};
use super::entry::{LogEntry, LogIndex, RecordOp, StreamId, SubRecord};
use super::error::{IoContext, Result, StoreError};
use super::file_cache::{FileKey, Unsynced};
use super::index_file::{IndexCapture, IndexConfig, IndexFiles, IndexFill, IndexHit, key_hash};
use super::le;
use super::node_walk::NodeWalk;
use super::recent::RecentEntries;
use super::recovery::RecoveryReport;
use super::storage::{Storage, read_all, write_atomic};
use super::stream_node::{NodeLimits, TailNode};
use super::topics::{TableMark, TableWrite, Topic, TopicId, TopicTable};

/// Settings of the whole store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// CommitLog.
    pub log: LogConfig,
    /// ConsumeQueues.
    pub queues: CqConfig,
    /// IndexFiles.
    pub index: IndexConfig,
    /// How often derived state is checkpointed (default 1000 ms); recovery re-dispatches at
    /// most this much of the log.
    pub dispatch_checkpoint_interval_ms: u64,
    /// When a Redis stream node is full (default: Redis's, 100 entries and 4096 bytes): where
    /// approximate trims may cut. Every node of a cluster must use the same.
    pub stream_nodes: NodeLimits,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            log: LogConfig::default(),
            queues: CqConfig::default(),
            index: IndexConfig::default(),
            dispatch_checkpoint_interval_ms: 1000,
            stream_nodes: NodeLimits::default(),
        }
    }
}

const DISPATCH_FILE: &str = "dispatch";
const DISPATCH_MAGIC: u32 = u32::from_le_bytes(*b"MFDC");
const DISPATCH_VERSION: u16 = 1;
const DISPATCH_LEN: usize = 128;

/// The durable point of the derived state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct DispatchCheckpoint {
    dispatched: LogIndex,
    table: TableMark,
    next_slot: u32,
    next_topic: TopicId,
    index: IndexFill,
    /// The queue and index layout the files were written with; reopening with another one
    /// would read other topics' entries.
    layout: Layout,
}

/// Settings that decide where bytes of derived state are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Layout {
    slot_entries: u64,
    arena_file_slots: u64,
    first_file_entries: u64,
    max_file_entries: u64,
    index_slots: u32,
    index_entries: u32,
}

impl Layout {
    fn of(config: &StoreConfig) -> Self {
        let q = &config.queues;
        Layout {
            slot_entries: q.slot_entries,
            arena_file_slots: q.arena_file_slots,
            first_file_entries: q.first_file_entries,
            max_file_entries: q.max_file_entries,
            index_slots: config.index.slots,
            index_entries: config.index.entries,
        }
    }
}

impl DispatchCheckpoint {
    fn encode(&self) -> [u8; DISPATCH_LEN] {
        let mut b = [0u8; DISPATCH_LEN];
        b[0..4].copy_from_slice(&DISPATCH_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&DISPATCH_VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.dispatched.to_le_bytes());
        b[16..24].copy_from_slice(&self.table.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.table.len.to_le_bytes());
        b[32..36].copy_from_slice(&self.next_slot.to_le_bytes());
        b[36..40].copy_from_slice(&self.next_topic.to_le_bytes());
        b[40..48].copy_from_slice(&self.index.first_index.to_le_bytes());
        b[48..52].copy_from_slice(&self.index.count.to_le_bytes());
        b[56..64].copy_from_slice(&self.index.begin_ms.to_le_bytes());
        b[64..72].copy_from_slice(&self.index.end_ms.to_le_bytes());
        b[72..80].copy_from_slice(&self.index.end_index.to_le_bytes());
        let l = &self.layout;
        b[80..88].copy_from_slice(&l.slot_entries.to_le_bytes());
        b[88..96].copy_from_slice(&l.arena_file_slots.to_le_bytes());
        b[96..104].copy_from_slice(&l.first_file_entries.to_le_bytes());
        b[104..112].copy_from_slice(&l.max_file_entries.to_le_bytes());
        b[112..116].copy_from_slice(&l.index_slots.to_le_bytes());
        b[116..120].copy_from_slice(&l.index_entries.to_le_bytes());
        let crc = crc32c::crc32c(&b[..DISPATCH_LEN - 4]);
        b[DISPATCH_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8], path: &Path) -> Result<Self> {
        let corrupt = || StoreError::Corruption {
            file: path.to_path_buf(),
            offset: 0,
            reason: "dispatch checkpoint does not verify".into(),
        };
        if b.len() != DISPATCH_LEN {
            return Err(corrupt());
        }
        let word = |at: usize| le::u32_at(b, at);
        let long = |at: usize| le::u64_at(b, at);
        if word(0) != DISPATCH_MAGIC
            || u16::from_le_bytes([b[4], b[5]]) != DISPATCH_VERSION
            || word(DISPATCH_LEN - 4) != crc32c::crc32c(&b[..DISPATCH_LEN - 4])
        {
            return Err(corrupt());
        }
        Ok(DispatchCheckpoint {
            dispatched: long(8),
            table: TableMark {
                generation: long(16),
                len: long(24),
            },
            next_slot: word(32),
            next_topic: word(36),
            index: IndexFill {
                first_index: long(40),
                count: word(48),
                begin_ms: long(56),
                end_ms: long(64),
                end_index: long(72),
            },
            layout: Layout {
                slot_entries: long(80),
                arena_file_slots: long(88),
                first_file_entries: long(96),
                max_file_entries: long(104),
                index_slots: word(112),
                index_entries: word(116),
            },
        })
    }
}

const DELETE_INTENT_FILE: &str = "dispatch.deletes";
/// Queue entries a trim reads at a time.
const TRIM_CHUNK: u64 = 65_536;

/// Property of a Trim / TrimToLen sub-record holding its LIMIT: at most this many live entries
/// removed (8 bytes, little-endian). Absent, or any other length: no limit.
pub const TRIM_LIMIT_PROPERTY: &[u8] = b"limit";

/// Property of a Trim / TrimToLen sub-record that makes it approximate (Redis's `~`): only whole
/// stream nodes ([`super::stream_node`]) are removed. Its value is 8 bytes, little-endian, not 0;
/// absent, 0, or any other length: exact.
pub const TRIM_NODE_PROPERTY: &[u8] = b"node";

/// Queue entries read at a time while looking back for where a stream node begins.
const NODE_SCAN: u64 = 128;

/// The 8-byte little-endian value of property `name` of `r`, if any.
fn u64_property(r: &SubRecord, name: &[u8]) -> Option<u64> {
    let (_, value) = r.properties.iter().find(|(n, _)| n.as_ref() == name)?;
    let bytes: [u8; 8] = value.as_ref().try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// The LIMIT a trim sub-record carries, if any.
fn trim_limit(r: &SubRecord) -> Option<u64> {
    u64_property(r, TRIM_LIMIT_PROPERTY)
}

/// What a cut is for, as far as the stream nodes care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutBy {
    /// A trim (MINID, or any `~`).
    Trim,
    /// An exact MAXLEN: a node whose live entries all go goes whole, as Redis removes it.
    ExactMaxLen,
    /// Retention: the CommitLog may later lose what it cuts.
    Retention,
}

impl CutBy {
    fn trim(op: RecordOp, approx: bool) -> CutBy {
        if op == RecordOp::TrimToLen && !approx {
            CutBy::ExactMaxLen
        } else {
            CutBy::Trim
        }
    }
}

/// What a trim keeps, as a Trim (MINID) or TrimToLen (MAXLEN) sub-record says it.
#[derive(Debug, Clone, Copy)]
enum Keep {
    /// The newest this many live entries.
    MaxLen(u64),
    /// Entries from this ID on.
    MinId(StreamId),
}

const INTENT_MAGIC: u32 = u32::from_le_bytes(*b"MFDI");

/// The XDEL flags a checkpoint is about to write, recorded first so that a crash before the
/// checkpoint completes can be undone.
#[derive(Debug)]
struct DeleteIntent {
    dispatched: LogIndex,
    deletes: Vec<(TopicId, u64)>,
}

impl DeleteIntent {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(20 + self.deletes.len() * 12 + 4);
        b.extend_from_slice(&INTENT_MAGIC.to_le_bytes());
        b.extend_from_slice(&self.dispatched.to_le_bytes());
        b.extend_from_slice(&(self.deletes.len() as u64).to_le_bytes());
        for (id, n) in &self.deletes {
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
        if b.len() < 24
            || crc32c::crc32c(body).to_le_bytes() != crc
            || body[..4] != INTENT_MAGIC.to_le_bytes()
        {
            return None;
        }
        let count = usize::try_from(super::le::u64_at(body, 12)).ok()?;
        if body.len() != 20 + count.checked_mul(12)? {
            return None;
        }
        let deletes = (0..count)
            .map(|k| {
                (
                    super::le::u32_at(body, 20 + k * 12),
                    super::le::u64_at(body, 24 + k * 12),
                )
            })
            .collect();
        Some(DeleteIntent {
            dispatched: super::le::u64_at(body, 4),
            deletes,
        })
    }
}

/// Reads a `dispatch` checkpoint image for `inspect`: the dispatch point and the table mark.
pub(crate) fn inspect_dispatch(
    bytes: &[u8],
    path: &Path,
) -> Result<(LogIndex, TableMark, CqConfig)> {
    DispatchCheckpoint::decode(bytes, path).map(|cp| {
        let l = cp.layout;
        let queues = CqConfig {
            slot_entries: l.slot_entries,
            arena_file_slots: l.arena_file_slots,
            first_file_entries: l.first_file_entries,
            max_file_entries: l.max_file_entries,
            ..CqConfig::default()
        };
        (cp.dispatched, cp.table, queues)
    })
}

#[derive(Debug)]
struct Dispatcher {
    topics: TopicTable,
    index: IndexFiles,
    dispatched: LogIndex,
    next_slot: u32,
    next_topic: TopicId,
    checkpointed: LogIndex,
    last_checkpoint: Instant,
    /// Topics trimmed or dropped since the last checkpoint: their files go after the next.
    removals: Vec<TopicId>,
    /// Set by any dispatch or checkpoint error: derived state in memory may be ahead of or
    /// apart from the disk, so nothing more is dispatched until the store is reopened.
    failed: Option<Arc<str>>,
    /// Topics created or dropped since open (readers cache what depends on the topic set).
    topic_changes: u64,
    /// The newest of those changes: `(version after it, db, key, created)`, at most
    /// `RECENT_TOPIC_CHANGES`, so a cache can catch up without rebuilding.
    recent_topic_changes: std::collections::VecDeque<(u64, u8, Bytes, bool)>,
    /// The entry being dispatched in parts (`dispatch_part`), after its first part.
    partial: Option<LogIndex>,
}

/// Topic creations and drops remembered for caches catching up.
const RECENT_TOPIC_CHANGES: usize = 4096;

impl Dispatcher {
    fn topic_changed(&mut self, db: u8, key: &Bytes, created: bool) {
        self.topic_changes += 1;
        if self.recent_topic_changes.len() == RECENT_TOPIC_CHANGES {
            self.recent_topic_changes.pop_front();
        }
        self.recent_topic_changes
            .push_back((self.topic_changes, db, key.clone(), created));
    }
}

/// A dispatch checkpoint captured by [`MessageStore::begin_checkpoint`] and not yet durable;
/// [`MessageStore::finish_checkpoint`] makes it so. Dropping one unfinished (or a failed
/// finish) leaves the previous checkpoint the durable one and the store refusing further
/// checkpoints until it is reopened: the capture took files off the dirty sets.
#[derive(Debug)]
#[must_use]
pub struct PendingCheckpoint {
    turn: CheckpointTurn,
    record: DispatchCheckpoint,
    queues: Unsynced<QueueFile>,
    index: IndexCapture,
    table: TableWrite,
    /// Pending XDELs whose flags this checkpoint writes.
    deletes: Vec<(TopicId, u64)>,
    /// Each deleting topic's row as this checkpoint's table holds it: the place its flags must
    /// reach even if the topic migrates before they are written.
    delete_rows: Vec<Topic>,
    /// Topics trimmed or dropped before it, with the point their files can go below.
    removals: Vec<(TopicId, u64)>,
}

impl PendingCheckpoint {
    /// The dispatch point it names.
    pub fn dispatched(&self) -> LogIndex {
        self.record.dispatched
    }
}

/// One checkpoint at a time between `begin_checkpoint` and `finish_checkpoint`: busy while a
/// [`CheckpointTurn`] lives; abandoned for good once one is dropped unfinished (its capture took
/// files off the dirty sets, so no later checkpoint may claim to have synced them).
#[derive(Debug, Default)]
struct CheckpointGate {
    state: Mutex<GateState>,
    free: Condvar,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum GateState {
    #[default]
    Free,
    Busy,
    Abandoned,
}

/// The right to the one checkpoint in flight; given back when dropped.
#[derive(Debug)]
struct CheckpointTurn {
    gate: Arc<CheckpointGate>,
    completed: bool,
}

impl CheckpointGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CheckpointTurn {
    /// Waits for the checkpoint in flight, if any, to finish.
    fn wait(gate: &Arc<CheckpointGate>) -> Result<Self> {
        let mut state = gate.lock();
        while *state == GateState::Busy {
            state = gate.free.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        Self::take(gate, &mut state).ok_or_else(|| {
            StoreError::Failed(Arc::from(
                "a dispatch checkpoint was abandoned unfinished; reopen the store",
            ))
        })
    }

    /// The turn if no checkpoint is in flight.
    fn try_take(gate: &Arc<CheckpointGate>) -> Option<Self> {
        Self::take(gate, &mut gate.lock())
    }

    fn take(gate: &Arc<CheckpointGate>, state: &mut GateState) -> Option<Self> {
        if *state != GateState::Free {
            return None;
        }
        *state = GateState::Busy;
        Some(CheckpointTurn {
            gate: gate.clone(),
            completed: false,
        })
    }
}

impl Drop for CheckpointTurn {
    fn drop(&mut self) {
        *self.gate.lock() = if self.completed {
            GateState::Free
        } else {
            GateState::Abandoned
        };
        self.gate.free.notify_all();
    }
}

/// The store. Thread-safe: appends and reads go straight to the CommitLog and the queues;
/// dispatch and topic metadata take one lock.
#[derive(Debug)]
pub struct MessageStore {
    storage: Arc<dyn Storage>,
    root: PathBuf,
    config: StoreConfig,
    log: CommitLog,
    queues: ConsumeQueues,
    dispatch: Mutex<Dispatcher>,
    /// Serialises checkpoints begun and not yet finished.
    checkpoint_gate: Arc<CheckpointGate>,
    /// The newest applied entries, decoded: reads at the head take messages from here.
    recent: RecentEntries,
}

/// Consecutive messages of one topic, buffered during a dispatch call so they reach the queue
/// in one write.
#[derive(Debug)]
struct Run {
    topic: Topic,
    start: u64,
    entries: Vec<CqEntry>,
}

/// The runs of a dispatch call, one per topic it added to: messages interleaved across
/// topics still reach each queue in one write per call, not one per message. Flushed
/// before anything that reads a queue and before the dispatcher lock is released.
#[derive(Debug, Default)]
struct Runs {
    runs: Vec<Run>,
    /// Where each topic's run is in `runs` (a batch may touch thousands of topics); looked up
    /// per message, so foldhash rather than SipHash.
    at: hashbrown::HashMap<TopicId, usize>,
}

impl Run {
    fn new(topic: &Topic, start: u64, entry: CqEntry) -> Run {
        Run {
            topic: topic.clone(),
            start,
            entries: vec![entry],
        }
    }
}

impl Runs {
    /// Adds `entry` (the topic's entry number `n`) to its topic's run. A run of that topic
    /// that cannot take it (not contiguous, or the queue's layout changed) is handed back, to
    /// be written first.
    fn add(&mut self, topic: &Topic, n: u64, entry: CqEntry) -> Option<Run> {
        match self.at.get(&topic.id).and_then(|&k| self.runs.get_mut(k)) {
            Some(r)
                if r.topic.migrated == topic.migrated && r.start + r.entries.len() as u64 == n =>
            {
                r.entries.push(entry);
                None
            }
            Some(r) => Some(std::mem::replace(r, Run::new(topic, n, entry))),
            None => {
                self.at.insert(topic.id, self.runs.len());
                self.runs.push(Run::new(topic, n, entry));
                None
            }
        }
    }

    /// Takes every run out, in the order the topics were first added.
    fn take(&mut self) -> Vec<Run> {
        self.at.clear();
        std::mem::take(&mut self.runs)
    }
}

/// What dispatching one sub-record did: the facts the engine's replies are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The message was added to its stream.
    Added,
    /// The message was not added: its ID is not above the stream's last ID.
    Rejected {
        /// The stream's last ID.
        last: StreamId,
    },
    /// XDEL: whether a live entry with that ID existed (and is now deleted).
    Deleted(bool),
    /// Trim: live entries removed.
    Trimmed(u64),
    /// Drop: whether the topic existed.
    Dropped(bool),
    /// Create: whether the topic was created (it did not exist).
    Created(bool),
    /// SetId: done (`None`), or why it changed nothing.
    IdSet(Option<SetIdRefused>),
}

/// Why an XSETID (`RecordOp::SetId`) changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetIdRefused {
    /// The stream does not exist.
    NoKey = 1,
    /// The stream has entries and the ID is below its last one.
    IdTooSmall = 2,
    /// The entries-added counter given is below the stream's length.
    AddedTooSmall = 3,
}

/// Property of a SetId sub-record: the stream's entries-added counter (8 bytes LE).
pub const SETID_ADDED_PROPERTY: &[u8] = b"added";
/// Property of a SetId sub-record: the stream's max deleted ID (16 bytes LE: ms, seq).
pub const SETID_MAXDEL_PROPERTY: &[u8] = b"maxdel";

/// A message read back through its queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The queue entry (position, stream ID, flags).
    pub entry: CqEntry,
    /// Store timestamp (the leader timestamp of its log entry), ms.
    pub timestamp_ms: u64,
    /// The sub-record.
    pub record: SubRecord,
}

impl MessageStore {
    /// Opens (or creates) a store under `root`. Derived state is as of the last dispatch
    /// checkpoint: call [`MessageStore::dispatch_to`] with the commit index to catch up.
    pub fn open(storage: Arc<dyn Storage>, root: &Path, config: StoreConfig) -> Result<Self> {
        let log = CommitLog::open(storage.clone(), root, config.log.clone())?;
        let cp_path = root.join(DISPATCH_FILE);
        let cp = if storage.exists(&cp_path) {
            let bytes = read_all(storage.as_ref(), &cp_path).at(&cp_path)?;
            let cp = DispatchCheckpoint::decode(&bytes, &cp_path)?;
            if cp.layout != Layout::of(&config) {
                return Err(StoreError::Config(format!(
                    "queue/index layout {:?} differs from the one the store was written with {:?}",
                    Layout::of(&config),
                    cp.layout
                )));
            }
            cp
        } else {
            DispatchCheckpoint {
                index: IndexFill {
                    first_index: 1,
                    ..IndexFill::default()
                },
                ..Default::default()
            }
        };
        if cp.dispatched > log.last_index() {
            return Err(StoreError::Corruption {
                file: cp_path,
                offset: 8,
                reason: format!(
                    "dispatched up to {} but the log ends at {}",
                    cp.dispatched,
                    log.last_index()
                ),
            });
        }
        let cq_dir = root.join("consumequeue");
        let topics = TopicTable::open(storage.clone(), &cq_dir, cp.table)?;
        let queues = ConsumeQueues::open(storage.clone(), &cq_dir, config.queues.clone())?;
        let index = IndexFiles::open(
            storage.clone(),
            &root.join("index"),
            config.index.clone(),
            Some(cp.index),
        )?;
        let dispatch = Dispatcher {
            topics,
            index,
            dispatched: cp.dispatched,
            next_slot: cp.next_slot,
            next_topic: cp.next_topic,
            checkpointed: cp.dispatched,
            last_checkpoint: Instant::now(),
            removals: Vec::new(),
            failed: None,
            topic_changes: 0,
            recent_topic_changes: Default::default(),
            partial: None,
        };
        let store = MessageStore {
            storage,
            root: root.to_path_buf(),
            config,
            log,
            queues,
            dispatch: Mutex::new(dispatch),
            checkpoint_gate: Arc::default(),
            recent: RecentEntries::default(),
        };
        // Trims and drops recorded by the checkpoint whose file removal a crash interrupted.
        {
            let mut d = store.lock();
            store.undo_incomplete_deletes(&d, cp.dispatched)?;
            let removals: Vec<(TopicId, u64)> = d
                .topics
                .with_pending_removals()
                .into_iter()
                .filter_map(|id| d.topics.get(id).map(|t| (id, t.removable_below())))
                .collect();
            store.finish_removals(&mut d, &removals)?;
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Dispatcher> {
        self.dispatch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An image of this store for another directory ([`super::image`]): the log from its
    /// first index to `upto` (a committed entry at or past the dispatch point) and the derived
    /// state of the durable dispatch checkpoint, with a log checkpoint that has the receiving
    /// store verify every entry it was sent. The caller keeps dispatch checkpoints and
    /// deletions from running until it has read every file: derived files are then what a
    /// crash now would leave (bytes written past the checkpoint are re-dispatched over), and
    /// no file the image names is removed.
    pub fn image(&self, upto: LogIndex) -> Result<super::image::StoreImage> {
        use super::image::{Manifest, StoreImage};
        let cp_path = self.root.join(DISPATCH_FILE);
        if !self.storage.exists(&cp_path) {
            return Err(StoreError::Config(
                "no dispatch checkpoint yet: nothing to make an image of".into(),
            ));
        }
        let dispatch = read_all(self.storage.as_ref(), &cp_path).at(&cp_path)?;
        let cp = DispatchCheckpoint::decode(&dispatch, &cp_path)?;
        let first = self.log.first_index();
        if upto < cp.dispatched || upto < first {
            return Err(StoreError::Config(format!(
                "an image up to {upto} would not reach the dispatch point {} and the first \
                 index {first}",
                cp.dispatched
            )));
        }
        let (segments, last_term) = self.log.image_segments(upto)?;
        let mut image = StoreImage::new(
            self.storage.clone(),
            Manifest {
                first_index: first,
                first_term: self.log.term_at(first)?,
                last_index: upto,
                last_term,
                dispatched: cp.dispatched,
                files: Vec::new(),
            },
        );
        for seg in segments {
            image.push_file(
                format!("commitlog/{}", seg.name),
                seg.path,
                seg.size,
                seg.data,
            );
        }
        let storage = self.storage.as_ref();
        let whole = |image: &mut StoreImage, rel: String| -> Result<()> {
            let path = self.root.join(&rel);
            let len = storage.open(&path, false).at(&path)?.size().at(&path)?;
            image.push_file(rel, path, len, len);
            Ok(())
        };
        let cq = self.root.join("consumequeue");
        for name in storage.list(&cq.join("arena")).at(&cq)? {
            if super::segment::parse_file_name(&name).is_some() {
                whole(&mut image, format!("consumequeue/arena/{name}"))?;
            }
        }
        for dir in storage.list_dirs(&cq).at(&cq)? {
            if dir == "arena" {
                continue;
            }
            for name in storage.list(&cq.join(&dir)).at(&cq)? {
                if super::segment::parse_file_name(&name).is_some() {
                    whole(&mut image, format!("consumequeue/{dir}/{name}"))?;
                }
            }
        }
        let table = format!("topics-{:08}", cp.table.generation);
        if storage.exists(&cq.join(&table)) {
            whole(&mut image, format!("consumequeue/{table}"))?;
        }
        let index_dir = self.root.join("index");
        for name in storage.list(&index_dir).at(&index_dir)? {
            // Files named past the active one were made after the checkpoint.
            if super::segment::parse_file_name(&name).is_some_and(|i| i <= cp.index.first_index) {
                whole(&mut image, format!("index/{name}"))?;
            }
        }
        image.push_bytes(DISPATCH_FILE.into(), dispatch);
        let checkpoint = super::checkpoint::Checkpoint {
            first_index: first,
            flushed_index: upto,
            map_flushed_index: upto,
            verify_from_index: first - 1,
        };
        image.push_bytes(
            super::checkpoint::CHECKPOINT_FILE.into(),
            checkpoint.encode().to_vec(),
        );
        Ok(image)
    }

    /// The CommitLog (append, read by index, durability).
    pub fn log(&self) -> &CommitLog {
        &self.log
    }

    /// What the CommitLog's recovery found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.log.recovery_report()
    }

    /// Last index dispatched into queues and index.
    pub fn dispatched_index(&self) -> LogIndex {
        self.lock().dispatched
    }

    /// Dispatches every entry up to `commit` (bounded by the log's end) into the queues and
    /// the index, in log order; checkpoints derived state when the interval has passed.
    /// Returns the new dispatch point.
    pub fn dispatch_to(&self, commit: LogIndex) -> Result<LogIndex> {
        let target = commit.min(self.log.last_index());
        let mut d = self.lock();
        Self::usable(&d)?;
        let result = (|| {
            let mut runs = Runs::default();
            while d.dispatched < target {
                let i = d.dispatched + 1;
                let entry = self.log.entry(i)?;
                let first = d.partial != Some(i);
                self.dispatch_records(&mut d, &entry, 0..entry.records.len(), first, &mut runs)?;
                d.dispatched = i;
                d.partial = None;
            }
            self.flush_runs(&mut runs)?;
            self.checkpoint_if_due(&mut d)?;
            Ok(d.dispatched)
        })();
        Self::note_failure(&mut d, result)
    }

    /// Dispatches `entry`, which must be the one right after the dispatch point, and says what
    /// each of its sub-records did: the engine's replies come from here. The caller passes the
    /// entry it already holds, so nothing is read back from the log.
    pub fn dispatch_next(&self, entry: &LogEntry) -> Result<Vec<Outcome>> {
        self.dispatch_batch(std::slice::from_ref(entry))
            .map(|mut v| v.pop().unwrap_or_default())
    }

    /// `dispatch_next` for consecutive entries under one lock: consecutive messages of a topic
    /// reach its queue in one write.
    pub fn dispatch_batch<E: std::borrow::Borrow<LogEntry>>(
        &self,
        entries: &[E],
    ) -> Result<Vec<Vec<Outcome>>> {
        let mut d = self.lock();
        Self::usable(&d)?;
        // A caller's mistake changes nothing and fails nothing: the entries must be the log's
        // next ones, as the log holds them.
        self.check_batch(&d, entries)?;
        let result = (|| {
            let mut runs = Runs::default();
            let mut all = Vec::with_capacity(entries.len());
            for e in entries {
                let e = e.borrow();
                let first = d.partial != Some(e.index);
                all.push(self.dispatch_records(&mut d, e, 0..e.records.len(), first, &mut runs)?);
                d.dispatched = e.index;
                d.partial = None;
            }
            self.flush_runs(&mut runs)?;
            self.checkpoint_if_due(&mut d)?;
            Ok(all)
        })();
        Self::note_failure(&mut d, result)
    }

    /// Dispatches the sub-records `range` of the log's next entry and says what each did: a
    /// transaction (MULTI/EXEC) is one entry applied command by command, with reads between
    /// its parts. The entry counts as dispatched once its `last` part (ending at its last
    /// sub-record) is;
    /// until then the dispatch point stays before it, so a checkpoint never records half an
    /// entry, and a re-dispatch after a crash skips what a topic already applied.
    pub fn dispatch_part(
        &self,
        entry: &LogEntry,
        range: Range<usize>,
        last: bool,
    ) -> Result<Vec<Outcome>> {
        let mut d = self.lock();
        Self::usable(&d)?;
        self.check_next(&d, entry, 0)?;
        let n = entry.records.len();
        if range.start > range.end || range.end > n || (last && range.end != n) {
            return Err(StoreError::IndexOutOfRange {
                index: range.end as u64,
                first: range.start as u64,
                last: entry.records.len() as u64,
            });
        }
        let result = (|| {
            let mut runs = Runs::default();
            let first = d.partial != Some(entry.index);
            let outcomes = self.dispatch_records(&mut d, entry, range.clone(), first, &mut runs)?;
            self.flush_runs(&mut runs)?;
            if last {
                d.dispatched = entry.index;
                d.partial = None;
            } else {
                d.partial = Some(entry.index);
            }
            Ok(outcomes)
        })();
        Self::note_failure(&mut d, result)
    }

    /// Whether `e` is the log's entry `k` places after the dispatch point, as the log holds it.
    fn check_next(&self, d: &Dispatcher, e: &LogEntry, k: u64) -> Result<()> {
        self.check_index(d, e, k, self.log.last_index())?;
        self.check_term(e)
    }

    /// [`check_next`](Self::check_next) for each of `entries`, the first just after the
    /// dispatch point. The log's terms never decrease along it, so a run of entries of one
    /// term is the log's when its first and last are: two term lookups (each takes the log's
    /// lock, which appenders hold) per run instead of one per entry.
    fn check_batch<E: std::borrow::Borrow<LogEntry>>(
        &self,
        d: &Dispatcher,
        entries: &[E],
    ) -> Result<()> {
        let last_index = self.log.last_index();
        let mut run_start: Option<&LogEntry> = None;
        for (k, e) in entries.iter().enumerate() {
            let e = e.borrow();
            self.check_index(d, e, k as u64, last_index)?;
            let next_term = entries.get(k + 1).map(|n| n.borrow().term);
            let first = *run_start.get_or_insert(e);
            if next_term != Some(e.term) {
                self.check_term(first)?;
                if !std::ptr::eq(first, e) {
                    self.check_term(e)?;
                }
                run_start = None;
            }
        }
        Ok(())
    }

    fn check_index(
        &self,
        d: &Dispatcher,
        e: &LogEntry,
        k: u64,
        last_index: LogIndex,
    ) -> Result<()> {
        let want = d.dispatched + 1 + k;
        if e.index != want || e.index > last_index {
            return Err(StoreError::IndexOutOfRange {
                index: e.index,
                first: want,
                last: want,
            });
        }
        Ok(())
    }

    fn check_term(&self, e: &LogEntry) -> Result<()> {
        if self.log.term_at(e.index)? != e.term {
            return Err(StoreError::Corruption {
                file: self.root.join("commitlog"),
                offset: e.index,
                reason: format!("entry {} handed to dispatch is not the log's", e.index),
            });
        }
        Ok(())
    }

    fn checkpoint_if_due(&self, d: &mut Dispatcher) -> Result<()> {
        let interval = Duration::from_millis(self.config.dispatch_checkpoint_interval_ms);
        if d.dispatched > d.checkpointed && d.last_checkpoint.elapsed() >= interval {
            self.checkpoint_locked(d)?;
        }
        Ok(())
    }

    fn usable(d: &Dispatcher) -> Result<()> {
        match &d.failed {
            Some(why) => Err(StoreError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn note_failure<T>(d: &mut Dispatcher, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            tracing::error!(error = %e, "dispatch failed; derived state is rebuilt at reopen");
            d.failed.get_or_insert_with(|| Arc::from(e.to_string()));
        }
        result
    }

    /// Queue entries `[from, from + count)` of `t` during dispatch: the runs are written first
    /// only if the range reaches into `t`'s (a trim reading the oldest entries of a long stream
    /// leaves the batch's writes batched).
    fn read_queue_in(
        &self,
        runs: &mut Runs,
        t: &Topic,
        from: u64,
        count: u64,
    ) -> Result<Vec<CqEntry>> {
        let pending = runs
            .at
            .get(&t.id)
            .and_then(|&k| runs.runs.get(k))
            .is_some_and(|r| from.saturating_add(count) > r.start);
        if pending {
            self.flush_runs(runs)?;
        }
        self.queues.read(t, from, count)
    }

    /// Writes the buffered queue entries of every run (see [`Runs`]).
    fn flush_runs(&self, runs: &mut Runs) -> Result<()> {
        for r in runs.take() {
            self.queues.write_many(&r.topic, r.start, &r.entries)?;
        }
        Ok(())
    }

    /// Dispatches the sub-records `range` of `entry` (`first`: no part of it was before).
    fn dispatch_records(
        &self,
        d: &mut Dispatcher,
        entry: &LogEntry,
        range: Range<usize>,
        first: bool,
        runs: &mut Runs,
    ) -> Result<Vec<Outcome>> {
        let i = entry.index;
        let start = range.start;
        let records = &entry.records[range];
        // What each sub-record did; ops on a missing topic change nothing.
        let mut outcomes: Vec<Outcome> = records
            .iter()
            .map(|r| match r.op {
                RecordOp::Message => Outcome::Added,
                RecordOp::Delete => Outcome::Deleted(false),
                RecordOp::Trim | RecordOp::TrimToLen => Outcome::Trimmed(0),
                RecordOp::Drop => Outcome::Dropped(false),
                RecordOp::Create => Outcome::Created(false),
                RecordOp::RetainFrom => Outcome::Trimmed(0),
                RecordOp::SetId => Outcome::IdSet(Some(SetIdRefused::NoKey)),
            })
            .collect();
        if first {
            let keys = entry
                .records
                .iter()
                .filter(|r| r.op == RecordOp::Message && !r.message_key.is_empty())
                .count();
            d.index.reserve(i, u32::try_from(keys).unwrap_or(u32::MAX));
        }
        for (k, r) in records.iter().enumerate() {
            let j = (start + k) as u16;
            if r.op == RecordOp::RetainFrom {
                self.flush_runs(runs)?; // reads queues
                outcomes[usize::from(j) - start] =
                    Outcome::Trimmed(self.retain_from(d, r.id.ms, (i, j))?);
                continue;
            }
            let existing = d.topics.find(r.db, &r.topic).cloned();
            // Rows are written only by checkpoints, so a row never runs ahead of the dispatch
            // point it was checkpointed with; this guard keeps re-dispatch idempotent even so.
            if existing.as_ref().is_some_and(|t| (i, j) <= t.last_applied) {
                continue;
            }
            match (r.op, existing) {
                (RecordOp::Message, existing) => {
                    // Stream IDs only grow (Redis's rule, re-checked by the engine at apply):
                    // a message that breaks it is not in the stream.
                    let last = existing.as_ref().map_or(StreamId::default(), |t| t.last_id);
                    if r.id <= last {
                        outcomes[usize::from(j) - start] = Outcome::Rejected { last };
                        continue;
                    }
                    let mut t = match existing {
                        Some(t) => t,
                        None => Self::create_topic(d, r, i)?,
                    };
                    let n = t.len;
                    if self.queues.needs_migration(&t, n) {
                        self.flush_runs(runs)?; // migration reads the slot from disk
                        self.queues.migrate(&t)?;
                        t.migrated = true;
                    }
                    // The Redis node it goes into: the tail node if that has room.
                    let (tail, opens, skip) = match t.tail {
                        Some(mut tail) if tail.has_room(&r.fields, self.config.stream_nodes) => {
                            let skip = tail.add(r.id, &r.fields);
                            (tail, false, skip)
                        }
                        _ => (TailNode::open(n, r.id, &r.fields), true, 0),
                    };
                    let flags = match (opens, skip) {
                        (true, _) => CQ_NODE_START,
                        (false, 0) => 0,
                        (false, _) => CQ_NODE_JOIN,
                    };
                    let e = CqEntry {
                        log_index: i,
                        sub: j,
                        id: r.id,
                        size: r.encoded_len() as u32,
                        flags,
                        skip,
                    };
                    // A topic's consecutive messages go out as one write.
                    if let Some(stale) = runs.add(&t, n, e) {
                        self.queues
                            .write_many(&stale.topic, stale.start, &stale.entries)?;
                    }
                    d.topics.update(t.id, |t| {
                        t.migrated |= n >= self.config.queues.slot_entries;
                        t.len = n + 1;
                        t.entries_added += 1;
                        t.last_id = r.id;
                        t.last_applied = (i, j);
                        t.tail = Some(tail);
                        t.nodes += u64::from(opens);
                    });
                    if !r.message_key.is_empty() {
                        let hash = key_hash(r.db, &r.topic, &r.message_key);
                        d.index.add(hash, i, j, entry.timestamp_ms)?;
                    }
                }
                (RecordOp::Create, None) => {
                    let t = Self::create_topic(d, r, i)?;
                    d.topics.update(t.id, |t| t.last_applied = (i, j));
                    outcomes[usize::from(j) - start] = Outcome::Created(true);
                }
                (RecordOp::Create, Some(_)) | (RecordOp::RetainFrom, _) => {}
                (RecordOp::SetId, Some(t)) => {
                    self.flush_runs(runs)?; // reads the queue
                    let added = u64_property(r, SETID_ADDED_PROPERTY);
                    let max_deleted = r
                        .properties
                        .iter()
                        .find(|(n, _)| n.as_ref() == SETID_MAXDEL_PROPERTY)
                        .and_then(|(_, v)| {
                            let v: &[u8; 16] = v.as_ref().try_into().ok()?;
                            Some(StreamId::new(le::u64_at(v, 0), le::u64_at(v, 8)))
                        });
                    // As Redis: only a stream with entries bounds the ID (by its last live
                    // entry) and the counter (by its length).
                    let live = t.live_len();
                    let refused = if live > 0 && self.last_live_id(&t)?.is_some_and(|l| r.id < l) {
                        Some(SetIdRefused::IdTooSmall)
                    } else if live > 0 && added.is_some_and(|a| a < live) {
                        Some(SetIdRefused::AddedTooSmall)
                    } else {
                        None
                    };
                    if refused.is_none() {
                        d.topics.update(t.id, |t| {
                            t.last_id = r.id;
                            if let Some(a) = added {
                                t.entries_added = a;
                            }
                            if let Some(m) = max_deleted.filter(|m| *m != StreamId::default()) {
                                t.max_deleted_id = m;
                            }
                            t.last_applied = (i, j);
                        });
                    }
                    outcomes[usize::from(j) - start] = Outcome::IdSet(refused);
                }
                (_, None) => {} // an operation on a topic that does not exist changes nothing
                (RecordOp::Delete, Some(t)) => {
                    self.flush_runs(runs)?; // reads the queue
                    let found = self.queues.find(&t, r.id)?;
                    let live = match found {
                        Some(n) if n >= t.first_live => {
                            let e = self.queues.read(&t, n, 1)?;
                            (!e.first().is_some_and(CqEntry::is_deleted)).then_some(n)
                        }
                        _ => None,
                    };
                    // Redis removes a node whose last live entry goes; if that was the newest,
                    // the next entry goes into the newest left, if it has room.
                    let (emptied, head) = match live {
                        Some(n) => {
                            let (node_live, start) = self.node_live_at(&t, n)?;
                            (node_live == 1, start.is_none_or(|s| s <= t.first_live))
                        }
                        None => (false, false),
                    };
                    if let Some(n) = live {
                        self.queues.mark_deleted(&t, n);
                    }
                    // Found with the entry deleted (pending), so the removed node has no live
                    // entry left to be found by.
                    let in_tail = live.is_some_and(|n| t.tail.is_some_and(|tail| n >= tail.start));
                    let new_tail = match t.tail {
                        Some(tail) if emptied && in_tail => self.tail_before(&t, tail.start)?,
                        _ => t.tail,
                    };
                    d.topics.update(t.id, |t| {
                        if live.is_some() {
                            t.deleted += 1;
                            if emptied {
                                t.nodes = t.nodes.saturating_sub(1);
                                t.head_kept &= !head;
                                if head {
                                    t.head_start = None;
                                    t.head_gone = false;
                                }
                                t.tail = new_tail;
                            } else if let Some(tail) = t.tail.as_mut().filter(|_| in_tail) {
                                tail.live = tail.live.saturating_sub(1);
                            }
                        }
                        if found.is_some() {
                            t.max_deleted_id = t.max_deleted_id.max(r.id);
                        }
                        t.last_applied = (i, j);
                    });
                    outcomes[usize::from(j) - start] = Outcome::Deleted(live.is_some());
                }
                (op @ (RecordOp::Trim | RecordOp::TrimToLen), Some(t)) => {
                    if op == RecordOp::Trim {
                        self.flush_runs(runs)?; // seeks the queue by ID
                    }
                    let limit = trim_limit(r);
                    let approx = u64_property(r, TRIM_NODE_PROPERTY).is_some_and(|k| k > 0);
                    let keep = if op == RecordOp::Trim {
                        Keep::MinId(r.id)
                    } else {
                        Keep::MaxLen(r.id.ms)
                    };
                    let n = if approx {
                        self.whole_nodes_end(runs, &t, keep, limit)?
                    } else if op == RecordOp::Trim {
                        let below = self.queues.seek(&t, r.id)?.max(t.first_live);
                        match limit {
                            Some(limit) => self.position_removing(runs, &t, limit, below)?,
                            None => below,
                        }
                    } else {
                        let excess = t.live_len().saturating_sub(r.id.ms);
                        let excess = excess.min(limit.unwrap_or(u64::MAX));
                        self.position_removing(runs, &t, excess, t.len)?
                    };
                    outcomes[usize::from(j) - start] = Outcome::Trimmed(self.cut(
                        d,
                        runs,
                        &t,
                        n,
                        CutBy::trim(op, approx),
                        (i, j),
                    )?);
                }
                (RecordOp::Drop, Some(t)) => {
                    self.flush_runs(runs)?;
                    d.topics.update(t.id, |t| {
                        t.dropped = true;
                        t.last_applied = (i, j);
                    });
                    d.topic_changed(t.db, &t.key, false);
                    d.removals.push(t.id);
                    outcomes[usize::from(j) - start] = Outcome::Dropped(true);
                }
            }
        }
        Ok(outcomes)
    }

    /// Removes the entries `[first_live, n)` of `t` (a trim or retention at `at`); returns how
    /// many of them were live. Walks the range in bounded chunks: a cut may be millions.
    ///
    /// Also keeps the stream's Redis nodes counted: a node cut whole no longer counts (unless
    /// XDEL had emptied, so removed, it already), the tail node loses the live entries cut, and
    /// a node cut into that keeps no live entry is one Redis keeps (`head_kept`) — unless
    /// `by` is an exact MAXLEN (Redis removes a node whose live entries all go, its deleted
    /// ones after them with it), when the cut goes on to that node's end. A node cut into is
    /// remembered (`head_start`: its queue entries stay), and whether retention cut it.
    fn cut(
        &self,
        d: &mut Dispatcher,
        runs: &mut Runs,
        t: &Topic,
        mut n: u64,
        by: CutBy,
        at: (LogIndex, u16),
    ) -> Result<u64> {
        // The nodes first: each one all of whose entries go no longer counts (unless it had no
        // live entry, XDEL having removed it, or was the kept head); the one cut into stays.
        let split = n;
        let mut nodes_cut = 0u64;
        let mut head_kept = t.head_kept;
        let mut tail_live_cut = 0u64;
        let mut tail_gone = false;
        let (mut head_start, mut head_gone) = (t.head_start, t.head_gone);
        // Entries cut, and of those deleted, as the walk counted them.
        let mut counted_cut = None;
        // The common case, a cut within the oldest node's own run of entries (an exact MAXLEN
        // or MINID on every XADD): no node opens or is joined in `(first_live, n]` and entry
        // `n` is live, so that node stays with a live entry and no other is touched.
        let within = if n > t.first_live && n < t.len && n - t.first_live < TRIM_CHUNK {
            let run = self.read_queue_in(runs, t, t.first_live, n + 1 - t.first_live)?;
            let plain = |e: &CqEntry| !e.opens_node() && e.joins_node().is_none();
            let inside = run.len() as u64 == n + 1 - t.first_live
                && run[1..].iter().all(plain)
                && run.last().is_some_and(|e| !e.is_deleted());
            inside.then_some(run)
        } else {
            None
        };
        if let Some(run) = within {
            let cut = &run[..run.len() - 1];
            let deleted = cut.iter().filter(|e| e.is_deleted()).count() as u64;
            counted_cut = Some((cut.len() as u64, deleted));
            head_kept = false;
            if run[0].opens_node() {
                (head_start, head_gone) = (Some(t.first_live), false);
            }
            head_gone |= by == CutBy::Retention;
            // The node is the tail if the tail opened at or below `first_live`.
            if t.tail.is_some_and(|tail| tail.start <= t.first_live) {
                tail_live_cut = cut.len() as u64 - deleted;
            }
        } else if n > t.first_live {
            head_kept = false;
            (head_start, head_gone) = (None, false);
            let tail_start = t.tail.map(|tail| tail.start);
            let read = Box::new(|at, count| self.read_queue_in(runs, t, at, count));
            let mut walk = NodeWalk::with_reader(t, t.first_live, read).with_split(n);
            let mut first = true;
            while let Some(node) = walk.next_final()? {
                if node.start.is_some_and(|s| s >= n) {
                    break;
                }
                let counted = node.live > 0 || (first && t.head_kept);
                first = false;
                let whole =
                    node.end <= n || (by == CutBy::ExactMaxLen && node.live_from_split == 0);
                // The tail node: opened where the row says, or below `first_live` (then it is
                // the walk's node opened before it).
                let is_tail = match (node.start, tail_start) {
                    (Some(s), Some(ts)) => s == ts,
                    (None, Some(ts)) => ts < t.first_live,
                    (_, None) => false,
                };
                if is_tail {
                    tail_gone = whole;
                    tail_live_cut = node.live - node.live_from_split;
                }
                if whole {
                    nodes_cut += u64::from(counted);
                    n = n.max(node.end);
                } else {
                    head_kept = counted && node.live_from_split == 0;
                    // Opened below `first_live`: the node the last cut went into.
                    (head_start, head_gone) = match node.start {
                        Some(s) => (Some(s), false),
                        None => (t.head_start, t.head_gone),
                    };
                    head_gone |= by == CutBy::Retention;
                    break;
                }
            }
            if n == split {
                counted_cut = Some(walk.below_split());
            }
        }
        let (cut_len, were_deleted) = match counted_cut {
            Some(counts) => counts,
            None => {
                let (mut cut_len, mut were_deleted) = (0u64, 0u64);
                let mut pos = t.first_live;
                while pos < n {
                    let chunk = self.read_queue_in(runs, t, pos, (n - pos).min(TRIM_CHUNK))?;
                    if chunk.is_empty() {
                        break;
                    }
                    were_deleted += chunk.iter().filter(|e| e.is_deleted()).count() as u64;
                    cut_len += chunk.len() as u64;
                    pos += chunk.len() as u64;
                }
                (cut_len, were_deleted)
            }
        };
        // Redis 7.0: a trim does not move `max_deleted_entry_id` (only XDEL does).
        d.topics.update(t.id, |t| {
            t.first_live = n;
            t.deleted -= were_deleted.min(t.deleted);
            t.last_applied = at;
            t.nodes = t.nodes.saturating_sub(nodes_cut);
            t.head_kept = head_kept;
            t.head_start = head_start;
            t.head_gone = head_gone;
            if n >= t.len || tail_gone {
                t.tail = None;
            } else if let Some(tail) = &mut t.tail {
                tail.live = tail.live.saturating_sub(tail_live_cut as u32);
            }
        });
        d.removals.push(t.id);
        Ok(cut_len - were_deleted)
    }

    /// Where an approximate trim (Redis's `~`) cuts `t`: whole nodes only, from the oldest, as
    /// Redis's `streamTrim` walks them — stopping at the first node that must stay, or whose
    /// live entries would take the removed past `limit`.
    fn whole_nodes_end(
        &self,
        runs: &mut Runs,
        t: &Topic,
        keep: Keep,
        limit: Option<u64>,
    ) -> Result<u64> {
        let (mut pos, mut length, mut removed) = (t.first_live, t.live_len(), 0u64);
        let read = Box::new(|at, count| self.read_queue_in(runs, t, at, count));
        let mut walk = NodeWalk::with_reader(t, t.first_live, read);
        loop {
            if matches!(keep, Keep::MaxLen(max) if length <= max) {
                break;
            }
            let Some(node) = walk.next_final()? else {
                break;
            };
            if limit.is_some_and(|l| removed + node.live > l) {
                break;
            }
            let whole = match keep {
                Keep::MaxLen(max) => length - node.live.min(length) >= max,
                Keep::MinId(min) => node.last_id < min,
            };
            if !whole {
                break;
            }
            pos = pos.max(node.end);
            length -= node.live.min(length);
            removed += node.live;
        }
        Ok(pos)
    }

    /// Live entries of the node holding position `n` of `t` (at or above `first_live`), and
    /// where that node begins (`None`: before `first_live`).
    fn node_live_at(&self, t: &Topic, n: u64) -> Result<(u64, Option<u64>)> {
        // The entry that placed `n`'s node: `n` or the nearest before it opening or joining one.
        let mut start = None;
        let mut top = n + 1;
        'back: while top > t.first_live {
            let from = top.saturating_sub(NODE_SCAN).max(t.first_live);
            let chunk = self.queues.read(t, from, top - from)?;
            if chunk.is_empty() {
                break;
            }
            for (k, e) in chunk.iter().enumerate().rev() {
                let p = from + k as u64;
                if e.opens_node() {
                    start = Some(p);
                    break 'back;
                }
                if let Some(skip) = e.joins_node() {
                    // Fewer node openings above `first_live`: it opened below it.
                    let starts = self.node_starts_before(t, p, usize::from(skip))?;
                    start = starts.get(usize::from(skip).wrapping_sub(1)).copied();
                    break 'back;
                }
            }
            top = from;
        }
        let mut walk = NodeWalk::new(&self.queues, t, start.unwrap_or(t.first_live));
        while let Some(node) = walk.next_final()? {
            if node.start == start {
                return Ok((node.live, start));
            }
        }
        Ok((0, start))
    }

    /// The positions of the last `count` node-opening entries of `t` before position `before`
    /// (not below `first_live`), newest first: fewer when `first_live` comes first.
    fn node_starts_before(&self, t: &Topic, before: u64, count: usize) -> Result<Vec<u64>> {
        let mut starts = Vec::new();
        let mut top = before;
        while top > t.first_live && starts.len() < count {
            let from = top.saturating_sub(NODE_SCAN).max(t.first_live);
            let chunk = self.queues.read(t, from, top - from)?;
            if chunk.is_empty() {
                break;
            }
            for (k, e) in chunk.iter().enumerate().rev() {
                if e.opens_node() && starts.len() < count {
                    starts.push(from + k as u64);
                }
            }
            top = from;
        }
        Ok(starts)
    }

    /// The tail node once XDEL removed the one opened at `removed`: the newest node before it
    /// that still has a live entry, as Redis's next XADD finds it, with the `skip` the entry
    /// joining it will carry. `None` (the next entry opens a node) when there is none, when it
    /// began below `first_live` (part of it may be gone), or when more than 254 removed nodes
    /// lie between (the skip would not fit its byte).
    fn tail_before(&self, t: &Topic, removed: u64) -> Result<Option<TailNode>> {
        // Node-opening entries from the end down to `first_live`, newest first; the `k`-th can
        // be joined with skip `k + 1`, so the 255 newest are candidates.
        let starts = self.node_starts_before(t, t.len, 256)?;
        // Which candidates still have a live entry: one walk from the oldest of a window of
        // them to the end (a node's entries all come after its opening), the window widened
        // until one has or all were seen — the newest usually does.
        let mut window = 4;
        loop {
            let w = window.min(starts.len()).min(255);
            let Some(&from) = w.checked_sub(1).and_then(|last| starts.get(last)) else {
                break;
            };
            let mut alive = Vec::new();
            let mut walk = NodeWalk::new(&self.queues, t, from);
            while let Some(node) = walk.next_final()? {
                if let Some(s) = node.start.filter(|s| *s < removed && node.live > 0) {
                    alive.push(s);
                }
            }
            let newest = starts[..w]
                .iter()
                .enumerate()
                .find(|(_, c)| alive.contains(c));
            if let Some((k, &c)) = newest {
                return Ok(self.alive_node(t, c, false)?.map(|tail| TailNode {
                    skip: (k + 1) as u8,
                    ..tail
                }));
            }
            if w == starts.len() || w == 255 {
                break;
            }
            window *= 4;
        }
        if starts.len() > 254 {
            return Ok(None); // the oldest node is too far back to be joined
        }
        // Its opening and any others below `first_live` count in the skip too.
        // The oldest node, opened below `first_live`: readable whole if a trim (not retention)
        // cut into it; kept by Redis even with no live entry if a trim emptied it (`head_kept`).
        let (Some(head), false) = (t.head_start, t.head_gone) else {
            return Ok(None);
        };
        let below = self
            .queues
            .read(t, head, t.first_live.saturating_sub(head))?;
        let below = below.iter().filter(|e| e.opens_node()).count().max(1);
        let Ok(skip) = u8::try_from(starts.len() + below) else {
            return Ok(None);
        };
        if removed <= t.first_live {
            return Ok(None); // the oldest node is the one removed
        }
        Ok(self
            .alive_node(t, head, t.head_kept)?
            .map(|tail| TailNode { skip, ..tail }))
    }

    /// The node opened at `start` as a tail node, if it has a live entry or is `kept`: its size
    /// recomputed from its messages in the CommitLog.
    fn alive_node(&self, t: &Topic, start: u64, kept: bool) -> Result<Option<TailNode>> {
        let mut walk = NodeWalk::new(&self.queues, t, start)
            .live_from(t.first_live)
            .keeping_members();
        let mut found = None;
        while let Some(node) = walk.next_final()? {
            if node.start == Some(start) {
                found = Some(node);
                break;
            }
        }
        let Some(node) = found.filter(|node| node.live > 0 || kept) else {
            return Ok(None);
        };
        let entries: Vec<CqEntry> = walk.members_of_last().iter().map(|(_, e)| *e).collect();
        let messages = self.messages(t, &entries)?;
        let mut members = messages.iter();
        let Some(first) = members.next() else {
            return Ok(None);
        };
        let mut tail = TailNode::open(start, first.record.id, &first.record.fields);
        for m in members {
            tail.add(m.record.id, &m.record.fields);
        }
        tail.live = u32::try_from(node.live).unwrap_or(u32::MAX);
        Ok(Some(tail))
    }

    /// Retention at `at`: in every topic, the entries of log entries below `index` go. Only
    /// topics with entries both sides of `index` are searched (by position: queue entries are in
    /// log order). Returns the live entries removed.
    fn retain_from(&self, d: &mut Dispatcher, index: LogIndex, at: (LogIndex, u16)) -> Result<u64> {
        let candidates: Vec<Topic> = d
            .topics
            .live()
            .filter(|t| t.incarnation < index && t.first_live < t.len && at > t.last_applied)
            .cloned()
            .collect();
        let mut removed = 0;
        for t in candidates {
            let n = self.seek_log_index(&t, index)?;
            if n > t.first_live {
                removed += self.cut(d, &mut Runs::default(), &t, n, CutBy::Retention, at)?;
            }
        }
        // An oldest node opened below `first_live` (kept readable for when it becomes the tail
        // again) whose first message is below the index: the CommitLog may now lose it.
        let heads: Vec<Topic> = d
            .topics
            .live()
            .filter(|t| t.head_start.is_some() && !t.head_gone && t.incarnation < index)
            .cloned()
            .collect();
        for t in heads {
            let Some(head) = t.head_start else { continue };
            let first = self.queues.read(&t, head, 1)?;
            if first.first().is_some_and(|e| e.log_index < index) {
                d.topics.update(t.id, |t| t.head_gone = true);
            }
        }
        Ok(removed)
    }

    /// Queue position of `t`'s first entry at or above `first_live` that came from log index
    /// `index` or later (`len` when none): a binary search, queue entries being in log order.
    pub fn seek_log_index(&self, t: &Topic, index: LogIndex) -> Result<u64> {
        // Nothing at or after `index`: known without reading the queue (a reader at the head
        // of a topic that has nothing new).
        if t.len == 0 || t.last_applied.0 < index {
            return Ok(t.len);
        }
        // Readers are mostly near the head: gallop back from the end (1, 2, 4, ... entries)
        // to bracket the position, then search the bracket.
        let (mut lo, mut hi) = (t.first_live, t.len);
        let mut step = 1;
        while step <= hi - lo {
            let probe = hi - step;
            let below = self
                .queues
                .read(t, probe, 1)?
                .first()
                .is_some_and(|e| e.log_index < index);
            if below {
                lo = probe + 1;
                break;
            }
            hi = probe;
            step *= 2;
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let below = self
                .queues
                .read(t, mid, 1)?
                .first()
                .is_some_and(|e| e.log_index < index);
            if below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// A new, empty topic for `r`'s key, created by the entry at `index`.
    fn create_topic(d: &mut Dispatcher, r: &SubRecord, index: LogIndex) -> Result<Topic> {
        let t = Topic {
            id: d.next_topic,
            db: r.db,
            // A copy: a slice would keep the whole decoded entry alive.
            key: Bytes::copy_from_slice(&r.topic),
            incarnation: index,
            len: 0,
            first_live: 0,
            last_applied: (0, 0),
            slot: d.next_slot,
            migrated: false,
            dropped: false,
            last_id: StreamId::default(),
            removed_below: 0,
            deleted: 0,
            max_deleted_id: StreamId::default(),
            entries_added: 0,
            tail: None,
            nodes: 0,
            head_kept: false,
            head_start: None,
            head_gone: false,
        };
        let exhausted = || StoreError::Config("topic ids or arena slots exhausted".into());
        d.next_topic = d.next_topic.checked_add(1).ok_or_else(exhausted)?;
        d.next_slot = d.next_slot.checked_add(1).ok_or_else(exhausted)?;
        d.topics.create(t.clone());
        d.topic_changed(t.db, &t.key, true);
        Ok(t)
    }

    /// Makes the queue files written so far durable without holding up dispatch, so that the
    /// next `checkpoint` (which still syncs every file written since its last sync, these
    /// included) finds little left to write. Safe while dispatch goes on: it takes no file off
    /// the dirty set. A failed sync fails the store (the data it was to make durable may be
    /// gone from the page cache), as a failed checkpoint does.
    pub fn presync(&self) -> Result<()> {
        match self.queues.presync() {
            Ok(_) => Ok(()),
            Err(e) => Self::note_failure(&mut self.lock(), Err(e)),
        }
    }

    /// Makes the derived state durable up to the dispatch point now.
    pub fn checkpoint(&self) -> Result<()> {
        let pending = self.begin_checkpoint()?;
        self.finish_checkpoint(pending)
    }

    /// The first half of a checkpoint, cheap enough for the dispatch path: under the dispatch
    /// lock, notes the dispatch point, writes the changed topic rows and index slots to the
    /// page cache and takes the files written so far off the dirty sets. Nothing is synced;
    /// `finish_checkpoint` does that, on any thread, while dispatch goes on. One checkpoint
    /// at a time: a second `begin` waits until the first is finished.
    pub fn begin_checkpoint(&self) -> Result<PendingCheckpoint> {
        let turn = CheckpointTurn::wait(&self.checkpoint_gate)?;
        let mut d = self.lock();
        Self::usable(&d)?;
        let result = self.capture(&mut d, turn);
        Self::note_failure(&mut d, result)
    }

    /// The second half: makes what `begin_checkpoint` captured durable, writes the dispatch
    /// file naming it, then removes what that checkpoint no longer needs. Entries dispatched
    /// since are the next checkpoint's (their bytes may be synced now too: harmless, open
    /// re-dispatches past the checkpoint over them).
    pub fn finish_checkpoint(&self, pending: PendingCheckpoint) -> Result<()> {
        if let Err(e) = self.make_durable(&pending, None) {
            return Self::note_failure(&mut self.lock(), Err(e));
        }
        let mut d = self.lock();
        let result = self.complete(&mut d, pending);
        Self::note_failure(&mut d, result)
    }

    /// A whole checkpoint under the dispatch lock (the store's own timer); skipped while one
    /// begun elsewhere is being finished (waiting here could deadlock: it needs this lock).
    fn checkpoint_locked(&self, d: &mut Dispatcher) -> Result<()> {
        let Some(turn) = CheckpointTurn::try_take(&self.checkpoint_gate) else {
            return Ok(());
        };
        let pending = self.capture(d, turn)?;
        self.make_durable(&pending, Some(d))?;
        self.complete(d, pending)
    }

    fn capture(&self, d: &mut Dispatcher, turn: CheckpointTurn) -> Result<PendingCheckpoint> {
        // XDEL flags, index slots and seal headers reach the files in `make_durable` (flags
        // after an intent naming them, slots after the entries they point at): what they are
        // is noted now. Where a flag goes is looked up only when it is written (a migration
        // in between moves the entry to the topic's own file).
        let deletes = self.queues.pending_deletes();
        let mut delete_rows: Vec<Topic> = Vec::new();
        for (id, _) in &deletes {
            if delete_rows.last().is_none_or(|t| t.id != *id) {
                delete_rows.extend(d.topics.get(*id).cloned());
            }
        }
        let index = d.index.capture()?;
        let (table_mark, table) = d.topics.write_rows()?;
        let removals = std::mem::take(&mut d.removals)
            .into_iter()
            .filter_map(|id| d.topics.get(id).map(|t| (id, t.removable_below())))
            .collect();
        let record = DispatchCheckpoint {
            dispatched: d.dispatched,
            table: table_mark,
            next_slot: d.next_slot,
            next_topic: d.next_topic,
            index: d.index.active(),
            layout: Layout::of(&self.config),
        };
        Ok(PendingCheckpoint {
            turn,
            record,
            queues: self.queues.take_unsynced(),
            index,
            table,
            deletes,
            delete_rows,
            removals,
        })
    }

    /// Syncs what `capture` took, then writes the dispatch file. Takes the dispatcher lock
    /// only to write XDEL flags (`locked`: the caller holds it already).
    fn make_durable(&self, p: &PendingCheckpoint, locked: Option<&Dispatcher>) -> Result<()> {
        let dispatched = p.record.dispatched;
        // The checkpoint may only name entries the log has made durable (in `async` mode the
        // dispatch point can run ahead of the last fdatasync).
        if self.log.flushed_index() < dispatched && self.log.sync()? < dispatched {
            return Err(StoreError::Failed(Arc::from(format!(
                "dispatched to {dispatched} but the log holds less"
            ))));
        }
        // XDEL flags reach the files now, under an intent record naming them: if this
        // checkpoint does not complete, open clears them again (the deletions are re-dispatched).
        if !p.deletes.is_empty() {
            let intent = DeleteIntent {
                dispatched,
                deletes: p.deletes.clone(),
            };
            let path = self.root.join(DELETE_INTENT_FILE);
            write_atomic(self.storage.as_ref(), &path, &intent.encode()).at(&path)?;
            // Each flag goes where the topic's entry is now, and also where this checkpoint's
            // table places it if the topic migrated since the capture: open goes by that table
            // and migrates again from the arena slot (never reused), so the flag must be there.
            let write = |d: &Dispatcher| {
                let mut places: Vec<(Topic, u64)> = Vec::new();
                for (id, n) in &p.deletes {
                    let Some(now) = d.topics.get(*id) else {
                        continue;
                    };
                    places.push((now.clone(), *n));
                    let captured = p.delete_rows.iter().find(|t| t.id == *id);
                    if let Some(then) = captured.filter(|t| t.migrated != now.migrated) {
                        places.push((then.clone(), *n));
                    }
                }
                self.queues.write_deleted_flags(&places)
            };
            let written = match locked {
                Some(d) => write(d)?,
                None => write(&self.lock())?,
            };
            for (key, file) in &written {
                file.sync_data().at_with(|| key.path())?;
            }
        }
        let storage = self.storage.as_ref();
        p.queues.sync(storage)?;
        p.index.make_durable(storage)?;
        p.table.sync(storage)?;
        write_atomic(storage, &self.root.join(DISPATCH_FILE), &p.record.encode())
            .at(self.root.join(DISPATCH_FILE))
    }

    /// After the dispatch file is durable: the checkpoint counts, pending deletions it wrote
    /// are forgotten, and files it no longer needs are removed.
    fn complete(&self, d: &mut Dispatcher, mut p: PendingCheckpoint) -> Result<()> {
        p.turn.completed = true;
        d.checkpointed = p.record.dispatched;
        d.last_checkpoint = Instant::now();
        d.index.captured(&p.index);
        self.queues.forget_deletes(&p.deletes);
        d.topics.remove_stale_generation()?;
        self.finish_removals(d, &p.removals)
    }

    /// The ID of `t`'s last live entry (Redis's `streamLastValidID`), if any.
    fn last_live_id(&self, t: &Topic) -> Result<Option<StreamId>> {
        let mut top = t.len;
        while top > t.first_live {
            let from = top.saturating_sub(TRIM_CHUNK).max(t.first_live);
            let chunk = self.queues.read(t, from, top - from)?;
            if let Some(e) = chunk.iter().rev().find(|e| !e.is_deleted()) {
                return Ok(Some(e.id));
            }
            top = from;
        }
        Ok(None)
    }

    /// Where the live part of `t` starts once its oldest `live` live entries are removed, never
    /// past position `end`: just past the last of them (deleted entries before it go too).
    /// Reads only the entries it removes.
    fn position_removing(&self, runs: &mut Runs, t: &Topic, live: u64, end: u64) -> Result<u64> {
        let mut excess = live;
        let mut at = t.first_live;
        if excess == 0 {
            return Ok(at);
        }
        while at < end {
            // Never more than the entries still to remove: the rest stays unread.
            let count = (end - at).min(TRIM_CHUNK).min(excess);
            let chunk = self.read_queue_in(runs, t, at, count)?;
            for e in &chunk {
                at += 1;
                if !e.is_deleted() {
                    excess -= 1;
                    if excess == 0 {
                        return Ok(at);
                    }
                }
            }
            if chunk.is_empty() {
                break;
            }
        }
        Ok(at)
    }

    /// Clears the XDEL flags written by a checkpoint that never completed (its intent names a
    /// dispatch point past the one on disk): those deletions are re-dispatched.
    fn undo_incomplete_deletes(&self, d: &Dispatcher, dispatched: LogIndex) -> Result<()> {
        let path = self.root.join(DELETE_INTENT_FILE);
        if !self.storage.exists(&path) {
            return Ok(());
        }
        let bytes = read_all(self.storage.as_ref(), &path).at(&path)?;
        // A damaged intent can only be one whose write did not complete: no flag was written
        // after it (flags follow the intent's fsync).
        let intent = DeleteIntent::decode(&bytes);
        if intent.is_none() {
            tracing::warn!(file = %path.display(), "ignoring a torn XDEL intent: its flags were never written");
        }
        if let Some(intent) = intent.filter(|i| i.dispatched > dispatched) {
            for (id, n) in &intent.deletes {
                if let Some(t) = d.topics.get(*id).filter(|t| *n < t.len) {
                    self.queues.write_deleted_flag(t, *n, false)?;
                }
            }
            self.queues.sync()?;
        }
        self.storage.remove(&path).at(&path)?;
        self.storage.sync_dir(&self.root).at(&self.root)
    }

    /// Removes the queue files of trims and drops that a durable checkpoint records — each
    /// topic's files below the point it recorded (`(topic, below)`), never a trim made since —
    /// and notes how far that went in the topic rows (persisted by the next checkpoint).
    fn finish_removals(&self, d: &mut Dispatcher, removals: &[(TopicId, u64)]) -> Result<()> {
        for (id, below) in removals {
            let Some(t) = d.topics.get(*id).cloned() else {
                continue;
            };
            if t.removed_below >= *below {
                continue;
            }
            self.queues
                .remove_files(self.storage.as_ref(), &t, *below)?;
            d.topics.update(*id, |t| t.removed_below = *below);
        }
        Ok(())
    }

    /// The live topic `(db, key)`.
    pub fn topic(&self, db: u8, key: &[u8]) -> Option<Topic> {
        self.lock().topics.find(db, key).cloned()
    }

    /// A topic by id (dropped ones included, until a restart after the compaction that
    /// drops their rows).
    pub fn topic_by_id(&self, id: TopicId) -> Option<Topic> {
        self.lock().topics.get(id).cloned()
    }

    /// A digest of the stream state derived so far: every live topic's row fields and queue
    /// entries, in key order. Two replicas that applied the same log have the same digest;
    /// replaying a log from scratch must reproduce it.
    pub fn state_digest(&self) -> Result<u32> {
        let mut topics = self.topics();
        topics.sort_by(|a, b| (a.db, &a.key).cmp(&(b.db, &b.key)));
        let mut crc = 0u32;
        let mut feed = |bytes: &[u8]| crc = crc32c::crc32c_append(crc, bytes);
        for t in &topics {
            feed(&[t.db]);
            feed(&(t.key.len() as u64).to_le_bytes());
            feed(&t.key);
            for v in [
                t.incarnation,
                t.len,
                t.first_live,
                t.deleted,
                t.last_id.ms,
                t.last_id.seq,
            ] {
                feed(&v.to_le_bytes());
            }
            feed(&t.max_deleted_id.ms.to_le_bytes());
            feed(&t.max_deleted_id.seq.to_le_bytes());
            feed(&t.entries_added.to_le_bytes());
            // The Redis nodes: where the next message goes and what XINFO counts.
            feed(&t.nodes.to_le_bytes());
            feed(&[u8::from(t.head_kept)]);
            feed(&t.head_start.unwrap_or(u64::MAX).to_le_bytes());
            feed(&[u8::from(t.head_gone)]);
            if let Some(tail) = &t.tail {
                for v in [
                    tail.start,
                    u64::from(tail.entries),
                    u64::from(tail.live),
                    tail.bytes,
                    tail.master.ms,
                    tail.master.seq,
                    tail.fields,
                    u64::from(tail.skip),
                ] {
                    feed(&v.to_le_bytes());
                }
            }
            let mut at = t.first_live;
            while at < t.len {
                let chunk = self.queues.read(t, at, (t.len - at).min(TRIM_CHUNK))?;
                for e in &chunk {
                    feed(&e.log_index.to_le_bytes());
                    feed(&e.sub.to_le_bytes());
                    feed(&e.id.ms.to_le_bytes());
                    feed(&e.id.seq.to_le_bytes());
                    feed(&[e.flags, e.skip]);
                }
                at += chunk.len().max(1) as u64;
            }
        }
        Ok(crc)
    }

    /// Number of live topics.
    pub fn topic_count(&self) -> usize {
        self.lock().topics.live_count()
    }

    /// Changes whenever a topic is created or dropped (since open): a cache of the topic set
    /// is current while this stays the same.
    pub fn topic_version(&self) -> u64 {
        self.lock().topic_changes
    }

    /// The topics created (`true`) or dropped since `version`, with the version they bring a
    /// cache to; `None` when those changes are no longer all remembered (rebuild instead).
    #[allow(clippy::type_complexity)]
    pub fn topic_changes_since(&self, version: u64) -> Option<(u64, Vec<(u8, Bytes, bool)>)> {
        let d = self.lock();
        if version == d.topic_changes {
            return Some((version, Vec::new()));
        }
        if version > d.topic_changes {
            return None;
        }
        // The newest are at the back: walk back to the first one after `version`.
        let after = d
            .recent_topic_changes
            .iter()
            .rev()
            .take_while(|(v, ..)| *v > version)
            .count();
        let changes: Vec<(u8, Bytes, bool)> = d
            .recent_topic_changes
            .iter()
            .skip(d.recent_topic_changes.len() - after)
            .map(|(_, db, key, created)| (*db, key.clone(), *created))
            .collect();
        (changes.len() as u64 == d.topic_changes - version).then_some((d.topic_changes, changes))
    }

    /// Live topics, for listing (`KEYS`, `SCAN`, MQTT wildcard matching).
    pub fn topics(&self) -> Vec<Topic> {
        self.lock().topics.live().cloned().collect()
    }

    /// Queue entries `[from, from + count)` of `topic` that are neither trimmed nor deleted.
    pub fn read_queue(&self, topic: &Topic, from: u64, count: u64) -> Result<Vec<(u64, CqEntry)>> {
        let from = from.max(topic.first_live);
        let entries = self.queues.read(topic, from, count)?;
        Ok((from..)
            .zip(entries)
            .filter(|(_, e)| !e.is_deleted())
            .collect())
    }

    /// All queue entries of `[from, from + count)`, trimmed and deleted ones included.
    pub fn read_queue_raw(&self, topic: &Topic, from: u64, count: u64) -> Result<Vec<CqEntry>> {
        self.queues.read(topic, from, count)
    }

    /// Queue offset of the first entry at or above `first_live` with a stream ID `>= id`
    /// (it may be a deleted one; readers skip those).
    pub fn seek(&self, topic: &Topic, id: StreamId) -> Result<u64> {
        self.queues.seek(topic, id)
    }

    /// The message a queue entry of `topic` points to, read from the CommitLog.
    pub fn message(&self, topic: &Topic, entry: &CqEntry) -> Result<StoredMessage> {
        if let Some(e) = self.recent.get(entry.log_index) {
            return Self::stored(topic, entry, &e, &self.root);
        }
        let e = self.log.entry(entry.log_index)?;
        Self::stored(topic, entry, &e, &self.root)
    }

    /// Keeps applied entries in memory for readers at the head (see `recent.rs`), each with
    /// which of its sub-records were added as messages.
    pub fn keep_recent(&self, entries: &[Arc<LogEntry>], added: Vec<super::recent::Added>) {
        self.recent.push(entries, added);
    }

    /// A kept recent entry and which of its sub-records were added, if it is still kept.
    pub fn recent_entry(&self, index: LogIndex) -> Option<(Arc<LogEntry>, super::recent::Added)> {
        self.recent.get_added(index)
    }

    /// The messages queue entries of `topic` point to, in the order given, read from the
    /// CommitLog in runs: entries whose log indexes follow each other (the common case for a
    /// stream written on its own) come in one read per run instead of one each.
    pub fn messages(&self, topic: &Topic, entries: &[CqEntry]) -> Result<Vec<StoredMessage>> {
        let mut out = Vec::with_capacity(entries.len());
        let mut i = 0;
        while i < entries.len() {
            if let Some(e) = self.recent.get(entries[i].log_index) {
                out.push(Self::stored(topic, &entries[i], &e, &self.root)?);
                i += 1;
                continue;
            }
            let from = entries[i].log_index;
            let mut j = i + 1;
            while j < entries.len() {
                let (prev, next) = (entries[j - 1].log_index, entries[j].log_index);
                if next != prev && next != prev + 1 {
                    break;
                }
                j += 1;
            }
            let to = entries[j - 1].log_index;
            let logged = if from == to {
                vec![self.log.entry(from)?]
            } else {
                self.log.entries(from, to)?
            };
            for e in &entries[i..j] {
                let le = logged.get((e.log_index - from) as usize).ok_or(
                    StoreError::IndexOutOfRange {
                        index: e.log_index,
                        first: from,
                        last: to,
                    },
                )?;
                out.push(Self::stored(topic, e, le, &self.root)?);
            }
            i = j;
        }
        Ok(out)
    }

    /// The message of `entry` in the log entry `e`, checked: queue entries carry no checksum.
    fn stored(topic: &Topic, entry: &CqEntry, e: &LogEntry, root: &Path) -> Result<StoredMessage> {
        let record = e
            .records
            .get(entry.sub as usize)
            .filter(|r| {
                r.op == RecordOp::Message
                    && r.id == entry.id
                    && r.db == topic.db
                    && r.topic == topic.key
            })
            .cloned()
            .ok_or_else(|| StoreError::Corruption {
                file: root.join("consumequeue"),
                offset: entry.log_index,
                reason: format!(
                    "queue entry for {} points at sub-record {} of entry {}, which is not it",
                    entry.id, entry.sub, entry.log_index
                ),
            })?;
        Ok(StoredMessage {
            entry: *entry,
            timestamp_ms: e.timestamp_ms,
            record,
        })
    }

    /// Messages of topic `(db, topic)` with message key `key` and a store timestamp in
    /// `[from_ms, to_ms]`, newest first, at most `max`. Hash collisions are filtered out.
    pub fn find_by_key(
        &self,
        db: u8,
        topic: &[u8],
        key: &[u8],
        from_ms: u64,
        to_ms: u64,
        max: usize,
    ) -> Result<Vec<IndexHit>> {
        let hash = key_hash(db, topic, key);
        let candidates =
            self.lock()
                .index
                .query(hash, from_ms, to_ms, max.saturating_mul(2).max(max))?;
        let first = self.log.first_index();
        let mut out = Vec::new();
        for hit in candidates {
            if out.len() >= max {
                break;
            }
            if hit.log_index < first {
                continue;
            }
            let e = self.log.entry(hit.log_index)?;
            let matches = e.records.get(hit.sub as usize).is_some_and(|r| {
                r.db == db && r.topic == topic && r.message_key == key && r.op == RecordOp::Message
            });
            if matches {
                out.push(hit);
            }
        }
        Ok(out)
    }

    /// Truncates the log after `index`; refused below the dispatch point (dispatched entries
    /// are committed and never truncated).
    pub fn truncate_after(&self, index: LogIndex) -> Result<()> {
        let d = self.lock();
        if index < d.dispatched {
            return Err(StoreError::IndexOutOfRange {
                index,
                first: d.dispatched,
                last: self.log.last_index(),
            });
        }
        self.log.truncate_after(index)
    }

    /// Deletes old segments below `index` (called by the engine's retention), never past the
    /// last dispatch checkpoint (recovery re-dispatches from there). Returns the new first index.
    pub fn delete_before(&self, index: LogIndex) -> Result<LogIndex> {
        let mut d = self.lock();
        let first = self.log.delete_before(index.min(d.checkpointed + 1))?;
        d.index.remove_before(first)?;
        Ok(first)
    }

    /// Open handles of queue files (bounded by `max_open_files` plus unsynced ones).
    pub fn open_queue_handles(&self) -> usize {
        self.queues.open_handles()
    }

    /// Checkpoints derived state and closes the log cleanly.
    pub fn close(&self) -> Result<()> {
        self.checkpoint()?;
        self.log.close()
    }
}
