//! MQTT persistent sessions as engine state: per client id, the subscriptions (filter,
//! options, and the log index after which each matches), **one cursor that is a log index**
//! (everything up to it was handed to the client), the packets in flight with the place of
//! their message in the log, the expiry interval and when the client disconnected.
//!
//! Applied from session commands with the entry's index and timestamp; never reads a clock,
//! the disk or the streams. Which messages a session still has to receive is read by
//! `session_api.rs` (`read_filters` from the cursor), not decided here.

use bytes::Bytes;
use imbl::OrdMap;

use super::session_command::{
    InFlightNew, Owner, SessionCommand, SessionOp, SharedRef, SubscribeOptions, Will,
};
use crate::store::LogIndex;

/// A subscription of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// As asked for.
    pub options: SubscribeOptions,
    /// It matches messages of log entries after this index (the SUBSCRIBE's own).
    pub since: LogIndex,
}

/// A packet in flight to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// Log index of the message's entry.
    pub log_index: LogIndex,
    /// Its sub-record.
    pub sub: u16,
    /// QoS it went out with.
    pub qos: u8,
    /// QoS 2: PUBREC came (PUBREL is what is resent).
    pub received: bool,
    /// A shared subscription's message: its group entry, acknowledged (XACK) when the client
    /// has the message — PUBACK, or PUBREC for QoS 2 — by the same command.
    pub shared: Option<SharedRef>,
}

/// A persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Subscriptions by filter.
    pub subscriptions: OrdMap<Bytes, Subscription>,
    /// Messages of entries up to this index were handed to the client.
    pub cursor: LogIndex,
    /// Packets in flight by packet id.
    pub inflight: OrdMap<u16, InFlight>,
    /// Session Expiry Interval (s) after the disconnect; `u32::MAX`: never.
    pub expiry_s: u32,
    /// When the client disconnected (ms, command time); `None` while connected.
    pub disconnected_ms: Option<u64>,
    /// The Will of the current (or last) connection.
    pub will: Option<Will>,
    /// When the Will is to be published (ms): set when the connection ended without a normal
    /// DISCONNECT, cleared when it is published or the client reconnects.
    pub will_at_ms: Option<u64>,
    /// The log index of the Open that last connected it: the fencing epoch a connection's
    /// commands carry (0: opened before epochs were kept).
    pub epoch: LogIndex,
    /// The connection holding it while connected, if the Open named one.
    pub owner: Option<Owner>,
}

impl Session {
    /// When it expires (ms), if disconnected and not kept for ever.
    pub fn deadline_ms(&self) -> Option<u64> {
        let at = self.disconnected_ms?;
        (self.expiry_s != u32::MAX).then(|| at.saturating_add(u64::from(self.expiry_s) * 1000))
    }
}

/// Why a session command did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No session for the client (open one first).
    #[error("no session for this client")]
    NoSession,
    /// `max_sessions` sessions exist.
    #[error("sessions are at max_sessions")]
    TooManySessions,
    /// A packet id given is already in flight.
    #[error("packet id already in flight")]
    PacketIdInUse,
    /// The command's connection no longer holds the session: another connection opened it
    /// since (on any node), or its node was declared lost.
    #[error("the session was taken over by another connection")]
    TakenOver,
}

/// What a session command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    /// It failed and changed nothing.
    Error(SessionError),
    /// Open: whether a session was present (MQTT Session Present), and the epoch the
    /// connection's commands are to carry.
    Opened {
        /// MQTT Session Present.
        present: bool,
        /// The Open's log index.
        epoch: LogIndex,
    },
    /// Lost: the sessions that ended with their connections (the caller hands over what they
    /// held).
    Ended(Vec<(Bytes, Session)>),
    /// Unsubscribe: per filter, whether it was subscribed.
    Unsubscribed(Vec<bool>),
    /// Complete or Received of a shared subscription's message: done, and its group entry is
    /// to be acknowledged (by the caller, in the same apply).
    AckShared(Vec<SharedRef>),
    /// Released: whether the packet id was awaiting release (the caller's dedupe table knows;
    /// this module answers `Done` and the caller decides).
    Released(bool),
    /// Anything else: done.
    Done,
}

/// Every session, by client id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    /// Sessions.
    pub by_client: OrdMap<Bytes, Session>,
}

impl Sessions {
    /// Applies one command at log index `index`, time `now_ms`, keeping at most
    /// `max_sessions`.
    pub fn apply(
        &mut self,
        c: &SessionCommand,
        index: LogIndex,
        now_ms: u64,
        max_sessions: usize,
    ) -> SessionOutcome {
        if let SessionOp::Lost { node, except_boot } = &c.op {
            return SessionOutcome::Ended(self.lose(*node, *except_boot, now_ms));
        }
        if let SessionOp::Open {
            clean_start,
            expiry_s,
            will,
            owner,
        } = &c.op
        {
            if *clean_start {
                self.by_client.remove(&c.client);
            }
            if let Some(s) = self.by_client.get_mut(&c.client) {
                s.expiry_s = *expiry_s;
                s.disconnected_ms = None;
                // Reconnecting before the Will went out cancels it (MQTT v5 3.1.3.2.2).
                s.will = will.clone();
                s.will_at_ms = None;
                s.epoch = index;
                s.owner = *owner;
                return SessionOutcome::Opened {
                    present: true,
                    epoch: index,
                };
            }
            if self.by_client.len() >= max_sessions {
                return SessionOutcome::Error(SessionError::TooManySessions);
            }
            self.by_client.insert(
                c.client.clone(),
                Session {
                    subscriptions: OrdMap::new(),
                    cursor: index,
                    inflight: OrdMap::new(),
                    expiry_s: *expiry_s,
                    disconnected_ms: None,
                    will: will.clone(),
                    will_at_ms: None,
                    epoch: index,
                    owner: *owner,
                },
            );
            return SessionOutcome::Opened {
                present: false,
                epoch: index,
            };
        }
        let Some(s) = self.by_client.get_mut(&c.client) else {
            return SessionOutcome::Error(SessionError::NoSession);
        };
        // A connection that no longer holds the session changes nothing in it.
        if let Some(epoch) = c.epoch
            && (s.epoch != epoch || s.disconnected_ms.is_some())
        {
            return SessionOutcome::Error(SessionError::TakenOver);
        }
        match &c.op {
            SessionOp::Open { .. } | SessionOp::Lost { .. } => SessionOutcome::Done, // above
            SessionOp::Subscribe(subs) => {
                for (filter, options) in subs {
                    // A SUBSCRIBE to a filter already subscribed replaces its options but must
                    // not interrupt its flow of messages (MQTT 3.8.4): it keeps matching from
                    // where it did. (Clients re-subscribe on every reconnect.)
                    let since = s.subscriptions.get(filter).map_or(index, |old| old.since);
                    s.subscriptions.insert(
                        filter.clone(),
                        Subscription {
                            options: *options,
                            since,
                        },
                    );
                }
                SessionOutcome::Done
            }
            SessionOp::Unsubscribe(filters) => SessionOutcome::Unsubscribed(
                filters
                    .iter()
                    .map(|f| s.subscriptions.remove(f).is_some())
                    .collect(),
            ),
            SessionOp::Deliver { upto, inflight } => {
                let ids_in_use = inflight
                    .iter()
                    .any(|f| s.inflight.contains_key(&f.packet_id));
                let repeated = (1..inflight.len()).any(|k| {
                    inflight[..k]
                        .iter()
                        .any(|f| f.packet_id == inflight[k].packet_id)
                });
                if ids_in_use || repeated {
                    return SessionOutcome::Error(SessionError::PacketIdInUse);
                }
                s.cursor = s.cursor.max(*upto);
                for InFlightNew {
                    packet_id,
                    log_index,
                    sub,
                    qos,
                    shared,
                } in inflight
                {
                    s.inflight.insert(
                        *packet_id,
                        InFlight {
                            log_index: *log_index,
                            sub: *sub,
                            qos: *qos,
                            received: false,
                            shared: shared.clone(),
                        },
                    );
                }
                SessionOutcome::Done
            }
            SessionOp::Complete(ids) => {
                let shared: Vec<SharedRef> = ids
                    .iter()
                    .filter_map(|id| s.inflight.remove(id).and_then(|f| f.shared))
                    .collect();
                if shared.is_empty() {
                    SessionOutcome::Done
                } else {
                    SessionOutcome::AckShared(shared)
                }
            }
            SessionOp::Received(id) => match s.inflight.get_mut(id) {
                Some(f) => {
                    f.received = true;
                    match f.shared.take() {
                        Some(r) => SessionOutcome::AckShared(vec![r]),
                        None => SessionOutcome::Done,
                    }
                }
                None => SessionOutcome::Done,
            },
            // The dedupe table is the caller's (state.rs).
            SessionOp::Released(_) => SessionOutcome::Done,
            SessionOp::Close {
                expiry_s,
                publish_will,
            } => {
                if close(s, *expiry_s, *publish_will, now_ms) {
                    self.by_client.remove(&c.client);
                }
                SessionOutcome::Done
            }
        }
    }

    /// Closes, as lost connections, the sessions held by connections of `node` but for those
    /// of its broker run `except_boot`; returns those that ended.
    fn lose(&mut self, node: u64, except_boot: u64, now_ms: u64) -> Vec<(Bytes, Session)> {
        let held: Vec<Bytes> = self
            .by_client
            .iter()
            .filter(|(_, s)| {
                s.disconnected_ms.is_none()
                    && s.owner
                        .is_some_and(|o| o.node == node && o.boot != except_boot)
            })
            .map(|(c, _)| c.clone())
            .collect();
        let mut ended = Vec::new();
        for client in held {
            let Some(s) = self.by_client.get_mut(&client) else {
                continue;
            };
            let before = s.clone();
            if close(s, None, true, now_ms) {
                self.by_client.remove(&client);
                ended.push((client, before));
            }
        }
        ended
    }

    /// A timer command: ends every disconnected session whose expiry passed by `now_ms`;
    /// returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(Bytes, Session)> {
        let gone: Vec<Bytes> = self
            .by_client
            .iter()
            .filter(|(_, s)| s.will_at_ms.is_none() && s.deadline_ms().is_some_and(|d| d <= now_ms))
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter()
            .filter_map(|k| self.by_client.remove(&k).map(|s| (k, s)))
            .collect()
    }

    /// The earliest expiry deadline (ms) of any session.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.by_client
            .values()
            .filter(|s| s.will_at_ms.is_none())
            .filter_map(Session::deadline_ms)
            .min()
    }

    /// The sessions whose Will is due by `now_ms`, with it.
    pub fn wills_due(&self, now_ms: u64) -> Vec<(Bytes, Will)> {
        self.by_client
            .iter()
            .filter(|(_, s)| s.will_at_ms.is_some_and(|at| at <= now_ms))
            .filter_map(|(c, s)| s.will.clone().map(|w| (c.clone(), w)))
            .collect()
    }

    /// A timer command: `client`'s Will went out (the entry carries its message); it is
    /// cleared. Whether it was still due: if the client reconnected meanwhile, it was not.
    pub fn will_published(&mut self, client: &Bytes, now_ms: u64) -> Option<Will> {
        let s = self.by_client.get_mut(client)?;
        if s.will_at_ms.is_none_or(|at| at > now_ms) {
            return None;
        }
        s.will_at_ms = None;
        s.will.take()
    }
}

/// The connection of `s` ended (with a new expiry interval, if given); whether the session
/// ends now.
fn close(s: &mut Session, expiry_s: Option<u32>, publish_will: bool, now_ms: u64) -> bool {
    if let Some(e) = expiry_s {
        s.expiry_s = e;
    }
    s.disconnected_ms = Some(now_ms);
    s.owner = None;
    match (&s.will, publish_will) {
        // Out after its delay, or when the session ends if that is sooner.
        (Some(w), true) => {
            let delay = w.delay_s.min(s.expiry_s);
            s.will_at_ms = Some(now_ms.saturating_add(u64::from(delay) * 1000));
        }
        _ => s.will = None,
    }
    // A session without expiry ends now, unless its Will has yet to go out (the expiry timer
    // ends it after the Will).
    s.expiry_s == 0 && s.will_at_ms.is_none()
}
