//! The engine: the API every front end uses. A single node runs the Raft-shaped pipeline a
//! replicated group will: hard state on disk, a new term and a no-op entry at every start, then
//! **propose → append → commit → apply**, with every reply made from apply.
//!
//! - The **proposer** (one lock) validates a command against the *leader view* (applied state
//!   plus the effects of entries appended but not yet applied), answers producer repeats,
//!   resolves stream IDs, stamps the leader timestamp (`max(previous, wall clock)`, under the
//!   durable clock bound in `async` mode), and appends.
//! - The **applier** (one thread) takes entries in log order once durable (committed: a group of
//!   one commits what it has made durable), dispatches them into the store in lockstep, in
//!   batches that stop after any entry that reads the streams (group commands, retention), so
//!   each sees the store exactly as of itself; applies them to the engine state with the
//!   dispatch outcomes, answers each proposer, wakes the waiters of the topics touched, and
//!   drives checkpoints (`checkpointer.rs`): a snapshot written off the applier (`snapshot.rs`,
//!   `journal.rs`), then the store's dispatch checkpoint, captured on the applier and made
//!   durable off it.
//! - The **timer thread** (the leader's) proposes a command when a deadline in the state passes
//!   (`timers.rs`).
//!
//! Stream state (IDs, lengths, deletions, trims) lives in the store's derived state; the rest
//! (retained messages, producer dedupe, consumer groups, filter groups, MQTT sessions) in
//! `state::EngineState`, saved in snapshots. Front ends reach it through a per-principal
//! `Client` (`client.rs`). The engine never reads a clock or randomness while applying; only
//! the proposer and the timer thread do.

pub mod access;
mod batch;
mod checkpointer;
mod client;
mod clock_bound;
pub mod cluster;
mod codec;
mod error;
mod filter_group_api;
pub mod filter_groups;
mod filter_read;
mod forward;
pub mod forward_codec;
pub mod glob;
mod group_api;
pub mod group_command;
pub mod groups;
mod ids;
mod image;
pub mod image_transfer;
pub mod journal;
pub mod replica;
mod reply_relay;
mod session_api;
pub mod session_command;
pub mod sessions;
mod snapshot;
mod state;
mod timers;
pub mod topic_filter;
mod topic_index;
mod transaction;
mod waiters;

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::oneshot;

pub use crate::raft::HardState;
pub use access::{AccessConfig, Acl, DEFAULT_PRINCIPAL, Principal, PrincipalConfig};
pub use client::Client;
pub use clock_bound::CLOCK_BOUND_FILE;
pub use error::{EngineError, Result};
pub use filter_group_api::FilterDelivery;
pub use filter_read::TopicMessage;
pub use group_api::{AutoClaimed, GroupEntry, PendingQuery};
pub use group_command::{Claim, ClaimTime, GroupCommand, GroupOp, GroupStart, ReadFrom};
pub use groups::{
    Claimed, ConsumerInfo, EntryRef, GroupError, GroupInfo, GroupLimits, GroupOutcome,
    MAX_AUTOCLAIM_COUNT, PendingEntry, PendingSummary, StreamFacts, Streams,
};
pub use ids::{IdSpec, resolve};
pub use image::EngineImage;
pub use session_api::{
    Opened, PUBLISHER_PROPERTY, SessionEvent, SessionMessage, SessionRead, SessionRef,
    SessionSummary, SessionsSummary,
};
pub use session_command::{InFlightNew, Owner, SharedRef, SubscribeOptions, Will, mqtt_producer};
pub use sessions::{Session, SessionError};
pub use snapshot::SNAPSHOT_DIR;
pub use state::{Deduped, EngineState, MAX_PRODUCERS, PRODUCER_WINDOW, RetainEffect, Retained};
use state::{EntryCommand, Limits};
use timers::TimerCommand;
pub use transaction::{Exec, GroupTx, Resume, Step, TxAnswer, TxOp, Watch};
pub use waiters::{TopicKey, Turn};

use crate::store::{
    AppendTicket, EntryKind, FlushMode, LogEntry, LogIndex, MessageStore, NewEntry, Outcome,
    RecordOp, StoreConfig, StoreError, StreamId, SubRecord, Term, Topic,
};
use waiters::Waiters;

/// Entries the applier dispatches together at most.
const APPLY_BATCH: usize = 1024;
/// How long a single node's open waits to lead its group of one (an election and the no-op's
/// fdatasync: milliseconds, unless the disk stalls).
const SINGLE_NODE_LEAD_WAIT: Duration = Duration::from_secs(10);
/// Command bytes: format version, then what the entry does (the sub-records carry the data).
const COMMAND_VERSION: u8 = 1;

/// What an entry's command is, recorded in the log next to its sub-records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum CommandTag {
    Append = 1,
    Delete = 2,
    Drop = 3,
    Trim = 4,
    /// An append whose message becomes its topic's retained message.
    AppendRetain = 5,
    /// An append whose message clears its topic's retained message.
    AppendClearRetain = 6,
    /// Consumer-group commands (`group_command`), applied against the streams as of the entry.
    Group = 7,
    /// A timer's command (`timers`), proposed by the leader when a deadline passes.
    Timer = 8,
    /// An MQTT session command (`session_command`).
    Session = 9,
    /// A filter-group command (`filter_groups`).
    FilterGroup = 10,
    /// XSETID (a `SetId` sub-record).
    SetId = 11,
    /// A transaction (MULTI/EXEC): parts, each an operation's command and sub-records
    /// (`batch.rs`).
    Batch = 12,
}

/// What an entry's command does to retained messages.
fn retain_effect(entry: &LogEntry) -> RetainEffect {
    match entry.command.as_ref() {
        [COMMAND_VERSION, t, ..] if *t == CommandTag::AppendRetain as u8 => RetainEffect::Set,
        [COMMAND_VERSION, t, ..] if *t == CommandTag::AppendClearRetain as u8 => {
            RetainEffect::Clear
        }
        _ => RetainEffect::None,
    }
}

/// The producer sequence an append's command carries after its tag: `id_len` u32, id, `seq`
/// u64. Anything else (no trailer, or one that does not fit exactly): none.
fn command_producer(command: &Bytes) -> Option<(Bytes, u64)> {
    let c = command.as_ref();
    let appends = [
        CommandTag::Append as u8,
        CommandTag::AppendRetain as u8,
        CommandTag::AppendClearRetain as u8,
    ];
    let rest = match c {
        [COMMAND_VERSION, t, rest @ ..] if rest.len() >= 12 && appends.contains(t) => rest,
        _ => return None,
    };
    let (len, rest) = rest.split_at(4);
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    if rest.len() != len.checked_add(8)? {
        return None;
    }
    let seq = u64::from_le_bytes(rest[len..].try_into().ok()?);
    Some((command.slice(6..6 + len), seq))
}

/// The group commands an entry's command carries (none when it is not a group command, or
/// does not decode: then it does nothing, on every node alike).
fn group_commands(entry: &LogEntry) -> Vec<GroupCommand> {
    match entry.command.as_ref() {
        [COMMAND_VERSION, t, rest @ ..] if *t == CommandTag::Group as u8 => {
            group_command::decode(rest).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// A timer's command an entry carries.
fn timer_command(entry: &LogEntry) -> Option<TimerCommand> {
    match entry.command.as_ref() {
        [COMMAND_VERSION, t, rest @ ..] if *t == CommandTag::Timer as u8 => {
            TimerCommand::decode(rest)
        }
        _ => None,
    }
}

/// A session command an entry carries.
fn session_command(entry: &LogEntry) -> Option<session_command::SessionCommand> {
    match entry.command.as_ref() {
        [COMMAND_VERSION, t, rest @ ..] if *t == CommandTag::Session as u8 => {
            session_command::decode(rest)
        }
        _ => None,
    }
}

/// A filter-group command an entry carries.
fn filter_group_command(entry: &LogEntry) -> Option<filter_groups::FilterGroupCommand> {
    match entry.command.as_ref() {
        [COMMAND_VERSION, t, rest @ ..] if *t == CommandTag::FilterGroup as u8 => {
            filter_groups::decode_command(rest)
        }
        _ => None,
    }
}

/// Everything an entry's command asks of the engine state.
fn entry_command(entry: &LogEntry) -> EntryCommand {
    EntryCommand {
        retain: retain_effect(entry),
        producer: command_producer(&entry.command),
        groups: group_commands(entry),
        timer: timer_command(entry),
        session: session_command(entry),
        filter_group: filter_group_command(entry),
    }
}

/// What applying one entry produced: the store's outcome per sub-record and what each group
/// command did.
#[derive(Debug, Clone, Default)]
struct Applied {
    outcomes: Vec<Outcome>,
    groups: Vec<GroupOutcome>,
    session: Option<sessions::SessionOutcome>,
    filter_group: Option<filter_groups::FilterGroupOutcome>,
    /// A batch: what each part did (`outcomes` holds all of them in order).
    parts: Vec<Applied>,
}

impl Applied {
    /// An entry's (or a part's) store outcomes and what the state made of it.
    fn new(outcomes: Vec<Outcome>, reply: state::StateReply) -> Applied {
        Applied {
            outcomes,
            groups: reply.groups,
            session: reply.session,
            filter_group: reply.filter_group,
            parts: Vec::new(),
        }
    }
}

/// Notes what applying the entry at `index` read, when a journal is being kept.
fn journal_entry(
    journal: &mut Option<&mut Vec<journal::JournalEntry>>,
    index: LogIndex,
    outcomes: &[Outcome],
    recorder: &journal::Recorder<'_>,
) {
    if let Some(j) = journal.as_deref_mut() {
        j.push(journal::JournalEntry {
            index,
            outcomes: outcomes.to_vec(),
            reads: recorder.take(),
        });
    }
}

/// Applies committed entries: dispatches them into the store and applies them to the engine
/// state. An entry with group commands reads the streams, so it must see the store exactly as
/// of itself: dispatch stops after it, the state catches up, and the rest follows. The result
/// is the same however entries are batched (the applier's batches, the replay at open).
/// The state is locked only while it is changed, not while the store dispatches.
///
/// With `journal`, what each entry read from the store is recorded there (a snapshot is being
/// written: see `journal.rs`).
fn apply_entries<E: std::borrow::Borrow<LogEntry>>(
    store: &MessageStore,
    state: &Mutex<EngineState>,
    entries: &[E],
    limits: Limits,
    mut journal: Option<&mut Vec<journal::JournalEntry>>,
    pauses: &[Option<transaction::Pauses>],
) -> Result<Vec<Applied>> {
    let mut out = Vec::with_capacity(entries.len());
    let mut start = 0;
    for (k, e) in entries.iter().enumerate() {
        // Group commands, retention and transactions read the streams.
        let tag = e.borrow().command.get(1).copied();
        let reads_streams = tag == Some(CommandTag::Group as u8)
            || tag == Some(CommandTag::Timer as u8)
            || tag == Some(CommandTag::Batch as u8);
        if !reads_streams && k + 1 < entries.len() {
            continue;
        }
        // A transaction is applied on its own, part by part, after the entries before it.
        let batch = batch::parts(e.borrow());
        let run = match batch {
            Some(_) => &entries[start..k],
            None => &entries[start..=k],
        };
        let outcomes = store.dispatch_batch(run)?;
        let mut locked = None;
        for (entry, outcomes) in run.iter().zip(outcomes) {
            let entry = entry.borrow();
            // A plain XADD leaves the engine state as it is (its dispatch is all it does):
            // no command to decode, no state lock; the journal still notes its outcomes.
            if journal.is_none() && batch::is_plain_append(&entry.command) {
                out.push(Applied::new(outcomes, state::StateReply::default()));
                continue;
            }
            let locked =
                locked.get_or_insert_with(|| state.lock().unwrap_or_else(|p| p.into_inner()));
            let streams = StoreStreams(store);
            let recorder = journal::Recorder::new(&streams);
            let reply = locked.apply(entry, &entry_command(entry), &outcomes, &recorder, limits)?;
            journal_entry(&mut journal, entry.index, &outcomes, &recorder);
            out.push(Applied::new(outcomes, reply));
        }
        drop(locked);
        if let Some(parts) = batch {
            let entry = e.borrow();
            let streams = StoreStreams(store);
            let recorder = journal::Recorder::new(&streams);
            let pause = pauses.get(k).and_then(Option::as_ref);
            let stops = pause.map_or(&[][..], |p| &p.before[..]);
            let (outcomes, applied) = batch::apply(
                entry,
                &parts,
                stops,
                &mut |range, last| store.dispatch_part(entry, range, last),
                &mut |sub, command, outcomes| {
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    state.apply(sub, command, outcomes, &recorder, limits)
                },
                &mut |part| {
                    if let Some(p) = pause {
                        p.at(part);
                    }
                },
            )?;
            journal_entry(&mut journal, entry.index, &outcomes, &recorder);
            out.push(Applied {
                outcomes,
                parts: applied,
                ..Applied::default()
            });
        }
        start = k + 1;
    }
    Ok(out)
}

/// The streams whose group an entry destroyed (their blocked group readers wake).
fn destroyed_groups(entry: &LogEntry, applied: &Applied) -> Vec<(u8, Bytes)> {
    if applied.groups.is_empty() && applied.parts.is_empty() {
        // No group command ran (nearly every entry): nothing to decode.
        return Vec::new();
    }
    let destroyed = |commands: Vec<GroupCommand>, outcomes: &[GroupOutcome]| {
        commands
            .into_iter()
            .zip(outcomes)
            .filter(|(c, o)| matches!(c.op, GroupOp::Destroy) && **o == GroupOutcome::Bool(true))
            .map(|(c, _)| (c.db, c.key))
            .collect::<Vec<_>>()
    };
    match batch::parts(entry) {
        None => destroyed(group_commands(entry), &applied.groups),
        Some(parts) => parts
            .iter()
            .zip(&applied.parts)
            .flat_map(|(part, applied)| {
                let commands = match part.command.as_ref() {
                    [COMMAND_VERSION, t, rest @ ..] if *t == CommandTag::Group as u8 => {
                        group_command::decode(rest).unwrap_or_default()
                    }
                    _ => Vec::new(),
                };
                destroyed(commands, &applied.groups)
            })
            .collect(),
    }
}

/// The store as group commands read it.
struct StoreStreams<'a>(&'a MessageStore);

impl StoreStreams<'_> {
    /// Live entries of `t` from queue position `from`, at most `count` (0: all).
    fn live_from(&self, t: &Topic, from: u64, count: u64) -> Result<Vec<EntryRef>, StoreError> {
        const CHUNK: u64 = 1024;
        let want = if count == 0 { u64::MAX } else { count };
        let mut out = Vec::new();
        let mut at = from.max(t.first_live);
        while at < t.len && (out.len() as u64) < want {
            let n = (t.len - at).min(CHUNK);
            for (_, e) in self.0.read_queue(t, at, n)? {
                if out.len() as u64 == want {
                    break;
                }
                out.push(EntryRef {
                    id: e.id,
                    log_index: e.log_index,
                    sub: e.sub,
                });
            }
            at += n;
        }
        Ok(out)
    }
}

impl Streams for StoreStreams<'_> {
    fn facts(&self, db: u8, key: &[u8]) -> Result<Option<StreamFacts>, StoreError> {
        let Some(t) = self.0.topic(db, key) else {
            return Ok(None);
        };
        let first_id = self
            .live_from(&t, t.first_live, 1)?
            .first()
            .map_or(StreamId::default(), |e| e.id);
        Ok(Some(StreamFacts {
            length: t.live_len(),
            last_id: t.last_id,
            first_id,
            max_deleted_id: t.max_deleted_id,
            entries_added: t.entries_added,
        }))
    }

    fn after(
        &self,
        db: u8,
        key: &[u8],
        after: StreamId,
        count: u64,
    ) -> Result<Vec<EntryRef>, StoreError> {
        let Some(t) = self.0.topic(db, key) else {
            return Ok(Vec::new());
        };
        let Some(next) = next_id(after) else {
            return Ok(Vec::new());
        };
        let from = self.0.seek(&t, next)?;
        self.live_from(&t, from, count)
    }

    fn live(&self, db: u8, key: &[u8], id: StreamId) -> Result<Option<EntryRef>, StoreError> {
        let Some(t) = self.0.topic(db, key) else {
            return Ok(None);
        };
        let at = self.0.seek(&t, id)?;
        Ok(self
            .0
            .read_queue(&t, at, 1)?
            .into_iter()
            .map(|(_, e)| EntryRef {
                id: e.id,
                log_index: e.log_index,
                sub: e.sub,
            })
            .find(|e| e.id == id))
    }
}

/// An XSETID's sub-record: ENTRIESADDED and MAXDELETEDID ride as properties.
fn set_id_record(
    db: u8,
    key: Bytes,
    id: StreamId,
    entries_added: Option<u64>,
    max_deleted: Option<StreamId>,
) -> SubRecord {
    let mut properties = Vec::new();
    if let Some(n) = entries_added {
        properties.push((
            Bytes::from_static(crate::store::SETID_ADDED_PROPERTY),
            Bytes::copy_from_slice(&n.to_le_bytes()),
        ));
    }
    if let Some(m) = max_deleted {
        let mut v = m.ms.to_le_bytes().to_vec();
        v.extend_from_slice(&m.seq.to_le_bytes());
        properties.push((
            Bytes::from_static(crate::store::SETID_MAXDEL_PROPERTY),
            Bytes::from(v),
        ));
    }
    SubRecord {
        op: RecordOp::SetId,
        db,
        topic: key,
        id,
        properties,
        ..SubRecord::default()
    }
}

/// The command and sub-records of a timer's entry (a Will's, which carries the message, is
/// `propose_will`'s).
fn timer_entry(due: &TimerCommand) -> (Bytes, Vec<SubRecord>) {
    let mut bytes = vec![COMMAND_VERSION, CommandTag::Timer as u8];
    due.encode(&mut bytes);
    let records = match due {
        // The store's half: every topic cut below the index.
        TimerCommand::RetainFrom { index } => vec![SubRecord {
            op: RecordOp::RetainFrom,
            id: StreamId::new(*index, 0),
            ..SubRecord::default()
        }],
        TimerCommand::ExpireProducers { .. }
        | TimerCommand::ExpireSessions { .. }
        | TimerCommand::PublishWill { .. } => Vec::new(),
    };
    (Bytes::from(bytes), records)
}

/// A count answer (XDEL, XTRIM, DEL).
fn count_of(answer: TxAnswer) -> Result<u64> {
    match answer {
        TxAnswer::Count(n) => Ok(n),
        other => Err(EngineError::Store(StoreError::Failed(Arc::from(format!(
            "a count answered {other:?}"
        ))))),
    }
}

fn command_with_producer(tag: CommandTag, producer: Option<&(Bytes, u64)>) -> Bytes {
    if producer.is_none() {
        // The common case allocates nothing.
        return match tag {
            CommandTag::Append => Bytes::from_static(&[COMMAND_VERSION, CommandTag::Append as u8]),
            _ => Bytes::from(vec![COMMAND_VERSION, tag as u8]),
        };
    }
    let mut c = vec![COMMAND_VERSION, tag as u8];
    if let Some((id, seq)) = producer {
        c.extend_from_slice(&(id.len() as u32).to_le_bytes());
        c.extend_from_slice(id);
        c.extend_from_slice(&seq.to_le_bytes());
    }
    Bytes::from(c)
}

/// Engine settings; every limit has a default.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The store.
    pub store: StoreConfig,
    /// Largest message (encoded sub-record) accepted (default 16 MiB).
    pub max_message_bytes: usize,
    /// This node's id (default 1); it votes for itself at every start.
    pub node_id: u64,
    /// The wall clock, in milliseconds since the Unix epoch (tests replace it).
    pub clock: fn() -> u64,
    /// How far ahead of the proposer's clock the durable clock bound is set in `async` mode
    /// (default 2000 ms): one small atomic file write per this much time under load, and how
    /// far auto IDs jump ahead after an unclean restart.
    pub clock_lease_ms: u64,
    /// Bytes of retained messages (topic keys, properties, fields) kept at most (default
    /// 256 MiB); a retained publish that would pass it is refused (`RetainedLimit`).
    pub max_retained_bytes: u64,
    /// Pending entries per consumer group at most (default 1,000,000): a group read delivers
    /// no more new entries than fit, and fails (`PendingLimit`) when none fits.
    pub max_pending_per_group: u64,
    /// A producer whose newest append is older than this (ms, default 24 h) is forgotten by
    /// the expiry timer: a repeat after that appends again.
    pub producer_ttl_ms: u64,
    /// How often the leader's timer thread looks for due deadlines (ms, default 1000).
    pub timer_tick_ms: u64,
    /// Log entries older than this (ms, default 72 h) are removed by retention: from every
    /// topic, then, once a snapshot covers it, their segments from disk.
    pub retention_ms: u64,
    /// How often the leader checks for entries past `retention_ms` (ms, default 60 s).
    pub retention_check_ms: u64,
    /// MQTT persistent sessions at most (default 100,000): opening one more is refused
    /// (`TooManySessions`; MQTT CONNACK "quota exceeded").
    pub max_sessions: usize,
    /// In a group: the leader declares a node's MQTT connections lost (their sessions close
    /// and their Wills go out) once it has not heard from that node for this long, or the
    /// node left the group (ms, default 3000).
    pub session_node_lost_ms: u64,
    /// Principals and what they may publish and subscribe to (default: `default`, without a
    /// secret, allowed everything).
    pub access: AccessConfig,
    /// The Raft group this node belongs to and its Raft listener (default `None`: a single
    /// node, a group of one that listens to nobody).
    pub cluster: Option<cluster::ClusterConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            store: StoreConfig::default(),
            max_message_bytes: 16 << 20,
            node_id: 1,
            clock: wall_clock_ms,
            clock_lease_ms: 2000,
            max_retained_bytes: 256 << 20,
            max_pending_per_group: 1_000_000,
            producer_ttl_ms: 24 * 3600 * 1000,
            timer_tick_ms: 1000,
            retention_ms: 72 * 3600 * 1000,
            retention_check_ms: 60_000,
            max_sessions: 100_000,
            session_node_lost_ms: 3000,
            access: AccessConfig::default(),
            cluster: None,
        }
    }
}

impl EngineConfig {
    fn limits(&self) -> Limits {
        Limits {
            groups: GroupLimits {
                max_pending: self.max_pending_per_group,
            },
            max_sessions: self.max_sessions,
        }
    }
}

/// An append (XADD, an MQTT PUBLISH, an HTTP POST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    /// Database 0..=15.
    pub db: u8,
    /// Topic key.
    pub key: Bytes,
    /// How the ID is chosen.
    pub id: IdSpec,
    /// Field/value pairs, in order (at least one).
    pub fields: Vec<(Bytes, Bytes)>,
    /// Properties (content type, MQTT v5 user properties, ...).
    pub properties: Vec<(Bytes, Bytes)>,
    /// Message key for lookups by key; empty = none.
    pub message_key: Bytes,
    /// NOMKSTREAM: do not create the stream; the reply is `None` when it does not exist.
    pub nomkstream: bool,
    /// Trim applied after the append (XADD MAXLEN / MINID).
    pub trim: Option<Trim>,
    /// MQTT retain: the message also sets (`Set`) or clears (`Clear`) the topic's retained
    /// message, if it is added.
    pub retain: RetainEffect,
    /// Producer dedupe `(producer id, sequence)`: a repeat of a remembered pair is not appended
    /// again and gets the original answer (the ID, or the ID error). Forwarding, MQTT QoS 2
    /// and HTTP idempotency keys all use this.
    pub producer: Option<(Bytes, u64)>,
}

impl AppendRequest {
    /// An append of `fields` to `(db, key)` with an auto ID (`*`) and nothing else: no
    /// properties, message key, NOMKSTREAM, trim, retain or producer. Set the fields for more.
    pub fn new(db: u8, key: Bytes, fields: Vec<(Bytes, Bytes)>) -> Self {
        AppendRequest {
            db,
            key,
            id: IdSpec::Auto,
            fields,
            properties: Vec::new(),
            message_key: Bytes::new(),
            nomkstream: false,
            trim: None,
            retain: RetainEffect::None,
            producer: None,
        }
    }
}

/// A trim (XTRIM, XADD MAXLEN/MINID): what to cut, at most how many live entries, and whether
/// it may cut only whole nodes.
///
/// Exact (`=`): the cut is exact up to the limit. Approximate (`~`, `approx`): as Redis, only
/// whole stream nodes go, the nodes Redis would have packed the stream into
/// (`StoreConfig::stream_nodes`: 100 entries or 4 KiB of listpack; `crate::store::stream_node`),
/// so a `~` trim keeps what Redis keeps. The RESP front end maps `=` to `limit: 0` (Redis
/// refuses LIMIT without `~`) and `~ [LIMIT n]` to `n` (default
/// [`Engine::approx_trim_limit`]; `LIMIT 0`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    /// What to cut.
    pub to: TrimTo,
    /// At most this many live entries removed; 0 = no limit (Redis's `LIMIT 0`).
    pub limit: u64,
    /// `~`: whole nodes only.
    pub approx: bool,
}

/// What a trim cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrimTo {
    /// Keep the newest `n` live entries.
    MaxLen(u64),
    /// Remove entries with an ID below this one.
    MinId(StreamId),
}

/// What Redis's `~` removes at most per call without LIMIT with the default nodes: 100 ×
/// `stream-node-max-entries` ([`Engine::approx_trim_limit`] for the engine's own).
pub const APPROX_TRIM_LIMIT: u64 = 10_000;

impl Trim {
    /// Exact MAXLEN: keep the newest `n` live entries.
    pub fn max_len(n: u64) -> Trim {
        Trim {
            to: TrimTo::MaxLen(n),
            limit: 0,
            approx: false,
        }
    }

    /// Exact MINID: remove entries below `id`.
    pub fn min_id(id: StreamId) -> Trim {
        Trim {
            to: TrimTo::MinId(id),
            limit: 0,
            approx: false,
        }
    }

    /// The same cut, removing at most `limit` live entries (0: no limit).
    pub fn with_limit(self, limit: u64) -> Trim {
        Trim { limit, ..self }
    }

    /// The same cut by whole nodes only (Redis's `~`).
    pub fn approximate(self) -> Trim {
        Trim {
            approx: true,
            ..self
        }
    }

    /// The trim as a sub-record.
    fn record(self, db: u8, key: &Bytes) -> SubRecord {
        let (op, id) = match self.to {
            TrimTo::MaxLen(n) => (RecordOp::TrimToLen, StreamId::new(n, 0)),
            TrimTo::MinId(id) => (RecordOp::Trim, id),
        };
        let mut properties = Vec::new();
        if self.limit != 0 {
            properties.push((
                Bytes::from_static(crate::store::TRIM_LIMIT_PROPERTY),
                Bytes::copy_from_slice(&self.limit.to_le_bytes()),
            ));
        }
        if self.approx {
            properties.push((
                Bytes::from_static(crate::store::TRIM_NODE_PROPERTY),
                Bytes::copy_from_slice(&1u64.to_le_bytes()),
            ));
        }
        SubRecord {
            op,
            db,
            topic: key.clone(),
            id,
            properties,
            ..SubRecord::default()
        }
    }
}

/// A message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stream ID.
    pub id: StreamId,
    /// Fields, in order.
    pub fields: Vec<(Bytes, Bytes)>,
    /// Properties.
    pub properties: Vec<(Bytes, Bytes)>,
    /// Message key (empty = none).
    pub message_key: Bytes,
    /// Store timestamp (ms).
    pub timestamp_ms: u64,
    /// Log index of the entry holding it.
    pub log_index: LogIndex,
    /// Its sub-record within that entry: `(log_index, sub)` is its position in the log.
    pub sub: u16,
}

/// A stored message as the engine hands it out.
fn message_from(m: crate::store::StoredMessage) -> Message {
    Message {
        id: m.record.id,
        fields: m.record.fields,
        properties: m.record.properties,
        message_key: m.record.message_key,
        timestamp_ms: m.timestamp_ms,
        log_index: m.entry.log_index,
        sub: m.entry.sub,
    }
}

/// What XINFO STREAM shows of a stream, as far as this slice holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Entries (XLEN).
    pub length: u64,
    /// Last ID generated.
    pub last_generated_id: StreamId,
    /// Largest ID removed by XDEL or a trim.
    pub max_deleted_entry_id: StreamId,
    /// Entries ever added.
    pub entries_added: u64,
    /// Redis nodes holding it (`radix-tree-keys`).
    pub nodes: u64,
    /// First and last entry.
    pub first_entry: Option<Message>,
    /// See `first_entry`.
    pub last_entry: Option<Message>,
    /// Log index that created this incarnation of the stream.
    pub incarnation: LogIndex,
}

/// What a wait ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// An applied entry added messages to a waited topic (shared by all its waiters).
    Entry(Arc<LogEntry>),
    /// A waited topic changed after the given position before the wait began: read again.
    Changed,
    /// Nothing arrived in time.
    Timeout,
}

/// A stream's place as [`Engine::topic_head`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicHead {
    /// The log index of the entry that created this incarnation of the stream.
    pub incarnation: LogIndex,
    /// The last ID generated in it (XINFO's last-generated-id).
    pub last_id: StreamId,
    /// Live entries (XLEN).
    pub length: u64,
}

#[derive(Debug, Clone, Copy)]
struct ViewTopic {
    last_id: StreamId,
    exists: bool,
    /// The lowest ID an XSETID in flight names below `last_id`: one accepted on an empty
    /// stream lowers the top (Redis checks it only against live entries), so until it is
    /// applied an explicit ID above this is left for apply to judge.
    lowered_to: Option<StreamId>,
    /// Last entry that changed this view.
    at: LogIndex,
}

/// The proposer's state: term, clock and the leader view of topics with unapplied entries.
#[derive(Debug)]
struct Proposer {
    term: Term,
    last_ts: u64,
    /// Durable bound on `last_ts` (`async` mode only; `None` in `sync` mode, where nothing
    /// acknowledged or seen by a reader can be lost).
    ts_bound: Option<u64>,
    /// Looked up several times per append: hashbrown's default hasher (foldhash, seeded at
    /// random per map), not SipHash, which cost ~10 % of a pipelined XADD's instructions.
    view: hashbrown::HashMap<TopicKey, ViewTopic>,
    /// `(index, topic)` in proposal order, to drop view entries once applied; consecutive
    /// entries of one topic share one item (at the newest of them).
    order: VecDeque<(LogIndex, TopicKey)>,
    shut: bool,
    /// Producer sequences proposed and not yet applied, with their log index.
    producers_in_flight: hashbrown::HashMap<(Bytes, u64), LogIndex>,
    /// While a transaction is built: each view entry as it was before the transaction first
    /// touched it, to put back if it is not appended.
    undo: Option<hashbrown::HashMap<TopicKey, Option<ViewTopic>>>,
    /// In a Raft group of several: whether this node takes proposals now.
    cluster: Option<cluster::LeaderGate>,
}

/// A proposal on its way to the applier.
struct Proposal {
    /// Its entries, in log order: one, or a connection's pipeline of appends.
    entries: Vec<(AppendTicket, NewEntry)>,
    reply: ReplyTo,
    /// A transaction's reads: where apply stops for them.
    pauses: Option<transaction::Pauses>,
}

/// What reaches the applier: a proposal, or word that the commit index moved.
enum ApplyInput {
    Proposal(Proposal),
    Commit,
}

/// Where what applying a proposal's entries did goes.
enum ReplyTo {
    /// The one entry's.
    One(oneshot::Sender<Result<Applied>>),
    /// Each entry's, in order.
    Many(oneshot::Sender<Result<Vec<Applied>>>),
}

impl ReplyTo {
    /// The reply that answers this proposal with what applying its entries did (one for
    /// `One`).
    fn answered(self, mut applied: Vec<Applied>) -> Option<reply_relay::Reply> {
        match self {
            ReplyTo::One(tx) => applied.pop().map(|a| reply_relay::Reply::One(tx, Ok(a))),
            ReplyTo::Many(tx) => Some(reply_relay::Reply::Many(tx, Ok(applied))),
        }
    }

    /// The reply that fails this proposal with `e`.
    fn failed(self, e: EngineError) -> reply_relay::Reply {
        match self {
            ReplyTo::One(tx) => reply_relay::Reply::One(tx, Err(e)),
            ReplyTo::Many(tx) => reply_relay::Reply::Many(tx, Err(e)),
        }
    }
}

#[derive(Debug)]
struct Inner {
    store: Arc<MessageStore>,
    /// Where the hard state and clock bound live.
    storage: Arc<dyn crate::store::Storage>,
    root: PathBuf,
    config: EngineConfig,
    proposer: Mutex<Proposer>,
    apply_tx: Mutex<Option<mpsc::Sender<ApplyInput>>>,
    waiters: Waiters,
    /// Sessions opened and nodes' connections declared lost, as applied (the MQTT brokers
    /// disconnect the connections that no longer hold their sessions).
    session_events: tokio::sync::broadcast::Sender<SessionEvent>,
    applied: AtomicU64,
    /// Engine state beyond streams (retained messages), as of `applied`.
    state: Mutex<EngineState>,
    /// The principals.
    acl: Acl,
    /// What the last open cost.
    recovered: Mutex<OpenStats>,
    /// The topic index and the store's topic version it is current at.
    topic_index: Mutex<Option<(u64, topic_index::TopicIndex)>>,
    /// The next place in line for readers waiting in turn.
    wait_order: AtomicU64,
    /// In a Raft group of several: the commit index the driver reported.
    commit: AtomicU64,
    /// Leading a group whose configuration in force has this node as its only voter: the
    /// first entry of that leadership (0: not so). From it on, an entry is committed once the
    /// log acknowledges it, and the applier takes it without waiting for the driver's word.
    sole_from: AtomicU64,
    /// The term of that leadership (meaningful while `sole_from` is not 0).
    sole_term: AtomicU64,
    /// The last entry appended under the proposer lock whose proposal, if it has one, is in
    /// the applier's channel: an acknowledged entry past it may be a proposal of ours not
    /// queued yet, so the applier never takes it on the log's acknowledgement alone.
    handed: AtomicU64,
    /// In a Raft group of several: the driver.
    cluster: std::sync::OnceLock<cluster::ClusterLink>,
    /// In a Raft group of several: where writes go when this node does not lead.
    forwarder: Option<forward::Forwarder>,
    /// Image exports out, which pause checkpoint cycles.
    exports: checkpointer::ExportGate,
    /// A follower's image fetch is under way, or an image is staged.
    fetching: std::sync::atomic::AtomicBool,
    /// Set once an image is staged: the node must restart (close, open) to install it.
    restart: tokio::sync::watch::Sender<bool>,
    /// The last index of the image the open that made this engine installed, if any.
    installed_image: Option<LogIndex>,
    /// Images this node sent whole to followers.
    images_sent: AtomicU64,
    /// Where a busy batch's replies are sent from.
    relay: reply_relay::ReplyRelay,
}

/// What opening the engine cost: store recovery, loading the engine state (snapshot and
/// journal), and re-applying the log after the checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenStats {
    /// Store open and recovery (ms).
    pub store_ms: u64,
    /// Snapshot loaded and journal replayed (ms).
    pub state_ms: u64,
    /// Journal entries replayed.
    pub journaled: u64,
    /// Log entries applied after the store's checkpoint before a single node's open returned
    /// (its group of one's first entry of the term included; 0 in a larger group, whose
    /// applier follows the leader's commit after open).
    pub replayed: u64,
    /// From the driver's start until then (ms): the election and that apply.
    pub replay_ms: u64,
}

/// The engine. All operations take `&self`: share it with an `Arc`.
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    applier: Option<JoinHandle<()>>,
    /// The timer thread, and the sender whose drop stops it.
    timers: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// In a Raft group of several: the driver and the transport.
    cluster: Option<cluster::ClusterParts>,
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = self.entries.first().map(|(t, _)| t.index);
        write!(f, "Proposal({first:?}, {} entries)", self.entries.len())
    }
}

impl Engine {
    /// Opens the engine on the data directory `root`: recovers the store, applies everything the
    /// log holds (a group of one has committed all it made durable), starts a new term with a
    /// durable vote for itself, and commits a no-op in it.
    pub fn open(
        storage: Arc<dyn crate::store::Storage>,
        root: &Path,
        config: EngineConfig,
    ) -> Result<Self> {
        // The engine decides when derived state is checkpointed: a snapshot of its own state
        // at the same index goes first (see `snapshot`).
        let opening = Instant::now();
        let mut store_config = config.store.clone();
        store_config.dispatch_checkpoint_interval_ms = u64::MAX;
        // A directory belongs to one node: another node's log and votes are not this one's.
        // Checked before anything in it is touched.
        storage
            .create_dir_all(root)
            .map_err(|e| StoreError::io(root, e))?;
        // A new directory (or one from before incarnations) gets a random incarnation: in a
        // group, a wiped disk's votes and acknowledgements do not count for the place its
        // lost copy held until a committed change names the new one.
        use crate::raft::hard_state::{Identity, load_identity, new_incarnation, save_identity};
        let incarnation = match load_identity(storage.as_ref(), root)? {
            Some(id) if id.node != config.node_id => {
                return Err(EngineError::InvalidArgument(std::borrow::Cow::Owned(
                    format!(
                        "the data directory belongs to node {}, not node {}",
                        id.node, config.node_id
                    ),
                )));
            }
            Some(id) if id.incarnation != 0 => id.incarnation,
            _ => {
                let id = Identity {
                    node: config.node_id,
                    incarnation: new_incarnation(),
                };
                save_identity(storage.as_ref(), root, id)?;
                id.incarnation
            }
        };
        // An image a previous run received and staged replaces the store and engine files.
        let installed_image =
            crate::store::image::apply_pending(storage.as_ref(), root)?.map(|m| m.last_index);
        let store = MessageStore::open(storage.clone(), root, store_config)?;
        let store_ms = opening.elapsed().as_millis();
        let last = store.log().last_index();
        let checkpointed = store.dispatched_index();
        let (state, journaled) =
            replica::recover_state(storage.as_ref(), root, &store, config.limits())?;
        let state = Mutex::new(state);
        let state_ms = opening.elapsed().as_millis() - store_ms;
        snapshot::prune(storage.as_ref(), root, checkpointed)?;
        // The log after the checkpoint is applied again by the applier once the leader's word
        // commits it: every node is a Raft group member — a single node a group of one — and
        // knows only the dispatch point committed (a group of one commits the rest with its
        // first entry of the new term).
        let clustered = config.cluster.clone();
        let applied_at_open = checkpointed;
        let recovered = OpenStats {
            store_ms: store_ms as u64,
            state_ms: state_ms as u64,
            journaled: journaled as u64,
            replayed: 0,
            replay_ms: 0,
        };
        tracing::info!(?recovered, "engine state recovered");
        // Terms and votes are the Raft core's to change.
        let term = HardState::load(storage.as_ref(), root)?.term;
        let mut last_ts = if last >= store.log().first_index() && last > 0 {
            store.log().entry(last)?.timestamp_ms
        } else {
            0
        };
        // Entries stamped after the last survivor may have been acknowledged and lost: start
        // after every timestamp the previous run could have stamped (see `clock_bound`).
        let bound = clock_bound::load(storage.as_ref(), root)?;
        if store.recovery_report().unclean_shutdown && bound > 0 {
            last_ts = last_ts.max(bound.saturating_add(1));
        }
        let ts_bound = matches!(config.store.log.flush, FlushMode::Async { .. }).then_some(bound);
        let (tx, rx) = mpsc::channel::<ApplyInput>();
        let config_access = config.access.clone();
        let node_id = config.node_id;
        let inner = Arc::new(Inner {
            store: Arc::new(store),
            storage,
            root: root.to_path_buf(),
            config,
            proposer: Mutex::new(Proposer {
                term,
                last_ts,
                ts_bound,
                view: hashbrown::HashMap::new(),
                order: VecDeque::new(),
                producers_in_flight: hashbrown::HashMap::new(),
                undo: None,
                shut: false,
                cluster: Some(cluster::LeaderGate::default()),
            }),
            apply_tx: Mutex::new(Some(tx)),
            waiters: Waiters::default(),
            session_events: tokio::sync::broadcast::channel(1024).0,
            applied: AtomicU64::new(applied_at_open),
            state,
            acl: Acl::new(&config_access),
            recovered: Mutex::new(recovered),
            topic_index: Mutex::new(None),
            wait_order: AtomicU64::new(0),
            commit: AtomicU64::new(applied_at_open),
            sole_from: AtomicU64::new(0),
            sole_term: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            relay: reply_relay::ReplyRelay::default(),
            cluster: std::sync::OnceLock::new(),
            forwarder: clustered.as_ref().map(|c| {
                forward::Forwarder::new(
                    node_id,
                    Arc::from(c.secret.as_slice()),
                    &c.voters,
                    Duration::from_millis(c.leader_wait_ms),
                    Duration::from_millis(c.forward_apply_wait_ms),
                )
            }),
            exports: Default::default(),
            fetching: Default::default(),
            restart: tokio::sync::watch::Sender::new(false),
            installed_image,
            images_sent: AtomicU64::new(0),
        });
        let applier_inner = inner.clone();
        let applier = std::thread::Builder::new()
            .name("engine-apply".into())
            .spawn(move || applier_inner.apply_loop_cluster(rx))
            .map_err(|e| StoreError::io("engine-apply thread", e))?;
        let mut engine = Engine {
            inner,
            applier: Some(applier),
            timers: None,
            cluster: None,
        };
        // The Raft core elects a leader; its no-op (or founding configuration) opens proposals
        // there once applied.
        let node = engine.inner.config.node_id;
        engine.cluster = Some(cluster::start(
            &engine.inner,
            node,
            incarnation,
            clustered.as_ref(),
            applied_at_open,
        )?);
        if clustered.is_none() {
            // A single node serves when it returns: elected, its no-op applied (and with it
            // the log it recovered).
            let leading = Instant::now();
            engine.inner.wait_leading(SINGLE_NODE_LEAD_WAIT)?;
            let mut stats = engine
                .inner
                .recovered
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            stats.replayed = engine.applied_index().saturating_sub(checkpointed);
            stats.replay_ms = leading.elapsed().as_millis() as u64;
            tracing::info!(stats = ?*stats, "leading the group of one, the log applied");
        }
        // Timers run on every node; only the leader's propose.
        let (stop, stopped) = mpsc::channel();
        let timer_inner = engine.inner.clone();
        let timers = std::thread::Builder::new()
            .name("engine-timers".into())
            .spawn(move || timer_inner.timer_loop(stopped))
            .map_err(|e| StoreError::io("engine-timers thread", e))?;
        engine.timers = Some((stop, timers));
        Ok(engine)
    }

    /// The largest message an append takes (`max_message_bytes`, encoded).
    pub fn max_message_bytes(&self) -> usize {
        self.inner.config.max_message_bytes
    }

    /// The store underneath (reads, inspection).
    pub fn store(&self) -> &MessageStore {
        &self.inner.store
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.inner.lock_proposer().term
    }

    /// This node's Raft status (every node is in a group: a single node in a group of one;
    /// `None` only while the engine opens).
    pub fn raft_status(&self) -> Option<crate::raft::driver::Status> {
        self.inner.raft_status()
    }

    /// Becomes true once this node staged an image of its leader (it was behind the leader's
    /// retained log): close the engine and open it again to install it.
    pub fn restart_requested(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.restart.subscribe()
    }

    /// Where this node is with an image of its leader: `none`, `fetching`, or `staged`
    /// (installed at the next open).
    pub fn image_fetch_state(&self) -> &'static str {
        if *self.inner.restart.borrow() {
            "staged"
        } else if self.inner.fetching.load(Ordering::Acquire) {
            "fetching"
        } else {
            "none"
        }
    }

    /// The last log index of the image the open that made this engine installed, if it
    /// installed one.
    pub fn installed_image(&self) -> Option<LogIndex> {
        self.inner.installed_image
    }

    /// Images this node sent whole to followers since this engine opened.
    pub fn images_sent(&self) -> u64 {
        self.inner.images_sent.load(Ordering::Relaxed)
    }

    /// What the open that made this engine cost.
    pub fn open_stats(&self) -> OpenStats {
        *self
            .inner
            .recovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Producers the dedupe table remembers (metrics, tests).
    pub fn producer_count(&self) -> usize {
        self.inner.lock_state().producers.len()
    }

    /// Readers waiting right now (metrics, tests).
    pub fn waiting(&self) -> usize {
        self.inner.waiters.len()
    }

    /// Last index applied: a position to wait after.
    pub fn applied_index(&self) -> LogIndex {
        self.inner.applied.load(Ordering::Acquire)
    }

    /// Appends a message; the reply is its stream ID (`None`: NOMKSTREAM and no stream). On
    /// a follower, the leader appends it ([`forward`]).
    pub async fn append(&self, req: AppendRequest) -> Result<Option<StreamId>> {
        if self.inner.forwarding() {
            return match self.forward(forward::ForwardOp::Append(req)).await? {
                forward::ForwardAnswer::Append(answer) => answer,
                _ => Err(forward::unexpected()),
            };
        }
        self.append_here(req).await
    }

    /// [`Engine::append`] on this node.
    async fn append_here(&self, req: AppendRequest) -> Result<Option<StreamId>> {
        check_db(req.db)?;
        if req.fields.is_empty() {
            return Err(EngineError::NoFields);
        }
        let mut resolved = None;
        let mut repeat = None;
        let reply = self.inner.propose(|p| {
            // A repeat: answered from the table, or the original is still on its way. Checked
            // under the proposer lock, which the applier takes to forget an in-flight pair only
            // after the state remembers it.
            if let Some(pair) = &req.producer {
                if let Some(index) = p.producers_in_flight.get(pair) {
                    repeat = Some(Err(*index));
                    return Ok(None);
                }
                if let Some(answer) = self.inner.lock_state().deduped(&pair.0, pair.1) {
                    repeat = Some(Ok(answer));
                    return Ok(None);
                }
            }
            let Some(built) = self.build_append(p, &req)? else {
                return Ok(None); // NOMKSTREAM without a stream: nothing to log, the reply is nil
            };
            resolved = built.resolved;
            Ok(Some((
                EntryKind::Command,
                built.command,
                built.records,
                p.term,
            )))
        })?;
        match repeat {
            Some(Ok(answer)) => return answer_of(answer),
            Some(Err(index)) => return self.answer_after(index, req.producer).await,
            None => {}
        }
        let Some(reply) = reply else { return Ok(None) };
        let outcomes = reply
            .await
            .map_err(|_| EngineError::ShuttingDown)??
            .outcomes;
        match outcomes.first() {
            Some(Outcome::Added) => Ok(resolved),
            // Apply re-checks what the proposer checked; a failed check is a no-op with an error.
            Some(Outcome::Rejected { last }) => Err(EngineError::IdTooSmall { last: *last }),
            _ => Ok(None),
        }
    }

    /// Appends a connection's pipeline of messages: each its own log entry, in order, as many
    /// [`Engine::append`]s would make them, but proposed under one lock and answered with one
    /// reply — the path of pipelined XADDs (and of a follower's forwarded pipelines). A
    /// request whose producer sequence is remembered gets the original answer, one still in
    /// flight waits for it; neither is appended again.
    pub async fn append_many(&self, reqs: Vec<AppendRequest>) -> Vec<Result<Option<StreamId>>> {
        if self.inner.forwarding() {
            return match self.forward(forward::ForwardOp::AppendMany(reqs)).await {
                Ok(forward::ForwardAnswer::AppendMany(answers)) => answers,
                Ok(_) => vec![Err(forward::unexpected())],
                Err(e) => vec![Err(e)],
            };
        }
        self.append_many_here(reqs).await
    }

    /// [`Engine::append_many`] on this node.
    async fn append_many_here(
        &self,
        mut reqs: Vec<AppendRequest>,
    ) -> Vec<Result<Option<StreamId>>> {
        /// What becomes of one request.
        enum Slot {
            /// Answered at once.
            Now(Result<Option<StreamId>>),
            /// Its entry: position among this batch's entries, and the ID it got.
            Entry(usize, StreamId),
            /// A repeat of a producer sequence whose original (at this index) is not applied.
            Repeat(LogIndex, (Bytes, u64)),
        }
        let asked = reqs.len();
        let mut slots: Vec<Slot> = Vec::with_capacity(reqs.len());
        let rx = (|| {
            let mut p = self.inner.proposer_for_entry()?;
            let mut entries = Vec::with_capacity(reqs.len());
            // By reference: a request is a few hundred bytes, and moving each out of the
            // vector is a copy; what the entry needs is taken out of it.
            for req in reqs.iter_mut() {
                if let Some(pair) = &req.producer {
                    if let Some(index) = p.producers_in_flight.get(pair) {
                        slots.push(Slot::Repeat(*index, pair.clone()));
                        continue;
                    }
                    if let Some(answer) = self.inner.lock_state().deduped(&pair.0, pair.1) {
                        slots.push(Slot::Now(answer_of(answer)));
                        continue;
                    }
                }
                let key = std::mem::take(&mut req.key);
                let fields = std::mem::take(&mut req.fields);
                let built = match self.build_append_with(&mut p, req, key, fields) {
                    Ok(Some(b)) => b,
                    Ok(None) => {
                        slots.push(Slot::Now(Ok(None)));
                        continue;
                    }
                    Err(e) => {
                        slots.push(Slot::Now(Err(e)));
                        continue;
                    }
                };
                let entry = NewEntry {
                    term: p.term,
                    kind: EntryKind::Command,
                    timestamp_ms: p.last_ts,
                    command: built.command,
                    records: built.records,
                };
                let ticket = match self.inner.store.log().append(&entry) {
                    Ok(t) => t,
                    Err(e) => {
                        slots.push(Slot::Now(Err(e.into())));
                        continue;
                    }
                };
                if let Some(pair) = req.producer.take() {
                    p.producers_in_flight.insert(pair, ticket.index);
                }
                p.note(&self.inner.store, &entry.records, ticket.index);
                let id = built.resolved.unwrap_or_default();
                slots.push(Slot::Entry(entries.len(), id));
                entries.push((ticket, entry));
            }
            if entries.is_empty() {
                return Ok(None);
            }
            // Handed to the applier under the proposer lock: proposals reach it in log order.
            let (reply, rx) = oneshot::channel();
            self.inner.send(Proposal {
                entries,
                reply: ReplyTo::Many(reply),
                pauses: None,
            })?;
            drop(p);
            Ok(Some(rx))
        })();
        drop(reqs); // what is left of them: nothing the entries need
        let applied = match rx {
            Ok(Some(rx)) => match rx.await {
                Ok(Ok(applied)) => Ok(applied),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(EngineError::ShuttingDown),
            },
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            out.push(match (slot, &applied) {
                (Slot::Entry(k, id), Ok(applied)) => {
                    match applied.get(k).and_then(|a| a.outcomes.first()) {
                        Some(Outcome::Added) => Ok(Some(id)),
                        // Apply re-checks what the proposer checked; a failed check is a no-op.
                        Some(Outcome::Rejected { last }) => {
                            Err(EngineError::IdTooSmall { last: *last })
                        }
                        _ => Ok(None),
                    }
                }
                (Slot::Entry(..), Err(e)) => Err(e.clone()),
                (Slot::Repeat(index, pair), _) => self.answer_after(index, Some(pair)).await,
                (Slot::Now(answer), _) => answer,
            });
        }
        if out.len() < asked {
            // The proposer refused before building (shutting down): every request says so.
            let e = applied.err().unwrap_or(EngineError::ShuttingDown);
            out.resize_with(asked, || Err(e.clone()));
        }
        out
    }

    /// The answer to a repeat whose original (at `index`) was not applied yet: waits for it.
    async fn answer_after(
        &self,
        index: LogIndex,
        producer: Option<(Bytes, u64)>,
    ) -> Result<Option<StreamId>> {
        let Some((id, seq)) = producer else {
            return Ok(None);
        };
        while self.applied_index() < index {
            if self.inner.lock_proposer().shut {
                return Err(EngineError::ShuttingDown);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match self.inner.lock_state().deduped(&id, seq) {
            Some(answer) => answer_of(answer),
            // The original was not logged as an append (NOMKSTREAM without a stream).
            None => Ok(None),
        }
    }

    /// XDEL: marks the entries with these IDs deleted; the reply counts those that existed.
    pub async fn delete(&self, db: u8, key: Bytes, ids: Vec<StreamId>) -> Result<u64> {
        count_of(self.run_op(TxOp::Delete { db, key, ids }).await?)
    }

    /// XTRIM: trims the stream; the reply counts the entries removed.
    pub async fn trim(&self, db: u8, key: Bytes, trim: Trim) -> Result<u64> {
        count_of(self.run_op(TxOp::Trim { db, key, trim }).await?)
    }

    /// DEL: drops the stream; a later append creates a new incarnation. Replies whether it existed.
    pub async fn drop_topic(&self, db: u8, key: Bytes) -> Result<bool> {
        Ok(self.drop_topics(db, vec![key]).await? == 1)
    }

    /// DEL of several keys in one entry (all at one point in the log): replies how many of
    /// them existed. A key named twice counts once.
    pub async fn drop_topics(&self, db: u8, keys: Vec<Bytes>) -> Result<u64> {
        count_of(self.run_op(TxOp::Drop { db, keys }).await?)
    }

    /// XSETID: the stream's last ID becomes `id`, and its entries-added counter and max
    /// deleted ID (a zero one is left alone) when given. Checked when applied, as Redis checks
    /// them: `SetId(NoKey)` for a missing stream; for one with entries, `SetId(IdTooSmall)`
    /// below its last entry and `SetId(AddedTooSmall)` for a counter below its length.
    pub async fn set_id(
        &self,
        db: u8,
        key: Bytes,
        id: StreamId,
        entries_added: Option<u64>,
        max_deleted: Option<StreamId>,
    ) -> Result<()> {
        let op = TxOp::SetId {
            db,
            key,
            id,
            entries_added,
            max_deleted,
        };
        match self.run_op(op).await? {
            TxAnswer::Done => Ok(()),
            other => Err(EngineError::Store(StoreError::Failed(Arc::from(format!(
                "XSETID answered {other:?}"
            ))))),
        }
    }

    /// Whether the stream `(db, key)` exists (EXISTS, TYPE).
    pub fn exists(&self, db: u8, key: &[u8]) -> bool {
        self.inner.store.topic(db, key).is_some()
    }

    /// Runs a session or filter-group command (`tag` and `payload`, the bytes after it): on a
    /// follower the leader runs it (forwarded as its command bytes); here it is proposed and
    /// applied. Answers what applying it produced. The path every session and filter-group
    /// command takes.
    async fn run_command(
        &self,
        tag: CommandTag,
        payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<forward::CommandAnswer> {
        let mut bytes = vec![COMMAND_VERSION, tag as u8];
        payload(&mut bytes);
        let bytes = Bytes::from(bytes);
        if self.inner.forwarding() {
            return match self.forward(forward::ForwardOp::Command(bytes)).await? {
                forward::ForwardAnswer::Command(answer) => answer,
                _ => Err(forward::unexpected()),
            };
        }
        self.command_here(bytes).await
    }

    /// [`Engine::run_command`] on this node (what a leader does with a forwarded one): only a
    /// session or filter-group command is taken.
    pub(super) async fn command_here(&self, command: Bytes) -> Result<forward::CommandAnswer> {
        let taken = [CommandTag::Session as u8, CommandTag::FilterGroup as u8];
        if !matches!(command.as_ref(), [COMMAND_VERSION, tag, ..] if taken.contains(tag)) {
            return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                "only session and filter-group commands are forwarded as commands",
            )));
        }
        let reply = self
            .inner
            .propose(|p| Ok(Some((EntryKind::Command, command, Vec::new(), p.term))))?;
        let applied = match reply {
            Some(reply) => reply.await.map_err(|_| EngineError::ShuttingDown)??,
            None => return Err(EngineError::ShuttingDown),
        };
        Ok(forward::CommandAnswer {
            session: applied.session,
            filter_group: applied.filter_group,
        })
    }

    /// Entries (neither deleted nor trimmed) with IDs in `[start, end]` (bounds may be
    /// exclusive or open), oldest first or, with `reverse`, newest first; at most `count`.
    pub fn read_range(
        &self,
        db: u8,
        key: &[u8],
        start: Bound<StreamId>,
        end: Bound<StreamId>,
        count: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<Message>> {
        let store = &self.inner.store;
        let Some(topic) = store.topic(db, key) else {
            return Ok(Vec::new());
        };
        // A start at or below the first live entry (`-`, XREAD from 0) needs no search.
        let seek_from = |id: StreamId| -> Result<u64> {
            match store.read_queue(&topic, topic.first_live, 1)?.first() {
                Some((_, first)) if id <= first.id => Ok(topic.first_live),
                _ => Ok(store.seek(&topic, id)?),
            }
        };
        let lo = match start {
            Bound::Unbounded => topic.first_live,
            Bound::Included(id) => seek_from(id)?,
            Bound::Excluded(id) => match next_id(id) {
                Some(next) => seek_from(next)?,
                None => topic.len,
            },
        };
        let hi = match end {
            Bound::Unbounded => topic.len,
            Bound::Excluded(id) => store.seek(&topic, id)?,
            Bound::Included(id) => match next_id(id) {
                Some(next) => store.seek(&topic, next)?,
                None => topic.len,
            },
        };
        let limit = count.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        // Queue entries read at a time: what is still wanted (deleted entries are skipped,
        // so a chunk may yield fewer), at most 1024.
        const CHUNK: u64 = 1024;
        let chunk = |got: usize| CHUNK.min((limit - got) as u64).max(1);
        if reverse {
            let mut top = hi;
            while top > lo && out.len() < limit {
                let from = top.saturating_sub(chunk(out.len())).max(lo);
                let queued = store.read_queue(&topic, from, top - from)?;
                let wanted: Vec<_> = queued
                    .iter()
                    .rev()
                    .take(limit - out.len())
                    .map(|(_, e)| *e)
                    .rev()
                    .collect();
                let messages = store.messages(&topic, &wanted)?;
                out.extend(messages.into_iter().rev().map(message_from));
                top = from;
            }
        } else {
            let mut at = lo;
            while at < hi && out.len() < limit {
                let n = (hi - at).min(chunk(out.len()));
                let wanted: Vec<_> = store
                    .read_queue(&topic, at, n)?
                    .into_iter()
                    .take(limit - out.len())
                    .map(|(_, e)| e)
                    .collect();
                out.extend(
                    store
                        .messages(&topic, &wanted)?
                        .into_iter()
                        .map(message_from),
                );
                at += n;
            }
        }
        Ok(out)
    }

    fn message_of(&self, topic: &Topic, e: &crate::store::CqEntry) -> Result<Message> {
        Ok(message_from(self.inner.store.message(topic, e)?))
    }

    /// When a stream node is full (Redis's `stream-node-max-entries` and `-bytes`).
    pub fn stream_nodes(&self) -> crate::store::NodeLimits {
        self.inner.config.store.stream_nodes
    }

    /// What Redis's `~` removes at most per call without LIMIT, as Redis: 100 × the stream
    /// node's entry limit, 10,000 when nodes have none, at most 1,000,000.
    pub fn approx_trim_limit(&self) -> u64 {
        match 100 * u64::from(self.inner.config.store.stream_nodes.max_entries) {
            0 => APPROX_TRIM_LIMIT,
            limit => limit.min(1_000_000),
        }
    }

    /// XLEN: entries in the stream (0 when it does not exist).
    pub fn len(&self, db: u8, key: &[u8]) -> u64 {
        self.inner.store.topic(db, key).map_or(0, |t| t.live_len())
    }

    /// XINFO STREAM's fields this slice holds; `None` when the stream does not exist.
    pub fn stream_info(&self, db: u8, key: &[u8]) -> Result<Option<StreamInfo>> {
        // (Two reads: the first and the last entry. `topic_head` has the rest without them.)
        let Some(t) = self.inner.store.topic(db, key) else {
            return Ok(None);
        };
        let first = self.read_range(db, key, Bound::Unbounded, Bound::Unbounded, Some(1), false)?;
        let last = self.read_range(db, key, Bound::Unbounded, Bound::Unbounded, Some(1), true)?;
        Ok(Some(StreamInfo {
            length: t.live_len(),
            last_generated_id: t.last_id,
            max_deleted_entry_id: t.max_deleted_id,
            entries_added: t.entries_added,
            nodes: t.nodes,
            first_entry: first.into_iter().next(),
            last_entry: last.into_iter().next(),
            incarnation: t.incarnation,
        }))
    }

    /// The stream's incarnation, last ID and length as applied, without reading an entry (what
    /// a reader following the stream by cursor needs on every round). `None` if it is missing.
    pub fn topic_head(&self, db: u8, key: &[u8]) -> Option<TopicHead> {
        self.inner.store.topic(db, key).map(|t| TopicHead {
            incarnation: t.incarnation,
            last_id: t.last_id,
            length: t.live_len(),
        })
    }

    /// Streams of `db` whose key matches the glob `pattern` (`*`, `?`, `[...]`, `\` escapes:
    /// Redis KEYS), in no particular order.
    pub fn topics(&self, db: u8, pattern: &[u8]) -> Vec<Bytes> {
        self.inner
            .store
            .topics()
            .into_iter()
            .filter(|t| t.db == db && glob::glob_match(pattern, &t.key))
            .map(|t| t.key)
            .collect()
    }

    /// SCAN: streams of `db` by topic id from `cursor` (0 to start): at most `count`
    /// examined, those whose key matches `pattern` returned, and the cursor to go on with (0
    /// when the scan is done). Ids are never reused, so a stream that exists for a whole scan
    /// is returned exactly once; one created meanwhile may or may not be (as Redis promises).
    pub fn scan(&self, db: u8, cursor: u64, count: usize, pattern: &[u8]) -> (u64, Vec<Bytes>) {
        let from = cursor.saturating_sub(1);
        let mut topics: Vec<_> = self
            .inner
            .store
            .topics()
            .into_iter()
            .filter(|t| t.db == db && u64::from(t.id) >= from)
            .collect();
        topics.sort_unstable_by_key(|t| t.id);
        let examined = topics.len().min(count.max(1));
        let next = match topics.get(examined) {
            Some(t) => u64::from(t.id) + 1,
            None => 0,
        };
        let keys = topics
            .into_iter()
            .take(examined)
            .filter(|t| glob::glob_match(pattern, &t.key))
            .map(|t| t.key)
            .collect();
        (next, keys)
    }

    /// The retained message of `(db, key)`, if any.
    pub fn retained_of(&self, db: u8, key: &[u8]) -> Option<Arc<Retained>> {
        self.inner
            .lock_state()
            .retained
            .get(&(db, Bytes::copy_from_slice(key)))
            .cloned()
    }

    /// MQTT SUBSCRIBE: the retained messages of the db-0 topics the filter matches, by topic.
    pub fn retained(&self, filter: &[u8]) -> Result<Vec<(Bytes, Arc<Retained>)>> {
        topic_filter::check_filter(filter).map_err(EngineError::BadTopic)?;
        Ok(self
            .inner
            .lock_state()
            .retained
            .iter()
            .filter(|((db, key), _)| {
                *db == 0
                    && topic_filter::check_topic_name(key).is_ok()
                    && topic_filter::filter_matches(filter, key)
            })
            .map(|((_, key), r)| (key.clone(), r.clone()))
            .collect())
    }

    /// A digest of the engine state beyond streams (determinism tests).
    pub fn state_digest(&self) -> u32 {
        crc32c::crc32c(&self.inner.lock_state().encode())
    }

    /// The applied index and the digest of the engine state at it, read together (the state
    /// is locked while both are taken): members that applied the same index must agree.
    /// Encodes the whole engine state: not for a hot path.
    pub fn state_digest_at(&self) -> (LogIndex, u32) {
        let state = self.inner.lock_state();
        let applied = self.applied_index();
        (applied, crc32c::crc32c(&state.encode()))
    }

    /// MQTT: the topics of db 0 whose key is a valid topic name matched by `filter` (`+`, `#`,
    /// and the `$` rule: a filter starting with a wildcard skips `$...` topics), in no
    /// particular order.
    pub fn topics_matching(&self, filter: &[u8]) -> Result<Vec<Bytes>> {
        topic_filter::check_filter(filter).map_err(EngineError::BadTopic)?;
        Ok(self.inner.matching_topics(&[filter]).into_iter().collect())
    }

    /// Live messages (neither deleted nor trimmed, of the stream's current incarnation) of
    /// `(db, topic)` with message key `key` and a timestamp in `[from_ms, to_ms]`, newest
    /// first, at most `max`. Served by the IndexFile: costs what the key's hits cost, not a
    /// scan of the stream.
    pub fn find_by_key(
        &self,
        db: u8,
        topic: &[u8],
        key: &[u8],
        from_ms: u64,
        to_ms: u64,
        max: usize,
    ) -> Result<Vec<Message>> {
        check_db(db)?;
        if max == 0 || key.is_empty() {
            return Ok(Vec::new());
        }
        // Hits may name messages deleted, trimmed or of an older incarnation since: ask for
        // more until `max` live ones are found or the index has no more.
        let mut ask = max;
        loop {
            let hits = self
                .inner
                .store
                .find_by_key(db, topic, key, from_ms, to_ms, ask)?;
            let mut out = Vec::new();
            for hit in &hits {
                let entry = self.inner.store.log().entry(hit.log_index)?;
                let Some(record) = entry.records.get(usize::from(hit.sub)) else {
                    continue;
                };
                let id = record.id;
                let live = self
                    .read_range(
                        db,
                        topic,
                        Bound::Included(id),
                        Bound::Included(id),
                        Some(1),
                        false,
                    )?
                    .into_iter()
                    .find(|m| m.log_index == hit.log_index);
                out.extend(live);
                if out.len() == max {
                    return Ok(out);
                }
            }
            if hits.len() < ask {
                return Ok(out);
            }
            ask = ask.saturating_mul(4);
        }
    }

    /// Waits until an entry applied after `after` adds a message to a db-0 topic matched by the
    /// MQTT `filter`, or `timeout` passes. `Changed` when anything was applied after `after`
    /// before the wait began (read again from `after`, then wait after `applied_index()`).
    pub async fn wait_filter(
        &self,
        filter: &[u8],
        after: LogIndex,
        timeout: Duration,
    ) -> Result<Wake> {
        self.wait_filters(&[filter], after, timeout).await
    }

    /// [`Engine::wait_filter`] for several filters at once (an MQTT session's subscriptions):
    /// the first entry that adds a message to a topic any of them matches. A `timeout` of
    /// `Duration::MAX` waits without a timer.
    pub async fn wait_filters(
        &self,
        filters: &[&[u8]],
        after: LogIndex,
        timeout: Duration,
    ) -> Result<Wake> {
        for f in filters {
            topic_filter::check_filter(f).map_err(EngineError::BadTopic)?;
        }
        let mut guards = Vec::with_capacity(filters.len());
        let mut receivers = Vec::with_capacity(filters.len());
        for f in filters {
            let (id, rx) = self
                .inner
                .waiters
                .register_filter(Bytes::copy_from_slice(f));
            guards.push(WaitGuard {
                waiters: &self.inner.waiters,
                id,
                topics: &[],
            });
            receivers.push(rx);
        }
        // Registered first, checked second: an entry applied in between is never missed.
        if self.applied_index() > after || receivers.is_empty() {
            return Ok(Wake::Changed);
        }
        let first = std::future::poll_fn(|cx| {
            for rx in receivers.iter_mut() {
                if let std::task::Poll::Ready(r) = std::pin::Pin::new(rx).poll(cx) {
                    return std::task::Poll::Ready(r);
                }
            }
            std::task::Poll::Pending
        });
        // `Duration::MAX`: no timer at all (a timer set and cleared per wait costs a fan-out's
        // every delivery).
        let woken = if timeout == Duration::MAX {
            Ok(first.await)
        } else {
            tokio::time::timeout(timeout, first).await
        };
        Ok(match woken {
            Ok(Ok((entry, _))) => Wake::Entry(entry),
            Ok(Err(_)) => Wake::Changed,
            Err(_) => Wake::Timeout,
        })
    }

    /// Waits until an entry applied after `after` adds a message to one of `topics`, or
    /// `timeout` passes. Idle waiters cost nothing; a commit wakes exactly the waiters of the
    /// topics it touched.
    pub async fn wait(&self, topics: &[TopicKey], after: LogIndex, timeout: Duration) -> Wake {
        self.wait_in_turn(topics, after, timeout, None, None)
            .await
            .0
    }

    /// Whether a reader ahead of `turn` is still waiting for a wake on its topic (an entry
    /// applied and not yet woken for): the holder of `turn` should wait again instead of
    /// reading, and will find itself behind that reader in the line.
    pub fn earlier_waiting(&self, turn: &Turn) -> bool {
        let (db, key) = turn.topic();
        // The entry of the topic's newest message: what wakes its waiters (a deletion or a
        // trim after it wakes no one, so a reader waiting after it is not about to come).
        let newest = self.inner.store.topic(*db, key).and_then(|t| {
            let last = t.len.checked_sub(1)?;
            let e = self.inner.store.read_queue_raw(&t, last, 1).ok()?;
            e.first().map(|e| e.log_index)
        });
        self.inner
            .waiters
            .earlier_waiting(turn, newest.unwrap_or(0))
    }

    /// A place in line for [`Engine::wait_in_turn`]: taken when a reader first blocks and kept
    /// across its waits, so it keeps its place after a wake that gave it nothing.
    pub fn wait_order(&self) -> u64 {
        self.inner.wait_order.fetch_add(1, Ordering::Relaxed)
    }

    /// [`Engine::wait`] in line (`order` from [`Engine::wait_order`]): a woken reader (or one
    /// that missed an entry) gets a [`Turn`], its place in the topic's line by order; it waits
    /// for its turn, reads, then drops the turn or hands it back here (`previous`, given up once
    /// registered) — so the longest waiting reads first (blocked XREADGROUP is served FIFO per
    /// stream, as Redis serves it).
    pub async fn wait_in_turn(
        &self,
        topics: &[TopicKey],
        after: LogIndex,
        timeout: Duration,
        order: Option<u64>,
        previous: Option<Turn>,
    ) -> (Wake, Option<Turn>) {
        let (id, rx) = self.inner.waiters.register(topics, order, after);
        // The reader's previous place in line is given up only now that it waits: it is never
        // out of both, so no reader behind it can pass it.
        drop(previous);
        let _registered = WaitGuard {
            waiters: &self.inner.waiters,
            id,
            topics,
        };
        // Registered first, checked second: an append applied in between is never missed.
        let changed = topics.iter().any(|(db, key)| {
            self.inner
                .store
                .topic(*db, key)
                .is_some_and(|t| t.last_applied.0 > after)
        });
        if changed {
            let turn = match order.zip(topics.first()) {
                None => None,
                Some((order, topic)) => match self.inner.waiters.join_missed(topic, order, id) {
                    Some(turn) => Some(turn),
                    // A commit woke it meanwhile: its turn is on its way (sent just after the
                    // registry's lock is let go).
                    None => rx.await.ok().and_then(|(_, turn)| turn),
                },
            };
            return (Wake::Changed, turn);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok((entry, turn))) => (Wake::Entry(entry), turn),
            Ok(Err(_)) => (Wake::Changed, None), // shutting down: let the caller read again
            Err(_) => (Wake::Timeout, None),
        }
    }

    /// Stops taking proposals, applies what was proposed, checkpoints and closes the store
    /// cleanly (the next open finds no abort marker).
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        // An image being read must not see this checkpoint's files.
        self.inner.exports.close(Duration::from_secs(10));
        self.inner.checkpoint()?;
        Ok(self.inner.store.close()?)
    }

    fn shutdown(&mut self) {
        if let Some((stop, timers)) = self.timers.take() {
            drop(stop);
            let _ = timers.join();
        }
        if let Some(c) = self.cluster.take() {
            c.stop();
        }
        self.inner.lock_proposer().shut = true;
        drop(
            self.inner
                .apply_tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if let Some(h) = self.applier.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What `manifold inspect` reports of the engine's own files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineFiles {
    /// The hard state (term 0, no vote when there is no file).
    pub hard_state: HardState,
    /// The clock bound (0 when there is none).
    pub clock_bound: u64,
    /// The snapshot the store's dispatch point starts from: `(index, retained messages,
    /// producers, consumer groups)`; `None` when the state is empty by rule (dispatch point 0,
    /// or no snapshot files at all).
    pub snapshot: Option<(LogIndex, usize, usize, usize)>,
    /// The journal carrying that snapshot to the dispatch point: `(dispatch point, entries)`.
    pub journal: Option<(LogIndex, usize)>,
    /// The node the directory belongs to and its incarnation (`None`: no `identity` file).
    pub identity: Option<crate::raft::hard_state::Identity>,
    /// The configurations of the `members` file (a group member's), as saved.
    pub members: Vec<crate::raft::ConfigAt>,
    /// What the staging area `install/` holds: an image the next open installs, or a transfer
    /// that never finished.
    pub staged: crate::store::image::Staged,
    /// What does not verify, one line each (file and reason).
    pub problems: Vec<String>,
}

/// Reads and verifies the engine's files (hard state, clock bound, the snapshot at the
/// store's dispatch point `dispatched`) without writing anything.
pub fn inspect_files(
    storage: &dyn crate::store::Storage,
    root: &Path,
    dispatched: LogIndex,
) -> EngineFiles {
    let mut files = EngineFiles::default();
    match HardState::load(storage, root) {
        Ok(h) => files.hard_state = h,
        Err(e) => files.problems.push(e.to_string()),
    }
    match clock_bound::load(storage, root) {
        Ok(b) => files.clock_bound = b,
        Err(e) => files.problems.push(e.to_string()),
    }
    match crate::raft::hard_state::load_identity(storage, root) {
        Ok(id) => files.identity = id,
        Err(e) => files.problems.push(e.to_string()),
    }
    match crate::raft::members_file::load(storage, root) {
        Ok(m) => files.members = m,
        Err(e) => files.problems.push(e.to_string()),
    }
    match crate::store::image::staged(storage, root) {
        Ok(s) => files.staged = s,
        Err(e) => files.problems.push(e.to_string()),
    }
    match snapshot::load(storage, root, dispatched) {
        Ok(Some(loaded)) => {
            let s = &loaded.state;
            let groups = s.groups.streams.values().map(|g| g.len()).sum();
            files.snapshot = Some((loaded.base, s.retained.len(), s.producers.len(), groups));
            if loaded.base != dispatched {
                files.journal = Some((dispatched, loaded.journal.len()));
            }
        }
        Ok(None) => {}
        Err(e) => files.problems.push(e.to_string()),
    }
    files
}

/// Unregisters a waiter however its wait ends: woken, timed out, or dropped mid-wait (a client
/// that disconnects during XREAD BLOCK must not leave its registration behind).
struct WaitGuard<'a> {
    waiters: &'a Waiters,
    id: u64,
    topics: &'a [TopicKey],
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.waiters.cancel(self.id, self.topics);
    }
}

fn check_db(db: u8) -> Result<()> {
    if db > 15 {
        Err(EngineError::BadDb(db))
    } else {
        Ok(())
    }
}

fn answer_of(answer: state::Deduped) -> Result<Option<StreamId>> {
    match answer {
        state::Deduped::Added(id) => Ok(Some(id)),
        state::Deduped::Rejected(last) => Err(EngineError::IdTooSmall { last }),
    }
}

/// The smallest ID above `id`, if any.
fn next_id(id: StreamId) -> Option<StreamId> {
    if id.seq < u64::MAX {
        Some(StreamId::new(id.ms, id.seq + 1))
    } else if id.ms < u64::MAX {
        Some(StreamId::new(id.ms + 1, 0))
    } else {
        None
    }
}

impl Proposer {
    /// Notes the sub-records of the entry at `index` in the leader view. A topic enters the
    /// view as applied state has it, whatever the entry does to it.
    fn note(&mut self, store: &MessageStore, records: &[SubRecord], index: LogIndex) {
        for r in records {
            let key: TopicKey = (r.db, r.topic.clone());
            if let Some(undo) = &mut self.undo
                && !undo.contains_key(&key)
            {
                undo.insert(key.clone(), self.view.get(&key).copied());
            }
            // One lookup: a topic not in the view yet enters it as applied state has it.
            let v = self
                .view
                .entry(key)
                .or_insert_with_key(|key| Self::applied_view(store, key));
            match r.op {
                RecordOp::Message if r.id > v.last_id || !v.exists => {
                    v.last_id = r.id;
                    v.exists = true;
                }
                RecordOp::Drop => {
                    v.last_id = StreamId::default();
                    v.exists = false;
                }
                RecordOp::Create => v.exists = true,
                // Taken as done: appends proposed after it resolve IDs above it (a refused
                // XSETID leaves the view high until it is applied; apply re-checks appends).
                RecordOp::SetId if v.exists => {
                    if r.id < v.last_id {
                        v.lowered_to = Some(v.lowered_to.map_or(r.id, |low| low.min(r.id)));
                    }
                    v.last_id = v.last_id.max(r.id);
                }
                _ => {}
            }
            v.at = index;
            // A run of entries of one topic (a pipeline of XADDs) is one item, at its newest
            // entry: the view entry goes once that one is applied.
            match self.order.back_mut() {
                Some((at, (db, topic))) if *db == r.db && *topic == r.topic => *at = index,
                _ => self.order.push_back((index, (r.db, r.topic.clone()))),
            }
        }
    }

    /// The streams of `db` as the leader view has them: applied ones, less those dropped by
    /// entries in flight, plus those they create.
    fn keys(&self, store: &MessageStore, db: u8) -> Vec<Bytes> {
        let mut keys: Vec<Bytes> = store
            .topics()
            .into_iter()
            .filter(|t| t.db == db && self.view.get(&(db, t.key.clone())).is_none_or(|v| v.exists))
            .map(|t| t.key)
            .collect();
        keys.extend(
            self.view
                .iter()
                .filter(|((d, k), v)| *d == db && v.exists && store.topic(db, k).is_none())
                .map(|((_, k), _)| k.clone()),
        );
        keys
    }

    /// The leader view of a topic: last ID and existence, including unapplied entries.
    fn view_of(&self, store: &MessageStore, key: &TopicKey) -> (StreamId, bool) {
        let v = self.topic_view(store, key);
        (v.last_id, v.exists)
    }

    /// The leader view of a topic, whole (with the top an XSETID in flight may lower it to).
    fn topic_view(&self, store: &MessageStore, key: &TopicKey) -> ViewTopic {
        match self.view.get(key) {
            Some(v) => *v,
            None => Self::applied_view(store, key),
        }
    }

    /// A topic as applied state has it (no entry of it in flight).
    fn applied_view(store: &MessageStore, key: &TopicKey) -> ViewTopic {
        let (last_id, exists) = match store.topic(key.0, &key.1) {
            Some(t) => (t.last_id, true),
            None => (StreamId::default(), false),
        };
        ViewTopic {
            last_id,
            exists,
            lowered_to: None,
            at: 0,
        }
    }
}

impl Inner {
    fn lock_proposer(&self) -> MutexGuard<'_, Proposer> {
        self.proposer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the proposer for a new entry: refused once shut down; the leader timestamp moves
    /// on (time never runs backwards across terms or restarts), within the clock bound.
    fn proposer_for_entry(&self) -> Result<MutexGuard<'_, Proposer>> {
        let mut p = self.lock_proposer();
        if p.shut {
            return Err(EngineError::ShuttingDown);
        }
        if let Some(g) = p.cluster.as_ref() {
            if !g.writable {
                return Err(EngineError::NotLeader { leader: g.leader });
            }
            // A leadership transfer under way: the transferee catches up with a log that
            // stops growing; the proposal waits for (or goes to) the new leader.
            if g.paused {
                return Err(EngineError::NotLeader { leader: None });
            }
        }
        p.last_ts = p.last_ts.max((self.config.clock)());
        if let Some(bound) = p.ts_bound
            && p.last_ts > bound
        {
            let next = p.last_ts.saturating_add(self.config.clock_lease_ms);
            clock_bound::store(self.storage.as_ref(), &self.root, next)?;
            p.ts_bound = Some(next);
        }
        Ok(p)
    }

    /// Builds an entry under the proposer lock, appends it and hands it to the applier;
    /// returns where the reply (the dispatch outcomes) will arrive.
    #[allow(clippy::type_complexity)]
    fn propose(
        &self,
        build: impl FnOnce(&mut Proposer) -> Result<Option<(EntryKind, Bytes, Vec<SubRecord>, Term)>>,
    ) -> Result<Option<oneshot::Receiver<Result<Applied>>>> {
        let mut p = self.proposer_for_entry()?;
        let Some((kind, command, records, term)) = build(&mut p)? else {
            return Ok(None);
        };
        let entry = NewEntry {
            term,
            kind,
            timestamp_ms: p.last_ts,
            command,
            records,
        };
        let ticket = self.store.log().append(&entry)?;
        let index = ticket.index;
        if let Some(pair) = command_producer(&entry.command) {
            p.producers_in_flight.insert(pair, index);
        }
        p.note(&self.store, &entry.records, index);
        self.hand_off(ticket, entry, None)
    }

    /// A transaction's entry: `build` gets the proposer and the index the entry will have,
    /// builds its operations in order — noting each in the leader view, so the next sees it —
    /// and returns the command, the sub-records and where apply stops for reads. The view is
    /// put back as it was if nothing is appended.
    #[allow(clippy::type_complexity)]
    fn propose_batch(
        &self,
        build: impl FnOnce(
            &mut Proposer,
            LogIndex,
        ) -> Result<Option<(Bytes, Vec<SubRecord>, transaction::Pauses)>>,
    ) -> Result<Option<oneshot::Receiver<Result<Applied>>>> {
        let mut p = self.proposer_for_entry()?;
        let next = self.store.log().last_index() + 1;
        let order = p.order.len();
        // Noting may also move the last item's index on (a run of one topic is one item).
        let order_back = p.order.back().map(|(i, _)| *i);
        p.undo = Some(hashbrown::HashMap::new());
        let restore = |p: &mut Proposer| {
            for (key, was) in p.undo.take().unwrap_or_default() {
                match was {
                    Some(v) => p.view.insert(key, v),
                    None => p.view.remove(&key),
                };
            }
            p.order.truncate(order);
            if let (Some((i, _)), Some(was)) = (p.order.back_mut(), order_back) {
                *i = was;
            }
        };
        let built = match build(&mut p, next) {
            Ok(Some(b)) => b,
            Ok(None) => {
                restore(&mut p);
                return Ok(None);
            }
            Err(e) => {
                restore(&mut p);
                return Err(e);
            }
        };
        let (command, records, pauses) = built;
        let entry = NewEntry {
            term: p.term,
            kind: EntryKind::Command,
            timestamp_ms: p.last_ts,
            command,
            records,
        };
        let ticket = match self.store.log().append(&entry) {
            Ok(t) => t,
            Err(e) => {
                restore(&mut p);
                // A transaction too big for one entry is refused; nothing was written.
                return Err(match e {
                    StoreError::EntryTooLarge { .. } => {
                        EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                            "the transaction is larger than one log entry may be (16 MiB)",
                        ))
                    }
                    StoreError::TooManySubRecords { .. } => EngineError::InvalidArgument(
                        std::borrow::Cow::Borrowed("a transaction writes at most 65,536 records"),
                    ),
                    e => e.into(),
                });
            }
        };
        p.undo = None;
        if ticket.index != next {
            // Every append goes through the proposer lock; a different index is a bug. The
            // view is noted again at the real index so it is still pruned.
            tracing::error!(want = next, got = ticket.index, "transaction entry index");
            p.note(&self.store, &entry.records, ticket.index);
        }
        self.hand_off(ticket, entry, Some(pauses))
    }

    /// Sends one entry's proposal to the applier; where its reply arrives.
    fn hand_off(
        &self,
        ticket: AppendTicket,
        entry: NewEntry,
        pauses: Option<transaction::Pauses>,
    ) -> Result<Option<oneshot::Receiver<Result<Applied>>>> {
        let (reply, rx) = oneshot::channel();
        self.send(Proposal {
            entries: vec![(ticket, entry)],
            reply: ReplyTo::One(reply),
            pauses,
        })?;
        Ok(Some(rx))
    }

    /// Fails a proposal: behind the replies the relay still holds, as every reply is.
    fn fail(&self, reply: ReplyTo, e: EngineError) {
        self.relay.send(vec![reply.failed(e)]);
    }

    /// Hands a proposal to the applier. Called with the proposer lock held (the lock its
    /// entries were appended under): proposals must reach the applier in log order.
    fn send(&self, proposal: Proposal) -> Result<()> {
        self.relay.ensure();
        let last = proposal.entries.last().map(|(t, e)| (t.index, e.term));
        let tx = self.apply_tx.lock().unwrap_or_else(|e| e.into_inner());
        let sent = tx
            .as_ref()
            .map(|tx| tx.send(ApplyInput::Proposal(proposal)).is_ok());
        drop(tx);
        if sent != Some(true) {
            return Err(EngineError::ShuttingDown);
        }
        if let Some((index, _)) = last {
            self.handed.store(index, Ordering::Release);
        }
        // In a group, the Raft core replicates what the leader appended — told only now: the
        // proposal must reach the applier before the commit that covers it can (else its
        // entries would be applied as another node's, and the proposal left unanswered).
        if let Some((index, term)) = last {
            self.appended(index, term);
        }
        Ok(())
    }

    /// Applies `entries` (committed, in log order) to the store and the engine state, moves
    /// the applied index, prunes the leader view, answers each proposal (`replies`: the reply,
    /// or none for entries another node proposed, and how many entries it covers) and wakes
    /// the readers of touched topics. On failure every reply given fails too.
    fn finish_batch(
        &self,
        entries: &[Arc<LogEntry>],
        replies: Vec<(Option<ReplyTo>, usize)>,
        pauses: &[Option<transaction::Pauses>],
        journal: Option<&mut Vec<journal::JournalEntry>>,
    ) -> Result<()> {
        let applied = apply_entries(
            &self.store,
            &self.state,
            entries,
            self.config.limits(),
            journal,
            pauses,
        );
        let applied = match applied {
            Ok(o) => o,
            Err(e) => {
                let failed = replies.into_iter().filter_map(|(reply, _)| reply);
                self.relay
                    .send(failed.map(|r| r.failed(e.clone())).collect());
                return Err(e);
            }
        };
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let added = applied
            .iter()
            .map(|a| {
                crate::store::recent::Added::from_flags(
                    a.outcomes.iter().map(|o| matches!(o, Outcome::Added)),
                )
            })
            .collect();
        self.store.keep_recent(entries, added);
        self.applied.store(last, Ordering::Release);
        // The leader view keeps only topics with entries not yet applied; pruned before any
        // reply goes out, so a proposer acting on a reply sees applied state.
        {
            let mut prop = self.lock_proposer();
            if !prop.producers_in_flight.is_empty() {
                prop.producers_in_flight.retain(|_, i| *i > last);
            }
            // A run of entries of one topic (a pipeline of XADDs) looks the topic up once.
            let mut prev: Option<TopicKey> = None;
            while prop.order.front().is_some_and(|(i, _)| *i <= last) {
                let Some((_, key)) = prop.order.pop_front() else {
                    break;
                };
                if prev.as_ref() == Some(&key) {
                    continue;
                }
                prev = Some(key.clone());
                if let hashbrown::hash_map::Entry::Occupied(v) = prop.view.entry(key)
                    && v.get().at <= last
                {
                    v.remove();
                }
            }
            if prop.cluster.is_some() {
                // Time never runs backwards across leaders: the next leader stamps after
                // every entry it applied.
                if let Some(e) = entries.last() {
                    prop.last_ts = prop.last_ts.max(e.timestamp_ms);
                }
            }
            if let Some(c) = prop.cluster.as_mut() {
                // A new leader takes proposals once its no-op (and so everything before it) is
                // applied: its view of the log is then the applied state.
                if c.noop_at.is_some_and(|i| i <= last) {
                    c.noop_at = None;
                    c.writable = true;
                }
            }
        }
        let mut applied = entries.iter().zip(applied);
        let mut answers = Vec::with_capacity(replies.len());
        for (reply, n) in replies {
            let mut mine = Vec::with_capacity(n);
            for (entry, applied) in applied.by_ref().take(n) {
                // Readers wake for what was added, and for a stream or group that went (a
                // blocked group reader then answers that its group or stream is gone, as Redis
                // does).
                let destroyed = destroyed_groups(entry, &applied);
                let touched = entry
                    .records
                    .iter()
                    .zip(&applied.outcomes)
                    .filter(|(_, o)| matches!(o, Outcome::Added | Outcome::Dropped(true)))
                    .map(|(r, _)| (r.db, &r.topic))
                    .chain(destroyed.iter().map(|(db, key)| (*db, key)));
                self.waiters.wake(entry, touched);
                if let Some(event) = session_api::event_of(entry) {
                    let _ = self.session_events.send(event);
                }
                mine.push(applied);
            }
            answers.extend(reply.and_then(|r| r.answered(mine)));
        }
        self.relay.send(answers);
        Ok(())
    }

    /// The timer thread: every `timer_tick_ms`, proposes the command of each deadline that
    /// has passed (`timers::due`), one at a time, waiting for each to apply; stops when the
    /// engine shuts down.
    fn timer_loop(&self, stop: mpsc::Receiver<()>) {
        let tick = Duration::from_millis(self.config.timer_tick_ms.max(1));
        let mut retention_checked = Instant::now();
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(tick) {
            // Only the leader proposes timers (a follower's proposals would be refused).
            if self.forwarding() {
                continue;
            }
            let now = self.now_ms();
            let (oldest, session_deadline) = {
                let state = self.lock_state();
                (
                    state.oldest_producer_ms(),
                    state.sessions.next_deadline_ms(),
                )
            };
            let mut due = timers::due(now, oldest, self.config.producer_ttl_ms, session_deadline);
            let check_every = Duration::from_millis(self.config.retention_check_ms);
            if retention_checked.elapsed() >= check_every {
                retention_checked = Instant::now();
                match self.retention_point(now.saturating_sub(self.config.retention_ms)) {
                    Ok(Some(index)) => due.push(TimerCommand::RetainFrom { index }),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "retention check failed"),
                }
            }
            // Wills first: a session whose Will is due waits for it before it may expire.
            let wills = self.lock_state().sessions.wills_due(now);
            for (client, will) in wills {
                if let Err(e) = self.propose_will(client, &will) {
                    tracing::warn!(error = %e, "publishing a will failed");
                    if matches!(e, EngineError::ShuttingDown) {
                        return;
                    }
                }
            }
            for due in due {
                let (bytes, records) = timer_entry(&due);
                match self.propose(|p| Ok(Some((EntryKind::Command, bytes, records, p.term)))) {
                    Ok(Some(reply)) => {
                        let _ = reply.blocking_recv();
                    }
                    Ok(None) => {}
                    // Leadership moved on since the check: the next leader's timers act.
                    Err(EngineError::NotLeader { .. }) => break,
                    Err(_) => return, // shutting down, or the log failed
                }
            }
            if let Err(e) = self.declare_lost_nodes() {
                if matches!(e, EngineError::ShuttingDown) {
                    return;
                }
                tracing::debug!(error = %e, "declaring a node's connections lost");
            }
        }
    }

    /// Leader of a group: the nodes holding MQTT sessions that it has not heard from for
    /// `session_node_lost_ms`, or that left the group, have their connections declared lost
    /// (their sessions close, their Wills go out). A node that was only cut off follows: its
    /// broker disconnects the connections whose sessions it no longer holds.
    fn declare_lost_nodes(&self) -> Result<()> {
        // A single node hears from no other node: a session another node's connection holds
        // closes only when a broker says so (`sessions_lost`), as before it was a group of one.
        if self.config.cluster.is_none() {
            return Ok(());
        }
        let Some(status) = self.raft_status() else {
            return Ok(());
        };
        if status.role != crate::raft::Role::Leader {
            return Ok(());
        }
        let me = self.config.node_id;
        let holding: std::collections::BTreeSet<u64> = self
            .lock_state()
            .sessions
            .by_client
            .values()
            .filter(|s| s.disconnected_ms.is_none())
            .filter_map(|s| s.owner.map(|o| o.node))
            .filter(|n| *n != me)
            .collect();
        for node in holding {
            let silent = status.silent_ms.iter().find(|(p, _)| *p == node);
            if silent.is_some_and(|(_, ms)| *ms < self.config.session_node_lost_ms) {
                continue;
            }
            tracing::info!(node, "declaring a node's MQTT connections lost");
            let command = session_command::SessionCommand {
                client: Bytes::new(),
                op: session_command::SessionOp::Lost {
                    node,
                    except_boot: 0,
                },
                epoch: None,
            };
            let mut bytes = vec![COMMAND_VERSION, CommandTag::Session as u8];
            session_command::encode(&command, &mut bytes);
            let bytes = Bytes::from(bytes);
            if let Some(reply) =
                self.propose(|p| Ok(Some((EntryKind::Command, bytes, Vec::new(), p.term))))?
            {
                reply
                    .blocking_recv()
                    .map_err(|_| EngineError::ShuttingDown)??;
            }
        }
        Ok(())
    }

    /// Proposes the publication of `client`'s Will: one entry with the Timer command and the
    /// Will's message (an auto ID on its topic, field `payload`, its properties), so the
    /// message and the clearing of the Will apply together.
    fn propose_will(&self, client: Bytes, will: &session_command::Will) -> Result<()> {
        let mut bytes = vec![COMMAND_VERSION, CommandTag::Timer as u8];
        TimerCommand::PublishWill { client }.encode(&mut bytes);
        let bytes = Bytes::from(bytes);
        let reply = self.propose(|p| {
            let key: TopicKey = (0, will.topic.clone());
            let (last, _) = p.view_of(&self.store, &key);
            let record = SubRecord {
                op: RecordOp::Message,
                db: 0,
                topic: will.topic.clone(),
                id: resolve(IdSpec::Auto, last, p.last_ts)?,
                properties: will.properties.clone(),
                fields: vec![(Bytes::from_static(b"payload"), will.payload.clone())],
                ..SubRecord::default()
            };
            Ok(Some((EntryKind::Command, bytes, vec![record], p.term)))
        })?;
        if let Some(reply) = reply {
            reply
                .blocking_recv()
                .map_err(|_| EngineError::ShuttingDown)??;
        }
        Ok(())
    }

    /// The first applied log index stamped at or after `cutoff_ms`, if retention would move
    /// past what it already removed (leader timestamps never go back, so a binary search).
    fn retention_point(&self, cutoff_ms: u64) -> Result<Option<LogIndex>> {
        let log = self.store.log();
        let applied = self.applied.load(Ordering::Acquire);
        let done = self.lock_state().retained_from.max(log.first_index());
        let (mut lo, mut hi) = (done, applied + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if log.entry(mid)?.timestamp_ms < cutoff_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // Never the whole log: the newest entry (at least the term's no-op) stays.
        let index = lo.min(applied);
        Ok((index > done).then_some(index))
    }

    /// Removes the log segments retention no longer needs: below what it applied, and below
    /// the entries after `base`, the snapshot the store's checkpoint needs (its journal replays
    /// them). The store never deletes past its own checkpoint either.
    fn delete_retained(&self, base: LogIndex) {
        let retained_from = self.lock_state().retained_from;
        let upto = retained_from.min(base + 1);
        if upto > self.store.log().first_index() {
            match self.store.delete_before(upto) {
                // In a group the Raft core forgets those entries too: a follower that still
                // needs them can no longer be sent them.
                Ok(_) => {
                    if let Some(c) = self.cluster.get() {
                        c.handle.event(crate::raft::Event::LogCompacted {
                            first_index: self.store.log().first_index(),
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "removing retained segments failed"),
            }
        }
    }

    /// The db-0 topics any of `filters` matches, each once, from the topic index brought up to
    /// date first: with the topics created and dropped since, or rebuilt when the store no
    /// longer remembers them all.
    fn matching_topics(&self, filters: &[&[u8]]) -> std::collections::BTreeSet<Bytes> {
        let mut cached = self.topic_index.lock().unwrap_or_else(|p| p.into_inner());
        let caught_up = match cached.as_mut() {
            Some((version, index)) => match self.store.topic_changes_since(*version) {
                Some((now, changes)) => {
                    for (_, key, created) in changes.into_iter().filter(|c| c.0 == 0) {
                        if created {
                            index.insert(key);
                        } else {
                            index.remove(&key);
                        }
                    }
                    *version = now;
                    true
                }
                None => false,
            },
            None => false,
        };
        if !caught_up {
            let version = self.store.topic_version();
            let index = topic_index::TopicIndex::build(
                self.store
                    .topics()
                    .into_iter()
                    .filter(|t| t.db == 0)
                    .map(|t| t.key),
            );
            *cached = Some((version, index));
        }
        let Some((_, index)) = cached.as_ref() else {
            return Default::default();
        };
        filters.iter().flat_map(|f| index.matching(f)).collect()
    }

    /// The proposer's clock now: never behind any command's timestamp.
    fn now_ms(&self) -> u64 {
        self.lock_proposer().last_ts.max((self.config.clock)())
    }

    fn lock_state(&self) -> MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Snapshot of the engine state at the store's dispatch point, then the store's dispatch
    /// checkpoint at the same index, then older snapshots removed. Called by the applier (or
    /// after it stopped), so the dispatch point does not move meanwhile.
    fn checkpoint(&self) -> Result<()> {
        let index =
            replica::checkpoint_state(self.storage.as_ref(), &self.root, &self.store, &self.state)?;
        self.delete_retained(index);
        Ok(())
    }
}
