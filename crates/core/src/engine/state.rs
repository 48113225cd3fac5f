//! Engine state that is not stream state: the retained message of each topic, the producer
//! dedupe table (what each producer's recent sequence numbers were answered) and the consumer
//! groups (`groups.rs`). It is a
//! pure function of the committed log and the store's dispatch outcomes (whether an append was
//! added), applied entry by entry in log order, and is saved whole in snapshots.
//!
//! This module never reads a clock, the disk or randomness; `encode` is deterministic (sorted
//! maps), so two nodes that applied the same log encode byte-identical state.

use std::collections::BTreeMap;

use imbl::OrdMap;
use std::sync::Arc;

use bytes::Bytes;

use super::codec::{Reader, put_bytes, put_id, put_pairs};
use super::filter_groups::{FilterGroupCommand, FilterGroupOp, FilterGroupOutcome, FilterGroups};
use super::group_command::GroupCommand;
use super::groups::{Consumer, Group, GroupLimits, GroupOutcome, Groups, Pending, Streams};
use super::session_command::{
    Owner, SessionCommand, SessionOp, SharedRef, mqtt_producer, put_shared, put_will, read_shared,
    read_will,
};
use super::sessions::{Session, SessionOutcome, Sessions, Subscription};
use super::timers::TimerCommand;
use super::topic_filter;
use super::waiters::TopicKey;
use crate::store::{LogEntry, LogIndex, Outcome, RecordOp, StoreError, StreamId};

/// What an entry's command asks of the engine state, decoded from its command bytes by the
/// engine (`mod.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryCommand {
    /// Retained-message effect of an append.
    pub retain: RetainEffect,
    /// The producer sequence of an append.
    pub producer: Option<(Bytes, u64)>,
    /// Group commands.
    pub groups: Vec<GroupCommand>,
    /// A timer's command.
    pub timer: Option<TimerCommand>,
    /// A session command.
    pub session: Option<SessionCommand>,
    /// A filter-group command.
    pub filter_group: Option<FilterGroupCommand>,
}

/// What applying an entry answers beyond the store's outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateReply {
    /// Per group command.
    pub groups: Vec<GroupOutcome>,
    /// The session command's.
    pub session: Option<SessionOutcome>,
    /// The filter-group command's.
    pub filter_group: Option<FilterGroupOutcome>,
}

/// The limits apply enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Consumer groups.
    pub groups: GroupLimits,
    /// Sessions at most.
    pub max_sessions: usize,
}

/// What an entry's command says about retained messages (the command tag, decoded by the
/// engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainEffect {
    /// Nothing.
    None,
    /// The entry's first added message becomes its topic's retained message.
    Set,
    /// The entry's first added message clears its topic's retained message.
    Clear,
}

/// A retained message: a copy of the message, kept whatever happens to the stream entry
/// (XDEL, trims, retention) until replaced, cleared, or the topic is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// Stream ID of the message that set it.
    pub id: StreamId,
    /// Leader timestamp of that message (ms).
    pub timestamp_ms: u64,
    /// Log index of that message.
    pub log_index: LogIndex,
    /// Properties, in order.
    pub properties: Vec<(Bytes, Bytes)>,
    /// Fields, in order.
    pub fields: Vec<(Bytes, Bytes)>,
}

/// What an append with a producer sequence was answered; a repeat gets the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deduped {
    /// Added with this ID.
    Added(StreamId),
    /// Refused: the ID was not above the stream's last ID, which was this.
    Rejected(StreamId),
}

/// Sequences remembered per producer (the newest ones; an older repeat appends again).
pub const PRODUCER_WINDOW: usize = 64;
/// Producers remembered; past this the one used longest ago (by log index) is forgotten.
pub const MAX_PRODUCERS: usize = 10_000;

/// One producer's recent answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Producer {
    /// Log index of its newest append.
    pub last_used: LogIndex,
    /// Leader timestamp of its newest append (ms): the expiry timer's deadline is this plus
    /// `producer_ttl_ms`.
    pub last_used_ms: u64,
    /// Answer per sequence number, the newest `PRODUCER_WINDOW`.
    pub answers: BTreeMap<u64, Deduped>,
}

/// The state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineState {
    /// Retained message per topic.
    pub retained: OrdMap<TopicKey, Arc<Retained>>,
    /// Producer dedupe table.
    pub producers: OrdMap<Bytes, Producer>,
    /// Consumer groups.
    pub groups: Groups,
    /// The first log index retention keeps (0: none applied yet).
    pub retained_from: LogIndex,
    /// MQTT persistent sessions.
    pub sessions: Sessions,
    /// Filter groups (MQTT shared subscriptions with wildcards).
    pub filter_groups: FilterGroups,
    /// Sum of `Retained::size` over `retained` (derived: not encoded, recomputed by `decode`).
    pub retained_bytes: u64,
}

/// What a retained message counts against `max_retained_bytes`: its topic key, properties and
/// fields.
pub fn retained_size(key: &[u8], properties: &[(Bytes, Bytes)], fields: &[(Bytes, Bytes)]) -> u64 {
    let pairs = |p: &[(Bytes, Bytes)]| p.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    (key.len() + pairs(properties) + pairs(fields)) as u64
}

impl Retained {
    /// What it counts against `max_retained_bytes` under topic `key`.
    pub fn size(&self, key: &[u8]) -> u64 {
        retained_size(key, &self.properties, &self.fields)
    }
}

/// Version of the encoding below (1: without groups, 2: without producers' `last_used_ms`,
/// 3: without `retained_from`, 4: without sessions, 5: without filter groups, 6: without
/// sessions' Wills; all still read).
const STATE_VERSION: u32 = 9;

impl EngineState {
    /// The answer remembered for `(producer, seq)`.
    pub fn deduped(&self, producer: &[u8], seq: u64) -> Option<Deduped> {
        self.producers.get(producer)?.answers.get(&seq).copied()
    }

    /// Applies one committed entry, given what dispatch made of each of its sub-records, what
    /// its command asks (decoded), and the streams as of this entry (group commands and
    /// retention read them). Returns what its group and session commands did.
    pub fn apply(
        &mut self,
        entry: &LogEntry,
        command: &EntryCommand,
        outcomes: &[Outcome],
        streams: &dyn Streams,
        limits: Limits,
    ) -> Result<StateReply, StoreError> {
        let mut effect = command.retain;
        let mut reply = StateReply::default();
        if let Some(c) = &command.filter_group {
            reply.filter_group = Some(self.filter_groups.apply(
                c,
                entry.index,
                entry.timestamp_ms,
                limits.groups.max_pending,
            ));
        }
        if let Some(c) = &command.session {
            let before = self.sessions.by_client.get(&c.client).cloned();
            let outcome =
                self.sessions
                    .apply(c, entry.index, entry.timestamp_ms, limits.max_sessions);
            reply.session = Some(match (outcome, &c.op) {
                // Sessions of a lost node's connections that ended with them.
                (SessionOutcome::Ended(ended), _) => {
                    for (client, old) in ended {
                        self.producers.remove(&mqtt_producer(&client));
                        self.hand_over_shares(&client, &old, entry, limits);
                    }
                    SessionOutcome::Done
                }
                (SessionOutcome::AckShared(refs), _) => {
                    for r in refs {
                        self.ack_shared(r, entry, limits);
                    }
                    SessionOutcome::Done
                }
                (SessionOutcome::Done, SessionOp::Released(id)) => {
                    SessionOutcome::Released(self.release(&c.client, *id))
                }
                (o, _) => o,
            });
            // A session that ended (or was replaced by a clean start) leaves its shared
            // subscriptions' pending messages to another member, and its inbound QoS 2
            // exchanges end with it.
            let replaced = matches!(
                c.op,
                SessionOp::Open {
                    clean_start: true,
                    ..
                }
            );
            let lost = matches!(c.op, SessionOp::Lost { .. });
            if !lost && (replaced || !self.sessions.by_client.contains_key(&c.client)) {
                self.producers.remove(&mqtt_producer(&c.client));
                if let Some(old) = before {
                    self.hand_over_shares(&c.client, &old, entry, limits);
                }
            }
        }
        match &command.timer {
            Some(TimerCommand::ExpireSessions { now_ms }) => {
                for (client, old) in self.sessions.expire(*now_ms) {
                    self.producers.remove(&mqtt_producer(&client));
                    self.hand_over_shares(&client, &old, entry, limits);
                }
            }
            Some(TimerCommand::PublishWill { client }) => {
                // The entry's message went into the stream; a retained Will is retained.
                let will = self.sessions.will_published(client, entry.timestamp_ms);
                if will.is_some_and(|w| w.retain) {
                    effect = RetainEffect::Set;
                }
            }
            Some(TimerCommand::ExpireProducers { before_ms }) => {
                self.expire_producers(*before_ms);
            }
            Some(TimerCommand::RetainFrom { index }) => {
                // The store has cut every topic (the entry's RetainFrom sub-record).
                self.retained_from = self.retained_from.max(*index);
                self.groups.forget_gone(streams)?;
                self.filter_groups.forget_before(*index);
            }
            None => {}
        }
        if let Some((id, seq)) = command.producer.clone() {
            let answer = match (entry.records.first(), outcomes.first()) {
                (Some(r), Some(Outcome::Added)) => Some(Deduped::Added(r.id)),
                (_, Some(Outcome::Rejected { last })) => Some(Deduped::Rejected(*last)),
                _ => None,
            };
            if let Some(answer) = answer {
                self.remember(id, seq, answer, entry.index, entry.timestamp_ms);
            }
        }
        let mut retain_done = false;
        for (r, o) in entry.records.iter().zip(outcomes) {
            match (r.op, o) {
                (RecordOp::Message, Outcome::Added) if !retain_done => {
                    let key: TopicKey = (r.db, r.topic.clone());
                    match effect {
                        RetainEffect::None => continue,
                        RetainEffect::Set => {
                            // Copies: slices would keep the whole entry (or a replay's
                            // read buffer) alive as long as the message stays retained.
                            let own = |pairs: &[(Bytes, Bytes)]| {
                                pairs
                                    .iter()
                                    .map(|(k, v)| {
                                        (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v))
                                    })
                                    .collect()
                            };
                            let new = Arc::new(Retained {
                                id: r.id,
                                timestamp_ms: entry.timestamp_ms,
                                log_index: entry.index,
                                properties: own(&r.properties),
                                fields: own(&r.fields),
                            });
                            self.retained_bytes += new.size(&key.1);
                            self.clear_retained(&key);
                            self.retained.insert(key, new);
                        }
                        RetainEffect::Clear => self.clear_retained(&key),
                    }
                    retain_done = true;
                }
                (RecordOp::Drop, Outcome::Dropped(true)) => {
                    let key = (r.db, r.topic.clone());
                    self.clear_retained(&key);
                    self.groups.drop_stream(&key);
                }
                _ => {}
            }
        }
        if !command.groups.is_empty() {
            reply.groups =
                self.groups
                    .apply(&command.groups, entry.timestamp_ms, streams, limits.groups)?;
        }
        Ok(reply)
    }

    /// PUBREL: `client`'s inbound QoS 2 packet `id` is free again (its dedupe answer goes).
    /// Whether it was awaiting release.
    fn release(&mut self, client: &[u8], id: u16) -> bool {
        let producer = mqtt_producer(client);
        let Some(p) = self.producers.get_mut(&producer) else {
            return false;
        };
        let known = p.answers.remove(&u64::from(id)).is_some();
        if p.answers.is_empty() {
            self.producers.remove(&producer);
        }
        known
    }

    /// A shared subscription's message the client has: acknowledged where it is pending.
    fn ack_shared(&mut self, r: SharedRef, entry: &LogEntry, limits: Limits) {
        match r {
            SharedRef::Stream { key, group, id } => {
                self.groups.ack_one(&(0, key), &group, id);
            }
            SharedRef::Filter {
                group,
                filter,
                position,
            } => {
                let ack = FilterGroupCommand {
                    group,
                    filter,
                    op: FilterGroupOp::Ack(vec![position]),
                };
                self.filter_groups.apply(
                    &ack,
                    entry.index,
                    entry.timestamp_ms,
                    limits.groups.max_pending,
                );
            }
        }
    }

    /// `client`'s session `ended` is over: the pending entries of each of its stream-group
    /// shares go to the first other session (by client id) subscribed to the same
    /// `$share/group/topic` — with none, they stay with the old consumer (XAUTOCLAIM, or the
    /// same client subscribing again, takes them); a filter group's (wildcard share's) pending
    /// positions are released for any member to claim.
    fn hand_over_shares(
        &mut self,
        client: &Bytes,
        ended: &Session,
        entry: &LogEntry,
        limits: Limits,
    ) {
        for filter in ended.subscriptions.keys() {
            let Some((group, topic)) = topic_filter::shared_subscription(filter) else {
                continue;
            };
            if topic.iter().any(|b| matches!(b, b'+' | b'#')) {
                // A filter group: the member's pending messages are released, for the other
                // members to claim.
                let leave = FilterGroupCommand {
                    group: Bytes::copy_from_slice(group),
                    filter: Bytes::copy_from_slice(topic),
                    op: FilterGroupOp::Leave(client.clone()),
                };
                self.filter_groups.apply(
                    &leave,
                    entry.index,
                    entry.timestamp_ms,
                    limits.groups.max_pending,
                );
                continue;
            }
            let now_ms = entry.timestamp_ms;
            let successor = self
                .sessions
                .by_client
                .iter()
                .find(|(c, s)| *c != client && s.subscriptions.contains_key(filter))
                .map(|(c, _)| c.clone());
            if let Some(to) = successor {
                let key = (0, Bytes::copy_from_slice(topic));
                self.groups.hand_over(&key, group, client, &to, now_ms);
            }
        }
    }

    /// A timer command: forgets the producers whose newest append was stamped before
    /// `before_ms`. Returns how many.
    pub fn expire_producers(&mut self, before_ms: u64) -> usize {
        let old: Vec<Bytes> = self
            .producers
            .iter()
            .filter(|(_, p)| p.last_used_ms < before_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            self.producers.remove(k);
        }
        old.len()
    }

    /// The oldest `last_used_ms` of any producer: when the next expiry is due (the timer adds
    /// the TTL).
    pub fn oldest_producer_ms(&self) -> Option<u64> {
        self.producers.values().map(|p| p.last_used_ms).min()
    }

    fn clear_retained(&mut self, key: &TopicKey) {
        if let Some(old) = self.retained.remove(key) {
            self.retained_bytes -= old.size(&key.1).min(self.retained_bytes);
        }
    }

    fn remember(&mut self, id: Bytes, seq: u64, answer: Deduped, index: LogIndex, at_ms: u64) {
        let p = self.producers.entry(id).or_default();
        p.last_used = index;
        p.last_used_ms = at_ms;
        p.answers.insert(seq, answer);
        while p.answers.len() > PRODUCER_WINDOW {
            p.answers.pop_first();
        }
        if self.producers.len() > MAX_PRODUCERS {
            // Deterministic: the smallest `last_used`, ties by producer id (map order).
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.producers.remove(&k);
            }
        }
    }

    /// Deterministic encoding (see `docs/storage-format.md`, Snapshot body).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.retained.len() as u64).to_le_bytes());
        for ((db, key), r) in &self.retained {
            out.push(*db);
            put_bytes(&mut out, key);
            out.extend_from_slice(&r.id.ms.to_le_bytes());
            out.extend_from_slice(&r.id.seq.to_le_bytes());
            out.extend_from_slice(&r.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&r.log_index.to_le_bytes());
            put_pairs(&mut out, &r.properties);
            put_pairs(&mut out, &r.fields);
        }
        out.extend_from_slice(&(self.producers.len() as u64).to_le_bytes());
        for (id, p) in &self.producers {
            put_bytes(&mut out, id);
            out.extend_from_slice(&p.last_used.to_le_bytes());
            out.extend_from_slice(&p.last_used_ms.to_le_bytes());
            out.extend_from_slice(&(p.answers.len() as u32).to_le_bytes());
            for (seq, answer) in &p.answers {
                let (kind, sid) = match answer {
                    Deduped::Added(sid) => (0u8, sid),
                    Deduped::Rejected(sid) => (1u8, sid),
                };
                out.extend_from_slice(&seq.to_le_bytes());
                out.push(kind);
                out.extend_from_slice(&sid.ms.to_le_bytes());
                out.extend_from_slice(&sid.seq.to_le_bytes());
            }
        }
        encode_groups(&self.groups, &mut out);
        out.extend_from_slice(&self.retained_from.to_le_bytes());
        encode_sessions(&self.sessions, &mut out);
        self.filter_groups.encode(&mut out);
        encode_wills(&self.sessions, &mut out);
        encode_shared_inflight(&self.sessions, &mut out);
        encode_owners(&self.sessions, &mut out);
        out
    }

    /// Decodes what `encode` wrote; every length is checked against the bytes that hold it.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(b);
        let version = r.u32()?;
        if version == 0 || version > STATE_VERSION {
            return Err(format!(
                "state version {version} is not 1 to {STATE_VERSION}"
            ));
        }
        let count = r.u64()?;
        let mut state = EngineState::default();
        for _ in 0..count {
            let db = r.u8()?;
            let key = r.bytes()?;
            let id = StreamId::new(r.u64()?, r.u64()?);
            let timestamp_ms = r.u64()?;
            let log_index = r.u64()?;
            let properties = r.pairs()?;
            let fields = r.pairs()?;
            let retained = Retained {
                id,
                timestamp_ms,
                log_index,
                properties,
                fields,
            };
            state.retained_bytes += retained.size(&key);
            state.retained.insert((db, key), Arc::new(retained));
        }
        let producers = r.u64()?;
        for _ in 0..producers {
            let id = r.bytes()?;
            let last_used = r.u64()?;
            // Before version 3: unknown, so the first expiry timer forgets it.
            let last_used_ms = if version >= 3 { r.u64()? } else { 0 };
            let n = r.u32()?;
            let mut p = Producer {
                last_used,
                last_used_ms,
                answers: BTreeMap::new(),
            };
            for _ in 0..n {
                let seq = r.u64()?;
                let kind = r.u8()?;
                let sid = StreamId::new(r.u64()?, r.u64()?);
                let answer = match kind {
                    0 => Deduped::Added(sid),
                    1 => Deduped::Rejected(sid),
                    k => return Err(format!("dedupe answer kind {k}")),
                };
                p.answers.insert(seq, answer);
            }
            state.producers.insert(id, p);
        }
        if version >= 2 {
            state.groups = decode_groups(&mut r)?;
        }
        if version >= 4 {
            state.retained_from = r.u64()?;
        }
        if version >= 5 {
            state.sessions = decode_sessions(&mut r)?;
        }
        if version >= 6 {
            state.filter_groups = FilterGroups::decode(&mut r)?;
        }
        if version >= 7 {
            decode_wills(&mut r, &mut state.sessions)?;
        }
        if version >= 8 {
            decode_shared_inflight(&mut r, &mut state.sessions)?;
        }
        if version >= 9 {
            decode_owners(&mut r, &mut state.sessions)?;
        }
        if !r.finished() {
            return Err(format!("{} bytes after the state", r.remaining()));
        }
        Ok(state)
    }
}

/// Groups: stream count u64; per stream db, key, group count u32; per group name, last ID,
/// entries-read (flag + u64), consumers (count u32; name, seen ms), pending entries (count u64;
/// ID, owner as an index into the consumers just listed u32, delivery ms, delivery count).
/// Each consumer's own list of pending IDs is not written: decode rebuilds it from the PEL.
fn encode_groups(groups: &Groups, out: &mut Vec<u8>) {
    out.extend_from_slice(&(groups.streams.len() as u64).to_le_bytes());
    for ((db, key), gs) in &groups.streams {
        out.push(*db);
        put_bytes(out, key);
        out.extend_from_slice(&(gs.len() as u32).to_le_bytes());
        for (name, g) in gs {
            put_bytes(out, name);
            put_id(out, g.last_id);
            match g.entries_read {
                None => out.extend_from_slice(&[0; 9]),
                Some(n) => {
                    out.push(1);
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
            out.extend_from_slice(&(g.consumers.len() as u32).to_le_bytes());
            let mut index = BTreeMap::new();
            for (k, (cname, c)) in g.consumers.iter().enumerate() {
                put_bytes(out, cname);
                out.extend_from_slice(&c.seen_ms.to_le_bytes());
                index.insert(cname, k as u32);
            }
            out.extend_from_slice(&(g.pel.len() as u64).to_le_bytes());
            for (id, p) in &g.pel {
                put_id(out, *id);
                // Every pending entry's owner is a consumer of the group (`groups.rs` keeps it so).
                out.extend_from_slice(
                    &index
                        .get(&p.consumer)
                        .copied()
                        .unwrap_or(u32::MAX)
                        .to_le_bytes(),
                );
                out.extend_from_slice(&p.delivered_ms.to_le_bytes());
                out.extend_from_slice(&p.count.to_le_bytes());
            }
        }
    }
}

/// Sessions: count u64; per session by client id: client, `cursor` u64, `expiry_s` u32,
/// disconnected (flag + u64 ms), subscriptions (count u32; filter, qos u8, no-local u8,
/// retain-as-published u8, retain-handling u8, subscription id u32, since u64), in flight
/// (count u32; packet id u16, log index u64, sub u16, qos u8, received u8).
fn encode_sessions(sessions: &Sessions, out: &mut Vec<u8>) {
    out.extend_from_slice(&(sessions.by_client.len() as u64).to_le_bytes());
    for (client, s) in &sessions.by_client {
        put_bytes(out, client);
        out.extend_from_slice(&s.cursor.to_le_bytes());
        out.extend_from_slice(&s.expiry_s.to_le_bytes());
        match s.disconnected_ms {
            None => out.extend_from_slice(&[0; 9]),
            Some(ms) => {
                out.push(1);
                out.extend_from_slice(&ms.to_le_bytes());
            }
        }
        out.extend_from_slice(&(s.subscriptions.len() as u32).to_le_bytes());
        for (filter, sub) in &s.subscriptions {
            put_bytes(out, filter);
            let o = &sub.options;
            out.extend_from_slice(&[
                o.qos,
                u8::from(o.no_local),
                u8::from(o.retain_as_published),
                o.retain_handling,
            ]);
            out.extend_from_slice(&o.subscription_id.to_le_bytes());
            out.extend_from_slice(&sub.since.to_le_bytes());
        }
        out.extend_from_slice(&(s.inflight.len() as u32).to_le_bytes());
        for (id, f) in &s.inflight {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&f.log_index.to_le_bytes());
            out.extend_from_slice(&f.sub.to_le_bytes());
            out.extend_from_slice(&[f.qos, u8::from(f.received)]);
        }
    }
}

/// Wills (after the filter groups, so older versions read unchanged): count u64, then per
/// session that has one, by client id: client, the Will (`put_will`), due time (flag + u64).
fn encode_wills(sessions: &Sessions, out: &mut Vec<u8>) {
    let with: Vec<_> = sessions
        .by_client
        .iter()
        .filter(|(_, s)| s.will.is_some() || s.will_at_ms.is_some())
        .collect();
    out.extend_from_slice(&(with.len() as u64).to_le_bytes());
    for (client, s) in with {
        put_bytes(out, client);
        put_will(out, s.will.as_ref());
        match s.will_at_ms {
            None => out.extend_from_slice(&[0; 9]),
            Some(ms) => {
                out.push(1);
                out.extend_from_slice(&ms.to_le_bytes());
            }
        }
    }
}

/// The group entries of shared subscriptions' packets in flight (after the Wills, so older
/// versions read unchanged): count u64, then per such packet by (client id, packet id):
/// client, `packet_id` u16, the entry (`put_shared`).
fn encode_shared_inflight(sessions: &Sessions, out: &mut Vec<u8>) {
    let with: Vec<_> = sessions
        .by_client
        .iter()
        .flat_map(|(c, s)| {
            s.inflight
                .iter()
                .filter(|(_, f)| f.shared.is_some())
                .map(move |(id, f)| (c, *id, f.shared.as_ref()))
        })
        .collect();
    out.extend_from_slice(&(with.len() as u64).to_le_bytes());
    for (client, packet_id, shared) in with {
        put_bytes(out, client);
        out.extend_from_slice(&packet_id.to_le_bytes());
        put_shared(out, shared);
    }
}

/// Sessions' epochs and owners (after the shared entries in flight, so older versions read
/// unchanged): count u64, then per session with an epoch or an owner, by client id: client,
/// `epoch` u64, owner flag u8 (then `node` u64, `boot` u64, `connection` u64).
fn encode_owners(sessions: &Sessions, out: &mut Vec<u8>) {
    let with: Vec<_> = sessions
        .by_client
        .iter()
        .filter(|(_, s)| s.epoch != 0 || s.owner.is_some())
        .collect();
    out.extend_from_slice(&(with.len() as u64).to_le_bytes());
    for (client, s) in with {
        put_bytes(out, client);
        out.extend_from_slice(&s.epoch.to_le_bytes());
        match &s.owner {
            None => out.push(0),
            Some(o) => {
                out.push(1);
                for v in [o.node, o.boot, o.connection] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

fn decode_owners(r: &mut Reader<'_>, sessions: &mut Sessions) -> Result<(), String> {
    let n = r.u64()?;
    for _ in 0..n {
        let client = r.bytes()?;
        let epoch = r.u64()?;
        let owner = match r.u8()? {
            0 => None,
            1 => Some(Owner {
                node: r.u64()?,
                boot: r.u64()?,
                connection: r.u64()?,
            }),
            f => return Err(format!("owner flag {f}")),
        };
        let s = sessions
            .by_client
            .get_mut(&client)
            .ok_or_else(|| "an owner for a session that does not exist".to_string())?;
        s.epoch = epoch;
        s.owner = owner;
    }
    Ok(())
}

fn decode_shared_inflight(r: &mut Reader<'_>, sessions: &mut Sessions) -> Result<(), String> {
    let n = r.u64()?;
    for _ in 0..n {
        let client = r.bytes()?;
        let packet_id = r.u16()?;
        let shared = read_shared(r)?;
        let f = sessions
            .by_client
            .get_mut(&client)
            .and_then(|s| s.inflight.get_mut(&packet_id))
            .ok_or_else(|| "a shared entry for a packet not in flight".to_string())?;
        f.shared = shared;
    }
    Ok(())
}

fn decode_wills(r: &mut Reader<'_>, sessions: &mut Sessions) -> Result<(), String> {
    let n = r.u64()?;
    for _ in 0..n {
        let client = r.bytes()?;
        let will = read_will(r)?;
        let at = match r.u8()? {
            0 => {
                r.u64()?;
                None
            }
            1 => Some(r.u64()?),
            f => return Err(format!("will time flag {f}")),
        };
        let s = sessions
            .by_client
            .get_mut(&client)
            .ok_or_else(|| "a will for a session that does not exist".to_string())?;
        s.will = will;
        s.will_at_ms = at;
    }
    Ok(())
}

fn decode_sessions(r: &mut Reader<'_>) -> Result<Sessions, String> {
    let mut sessions = Sessions::default();
    let n = r.u64()?;
    for _ in 0..n {
        let client = r.bytes()?;
        let cursor = r.u64()?;
        let expiry_s = r.u32()?;
        let disconnected_ms = match r.u8()? {
            0 => {
                r.u64()?;
                None
            }
            1 => Some(r.u64()?),
            f => return Err(format!("disconnected flag {f}")),
        };
        let mut s = Session {
            subscriptions: OrdMap::new(),
            cursor,
            inflight: OrdMap::new(),
            expiry_s,
            disconnected_ms,
            will: None,
            will_at_ms: None,
            epoch: 0,    // version 9 adds it, after the shared entries in flight
            owner: None, // likewise
        };
        let subs = r.count(24)?;
        for _ in 0..subs {
            let filter = r.bytes()?;
            let options = super::session_command::SubscribeOptions {
                qos: r.u8()?,
                no_local: r.flag()?,
                retain_as_published: r.flag()?,
                retain_handling: r.u8()?,
                subscription_id: r.u32()?,
            };
            let since = r.u64()?;
            s.subscriptions
                .insert(filter, Subscription { options, since });
        }
        let inflight = r.count(14)?;
        for _ in 0..inflight {
            let id = r.u16()?;
            let f = super::sessions::InFlight {
                log_index: r.u64()?,
                sub: r.u16()?,
                qos: r.u8()?,
                received: r.flag()?,
                shared: None, // version 8 adds it, after the Wills
            };
            s.inflight.insert(id, f);
        }
        sessions.by_client.insert(client, s);
    }
    Ok(sessions)
}

/// Bytes of one encoded pending entry: ID 16, owner 4, delivery ms 8, count 8.
const PENDING_BYTES: usize = 36;

/// A group read up to its pending list, which is decoded afterwards (in parallel).
struct GroupParts<'a> {
    key: TopicKey,
    name: Bytes,
    group: Group,
    owners: Vec<Bytes>,
    pending: &'a [u8],
}

fn decode_groups(r: &mut Reader<'_>) -> Result<Groups, String> {
    // First pass: everything but the pending lists, whose bytes are set aside (their entries
    // have a fixed size, so they are skipped without being read).
    let mut parts = Vec::new();
    let streams = r.u64()?;
    for _ in 0..streams {
        let db = r.u8()?;
        let key = r.bytes()?;
        let n = r.u32()?;
        for _ in 0..n {
            let name = r.bytes()?;
            let last_id = r.id()?;
            let entries_read = match r.u8()? {
                0 => {
                    r.u64()?;
                    None
                }
                1 => Some(r.u64()?),
                f => return Err(format!("entries-read flag {f}")),
            };
            let consumers = r.u32()?;
            let mut group = Group {
                last_id,
                entries_read,
                ..Group::default()
            };
            let mut owners = Vec::new();
            for _ in 0..consumers {
                let cname = r.bytes()?;
                let seen_ms = r.u64()?;
                group.consumers.insert(
                    cname.clone(),
                    Consumer {
                        seen_ms,
                        pending: Default::default(),
                    },
                );
                owners.push(cname);
            }
            let count = usize::try_from(r.u64()?).map_err(|e| e.to_string())?;
            let len = count
                .checked_mul(PENDING_BYTES)
                .ok_or_else(|| format!("pending count {count} overflows"))?;
            let pending = r.take(len)?;
            parts.push(GroupParts {
                key: (db, key.clone()),
                name,
                group,
                owners,
                pending,
            });
        }
    }
    // Second pass: the pending lists, most of a large state, decoded on every core.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(parts.len().max(1));
    let mut slots: Vec<Vec<&mut GroupParts<'_>>> = (0..threads).map(|_| Vec::new()).collect();
    // Spread by size: each part to the least loaded thread.
    let mut load = vec![0usize; threads];
    let mut order: Vec<&mut GroupParts<'_>> = parts.iter_mut().collect();
    order.sort_by_key(|p| std::cmp::Reverse(p.pending.len()));
    for p in order {
        let k = (0..threads).min_by_key(|k| load[*k]).unwrap_or(0);
        load[k] += p.pending.len();
        slots[k].push(p);
    }
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = slots
            .into_iter()
            .map(|mine| {
                scope.spawn(move || {
                    for p in mine {
                        decode_pending(p)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a decoding thread panicked".into()))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    let mut groups = Groups::default();
    for p in parts {
        groups
            .streams
            .entry(p.key)
            .or_default()
            .insert(p.name, p.group);
    }
    Ok(groups)
}

/// Decodes one group's pending list into its PEL and its consumers' sets.
fn decode_pending(p: &mut GroupParts<'_>) -> Result<(), String> {
    let mut r = Reader::new(p.pending);
    let mut by_owner: Vec<Vec<StreamId>> = vec![Vec::new(); p.owners.len()];
    let mut pel = OrdMap::new();
    while !r.finished() {
        let id = r.id()?;
        let owner = r.u32()? as usize;
        let delivered_ms = r.u64()?;
        let count = r.u64()?;
        let consumer = p.owners.get(owner).cloned().ok_or_else(|| {
            format!(
                "pending entry {id} owned by consumer {owner} of {}",
                p.owners.len()
            )
        })?;
        by_owner[owner].push(id);
        pel.insert(
            id,
            Pending {
                consumer,
                delivered_ms,
                count,
            },
        );
    }
    p.group.pel = pel;
    for (owner, ids) in p.owners.iter().zip(by_owner) {
        if let Some(c) = p.group.consumers.get_mut(owner) {
            c.pending = ids.into_iter().collect();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_never_panics_on_damage() {
        let mut s = EngineState::default();
        for n in 0..3u8 {
            s.retained.insert(
                (n, Bytes::from(format!("t/{n}"))),
                Arc::new(Retained {
                    id: StreamId::new(u64::from(n), 1),
                    timestamp_ms: 7,
                    log_index: 9,
                    properties: vec![(Bytes::from_static(b"p"), Bytes::from_static(b"q"))],
                    fields: vec![(Bytes::from_static(b"payload"), Bytes::from(vec![n; 5]))],
                }),
            );
        }
        // Each: key 3, property 2, field 7 + 5.
        s.retained_bytes = 3 * 17;
        s.remember(
            Bytes::from_static(b"p1"),
            4,
            Deduped::Added(StreamId::new(1, 2)),
            10,
            1_000,
        );
        s.remember(
            Bytes::from_static(b"p1"),
            5,
            Deduped::Rejected(StreamId::new(3, 4)),
            11,
            2_000,
        );
        // A session with a shared subscription's packet in flight (version 8).
        let client = Bytes::from_static(b"dev");
        let command = |op| SessionCommand {
            client: client.clone(),
            op,
            epoch: None,
        };
        // Held by a named connection (version 9).
        let open = SessionOp::Open {
            clean_start: true,
            expiry_s: 60,
            will: None,
            owner: Some(super::super::session_command::Owner {
                node: 2,
                boot: 7,
                connection: 3,
            }),
        };
        s.sessions.apply(&command(open), 1, 0, 10);
        let shared = super::super::session_command::SharedRef::Stream {
            key: Bytes::from_static(b"jobs"),
            group: Bytes::from_static(b"g"),
            id: StreamId::new(5, 0),
        };
        let inflight = [Some(shared), None]
            .into_iter()
            .enumerate()
            .map(|(k, shared)| super::super::session_command::InFlightNew {
                packet_id: k as u16 + 1,
                log_index: 1,
                sub: k as u16,
                qos: 1,
                shared,
            })
            .collect();
        s.sessions
            .apply(&command(SessionOp::Deliver { upto: 1, inflight }), 2, 0, 10);
        let b = s.encode();
        assert_eq!(EngineState::decode(&b), Ok(s));
        for cut in 0..b.len() {
            assert!(EngineState::decode(&b[..cut]).is_err());
        }
        let mut flipped = b.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = EngineState::decode(&flipped);
            flipped[i] ^= 0xff;
        }
    }
}
