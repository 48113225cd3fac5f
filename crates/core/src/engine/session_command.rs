//! The MQTT persistent-session commands as they are written in the log, and their encoding
//! after an entry's command tag. Plain data and a codec; what a command does is
//! `sessions.rs`'s. A command that does not decode is applied as nothing, on every node alike.

use bytes::Bytes;

use super::codec::{Reader, put_bytes, put_id, put_pairs};
use crate::store::{LogIndex, StreamId};

/// How a subscription was asked for (MQTT SUBSCRIBE options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscribeOptions {
    /// Maximum QoS granted (0, 1, 2).
    pub qos: u8,
    /// v5 No Local: not the client's own publishes.
    pub no_local: bool,
    /// v5 Retain As Published.
    pub retain_as_published: bool,
    /// v5 Retain Handling (0: send retained at subscribe, 1: only if new, 2: never).
    pub retain_handling: u8,
    /// v5 Subscription Identifier (0: none).
    pub subscription_id: u32,
}

/// An MQTT Will: published on the client's behalf when its connection ends without a normal
/// DISCONNECT, after `delay_s` (v5 Will Delay Interval) or when the session ends if sooner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Will {
    /// Topic (a db-0 key, a valid topic name).
    pub topic: Bytes,
    /// Payload (the message's `payload` field).
    pub payload: Bytes,
    /// v5 properties kept with the message.
    pub properties: Vec<(Bytes, Bytes)>,
    /// QoS (kept for the front end's delivery).
    pub qos: u8,
    /// Retain flag: the will also becomes the topic's retained message.
    pub retain: bool,
    /// Will Delay Interval (s).
    pub delay_s: u32,
}

/// Where a shared subscription's message is pending: completing the packet acknowledges it
/// there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedRef {
    /// MQTT `$share/group/topic` (no wildcards): entry `id` of consumer group `group` of
    /// stream `key` in db 0.
    Stream {
        /// The stream (db 0).
        key: Bytes,
        /// The group.
        group: Bytes,
        /// The entry.
        id: StreamId,
    },
    /// MQTT `$share/group/filter` with wildcards: a position in filter group
    /// `(group, filter)`.
    Filter {
        /// The group.
        group: Bytes,
        /// The filter.
        filter: Bytes,
        /// The message's position in the log `(index, sub-record)`.
        position: (LogIndex, u16),
    },
}

/// The connection that holds a session: the node it is connected to, that node's broker run
/// (`boot`: a value of its own for each start of the process) and the connection there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The node's id.
    pub node: u64,
    /// The broker run on that node.
    pub boot: u64,
    /// The connection within that run.
    pub connection: u64,
}

/// A message put in flight to the client (QoS 1 or 2), by its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlightNew {
    /// The MQTT packet id it was sent with.
    pub packet_id: u16,
    /// Log index of the entry holding the message.
    pub log_index: LogIndex,
    /// Sub-record within that entry.
    pub sub: u16,
    /// The QoS it was sent with (1 or 2).
    pub qos: u8,
    /// For a shared subscription's message, its pending group entry.
    pub shared: Option<SharedRef>,
}

/// One session operation, for the session of `client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOp {
    /// CONNECT: opens (or, with `clean_start`, replaces) the session; the client is connected.
    Open {
        /// Clean Start / Clean Session.
        clean_start: bool,
        /// Session Expiry Interval in seconds after the disconnect (0: the session ends with
        /// the connection; `u32::MAX`: never).
        expiry_s: u32,
        /// The Will, if the CONNECT has one (it replaces, and cancels, any earlier one).
        will: Option<Will>,
        /// The connection taking the session (`None`: not said, as in entries written before
        /// connections were named).
        owner: Option<Owner>,
    },
    /// SUBSCRIBE: adds or replaces subscriptions; they match messages after this entry.
    Subscribe(Vec<(Bytes, SubscribeOptions)>),
    /// UNSUBSCRIBE.
    Unsubscribe(Vec<Bytes>),
    /// Messages up to `upto` were handed to the client; those of QoS 1/2 are now in flight.
    Deliver {
        /// The new cursor (a log index).
        upto: LogIndex,
        /// What went out with a packet id.
        inflight: Vec<InFlightNew>,
    },
    /// PUBACK (QoS 1) or PUBCOMP (QoS 2): delivery of these packets done (a client's run of
    /// acknowledgements is one command).
    Complete(Vec<u16>),
    /// PUBREC (QoS 2): the client has it; PUBREL follows.
    Received(u16),
    /// PUBREL from the client (inbound QoS 2): the exchange of its PUBLISH with this packet id
    /// is over, so the id may carry a new message — the session's producer dedupe forgets it.
    Released(u16),
    /// The connection ended: the expiry countdown starts (an expiry of 0 ends the session).
    Close {
        /// A new Session Expiry Interval given at DISCONNECT (v5), if any.
        expiry_s: Option<u32>,
        /// Whether the Will is published (the connection ended without a normal DISCONNECT,
        /// or with v5 reason 0x04); otherwise it is discarded.
        publish_will: bool,
    },
    /// The connections of node `node` are gone, but for those of broker run `except_boot`
    /// (0: all of them): each session one of them holds is closed as a lost connection's
    /// (its Will goes out). Names no client (the command's client id is empty).
    Lost {
        /// The node.
        node: u64,
        /// The broker run whose connections are not lost (the node's current one).
        except_boot: u64,
    },
}

/// A session operation with its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCommand {
    /// MQTT client identifier.
    pub client: Bytes,
    /// What to do.
    pub op: SessionOp,
    /// The epoch of the connection sending it (the log index of the Open that gave it the
    /// session): refused unless it still holds the session. `None`: not fenced.
    pub epoch: Option<LogIndex>,
}

/// In place of an operation's kind: the command is fenced; its epoch (u64) and the kind follow.
const FENCED: u8 = 0xF0;

/// Encodes a command after the version and tag (see `docs/storage-format.md`, Session
/// commands).
pub fn encode(c: &SessionCommand, out: &mut Vec<u8>) {
    put_bytes(out, &c.client);
    // The fencing epoch, before the operation: `FENCED`, then the epoch.
    if let Some(epoch) = c.epoch {
        out.push(FENCED);
        out.extend_from_slice(&epoch.to_le_bytes());
    }
    match &c.op {
        SessionOp::Open {
            clean_start,
            expiry_s,
            will,
            owner,
        } => {
            // Kind 11 names the connection; kind 1, the older form, does not.
            out.push(if owner.is_some() { 11 } else { 1 });
            out.push(u8::from(*clean_start));
            out.extend_from_slice(&expiry_s.to_le_bytes());
            put_will(out, will.as_ref());
            if let Some(o) = owner {
                for v in [o.node, o.boot, o.connection] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        SessionOp::Subscribe(subs) => {
            out.push(2);
            out.extend_from_slice(&(subs.len() as u32).to_le_bytes());
            for (filter, o) in subs {
                put_bytes(out, filter);
                out.extend_from_slice(&[
                    o.qos,
                    u8::from(o.no_local),
                    u8::from(o.retain_as_published),
                    o.retain_handling,
                ]);
                out.extend_from_slice(&o.subscription_id.to_le_bytes());
            }
        }
        SessionOp::Unsubscribe(filters) => {
            out.push(3);
            out.extend_from_slice(&(filters.len() as u32).to_le_bytes());
            for f in filters {
                put_bytes(out, f);
            }
        }
        SessionOp::Deliver { upto, inflight } => {
            // Kind 8 when a shared subscription's message is among them (each then ends with
            // its group entry); kind 4, the older form, otherwise.
            let shared = inflight.iter().any(|f| f.shared.is_some());
            out.push(if shared { 8 } else { 4 });
            out.extend_from_slice(&upto.to_le_bytes());
            out.extend_from_slice(&(inflight.len() as u32).to_le_bytes());
            for f in inflight {
                out.extend_from_slice(&f.packet_id.to_le_bytes());
                out.extend_from_slice(&f.log_index.to_le_bytes());
                out.extend_from_slice(&f.sub.to_le_bytes());
                out.push(f.qos);
                if shared {
                    put_shared(out, f.shared.as_ref());
                }
            }
        }
        SessionOp::Complete(ids) => {
            // Kind 5 for one packet (the older form), 10 for a run: count u32, then the ids.
            if let [id] = ids[..] {
                out.push(5);
                out.extend_from_slice(&id.to_le_bytes());
            } else {
                out.push(10);
                out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                for id in ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
        SessionOp::Received(id) => {
            out.push(6);
            out.extend_from_slice(&id.to_le_bytes());
        }
        SessionOp::Released(id) => {
            out.push(9);
            out.extend_from_slice(&id.to_le_bytes());
        }
        SessionOp::Close {
            expiry_s,
            publish_will,
        } => {
            out.push(7);
            match expiry_s {
                None => out.push(0),
                Some(e) => {
                    out.push(1);
                    out.extend_from_slice(&e.to_le_bytes());
                }
            }
            out.push(u8::from(*publish_will));
        }
        SessionOp::Lost { node, except_boot } => {
            out.push(12);
            out.extend_from_slice(&node.to_le_bytes());
            out.extend_from_slice(&except_boot.to_le_bytes());
        }
    }
}

/// Decodes what `encode` wrote; `None` for anything else.
pub fn decode(b: &[u8]) -> Option<SessionCommand> {
    let mut r = Reader::new(b);
    let client = r.bytes().ok()?;
    let mut kind = r.u8().ok()?;
    let epoch = if kind == FENCED {
        let epoch = r.u64().ok()?;
        kind = r.u8().ok()?;
        Some(epoch)
    } else {
        None
    };
    let op = match kind {
        kind @ (1 | 11) => SessionOp::Open {
            clean_start: r.flag().ok()?,
            expiry_s: r.u32().ok()?,
            will: read_will(&mut r).ok()?,
            owner: if kind == 11 {
                Some(Owner {
                    node: r.u64().ok()?,
                    boot: r.u64().ok()?,
                    connection: r.u64().ok()?,
                })
            } else {
                None
            },
        },
        2 => {
            let n = r.count(12).ok()?;
            let mut subs = Vec::with_capacity(n);
            for _ in 0..n {
                let filter = r.bytes().ok()?;
                let o = SubscribeOptions {
                    qos: r.u8().ok()?,
                    no_local: r.flag().ok()?,
                    retain_as_published: r.flag().ok()?,
                    retain_handling: r.u8().ok()?,
                    subscription_id: r.u32().ok()?,
                };
                subs.push((filter, o));
            }
            SessionOp::Subscribe(subs)
        }
        3 => {
            let n = r.count(4).ok()?;
            let mut filters = Vec::with_capacity(n);
            for _ in 0..n {
                filters.push(r.bytes().ok()?);
            }
            SessionOp::Unsubscribe(filters)
        }
        kind @ (4 | 8) => {
            let upto = r.u64().ok()?;
            let n = r.count(13).ok()?;
            let mut inflight = Vec::with_capacity(n);
            for _ in 0..n {
                inflight.push(InFlightNew {
                    packet_id: r.u16().ok()?,
                    log_index: r.u64().ok()?,
                    sub: r.u16().ok()?,
                    qos: r.u8().ok()?,
                    shared: if kind == 8 {
                        read_shared(&mut r).ok()?
                    } else {
                        None
                    },
                });
            }
            SessionOp::Deliver { upto, inflight }
        }
        5 => SessionOp::Complete(vec![r.u16().ok()?]),
        10 => {
            let n = r.count(2).ok()?;
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(r.u16().ok()?);
            }
            SessionOp::Complete(ids)
        }
        6 => SessionOp::Received(r.u16().ok()?),
        9 => SessionOp::Released(r.u16().ok()?),
        7 => SessionOp::Close {
            expiry_s: match r.u8().ok()? {
                0 => None,
                1 => Some(r.u32().ok()?),
                _ => return None,
            },
            publish_will: r.flag().ok()?,
        },
        12 => SessionOp::Lost {
            node: r.u64().ok()?,
            except_boot: r.u64().ok()?,
        },
        _ => return None,
    };
    r.finished().then_some(SessionCommand { client, op, epoch })
}

/// The producer id of an MQTT client's inbound QoS 2 messages in the engine's dedupe table:
/// `mqtt:` + the client id; the sequence is the packet id, until PUBREL (`Released`) frees it.
pub fn mqtt_producer(client: &[u8]) -> Bytes {
    Bytes::from([b"mqtt:".as_slice(), client].concat())
}

/// A shared subscription's pending place: `0` (none); `1`, key, group, ID (ms u64, seq u64)
/// for a stream group's entry; `2`, group, filter, log index u64, sub-record u16 for a filter
/// group's position.
pub fn put_shared(out: &mut Vec<u8>, shared: Option<&SharedRef>) {
    match shared {
        None => out.push(0),
        Some(SharedRef::Stream { key, group, id }) => {
            out.push(1);
            put_bytes(out, key);
            put_bytes(out, group);
            put_id(out, *id);
        }
        Some(SharedRef::Filter {
            group,
            filter,
            position,
        }) => {
            out.push(2);
            put_bytes(out, group);
            put_bytes(out, filter);
            out.extend_from_slice(&position.0.to_le_bytes());
            out.extend_from_slice(&position.1.to_le_bytes());
        }
    }
}

/// Reads what `put_shared` wrote.
pub fn read_shared(r: &mut Reader<'_>) -> Result<Option<SharedRef>, String> {
    Ok(match r.u8()? {
        0 => None,
        1 => Some(SharedRef::Stream {
            key: r.bytes()?,
            group: r.bytes()?,
            id: StreamId::new(r.u64()?, r.u64()?),
        }),
        2 => Some(SharedRef::Filter {
            group: r.bytes()?,
            filter: r.bytes()?,
            position: (r.u64()?, r.u16()?),
        }),
        k => return Err(format!("shared place kind {k}")),
    })
}

/// A Will: `0`, or `1`, topic, payload, properties (count u32 + pairs), `qos` u8, `retain` u8,
/// `delay_s` u32.
pub fn put_will(out: &mut Vec<u8>, will: Option<&Will>) {
    match will {
        None => out.push(0),
        Some(w) => {
            out.push(1);
            put_bytes(out, &w.topic);
            put_bytes(out, &w.payload);
            put_pairs(out, &w.properties);
            out.push(w.qos);
            out.push(u8::from(w.retain));
            out.extend_from_slice(&w.delay_s.to_le_bytes());
        }
    }
}

/// Reads what `put_will` wrote.
pub fn read_will(r: &mut Reader<'_>) -> Result<Option<Will>, String> {
    if !r.flag()? {
        return Ok(None);
    }
    Ok(Some(Will {
        topic: r.bytes()?,
        payload: r.bytes()?,
        properties: r.pairs()?,
        qos: r.u8()?,
        retain: r.flag()?,
        delay_s: r.u32()?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_damage_never_panics() {
        let o = SubscribeOptions {
            qos: 2,
            no_local: true,
            retain_as_published: false,
            retain_handling: 1,
            subscription_id: 7,
        };
        let ops = vec![
            SessionOp::Open {
                clean_start: false,
                expiry_s: 3600,
                will: None,
                owner: None,
            },
            SessionOp::Open {
                clean_start: false,
                expiry_s: 3600,
                will: None,
                owner: Some(Owner {
                    node: 3,
                    boot: 1_795_000_000_000_000_000,
                    connection: 17,
                }),
            },
            SessionOp::Lost {
                node: 2,
                except_boot: 99,
            },
            SessionOp::Open {
                owner: None,
                clean_start: true,
                expiry_s: 0,
                will: Some(Will {
                    topic: Bytes::from_static(b"status/dev-1"),
                    payload: Bytes::from_static(b"offline"),
                    properties: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))],
                    qos: 1,
                    retain: true,
                    delay_s: 5,
                }),
            },
            SessionOp::Subscribe(vec![(Bytes::from_static(b"a/#"), o)]),
            SessionOp::Unsubscribe(vec![Bytes::from_static(b"a/#")]),
            SessionOp::Deliver {
                upto: 99,
                inflight: vec![InFlightNew {
                    packet_id: 4,
                    log_index: 98,
                    sub: 0,
                    qos: 1,
                    shared: None,
                }],
            },
            SessionOp::Deliver {
                upto: 99,
                inflight: vec![
                    InFlightNew {
                        packet_id: 5,
                        log_index: 98,
                        sub: 1,
                        qos: 2,
                        shared: Some(SharedRef::Stream {
                            key: Bytes::from_static(b"jobs"),
                            group: Bytes::from_static(b"workers"),
                            id: StreamId::new(7, 1),
                        }),
                    },
                    InFlightNew {
                        packet_id: 6,
                        log_index: 98,
                        sub: 2,
                        qos: 1,
                        shared: None,
                    },
                    InFlightNew {
                        packet_id: 7,
                        log_index: 98,
                        sub: 3,
                        qos: 2,
                        shared: Some(SharedRef::Filter {
                            group: Bytes::from_static(b"workers"),
                            filter: Bytes::from_static(b"jobs/+"),
                            position: (98, 3),
                        }),
                    },
                ],
            },
            SessionOp::Complete(vec![4]),
            SessionOp::Complete(vec![4, 5, 9]),
            SessionOp::Complete(Vec::new()),
            SessionOp::Received(5),
            SessionOp::Released(6),
            SessionOp::Close {
                expiry_s: Some(0),
                publish_will: true,
            },
            SessionOp::Close {
                expiry_s: None,
                publish_will: false,
            },
        ];
        let fenced = ops.iter().map(|op| (op.clone(), Some(41)));
        for (op, epoch) in ops.iter().map(|op| (op.clone(), None)).chain(fenced) {
            let c = SessionCommand {
                client: Bytes::from_static(b"dev-1"),
                op,
                epoch,
            };
            let mut b = Vec::new();
            encode(&c, &mut b);
            assert_eq!(decode(&b), Some(c));
            for cut in 0..b.len() {
                assert_eq!(decode(&b[..cut]), None);
            }
            for i in 0..b.len() {
                let mut d = b.clone();
                d[i] ^= 0x5a;
                let _ = decode(&d);
            }
        }
    }
}
