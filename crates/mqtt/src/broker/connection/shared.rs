//! Shared subscriptions: `$share/{group}/{topic}` (a topic without wildcards) is consumer group
//! `group` of stream `topic` in db 0 — the group XREADGROUP reads — and the session is its
//! consumer named by the client id. SUBSCRIBE creates the group at `$` if it is missing (an
//! UNSUBSCRIBE never destroys it). Each delivery round reads new entries for the member
//! (`read_group`, one command: which entries go to which member is decided at apply, so no
//! two members, MQTT or RESP, get the same one); QoS 1/2 ones are bound to packet ids together
//! with their group entry (`session_deliver`), and the client's PUBACK (QoS 1) or PUBREC
//! (QoS 2) acknowledges the entry in the same command. Entries pending for the member that no
//! packet carries — read just before a crash, or handed over by a member whose session ended —
//! go first. It never sends a message of the group that another member has been given.

use std::collections::HashSet;

use bytes::Bytes;
use manifold_core::engine::{
    Client, EngineError, GroupEntry, GroupStart, InFlightNew, PendingQuery, ReadFrom, SharedRef,
    SubscribeOptions, topic_filter,
};
use manifold_core::store::StreamId;

use super::{Conn, DELIVERY_BATCH};
use crate::broker::message_properties::{self, published_qos};
use crate::broker::payload::payload_of;
use crate::codec::{Publish, QoS};

/// One shared subscription of the session.
struct Share {
    group: Bytes,
    topic: Bytes,
    options: SubscribeOptions,
}

/// A shared subscription's group entry to deliver.
struct Due {
    entry: GroupEntry,
    /// Sent before (a redelivery of a pending entry).
    dup: bool,
}

impl Conn {
    /// SUBSCRIBE `$share/group/topic`: the group, created at `$` (with its stream) if missing.
    /// The reason code to refuse it with, if refused.
    pub(super) async fn join_share(
        &self,
        client: &Client,
        group: &str,
        topic: &str,
    ) -> Result<(), u8> {
        if topic.contains(['+', '#']) {
            // Wildcard shares are engine filter groups: not served yet.
            return Err(if self.v5() { 0x9E } else { 0x80 });
        }
        let created = client
            .group_create(
                0,
                Bytes::copy_from_slice(topic.as_bytes()),
                Bytes::copy_from_slice(group.as_bytes()),
                GroupStart::Last,
                true,
                None,
            )
            .await;
        match created {
            Ok(()) | Err(EngineError::Group(manifold_core::engine::GroupError::GroupExists)) => {
                Ok(())
            }
            Err(EngineError::NoPermission { .. }) if self.v5() => Err(0x87),
            Err(e) => {
                tracing::debug!(error = %e, "creating a shared subscription's group");
                Err(0x80)
            }
        }
    }

    /// A delivery round for the session's shared subscriptions, within the client's window.
    /// Returns the topics to wait on.
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
                let bound: HashSet<StreamId> = session
                    .inflight
                    .values()
                    .filter_map(|f| f.shared.as_ref())
                    .filter(|r| r.key == share.topic && r.group == share.group)
                    .map(|r| r.id)
                    .collect();
                let due = self.read_share(client, share, &bound, room).await?;
                if share.options.qos == 0 || room > 0 {
                    wait_on.push(share.topic.clone());
                }
                more |= due.len() >= DELIVERY_BATCH;
                let mut ack = Vec::new();
                for Due { entry, dup } in due {
                    let Some(m) = entry.message else {
                        ack.push(entry.id); // gone (deleted, or retention took it)
                        continue;
                    };
                    if message_properties::expired(&m.properties, m.timestamp_ms, now) {
                        ack.push(entry.id);
                        continue;
                    }
                    let qos = share.options.qos.min(published_qos(&m.properties));
                    let packet_id = if qos == 0 || room == 0 {
                        ack.push(entry.id); // at QoS 0 the client never acknowledges
                        0
                    } else {
                        let id = self.free_packet_id(&session, &mut taken);
                        room -= 1;
                        inflight.push(InFlightNew {
                            packet_id: id,
                            log_index: m.log_index,
                            sub: m.sub,
                            qos,
                            shared: Some(SharedRef {
                                key: share.topic.clone(),
                                group: share.group.clone(),
                                id: entry.id,
                            }),
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
                        topic: String::from_utf8_lossy(&share.topic).into_owned(),
                        packet_id,
                        properties,
                        payload: payload_of(&m.fields),
                    });
                }
                if share.options.qos > 0 && !ack.is_empty() {
                    client
                        .ack(0, share.topic.clone(), share.group.clone(), ack)
                        .await?;
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

    /// What one shared subscription delivers now: first the member's pending entries no packet
    /// carries, then new entries — as many as the window has room for (QoS 0: a batch, read
    /// without acknowledgement).
    async fn read_share(
        &self,
        client: &Client,
        share: &Share,
        bound: &HashSet<StreamId>,
        room: usize,
    ) -> Result<Vec<Due>, EngineError> {
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
                        .map(|entry| Due { entry, dup: true }),
                );
            }
        }
        let count = if qos0 {
            DELIVERY_BATCH
        } else {
            room.saturating_sub(due.len()).min(DELIVERY_BATCH)
        };
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
        let read = match read {
            Ok(r) => r,
            // The group was destroyed (XGROUP DESTROY, or the stream deleted): made again.
            Err(EngineError::Group(manifold_core::engine::GroupError::NoGroup)) => {
                let group = String::from_utf8_lossy(&share.group).into_owned();
                let topic = String::from_utf8_lossy(&share.topic).into_owned();
                let _ = self.join_share(client, &group, &topic).await;
                return Ok(due);
            }
            Err(e) => return Err(e),
        };
        due.extend(
            read.into_iter()
                .flat_map(|(_, entries)| entries)
                .map(|entry| Due { entry, dup: false }),
        );
        Ok(due)
    }
}
