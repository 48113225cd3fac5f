//! Messages to the client: read from the session's cursor, bound to packet ids by a committed
//! delivery, then queued as PUBLISH packets; after a reconnect, what was in flight goes again.
//! It never sends a QoS 1/2 message whose packet id is not committed.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use manifold_core::engine::{Client, EngineError, InFlightNew, Session, SessionRead, topic_filter};
use tokio::time::Instant;

use super::{Conn, DELIVERY_BATCH};
use crate::broker::message_properties::{self, published_qos};
use crate::broker::payload::payload_of;
use crate::codec::{Ack, Packet, Publish, QoS};

/// How long a cursor moved by QoS 0 deliveries may go uncommitted.
const CURSOR_COMMIT: Duration = Duration::from_secs(1);

impl Conn {
    /// After a reconnect: what was in flight goes again (PUBLISH with DUP, or PUBREL once
    /// PUBREC came), in packet-id order.
    pub(super) fn resend_in_flight(&mut self) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let Some(session) = client.session(&self.id) else {
            return;
        };
        for (packet_id, f) in session.inflight.iter() {
            if f.received {
                self.send(&Packet::PubRel(Ack::new(*packet_id)));
                continue;
            }
            let Ok(Some(m)) = client.engine().message_at_position(f.log_index, f.sub) else {
                continue; // retention took it
            };
            let publish = Publish {
                dup: true,
                qos: QoS::from_bits(f.qos).unwrap_or(QoS::AtLeastOnce),
                retain: false,
                topic: String::from_utf8_lossy(&m.topic).into_owned(),
                packet_id: *packet_id,
                properties: message_properties::outgoing(
                    &m.message.properties,
                    m.message.timestamp_ms,
                    message_properties::now_ms(),
                    self.v5(),
                ),
                payload: payload_of(&m.message.fields),
            };
            self.publish_out(publish);
        }
    }

    /// A delivery round: the session's subscriptions, then its shared ones. Returns the filters
    /// to wait on.
    pub(super) async fn deliver(&mut self, client: &Client) -> Result<Vec<Bytes>, EngineError> {
        let mut filters = self.deliver_subscriptions(client).await?;
        filters.extend(self.deliver_shared(client).await?);
        Ok(filters)
    }

    /// Sends what the session's (not shared) subscriptions have to receive, as far as the
    /// client's window allows: reads from the session's cursor, commits the delivery (binding
    /// packet ids to messages), then queues the PUBLISH packets. Returns the filters to wait
    /// on (none while the window is full: an acknowledgement reopens it).
    async fn deliver_subscriptions(&mut self, client: &Client) -> Result<Vec<Bytes>, EngineError> {
        loop {
            let Some(session) = client.session(&self.id) else {
                self.sys_filters.clear();
                return Ok(Vec::new());
            };
            let filters: Vec<Bytes> = session
                .subscriptions
                .keys()
                .filter(|f| topic_filter::shared_subscription(f).is_none())
                .cloned()
                .collect();
            // `$SYS` values are node-local, sent apart (`send_sys`), never read from the log.
            self.sys_filters = filters
                .iter()
                .filter(|f| f.starts_with(b"$SYS"))
                .cloned()
                .collect();
            if filters.is_empty() {
                return Ok(filters);
            }
            let window = usize::from(self.peer_receive_max).saturating_sub(session.inflight.len());
            if window == 0 {
                return Ok(Vec::new());
            }
            let from = self.cursor.max(session.cursor);
            let read = client.session_pending_from(&self.id, from, window.min(DELIVERY_BATCH))?;
            if read.messages.is_empty() && read.upto <= from {
                return Ok(filters);
            }
            let limit = self.shared.config.clean_lag_limit_ms;
            if session.expiry_s == 0
                && limit > 0
                && read.messages.first().is_some_and(|m| {
                    message_properties::now_ms().saturating_sub(m.message.timestamp_ms) > limit
                })
            {
                // Too far behind for a live subscriber: everything up to now is passed over.
                self.cursor = client.engine().applied_index().max(read.upto);
                crate::broker::stats::add(&self.shared.stats.lag_skips, 1);
                continue;
            }
            // Full: the read stopped at its count, and more may follow (a read through
            // messages the session does not get counts them too — else the round would end
            // short of the head, and a live subscriber attach there).
            let full = read.scanned >= window.min(DELIVERY_BATCH);
            self.send_read(client, &session, read).await?;
            if !full {
                return Ok(filters);
            }
        }
    }

    /// Delivers the messages of the read from the session's last read up to the entry at
    /// `index`, taken from the entries the engine keeps in memory, when that is all there is:
    /// the entry woke this connection, which had everything matching before it. `false` when
    /// it cannot (the entry is no longer kept, the window is too small, or it is not ahead of
    /// the cursor): a normal round reads from the log instead.
    pub(super) async fn deliver_at(
        &mut self,
        client: &Client,
        index: u64,
    ) -> Result<bool, EngineError> {
        let Some(session) = client.session(&self.id) else {
            return Ok(false);
        };
        if index <= self.cursor.max(session.cursor) {
            return Ok(false);
        }
        let window = usize::from(self.peer_receive_max).saturating_sub(session.inflight.len());
        let Some(read) = client.session_pending_at(&session, &self.id, index) else {
            return Ok(false);
        };
        if read.messages.len() > window.min(DELIVERY_BATCH) {
            return Ok(false);
        }
        self.send_read(client, &session, read).await?;
        Ok(true)
    }

    /// Sends a read of the session's subscriptions: binds its QoS 1/2 messages to packet ids
    /// (committed), moves the cursor to where the read went, queues the PUBLISH packets.
    async fn send_read(
        &mut self,
        client: &Client,
        session: &Session,
        read: SessionRead,
    ) -> Result<(), EngineError> {
        let mut inflight = Vec::new();
        let mut packets = Vec::with_capacity(read.messages.len());
        let mut taken = HashSet::new();
        let now = message_properties::now_ms();
        for m in read.messages {
            let stored = &m.message.properties;
            if message_properties::expired(stored, m.message.timestamp_ms, now) {
                continue; // passed over: the cursor moves past it
            }
            let published = published_qos(&m.message.properties);
            let qos = QoS::from_bits(m.qos.min(published)).unwrap_or(QoS::AtMostOnce);
            let packet_id = if qos == QoS::AtMostOnce {
                0
            } else {
                let id = self.free_packet_id(session, &mut taken);
                inflight.push(InFlightNew {
                    packet_id: id,
                    log_index: m.message.log_index,
                    sub: m.message.sub,
                    qos: qos as u8,
                    shared: None,
                });
                id
            };
            let mut properties =
                message_properties::outgoing(stored, m.message.timestamp_ms, now, self.v5());
            if self.v5() {
                properties.subscription_ids = m.subscription_ids.clone();
            }
            let retain = m.retain_as_published && message_properties::published_retained(stored);
            packets.push(Publish {
                dup: false,
                qos,
                retain,
                topic: String::from_utf8_lossy(&m.topic).into_owned(),
                packet_id,
                properties,
                payload: payload_of(&m.message.fields),
            });
        }
        self.cursor = read.upto;
        // QoS 1/2 packets are bound to their messages by a commit, which moves the
        // committed cursor too; a round of QoS 0 only moves this connection's cursor,
        // committed at most every CURSOR_COMMIT for a session that outlives its connection
        // (QoS 0 may repeat after a crash, as QoS 1 may) and when the connection ends.
        let persistent = session.expiry_s > 0;
        if !inflight.is_empty() || (persistent && self.cursor_committed.elapsed() >= CURSOR_COMMIT)
        {
            client
                .session_deliver(self.id.clone(), read.upto, inflight)
                .await?;
            self.cursor_committed = Instant::now();
            self.cursor_dirty = false;
        } else {
            self.cursor_dirty = true;
        }
        for p in packets {
            self.publish_out(p);
        }
        self.drop_unsendable(client).await;
        Ok(())
    }

    /// The node's `$SYS` values (not in the log) that the session's `$SYS` filters match, at
    /// QoS 0 — as of the last tick; or, for a new subscription `filter`, as of now and flagged
    /// retained (they stand for the broker's retained `$SYS` messages, as Mosquitto's are).
    pub(super) fn send_sys(&mut self, filter: Option<&[u8]>) {
        let retain = filter.is_some();
        let values = match filter {
            Some(_) => std::sync::Arc::new(self.shared.stats.sys_messages()),
            None => self.shared.sys.borrow().clone(),
        };
        for (topic, value) in values.iter() {
            let matched = match filter {
                Some(f) => topic_filter::filter_matches(f, topic.as_bytes()),
                None => self
                    .sys_filters
                    .iter()
                    .any(|f| topic_filter::filter_matches(f, topic.as_bytes())),
            };
            if matched {
                self.publish_out(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain,
                    topic: topic.clone(),
                    packet_id: 0,
                    properties: Default::default(),
                    payload: value.clone(),
                });
            }
        }
    }

    /// Commits the cursor this connection moved by QoS 0 deliveries, if it did.
    pub(super) async fn commit_cursor(&mut self, client: &Client) {
        if self.cursor_dirty {
            self.cursor_dirty = false;
            if let Err(e) = client
                .session_deliver(self.id.clone(), self.cursor, Vec::new())
                .await
            {
                tracing::debug!(error = %e, "committing a session's cursor");
            }
        }
    }

    /// Queues a PUBLISH to the client, with a topic alias when the client allows them (v5): the
    /// first message on a topic sets one up, later ones carry the alias and an empty topic.
    /// One the client's Maximum Packet Size refuses is not sent (spec 3.1.2.25: the broker
    /// acts as if it had been); a QoS 1/2 one is remembered to be completed.
    pub(super) fn publish_out(&mut self, mut p: Publish) {
        let mut new_alias = None;
        if self.peer_alias_max > 0 && !p.topic.is_empty() {
            if let Some(alias) = self.aliases_out.get(&p.topic) {
                p.properties.topic_alias = Some(*alias);
                p.topic.clear();
            } else if let Ok(n) = u16::try_from(self.aliases_out.len() + 1)
                && n <= self.peer_alias_max
            {
                p.properties.topic_alias = Some(n);
                new_alias = Some(n);
            }
        }
        // Sent by value (no copy of the packet): what is needed after it is taken first.
        let (qos, packet_id) = (p.qos, p.packet_id);
        let alias_topic = new_alias.map(|_| p.topic.clone());
        if self.send(&Packet::Publish(p)) {
            crate::broker::stats::add(&self.shared.stats.publish_sent, 1);
            if let (Some(n), Some(topic)) = (new_alias, alias_topic) {
                self.aliases_out.insert(topic, n);
            }
        } else if qos != QoS::AtMostOnce {
            self.unsendable.push(packet_id);
        }
    }

    /// Ends the exchanges of QoS 1/2 messages too large for the client to take.
    pub(super) async fn drop_unsendable(&mut self, client: &Client) {
        for packet_id in std::mem::take(&mut self.unsendable) {
            if let Err(e) = client.session_complete(self.id.clone(), packet_id).await {
                tracing::debug!(error = %e, packet_id, "dropping an unsendable message");
            }
        }
    }

    /// The next packet id not in `used` (never 0).
    pub(super) fn free_packet_id(&mut self, session: &Session, taken: &mut HashSet<u16>) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if id != 0 && !session.inflight.contains_key(&id) && taken.insert(id) {
                return id;
            }
        }
    }
}
