//! Transactions (MULTI/EXEC) and the single-operation path every write of the engine's API
//! takes: an operation is plain data ([`TxOp`]), built into sub-records and a command under
//! the proposer lock, and its answer ([`TxAnswer`]) made from what apply did.
//!
//! A transaction is **one log entry** (command tag `Batch`, see `batch.rs`): its operations
//! are built in order against the leader view, each seeing the ones before it (a second XADD
//! resolves its ID above the first), and applied in order, part by part, each command's
//! error in its own slot and nothing rolled back. A [`TxOp::Read`] marks where the caller
//! reads: the applier stops there, before the next part, until the caller has read
//! ([`Step::Read`]), so a read in a transaction sees the writes before it and none after.
//! WATCH is checked when the transaction is proposed ([`Watch`]).
//!
//! This module builds and answers; it never applies (that is `batch.rs` and `state.rs`).

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::access::Principal;
use super::group_api::{AutoClaimed, GroupEntry};
use super::group_command::{self, Claim, GroupCommand, GroupOp, GroupStart, ReadFrom};
use super::groups::{Claimed, GroupOutcome};
use super::{
    AppendRequest, Applied, COMMAND_VERSION, CommandTag, Engine, EngineError, IdSpec, Proposer,
    Result, RetainEffect, TopicKey, Trim, check_db, command_with_producer, resolve,
};
use crate::store::{EntryKind, MessageStore, Outcome, RecordOp, StreamId, SubRecord};

/// One operation of a transaction (or of a single engine call).
#[derive(Debug, Clone)]
pub enum TxOp {
    /// XADD ([`Engine::append`]). A producer sequence is refused inside a transaction.
    Append(AppendRequest),
    /// XDEL.
    Delete {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// IDs.
        ids: Vec<StreamId>,
    },
    /// XTRIM.
    Trim {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// How.
        trim: Trim,
    },
    /// DEL / UNLINK.
    Drop {
        /// Database.
        db: u8,
        /// Streams.
        keys: Vec<Bytes>,
    },
    /// FLUSHDB (`Some(db)`) / FLUSHALL (`None`): every stream there at this point of the log.
    Flush {
        /// The database, or all.
        db: Option<u8>,
    },
    /// XSETID.
    SetId {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// New last ID.
        id: StreamId,
        /// ENTRIESADDED.
        entries_added: Option<u64>,
        /// MAXDELETEDID.
        max_deleted: Option<StreamId>,
    },
    /// A consumer-group command.
    Group(GroupTx),
    /// The caller reads here (transactions only): apply stops before the next part until it
    /// has.
    Read,
}

/// The consumer-group operations (XGROUP, XREADGROUP, XACK, XCLAIM, XAUTOCLAIM).
#[derive(Debug, Clone)]
pub enum GroupTx {
    /// XGROUP CREATE.
    Create {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// Group.
        group: Bytes,
        /// Where it starts.
        start: GroupStart,
        /// MKSTREAM.
        mkstream: bool,
        /// ENTRIESREAD (`None`: unknown).
        entries_read: Option<u64>,
    },
    /// XGROUP DESTROY.
    Destroy {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// Group.
        group: Bytes,
    },
    /// XGROUP SETID.
    SetId {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// Group.
        group: Bytes,
        /// Where it goes on.
        start: GroupStart,
        /// ENTRIESREAD.
        entries_read: Option<u64>,
    },
    /// XGROUP CREATECONSUMER.
    CreateConsumer {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// Group.
        group: Bytes,
        /// Consumer.
        consumer: Bytes,
    },
    /// XGROUP DELCONSUMER.
    DeleteConsumer {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// Group.
        group: Bytes,
        /// Consumer.
        consumer: Bytes,
    },
    /// XREADGROUP (never blocks here).
    Read {
        /// Database.
        db: u8,
        /// Group.
        group: Bytes,
        /// Consumer.
        consumer: Bytes,
        /// Streams and where each reads from.
        streams: Vec<(Bytes, ReadFrom)>,
        /// COUNT (0: no limit).
        count: u64,
        /// NOACK.
        noack: bool,
    },
    /// XACK.
    Ack {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// Group.
        group: Bytes,
        /// IDs.
        ids: Vec<StreamId>,
    },
    /// XCLAIM.
    Claim {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// Group.
        group: Bytes,
        /// What and how.
        claim: Claim,
    },
    /// XAUTOCLAIM.
    AutoClaim {
        /// Database.
        db: u8,
        /// Stream.
        key: Bytes,
        /// Group.
        group: Bytes,
        /// Consumer.
        consumer: Bytes,
        /// Minimum idle time (ms).
        min_idle_ms: u64,
        /// Where the scan starts.
        start: StreamId,
        /// COUNT.
        count: u64,
        /// JUSTID.
        justid: bool,
    },
}

/// What an operation answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxAnswer {
    /// XADD: the ID (`None`: NOMKSTREAM and no stream).
    Id(Option<StreamId>),
    /// XDEL, XTRIM, DEL, XACK, XGROUP DELCONSUMER: how many.
    Count(u64),
    /// XSETID, XGROUP CREATE / SETID, FLUSHDB.
    Done,
    /// XGROUP DESTROY / CREATECONSUMER.
    Bool(bool),
    /// XREADGROUP: the streams served, in order (none: Redis's nil).
    Streams(Vec<(Bytes, Vec<GroupEntry>)>),
    /// XCLAIM.
    Entries(Vec<GroupEntry>),
    /// XAUTOCLAIM.
    AutoClaimed(AutoClaimed),
    /// A read slot: the caller read there.
    Read,
}

/// A key as WATCH saw it: EXEC proceeds only if it is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    db: u8,
    key: Bytes,
    version: Option<[u64; 3]>,
    /// The store's topic-set version then: a key missing then and now may have been created
    /// and dropped between.
    topics_at: u64,
}

impl Watch {
    /// The database.
    pub fn db(&self) -> u8 {
        self.db
    }

    /// The key.
    pub fn key(&self) -> &Bytes {
        &self.key
    }
}

/// A step of a transaction being applied.
#[derive(Debug)]
pub enum Step {
    /// Apply has reached the next [`TxOp::Read`]: read now, then drop the [`Resume`].
    Read(Resume),
    /// Applied: one answer per operation, in order.
    Done(Vec<Result<TxAnswer>>),
}

/// Holds the applier at a read of a transaction; dropping it lets apply go on.
#[derive(Debug)]
pub struct Resume(#[allow(dead_code)] std_mpsc::SyncSender<()>);

/// How long the applier waits at a read at most (a caller that never resumes must not stop
/// the node; its later reads then see later state).
const READ_PAUSE: Duration = Duration::from_secs(10);

/// Where the applier stops for a transaction's reads: before part `k`, for each `k` listed
/// (`parts`: after the last part).
#[derive(Debug)]
pub(super) struct Pauses {
    pub(super) before: Vec<usize>,
    pub(super) tx: mpsc::UnboundedSender<Resume>,
}

impl Pauses {
    /// Stops the applier for each read before part `k`, until its reader has read.
    pub(super) fn at(&self, k: usize) {
        for _ in self.before.iter().filter(|b| **b == k) {
            let (resume, wait) = std_mpsc::sync_channel(1);
            if self.tx.send(Resume(resume)).is_err() {
                return; // the reader is gone
            }
            if let Err(std_mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(READ_PAUSE) {
                tracing::warn!("a transaction's read did not finish in time; apply goes on");
            }
        }
    }
}

/// How an operation's answer is made, decided when it was built.
#[derive(Debug)]
enum Slot {
    /// Answered when built (refused, or nothing to log).
    Early(Result<TxAnswer>),
    /// Part `part` of the entry: answered from what applying it did.
    Part {
        part: usize,
        op: TxOp,
        resolved: Option<StreamId>,
    },
    /// A read slot.
    Read,
}

/// A transaction proposed and being applied: [`Exec::next`] until [`Step::Done`].
#[derive(Debug)]
pub struct Exec<'a> {
    engine: &'a Engine,
    slots: Vec<Slot>,
    reads: Option<mpsc::UnboundedReceiver<Resume>>,
    reply: Option<oneshot::Receiver<Result<Applied>>>,
    /// On a follower: the operations the leader runs (those the principal may), and per
    /// slot whether it was refused here.
    forwarded: Option<(Vec<TxOp>, Vec<Option<EngineError>>)>,
}

impl Exec<'_> {
    /// The next step: a read to do now, or the answers.
    pub async fn next(&mut self) -> Result<Step> {
        if let Some((ops, refused)) = self.forwarded.take() {
            // Boxed: the leader's side of a forwarded transaction walks an `Exec` too.
            let answer =
                Box::pin(self.engine.forward(super::forward::ForwardOp::Exec(ops))).await?;
            let super::forward::ForwardAnswer::Exec(answers) = answer else {
                return Err(super::forward::unexpected());
            };
            let mut answers = answers?.into_iter();
            let merged = refused
                .into_iter()
                .map(|r| match r {
                    Some(e) => Err(e),
                    None => answers.next().unwrap_or(Err(EngineError::ShuttingDown)),
                })
                .collect();
            return Ok(Step::Done(merged));
        }
        if let Some(reads) = &mut self.reads {
            match reads.recv().await {
                Some(resume) => return Ok(Step::Read(resume)),
                None => self.reads = None,
            }
        }
        let applied = match self.reply.take() {
            Some(reply) => reply.await.map_err(|_| EngineError::ShuttingDown)??,
            None => return Err(EngineError::ShuttingDown),
        };
        let mut parts = applied.parts.into_iter().map(Some).collect::<Vec<_>>();
        let slots = std::mem::take(&mut self.slots);
        let answers = slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Early(answer) => answer,
                Slot::Read => Ok(TxAnswer::Read),
                Slot::Part { part, op, resolved } => {
                    match parts.get_mut(part).and_then(Option::take) {
                        Some(applied) => self.engine.answer(&op, resolved, applied),
                        None => Err(EngineError::ShuttingDown),
                    }
                }
            })
            .collect();
        Ok(Step::Done(answers))
    }
}

/// An operation built: its command bytes and sub-records.
pub(super) struct Built {
    pub(super) command: Bytes,
    pub(super) records: Vec<SubRecord>,
    pub(super) resolved: Option<StreamId>,
}

impl Engine {
    /// WATCH: the key as applied now. Writes proposed before and applied after count as
    /// changes (they were not seen).
    pub fn watch(&self, db: u8, key: Bytes) -> Watch {
        let topics_at = self.inner.store.topic_version();
        let version = self.inner.store.topic(db, &key).map(|t| version_of(&t));
        Watch {
            db,
            key,
            version,
            topics_at,
        }
    }

    /// EXEC: proposes `ops` as one log entry and returns the handle that walks it through
    /// apply; `None` (nothing logged) when a watched key changed since WATCH, or has writes
    /// still in flight. With `principal`, each operation is checked first: a refused one is
    /// that slot's `NoPermission` and changes nothing.
    ///
    /// On a follower, a transaction without reads or WATCH is run by the leader (refused
    /// operations stay refused here); one with them answers `NotLeader`.
    pub fn exec(
        &self,
        ops: Vec<TxOp>,
        watches: &[Watch],
        principal: Option<&Principal>,
    ) -> Result<Option<Exec<'_>>> {
        let reads = ops.iter().any(|op| matches!(op, TxOp::Read));
        if !reads && watches.is_empty() && self.inner.forwarding() {
            let mut refused = Vec::with_capacity(ops.len());
            let mut sent = Vec::with_capacity(ops.len());
            for op in ops {
                let ok = match principal {
                    Some(principal) => check(principal, &op, &|db| self.topics(db, b"*")),
                    None => Ok(()),
                };
                match ok {
                    Ok(()) => {
                        refused.push(None);
                        sent.push(op);
                    }
                    Err(e) => refused.push(Some(e)),
                }
            }
            return Ok(Some(Exec {
                engine: self,
                slots: Vec::new(),
                reads: None,
                reply: None,
                forwarded: Some((sent, refused)),
            }));
        }
        self.exec_here(ops, watches, principal)
    }

    /// [`Engine::exec`] on this node.
    pub(super) fn exec_here(
        &self,
        ops: Vec<TxOp>,
        watches: &[Watch],
        principal: Option<&Principal>,
    ) -> Result<Option<Exec<'_>>> {
        let reads = ops.iter().any(|op| matches!(op, TxOp::Read));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut slots = Vec::with_capacity(ops.len());
        let mut watch_failed = false;
        let reply = self.inner.propose_batch(|p, next| {
            if watches.iter().any(|w| changed(p, &self.inner.store, w)) {
                watch_failed = true;
                return Ok(None);
            }
            let mut before = Vec::new();
            let mut parts: Vec<(Bytes, Vec<SubRecord>)> = Vec::new();
            for op in ops {
                if matches!(op, TxOp::Read) {
                    before.push(parts.len());
                    slots.push(Slot::Read);
                    continue;
                }
                // An XSETID that apply would refuse is refused here, where that can be told:
                // noted as done, it would lift the view, and a later `*` in the transaction
                // would resolve above an ID the stream never takes.
                if let Some(refused) = set_id_refusal(p, &self.inner.store, &op, &parts) {
                    slots.push(Slot::Early(Err(EngineError::SetId(refused))));
                    continue;
                }
                let built = permitted(principal, &op, p, &self.inner.store)
                    .and_then(|()| self.build(p, &op, true));
                match built {
                    Ok(Some(b)) => {
                        p.note(&self.inner.store, &b.records, next);
                        slots.push(Slot::Part {
                            part: parts.len(),
                            op,
                            resolved: b.resolved,
                        });
                        parts.push((b.command, b.records));
                    }
                    Ok(None) => slots.push(Slot::Early(Ok(nothing_logged(&op)))),
                    Err(e) => slots.push(Slot::Early(Err(e))),
                }
            }
            let (command, records) = super::batch::encode(parts);
            Ok(Some((command, records, Pauses { before, tx })))
        })?;
        if watch_failed {
            return Ok(None);
        }
        let Some(reply) = reply else {
            return Err(EngineError::ShuttingDown);
        };
        Ok(Some(Exec {
            engine: self,
            slots,
            reads: reads.then_some(rx),
            reply: Some(reply),
            forwarded: None,
        }))
    }

    /// One operation on its own, in its own entry (a [`TxOp::Read`] answers at once).
    pub async fn run(&self, op: TxOp) -> Result<TxAnswer> {
        self.run_op(op).await
    }

    /// One operation in its own entry: the path of every write but XADD's. On a follower,
    /// the leader runs it ([`super::forward`]).
    pub(super) async fn run_op(&self, op: TxOp) -> Result<TxAnswer> {
        if self.inner.forwarding() {
            return match self.forward(super::forward::ForwardOp::Run(op)).await? {
                super::forward::ForwardAnswer::Run(answer) => answer,
                _ => Err(super::forward::unexpected()),
            };
        }
        self.run_op_here(op).await
    }

    /// [`Engine::run_op`] on this node.
    pub(super) async fn run_op_here(&self, op: TxOp) -> Result<TxAnswer> {
        let mut resolved = None;
        let reply = self.inner.propose(|p| {
            let Some(b) = self.build(p, &op, false)? else {
                return Ok(None);
            };
            resolved = b.resolved;
            Ok(Some((EntryKind::Command, b.command, b.records, p.term)))
        })?;
        let Some(reply) = reply else {
            return Ok(nothing_logged(&op));
        };
        let applied = reply.await.map_err(|_| EngineError::ShuttingDown)??;
        self.answer(&op, resolved, applied)
    }

    /// Builds `op` under the proposer lock: its command and sub-records, `None` when there
    /// is nothing to log (NOMKSTREAM without a stream). `in_tx`: a part of a transaction.
    fn build(&self, p: &mut Proposer, op: &TxOp, in_tx: bool) -> Result<Option<Built>> {
        let plain = |tag: CommandTag, records: Vec<SubRecord>| {
            Ok(Some(Built {
                command: Bytes::from(vec![COMMAND_VERSION, tag as u8]),
                records,
                resolved: None,
            }))
        };
        match op {
            TxOp::Append(req) => {
                if in_tx && req.producer.is_some() {
                    return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                        "producer sequences are not available inside a transaction",
                    )));
                }
                self.build_append(p, req)
            }
            TxOp::Delete { db, key, ids } => {
                check_db(*db)?;
                let records = ids
                    .iter()
                    .map(|id| SubRecord {
                        op: RecordOp::Delete,
                        db: *db,
                        topic: key.clone(),
                        id: *id,
                        ..SubRecord::default()
                    })
                    .collect();
                plain(CommandTag::Delete, records)
            }
            TxOp::Trim { db, key, trim } => {
                check_db(*db)?;
                plain(CommandTag::Trim, vec![trim.record(*db, key)])
            }
            TxOp::Drop { db, keys } => {
                check_db(*db)?;
                plain(CommandTag::Drop, drops(*db, keys.iter().cloned()))
            }
            TxOp::Flush { db } => {
                let dbs = match db {
                    Some(db) => {
                        check_db(*db)?;
                        *db..*db + 1
                    }
                    None => 0..16,
                };
                let mut records = Vec::new();
                for db in dbs {
                    records.extend(drops(db, p.keys(&self.inner.store, db).into_iter()));
                }
                plain(CommandTag::Drop, records)
            }
            TxOp::SetId {
                db,
                key,
                id,
                entries_added,
                max_deleted,
            } => {
                check_db(*db)?;
                plain(
                    CommandTag::SetId,
                    vec![super::set_id_record(
                        *db,
                        key.clone(),
                        *id,
                        *entries_added,
                        *max_deleted,
                    )],
                )
            }
            TxOp::Group(g) => {
                let (commands, records) = g.commands();
                for c in &commands {
                    check_db(c.db)?;
                }
                let mut bytes = vec![COMMAND_VERSION, CommandTag::Group as u8];
                group_command::encode(&commands, &mut bytes);
                Ok(Some(Built {
                    command: Bytes::from(bytes),
                    records,
                    resolved: None,
                }))
            }
            TxOp::Read => Ok(None),
        }
    }

    /// XADD's entry: the ID resolved against the leader view, the size and retained limits.
    pub(super) fn build_append(
        &self,
        p: &mut Proposer,
        req: &AppendRequest,
    ) -> Result<Option<Built>> {
        self.build_append_with(p, req, req.key.clone(), req.fields.clone())
    }

    /// [`Engine::build_append`] with the request's `key` and `fields` given apart (`req.key`
    /// and `req.fields` are not read): a caller that owns the request moves them in instead of
    /// copying them.
    pub(super) fn build_append_with(
        &self,
        p: &mut Proposer,
        req: &AppendRequest,
        key: Bytes,
        fields: Vec<(Bytes, Bytes)>,
    ) -> Result<Option<Built>> {
        check_db(req.db)?;
        if fields.is_empty() {
            return Err(EngineError::NoFields);
        }
        let key: TopicKey = (req.db, key);
        let view = p.topic_view(&self.inner.store, &key);
        let last = view.last_id;
        if req.nomkstream && !view.exists {
            return Ok(None); // nothing to log: the reply is nil
        }
        let id = match (req.id, view.lowered_to) {
            // An XSETID in flight may lower the top below `last`: apply judges this ID.
            (IdSpec::Explicit(id), Some(low)) if id > low && id <= last => id,
            _ => resolve(req.id, last, p.last_ts)?,
        };
        // The trim's record names the key too: made before the key moves into the message's.
        let trim = req.trim.map(|t| t.record(req.db, &key.1));
        let record = SubRecord {
            op: RecordOp::Message,
            db: req.db,
            topic: key.1,
            id,
            message_key: req.message_key.clone(),
            properties: req.properties.clone(),
            fields,
        };
        let size = record.encoded_len();
        let limit = self.inner.config.max_message_bytes;
        if size > limit {
            return Err(EngineError::TooLarge { size, limit });
        }
        if req.retain == RetainEffect::Set {
            // Checked against applied state: appends in flight may pass it by their own size.
            let limit = self.inner.config.max_retained_bytes;
            let state = self.inner.lock_state();
            let topic = (req.db, record.topic.clone());
            let old = state
                .retained
                .get(&topic)
                .map_or(0, |r| r.size(&record.topic));
            let new = super::state::retained_size(&record.topic, &req.properties, &record.fields);
            if state.retained_bytes - old.min(state.retained_bytes) + new > limit {
                return Err(EngineError::RetainedLimit { limit });
            }
        }
        let mut records = Vec::with_capacity(1 + usize::from(req.trim.is_some()));
        records.push(record);
        records.extend(trim);
        let tag = match req.retain {
            RetainEffect::None => CommandTag::Append,
            RetainEffect::Set => CommandTag::AppendRetain,
            RetainEffect::Clear => CommandTag::AppendClearRetain,
        };
        Ok(Some(Built {
            command: command_with_producer(tag, req.producer.as_ref()),
            records,
            resolved: Some(id),
        }))
    }

    /// `op`'s answer from what applying its entry (or part) did.
    fn answer(&self, op: &TxOp, resolved: Option<StreamId>, applied: Applied) -> Result<TxAnswer> {
        let outcomes = &applied.outcomes;
        let count = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
        Ok(match op {
            TxOp::Append(_) => match outcomes.first() {
                Some(Outcome::Added) => TxAnswer::Id(resolved),
                // Apply re-checks what the proposer checked; a failed check is a no-op.
                Some(Outcome::Rejected { last }) => {
                    return Err(EngineError::IdTooSmall { last: *last });
                }
                _ => TxAnswer::Id(None),
            },
            TxOp::Delete { .. } => {
                TxAnswer::Count(count(|o| u64::from(*o == Outcome::Deleted(true))))
            }
            TxOp::Trim { .. } => TxAnswer::Count(count(|o| match o {
                Outcome::Trimmed(n) => *n,
                _ => 0,
            })),
            TxOp::Drop { .. } => {
                TxAnswer::Count(count(|o| u64::from(*o == Outcome::Dropped(true))))
            }
            TxOp::Flush { .. } => TxAnswer::Done,
            TxOp::SetId { .. } => match outcomes.first() {
                Some(Outcome::IdSet(None)) => TxAnswer::Done,
                Some(Outcome::IdSet(Some(refused))) => return Err(EngineError::SetId(*refused)),
                other => return Err(failed(format!("XSETID applied as {other:?}"))),
            },
            TxOp::Group(g) => self.group_answer(g, applied.groups)?,
            TxOp::Read => TxAnswer::Read,
        })
    }

    fn group_answer(&self, g: &GroupTx, outcomes: Vec<GroupOutcome>) -> Result<TxAnswer> {
        if let GroupTx::Read { streams, .. } = g {
            return Ok(TxAnswer::Streams(self.delivered(streams, outcomes)?));
        }
        let outcome = match outcomes.into_iter().next() {
            Some(GroupOutcome::Error(e)) => return Err(e.into()),
            Some(o) => o,
            None => return Err(EngineError::ShuttingDown),
        };
        Ok(match (g, outcome) {
            (GroupTx::Create { .. } | GroupTx::SetId { .. }, GroupOutcome::Done) => TxAnswer::Done,
            (GroupTx::Destroy { .. } | GroupTx::CreateConsumer { .. }, GroupOutcome::Bool(b)) => {
                TxAnswer::Bool(b)
            }
            (GroupTx::DeleteConsumer { .. } | GroupTx::Ack { .. }, GroupOutcome::Count(n)) => {
                TxAnswer::Count(n)
            }
            (GroupTx::Claim { claim, .. }, GroupOutcome::Claimed(c)) => {
                TxAnswer::Entries(self.claimed_entries(&c.entries, claim.justid)?)
            }
            (
                GroupTx::AutoClaim { justid, .. },
                GroupOutcome::Claimed(Claimed {
                    next,
                    entries,
                    deleted,
                }),
            ) => TxAnswer::AutoClaimed(AutoClaimed {
                next,
                entries: self.claimed_entries(&entries, *justid)?,
                deleted,
            }),
            (_, other) => return Err(failed(format!("group command answered {other:?}"))),
        })
    }
}

impl GroupTx {
    /// The group commands it logs, and its sub-records (a Create for MKSTREAM).
    fn commands(&self) -> (Vec<GroupCommand>, Vec<SubRecord>) {
        let one = |db: u8, key: &Bytes, group: &Bytes, op: GroupOp| {
            vec![GroupCommand {
                db,
                key: key.clone(),
                group: group.clone(),
                op,
            }]
        };
        let commands = match self.clone() {
            GroupTx::Create {
                db,
                key,
                group,
                start,
                mkstream,
                entries_read,
            } => {
                let records = if mkstream {
                    vec![SubRecord {
                        op: RecordOp::Create,
                        db,
                        topic: key.clone(),
                        ..SubRecord::default()
                    }]
                } else {
                    Vec::new()
                };
                let op = GroupOp::Create {
                    start,
                    entries_read,
                };
                return (one(db, &key, &group, op), records);
            }
            GroupTx::Destroy { db, key, group } => one(db, &key, &group, GroupOp::Destroy),
            GroupTx::SetId {
                db,
                key,
                group,
                start,
                entries_read,
            } => one(
                db,
                &key,
                &group,
                GroupOp::SetId {
                    start,
                    entries_read,
                },
            ),
            GroupTx::CreateConsumer {
                db,
                key,
                group,
                consumer,
            } => one(db, &key, &group, GroupOp::CreateConsumer { consumer }),
            GroupTx::DeleteConsumer {
                db,
                key,
                group,
                consumer,
            } => one(db, &key, &group, GroupOp::DeleteConsumer { consumer }),
            GroupTx::Read {
                db,
                group,
                consumer,
                streams,
                count,
                noack,
            } => streams
                .into_iter()
                .map(|(key, from)| GroupCommand {
                    db,
                    key,
                    group: group.clone(),
                    op: GroupOp::Deliver {
                        consumer: consumer.clone(),
                        from,
                        count,
                        noack,
                    },
                })
                .collect(),
            GroupTx::Ack {
                db,
                key,
                group,
                ids,
            } => one(db, &key, &group, GroupOp::Ack { ids }),
            GroupTx::Claim {
                db,
                key,
                group,
                claim,
            } => one(db, &key, &group, GroupOp::Claim(claim)),
            GroupTx::AutoClaim {
                db,
                key,
                group,
                consumer,
                min_idle_ms,
                start,
                count,
                justid,
            } => one(
                db,
                &key,
                &group,
                GroupOp::AutoClaim {
                    consumer,
                    min_idle_ms,
                    start,
                    count: count.clamp(1, super::MAX_AUTOCLAIM_COUNT),
                    justid,
                },
            ),
        };
        (commands, Vec::new())
    }

    /// The keys it touches.
    fn keys(&self) -> Vec<&Bytes> {
        match self {
            GroupTx::Read { streams, .. } => streams.iter().map(|(k, _)| k).collect(),
            GroupTx::Create { key, .. }
            | GroupTx::Destroy { key, .. }
            | GroupTx::SetId { key, .. }
            | GroupTx::CreateConsumer { key, .. }
            | GroupTx::DeleteConsumer { key, .. }
            | GroupTx::Ack { key, .. }
            | GroupTx::Claim { key, .. }
            | GroupTx::AutoClaim { key, .. } => vec![key],
        }
    }
}

/// What may `principal` do: publish for writes, subscribe for group commands (and publish
/// for MKSTREAM); FLUSHDB/FLUSHALL needs publish on every stream it drops.
fn permitted(
    principal: Option<&Principal>,
    op: &TxOp,
    p: &Proposer,
    store: &MessageStore,
) -> Result<()> {
    match principal {
        Some(principal) => check(principal, op, &|db| p.keys(store, db)),
        None => Ok(()),
    }
}

/// Whether `principal` may run `op`; `keys(db)` lists a database's streams (FLUSHDB).
pub(super) fn check(
    principal: &Principal,
    op: &TxOp,
    keys: &dyn Fn(u8) -> Vec<Bytes>,
) -> Result<()> {
    match op {
        TxOp::Append(req) => principal.check_publish(&req.key),
        TxOp::Delete { key, .. } | TxOp::Trim { key, .. } | TxOp::SetId { key, .. } => {
            principal.check_publish(key)
        }
        TxOp::Drop { keys, .. } => keys.iter().try_for_each(|k| principal.check_publish(k)),
        TxOp::Flush { db } => {
            let dbs = db.map_or(0..16, |d| d..d.saturating_add(1));
            dbs.flat_map(keys)
                .try_for_each(|k| principal.check_publish(&k))
        }
        TxOp::Group(g) => {
            for key in g.keys() {
                principal.check_subscribe(key)?;
            }
            match g {
                GroupTx::Create {
                    key,
                    mkstream: true,
                    ..
                } => principal.check_publish(key),
                _ => Ok(()),
            }
        }
        TxOp::Read => Ok(()),
    }
}

/// The answer of an operation that logged nothing.
fn nothing_logged(op: &TxOp) -> TxAnswer {
    match op {
        TxOp::Read => TxAnswer::Read,
        _ => TxAnswer::Id(None),
    }
}

fn drops(db: u8, keys: impl Iterator<Item = Bytes>) -> Vec<SubRecord> {
    keys.map(|key| SubRecord {
        op: RecordOp::Drop,
        db,
        topic: key,
        ..SubRecord::default()
    })
    .collect()
}

/// What WATCH compares: the incarnation and how far the stream was appended, trimmed and
/// deleted — each only grows, so a change never looks like no change. Group commands and
/// XSETID leave it alone, as they leave Redis's watched keys alone.
/// What WATCH compares: the incarnation, entries added and entries live. Redis marks a key
/// modified only when a command adds or removes a live entry, so a trim that drops only
/// XDEL tombstones (first live offset and tombstone count move, nothing visible does)
/// leaves a WATCH intact, as it does there.
fn version_of(t: &crate::store::Topic) -> [u64; 3] {
    [t.incarnation, t.len, t.live_len()]
}

/// Whether `w`'s key changed since WATCH: applied state differs, or writes to it are still
/// in flight (they were proposed before EXEC and will apply before it).
fn changed(p: &Proposer, store: &MessageStore, w: &Watch) -> bool {
    if p.view.contains_key(&(w.db, w.key.clone())) {
        return true;
    }
    let now = store.topic(w.db, &w.key).map(|t| version_of(&t));
    if now != w.version {
        return true;
    }
    // Missing then and now: created and dropped between? (Not remembered: assume so.)
    now.is_none()
        && store
            .topic_changes_since(w.topics_at)
            .is_none_or(|(_, changes)| {
                changes
                    .iter()
                    .any(|(db, key, _)| *db == w.db && *key == w.key)
            })
}

fn failed(why: String) -> EngineError {
    EngineError::Store(crate::store::StoreError::Failed(std::sync::Arc::from(why)))
}

/// What applying XSETID `op` would refuse, when the stream's state as of it can be told
/// exactly: the applied stream plus the transaction's parts built so far (`parts`), with no
/// other entry in flight on the key and no deletion or trim among those parts. `None`: it
/// would be accepted, or that cannot be told here (apply decides, as for a lone XSETID).
fn set_id_refusal(
    p: &super::Proposer,
    store: &MessageStore,
    op: &TxOp,
    parts: &[(Bytes, Vec<SubRecord>)],
) -> Option<crate::store::SetIdRefused> {
    use crate::store::SetIdRefused;
    let TxOp::SetId {
        db,
        key,
        id,
        entries_added,
        ..
    } = op
    else {
        return None;
    };
    let topic_key = (*db, key.clone());
    // Another entry in flight on the key (the view had it before this transaction).
    let before = match p.undo.as_ref().and_then(|u| u.get(&topic_key)) {
        Some(was) => was.is_some(),
        None => p.view.contains_key(&topic_key),
    };
    if before {
        return None;
    }
    let (mut exists, mut len, mut top, mut last) = match store.topic(*db, key) {
        Some(t) if !t.dropped => {
            let len = t.live_len();
            let top = if len == 0 {
                None
            } else {
                let newest = store.read_queue_raw(&t, t.len.saturating_sub(1), 1).ok()?;
                match newest.first() {
                    // The newest queue entry may be deleted: then the top is not known here.
                    Some(e) if !e.is_deleted() => Some(e.id),
                    _ => return None,
                }
            };
            (true, len, top, t.last_id)
        }
        _ => (false, 0, None, StreamId::default()),
    };
    for r in parts
        .iter()
        .flat_map(|(_, records)| records)
        .filter(|r| r.db == *db && r.topic == *key)
    {
        match r.op {
            RecordOp::Message if !exists || r.id > last => {
                exists = true;
                len += 1;
                top = Some(r.id);
                last = r.id;
            }
            RecordOp::Message => {}
            RecordOp::Drop => (exists, len, top, last) = (false, 0, None, StreamId::default()),
            RecordOp::Create if !exists => {
                (exists, len, top, last) = (true, 0, None, StreamId::default())
            }
            RecordOp::Create => {}
            // Accepted (or not told) earlier: the length and the top item stay.
            RecordOp::SetId if exists => last = r.id,
            RecordOp::SetId => {}
            _ => return None,
        }
    }
    if !exists || len == 0 {
        return None;
    }
    if top.is_some_and(|t| *id < t) {
        return Some(SetIdRefused::IdTooSmall);
    }
    if entries_added.is_some_and(|a| a < len) {
        return Some(SetIdRefused::AddedTooSmall);
    }
    None
}
