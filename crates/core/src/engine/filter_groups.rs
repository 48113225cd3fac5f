//! Filter groups: MQTT shared subscriptions with a wildcard (`$share/g/sensors/+`), the
//! consumer-group model over an MQTT filter instead of one stream. A group `(name, filter)`
//! has a cursor — the position `(log index, sub-record)` of the last message handed out — a
//! pending list of delivered, unacknowledged messages by position, and its consumers.
//!
//! A read is proposed with the positions the reader found after the cursor (`read_filters`,
//! off the applier), and **apply decides**: it accepts only positions after the cursor as it
//! is then, so two readers racing for the same messages never both get one, and nothing is
//! skipped (messages applied later have later positions). This module never reads a clock,
//! the disk or the streams; the commands and their encoding are here too.

use bytes::Bytes;
use imbl::{OrdMap, OrdSet};

use super::codec::{Reader, put_bytes};
use crate::store::LogIndex;

/// Where a message is: its log entry and sub-record.
pub type Position = (LogIndex, u16);

/// A delivered, unacknowledged message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterPending {
    /// Its owner (empty: released, for any consumer to claim).
    pub consumer: Bytes,
    /// The topic it was published to.
    pub topic: Bytes,
    /// Last delivery time (ms, command time).
    pub delivered_ms: u64,
    /// Times delivered.
    pub count: u64,
}

/// A filter group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterGroup {
    /// The last position handed out; later messages are new to the group.
    pub cursor: Position,
    /// Pending messages by position.
    pub pel: OrdMap<Position, FilterPending>,
    /// Each owner's pending positions (only owners with some).
    pub consumers: OrdMap<Bytes, OrdSet<Position>>,
}

/// Every filter group, by `(name, filter)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterGroups {
    /// Groups.
    pub by_key: OrdMap<(Bytes, Bytes), FilterGroup>,
}

/// One filter-group operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterGroupOp {
    /// Creates the group if needed (MQTT: the first shared subscriber); it receives messages
    /// published after this entry.
    Join,
    /// Removes the group and its pending list.
    Destroy,
    /// Hands `consumer` the messages at these positions (ascending) that are after the cursor.
    Deliver {
        /// The reader.
        consumer: Bytes,
        /// Positions found by the reader, with their topics.
        positions: Vec<(Position, Bytes)>,
        /// QoS 0: nothing pending.
        noack: bool,
    },
    /// Acknowledges (PUBACK / PUBCOMP).
    Ack(Vec<Position>),
    /// Takes up to `count` pending messages idle at least `min_idle_ms` (released ones at
    /// once), oldest first.
    Claim {
        /// The new owner.
        consumer: Bytes,
        /// Idle at least this long (ms).
        min_idle_ms: u64,
        /// At most this many.
        count: u64,
    },
    /// The consumer is gone (MQTT: disconnected): its pending messages are released.
    Leave(Bytes),
}

/// A filter-group command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterGroupCommand {
    /// Group name.
    pub group: Bytes,
    /// MQTT filter.
    pub filter: Bytes,
    /// What to do.
    pub op: FilterGroupOp,
}

/// What a filter-group command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterGroupOutcome {
    /// The group does not exist.
    NoGroup,
    /// The pending list is at `max_pending_per_group` and nothing was delivered.
    PendingLimit,
    /// Join (created?), Destroy (existed?).
    Bool(bool),
    /// Ack (acknowledged), Leave (released).
    Count(u64),
    /// Deliver, Claim: the positions handed out, with their topics.
    Delivered(Vec<(Position, Bytes)>),
}

impl FilterGroups {
    /// Applies one command at log index `index`, time `now_ms`.
    pub fn apply(
        &mut self,
        c: &FilterGroupCommand,
        index: LogIndex,
        now_ms: u64,
        max_pending: u64,
    ) -> FilterGroupOutcome {
        let key = (c.group.clone(), c.filter.clone());
        if c.op == FilterGroupOp::Join {
            if self.by_key.contains_key(&key) {
                return FilterGroupOutcome::Bool(false);
            }
            self.by_key.insert(
                key,
                FilterGroup {
                    cursor: (index, u16::MAX),
                    ..FilterGroup::default()
                },
            );
            return FilterGroupOutcome::Bool(true);
        }
        if c.op == FilterGroupOp::Destroy {
            return FilterGroupOutcome::Bool(self.by_key.remove(&key).is_some());
        }
        let Some(g) = self.by_key.get_mut(&key) else {
            return FilterGroupOutcome::NoGroup;
        };
        match &c.op {
            FilterGroupOp::Join | FilterGroupOp::Destroy => FilterGroupOutcome::Bool(false),
            FilterGroupOp::Deliver {
                consumer,
                positions,
                noack,
            } => {
                let room = if *noack {
                    usize::MAX
                } else {
                    usize::try_from(max_pending.saturating_sub(g.pel.len() as u64))
                        .unwrap_or(usize::MAX)
                };
                let fresh: Vec<(Position, Bytes)> = positions
                    .iter()
                    .filter(|(p, _)| *p > g.cursor)
                    .take(room)
                    .cloned()
                    .collect();
                if fresh.is_empty() && room == 0 && positions.iter().any(|(p, _)| *p > g.cursor) {
                    return FilterGroupOutcome::PendingLimit;
                }
                for (p, topic) in &fresh {
                    g.cursor = g.cursor.max(*p);
                    if !noack {
                        g.pel.insert(
                            *p,
                            FilterPending {
                                consumer: consumer.clone(),
                                topic: topic.clone(),
                                delivered_ms: now_ms,
                                count: 1,
                            },
                        );
                        g.consumers.entry(consumer.clone()).or_default().insert(*p);
                    }
                }
                FilterGroupOutcome::Delivered(fresh)
            }
            FilterGroupOp::Ack(positions) => {
                let mut n = 0;
                for p in positions {
                    if let Some(pending) = g.pel.remove(p) {
                        unlink(g, &pending.consumer, *p);
                        n += 1;
                    }
                }
                FilterGroupOutcome::Count(n)
            }
            FilterGroupOp::Claim {
                consumer,
                min_idle_ms,
                count,
            } => {
                let due: Vec<Position> = g
                    .pel
                    .iter()
                    .filter(|(_, p)| {
                        p.consumer.is_empty()
                            || now_ms.saturating_sub(p.delivered_ms) >= *min_idle_ms
                    })
                    .map(|(pos, _)| *pos)
                    .take(usize::try_from(*count).unwrap_or(usize::MAX))
                    .collect();
                let mut out = Vec::with_capacity(due.len());
                for pos in due {
                    let Some(p) = g.pel.get_mut(&pos) else {
                        continue;
                    };
                    let old = std::mem::replace(&mut p.consumer, consumer.clone());
                    p.delivered_ms = now_ms;
                    p.count += 1;
                    out.push((pos, p.topic.clone()));
                    unlink(g, &old, pos);
                    g.consumers.entry(consumer.clone()).or_default().insert(pos);
                }
                FilterGroupOutcome::Delivered(out)
            }
            FilterGroupOp::Leave(consumer) => {
                let Some(mine) = g.consumers.remove(consumer) else {
                    return FilterGroupOutcome::Count(0);
                };
                for pos in &mine {
                    if let Some(p) = g.pel.get_mut(pos) {
                        p.consumer = Bytes::new();
                    }
                }
                FilterGroupOutcome::Count(mine.len() as u64)
            }
        }
    }

    /// Retention: pending messages of log entries below `index` are gone.
    pub fn forget_before(&mut self, index: LogIndex) {
        let keys: Vec<(Bytes, Bytes)> = self.by_key.keys().cloned().collect();
        for key in keys {
            let Some(g) = self.by_key.get_mut(&key) else {
                continue;
            };
            let gone: Vec<Position> = g.pel.keys().take_while(|p| p.0 < index).copied().collect();
            for pos in gone {
                if let Some(p) = g.pel.remove(&pos) {
                    unlink(g, &p.consumer, pos);
                }
            }
        }
    }

    /// Deterministic encoding: count u64; per group by key: name, filter, cursor (u64 + u16),
    /// pending count u64 and per position: log index u64, sub u16, consumer, topic, delivered
    /// ms u64, count u64. Consumers' sets are rebuilt from the owners.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.by_key.len() as u64).to_le_bytes());
        for ((name, filter), g) in &self.by_key {
            put_bytes(out, name);
            put_bytes(out, filter);
            out.extend_from_slice(&g.cursor.0.to_le_bytes());
            out.extend_from_slice(&g.cursor.1.to_le_bytes());
            out.extend_from_slice(&(g.pel.len() as u64).to_le_bytes());
            for (pos, p) in &g.pel {
                out.extend_from_slice(&pos.0.to_le_bytes());
                out.extend_from_slice(&pos.1.to_le_bytes());
                put_bytes(out, &p.consumer);
                put_bytes(out, &p.topic);
                out.extend_from_slice(&p.delivered_ms.to_le_bytes());
                out.extend_from_slice(&p.count.to_le_bytes());
            }
        }
    }

    /// Decodes what `encode` wrote.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, String> {
        let mut groups = FilterGroups::default();
        let n = r.u64()?;
        for _ in 0..n {
            let name = r.bytes()?;
            let filter = r.bytes()?;
            let mut g = FilterGroup {
                cursor: (r.u64()?, r.u16()?),
                ..FilterGroup::default()
            };
            let pending = r.u64()?;
            for _ in 0..pending {
                let pos = (r.u64()?, r.u16()?);
                let consumer = r.bytes()?;
                let topic = r.bytes()?;
                let p = FilterPending {
                    consumer: consumer.clone(),
                    topic,
                    delivered_ms: r.u64()?,
                    count: r.u64()?,
                };
                if !consumer.is_empty() {
                    g.consumers.entry(consumer).or_default().insert(pos);
                }
                g.pel.insert(pos, p);
            }
            groups.by_key.insert((name, filter), g);
        }
        Ok(groups)
    }
}

/// Takes `pos` out of `consumer`'s set; a consumer left with none is not kept (the sets
/// are an index of the owners, rebuilt the same way by `decode`).
fn unlink(g: &mut FilterGroup, consumer: &Bytes, pos: Position) {
    if let Some(set) = g.consumers.get_mut(consumer) {
        set.remove(&pos);
        if set.is_empty() {
            g.consumers.remove(consumer);
        }
    }
}

/// Encodes a command after the version and tag: group, filter, op u8, then its fields.
pub fn encode_command(c: &FilterGroupCommand, out: &mut Vec<u8>) {
    put_bytes(out, &c.group);
    put_bytes(out, &c.filter);
    match &c.op {
        FilterGroupOp::Join => out.push(1),
        FilterGroupOp::Destroy => out.push(2),
        FilterGroupOp::Deliver {
            consumer,
            positions,
            noack,
        } => {
            out.push(3);
            put_bytes(out, consumer);
            out.push(u8::from(*noack));
            out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
            for ((index, sub), topic) in positions {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&sub.to_le_bytes());
                put_bytes(out, topic);
            }
        }
        FilterGroupOp::Ack(positions) => {
            out.push(4);
            out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
            for (index, sub) in positions {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&sub.to_le_bytes());
            }
        }
        FilterGroupOp::Claim {
            consumer,
            min_idle_ms,
            count,
        } => {
            out.push(5);
            put_bytes(out, consumer);
            out.extend_from_slice(&min_idle_ms.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        FilterGroupOp::Leave(consumer) => {
            out.push(6);
            put_bytes(out, consumer);
        }
    }
}

/// Decodes what `encode_command` wrote; `None` for anything else (applied as nothing).
pub fn decode_command(b: &[u8]) -> Option<FilterGroupCommand> {
    let mut r = Reader::new(b);
    let group = r.bytes().ok()?;
    let filter = r.bytes().ok()?;
    let op = match r.u8().ok()? {
        1 => FilterGroupOp::Join,
        2 => FilterGroupOp::Destroy,
        3 => {
            let consumer = r.bytes().ok()?;
            let noack = r.flag().ok()?;
            let n = r.count(14).ok()?;
            let mut positions = Vec::with_capacity(n);
            for _ in 0..n {
                let pos = (r.u64().ok()?, r.u16().ok()?);
                positions.push((pos, r.bytes().ok()?));
            }
            FilterGroupOp::Deliver {
                consumer,
                positions,
                noack,
            }
        }
        4 => {
            let n = r.count(10).ok()?;
            let mut positions = Vec::with_capacity(n);
            for _ in 0..n {
                positions.push((r.u64().ok()?, r.u16().ok()?));
            }
            FilterGroupOp::Ack(positions)
        }
        5 => FilterGroupOp::Claim {
            consumer: r.bytes().ok()?,
            min_idle_ms: r.u64().ok()?,
            count: r.u64().ok()?,
        },
        6 => FilterGroupOp::Leave(r.bytes().ok()?),
        _ => return None,
    };
    r.finished()
        .then_some(FilterGroupCommand { group, filter, op })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(op: FilterGroupOp) -> FilterGroupCommand {
        FilterGroupCommand {
            group: Bytes::from_static(b"g"),
            filter: Bytes::from_static(b"s/+"),
            op,
        }
    }

    #[test]
    fn apply_hands_each_position_out_once_and_encodings_round_trip() {
        let mut fg = FilterGroups::default();
        let t = Bytes::from_static(b"s/1");
        assert_eq!(
            fg.apply(&cmd(FilterGroupOp::Join), 10, 0, 100),
            FilterGroupOutcome::Bool(true)
        );
        let deliver = |consumer: &'static str, ps: &[Position]| {
            cmd(FilterGroupOp::Deliver {
                consumer: Bytes::from_static(consumer.as_bytes()),
                positions: ps.iter().map(|p| (*p, t.clone())).collect(),
                noack: false,
            })
        };
        // Before the join: not new to the group.
        let got = fg.apply(&deliver("a", &[(9, 0), (11, 0), (12, 0)]), 13, 5, 100);
        assert_eq!(
            got,
            FilterGroupOutcome::Delivered(vec![((11, 0), t.clone()), ((12, 0), t.clone())])
        );
        // A racing reader with the same positions gets nothing.
        assert_eq!(
            fg.apply(&deliver("b", &[(11, 0), (12, 0)]), 14, 5, 100),
            FilterGroupOutcome::Delivered(vec![])
        );
        assert_eq!(
            fg.apply(
                &cmd(FilterGroupOp::Leave(Bytes::from_static(b"a"))),
                15,
                6,
                100
            ),
            FilterGroupOutcome::Count(2)
        );
        let claim = cmd(FilterGroupOp::Claim {
            consumer: Bytes::from_static(b"b"),
            min_idle_ms: 60_000,
            count: 1,
        });
        assert_eq!(
            fg.apply(&claim, 16, 7, 100),
            FilterGroupOutcome::Delivered(vec![((11, 0), t.clone())])
        );
        assert_eq!(
            fg.apply(&cmd(FilterGroupOp::Ack(vec![(11, 0), (99, 0)])), 17, 8, 100),
            FilterGroupOutcome::Count(1)
        );
        let mut b = Vec::new();
        fg.encode(&mut b);
        let mut r = Reader::new(&b);
        assert_eq!(FilterGroups::decode(&mut r), Ok(fg.clone()));
        for op in [
            FilterGroupOp::Join,
            FilterGroupOp::Destroy,
            FilterGroupOp::Ack(vec![(1, 2)]),
            FilterGroupOp::Leave(Bytes::from_static(b"x")),
            claim.op.clone(),
            deliver("a", &[(5, 1)]).op,
        ] {
            let c = cmd(op);
            let mut b = Vec::new();
            encode_command(&c, &mut b);
            assert_eq!(decode_command(&b), Some(c));
            for cut in 0..b.len() {
                assert_eq!(decode_command(&b[..cut]), None);
            }
        }
    }
}
