//! One MQTT connection: CONNECT (version, client id, credentials, session) and CONNACK, then a
//! loop over three things — packets from the client, new messages for the session's
//! subscriptions, and the keep-alive deadline — until DISCONNECT, a lost connection, a
//! takeover by a newer connection with the same client id, or the server's shutdown. The path
//! of a packet: socket → `codec::decode` → `handle` → engine call → reply packet.
//! A PUBLISH is acknowledged (PUBACK / PUBREC) only after its append is committed; a message
//! goes out with a packet id only after the delivery that binds the id to it is committed.
//! It never keeps what a session will receive in memory: that is read from the log.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use manifold_core::engine::{
    AppendRequest, Client, EngineError, InFlightNew, RetainEffect, SubscribeOptions, Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;
use super::payload::{QOS_PROPERTY, fields_of, payload_of};
use crate::codec::{
    Ack, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, Protocol, Publish, QoS,
    SubAck, Subscribe, UnsubAck, Unsubscribe, decode, encode, topic,
};

/// Messages read from the log per delivery round, at most.
const DELIVERY_BATCH: usize = 256;

/// How a connection ended, for its session.
enum End {
    /// DISCONNECT (v5: with a new session expiry, and whether the Will goes out: 0x04).
    Disconnected { expiry_s: Option<u32>, will: bool },
    /// Lost: the socket closed, the keep alive ran out, or the client broke the protocol. The
    /// Will goes out.
    Lost,
    /// A newer connection took the session: it is theirs now, left as it is.
    TakenOver,
    /// The server is shutting down: the session is left disconnected, without its Will.
    Shutdown,
}

/// Runs connection `connection` to its end.
pub(crate) async fn run(
    socket: TcpStream,
    shared: Arc<Shared>,
    connection: u64,
    shutdown: watch::Receiver<bool>,
) {
    let (mut rd, wr) = socket.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let max = shared.config.max_packet_size;
    // The first packet: a CONNECT, in time.
    let first = tokio::time::timeout(shared.config.connect_timeout, async {
        loop {
            match decode(&mut buf, None, max) {
                Ok(Some(p)) => return Ok(Some(p)),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    })
    .await;
    let mut conn = Conn {
        shared: shared.clone(),
        protocol: Protocol::V311,
        client: None,
        id: Bytes::new(),
        wr,
        out: BytesMut::new(),
        peer_max_packet: u32::MAX,
        peer_receive_max: u16::MAX,
        next_packet_id: 1,
        settled: None,
    };
    let connect = match first {
        Ok(Ok(Some(Packet::Connect(c)))) => *c,
        Ok(Err(DecodeError::UnsupportedProtocol { .. })) => {
            // 3.1.1's CONNACK, return code 1: the one a 3.1 or unknown client can read.
            conn.protocol = Protocol::V311;
            conn.send(&Packet::ConnAck(ConnAck {
                session_present: false,
                code: 1,
                properties: Properties::default(),
            }));
            let _ = conn.flush().await;
            return;
        }
        _ => return, // nothing in time, not a CONNECT, or malformed: close
    };
    conn.protocol = connect.protocol;
    let Some((leave, done, keep_alive)) = conn.accept(connect, connection).await else {
        let _ = conn.flush().await;
        return;
    };
    let end = conn
        .serve(&mut rd, &mut buf, leave, shutdown, keep_alive)
        .await;
    let _ = conn.flush().await;
    let _ = conn.wr.shutdown().await;
    if let Some(client) = conn.client.clone() {
        let close = match end {
            End::Disconnected { expiry_s, will } => Some((expiry_s, will)),
            End::Lost => Some((None, true)),
            End::Shutdown => Some((None, false)),
            End::TakenOver => None,
        };
        if let Some((expiry_s, will)) = close
            && let Err(e) = client.session_close(conn.id.clone(), expiry_s, will).await
        {
            tracing::debug!(error = %e, "closing an MQTT session");
        }
        shared.release(&conn.id, connection);
    }
    let _ = done.send(());
}

struct Conn {
    shared: Arc<Shared>,
    protocol: Protocol,
    /// The engine as the client's principal (after CONNECT).
    client: Option<Client>,
    /// The client id.
    id: Bytes,
    wr: OwnedWriteHalf,
    /// Packets encoded and not yet written.
    out: BytesMut,
    /// The client's Maximum Packet Size (v5).
    peer_max_packet: u32,
    /// The client's Receive Maximum (v5): our QoS 1/2 packets it takes unacknowledged.
    peer_receive_max: u16,
    next_packet_id: u16,
    /// The applied index at which a delivery round last found nothing more to send, and the
    /// filters to wait on then.
    settled: Option<(u64, Vec<Bytes>)>,
}

impl Conn {
    fn v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    /// Queues a packet; one the client's Maximum Packet Size refuses is not sent.
    fn send(&mut self, p: &Packet) -> bool {
        match encode(p, self.protocol, self.peer_max_packet, &mut self.out) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "an MQTT packet not sent");
                false
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.wr.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// v5: DISCONNECT with `code` (3.1.1 has no server DISCONNECT: the connection just closes).
    fn disconnect(&mut self, code: u8) {
        if self.v5() {
            self.send(&Packet::Disconnect(Disconnect {
                code,
                properties: Properties::default(),
            }));
        }
    }

    fn connack(&mut self, code: u8, session_present: bool, properties: Properties) {
        self.send(&Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties,
        }));
    }

    /// CONNECT → CONNACK: the client id, the principal, the session. `None`: refused (the
    /// CONNACK saying why is queued).
    async fn accept(
        &mut self,
        c: Connect,
        connection: u64,
    ) -> Option<(watch::Receiver<bool>, tokio::sync::oneshot::Sender<()>, u16)> {
        let v5 = self.v5();
        let refuse = |v3: u8, v5c: u8| if v5 { v5c } else { v3 };
        if v5 {
            self.peer_max_packet = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
            self.peer_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
            if c.properties.auth_method.is_some() {
                // No enhanced authentication method is configured.
                self.connack(0x8C, false, Properties::default());
                return None;
            }
        }
        let mut assigned = None;
        let id = if c.client_id.is_empty() {
            if !v5 && !c.clean_start {
                self.connack(2, false, Properties::default()); // identifier rejected
                return None;
            }
            let id = format!(
                "manifold-{:x}-{:x}",
                std::process::id(),
                connection ^ nonce()
            );
            assigned = Some(id.clone());
            id
        } else {
            c.client_id.clone()
        };
        self.id = Bytes::from(id.into_bytes());
        let engine = self.shared.engine.clone();
        let principal = match &c.username {
            Some(user) => {
                engine.authenticate(user.as_bytes(), c.password.as_deref().unwrap_or_default())
            }
            None => engine.anonymous(),
        };
        let principal = match principal {
            Ok(p) => p,
            Err(_) => {
                self.connack(refuse(4, 0x86), false, Properties::default());
                return None;
            }
        };
        let client = Client::new(engine, principal);
        let expiry_s = if v5 {
            c.properties.session_expiry.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            self.shared.config.persistent_session_expiry_s
        };
        let will = c.will.as_ref().map(|w| Will {
            topic: Bytes::from(w.topic.clone().into_bytes()),
            payload: w.payload.clone(),
            properties: vec![(
                Bytes::from_static(QOS_PROPERTY),
                Bytes::from(vec![b'0' + w.qos as u8]),
            )],
            qos: w.qos as u8,
            retain: w.retain,
            delay_s: w.properties.will_delay.unwrap_or(0),
        });
        // A connection already holding this client id here leaves first.
        let (leave, done) = self.shared.take(&self.id, connection).await;
        if c.clean_start {
            self.shared.forget_releases(&self.id);
        }
        let present = match client
            .session_open(self.id.clone(), c.clean_start, expiry_s, will)
            .await
        {
            Ok(present) => present,
            Err(e) => {
                let code = match e {
                    EngineError::NoPermission { .. } => refuse(5, 0x87),
                    EngineError::BadTopic(_) => refuse(2, 0x90),
                    _ => refuse(3, 0x97),
                };
                self.connack(code, false, Properties::default());
                self.shared.release(&self.id, connection);
                return None;
            }
        };
        let max_keep_alive = self.shared.config.max_keep_alive;
        let keep_alive =
            if max_keep_alive > 0 && (c.keep_alive == 0 || c.keep_alive > max_keep_alive) {
                max_keep_alive
            } else {
                c.keep_alive
            };
        let mut props = Properties::default();
        if v5 {
            props.assigned_client_id = assigned;
            props.receive_maximum = Some(self.shared.config.receive_maximum);
            props.maximum_packet_size = Some(self.shared.config.max_packet_size);
            props.topic_alias_maximum = Some(0);
            props.shared_available = Some(0);
            if keep_alive != c.keep_alive {
                props.server_keep_alive = Some(keep_alive);
            }
        }
        self.connack(0, present && !c.clean_start, props);
        self.client = Some(client);
        self.resend_in_flight();
        Some((leave, done, keep_alive))
    }

    /// After a reconnect: what was in flight goes again (PUBLISH with DUP, or PUBREL once
    /// PUBREC came), in packet-id order.
    fn resend_in_flight(&mut self) {
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

    /// The connection's loop, after CONNACK.
    async fn serve(
        &mut self,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        buf: &mut BytesMut,
        mut leave: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
        keep_alive: u16,
    ) -> End {
        let Some(client) = self.client.clone() else {
            return End::Lost;
        };
        // The keep alive, at 1.5 times (spec 3.1.2.10); none with 0.
        let grace = Duration::from_millis(u64::from(keep_alive) * 1500);
        let mut deadline = Instant::now() + grace;
        loop {
            // What the client has sent goes first (a pipeline, or the DISCONNECT of a client
            // leaving: nothing is delivered to a connection whose DISCONNECT has arrived), then
            // new messages.
            buf.reserve(4096); // a full buffer would read 0 bytes, which means closed
            let closed = match rd.try_read_buf(buf) {
                Ok(0) => true,
                Ok(_) => {
                    deadline = Instant::now() + grace;
                    false
                }
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            // Whole packets before a close are still handled (a PUBLISH then a DISCONNECT).
            match self.take_packets(buf).await {
                Ok(Some(end)) => return end,
                Ok(None) if closed => return End::Lost,
                Ok(None) => {}
                Err(code) => {
                    self.disconnect(code);
                    return End::Lost;
                }
            }
            let after = client.engine().applied_index();
            // Whatever could give this session something to send (a message, an
            // acknowledgement, a subscription) is a commit: with none since the last delivery
            // round, there is nothing to read (a busy publisher's reads cost no log reads).
            let waiting_for = match self.settled.take() {
                Some((at, filters)) if at == after => filters,
                _ => match self.deliver(&client).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::debug!(error = %e, "MQTT delivery");
                        self.disconnect(0x80);
                        return End::Lost;
                    }
                },
            };
            self.settled = Some((after, waiting_for.clone()));
            if self.flush().await.is_err() {
                return End::Lost;
            }
            let filters: Vec<&[u8]> = waiting_for.iter().map(|f| f.as_ref()).collect();
            let new_messages = async {
                if filters.is_empty() {
                    std::future::pending::<()>().await;
                }
                let _ = client
                    .wait_filters(&filters, after, Duration::from_secs(3600))
                    .await;
            };
            let read = async {
                if keep_alive == 0 {
                    rd.read_buf(buf).await.ok()
                } else {
                    tokio::time::timeout_at(deadline, rd.read_buf(buf))
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                }
            };
            let taken_over = tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.disconnect(0x8B);
                    return End::Shutdown;
                }
                _ = leave.changed() => true,
                n = read => match n {
                    Some(n) if n > 0 => {
                        deadline = Instant::now() + grace;
                        false
                    }
                    Some(_) => return End::Lost,
                    None => {
                        // The keep alive ran out (or the socket failed).
                        self.disconnect(0x8D);
                        return End::Lost;
                    }
                },
                _ = new_messages => false,
            };
            if taken_over {
                return self.leave(rd, buf).await;
            }
        }
    }

    /// A newer connection takes the session: what this client sent before still counts (its
    /// acknowledgements, its DISCONNECT), then it is told why it goes (v5: 0x8E).
    async fn leave(&mut self, rd: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut BytesMut) -> End {
        loop {
            buf.reserve(4096);
            match rd.try_read_buf(buf) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
        if let Ok(Some(end)) = self.take_packets(buf).await {
            return end;
        }
        self.disconnect(0x8E);
        End::TakenOver
    }

    /// Handles every whole packet in `buf`; a run of PUBLISH packets is appended together.
    /// `Ok(Some)`: the connection ends; `Err(code)`: the client broke the protocol (the v5
    /// reason code to disconnect with).
    async fn take_packets(&mut self, buf: &mut BytesMut) -> Result<Option<End>, u8> {
        let max = self.shared.config.max_packet_size;
        let mut publishes = Vec::new();
        loop {
            let packet = match decode(buf, Some(self.protocol), max) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    self.publish_run(std::mem::take(&mut publishes)).await?;
                    return Err(e.reason_code());
                }
            };
            if let Packet::Publish(p) = packet {
                publishes.push(p);
                continue;
            }
            self.publish_run(std::mem::take(&mut publishes)).await?;
            if let Some(end) = self.handle(packet).await? {
                return Ok(Some(end));
            }
        }
        self.publish_run(publishes).await?;
        Ok(None)
    }

    /// Stores a run of PUBLISH packets (one proposal), then acknowledges each in order.
    async fn publish_run(&mut self, run: Vec<Publish>) -> Result<(), u8> {
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
            if p.properties.topic_alias.is_some() {
                return Err(0x94); // Topic Alias Maximum is 0
            }
            if p.qos == QoS::ExactlyOnce && self.shared.awaiting_release(&self.id, p.packet_id) {
                decided.push(Some(0x00)); // a resend of a message stored already
                continue;
            }
            if p.topic == "$SYS" || p.topic.starts_with("$SYS/") {
                decided.push(Some(0x87));
                continue;
            }
            let mut req = AppendRequest::new(
                0,
                Bytes::from(p.topic.clone().into_bytes()),
                fields_of(p.payload.clone()),
            );
            req.properties = vec![(
                Bytes::from_static(QOS_PROPERTY),
                Bytes::from(vec![b'0' + p.qos as u8]),
            )];
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
                        self.shared.await_release(&self.id, p.packet_id);
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

    /// One packet other than PUBLISH.
    async fn handle(&mut self, packet: Packet) -> Result<Option<End>, u8> {
        let Some(client) = self.client.clone() else {
            return Err(0x82);
        };
        match packet {
            Packet::PingReq => {
                self.send(&Packet::PingResp);
            }
            Packet::PubAck(a) | Packet::PubComp(a) => {
                if let Err(e) = client.session_complete(self.id.clone(), a.packet_id).await {
                    tracing::debug!(error = %e, packet_id = a.packet_id, "acknowledgement");
                }
            }
            Packet::PubRec(a) => {
                if a.code >= 0x80 {
                    // Refused: the exchange ends here (spec 4.3.3).
                    let _ = client.session_complete(self.id.clone(), a.packet_id).await;
                } else {
                    if let Err(e) = client.session_received(self.id.clone(), a.packet_id).await {
                        tracing::debug!(error = %e, packet_id = a.packet_id, "PUBREC");
                    }
                    self.send(&Packet::PubRel(Ack::new(a.packet_id)));
                }
            }
            Packet::PubRel(a) => {
                let known = self.shared.released(&self.id, a.packet_id);
                let code = if known || !self.v5() { 0 } else { 0x92 };
                self.send(&Packet::PubComp(Ack {
                    packet_id: a.packet_id,
                    code,
                    properties: Properties::default(),
                }));
            }
            Packet::Subscribe(s) => self.subscribe(&client, s).await,
            Packet::Unsubscribe(u) => self.unsubscribe(&client, u).await,
            Packet::Disconnect(d) => {
                return Ok(Some(End::Disconnected {
                    expiry_s: d.properties.session_expiry,
                    will: d.code == 0x04,
                }));
            }
            // A second CONNECT, AUTH without a method, or a server's packet.
            _ => return Err(0x82),
        }
        Ok(None)
    }

    async fn subscribe(&mut self, client: &Client, s: Subscribe) {
        let v5 = self.v5();
        let subscription_id = s.properties.subscription_ids.first().copied().unwrap_or(0);
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        let mut accepted = Vec::new();
        for sub in &s.subscriptions {
            if topic::shared(&sub.filter).is_some() {
                // Shared subscriptions are a later slice; CONNACK said so (v5).
                codes.push(if v5 { 0x9E } else { 0x80 });
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
    }

    /// The retained messages of new subscriptions (Retain Handling 0, or 1 for a subscription
    /// that did not exist), flagged retained, at `min(granted, published QoS)`. Those sent at
    /// QoS 1 or 2 are bound to their packet ids by one committed delivery first, as any other
    /// (within the client's window; past it they go at QoS 0).
    async fn send_retained(
        &mut self,
        client: &Client,
        accepted: &[(Bytes, SubscribeOptions)],
        existed: &[bool],
    ) {
        let Some(session) = client.session(&self.id) else {
            return;
        };
        let mut used: HashSet<u16> = session.inflight.keys().copied().collect();
        let mut room = usize::from(self.peer_receive_max).saturating_sub(used.len());
        let mut inflight = Vec::new();
        let mut packets = Vec::new();
        for ((filter, options), existed) in accepted.iter().zip(existed) {
            let send = match options.retain_handling {
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
                        let id = self.free_packet_id(&used);
                        used.insert(id);
                        room -= 1;
                        inflight.push(InFlightNew {
                            packet_id: id,
                            log_index,
                            sub,
                            qos,
                        });
                        (QoS::from_bits(qos).unwrap_or(QoS::AtLeastOnce), id)
                    }
                    None => (QoS::AtMostOnce, 0),
                };
                packets.push(Packet::Publish(Publish {
                    dup: false,
                    qos,
                    retain: true,
                    topic: String::from_utf8_lossy(&topic).into_owned(),
                    packet_id,
                    properties: Properties::default(),
                    payload: payload_of(&r.fields),
                }));
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
        for p in &packets {
            self.send(p);
        }
    }

    async fn unsubscribe(&mut self, client: &Client, u: Unsubscribe) {
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

    /// Sends what the session has to receive, as far as the client's window allows: reads
    /// from the session's cursor, commits the delivery (binding packet ids to messages), then
    /// queues the PUBLISH packets. Returns the filters to wait on (none while the window is
    /// full: an acknowledgement reopens it).
    async fn deliver(&mut self, client: &Client) -> Result<Vec<Bytes>, EngineError> {
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
    fn free_packet_id(&mut self, used: &HashSet<u16>) -> u16 {
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
fn published_qos(properties: &[(Bytes, Bytes)]) -> u8 {
    properties
        .iter()
        .find(|(k, _)| k.as_ref() == QOS_PROPERTY)
        .and_then(|(_, v)| v.first())
        .map_or(2, |b| b.saturating_sub(b'0').min(2))
}

/// Some bits that differ between runs, for assigned client ids.
pub(crate) fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t.rotate_left(17)
}
