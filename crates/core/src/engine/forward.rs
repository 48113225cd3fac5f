//! Writes that reach a follower go to the leader. The operation (an append, a pipeline of
//! appends, any other write as a [`TxOp`]) is encoded (`forward_codec.rs`) and sent over one
//! TCP connection to the leader's Raft address (after the node-to-node handshake, as a
//! forwarding connection); the leader's engine runs it as if a local client had sent it and answers with
//! the result and its applied index. The follower replies once it has applied that far
//! itself (bounded by `forward_apply_wait_ms`), so the client that wrote through it reads
//! its write there.
//!
//! While no leader is known (an election, a transfer) a write waits up to `leader_wait_ms`
//! for one, then fails with `NotLeader`. Appends carry a producer sequence of this node's
//! (the engine's dedupe), so one resent after its leader failed mid-request is answered from
//! the new leader's table, never appended twice; any other write whose answer was lost fails
//! with `NotLeader { leader: None }` (it may or may not have been applied). A leader runs a
//! forwarded operation only locally: a node that stopped leading refuses it, and the
//! follower asks again.
//!
//! Never here: deciding anything about the log (the leader's engine does).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

pub use super::forward_codec::{CommandAnswer, ForwardAnswer, ForwardOp};
use super::forward_codec::{decode_answer, decode_op, encode_answer, encode_op};
use super::{Engine, EngineError, Inner, Result};
use crate::raft::NodeId;
use crate::raft::handshake::{self, Kind};
use crate::store::{LogIndex, StoreError};

/// Largest forwarded frame (an append pipeline of up to 16 MiB messages fits).
const MAX_FRAME: usize = 256 << 20;
/// How long a forwarded request may take before its answer counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The error for an answer of the wrong kind (a leader that does not speak this version).
pub(super) fn unexpected() -> EngineError {
    EngineError::Store(StoreError::Failed(Arc::from(
        "the leader answered a forwarded write with an answer of another kind",
    )))
}

/// Where a write goes now.
enum Route {
    /// This node takes it.
    Here,
    /// The leader it knows.
    To(NodeId),
    /// No leader to take it yet (an election, a transfer, a new leader's no-op).
    Wait,
}

/// Why a request got no answer.
enum Lost {
    /// It never left this node: anything may be sent again.
    NotSent,
    /// It may have been run.
    Unknown,
}

/// A follower's side: the connection to the leader and the producer its appends carry.
#[derive(Debug)]
pub(super) struct Forwarder {
    me: NodeId,
    secret: Arc<[u8]>,
    addrs: HashMap<NodeId, SocketAddr>,
    /// `fwd:<node id>:<nonce>`: unique to this node's run.
    producer: Bytes,
    seq: AtomicU64,
    next_id: AtomicU64,
    conn: tokio::sync::Mutex<Option<Conn>>,
    leader_wait: Duration,
    apply_wait: Duration,
    /// Forwarded writes answered before this node applied what they wrote (the wait ran out).
    pub apply_timeouts: AtomicU64,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

#[derive(Debug, Clone)]
struct Conn {
    leader: NodeId,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    closed: Arc<AtomicBool>,
}

/// `len:u32 crc:u32 id:u64 payload`, CRC32C over id and payload.
fn frame(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&((8 + payload.len()) as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads one frame: its id and payload.
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(u64, Bytes)> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(8..=MAX_FRAME).contains(&len) {
        return Err(bad("forwarded frame length out of bounds"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if crc32c::crc32c(&body) != crc {
        return Err(bad("forwarded frame checksum mismatch"));
    }
    let mut body = Bytes::from(body);
    let id = body.get_u64_le();
    Ok((id, body))
}

fn bad(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

impl Forwarder {
    pub(super) fn new(
        node: NodeId,
        secret: Arc<[u8]>,
        voters: &[(NodeId, SocketAddr)],
        leader_wait: Duration,
        apply_wait: Duration,
    ) -> Forwarder {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Forwarder {
            me: node,
            secret,
            addrs: voters.iter().copied().collect(),
            producer: Bytes::from(format!("fwd:{node}:{nonce:016x}")),
            seq: AtomicU64::new(1),
            next_id: AtomicU64::new(1),
            conn: tokio::sync::Mutex::new(None),
            leader_wait,
            apply_wait,
            apply_timeouts: AtomicU64::new(0),
        }
    }

    /// Gives every append of `op` without a producer sequence one of this node's.
    fn stamp(&self, op: &mut ForwardOp) {
        let stamp = |req: &mut super::AppendRequest| {
            if req.producer.is_none() {
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                req.producer = Some((self.producer.clone(), seq));
            }
        };
        match op {
            ForwardOp::Append(req) => stamp(req),
            ForwardOp::AppendMany(reqs) => reqs.iter_mut().for_each(stamp),
            ForwardOp::Run(_) | ForwardOp::Exec(_) | ForwardOp::Command(_) => {}
        }
    }

    /// The open connection to `leader`, or a new one: at the address `--peers` gave, else at
    /// `elsewhere` (the configuration's: a member added since).
    async fn connection(
        &self,
        leader: NodeId,
        elsewhere: Option<SocketAddr>,
    ) -> std::result::Result<Conn, Lost> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && c.leader == leader
            && !c.closed.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        if let Some(old) = slot.take() {
            old.closed.store(true, Ordering::Release);
        }
        let addr = self
            .addrs
            .get(&leader)
            .copied()
            .or(elsewhere)
            .ok_or(Lost::NotSent)?;
        let stream = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| Lost::NotSent)?
        .map_err(|_| Lost::NotSent)?;
        let mut stream = stream;
        let _ = stream.set_nodelay(true);
        let shaken = tokio::time::timeout(
            Duration::from_secs(2),
            shake_hands(&mut stream, self.me, &self.secret),
        )
        .await;
        match shaken {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(leader, error = %e, "the leader refused the forwarding handshake");
                return Err(Lost::NotSent);
            }
            Err(_) => return Err(Lost::NotSent),
        }
        let (mut rd, mut wr) = stream.into_split();
        let (frames, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        {
            let closed = closed.clone();
            tokio::spawn(async move {
                while let Some(f) = queue.recv().await {
                    if closed.load(Ordering::Acquire) || wr.write_all(&f).await.is_err() {
                        break;
                    }
                }
                closed.store(true, Ordering::Release);
                let _ = wr.shutdown().await;
            });
        }
        {
            let (pending, closed) = (pending.clone(), closed.clone());
            tokio::spawn(async move {
                while let Ok((id, payload)) = read_frame(&mut rd).await {
                    let waiter = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if let Some(w) = waiter {
                        let _ = w.send(payload);
                    }
                }
                closed.store(true, Ordering::Release);
                // Every request still waiting learns its answer is lost.
                pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
            });
        }
        let conn = Conn {
            leader,
            frames,
            pending,
            closed,
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `payload` to `leader` and waits for its answer.
    async fn call(
        &self,
        leader: NodeId,
        elsewhere: Option<SocketAddr>,
        payload: &[u8],
    ) -> std::result::Result<Bytes, Lost> {
        let conn = self.connection(leader, elsewhere).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        if conn.frames.send(frame(id, payload)).is_err() {
            conn.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(Lost::NotSent);
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => {
                conn.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                conn.closed.store(true, Ordering::Release);
                Err(Lost::Unknown)
            }
        }
    }
}

/// The caller's side of the node-to-node handshake, for a forwarding connection.
async fn shake_hands(
    stream: &mut tokio::net::TcpStream,
    me: NodeId,
    secret: &[u8],
) -> std::result::Result<(), handshake::HandshakeError> {
    let io = |_| handshake::HandshakeError::Malformed;
    stream
        .write_all(&handshake::hello(me, Kind::Forward))
        .await
        .map_err(io)?;
    let mut challenge = [0u8; handshake::CHALLENGE_LEN];
    stream.read_exact(&mut challenge).await.map_err(io)?;
    let proof = handshake::proof(secret, &challenge, me, Kind::Forward)?;
    stream.write_all(&proof).await.map_err(io)?;
    let mut verdict = [0u8; 1];
    stream.read_exact(&mut verdict).await.map_err(io)?;
    handshake::read_verdict(verdict[0])
}

/// Whether an answer is the leader's refusal at its gate (nothing was logged: ask again).
fn refused(answer: &ForwardAnswer) -> bool {
    fn not_leader<T>(r: &Result<T>) -> bool {
        matches!(r, Err(EngineError::NotLeader { .. }))
    }
    match answer {
        ForwardAnswer::Append(r) => not_leader(r),
        ForwardAnswer::AppendMany(rs) => !rs.is_empty() && rs.iter().all(not_leader),
        ForwardAnswer::Run(r) => not_leader(r),
        ForwardAnswer::Exec(r) => not_leader(r),
        ForwardAnswer::Command(r) => not_leader(r),
    }
}

impl Inner {
    /// Where a write goes now (`Here` outside a group).
    fn route(&self) -> Route {
        let p = self.lock_proposer();
        match p.cluster.as_ref() {
            None => Route::Here,
            Some(g) if g.writable && !g.paused => Route::Here,
            Some(g) => match g.leader {
                Some(l) if l != self.config.node_id && !g.paused => Route::To(l),
                _ => Route::Wait,
            },
        }
    }

    /// Whether a write must go (or wait for) somewhere else.
    pub(super) fn forwarding(&self) -> bool {
        self.forwarder.is_some() && !matches!(self.route(), Route::Here)
    }
}

impl Engine {
    /// Runs `op` here, or has the leader run it; waits for a leader when there is none.
    pub(super) async fn forward(&self, mut op: ForwardOp) -> Result<ForwardAnswer> {
        let Some(fwd) = self.inner.forwarder.as_ref() else {
            return Ok(self.run_here(op).await);
        };
        fwd.stamp(&mut op);
        let resendable = matches!(op, ForwardOp::Append(_) | ForwardOp::AppendMany(_));
        let payload = encode_op(&op);
        let deadline = Instant::now() + fwd.leader_wait;
        loop {
            match self.inner.route() {
                Route::Here => return Ok(self.run_here(op).await),
                Route::To(leader) => {
                    match fwd.call(leader, self.member_addr(leader), &payload).await {
                        Ok(bytes) => {
                            let (applied, answer) = decode_answer(&bytes).map_err(|e| {
                                EngineError::Store(StoreError::Failed(Arc::from(format!(
                                    "the leader's answer to a forwarded write: {e}"
                                ))))
                            })?;
                            if !(refused(&answer) && Instant::now() < deadline) {
                                self.wait_applied(applied, fwd).await;
                                return Ok(answer);
                            }
                        }
                        Err(Lost::NotSent) => {}
                        Err(Lost::Unknown) if resendable => {}
                        Err(Lost::Unknown) => return Err(EngineError::NotLeader { leader: None }),
                    }
                }
                Route::Wait => {}
            }
            if Instant::now() >= deadline {
                let leader = self
                    .inner
                    .lock_proposer()
                    .cluster
                    .as_ref()
                    .and_then(|g| g.leader);
                return Err(EngineError::NotLeader { leader });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A member's Raft address as the configuration in force gives it.
    fn member_addr(&self, id: NodeId) -> Option<SocketAddr> {
        let status = self.inner.raft_status()?;
        let member = status.members.get(id)?;
        crate::raft::driver::peer_addrs(&crate::raft::Membership::new(vec![member.clone()]), 0, &[])
            .first()
            .map(|(_, a)| *a)
    }

    /// Runs a write on this node, never forwarding it: what a leader does with a forwarded one
    /// (a node that stopped leading refuses it at its gate).
    pub(super) async fn run_here(&self, op: ForwardOp) -> ForwardAnswer {
        match op {
            ForwardOp::Append(req) => ForwardAnswer::Append(self.append_here(req).await),
            ForwardOp::AppendMany(reqs) => {
                ForwardAnswer::AppendMany(self.append_many_here(reqs).await)
            }
            ForwardOp::Run(op) => ForwardAnswer::Run(self.run_op_here(op).await),
            ForwardOp::Exec(ops) => ForwardAnswer::Exec(self.exec_all_here(ops).await),
            ForwardOp::Command(command) => ForwardAnswer::Command(self.command_here(command).await),
        }
    }

    /// A read-free, watch-free transaction on this node, to its answers.
    async fn exec_all_here(&self, ops: Vec<super::TxOp>) -> Result<Vec<Result<super::TxAnswer>>> {
        let Some(mut exec) = self.exec_here(ops, &[], None)? else {
            return Err(EngineError::ShuttingDown); // only a WATCH refuses, and there is none
        };
        loop {
            match exec.next().await? {
                super::Step::Done(answers) => return Ok(answers),
                // No read was asked for; let apply go on if one ever is.
                super::Step::Read(resume) => drop(resume),
            }
        }
    }

    /// Waits (bounded) until this node applied through `index`.
    async fn wait_applied(&self, index: LogIndex, fwd: &Forwarder) {
        let deadline = Instant::now() + fwd.apply_wait;
        while self.applied_index() < index {
            if Instant::now() >= deadline {
                fwd.apply_timeouts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Serves the writes other members forward to this node, on `runtime`, over connections
    /// its Raft listener accepts. Call once, after the engine is shared; nothing in a group
    /// of one.
    pub fn serve_forwarded(self: &Arc<Self>, runtime: tokio::runtime::Handle) {
        let Some(transport) = self.cluster.as_ref().and_then(|c| c.transport.as_ref()) else {
            return;
        };
        let engine: Weak<Engine> = Arc::downgrade(self);
        transport.on_side_channel(
            Kind::Forward,
            Arc::new(move |_from, stream: std::net::TcpStream| {
                let engine = engine.clone();
                runtime.spawn(async move {
                    if let Err(e) = serve_connection(engine, stream).await
                        && e.kind() == std::io::ErrorKind::InvalidData
                    {
                        tracing::warn!(error = %e, "forwarding connection closed on a bad frame");
                    }
                });
            }),
        );
    }

    /// Forwarded writes this node answered before applying what they wrote.
    pub fn forward_apply_timeouts(&self) -> u64 {
        self.inner
            .forwarder
            .as_ref()
            .map_or(0, |f| f.apply_timeouts.load(Ordering::Relaxed))
    }
}

/// One follower's connection: each request runs as its own task; answers go back as they
/// finish, tagged with the request's id.
async fn serve_connection(
    engine: Weak<Engine>,
    stream: std::net::TcpStream,
) -> std::io::Result<()> {
    stream.set_nonblocking(true)?;
    let stream = tokio::net::TcpStream::from_std(stream)?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (answers, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(f) = queue.recv().await {
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
    });
    let result = loop {
        let (id, payload) = match read_frame(&mut rd).await {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        let op = match decode_op(&payload) {
            Ok(op) => op,
            Err(_) => break Err(bad("a forwarded operation does not decode")),
        };
        let Some(e) = engine.upgrade() else {
            break Ok(());
        };
        let answers = answers.clone();
        tokio::spawn(async move {
            let answer = e.run_here(op).await;
            let applied = e.applied_index();
            let _ = answers.send(frame(id, &encode_answer(applied, &answer)));
        });
    };
    drop(answers);
    let _ = writer.await;
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        other => other,
    }
}
