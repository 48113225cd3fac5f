//! One MQTT connection: CONNECT (version, client id, credentials, session) and CONNACK, then a
//! loop over three things — packets from the client, new messages for the session's
//! subscriptions, and the keep-alive deadline — until DISCONNECT, a lost connection, a
//! takeover by a newer connection with the same client id, or the server's shutdown. The path
//! of a packet: socket → `codec::decode` → `handle` → engine call → reply packet.
//! A PUBLISH is acknowledged (PUBACK / PUBREC) only after its append is committed; a message
//! goes out with a packet id only after the delivery that binds the id to it is committed.
//! It never keeps what a session will receive in memory: that is read from the log.

mod connect;
mod inbound;
mod live;
mod outbound;
mod shared;
mod subscribe;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use manifold_core::engine::{Client, EngineError, SessionError, Wake};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;
use super::stats;
use super::transport::{Reader, Writer};
use crate::codec::{
    Ack, ConnAck, DecodeError, Disconnect, Packet, Properties, Protocol, Publish, QoS, decode,
    encode,
};

/// Messages read from the log per delivery round, at most.
const DELIVERY_BATCH: usize = 256;

/// Output buffer capacity an idle connection keeps (more is released until the next burst).
const IDLE_OUT_CAPACITY: usize = 16 * 1024;

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

/// Runs connection `connection`, on the stream read from `rd` and written to `wr`, to its end.
pub(crate) async fn run(
    mut rd: Reader,
    wr: Writer,
    shared: Arc<Shared>,
    connection: u64,
    shutdown: watch::Receiver<bool>,
) {
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
                Ok(n) => stats::add(&shared.stats.bytes_received, n as u64),
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
        aliases_in: HashMap::new(),
        peer_alias_max: 0,
        aliases_out: HashMap::new(),
        unsendable: Vec::new(),
        sharing: false,
        sys_filters: Vec::new(),
        cursor: 0,
        cursor_dirty: false,
        cursor_committed: Instant::now(),
        awaiting_release: HashSet::new(),
        publishing: VecDeque::new(),
        publishing_owed: 0,
        settled: None,
        hub: None,
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
    stats::add(&shared.stats.packets_received, 1);
    let Some((leave, done, keep_alive)) = Box::pin(conn.accept(connect, connection)).await else {
        let _ = conn.flush().await;
        return;
    };
    stats::add(&shared.stats.connections, 1);
    stats::add(&shared.stats.connected, 1);
    let end = conn
        .serve(&mut rd, &mut buf, leave, shutdown, keep_alive)
        .await;
    conn.detach_live();
    shared
        .stats
        .connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let _ = conn.flush().await;
    let _ = conn.wr.shutdown().await;
    if let Some(client) = conn.client.clone() {
        let close = match end {
            End::Disconnected { expiry_s, will } => Some((expiry_s, will)),
            End::Lost => Some((None, true)),
            End::Shutdown => Some((None, false)),
            End::TakenOver => None,
        };
        if let Some((expiry_s, will)) = close {
            // A session that ends with the connection needs no cursor.
            let outlives = expiry_s
                .or_else(|| client.session(&conn.id).map(|s| s.expiry_s))
                .is_some_and(|e| e > 0);
            if outlives {
                Box::pin(conn.commit_cursor(&client)).await;
            }
            if let Err(e) = Box::pin(client.session_close(conn.id.clone(), expiry_s, will)).await {
                tracing::debug!(error = %e, "closing an MQTT session");
            }
            shared.sessions_closed.send_modify(|n| *n += 1);
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
    wr: Writer,
    /// Packets encoded and not yet written.
    out: BytesMut,
    /// The client's Maximum Packet Size (v5).
    peer_max_packet: u32,
    /// The client's Receive Maximum (v5): our QoS 1/2 packets it takes unacknowledged.
    peer_receive_max: u16,
    next_packet_id: u16,
    /// Topic aliases the client set up (v5): alias → topic.
    aliases_in: HashMap<u16, String>,
    /// The client's Topic Alias Maximum (v5): how many aliases the broker may set up.
    peer_alias_max: u16,
    /// Topic aliases the broker set up: topic → alias.
    aliases_out: HashMap<String, u16>,
    /// Packet ids of QoS 1/2 messages bound but too large for the client (to be completed).
    unsendable: Vec<u16>,
    /// Whether the session has shared subscriptions (as of the last delivery round).
    sharing: bool,
    /// The session's filters that can match `$SYS/...` topics (as of the last round).
    sys_filters: Vec<Bytes>,
    /// How far this connection has delivered (at or past the session's committed cursor).
    cursor: u64,
    /// Whether `cursor` is past the committed one (QoS 0 deliveries), and since when the
    /// committed one last moved.
    cursor_dirty: bool,
    cursor_committed: Instant,
    /// Inbound QoS 2 packet ids stored and answered with PUBREC on this connection, until
    /// PUBREL: with the runs not yet acknowledged, what counts against the Receive Maximum.
    awaiting_release: HashSet<u16>,
    /// Runs of PUBLISH packets proposed, oldest first, and their QoS 1/2 packets not yet
    /// acknowledged.
    publishing: VecDeque<inbound::PublishRun>,
    publishing_owed: usize,
    /// The applied index at which a delivery round last found nothing more to send, and the
    /// filters to wait on then.
    settled: Option<(u64, Vec<Bytes>)>,
    /// The hub writing this connection's messages, while one does (`live.rs`): no delivery
    /// rounds then.
    hub: Option<super::hub::Attached>,
}

impl Conn {
    fn v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    /// Queues a packet; one the client's Maximum Packet Size refuses is not sent.
    fn send(&mut self, p: &Packet) -> bool {
        match encode(p, self.protocol, self.peer_max_packet, &mut self.out) {
            Ok(()) => {
                stats::add(&self.shared.stats.packets_sent, 1);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "an MQTT packet not sent");
                false
            }
        }
    }

    /// Writes the packets queued, and what a hub queued on the socket before them.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.wr.write_all(&self.out).await?;
            stats::add(&self.shared.stats.bytes_sent, self.out.len() as u64);
            self.out.clear();
        } else if let Some(outbox) = self.wr.outbox() {
            outbox.flush().await?;
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

    /// The connection's loop, after CONNACK.
    async fn serve(
        &mut self,
        rd: &mut Reader,
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
        // One timer for the connection's life: it fires at most once per keep-alive period
        // (reads only move `deadline`; the timer catches up when it fires), instead of a timer
        // set and cleared on every wait.
        let keep_alive_timer = tokio::time::sleep_until(deadline);
        tokio::pin!(keep_alive_timer);
        let mut timer_fired = false;
        // The signals outlive the loop's rounds: registering a waiter for each of them on every
        // round cost more than a fan-out's delivery does.
        let shutdown_signal = shutdown.changed();
        tokio::pin!(shutdown_signal);
        let leave_signal = leave.changed();
        tokio::pin!(leave_signal);
        let mut sessions_closed = next_change(self.shared.sessions_closed.subscribe());
        let mut sys = next_change(self.shared.sys.subscribe());
        let mut sys_changed = false;
        // The log index of the entry that woke the connection for new messages, if one did.
        let mut woken: Option<u64> = None;
        // Whether the socket may have bytes to read (anything but a wake-up for messages).
        let mut may_read = true;
        loop {
            // What the client has sent goes first (a pipeline, or the DISCONNECT of a client
            // leaving: nothing is delivered to a connection whose DISCONNECT has arrived), then
            // new messages.
            // (Not after a wake-up for new messages: bytes that came meanwhile make the socket
            // readable, and the wait below returns at once for them — a read per delivery is a
            // system call a fan-out pays a thousand times.)
            let closed = if std::mem::take(&mut may_read) {
                buf.reserve(4096); // a full buffer would read 0 bytes, which means closed
                match rd.try_read_buf(buf) {
                    Ok(0) => true,
                    Ok(n) => {
                        stats::add(&self.shared.stats.bytes_received, n as u64);
                        deadline = Instant::now() + grace;
                        false
                    }
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                }
            } else {
                false
            };
            // Whole packets before a close are still handled (a PUBLISH then a DISCONNECT).
            // Boxed, as the other rounds below: the connection's future stays small while it
            // waits (10,000 idle connections), the round's state lives only while it runs.
            // (Nothing read, nothing to handle: a fan-out's wake-up builds no round for it.)
            if buf.is_empty() {
                if closed {
                    return End::Lost;
                }
            } else {
                match Box::pin(self.take_packets(buf)).await {
                    Ok(Some(end)) => return end,
                    Ok(None) if closed => return End::Lost,
                    Ok(None) => {}
                    Err(code) => {
                        self.disconnect(code);
                        return End::Lost;
                    }
                }
            }
            // Woken by the first entry with something for this session since the last round:
            // its messages are taken from the entry the engine keeps in memory, no log reads
            // (a thousand subscribers of one topic cost one decode).
            // (Only at the head: when more has been applied since, one read of the log covers
            // it all in one round.)
            if let Some(index) = woken.take()
                && self.hub.is_none()
                && !self.sharing
                && client.engine().applied_index() == index
            {
                match Box::pin(self.deliver_at(&client, index)).await {
                    Ok(true) => {
                        if let Some((_, filters)) = self.settled.take() {
                            self.settled = Some((index, filters));
                        }
                    }
                    Ok(false) => {}
                    Err(e) => return self.delivery_failed(&e),
                }
            }
            let after = client.engine().applied_index();
            // Whatever could give this session something to send (a message, an
            // acknowledgement, a subscription) is a commit: with none since the last delivery
            // round, there is nothing to read (a busy publisher's reads cost no log reads).
            // (None while a hub writes this session's messages.)
            let waiting_for = match self.settled.take() {
                _ if self.hub.is_some() => Vec::new(),
                Some((at, filters)) if at == after => filters,
                _ => match Box::pin(self.deliver(&client)).await {
                    Ok(w) => w,
                    Err(e) => return self.delivery_failed(&e),
                },
            };
            if self.hub.is_none() {
                self.settled = Some((after, waiting_for.clone()));
            }
            self.settle_publishing(false).await;
            if self.flush().await.is_err() {
                return End::Lost;
            }
            // Everything up to `after` delivered and written: a live subscriber may leave the
            // next messages to its filter's hub (which writes after these).
            if self.hub.is_none() && waiting_for.len() == 1 {
                self.attach_live(&client, after);
            }
            let filters: Vec<&[u8]> = match self.hub {
                Some(_) => Vec::new(),
                None => waiting_for.iter().map(|f| f.as_ref()).collect(),
            };
            let new_messages = async {
                if filters.is_empty() {
                    std::future::pending::<()>().await;
                }
                match client.wait_filters(&filters, after, Duration::MAX).await {
                    Ok(Wake::Entry(e)) => Some(e.index),
                    _ => None,
                }
            };
            // An idle connection holds no buffers: they are taken again when bytes come.
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
            if self.out.capacity() > IDLE_OUT_CAPACITY {
                self.out = BytesMut::new();
            }

            // Attached to a hub: it may let go of this connection, or queue bytes the socket
            // did not take (written out here).
            let hub = self.hub.as_ref().map(|h| h.signal());
            let outbox = hub.as_ref().and_then(|_| self.wr.outbox().cloned());
            let live = async {
                match (&hub, &outbox) {
                    (Some(hub), Some(outbox)) => tokio::select! {
                        () = hub.let_go() => true,
                        () = outbox.queued.notified() => false,
                    },
                    _ => std::future::pending().await,
                }
            };
            let mut let_go = false;

            // Runs of PUBLISH packets waiting for their commit: out of `self` while waiting.
            let mut publishing = std::mem::take(&mut self.publishing);
            let committed = inbound::front_committed(&mut publishing);
            let taken_over = tokio::select! {
                biased;
                _ = &mut shutdown_signal => {
                    self.disconnect(0x8B);
                    return End::Shutdown;
                }
                _ = &mut leave_signal => true,
                // Readable: the bytes are read at the top.
                readable = rd.readable() => match readable {
                    Ok(()) => {
                        may_read = true;
                        false
                    }
                    Err(_) => return End::Lost,
                },
                () = &mut keep_alive_timer, if keep_alive > 0 => {
                    timer_fired = true;
                    false
                }
                index = new_messages => {
                    woken = index;
                    false
                }
                // Let go, or bytes to write out (at the top).
                went = live => {
                    let_go = went;
                    false
                }
                // A member that left may have handed its shared messages to this session.
                rx = &mut sessions_closed, if self.sharing => {
                    sessions_closed = next_change(rx);
                    false
                }
                // PUBLISH packets committed: acknowledged at the top.
                () = committed => false,
                // New `$SYS` values for a subscriber of them.
                rx = &mut sys, if !self.sys_filters.is_empty() => {
                    sys = next_change(rx);
                    sys_changed = true;
                    false
                }
            };
            self.publishing = publishing;
            if let_go {
                self.detach_live();
            }
            if std::mem::take(&mut timer_fired) {
                if Instant::now() >= deadline {
                    // Nothing from the client for 1.5 keep-alive periods.
                    self.disconnect(0x8D);
                    return End::Lost;
                }
                keep_alive_timer.as_mut().reset(deadline);
            }
            if std::mem::take(&mut sys_changed) {
                self.send_sys(None);
            }
            if taken_over {
                return Box::pin(self.leave(rd, buf)).await;
            }
        }
    }

    /// A delivery round failed: the session was taken by another connection (its commands
    /// from here are refused: v5 0x8E), or the engine failed (0x80, a lost connection).
    fn delivery_failed(&mut self, e: &EngineError) -> End {
        if matches!(e, EngineError::Session(SessionError::TakenOver)) {
            self.disconnect(0x8E);
            return End::TakenOver;
        }
        tracing::debug!(error = %e, "MQTT delivery");
        self.disconnect(0x80);
        End::Lost
    }

    /// A newer connection takes the session: what this client sent before still counts (its
    /// acknowledgements, its DISCONNECT), then it is told why it goes (v5: 0x8E).
    async fn leave(&mut self, rd: &mut Reader, buf: &mut BytesMut) -> End {
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
        // A run of PUBACK / PUBCOMP packets is one command too.
        let mut completes = Vec::new();
        // QoS 1/2 packets in `publishes` (counted against the Receive Maximum).
        let mut acknowledged_in_run = 0;
        loop {
            let packet = match decode(buf, Some(self.protocol), max) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    self.runs(&mut publishes, &mut completes).await?;
                    return Err(e.reason_code());
                }
            };
            stats::add(&self.shared.stats.packets_received, 1);
            if matches!(packet, Packet::Publish(_)) {
                stats::add(&self.shared.stats.publish_received, 1);
            }
            if let Packet::PubAck(a) | Packet::PubComp(a) = &packet {
                completes.push(a.packet_id);
                continue;
            }
            if let Packet::Publish(mut p) = packet {
                let unacknowledged =
                    self.awaiting_release.len() + self.publishing_owed + acknowledged_in_run;
                let resend =
                    p.qos == QoS::ExactlyOnce && self.awaiting_release.contains(&p.packet_id);
                // MQTT 5 only: 3.1.1 has no Receive Maximum to hold a client to.
                let over = self.v5()
                    && p.qos != QoS::AtMostOnce
                    && !resend
                    && unacknowledged >= usize::from(self.shared.config.receive_maximum);
                let checked = if over {
                    Err(0x93) // Receive Maximum exceeded
                } else {
                    self.resolve_alias(&mut p)
                };
                if let Err(code) = checked {
                    self.runs(&mut publishes, &mut completes).await?;
                    return Err(code);
                }
                if p.qos != QoS::AtMostOnce {
                    acknowledged_in_run += 1;
                }
                publishes.push(p);
                continue;
            }
            self.runs(&mut publishes, &mut completes).await?;
            acknowledged_in_run = 0;
            // Anything else is handled once what came before it is stored.
            self.settle_publishing(true).await;
            if let Some(end) = self.handle(packet).await? {
                return Ok(Some(end));
            }
        }
        self.runs(&mut publishes, &mut completes).await?;
        Ok(None)
    }

    /// Stores a run of PUBLISH packets and completes a run of acknowledged deliveries.
    async fn runs(
        &mut self,
        publishes: &mut Vec<Publish>,
        completes: &mut Vec<u16>,
    ) -> Result<(), u8> {
        self.publish_run(std::mem::take(publishes)).await?;
        if !completes.is_empty()
            && let Some(client) = self.client.clone()
            && let Err(e) = client
                .session_complete_many(self.id.clone(), std::mem::take(completes))
                .await
        {
            tracing::debug!(error = %e, "acknowledgements");
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
                // Committed before PUBCOMP: the packet id may carry a new message after it.
                self.awaiting_release.remove(&a.packet_id);
                let known = match client.session_released(self.id.clone(), a.packet_id).await {
                    Ok(known) => known,
                    Err(e) => {
                        tracing::debug!(error = %e, packet_id = a.packet_id, "PUBREL");
                        return Err(0x80);
                    }
                };
                let code = if known || !self.v5() { 0 } else { 0x92 };
                self.send(&Packet::PubComp(Ack {
                    packet_id: a.packet_id,
                    code,
                    properties: Properties::default(),
                }));
            }
            Packet::Subscribe(s) => {
                self.detach_live();
                self.subscribe(&client, s).await
            }
            Packet::Unsubscribe(u) => {
                self.detach_live();
                self.unsubscribe(&client, u).await
            }
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
}

/// The next change of `rx`, as a future that owns it and hands it back (to wait again).
fn next_change<T: Send + Sync + 'static>(
    mut rx: watch::Receiver<T>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = watch::Receiver<T>> + Send>> {
    Box::pin(async move {
        // A sender gone never changes again.
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        rx
    })
}
