//! The engine's MQTT persistent-session operations: every change (CONNECT, SUBSCRIBE,
//! UNSUBSCRIBE, delivery, PUBACK/PUBREC/PUBCOMP, DISCONNECT) is a Session command through the
//! log; what a session still has to receive is read from its cursor (`read_filters`), each
//! message once however many of its subscriptions match, with the QoS and subscription ids of
//! those that do. This module builds commands and shapes replies; `sessions.rs` decides.

use std::sync::Arc;

use bytes::Bytes;

use super::filter_read::TopicMessage;
use super::session_command::{
    self, InFlightNew, Owner, SessionCommand, SessionOp, SubscribeOptions, Will,
};
use super::sessions::{Session, SessionError, SessionOutcome};
use super::{CommandTag, Engine, EngineError, Message, Result, topic_filter};
use crate::store::{LogEntry, LogIndex, RecordOp, StoreError};

/// The message property naming the session (MQTT client id) that published a message: a
/// subscription with No Local does not match that session's own messages.
pub const PUBLISHER_PROPERTY: &[u8] = b"mqtt.client";

/// A message a session has to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMessage {
    /// The topic it was published to.
    pub topic: Bytes,
    /// The message.
    pub message: Message,
    /// The highest QoS among the subscriptions that match it (the front end delivers
    /// `min(this, the publish QoS)`).
    pub qos: u8,
    /// The subscription identifiers of those subscriptions (v5), without 0s.
    pub subscription_ids: Vec<u32>,
    /// Whether one of them asked for Retain As Published (v5).
    pub retain_as_published: bool,
}

/// Which session a command is for: the client id and, for a command of a connection, the
/// epoch its Open gave it (the command is refused, `TakenOver`, once another connection has
/// the session). A client id alone (`From<Bytes>`) is not fenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    /// MQTT client id.
    pub client: Bytes,
    /// The connection's epoch.
    pub epoch: Option<LogIndex>,
}

impl From<Bytes> for SessionRef {
    fn from(client: Bytes) -> SessionRef {
        SessionRef {
            client,
            epoch: None,
        }
    }
}

/// What CONNECT made of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// MQTT Session Present.
    pub present: bool,
    /// The epoch the connection's commands carry ([`SessionRef`]).
    pub epoch: LogIndex,
}

/// What a session read from its cursor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRead {
    /// Messages to deliver, in log order.
    pub messages: Vec<SessionMessage>,
    /// How far the read went: the log index to give `session_deliver` once these are out.
    pub upto: LogIndex,
    /// Messages the read went through, those the session does not get included: a read that
    /// went through fewer than it was asked for went through everything applied.
    pub scanned: usize,
}

/// A change of who holds sessions, as applied on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// `client`'s session was opened by connection `owner` (`None`: one not named).
    Opened {
        /// MQTT client id.
        client: Bytes,
        /// The connection that holds it now.
        owner: Option<Owner>,
    },
    /// Node `node`'s connections, but for those of its broker run `except_boot`, lost the
    /// sessions they held.
    Lost {
        /// The node.
        node: u64,
        /// Its broker run whose connections keep theirs.
        except_boot: u64,
    },
}

/// The session event of an applied entry, if it is an Open or a Lost session command (other
/// entries cost a look at their tag, and session commands one at their kind).
pub(super) fn event_of(entry: &LogEntry) -> Option<SessionEvent> {
    let command = entry.command.as_ref();
    if command.get(1) != Some(&(CommandTag::Session as u8)) {
        return None;
    }
    let body = command.get(2..)?;
    let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    // Opens and Losts are never fenced: their kind follows the client id.
    if !matches!(body.get(4 + len), Some(1 | 11 | 12)) {
        return None;
    }
    match session_command::decode(body)? {
        SessionCommand {
            client,
            op: SessionOp::Open { owner, .. },
            ..
        } => Some(SessionEvent::Opened { client, owner }),
        SessionCommand {
            op: SessionOp::Lost { node, except_boot },
            ..
        } => Some(SessionEvent::Lost { node, except_boot }),
        _ => None,
    }
}

/// The sessions as [`Engine::sessions_summary`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionsSummary {
    /// Sessions in all.
    pub total: usize,
    /// Connected ones.
    pub connected: usize,
    /// The listed ones, connected first, each by client id.
    pub sessions: Vec<SessionSummary>,
}

/// One MQTT session, as a list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// The client id.
    pub client: Bytes,
    /// Whether a connection holds it.
    pub connected: bool,
    /// The node whose broker holds it, when connected and known.
    pub node: Option<u64>,
    /// Its subscriptions' filters.
    pub subscriptions: Vec<Bytes>,
    /// Packets in flight to it.
    pub inflight: usize,
    /// Session Expiry Interval (s; `u32::MAX`: never).
    pub expiry_s: u32,
    /// When it disconnected (ms), if it did.
    pub disconnected_ms: Option<u64>,
}

impl Engine {
    /// Every session opened and every node's connections declared lost from now on, as this
    /// node applies them. A receiver that falls behind is told how much it missed (then look
    /// at the sessions themselves: [`Engine::session`]).
    pub fn session_events(&self) -> tokio::sync::broadcast::Receiver<SessionEvent> {
        self.inner.session_events.subscribe()
    }

    /// The MQTT sessions as applied, by client id: how many there are, how many are connected,
    /// and the first `limit` of them (connected ones first). What the console lists.
    pub fn sessions_summary(&self, limit: usize) -> SessionsSummary {
        let state = self.inner.lock_state();
        let all = &state.sessions.by_client;
        let summary = |(client, s): (&Bytes, &Session)| SessionSummary {
            client: client.clone(),
            connected: s.disconnected_ms.is_none(),
            node: s
                .owner
                .filter(|_| s.disconnected_ms.is_none())
                .map(|o| o.node),
            subscriptions: s.subscriptions.keys().cloned().collect(),
            inflight: s.inflight.len(),
            expiry_s: s.expiry_s,
            disconnected_ms: s.disconnected_ms,
        };
        let connected = all.values().filter(|s| s.disconnected_ms.is_none()).count();
        let mut listed: Vec<SessionSummary> = all
            .iter()
            .filter(|(_, s)| s.disconnected_ms.is_none())
            .take(limit)
            .map(summary)
            .collect();
        let room = limit.saturating_sub(listed.len());
        listed.extend(
            all.iter()
                .filter(|(_, s)| s.disconnected_ms.is_some())
                .take(room)
                .map(summary),
        );
        SessionsSummary {
            total: all.len(),
            connected,
            sessions: listed,
        }
    }

    /// Whether a connected session is held by a connection of `node` of another broker run
    /// than `except_boot` (as applied here).
    pub fn sessions_held_by(&self, node: u64, except_boot: u64) -> bool {
        self.inner
            .lock_state()
            .sessions
            .by_client
            .values()
            .any(|s| {
                s.disconnected_ms.is_none()
                    && s.owner
                        .is_some_and(|o| o.node == node && o.boot != except_boot)
            })
    }

    /// Declares the connections of `node` lost, but for those of its broker run
    /// `except_boot` (0: all): each session one of them held is closed as a lost
    /// connection's (its Will goes out after its delay). A broker calls it for its own node
    /// when it starts (connections of an earlier run are gone); the leader, for a node it has
    /// not heard from for `session_node_lost_ms`.
    pub async fn sessions_lost(&self, node: u64, except_boot: u64) -> Result<()> {
        self.session_command(Bytes::new(), SessionOp::Lost { node, except_boot })
            .await
            .map(|_| ())
    }

    async fn session_command(
        &self,
        session: impl Into<SessionRef>,
        op: SessionOp,
    ) -> Result<SessionOutcome> {
        let SessionRef { client, epoch } = session.into();
        let command = SessionCommand { client, op, epoch };
        let applied = self
            .run_command(CommandTag::Session, |out| {
                session_command::encode(&command, out)
            })
            .await?;
        match applied.session {
            Some(SessionOutcome::Error(e)) => Err(e.into()),
            Some(o) => Ok(o),
            None => Err(EngineError::Store(StoreError::Failed(
                "a session command was applied without an answer".into(),
            ))),
        }
    }

    /// CONNECT: opens the client's session (a new one with `clean_start`, dropping what was
    /// there); answers MQTT's Session Present. `expiry_s`: how long it outlives a disconnect
    /// (0: not at all; `u32::MAX`: for ever). `will`: the CONNECT's Will (it replaces, and
    /// cancels, an earlier one not yet published). `TooManySessions` past `max_sessions`.
    pub async fn session_open(
        &self,
        client: Bytes,
        clean_start: bool,
        expiry_s: u32,
        will: Option<Will>,
    ) -> Result<bool> {
        self.session_open_by(client, clean_start, expiry_s, will, None)
            .await
            .map(|o| o.present)
    }

    /// [`Engine::session_open`] by connection `owner`: the session is its until another
    /// connection opens it (a connection elsewhere that held it is told so: see
    /// [`Engine::session_events`]); its commands carry the epoch answered.
    pub async fn session_open_by(
        &self,
        client: Bytes,
        clean_start: bool,
        expiry_s: u32,
        will: Option<Will>,
        owner: Option<Owner>,
    ) -> Result<Opened> {
        if let Some(w) = &will {
            topic_filter::check_topic_name(&w.topic).map_err(EngineError::BadTopic)?;
            if w.qos > 2 {
                return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                    "QoS above 2",
                )));
            }
        }
        match self
            .session_command(
                client,
                SessionOp::Open {
                    clean_start,
                    expiry_s,
                    will,
                    owner,
                },
            )
            .await?
        {
            SessionOutcome::Opened { present, epoch } => Ok(Opened { present, epoch }),
            other => Err(EngineError::Store(StoreError::Failed(Arc::from(format!(
                "a session open answered {other:?}"
            ))))),
        }
    }

    /// SUBSCRIBE: adds or replaces subscriptions; each matches messages published after it.
    /// Filters are checked first (`BadTopic`), QoS must be 0..=2.
    pub async fn session_subscribe(
        &self,
        client: impl Into<SessionRef>,
        subs: Vec<(Bytes, SubscribeOptions)>,
    ) -> Result<()> {
        for (f, o) in &subs {
            topic_filter::check_filter(f).map_err(EngineError::BadTopic)?;
            if o.qos > 2 {
                return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                    "QoS above 2",
                )));
            }
            if o.retain_handling > 2 {
                return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                    "retain handling above 2",
                )));
            }
        }
        self.session_command(client, SessionOp::Subscribe(subs))
            .await
            .map(|_| ())
    }

    /// UNSUBSCRIBE: per filter, whether it was subscribed.
    pub async fn session_unsubscribe(
        &self,
        client: impl Into<SessionRef>,
        filters: Vec<Bytes>,
    ) -> Result<Vec<bool>> {
        match self
            .session_command(client, SessionOp::Unsubscribe(filters))
            .await?
        {
            SessionOutcome::Unsubscribed(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }

    /// The messages of a read up to `upto` went out; those with a packet id are in flight.
    pub async fn session_deliver(
        &self,
        client: impl Into<SessionRef>,
        upto: LogIndex,
        inflight: Vec<InFlightNew>,
    ) -> Result<()> {
        self.session_command(client, SessionOp::Deliver { upto, inflight })
            .await
            .map(|_| ())
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for `packet_id`.
    pub async fn session_complete(
        &self,
        client: impl Into<SessionRef>,
        packet_id: u16,
    ) -> Result<()> {
        self.session_complete_many(client, vec![packet_id]).await
    }

    /// A run of PUBACK / PUBCOMP packets, as one command.
    pub async fn session_complete_many(
        &self,
        client: impl Into<SessionRef>,
        packet_ids: Vec<u16>,
    ) -> Result<()> {
        self.session_command(client, SessionOp::Complete(packet_ids))
            .await
            .map(|_| ())
    }

    /// PUBREC (QoS 2) for `packet_id`.
    pub async fn session_received(
        &self,
        client: impl Into<SessionRef>,
        packet_id: u16,
    ) -> Result<()> {
        self.session_command(client, SessionOp::Received(packet_id))
            .await
            .map(|_| ())
    }

    /// PUBREL (inbound QoS 2) for `packet_id`: the exchange is over and the packet id may carry
    /// a new message. Whether it was awaiting release (stored, PUBREC sent).
    pub async fn session_released(
        &self,
        client: impl Into<SessionRef>,
        packet_id: u16,
    ) -> Result<bool> {
        match self
            .session_command(client, SessionOp::Released(packet_id))
            .await?
        {
            SessionOutcome::Released(known) => Ok(known),
            _ => Ok(false),
        }
    }

    /// The connection ended (with a new expiry interval from a v5 DISCONNECT, if any); an
    /// expiry of 0 ends the session now (after its Will, if that goes out). `publish_will`:
    /// the connection ended without a normal DISCONNECT (or with v5 reason 0x04), so the
    /// Will is published after its delay; otherwise it is discarded.
    pub async fn session_close(
        &self,
        client: impl Into<SessionRef>,
        expiry_s: Option<u32>,
        publish_will: bool,
    ) -> Result<()> {
        self.session_command(
            client,
            SessionOp::Close {
                expiry_s,
                publish_will,
            },
        )
        .await
        .map(|_| ())
    }

    /// The client's session as applied.
    pub fn session(&self, client: &[u8]) -> Option<Session> {
        self.inner
            .lock_state()
            .sessions
            .by_client
            .get(client)
            .cloned()
    }

    /// What the session still has to receive after its cursor, at most about `count`
    /// messages (a read never ends inside a log entry): each message once, with the QoS and
    /// subscription ids of the subscriptions that match it and were made before it (a No Local
    /// subscription does not match the session's own messages).
    pub fn session_pending(&self, client: &[u8], count: usize) -> Result<SessionRead> {
        self.session_pending_from(client, 0, count)
    }

    /// As [`Engine::session_pending`], from `from` when that is past the session's committed
    /// cursor (a front end that moved it without committing: QoS 0 deliveries).
    pub fn session_pending_from(
        &self,
        client: &[u8],
        from: LogIndex,
        count: usize,
    ) -> Result<SessionRead> {
        let mut session = self.session(client).ok_or(SessionError::NoSession)?;
        session.cursor = session.cursor.max(from);
        // Shared subscriptions are consumer groups, read by the front end (`read_group`).
        let filters: Vec<&[u8]> = session
            .subscriptions
            .keys()
            .map(|f| f.as_ref())
            .filter(|f| topic_filter::shared_subscription(f).is_none())
            .collect();
        if filters.is_empty() {
            return Ok(SessionRead {
                messages: Vec::new(),
                upto: session.cursor,
                scanned: 0,
            });
        }
        let read = self.read_filters(&filters, session.cursor, count)?;
        let upto = read.last().map_or(session.cursor, |m| m.message.log_index);
        let scanned = read.len();
        let messages = read
            .into_iter()
            .filter_map(|m| session_message(&session, client, m))
            .collect();
        Ok(SessionRead {
            messages,
            upto,
            scanned,
        })
    }

    /// What the session has to receive from the one applied entry at `index`, taken from the
    /// entries kept in memory (no reads): for a session that had everything matching up to an
    /// earlier index and was woken by this entry, its next messages. `None` when the entry is
    /// no longer kept (read from the log instead). The read goes up to `index`. `session` is
    /// the client's, as the caller just read it (`Engine::session`).
    pub fn session_pending_at(
        &self,
        session: &Session,
        client: &[u8],
        index: LogIndex,
    ) -> Option<SessionRead> {
        let (entry, added) = self.inner.store.recent_entry(index)?;
        let mut scanned = 0;
        let messages = entry
            .records
            .iter()
            .enumerate()
            .filter(|(k, r)| r.db == 0 && r.op == RecordOp::Message && added.get(*k))
            .filter_map(|(k, _)| {
                scanned += 1;
                let m = topic_message(&entry, u16::try_from(k).ok()?)?;
                session_message(session, client, m)
            })
            .collect();
        Some(SessionRead {
            messages,
            upto: index,
            scanned,
        })
    }

    /// The message at a log position, with its topic (an in-flight packet to resend); `None`
    /// when retention removed it.
    pub fn message_at_position(
        &self,
        log_index: LogIndex,
        sub: u16,
    ) -> Result<Option<TopicMessage>> {
        let log = self.inner.store.log();
        if log_index < log.first_index() || log_index > log.last_index() {
            return Ok(None);
        }
        if let Some((entry, _)) = self.inner.store.recent_entry(log_index) {
            return Ok(topic_message(&entry, sub));
        }
        Ok(topic_message(&log.entry(log_index)?, sub))
    }
}

/// `m` as `client`'s session receives it: with the QoS and subscription ids of the (not
/// shared) subscriptions that match it and were made before it — a No Local one does not
/// match the session's own messages — or `None` when none does.
fn session_message(session: &Session, client: &[u8], m: TopicMessage) -> Option<SessionMessage> {
    let TopicMessage { topic, message } = m;
    let own = message
        .properties
        .iter()
        .any(|(k, v)| k.as_ref() == PUBLISHER_PROPERTY && v.as_ref() == client);
    let matching: Vec<_> = session
        .subscriptions
        .iter()
        .filter(|(f, s)| {
            s.since < message.log_index
                && !(own && s.options.no_local)
                && topic_filter::shared_subscription(f).is_none()
                && topic_filter::filter_matches(f, &topic)
        })
        .map(|(_, s)| s.options)
        .collect();
    let qos = matching.iter().map(|o| o.qos).max()?;
    Some(SessionMessage {
        topic,
        message,
        qos,
        subscription_ids: matching
            .iter()
            .map(|o| o.subscription_id)
            .filter(|id| *id != 0)
            .collect(),
        retain_as_published: matching.iter().any(|o| o.retain_as_published),
    })
}

/// The message of sub-record `sub` of `entry`, with its topic.
fn topic_message(entry: &LogEntry, sub: u16) -> Option<TopicMessage> {
    let r = entry.records.get(usize::from(sub))?;
    Some(TopicMessage {
        topic: r.topic.clone(),
        message: Message {
            id: r.id,
            fields: r.fields.clone(),
            properties: r.properties.clone(),
            message_key: r.message_key.clone(),
            timestamp_ms: entry.timestamp_ms,
            log_index: entry.index,
            sub,
        },
    })
}
