//! SUBSCRIBE and UNSUBSCRIBE: the session's filters (committed), the SUBACK / UNSUBACK codes,
//! and the retained messages a new subscription gets. It never decides what a subscription
//! receives later (the engine does, from the log).

use std::collections::HashSet;

use bytes::Bytes;
use manifold_core::engine::{Client, EngineError, InFlightNew, SubscribeOptions, topic_filter};

use super::Conn;
use crate::broker::message_properties::{self, published_qos};
use crate::broker::payload::payload_of;
use crate::codec::{
    Packet, Properties, Publish, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe, topic,
};

impl Conn {
    pub(super) async fn subscribe(&mut self, client: &Client, s: Subscribe) {
        let v5 = self.v5();
        let subscription_id = s.properties.subscription_ids.first().copied().unwrap_or(0);
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        let mut accepted = Vec::new();
        for sub in &s.subscriptions {
            if let Some(Ok((group, topic))) = topic::shared(&sub.filter)
                && let Err(code) = self.join_share(client, group, topic).await
            {
                codes.push(code);
                continue;
            }
            let options = SubscribeOptions {
                qos: sub.qos as u8,
                no_local: sub.no_local,
                retain_as_published: sub.retain_as_published,
                retain_handling: sub.retain_handling,
                subscription_id,
            };
            codes.push(sub.qos as u8);
            accepted.push((Bytes::from(sub.filter.clone().into_bytes()), options));
        }
        let existed: Vec<bool> = {
            let session = client.session(&self.id);
            accepted
                .iter()
                .map(|(f, _)| {
                    session
                        .as_ref()
                        .is_some_and(|s| s.subscriptions.contains_key(f))
                })
                .collect()
        };
        if !accepted.is_empty()
            && let Err(e) = client
                .session_subscribe(self.id.clone(), accepted.clone())
                .await
        {
            let code = match e {
                EngineError::NoPermission { .. } if v5 => 0x87,
                _ => 0x80,
            };
            for c in codes.iter_mut().filter(|c| **c < 0x80) {
                *c = code;
            }
            accepted.clear();
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            codes,
            properties: Properties::default(),
        }));
        self.send_retained(client, &accepted, &existed).await;
        for (filter, _) in &accepted {
            if filter.starts_with(b"$SYS") {
                self.send_sys(Some(filter));
                self.sys_filters.push(filter.clone());
            }
        }
    }

    pub(super) async fn unsubscribe(&mut self, client: &Client, u: Unsubscribe) {
        let filters: Vec<Bytes> = u
            .filters
            .iter()
            .map(|f| Bytes::from(f.clone().into_bytes()))
            .collect();
        let found = client
            .session_unsubscribe(self.id.clone(), filters)
            .await
            .unwrap_or_default();
        let codes = if self.v5() {
            (0..u.filters.len())
                .map(|i| {
                    if found.get(i).copied().unwrap_or(false) {
                        0x00
                    } else {
                        0x11
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            codes,
            properties: Properties::default(),
        }));
    }

    /// The retained messages of new subscriptions (Retain Handling 0, or 1 for a subscription
    /// that did not exist), flagged retained, at `min(granted, published QoS)`. Those sent at
    /// QoS 1 or 2 are bound to their packet ids by one committed delivery first, as any other
    /// (within the client's window; past it they go at QoS 0).
    pub(super) async fn send_retained(
        &mut self,
        client: &Client,
        accepted: &[(Bytes, SubscribeOptions)],
        existed: &[bool],
    ) {
        let Some(session) = client.session(&self.id) else {
            return;
        };
        let mut taken = HashSet::new();
        let mut room = usize::from(self.peer_receive_max).saturating_sub(session.inflight.len());
        let mut inflight = Vec::new();
        let mut packets = Vec::new();
        let now = message_properties::now_ms();
        for ((filter, options), existed) in accepted.iter().zip(existed) {
            // A shared subscription gets no retained messages (MQTT 5 4.8.2).
            let send = topic_filter::shared_subscription(filter).is_none()
                && match options.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                };
            if !send {
                continue;
            }
            let Ok(retained) = client.retained(filter) else {
                continue;
            };
            for (topic, r) in retained {
                if message_properties::expired(&r.properties, r.timestamp_ms, now) {
                    continue;
                }
                let qos = options.qos.min(published_qos(&r.properties));
                // Its place in the log (the sub-record), to bind a packet id to it.
                let place = if qos > 0 && room > 0 {
                    client
                        .read_range(
                            0,
                            &topic,
                            std::ops::Bound::Included(r.id),
                            std::ops::Bound::Included(r.id),
                            Some(1),
                            false,
                        )
                        .ok()
                        .and_then(|m| m.into_iter().next())
                        .map(|m| (m.log_index, m.sub))
                } else {
                    None
                };
                let (qos, packet_id) = match place {
                    Some((log_index, sub)) => {
                        let id = self.free_packet_id(&session, &mut taken);
                        room -= 1;
                        inflight.push(InFlightNew {
                            packet_id: id,
                            log_index,
                            sub,
                            qos,
                            shared: None,
                        });
                        (QoS::from_bits(qos).unwrap_or(QoS::AtLeastOnce), id)
                    }
                    None => (QoS::AtMostOnce, 0),
                };
                let mut properties =
                    message_properties::outgoing(&r.properties, r.timestamp_ms, now, self.v5());
                if self.v5() && options.subscription_id != 0 {
                    properties.subscription_ids = vec![options.subscription_id];
                }
                packets.push(Publish {
                    dup: false,
                    qos,
                    retain: true,
                    topic: String::from_utf8_lossy(&topic).into_owned(),
                    packet_id,
                    properties,
                    payload: payload_of(&r.fields),
                });
            }
        }
        if !inflight.is_empty()
            && let Err(e) = client
                .session_deliver(self.id.clone(), session.cursor, inflight)
                .await
        {
            tracing::debug!(error = %e, "binding retained messages to packet ids");
            return;
        }
        for p in packets {
            self.publish_out(p);
        }
        self.drop_unsendable(client).await;
    }
}
