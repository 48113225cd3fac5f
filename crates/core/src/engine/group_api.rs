//! The engine's consumer-group operations: XGROUP, XREADGROUP, XACK, XCLAIM, XAUTOCLAIM as
//! commands through the log (their replies are what apply decided), and XPENDING and
//! XINFO GROUPS / CONSUMERS as reads of the applied state.
//!
//! This module only builds commands and shapes replies; what a command does is `groups.rs`'s,
//! and it never changes group state itself.

use bytes::Bytes;

use super::group_command::{Claim, GroupStart, ReadFrom};
use super::groups::{
    ConsumerInfo, EntryRef, GroupError, GroupInfo, GroupOutcome, PendingEntry, PendingSummary,
    Streams,
};
use super::transaction::{GroupTx, TxAnswer, TxOp};
use super::{Engine, EngineError, Message, Result, StoreStreams, TopicKey};
use crate::store::StreamId;

/// An entry a group read or claim delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Stream ID.
    pub id: StreamId,
    /// The message; `None` when it is gone (a history read of a deleted entry) or not asked
    /// for (JUSTID).
    pub message: Option<Message>,
}

/// What XAUTOCLAIM returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AutoClaimed {
    /// Where the next call starts; 0-0 when the scan reached the end.
    pub next: StreamId,
    /// Entries claimed (without messages with JUSTID).
    pub entries: Vec<GroupEntry>,
    /// Pending entries whose message was gone: removed from the pending list.
    pub deleted: Vec<StreamId>,
}

/// XPENDING's extended form: which pending entries to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingQuery {
    /// Smallest ID (inclusive).
    pub start: StreamId,
    /// Largest ID (inclusive).
    pub end: StreamId,
    /// At most this many.
    pub count: u64,
    /// Only this consumer's.
    pub consumer: Option<Bytes>,
    /// IDLE: only entries idle at least this long (ms).
    pub min_idle_ms: Option<u64>,
}

impl Engine {
    /// A group operation in its own entry.
    async fn group_op(&self, op: GroupTx) -> Result<TxAnswer> {
        self.run_op(TxOp::Group(op)).await
    }

    /// XGROUP CREATE key group (ID | `$`) [MKSTREAM] [ENTRIESREAD n]: `$` is the stream's last
    /// ID when the command applies; `entries_read` `None` is Redis's -1 (unknown).
    pub async fn group_create(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        start: GroupStart,
        mkstream: bool,
        entries_read: Option<u64>,
    ) -> Result<()> {
        let op = GroupTx::Create {
            db,
            key,
            group,
            start,
            mkstream,
            entries_read,
        };
        match self.group_op(op).await? {
            TxAnswer::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// XGROUP DESTROY: whether the group existed.
    pub async fn group_destroy(&self, db: u8, key: Bytes, group: Bytes) -> Result<bool> {
        match self.group_op(GroupTx::Destroy { db, key, group }).await? {
            TxAnswer::Bool(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    /// XGROUP SETID key group (ID | `$`) [ENTRIESREAD n].
    pub async fn group_set_id(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        start: GroupStart,
        entries_read: Option<u64>,
    ) -> Result<()> {
        let op = GroupTx::SetId {
            db,
            key,
            group,
            start,
            entries_read,
        };
        match self.group_op(op).await? {
            TxAnswer::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// XGROUP CREATECONSUMER: whether it was created.
    pub async fn consumer_create(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
    ) -> Result<bool> {
        let op = GroupTx::CreateConsumer {
            db,
            key,
            group,
            consumer,
        };
        match self.group_op(op).await? {
            TxAnswer::Bool(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    /// XGROUP DELCONSUMER: how many pending entries it had (they leave the group's list).
    pub async fn consumer_delete(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
    ) -> Result<u64> {
        let op = GroupTx::DeleteConsumer {
            db,
            key,
            group,
            consumer,
        };
        match self.group_op(op).await? {
            TxAnswer::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// XREADGROUP GROUP group consumer [COUNT count] [NOACK] STREAMS key... id...: one command
    /// for all the streams; apply decides what each delivers. Returns the streams served, in
    /// order: a `>` stream only when it had new entries, a history read always (Redis's reply;
    /// none served is its nil). `count` 0 = no limit.
    pub async fn read_group(
        &self,
        db: u8,
        group: Bytes,
        consumer: Bytes,
        streams: Vec<(Bytes, ReadFrom)>,
        count: u64,
        noack: bool,
    ) -> Result<Vec<(Bytes, Vec<GroupEntry>)>> {
        let op = GroupTx::Read {
            db,
            group,
            consumer,
            streams,
            count,
            noack,
        };
        match self.group_op(op).await? {
            TxAnswer::Streams(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// What a group read delivered, stream by stream, with the messages read from the log.
    pub(super) fn delivered(
        &self,
        streams: &[(Bytes, ReadFrom)],
        outcomes: Vec<GroupOutcome>,
    ) -> Result<Vec<(Bytes, Vec<GroupEntry>)>> {
        let mut out = Vec::new();
        for ((key, from), outcome) in streams.iter().zip(outcomes) {
            let delivered = match outcome {
                GroupOutcome::Delivered(d) => d,
                GroupOutcome::Error(e) => return Err(e.into()),
                other => return Err(unexpected_outcome(other)),
            };
            if *from == ReadFrom::New && delivered.is_empty() {
                continue;
            }
            let at: Vec<Option<EntryRef>> = delivered.iter().map(|(_, at)| *at).collect();
            let messages = self.messages_at(&at)?;
            let entries = delivered
                .into_iter()
                .zip(messages)
                .map(|((id, _), message)| GroupEntry { id, message })
                .collect();
            out.push((key.clone(), entries));
        }
        Ok(out)
    }

    /// XACK: how many of `ids` were pending (0 when the key or group does not exist).
    pub async fn ack(&self, db: u8, key: Bytes, group: Bytes, ids: Vec<StreamId>) -> Result<u64> {
        match self
            .group_op(GroupTx::Ack {
                db,
                key,
                group,
                ids,
            })
            .await?
        {
            TxAnswer::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// XCLAIM: the entries claimed, in argument order (IDs only with JUSTID). Pending entries
    /// whose message is gone leave the pending list and are not returned (Redis 7.0).
    pub async fn claim(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        claim: Claim,
    ) -> Result<Vec<GroupEntry>> {
        let op = GroupTx::Claim {
            db,
            key,
            group,
            claim,
        };
        match self.group_op(op).await? {
            TxAnswer::Entries(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    /// XAUTOCLAIM key group consumer min-idle start [COUNT count] [JUSTID]: scans the pending
    /// list from `start`, at most `count` × 10 entries, claiming up to `count`.
    #[allow(clippy::too_many_arguments)]
    pub async fn autoclaim(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
        min_idle_ms: u64,
        start: StreamId,
        count: u64,
        justid: bool,
    ) -> Result<AutoClaimed> {
        let op = GroupTx::AutoClaim {
            db,
            key,
            group,
            consumer,
            min_idle_ms,
            start,
            count,
            justid,
        };
        match self.group_op(op).await? {
            TxAnswer::AutoClaimed(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    pub(super) fn claimed_entries(
        &self,
        entries: &[EntryRef],
        justid: bool,
    ) -> Result<Vec<GroupEntry>> {
        let messages = if justid {
            vec![None; entries.len()]
        } else {
            self.messages_at(&entries.iter().copied().map(Some).collect::<Vec<_>>())?
        };
        Ok(entries
            .iter()
            .zip(messages)
            .map(|(e, message)| GroupEntry { id: e.id, message })
            .collect())
    }

    /// The messages at these log positions, in order, read from the CommitLog — so an entry
    /// deleted or trimmed since it was delivered is still returned, as Redis returned it when
    /// it was delivered (`None` in, or retention removed it: `None` out). Positions in consecutive log entries (a group read of a stream written on
    /// its own) are read from the CommitLog in one read per run, not one each.
    fn messages_at(&self, at: &[Option<EntryRef>]) -> Result<Vec<Option<Message>>> {
        let log = self.inner.store.log();
        let (first, last) = (log.first_index(), log.last_index());
        let readable = |r: &Option<EntryRef>| {
            r.filter(|r| r.log_index >= first && r.log_index <= last)
                .map(|r| r.log_index)
        };
        let mut out = Vec::with_capacity(at.len());
        let mut i = 0;
        while i < at.len() {
            let Some(from) = readable(&at[i]) else {
                out.push(None);
                i += 1;
                continue;
            };
            // A run: each position in the same log entry as the one before or the next.
            let mut j = i + 1;
            let mut to = from;
            while let Some(next) = at.get(j).and_then(readable) {
                if next != to && next != to + 1 {
                    break;
                }
                to = next;
                j += 1;
            }
            let entries = if from == to {
                vec![log.entry(from)?]
            } else {
                log.entries(from, to)?
            };
            for r in at[i..j].iter().flatten() {
                let message = entries.get((r.log_index - from) as usize).and_then(|e| {
                    e.records.get(usize::from(r.sub)).map(|rec| Message {
                        id: rec.id,
                        fields: rec.fields.clone(),
                        properties: rec.properties.clone(),
                        message_key: rec.message_key.clone(),
                        timestamp_ms: e.timestamp_ms,
                        log_index: e.index,
                        sub: r.sub,
                    })
                });
                out.push(message);
            }
            i = j;
        }
        Ok(out)
    }

    /// XPENDING key group: the summary. `NoGroup` when the key or group does not exist.
    pub fn pending_summary(&self, db: u8, key: &[u8], group: &[u8]) -> Result<PendingSummary> {
        let state = self.inner.lock_state();
        let g = state
            .groups
            .group(&(db, Bytes::copy_from_slice(key)), group)
            .ok_or(GroupError::NoGroup)?;
        Ok(g.pending_summary())
    }

    /// XPENDING key group [IDLE min] start end count [consumer]; idle times as of now.
    pub fn pending(
        &self,
        db: u8,
        key: &[u8],
        group: &[u8],
        query: &PendingQuery,
    ) -> Result<Vec<PendingEntry>> {
        let now = self.now_ms();
        let state = self.inner.lock_state();
        let g = state
            .groups
            .group(&(db, Bytes::copy_from_slice(key)), group)
            .ok_or(GroupError::NoGroup)?;
        Ok(g.pending_range(
            query.start,
            query.end,
            query.count,
            query.consumer.as_deref(),
            query.min_idle_ms,
            now,
        ))
    }

    /// XINFO GROUPS: every group of the stream, by name; `None` when the stream does not exist.
    pub fn groups_info(&self, db: u8, key: &[u8]) -> Result<Option<Vec<GroupInfo>>> {
        let Some(facts) = StoreStreams(&self.inner.store).facts(db, key)? else {
            return Ok(None);
        };
        let state = self.inner.lock_state();
        let Some(groups) = state.groups.streams.get(&(db, Bytes::copy_from_slice(key))) else {
            return Ok(Some(Vec::new()));
        };
        Ok(Some(
            groups
                .iter()
                .map(|(name, g)| g.info(name, &facts))
                .collect(),
        ))
    }

    /// Whether the stream has a live entry after the group's last delivered ID: whether a `>`
    /// read would find something (a blocked group reader logs no read that would not). False
    /// when the stream or the group is missing.
    pub fn group_has_new(&self, db: u8, key: &[u8], group: &[u8]) -> bool {
        let delivered = {
            let state = self.inner.lock_state();
            let Some(g) = state
                .groups
                .streams
                .get(&(db, Bytes::copy_from_slice(key)))
                .and_then(|groups| groups.get(group))
            else {
                return false;
            };
            g.last_id
        };
        let newest = self.read_range(
            db,
            key,
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            Some(1),
            true,
        );
        newest.is_ok_and(|m| m.first().is_some_and(|m| m.id > delivered))
    }

    /// Every consumer group as `(db, stream, info)`, in stream order, at most `limit` of
    /// them (metrics); streams whose facts cannot be read are left out.
    pub fn all_groups_info(&self, limit: usize) -> Vec<(u8, Bytes, GroupInfo)> {
        let streams: Vec<TopicKey> = {
            let state = self.inner.lock_state();
            state.groups.streams.keys().take(limit).cloned().collect()
        };
        let mut out = Vec::new();
        for (db, key) in streams {
            if out.len() >= limit {
                break;
            }
            if let Ok(Some(groups)) = self.groups_info(db, &key) {
                let room = limit - out.len();
                out.extend(groups.into_iter().take(room).map(|g| (db, key.clone(), g)));
            }
        }
        out
    }

    /// XINFO CONSUMERS: the group's consumers, by name, idle times as of now. `None` when the
    /// stream does not exist; `NoGroup` when the group does not.
    pub fn consumers_info(
        &self,
        db: u8,
        key: &[u8],
        group: &[u8],
    ) -> Result<Option<Vec<ConsumerInfo>>> {
        if self.inner.store.topic(db, key).is_none() {
            return Ok(None);
        }
        let now = self.now_ms();
        let state = self.inner.lock_state();
        let g = state
            .groups
            .group(&(db, Bytes::copy_from_slice(key)), group)
            .ok_or(GroupError::NoGroup)?;
        Ok(Some(g.consumers_info(now)))
    }

    /// The proposer's clock now (never behind any command's timestamp).
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
}

/// An answer of the wrong shape: a bug, reported as a failed store rather than a panic.
fn unexpected(a: TxAnswer) -> EngineError {
    EngineError::Store(crate::store::StoreError::Failed(std::sync::Arc::from(
        format!("group operation answered {a:?}"),
    )))
}

fn unexpected_outcome(o: GroupOutcome) -> EngineError {
    match o {
        GroupOutcome::Error(e) => e.into(),
        other => EngineError::Store(crate::store::StoreError::Failed(std::sync::Arc::from(
            format!("group command answered {other:?}"),
        ))),
    }
}
