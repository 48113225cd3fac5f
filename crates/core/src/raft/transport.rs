//! Raft messages between nodes over TCP. Per peer, two outgoing lanes — **control** (votes,
//! heartbeats, replies, probes) and **data** (appends that carry entries) — so a heartbeat
//! never waits behind megabytes of entries; each lane is a thread with a bounded queue that
//! connects and reconnects on its own. A listener gives every accepted connection a reader
//! thread that decodes frames (`wire.rs`) and hands them to `deliver`.
//!
//! Never blocks the caller: a full queue or a peer that is down drops the message (Raft
//! resends what matters); a peer that stays down is retried with a back-off doubling from
//! `reconnect_ms` to 1 s. A bad frame ends its connection.
//!
//! Every connection starts with the handshake of `handshake.rs` (protocol version, what it
//! carries, the caller's id, proof of the cluster secret); one that fails it is closed before
//! a frame is read, and a frame that names another sender than the handshake did ends its
//! connection. Traffic is not encrypted: the Raft address belongs on a private network. The
//! same listener takes the connections followers forward writes on: those are handed whole
//! to the handler set with [`Transport::on_side_channel`] (the engine's forwarding server),
//! or closed if none is set.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::handshake;
use super::message::{Message, NodeId};
use super::wire;

/// Where decoded messages go: `(from, its incarnation, message)`.
pub type Deliver = Arc<dyn Fn(NodeId, u64, Message) + Send + Sync>;

/// Takes a side-channel connection — forwarded writes, an image fetch — its handshake done:
/// the caller's id and the stream.
pub type SideChannel = Arc<dyn Fn(NodeId, TcpStream) + Send + Sync>;

/// The handler of each side-channel kind: forwarding, images.
type SideSlot = Arc<[std::sync::OnceLock<SideChannel>; 2]>;

/// Where a side-channel kind's handler lives in a [`SideSlot`] (`None`: a Raft lane).
fn side_index(kind: handshake::Kind) -> Option<usize> {
    match kind {
        handshake::Kind::Raft => None,
        handshake::Kind::Forward => Some(0),
        handshake::Kind::Image => Some(1),
    }
}

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest frame accepted (default 64 MiB: an entry larger than an append's byte bound
    /// travels alone, and entries are at most 16 MiB).
    pub max_frame: usize,
    /// Messages queued per control lane (default 4,096) and per data lane (default 256).
    pub control_queue: usize,
    pub data_queue: usize,
    /// First wait between connection attempts to a peer that is down (default 100 ms),
    /// doubled after each failure up to 1 s.
    pub reconnect_ms: u64,
    /// The cluster's shared secret (empty: none); every member must have the same.
    pub secret: Arc<[u8]>,
    /// This node's data directory (its `identity`), sent with every message.
    pub incarnation: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame: 64 << 20,
            control_queue: 4096,
            data_queue: 256,
            reconnect_ms: 100,
            secret: Arc::from(&b""[..]),
            incarnation: 1,
        }
    }
}

/// Counters (for `/metrics` and tests).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages dropped: a full queue or a peer that could not be reached.
    pub dropped: AtomicU64,
    /// Frames refused by the decoder (their connection was closed).
    pub bad_frames: AtomicU64,
    /// Connections refused in the handshake (version, secret, not a node).
    pub refused: AtomicU64,
}

/// A node's Raft transport.
pub struct Transport {
    me: NodeId,
    local_addr: SocketAddr,
    lanes: Mutex<BTreeMap<NodeId, Lanes>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<TransportStats>,
    side: SideSlot,
    config: TransportConfig,
}

/// The two outgoing lanes to one peer, and the address they connect to.
struct Lanes {
    addr: SocketAddr,
    senders: [SyncSender<Message>; 2],
}

impl Transport {
    /// Starts listening on `listener` and sending to `peers` (this node excluded).
    pub fn start(
        me: NodeId,
        listener: TcpListener,
        peers: &[(NodeId, SocketAddr)],
        deliver: Deliver,
        config: TransportConfig,
    ) -> io::Result<Transport> {
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(TransportStats::default());
        let side: SideSlot = Arc::default();
        let mut threads = Vec::new();
        {
            let (stop, accepted, stats, config) = (
                stop.clone(),
                accepted.clone(),
                stats.clone(),
                config.clone(),
            );
            let side = side.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("raft-accept".into())
                    .spawn(move || {
                        accept_loop(listener, deliver, side, stop, accepted, stats, config)
                    })?,
            );
        }
        let transport = Transport {
            me,
            local_addr,
            lanes: Mutex::new(BTreeMap::new()),
            stop,
            accepted,
            threads: Mutex::new(threads),
            stats,
            side,
            config,
        };
        transport.set_peers(peers)?;
        Ok(transport)
    }

    /// Sends to exactly these peers (this node excluded) from now on: lanes to a new peer, or
    /// to one whose address changed, are started; lanes to a peer no longer listed end.
    pub fn set_peers(&self, peers: &[(NodeId, SocketAddr)]) -> io::Result<()> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.retain(|id, l| peers.iter().any(|(p, a)| p == id && *a == l.addr));
        for &(id, addr) in peers.iter().filter(|(id, _)| *id != self.me) {
            if lanes.contains_key(&id) {
                continue;
            }
            let mut senders = Vec::with_capacity(2);
            for (lane, cap) in [
                ("ctl", self.config.control_queue),
                ("data", self.config.data_queue),
            ] {
                let (tx, rx) = mpsc::sync_channel(cap);
                let (me, stop, stats, config) = (
                    self.me,
                    self.stop.clone(),
                    self.stats.clone(),
                    self.config.clone(),
                );
                let t = std::thread::Builder::new()
                    .name(format!("raft-{lane}-{id}"))
                    .spawn(move || send_loop(me, addr, rx, stop, stats, config))?;
                self.threads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t);
                senders.push(tx);
            }
            let (Some(data), Some(control)) = (senders.pop(), senders.pop()) else {
                continue;
            };
            lanes.insert(
                id,
                Lanes {
                    addr,
                    senders: [control, data],
                },
            );
        }
        Ok(())
    }

    /// Sets the handler of side-channel connections of `kind` (once; later calls are
    /// ignored, and so is a Raft lane).
    pub fn on_side_channel(&self, kind: handshake::Kind, handler: SideChannel) {
        if let Some(slot) = side_index(kind).and_then(|i| self.side.get(i)) {
            let _ = slot.set(handler);
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// Queues `msg` for `to`; dropped if its lane is full or `to` is unknown.
    pub fn send(&self, to: NodeId, msg: Message) {
        let all = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(lanes) = all.get(&to) else {
            return;
        };
        let lane = match &msg {
            Message::Append { entries, .. } if !entries.is_empty() => 1,
            _ => 0,
        };
        match lanes.senders[lane].try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stops every thread and closes every connection.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Senders gone: lane threads end.
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // Wake the accept loop, then close what it accepted (their readers end).
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_millis(100));
        for s in self
            .accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        tracing::debug!(node = self.me, "raft transport stopped");
    }
}

fn accept_loop(
    listener: TcpListener,
    deliver: Deliver,
    side: SideSlot,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    stats: Arc<TransportStats>,
    config: TransportConfig,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let _ = conn.set_nodelay(true);
        if let Ok(clone) = conn.try_clone() {
            let mut list = accepted.lock().unwrap_or_else(|p| p.into_inner());
            // Forget connections that ended (their clone fails to report a peer).
            list.retain(|s| s.peer_addr().is_ok());
            list.push(clone);
        }
        let (deliver, stats2, max) = (deliver.clone(), stats.clone(), config.max_frame);
        let side = side.clone();
        let secret = config.secret.clone();
        let spawned = std::thread::Builder::new()
            .name("raft-read".into())
            .spawn(move || {
                let stats = stats2;
                let conn = match accept_handshake(conn, &secret) {
                    Ok(c) => c,
                    Err(e) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "node-to-node connection refused");
                        return;
                    }
                };
                if let Err(e) = read_loop(conn, &deliver, &side, max)
                    && e.kind() == io::ErrorKind::InvalidData
                {
                    stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "raft connection closed on a bad frame");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "raft reader thread not started");
        }
    }
}

/// The listener's side of the handshake (bounded in time): the caller's kind and id.
fn accept_handshake(
    mut conn: TcpStream,
    secret: &[u8],
) -> Result<(handshake::Kind, NodeId, TcpStream), handshake::HandshakeError> {
    use handshake::HandshakeError;
    let io = |_| HandshakeError::Malformed;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io)?;
    let mut hello = [0u8; handshake::HELLO_LEN];
    conn.read_exact(&mut hello).map_err(io)?;
    let (kind, from) = match handshake::read_hello(&hello) {
        Ok(k) => k,
        Err(e) => {
            if matches!(e, HandshakeError::Version(_)) {
                let _ = conn.write_all(&handshake::challenge(false));
            }
            return Err(e);
        }
    };
    let challenge = handshake::challenge(true);
    conn.write_all(&challenge).map_err(io)?;
    let mut proof = [0u8; handshake::PROOF_LEN];
    conn.read_exact(&mut proof).map_err(io)?;
    let verdict = handshake::verify(secret, &challenge, from, kind, &proof);
    let _ = conn.write_all(&[handshake::verdict(verdict.is_ok())]);
    verdict?;
    conn.set_read_timeout(None).map_err(io)?;
    Ok((kind, from, conn))
}

/// The caller's side of the handshake (bounded in time).
pub fn connect_handshake(
    conn: &mut TcpStream,
    me: NodeId,
    kind: handshake::Kind,
    secret: &[u8],
) -> Result<(), handshake::HandshakeError> {
    let io = |_| handshake::HandshakeError::Malformed;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io)?;
    conn.write_all(&handshake::hello(me, kind)).map_err(io)?;
    let mut challenge = [0u8; handshake::CHALLENGE_LEN];
    conn.read_exact(&mut challenge).map_err(io)?;
    let proof = handshake::proof(secret, &challenge, me, kind)?;
    conn.write_all(&proof).map_err(io)?;
    let mut verdict = [0u8; 1];
    conn.read_exact(&mut verdict).map_err(io)?;
    handshake::read_verdict(verdict[0])?;
    conn.set_read_timeout(None).map_err(io)?;
    Ok(())
}

/// Reads frames until the connection ends or a frame is bad; a forwarding connection goes to
/// its handler instead.
fn read_loop(
    (kind, caller, conn): (handshake::Kind, NodeId, TcpStream),
    deliver: &Deliver,
    side: &SideSlot,
    max_frame: usize,
) -> io::Result<()> {
    if let Some(i) = side_index(kind) {
        match side.get(i).and_then(|s| s.get()) {
            Some(handler) => handler(caller, conn),
            None => tracing::debug!(?kind, "side-channel connection closed: no handler"),
        }
        return Ok(());
    }
    let mut r = BufReader::with_capacity(256 * 1024, conn);
    loop {
        let mut header = [0u8; wire::FRAME_HEADER];
        r.read_exact(&mut header)?;
        let len = wire::body_len(&header, max_frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        let (from, incarnation, msg) = wire::decode(&header, Bytes::from(body))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if from != caller {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame from node {from} on node {caller}'s connection"),
            ));
        }
        deliver(from, incarnation, msg);
    }
}

/// One lane to one peer: connects when there is something to send, writes what is queued
/// (as many frames as are waiting, in one write), reconnects after an error.
fn send_loop(
    me: NodeId,
    addr: SocketAddr,
    rx: Receiver<Message>,
    stop: Arc<AtomicBool>,
    stats: Arc<TransportStats>,
    config: TransportConfig,
) {
    let mut conn: Option<TcpStream> = None;
    let mut retry_at = Instant::now();
    let mut backoff = config.reconnect_ms.max(1);
    // The last handshake refusal logged, so a peer that keeps refusing is reported once.
    let mut refused: Option<handshake::HandshakeError> = None;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        buf.clear();
        wire::encode(&mut buf, me, config.incarnation, &first);
        let mut count = 1u64;
        while buf.len() < (1 << 20) {
            match rx.try_recv() {
                Ok(m) => {
                    wire::encode(&mut buf, me, config.incarnation, &m);
                    count += 1;
                }
                Err(_) => break,
            }
        }
        // A peer that restarted left our old connection half-closed: a write into it would
        // vanish without an error (the first message after a restart, often a vote). Nothing
        // is ever read on this connection, so anything readable means it is gone.
        if conn.as_ref().is_some_and(|s| !still_open(s)) {
            conn = None;
        }
        if conn.is_none() && Instant::now() >= retry_at {
            let connected = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .map_err(|_| None)
                .and_then(|mut s| {
                    let _ = s.set_nodelay(true);
                    match connect_handshake(&mut s, me, handshake::Kind::Raft, &config.secret) {
                        Ok(()) => Ok(s),
                        Err(e) => Err(Some(e)),
                    }
                });
            match connected {
                Ok(s) => {
                    conn = Some(s);
                    backoff = config.reconnect_ms.max(1);
                    refused = None;
                }
                Err(why) => {
                    if let Some(e) = why
                        && refused.as_ref() != Some(&e)
                    {
                        tracing::warn!(%addr, error = %e, "peer refused the handshake");
                        refused = Some(e);
                    }
                    retry_at = Instant::now() + Duration::from_millis(backoff);
                    backoff = (backoff * 2).min(1000);
                }
            }
        }
        let Some(s) = conn.as_mut() else {
            stats.dropped.fetch_add(count, Ordering::Relaxed);
            continue;
        };
        if s.write_all(&buf).is_err() {
            stats.dropped.fetch_add(count, Ordering::Relaxed);
            conn = None;
            retry_at = Instant::now() + Duration::from_millis(config.reconnect_ms);
        }
    }
}

/// Whether an outgoing connection is still open: the peer never sends on it, so a readable
/// end-of-stream or an error means it closed.
fn still_open(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let open = match s.peek(&mut [0u8; 1]) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    };
    open && s.set_nonblocking(false).is_ok()
}
