//! Shared subscriptions. `$share/{group}/{topic}` with a topic without wildcards is consumer
//! group `group` of stream `topic` in db 0 — the group XREADGROUP reads — and the session is its
//! consumer named by the client id; SUBSCRIBE creates the group at `$` if it is missing (an
//! UNSUBSCRIBE never destroys it). With wildcards, `$share/{group}/{filter}` is the engine's
//! filter group `(group, filter)`, joined on SUBSCRIBE.
//!
//! Each delivery round reads new messages for the member (`read_group` / `filter_group_read`:
//! one command, so which message goes to which member is decided at apply and no two members,
//! MQTT or RESP, get the same one); QoS 1/2 ones are bound to packet ids together with where
//! they are pending (`session_deliver`), and the client's PUBACK (QoS 1) or PUBREC (QoS 2)
//! acknowledges them there in the same command. Messages pending for the member that no packet
//! carries — read just before a crash, handed over by a member whose session ended, or
//! released by one (filter groups) — go first. It never sends a message of the group that
//! another member has been given.

use std::collections::HashSet;

use bytes::Bytes;
use manifold_core::engine::{
    Client, EngineError, GroupError, GroupStart, InFlightNew, Message, PendingQuery, ReadFrom,
    Session, SharedRef, SubscribeOptions, topic_filter,
};
use manifold_core::store::StreamId;

use super::{Conn, DELIVERY_BATCH};
use crate::broker::message_properties::{self, published_qos};
use crate::broker::payload::payload_of;
use crate::codec::{Publish, QoS};

/// One shared subscription of the session.
struct Share {
    group: Bytes,
    /// The topic (a stream group) or the filter (a filter group).
    topic: Bytes,
    /// Whether `topic` has wildcards: a filter group.
    wildcard: bool,
    options: SubscribeOptions,
}

/// A shared subscription's message to deliver.
struct Due {
    /// Where it is pending (or, read without acknowledgement, where it was).
    place: SharedRef,
    /// The topic it was published to.
    topic: Bytes,
    /// The message; `None` when it is gone (deleted, or retention took it).
    message: Option<Message>,
    /// Sent before (a redelivery of a pending message).
    dup: bool,
}

impl Conn {
    /// SUBSCRIBE `$share/group/topic`: the stream group, created at `$` (with its stream) if
    /// missing; or the filter group, joined. The reason code to refuse it with, if refused.
    pub(super) async fn join_share(
        &self,
        client: &Client,
        group: &str,
        topic: &str,
    ) -> Result<(), u8> {
        let (group_b, topic_b) = (
            Bytes::copy_from_slice(group.as_bytes()),
            Bytes::copy_from_slice(topic.as_bytes()),
        );
        let joined = if topic.contains(['+', '#']) {
            client.filter_group_join(group_b, topic_b).await.map(|_| ())
        } else {
            client
                .group_create(0, topic_b, group_b, GroupStart::Last, true, None)
                .await
        };
        match joined {
            Ok(()) | Err(EngineError::Group(GroupError::GroupExists)) => Ok(()),
            Err(EngineError::NoPermission { .. }) if self.v5() => Err(0x87),
            Err(e) => {
                tracing::debug!(error = %e, "joining a shared subscription's group");
                Err(0x80)
            }
        }
    }

    /// A delivery round for the session's shared subscriptions, within the client's window.
    /// Returns the topics (filters) to wait on.
    pub(super) async fn deliver_shared(
        &mut self,
        client: &Client,
    ) -> Result<Vec<Bytes>, EngineError> {
        loop {
            let Some(session) = client.session(&self.id) else {
                return Ok(Vec::new());
            };
            let shares: Vec<Share> = session
                .subscriptions
                .iter()
                .filter_map(|(f, s)| {
                    let (group, topic) = topic_filter::shared_subscription(f)?;
                    Some(Share {
                        group: Bytes::copy_from_slice(group),
                        topic: Bytes::copy_from_slice(topic),
                        wildcard: topic.iter().any(|b| matches!(b, b'+' | b'#')),
                        options: s.options,
                    })
                })
                .collect();
            self.sharing = !shares.is_empty();
            if shares.is_empty() {
                return Ok(Vec::new());
            }
            let mut room =
                usize::from(self.peer_receive_max).saturating_sub(session.inflight.len());
            let mut taken = HashSet::new();
            let mut inflight = Vec::new();
            let mut packets = Vec::new();
            let mut wait_on = Vec::new();
            let mut more = false;
            let now = message_properties::now_ms();
            for share in &shares {
                let due = if share.wildcard {
                    self.read_filter_share(client, &session, share, room)
                        .await?
                } else {
                    self.read_stream_share(client, &session, share, room)
                        .await?
                };
                if share.options.qos == 0 || room > 0 {
                    wait_on.push(share.topic.clone());
                }
                more |= due.len() >= DELIVERY_BATCH;
                let mut ack = Vec::new();
                for Due {
                    place,
                    topic,
                    message,
                    dup,
                } in due
                {
                    let Some(m) = message else {
                        ack.push(place); // gone (deleted, or retention took it)
                        continue;
                    };
                    if message_properties::expired(&m.properties, m.timestamp_ms, now) {
                        ack.push(place);
                        continue;
                    }
                    let qos = share.options.qos.min(published_qos(&m.properties));
                    let packet_id = if qos == 0 || room == 0 {
                        ack.push(place.clone()); // at QoS 0 the client never acknowledges
                        0
                    } else {
                        let id = self.free_packet_id(&session, &mut taken);
                        room -= 1;
                        inflight.push(InFlightNew {
                            packet_id: id,
                            log_index: m.log_index,
                            sub: m.sub,
                            qos,
                            shared: Some(place),
                        });
                        id
                    };
                    let mut properties =
                        message_properties::outgoing(&m.properties, m.timestamp_ms, now, self.v5());
                    if self.v5() && share.options.subscription_id != 0 {
                        properties.subscription_ids = vec![share.options.subscription_id];
                    }
                    packets.push(Publish {
                        dup: dup && packet_id != 0,
                        qos: QoS::from_bits(if packet_id == 0 { 0 } else { qos })
                            .unwrap_or(QoS::AtMostOnce),
                        retain: false,
                        topic: String::from_utf8_lossy(&topic).into_owned(),
                        packet_id,
                        properties,
                        payload: payload_of(&m.fields),
                    });
                }
                if share.options.qos > 0 && !ack.is_empty() {
                    acknowledge(client, share, ack).await?;
                }
            }
            if !inflight.is_empty() {
                client
                    .session_deliver(self.id.clone(), session.cursor, inflight)
                    .await?;
            }
            for p in packets {
                self.publish_out(p);
            }
            self.drop_unsendable(client).await;
            if !more {
                return Ok(wait_on);
            }
        }
    }

    /// What a stream group delivers now: first the member's pending entries no packet carries
    /// (a history read), then new entries — as many as the window has room for (QoS 0: a
    /// batch, read without acknowledgement).
    async fn read_stream_share(
        &self,
        client: &Client,
        session: &Session,
        share: &Share,
        room: usize,
    ) -> Result<Vec<Due>, EngineError> {
        let bound: HashSet<StreamId> = session
            .inflight
            .values()
            .filter_map(|f| match &f.shared {
                Some(SharedRef::Stream { key, group, id })
                    if *key == share.topic && *group == share.group =>
                {
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        let place = |id| SharedRef::Stream {
            key: share.topic.clone(),
            group: share.group.clone(),
            id,
        };
        let due_of = |e: manifold_core::engine::GroupEntry, dup| Due {
            place: place(e.id),
            topic: share.topic.clone(),
            message: e.message,
            dup,
        };
        let qos0 = share.options.qos == 0;
        let mut due = Vec::new();
        if !qos0 && room > 0 {
            let query = PendingQuery {
                start: StreamId::new(0, 0),
                end: StreamId::new(u64::MAX, u64::MAX),
                count: (bound.len() + room) as u64,
                consumer: Some(self.id.clone()),
                min_idle_ms: None,
            };
            let pending = client
                .pending(0, &share.topic, &share.group, &query)
                .unwrap_or_default();
            if pending.iter().any(|p| !bound.contains(&p.id)) {
                let read = client
                    .read_group(
                        0,
                        share.group.clone(),
                        self.id.clone(),
                        vec![(share.topic.clone(), ReadFrom::Pending(StreamId::new(0, 0)))],
                        0,
                        false,
                    )
                    .await?;
                due.extend(
                    read.into_iter()
                        .flat_map(|(_, entries)| entries)
                        .filter(|e| !bound.contains(&e.id))
                        .take(room)
                        .map(|e| due_of(e, true)),
                );
            }
        }
        let count = new_count(qos0, room, due.len());
        if count == 0 {
            return Ok(due);
        }
        let read = client
            .read_group(
                0,
                share.group.clone(),
                self.id.clone(),
                vec![(share.topic.clone(), ReadFrom::New)],
                count as u64,
                qos0,
            )
            .await;
        let Some(read) = self.or_rejoin(client, share, read).await? else {
            return Ok(due);
        };
        due.extend(
            read.into_iter()
                .flat_map(|(_, entries)| entries)
                .map(|e| due_of(e, false)),
        );
        Ok(due)
    }

    /// What a filter group delivers now: the member's pending positions no packet carries,
    /// then positions released by a member that left (claimed), then new messages — as many
    /// as the window has room for (QoS 0: a batch, without acknowledgement).
    async fn read_filter_share(
        &self,
        client: &Client,
        session: &Session,
        share: &Share,
        room: usize,
    ) -> Result<Vec<Due>, EngineError> {
        let place = |position| SharedRef::Filter {
            group: share.group.clone(),
            filter: share.topic.clone(),
            position,
        };
        let qos0 = share.options.qos == 0;
        let mut due = Vec::new();
        if !qos0 && room > 0 {
            let bound: HashSet<(u64, u16)> = session
                .inflight
                .values()
                .filter_map(|f| match &f.shared {
                    Some(SharedRef::Filter {
                        group,
                        filter,
                        position,
                    }) if *group == share.group && *filter == share.topic => Some(*position),
                    _ => None,
                })
                .collect();
            let mine: Vec<((u64, u16), Bytes)> = client
                .engine()
                .filter_group(&share.group, &share.topic)
                .map(|g| {
                    g.pel
                        .iter()
                        .filter(|(p, e)| e.consumer == self.id && !bound.contains(p))
                        .take(room)
                        .map(|(p, e)| (*p, e.topic.clone()))
                        .collect()
                })
                .unwrap_or_default();
            for (position, topic) in mine {
                let message = client
                    .engine()
                    .message_at_position(position.0, position.1)?
                    .map(|m| m.message);
                due.push(Due {
                    place: place(position),
                    topic,
                    message,
                    dup: true,
                });
            }
            let left = room.saturating_sub(due.len());
            if left > 0 {
                let claimed = client
                    .filter_group_claim(
                        share.group.clone(),
                        share.topic.clone(),
                        self.id.clone(),
                        u64::MAX, // released ones only: a live member's are its own
                        left as u64,
                    )
                    .await?;
                due.extend(claimed.into_iter().map(|d| Due {
                    place: place(d.position),
                    topic: d.topic,
                    message: d.message,
                    dup: true,
                }));
            }
        }
        let count = new_count(qos0, room, due.len());
        if count == 0 {
            return Ok(due);
        }
        let read = client
            .filter_group_read(
                share.group.clone(),
                share.topic.clone(),
                self.id.clone(),
                count,
                qos0,
            )
            .await;
        let Some(read) = self.or_rejoin(client, share, read).await? else {
            return Ok(due);
        };
        due.extend(read.into_iter().map(|d| Due {
            place: place(d.position),
            topic: d.topic,
            message: d.message,
            dup: false,
        }));
        Ok(due)
    }

    /// A read of a share's group: `None` when the group was gone (XGROUP DESTROY, the stream
    /// deleted) — it is joined again, and the next round reads.
    async fn or_rejoin<T>(
        &self,
        client: &Client,
        share: &Share,
        read: Result<T, EngineError>,
    ) -> Result<Option<T>, EngineError> {
        match read {
            Ok(r) => Ok(Some(r)),
            Err(EngineError::Group(GroupError::NoGroup)) => {
                let group = String::from_utf8_lossy(&share.group).into_owned();
                let topic = String::from_utf8_lossy(&share.topic).into_owned();
                let _ = self.join_share(client, &group, &topic).await;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// How many new messages a round reads for a share: a batch at QoS 0 (no packets to bind),
/// else what the window has room for after `due` redeliveries.
fn new_count(qos0: bool, room: usize, due: usize) -> usize {
    if qos0 {
        DELIVERY_BATCH
    } else {
        room.saturating_sub(due).min(DELIVERY_BATCH)
    }
}

/// Acknowledges a share's messages that need no packet (QoS 0, gone or expired).
async fn acknowledge(
    client: &Client,
    share: &Share,
    places: Vec<SharedRef>,
) -> Result<(), EngineError> {
    let mut ids = Vec::new();
    let mut positions = Vec::new();
    for p in places {
        match p {
            SharedRef::Stream { id, .. } => ids.push(id),
            SharedRef::Filter { position, .. } => positions.push(position),
        }
    }
    if !ids.is_empty() {
        client
            .ack(0, share.topic.clone(), share.group.clone(), ids)
            .await?;
    }
    if !positions.is_empty() {
        client
            .filter_group_ack(share.group.clone(), share.topic.clone(), positions)
            .await?;
    }
    Ok(())
}
