//! The consumer-group commands as they are written in the log: what each XGROUP, XREADGROUP,
//! XACK, XCLAIM and XAUTOCLAIM asks for, and its byte encoding inside an entry's command.
//!
//! Plain data and a codec; what a command does is `groups.rs`'s. Decoding never trusts a
//! count or length it has not checked against the bytes that hold it, and never panics: a
//! command that does not decode is applied as nothing, the same way on every node.

use bytes::Bytes;

use super::codec::{Reader, put_bytes, put_id};
use crate::store::StreamId;

/// Where a group starts reading (XGROUP CREATE / SETID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStart {
    /// After this ID (`0` reads the whole stream).
    Id(StreamId),
    /// `$`: after the stream's last ID when the command is applied.
    Last,
}

/// What a group read delivers (XREADGROUP's ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// `>`: entries never delivered to the group.
    New,
    /// The consumer's own pending entries with an ID above this one (its history).
    Pending(StreamId),
}

/// XCLAIM: which pending entries move to `consumer`, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The consumer that takes them (created if needed).
    pub consumer: Bytes,
    /// Only entries idle at least this long (ms) move.
    pub min_idle_ms: u64,
    /// The IDs to claim, in order.
    pub ids: Vec<StreamId>,
    /// IDLE / TIME: the delivery time to set; default: the command's time.
    pub delivered: Option<ClaimTime>,
    /// RETRYCOUNT: the delivery count to set.
    pub retry_count: Option<u64>,
    /// FORCE: create a pending entry for an ID that exists in the stream but is pending for
    /// no one.
    pub force: bool,
    /// JUSTID: reply with IDs only, and leave the delivery count alone.
    pub justid: bool,
    /// LASTID: raise the group's last delivered ID to this.
    pub last_id: Option<StreamId>,
}

/// XCLAIM IDLE / TIME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimTime {
    /// IDLE ms: delivered this long before the command's time.
    Idle(u64),
    /// TIME ms: delivered at this Unix time.
    At(u64),
}

/// One group operation on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOp {
    /// XGROUP CREATE (MKSTREAM is a Create sub-record in the same entry).
    Create {
        /// Where it starts.
        start: GroupStart,
        /// ENTRIESREAD.
        entries_read: Option<u64>,
    },
    /// XGROUP DESTROY.
    Destroy,
    /// XGROUP SETID.
    SetId {
        /// The new last delivered ID.
        start: GroupStart,
        /// ENTRIESREAD.
        entries_read: Option<u64>,
    },
    /// XGROUP CREATECONSUMER.
    CreateConsumer {
        /// The consumer.
        consumer: Bytes,
    },
    /// XGROUP DELCONSUMER.
    DeleteConsumer {
        /// The consumer.
        consumer: Bytes,
    },
    /// XREADGROUP on one stream: `Deliver{group, consumer, from, count, noack}`; the time is
    /// the entry's.
    Deliver {
        /// The reading consumer (created if needed).
        consumer: Bytes,
        /// New entries or the consumer's history.
        from: ReadFrom,
        /// COUNT; 0 = no limit.
        count: u64,
        /// NOACK: new entries are delivered without a pending entry.
        noack: bool,
    },
    /// XACK.
    Ack {
        /// IDs to acknowledge.
        ids: Vec<StreamId>,
    },
    /// XCLAIM.
    Claim(Claim),
    /// XAUTOCLAIM.
    AutoClaim {
        /// The consumer that takes them (created if needed).
        consumer: Bytes,
        /// Only entries idle at least this long (ms) move.
        min_idle_ms: u64,
        /// Scan the pending list from this ID.
        start: StreamId,
        /// At most this many claimed (1..=MAX_AUTOCLAIM_COUNT).
        count: u64,
        /// JUSTID.
        justid: bool,
    },
}

/// A group operation addressed to `(db, key, group)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCommand {
    /// Database.
    pub db: u8,
    /// Stream key.
    pub key: Bytes,
    /// Group name.
    pub group: Bytes,
    /// What to do.
    pub op: GroupOp,
}

/// Encodes commands for an entry (after the command version and tag): `count` u32, then each
/// command (see `docs/storage-format.md`, Group commands).
pub fn encode(commands: &[GroupCommand], out: &mut Vec<u8>) {
    out.extend_from_slice(&(commands.len() as u32).to_le_bytes());
    for c in commands {
        out.push(c.db);
        put_bytes(out, &c.key);
        put_bytes(out, &c.group);
        match &c.op {
            GroupOp::Create {
                start,
                entries_read,
            } => {
                out.push(1);
                put_start(out, *start);
                put_opt(out, *entries_read);
            }
            GroupOp::Destroy => out.push(2),
            GroupOp::SetId {
                start,
                entries_read,
            } => {
                out.push(3);
                put_start(out, *start);
                put_opt(out, *entries_read);
            }
            GroupOp::CreateConsumer { consumer } => {
                out.push(4);
                put_bytes(out, consumer);
            }
            GroupOp::DeleteConsumer { consumer } => {
                out.push(5);
                put_bytes(out, consumer);
            }
            GroupOp::Deliver {
                consumer,
                from,
                count,
                noack,
            } => {
                out.push(6);
                put_bytes(out, consumer);
                match from {
                    ReadFrom::New => out.push(0),
                    ReadFrom::Pending(id) => {
                        out.push(1);
                        put_id(out, *id);
                    }
                }
                out.extend_from_slice(&count.to_le_bytes());
                out.push(u8::from(*noack));
            }
            GroupOp::Ack { ids } => {
                out.push(7);
                put_ids(out, ids);
            }
            GroupOp::Claim(c) => {
                out.push(8);
                put_bytes(out, &c.consumer);
                out.extend_from_slice(&c.min_idle_ms.to_le_bytes());
                put_ids(out, &c.ids);
                match c.delivered {
                    None => out.push(0),
                    Some(ClaimTime::Idle(ms)) => {
                        out.push(1);
                        out.extend_from_slice(&ms.to_le_bytes());
                    }
                    Some(ClaimTime::At(ms)) => {
                        out.push(2);
                        out.extend_from_slice(&ms.to_le_bytes());
                    }
                }
                put_opt(out, c.retry_count);
                out.push(u8::from(c.force) | u8::from(c.justid) << 1);
                match c.last_id {
                    None => out.push(0),
                    Some(id) => {
                        out.push(1);
                        put_id(out, id);
                    }
                }
            }
            GroupOp::AutoClaim {
                consumer,
                min_idle_ms,
                start,
                count,
                justid,
            } => {
                out.push(9);
                put_bytes(out, consumer);
                out.extend_from_slice(&min_idle_ms.to_le_bytes());
                put_id(out, *start);
                out.extend_from_slice(&count.to_le_bytes());
                out.push(u8::from(*justid));
            }
        }
    }
}

/// Decodes what `encode` wrote; `None` for anything else (the entry then does nothing).
pub fn decode(b: &[u8]) -> Option<Vec<GroupCommand>> {
    let mut r = Reader::new(b);
    let n = r.u32().ok()? as usize;
    // Each command holds at least 10 bytes.
    if n > b.len() / 10 {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let db = r.u8().ok()?;
        let key = r.bytes().ok()?;
        let group = r.bytes().ok()?;
        let op = match r.u8().ok()? {
            1 => GroupOp::Create {
                start: start(&mut r)?,
                entries_read: opt(&mut r)?,
            },
            2 => GroupOp::Destroy,
            3 => GroupOp::SetId {
                start: start(&mut r)?,
                entries_read: opt(&mut r)?,
            },
            4 => GroupOp::CreateConsumer {
                consumer: r.bytes().ok()?,
            },
            5 => GroupOp::DeleteConsumer {
                consumer: r.bytes().ok()?,
            },
            6 => GroupOp::Deliver {
                consumer: r.bytes().ok()?,
                from: match r.u8().ok()? {
                    0 => ReadFrom::New,
                    1 => ReadFrom::Pending(r.id().ok()?),
                    _ => return None,
                },
                count: r.u64().ok()?,
                noack: r.flag().ok()?,
            },
            7 => GroupOp::Ack { ids: ids(&mut r)? },
            8 => {
                let consumer = r.bytes().ok()?;
                let min_idle_ms = r.u64().ok()?;
                let ids = ids(&mut r)?;
                let delivered = match r.u8().ok()? {
                    0 => None,
                    1 => Some(ClaimTime::Idle(r.u64().ok()?)),
                    2 => Some(ClaimTime::At(r.u64().ok()?)),
                    _ => return None,
                };
                let retry_count = opt(&mut r)?;
                let flags = r.u8().ok()?;
                if flags > 3 {
                    return None;
                }
                let last_id = match r.u8().ok()? {
                    0 => None,
                    1 => Some(r.id().ok()?),
                    _ => return None,
                };
                GroupOp::Claim(Claim {
                    consumer,
                    min_idle_ms,
                    ids,
                    delivered,
                    retry_count,
                    force: flags & 1 != 0,
                    justid: flags & 2 != 0,
                    last_id,
                })
            }
            9 => GroupOp::AutoClaim {
                consumer: r.bytes().ok()?,
                min_idle_ms: r.u64().ok()?,
                start: r.id().ok()?,
                count: r.u64().ok()?,
                justid: r.flag().ok()?,
            },
            _ => return None,
        };
        out.push(GroupCommand { db, key, group, op });
    }
    r.finished().then_some(out)
}

fn put_ids(out: &mut Vec<u8>, ids: &[StreamId]) {
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        put_id(out, *id);
    }
}

fn put_start(out: &mut Vec<u8>, start: GroupStart) {
    match start {
        GroupStart::Id(id) => {
            out.push(0);
            put_id(out, id);
        }
        GroupStart::Last => out.push(1),
    }
}

fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn ids(r: &mut Reader<'_>) -> Option<Vec<StreamId>> {
    let n = r.count(16).ok()?;
    (0..n).map(|_| r.id().ok()).collect()
}

fn start(r: &mut Reader<'_>) -> Option<GroupStart> {
    match r.u8().ok()? {
        0 => Some(GroupStart::Id(r.id().ok()?)),
        1 => Some(GroupStart::Last),
        _ => None,
    }
}

fn opt(r: &mut Reader<'_>) -> Option<Option<u64>> {
    match r.u8().ok()? {
        0 => Some(None),
        1 => Some(Some(r.u64().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = StreamId> + Clone {
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| StreamId::new(a, b))
    }

    fn name() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(Bytes::from)
    }

    fn op() -> impl Strategy<Value = GroupOp> {
        let start = prop_oneof![id().prop_map(GroupStart::Id), Just(GroupStart::Last)].boxed();
        let from = prop_oneof![Just(ReadFrom::New), id().prop_map(ReadFrom::Pending)];
        let time = proptest::option::of(prop_oneof![
            any::<u64>().prop_map(ClaimTime::Idle),
            any::<u64>().prop_map(ClaimTime::At)
        ]);
        let ids = proptest::collection::vec(id(), 0..4).boxed();
        prop_oneof![
            (start.clone(), any::<Option<u64>>()).prop_map(|(start, entries_read)| {
                GroupOp::Create {
                    start,
                    entries_read,
                }
            }),
            Just(GroupOp::Destroy),
            (start, any::<Option<u64>>()).prop_map(|(start, entries_read)| GroupOp::SetId {
                start,
                entries_read
            }),
            name().prop_map(|consumer| GroupOp::CreateConsumer { consumer }),
            name().prop_map(|consumer| GroupOp::DeleteConsumer { consumer }),
            (name(), from, any::<u64>(), any::<bool>()).prop_map(
                |(consumer, from, count, noack)| GroupOp::Deliver {
                    consumer,
                    from,
                    count,
                    noack
                }
            ),
            ids.clone().prop_map(|ids| GroupOp::Ack { ids }),
            (
                name(),
                any::<u64>(),
                ids,
                time,
                any::<Option<u64>>(),
                any::<(bool, bool)>(),
                proptest::option::of(id())
            )
                .prop_map(
                    |(
                        consumer,
                        min_idle_ms,
                        ids,
                        delivered,
                        retry_count,
                        (force, justid),
                        last_id,
                    )| {
                        GroupOp::Claim(Claim {
                            consumer,
                            min_idle_ms,
                            ids,
                            delivered,
                            retry_count,
                            force,
                            justid,
                            last_id,
                        })
                    }
                ),
            (name(), any::<u64>(), id(), any::<u64>(), any::<bool>()).prop_map(
                |(consumer, min_idle_ms, start, count, justid)| GroupOp::AutoClaim {
                    consumer,
                    min_idle_ms,
                    start,
                    count,
                    justid
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn commands_round_trip_and_damage_never_panics(
            cmds in proptest::collection::vec(
                (0u8..16, name(), name(), op()).prop_map(|(db, key, group, op)| GroupCommand { db, key, group, op }),
                0..4),
            flip in any::<usize>(),
        ) {
            let mut b = Vec::new();
            encode(&cmds, &mut b);
            prop_assert_eq!(decode(&b), Some(cmds));
            for cut in 0..b.len() {
                prop_assert!(decode(&b[..cut]).is_none());
            }
            if !b.is_empty() {
                let i = flip % b.len();
                b[i] ^= 0xa5;
                let _ = decode(&b);
            }
        }
    }
}
