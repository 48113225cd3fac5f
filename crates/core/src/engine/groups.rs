//! Consumer groups with Redis 7.0 semantics: per stream, each group's last delivered ID and
//! entries-read counter, its pending entries list (PEL) and its consumers; the group commands
//! applied to them; and the read-only views XPENDING and XINFO GROUPS / CONSUMERS show.
//!
//! A group command is applied at its log index with the entry's timestamp as "now", and reads
//! streams only through [`Streams`] (the store as of that index), so which entries a read
//! delivers is decided here, identically on every node. This module never reads a clock, the
//! disk or randomness itself; its maps are ordered, so `encode` is deterministic.

use bytes::Bytes;
use imbl::{OrdMap, OrdSet};

use super::group_command::{Claim, ClaimTime, GroupCommand, GroupOp, GroupStart, ReadFrom};
use super::waiters::TopicKey;
use crate::store::{LogIndex, StoreError, StreamId};

/// XAUTOCLAIM's COUNT at most (Redis: `LONG_MAX / attempts factor`; a practical bound here).
pub const MAX_AUTOCLAIM_COUNT: u64 = 1 << 20;
/// XAUTOCLAIM scans at most COUNT × this many pending entries per call (Redis's factor).
pub const AUTOCLAIM_ATTEMPTS_FACTOR: u64 = 10;

/// What a stream is, as group commands need it (Redis's `stream` fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamFacts {
    /// Live entries.
    pub length: u64,
    /// Last ID ever added.
    pub last_id: StreamId,
    /// First live entry's ID (0-0 when empty).
    pub first_id: StreamId,
    /// Largest ID removed by XDEL or a trim.
    pub max_deleted_id: StreamId,
    /// Entries ever added.
    pub entries_added: u64,
}

/// Where a delivered message is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef {
    /// Stream ID.
    pub id: StreamId,
    /// Log index of the entry holding it.
    pub log_index: LogIndex,
    /// Sub-record within that entry.
    pub sub: u16,
}

/// The streams as of the command being applied.
pub trait Streams {
    /// The stream's facts; `None` when it does not exist.
    fn facts(&self, db: u8, key: &[u8]) -> Result<Option<StreamFacts>, StoreError>;
    /// Live entries with an ID above `after`, oldest first, at most `count` (0: all).
    fn after(
        &self,
        db: u8,
        key: &[u8],
        after: StreamId,
        count: u64,
    ) -> Result<Vec<EntryRef>, StoreError>;
    /// The live entry with exactly this ID.
    fn live(&self, db: u8, key: &[u8], id: StreamId) -> Result<Option<EntryRef>, StoreError>;
}

/// A pending entry: delivered, not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its owner.
    pub consumer: Bytes,
    /// Last delivery time (ms, command time).
    pub delivered_ms: u64,
    /// Times delivered.
    pub count: u64,
}

/// A consumer of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consumer {
    /// Last time it read or claimed (ms, command time).
    pub seen_ms: u64,
    /// Its pending entries.
    pub pending: OrdSet<StreamId>,
}

/// A consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// Last ID delivered to the group.
    pub last_id: StreamId,
    /// Entries the group has read (Redis's logical counter); `None` when unknown.
    pub entries_read: Option<u64>,
    /// Pending entries, by ID.
    pub pel: OrdMap<StreamId, Pending>,
    /// Consumers, by name.
    pub consumers: OrdMap<Bytes, Consumer>,
}

/// The groups of every stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups {
    /// Groups per stream, by name.
    pub streams: OrdMap<TopicKey, OrdMap<Bytes, Group>>,
}

/// Why a group command did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The key or the group does not exist (Redis `NOGROUP`).
    #[error("no such key or consumer group")]
    NoGroup,
    /// XGROUP CREATE: the group exists (Redis `BUSYGROUP`).
    #[error("consumer group name already exists")]
    GroupExists,
    /// XGROUP on a key that does not exist (without MKSTREAM).
    #[error("the key does not exist")]
    NoStream,
    /// A read of new entries would take the group's pending entries past
    /// `max_pending_per_group`.
    #[error("the group's pending entries are at max_pending_per_group")]
    PendingLimit,
}

/// What a claim delivered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claimed {
    /// XAUTOCLAIM: where the next call starts (0-0: the scan reached the end).
    pub next: StreamId,
    /// The claimed entries (IDs only with JUSTID: then `EntryRef::log_index` is 0).
    pub entries: Vec<EntryRef>,
    /// Pending entries whose message was gone: removed from the PEL.
    pub deleted: Vec<StreamId>,
}

/// What a group command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOutcome {
    /// It failed and changed nothing.
    Error(GroupError),
    /// Create, SetId: done.
    Done,
    /// Destroy, CreateConsumer: whether it existed / was created.
    Bool(bool),
    /// DeleteConsumer (its pending entries), Ack (entries acknowledged).
    Count(u64),
    /// Deliver: the entries, in order; `None` for a pending entry whose message is gone
    /// (history reads only).
    Delivered(Vec<(StreamId, Option<EntryRef>)>),
    /// Claim, AutoClaim.
    Claimed(Claimed),
}

/// Settings that bound group state.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// Pending entries per group at most; a read of new entries delivers no more than fits
    /// and fails (`PendingLimit`) when none fits.
    pub max_pending: u64,
}

impl Groups {
    /// The group `name` of `key`.
    pub fn group(&self, key: &TopicKey, name: &[u8]) -> Option<&Group> {
        self.streams.get(key)?.get(name)
    }

    /// After retention: in every stream with groups, pending entries below the first live
    /// entry (all of them, when the stream is empty) are gone with their messages.
    pub fn forget_gone(&mut self, streams: &dyn Streams) -> Result<(), StoreError> {
        let keys: Vec<TopicKey> = self.streams.keys().cloned().collect();
        for key in keys {
            let facts = streams.facts(key.0, &key.1)?.unwrap_or_default();
            let Some(groups) = self.streams.get_mut(&key) else {
                continue;
            };
            let names: Vec<Bytes> = groups.keys().cloned().collect();
            for name in names {
                let Some(g) = groups.get_mut(&name) else {
                    continue;
                };
                let gone: Vec<StreamId> = g
                    .pel
                    .keys()
                    .take_while(|id| facts.length == 0 || **id < facts.first_id)
                    .copied()
                    .collect();
                for id in gone {
                    forget_pending(g, id);
                }
            }
        }
        Ok(())
    }

    /// Acknowledges one entry (an MQTT shared subscription's message the client has): whether
    /// it was pending.
    pub fn ack_one(&mut self, key: &TopicKey, group: &[u8], id: StreamId) -> bool {
        let Some(g) = self.group_mut(key, group) else {
            return false;
        };
        let known = g.pel.contains_key(&id);
        forget_pending(g, id);
        known
    }

    /// Gives every pending entry of consumer `from` to consumer `to` (an MQTT shared
    /// subscription's member whose session ended, to another member), keeping delivery
    /// counts; `to`'s delivery time for them is `now`.
    pub fn hand_over(&mut self, key: &TopicKey, group: &[u8], from: &Bytes, to: &Bytes, now: u64) {
        let Some(g) = self.group_mut(key, group) else {
            return;
        };
        let ids: Vec<StreamId> = g
            .consumers
            .get(from)
            .map(|c| c.pending.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            let count = g.pel.get(&id).map(|p| p.count);
            take_pending(g, id, to, now, count);
        }
    }

    /// The groups of a dropped stream go with it.
    pub fn drop_stream(&mut self, key: &TopicKey) {
        self.streams.remove(key);
    }

    fn group_mut(&mut self, key: &TopicKey, name: &[u8]) -> Option<&mut Group> {
        self.streams.get_mut(key)?.get_mut(name)
    }

    /// Applies the group commands of one entry at time `now`. An XREADGROUP over several
    /// streams is one entry of several Delivers: if one names a missing stream or group, all
    /// fail with `NoGroup` and nothing changes.
    pub fn apply(
        &mut self,
        commands: &[GroupCommand],
        now: u64,
        streams: &dyn Streams,
        limits: GroupLimits,
    ) -> Result<Vec<GroupOutcome>, StoreError> {
        if commands.len() > 1 {
            for c in commands {
                let key = (c.db, c.key.clone());
                if matches!(c.op, GroupOp::Deliver { .. }) && self.group(&key, &c.group).is_none() {
                    return Ok(vec![
                        GroupOutcome::Error(GroupError::NoGroup);
                        commands.len()
                    ]);
                }
            }
        }
        commands
            .iter()
            .map(|c| self.apply_one(c, now, streams, limits))
            .collect()
    }

    fn apply_one(
        &mut self,
        c: &GroupCommand,
        now: u64,
        streams: &dyn Streams,
        limits: GroupLimits,
    ) -> Result<GroupOutcome, StoreError> {
        let key: TopicKey = (c.db, c.key.clone());
        let facts = streams.facts(c.db, &c.key)?;
        let out = match &c.op {
            GroupOp::Create {
                start,
                entries_read,
            } => {
                let Some(facts) = facts else {
                    return Ok(GroupOutcome::Error(GroupError::NoStream));
                };
                let groups = self.streams.entry(key).or_default();
                if groups.contains_key(&c.group) {
                    return Ok(GroupOutcome::Error(GroupError::GroupExists));
                }
                let last_id = match start {
                    GroupStart::Id(id) => *id,
                    GroupStart::Last => facts.last_id,
                };
                groups.insert(
                    c.group.clone(),
                    Group {
                        last_id,
                        entries_read: *entries_read,
                        ..Group::default()
                    },
                );
                GroupOutcome::Done
            }
            GroupOp::Destroy | GroupOp::CreateConsumer { .. } | GroupOp::DeleteConsumer { .. }
                if facts.is_none() =>
            {
                GroupOutcome::Error(GroupError::NoStream)
            }
            GroupOp::Destroy => {
                let removed = self
                    .streams
                    .get_mut(&key)
                    .is_some_and(|g| g.remove(&c.group).is_some());
                if self.streams.get(&key).is_some_and(OrdMap::is_empty) {
                    self.streams.remove(&key);
                }
                GroupOutcome::Bool(removed)
            }
            GroupOp::SetId {
                start,
                entries_read,
            } => {
                let Some(facts) = facts else {
                    return Ok(GroupOutcome::Error(GroupError::NoStream));
                };
                let Some(g) = self.group_mut(&key, &c.group) else {
                    return Ok(GroupOutcome::Error(GroupError::NoGroup));
                };
                g.last_id = match start {
                    GroupStart::Id(id) => *id,
                    GroupStart::Last => facts.last_id,
                };
                g.entries_read = *entries_read;
                GroupOutcome::Done
            }
            GroupOp::CreateConsumer { consumer } => {
                let Some(g) = self.group_mut(&key, &c.group) else {
                    return Ok(GroupOutcome::Error(GroupError::NoGroup));
                };
                if g.consumers.contains_key(consumer) {
                    GroupOutcome::Bool(false)
                } else {
                    g.consumers.insert(
                        consumer.clone(),
                        Consumer {
                            seen_ms: now,
                            pending: OrdSet::new(),
                        },
                    );
                    GroupOutcome::Bool(true)
                }
            }
            GroupOp::DeleteConsumer { consumer } => {
                let Some(g) = self.group_mut(&key, &c.group) else {
                    return Ok(GroupOutcome::Error(GroupError::NoGroup));
                };
                match g.consumers.remove(consumer) {
                    Some(cons) => {
                        for id in &cons.pending {
                            g.pel.remove(id);
                        }
                        GroupOutcome::Count(cons.pending.len() as u64)
                    }
                    None => GroupOutcome::Count(0),
                }
            }
            GroupOp::Deliver {
                consumer,
                from,
                count,
                noack,
            } => {
                let (Some(facts), Some(g)) = (facts, self.group_mut(&key, &c.group)) else {
                    return Ok(GroupOutcome::Error(GroupError::NoGroup));
                };
                match from {
                    ReadFrom::New => deliver_new(
                        g, &key, consumer, *count, *noack, now, &facts, streams, limits,
                    )?,
                    ReadFrom::Pending(after) => {
                        deliver_history(g, &key, consumer, *after, *count, now, streams)?
                    }
                }
            }
            GroupOp::Ack { ids } => {
                let Some(g) = self.group_mut(&key, &c.group) else {
                    return Ok(GroupOutcome::Count(0));
                };
                let mut acked = 0;
                for id in ids {
                    if let Some(p) = g.pel.remove(id) {
                        if let Some(cons) = g.consumers.get_mut(&p.consumer) {
                            cons.pending.remove(id);
                        }
                        acked += 1;
                    }
                }
                GroupOutcome::Count(acked)
            }
            GroupOp::Claim(claim) => {
                let Some(g) = self.group_mut(&key, &c.group) else {
                    return Ok(GroupOutcome::Error(GroupError::NoGroup));
                };
                GroupOutcome::Claimed(self::claim(g, &key, claim, now, streams)?)
            }
            GroupOp::AutoClaim {
                consumer,
                min_idle_ms,
                start,
                count,
                justid,
            } => {
                let Some(g) = self.group_mut(&key, &c.group) else {
                    return Ok(GroupOutcome::Error(GroupError::NoGroup));
                };
                GroupOutcome::Claimed(autoclaim(
                    g,
                    &key,
                    consumer,
                    *min_idle_ms,
                    *start,
                    *count,
                    *justid,
                    now,
                    streams,
                )?)
            }
        };
        Ok(out)
    }
}

/// Redis's `streamEstimateDistanceFromFirstEverEntry`: how many entries were added up to and
/// including `id`, when that can be known.
pub fn estimate_entries_read(s: &StreamFacts, id: StreamId) -> Option<u64> {
    if s.entries_added == 0 {
        return Some(0);
    }
    if s.length == 0 && id <= s.last_id {
        return Some(s.entries_added);
    }
    if id == s.last_id {
        return Some(s.entries_added);
    }
    if id > s.last_id {
        return None;
    }
    if s.max_deleted_id == StreamId::default() || s.max_deleted_id < s.first_id {
        if id < s.first_id {
            return Some(s.entries_added - s.length);
        }
        if id == s.first_id {
            return Some(s.entries_added - s.length + 1);
        }
    }
    None
}

/// Redis's `streamRangeHasTombstones(s, start, +inf)`.
fn has_tombstones_from(s: &StreamFacts, start: StreamId) -> bool {
    if s.length == 0 || s.max_deleted_id == StreamId::default() {
        return false;
    }
    if s.first_id > s.max_deleted_id {
        return false;
    }
    start <= s.max_deleted_id
}

/// XINFO GROUPS `lag`: entries added and not yet read by the group, when it can be known.
/// Negative when ENTRIESREAD set the counter past the entries added (Redis 7.0 reports that
/// difference as it is).
pub fn lag(g: &Group, s: &StreamFacts) -> Option<i64> {
    let signed = |read: u64| (s.entries_added as i64).wrapping_sub(read as i64);
    if s.entries_added == 0 {
        return Some(0);
    }
    if let Some(read) = g.entries_read
        && !has_tombstones_from(s, g.last_id)
    {
        return Some(signed(read));
    }
    estimate_entries_read(s, g.last_id).map(signed)
}

/// The consumer, created (seen now) if needed.
fn consumer_mut<'a>(g: &'a mut Group, name: &Bytes, now: u64) -> &'a mut Consumer {
    let c = g.consumers.entry(name.clone()).or_default();
    c.seen_ms = now;
    c
}

#[allow(clippy::too_many_arguments)]
fn deliver_new(
    g: &mut Group,
    key: &TopicKey,
    consumer: &Bytes,
    count: u64,
    noack: bool,
    now: u64,
    facts: &StreamFacts,
    streams: &dyn Streams,
    limits: GroupLimits,
) -> Result<GroupOutcome, StoreError> {
    let mut want = count;
    if !noack {
        let room = limits.max_pending.saturating_sub(g.pel.len() as u64);
        if room == 0 {
            // Refused only when there is something to deliver.
            if facts.last_id > g.last_id && !streams.after(key.0, &key.1, g.last_id, 1)?.is_empty()
            {
                return Ok(GroupOutcome::Error(GroupError::PendingLimit));
            }
            return Ok(GroupOutcome::Delivered(Vec::new()));
        }
        want = if want == 0 { room } else { want.min(room) };
    }
    let entries = if facts.last_id > g.last_id {
        streams.after(key.0, &key.1, g.last_id, want)?
    } else {
        Vec::new()
    };
    // Redis 7.0: the consumer is created (or its seen time refreshed) only when the stream is
    // served, that is when there is something new to deliver.
    if !entries.is_empty() {
        consumer_mut(g, consumer, now);
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if e.id > g.last_id {
            g.entries_read = match g.entries_read {
                Some(n) if !has_tombstones_from(facts, e.id) => Some(n + 1),
                _ => estimate_entries_read(facts, e.id),
            };
            g.last_id = e.id;
        }
        if !noack {
            take_pending(g, e.id, consumer, now, Some(1));
        }
        out.push((e.id, Some(e)));
    }
    Ok(GroupOutcome::Delivered(out))
}

/// Gives the pending entry `id` to `consumer` (creating it if new), delivered at `at`; sets
/// the delivery count to `count`, or adds one with `None`.
fn take_pending(g: &mut Group, id: StreamId, consumer: &Bytes, at: u64, count: Option<u64>) {
    let p = g.pel.entry(id).or_insert_with(|| Pending {
        consumer: consumer.clone(),
        delivered_ms: at,
        count: 0,
    });
    if p.consumer != *consumer {
        let old = std::mem::replace(&mut p.consumer, consumer.clone());
        if let Some(c) = g.consumers.get_mut(&old) {
            c.pending.remove(&id);
        }
    }
    p.delivered_ms = at;
    p.count = count.unwrap_or(p.count + 1);
    g.consumers
        .entry(consumer.clone())
        .or_default()
        .pending
        .insert(id);
}

fn deliver_history(
    g: &mut Group,
    key: &TopicKey,
    consumer: &Bytes,
    after: StreamId,
    count: u64,
    now: u64,
    streams: &dyn Streams,
) -> Result<GroupOutcome, StoreError> {
    let c = consumer_mut(g, consumer, now);
    let ids: Vec<StreamId> = c
        .pending
        .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
        .take(if count == 0 {
            usize::MAX
        } else {
            count as usize
        })
        .copied()
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let live = streams.live(key.0, &key.1, id)?;
        if live.is_some()
            && let Some(p) = g.pel.get_mut(&id)
        {
            p.delivered_ms = now;
            p.count += 1;
        }
        out.push((id, live));
    }
    Ok(GroupOutcome::Delivered(out))
}

/// Removes a pending entry whose message is gone.
fn forget_pending(g: &mut Group, id: StreamId) {
    if let Some(p) = g.pel.remove(&id)
        && let Some(c) = g.consumers.get_mut(&p.consumer)
    {
        c.pending.remove(&id);
    }
}

fn claim(
    g: &mut Group,
    key: &TopicKey,
    claim: &Claim,
    now: u64,
    streams: &dyn Streams,
) -> Result<Claimed, StoreError> {
    // A time before the epoch or in the future means now.
    let delivered = match claim.delivered {
        None => now,
        Some(ClaimTime::Idle(ms)) => now.checked_sub(ms).unwrap_or(now),
        Some(ClaimTime::At(ms)) if ms <= now => ms,
        Some(ClaimTime::At(_)) => now,
    };
    if let Some(last) = claim.last_id
        && last > g.last_id
    {
        g.last_id = last;
    }
    let mut out = Claimed::default();
    for &id in &claim.ids {
        let Some(live) = streams.live(key.0, &key.1, id)? else {
            // Redis 7.0: a pending entry whose message is gone leaves the PEL.
            if g.pel.contains_key(&id) {
                forget_pending(g, id);
                out.deleted.push(id);
            }
            continue;
        };
        let forced = claim.force && !g.pel.contains_key(&id);
        let base = match g.pel.get(&id) {
            // FORCE makes a pending entry delivered once, then claims it like any other.
            None if forced => 1,
            None => continue,
            Some(p) if claim.min_idle_ms > 0 && idle(p, now) < claim.min_idle_ms => continue,
            Some(p) => p.count,
        };
        let count = match (claim.retry_count, claim.justid) {
            (Some(n), _) => n,
            (None, true) => base,
            (None, false) => base + 1,
        };
        consumer_mut(g, &claim.consumer, now);
        take_pending(g, id, &claim.consumer, delivered, Some(count));
        out.entries.push(live);
    }
    Ok(out)
}

/// How long ago a pending entry was delivered, at `now` (0 for a time in the future).
pub fn idle(p: &Pending, now: u64) -> u64 {
    now.saturating_sub(p.delivered_ms)
}

#[allow(clippy::too_many_arguments)]
fn autoclaim(
    g: &mut Group,
    key: &TopicKey,
    consumer: &Bytes,
    min_idle_ms: u64,
    start: StreamId,
    count: u64,
    justid: bool,
    now: u64,
    streams: &dyn Streams,
) -> Result<Claimed, StoreError> {
    let mut attempts = count.saturating_mul(AUTOCLAIM_ATTEMPTS_FACTOR);
    let mut left = count;
    let mut out = Claimed::default();
    // Past the last entry examined: the next call's start (0-0: the scan reached the end).
    let scan: Vec<StreamId> = g
        .pel
        .range(start..)
        .map(|(id, _)| *id)
        .take(
            usize::try_from(attempts)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        )
        .collect();
    for id in scan {
        if attempts == 0 || left == 0 {
            out.next = id;
            break;
        }
        attempts -= 1;
        let Some(live) = streams.live(key.0, &key.1, id)? else {
            forget_pending(g, id);
            out.deleted.push(id);
            left -= 1;
            continue;
        };
        let Some(p) = g.pel.get(&id) else { continue };
        if min_idle_ms > 0 && idle(p, now) < min_idle_ms {
            continue;
        }
        let n = if justid { p.count } else { p.count + 1 };
        consumer_mut(g, consumer, now);
        take_pending(g, id, consumer, now, Some(n));
        out.entries.push(live);
        left -= 1;
    }
    Ok(out)
}

/// XPENDING's summary form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PendingSummary {
    /// Pending entries.
    pub count: u64,
    /// Smallest and largest pending ID (`None` when none).
    pub range: Option<(StreamId, StreamId)>,
    /// Pending entries per consumer that has any, by name.
    pub consumers: Vec<(Bytes, u64)>,
}

/// One line of XPENDING's extended form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// Stream ID.
    pub id: StreamId,
    /// Owner.
    pub consumer: Bytes,
    /// Milliseconds since its last delivery.
    pub idle_ms: u64,
    /// Times delivered.
    pub count: u64,
}

/// What XINFO GROUPS shows of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Name.
    pub name: Bytes,
    /// Consumers.
    pub consumers: u64,
    /// Pending entries.
    pub pending: u64,
    /// Last delivered ID.
    pub last_delivered_id: StreamId,
    /// Entries read (`None`: unknown, Redis's nil).
    pub entries_read: Option<u64>,
    /// Entries not yet delivered to the group (`None`: unknown).
    pub lag: Option<i64>,
}

/// What XINFO CONSUMERS shows of a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Name.
    pub name: Bytes,
    /// Pending entries.
    pub pending: u64,
    /// Milliseconds since it last read or claimed.
    pub idle_ms: u64,
}

impl Group {
    /// XPENDING key group.
    pub fn pending_summary(&self) -> PendingSummary {
        let first = self.pel.keys().next();
        let last = self.pel.keys().next_back();
        PendingSummary {
            count: self.pel.len() as u64,
            range: first.zip(last).map(|(a, b)| (*a, *b)),
            consumers: self
                .consumers
                .iter()
                .filter(|(_, c)| !c.pending.is_empty())
                .map(|(n, c)| (n.clone(), c.pending.len() as u64))
                .collect(),
        }
    }

    /// XPENDING key group [IDLE min] start end count [consumer]: IDs in `[start, end]`, oldest
    /// first, at most `count`, only those idle at least `min_idle_ms` (skipped ones do not count).
    pub fn pending_range(
        &self,
        start: StreamId,
        end: StreamId,
        count: u64,
        consumer: Option<&[u8]>,
        min_idle_ms: Option<u64>,
        now: u64,
    ) -> Vec<PendingEntry> {
        if start > end || count == 0 {
            return Vec::new();
        }
        let line = |id: &StreamId| {
            let p = self.pel.get(id)?;
            let idle_ms = idle(p, now);
            if min_idle_ms.is_some_and(|min| idle_ms < min) {
                return None;
            }
            Some(PendingEntry {
                id: *id,
                consumer: p.consumer.clone(),
                idle_ms,
                count: p.count,
            })
        };
        let take = usize::try_from(count).unwrap_or(usize::MAX);
        match consumer {
            Some(name) => match self.consumers.get(name) {
                Some(c) => c
                    .pending
                    .range(start..=end)
                    .filter_map(line)
                    .take(take)
                    .collect(),
                None => Vec::new(),
            },
            None => self
                .pel
                .range(start..=end)
                .filter_map(|(id, _)| line(id))
                .take(take)
                .collect(),
        }
    }

    /// XINFO GROUPS's line for this group, named `name`, of a stream with `facts`.
    pub fn info(&self, name: &Bytes, facts: &StreamFacts) -> GroupInfo {
        GroupInfo {
            name: name.clone(),
            consumers: self.consumers.len() as u64,
            pending: self.pel.len() as u64,
            last_delivered_id: self.last_id,
            entries_read: self.entries_read,
            lag: lag(self, facts),
        }
    }

    /// XINFO CONSUMERS at `now`.
    pub fn consumers_info(&self, now: u64) -> Vec<ConsumerInfo> {
        self.consumers
            .iter()
            .map(|(name, c)| ConsumerInfo {
                name: name.clone(),
                pending: c.pending.len() as u64,
                idle_ms: now.saturating_sub(c.seen_ms),
            })
            .collect()
    }
}
