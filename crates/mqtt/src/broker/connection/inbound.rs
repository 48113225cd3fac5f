//! PUBLISH from the client: a run of them is stored by one proposal, and each is acknowledged
//! (PUBACK / PUBREC) only after its append is committed. It never delivers anything.

use bytes::Bytes;
use manifold_core::engine::{AppendRequest, EngineError, RetainEffect, mqtt_producer};

use super::Conn;
use crate::broker::message_properties;
use crate::broker::payload::fields_of;
use crate::codec::{Ack, Packet, Properties, Publish, QoS};

impl Conn {
    /// A PUBLISH's Topic Alias (v5): one with a topic sets the alias up (or changes it), one
    /// without takes the topic from it. `Err`: the reason code to disconnect with — 0x94 for an
    /// alias over the maximum the broker gave, 0x82 for an alias never set up.
    pub(super) fn resolve_alias(&mut self, p: &mut Publish) -> Result<(), u8> {
        let Some(alias) = p.properties.topic_alias.take() else {
            return Ok(());
        };
        if alias == 0 || alias > self.shared.config.topic_alias_maximum {
            return Err(0x94);
        }
        if p.topic.is_empty() {
            p.topic = self.aliases_in.get(&alias).cloned().ok_or(0x82u8)?;
        } else {
            self.aliases_in.insert(alias, p.topic.clone());
        }
        Ok(())
    }

    /// Stores a run of PUBLISH packets (one proposal), then acknowledges each in order.
    pub(super) async fn publish_run(&mut self, run: Vec<Publish>) -> Result<(), u8> {
        if run.is_empty() {
            return Ok(());
        }
        let Some(client) = self.client.clone() else {
            return Err(0x82);
        };
        let mut requests = Vec::with_capacity(run.len());
        // Per packet: `None` if it is appended (its answer decides the code), else the code.
        let mut decided = Vec::with_capacity(run.len());
        for p in &run {
            if p.topic == "$SYS" || p.topic.starts_with("$SYS/") {
                decided.push(Some(0x87));
                continue;
            }
            let mut req = AppendRequest::new(
                0,
                Bytes::from(p.topic.clone().into_bytes()),
                fields_of(p.payload.clone()),
            );
            let stored = message_properties::stored(&self.id, p.qos, p.retain, &p.properties);
            req.properties = stored.properties;
            req.message_key = stored.message_key;
            if p.qos == QoS::ExactlyOnce {
                // Exactly once: a resend (DUP, after a reconnect — to any node, after a
                // failover too) is recognised by the engine's dedupe until PUBREL.
                req.producer = Some((mqtt_producer(&self.id), u64::from(p.packet_id)));
            }
            if p.retain {
                req.retain = if p.payload.is_empty() {
                    RetainEffect::Clear
                } else {
                    RetainEffect::Set
                };
            }
            requests.push(req);
            decided.push(None);
        }
        let mut answers = client.append_many(requests).await.into_iter();
        for (p, decided) in run.iter().zip(decided) {
            let code = decided.unwrap_or_else(|| match answers.next() {
                Some(Ok(_)) => 0x00,
                Some(Err(EngineError::NoPermission { .. })) => 0x87,
                Some(Err(EngineError::TooLarge { .. })) => 0x95,
                Some(Err(EngineError::RetainedLimit { .. })) => 0x97,
                Some(Err(_)) | None => 0x80,
            });
            let code = if self.v5() { code } else { 0 };
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.send(&Packet::PubAck(Ack {
                        packet_id: p.packet_id,
                        code,
                        properties: Properties::default(),
                    }));
                }
                QoS::ExactlyOnce => {
                    if code < 0x80 {
                        self.awaiting_release.insert(p.packet_id);
                    }
                    self.send(&Packet::PubRec(Ack {
                        packet_id: p.packet_id,
                        code,
                        properties: Properties::default(),
                    }));
                }
            }
        }
        Ok(())
    }
}
