//! Messages to the client: read from the session's cursor, bound to packet ids by a committed
//! delivery, then queued as PUBLISH packets; after a reconnect, what was in flight goes again.
//! It never sends a QoS 1/2 message whose packet id is not committed.

use std::collections::HashSet;

use bytes::Bytes;
use manifold_core::engine::{Client, EngineError, InFlightNew};

use super::{Conn, DELIVERY_BATCH};
use crate::broker::payload::{QOS_PROPERTY, payload_of};
use crate::codec::{Ack, Packet, Properties, Publish, QoS};

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
                properties: Properties::default(),
                payload: payload_of(&m.message.fields),
            };
            self.send(&Packet::Publish(publish));
        }
    }

    /// Sends what the session has to receive, as far as the client's window allows: reads
    /// from the session's cursor, commits the delivery (binding packet ids to messages), then
    /// queues the PUBLISH packets. Returns the filters to wait on (none while the window is
    /// full: an acknowledgement reopens it).
    pub(super) async fn deliver(&mut self, client: &Client) -> Result<Vec<Bytes>, EngineError> {
        loop {
            let Some(session) = client.session(&self.id) else {
                return Ok(Vec::new());
            };
            let filters: Vec<Bytes> = session.subscriptions.keys().cloned().collect();
            if filters.is_empty() {
                return Ok(filters);
            }
            let window = usize::from(self.peer_receive_max).saturating_sub(session.inflight.len());
            if window == 0 {
                return Ok(Vec::new());
            }
            let read = client.session_pending(&self.id, window.min(DELIVERY_BATCH))?;
            if read.messages.is_empty() && read.upto <= session.cursor {
                return Ok(filters);
            }
            let mut inflight = Vec::new();
            let mut packets = Vec::with_capacity(read.messages.len());
            let mut used: HashSet<u16> = session.inflight.keys().copied().collect();
            let full = read.messages.len() >= window.min(DELIVERY_BATCH);
            for m in read.messages {
                let published = published_qos(&m.message.properties);
                let qos = QoS::from_bits(m.qos.min(published)).unwrap_or(QoS::AtMostOnce);
                let packet_id = if qos == QoS::AtMostOnce {
                    0
                } else {
                    let id = self.free_packet_id(&used);
                    used.insert(id);
                    inflight.push(InFlightNew {
                        packet_id: id,
                        log_index: m.message.log_index,
                        sub: m.message.sub,
                        qos: qos as u8,
                    });
                    id
                };
                let mut properties = Properties::default();
                if self.v5() {
                    properties.subscription_ids = m.subscription_ids.clone();
                }
                packets.push(Packet::Publish(Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: String::from_utf8_lossy(&m.topic).into_owned(),
                    packet_id,
                    properties,
                    payload: payload_of(&m.message.fields),
                }));
            }
            client
                .session_deliver(self.id.clone(), read.upto, inflight)
                .await?;
            for p in &packets {
                self.send(p);
            }
            if !full {
                return Ok(filters);
            }
        }
    }

    /// The next packet id not in `used` (never 0).
    pub(super) fn free_packet_id(&mut self, used: &HashSet<u16>) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if id != 0 && !used.contains(&id) {
                return id;
            }
        }
    }
}

/// The QoS a message was published with over MQTT (property `mqtt.qos`); 2 for messages from
/// other protocols (they go at the subscription's QoS).
pub(super) fn published_qos(properties: &[(Bytes, Bytes)]) -> u8 {
    properties
        .iter()
        .find(|(k, _)| k.as_ref() == QOS_PROPERTY)
        .and_then(|(_, v)| v.first())
        .map_or(2, |b| b.saturating_sub(b'0').min(2))
}
