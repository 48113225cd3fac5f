//! PUBLISH from the client: a run of them is stored by one proposal, and each is acknowledged
//! (PUBACK / PUBREC) only after its append is committed. Runs are proposed in the order they
//! arrive and their commits awaited together (several runs share an fdatasync); their
//! acknowledgements go out in the same order. It never delivers anything.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use manifold_core::engine::{AppendRequest, EngineError, RetainEffect, mqtt_producer};
use manifold_core::store::StreamId;

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

    /// Stores a run of PUBLISH packets: one proposal, made now (so the log keeps the
    /// connection's order), whose commit is awaited alongside the next runs — a publisher's
    /// runs share fdatasyncs instead of waiting one each. Acknowledgements go out in order as
    /// runs commit (`settle_publishing`); past `MAX_RUNS_IN_FLIGHT` runs, this waits.
    pub(super) async fn publish_run(&mut self, run: Vec<Publish>) -> Result<(), u8> {
        if run.is_empty() {
            return Ok(());
        }
        let Some(client) = self.client.clone() else {
            return Err(0x82);
        };
        let mut requests = Vec::with_capacity(run.len());
        let mut acks = Vec::with_capacity(run.len());
        for p in run {
            let decided = if p.topic == "$SYS" || p.topic.starts_with("$SYS/") {
                Some(0x87)
            } else {
                requests.push(self.append_request(&p));
                None
            };
            acks.push((p.qos, p.packet_id, decided));
        }
        let owed = acks.iter().filter(|(q, ..)| *q != QoS::AtMostOnce).count();
        let mut answers: Pin<Box<dyn Future<Output = Answers> + Send>> =
            Box::pin(async move { client.append_many(requests).await });
        // The first poll proposes (under the engine's proposer lock): in order, now.
        let done = match std::future::poll_fn(|cx| Poll::Ready(answers.as_mut().poll(cx))).await {
            Poll::Ready(a) => Some(a),
            Poll::Pending => None,
        };
        self.publishing.push_back(PublishRun {
            acks,
            answers: Mutex::new(answers),
            done,
        });
        self.publishing_owed += owed;
        self.settle_publishing(false).await;
        while self.publishing.len() > MAX_RUNS_IN_FLIGHT {
            self.settle_one().await;
        }
        Ok(())
    }

    /// The append of one PUBLISH.
    fn append_request(&self, p: &Publish) -> AppendRequest {
        let mut req = AppendRequest::new(
            0,
            Bytes::from(p.topic.clone().into_bytes()),
            fields_of(p.payload.clone()),
        );
        let stored = message_properties::stored(&self.id, p.qos, p.retain, &p.properties);
        req.properties = stored.properties;
        req.message_key = stored.message_key;
        if p.qos == QoS::ExactlyOnce {
            // Exactly once: a resend (DUP, after a reconnect — to any node, after a failover
            // too) is recognised by the engine's dedupe until PUBREL.
            req.producer = Some((mqtt_producer(&self.id), u64::from(p.packet_id)));
        }
        if p.retain {
            req.retain = if p.payload.is_empty() {
                RetainEffect::Clear
            } else {
                RetainEffect::Set
            };
        }
        req
    }

    /// Acknowledges the runs whose appends are committed, oldest first, stopping at the first
    /// that is not; with `all`, waits for every run.
    pub(super) async fn settle_publishing(&mut self, all: bool) {
        while let Some(front) = self.publishing.front_mut() {
            if front.done.is_none() {
                let answers = front
                    .answers
                    .get_mut()
                    .unwrap_or_else(PoisonError::into_inner);
                let polled = if all {
                    Poll::Ready(answers.as_mut().await)
                } else {
                    std::future::poll_fn(|cx| Poll::Ready(answers.as_mut().poll(cx))).await
                };
                match polled {
                    Poll::Ready(a) => front.done = Some(a),
                    Poll::Pending => return,
                }
            }
            self.acknowledge_front();
        }
    }

    /// Waits for the oldest run and acknowledges it.
    pub(super) async fn settle_one(&mut self) {
        if let Some(front) = self.publishing.front_mut() {
            if front.done.is_none() {
                let answers = front
                    .answers
                    .get_mut()
                    .unwrap_or_else(PoisonError::into_inner);
                front.done = Some(answers.as_mut().await);
            }
            self.acknowledge_front();
        }
    }

    /// PUBACK / PUBREC for each packet of the oldest run, whose answers are in.
    fn acknowledge_front(&mut self) {
        let Some(PublishRun {
            acks,
            done: Some(answers),
            ..
        }) = self.publishing.pop_front()
        else {
            return;
        };
        let mut answers = answers.into_iter();
        for (qos, packet_id, decided) in acks {
            let code = decided.unwrap_or_else(|| match answers.next() {
                Some(Ok(_)) => 0x00,
                Some(Err(EngineError::NoPermission { .. })) => 0x87,
                Some(Err(EngineError::TooLarge { .. })) => 0x95,
                Some(Err(EngineError::RetainedLimit { .. })) => 0x97,
                Some(Err(_)) | None => 0x80,
            });
            let code = if self.v5() { code } else { 0 };
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.publishing_owed -= 1;
                    self.send(&Packet::PubAck(Ack {
                        packet_id,
                        code,
                        properties: Properties::default(),
                    }));
                }
                QoS::ExactlyOnce => {
                    self.publishing_owed -= 1;
                    if code < 0x80 {
                        self.awaiting_release.insert(packet_id);
                    }
                    self.send(&Packet::PubRec(Ack {
                        packet_id,
                        code,
                        properties: Properties::default(),
                    }));
                }
            }
        }
    }
}

/// Waits until the oldest run's appends are committed; for ever when none is waiting.
pub(super) async fn front_committed(runs: &mut VecDeque<PublishRun>) {
    match runs.front_mut() {
        Some(front) if front.done.is_none() => {
            let answers = front
                .answers
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner);
            front.done = Some(answers.as_mut().await);
        }
        _ => std::future::pending().await,
    }
}

/// What a run's appends were answered, one per request.
pub(super) type Answers = Vec<Result<Option<StreamId>, EngineError>>;

/// Runs of PUBLISH packets proposed and not yet acknowledged, at most (then the connection
/// waits for the oldest before it reads more).
const MAX_RUNS_IN_FLIGHT: usize = 8;

/// A run of PUBLISH packets proposed, its commit awaited.
pub(super) struct PublishRun {
    /// Per packet, in order: its QoS, packet id, and its code when decided without an append
    /// (`None`: the next answer decides).
    acks: Vec<(QoS, u16, Option<u8>)>,
    /// The appends' answers, once committed (in a mutex only to be `Sync`: it is only ever
    /// reached through `&mut`, which takes no lock).
    answers: Mutex<Pin<Box<dyn Future<Output = Answers> + Send>>>,
    /// The answers, when in.
    done: Option<Answers>,
}
