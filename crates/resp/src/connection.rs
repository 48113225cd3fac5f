//! One client connection: read bytes, decode requests, run each command in order, write the
//! replies — every complete request in a read is run before one write of all their replies
//! (pipelining: one flush per batch).
//!
//! Owns the connection's state (database, protocol, principal) and its loop.
//! It must never reorder replies, run a command before the one sent ahead of it has answered,
//! or act on a request that did not arrive whole.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use manifold_core::engine::{Client, Watch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::commands;
use crate::reply::{Protocol, Reply};
use crate::request::Decoder;
use crate::server::{ClientEntry, Shared, now_ms};

/// What a connection holds between commands.
pub struct Conn {
    /// Its entry in the client table.
    pub entry: Arc<ClientEntry>,
    /// SELECTed database.
    pub db: u8,
    /// Protocol version.
    pub protocol: Protocol,
    /// The engine as its principal sees it; `None` until it authenticates (only AUTH, HELLO,
    /// QUIT and RESET run then).
    pub client: Option<Client>,
    /// QUIT: close after this reply.
    pub closing: bool,
    /// MULTI: the commands queued for EXEC.
    pub multi: Option<Multi>,
    /// WATCHed keys, as they were when watched.
    pub watches: Vec<Watch>,
    /// EXEC is running the queued commands (nothing blocks).
    pub in_exec: bool,
}

/// A transaction being queued (between MULTI and EXEC / DISCARD).
#[derive(Debug, Default)]
pub struct Multi {
    /// The queued commands, checked (known, arity, authenticated), with their table entries.
    pub queued: Vec<(&'static crate::command::Spec, Vec<Bytes>)>,
    /// A command was refused while queuing: EXEC answers EXECABORT.
    pub dirty: bool,
    /// Bytes of the queued arguments (bounded by the query-buffer limit).
    pub bytes: usize,
}

impl Conn {
    /// The connection as it starts (and as RESET leaves it): RESP2, database 0, the anonymous
    /// principal if the server has one that needs no secret.
    pub fn new(shared: &Shared, entry: Arc<ClientEntry>) -> Self {
        let client = shared
            .engine
            .anonymous()
            .ok()
            .map(|p| Client::new(shared.engine.clone(), p));
        Conn {
            entry,
            db: 0,
            protocol: Protocol::Resp2,
            client,
            closing: false,
            multi: None,
            watches: Vec::new(),
            in_exec: false,
        }
    }
}

/// Tells a client over `max_clients` so and closes.
pub async fn refuse(mut socket: TcpStream) {
    let _ = socket
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
}

/// Serves one client until it quits, disconnects, sends a request that cannot be read, is
/// killed, or the server shuts down.
pub async fn run(
    mut socket: TcpStream,
    shared: Arc<Shared>,
    entry: Arc<ClientEntry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = socket.set_nodelay(true);
    let mut conn = Conn::new(&shared, entry.clone());
    let mut decoder = Decoder::new(shared.config.limits);
    // Buffers grow with what a client sends and is sent, and are given back when a burst is
    // over: an idle connection holds a few KiB (docs/benchmarks.md).
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    // The client closed its side while a command ran: finish the batch, reply, close.
    let mut eof = false;
    // XADDs read and not yet proposed (consecutive ones go together).
    let mut appends = Vec::new();
    loop {
        // As Redis, the client's last interaction is when its requests were read.
        entry.last_interaction_ms.store(now_ms(), Ordering::Relaxed);
        // Every complete request already read, in order; their replies go out together.
        loop {
            decoder.set_unauthenticated(conn.client.is_none());
            let mut args = match decoder.decode(&mut input) {
                Ok(Some(args)) => args,
                Ok(None) => break,
                Err(e) => {
                    if !stoppable(
                        answer_appends(&shared, &conn, &mut appends, &mut output),
                        &entry,
                        &mut shutdown,
                    )
                    .await
                    {
                        return;
                    }
                    let reply = Reply::err(&e);
                    shared.count_error(&format!("ERR {e}"));
                    reply.encode(conn.protocol, &mut output);
                    let _ = stoppable(
                        flush(&mut socket, &mut output, &shared),
                        &entry,
                        &mut shutdown,
                    )
                    .await;
                    return;
                }
            };
            // Consecutive XADDs are proposed together, in order, and answered in order as the
            // log commits them: a pipeline of appends shares the proposer, the hand-off and the
            // fsyncs instead of one each. Any other command waits until they are answered.
            if appends.len() < MAX_STARTED && commands::defer(&mut conn, &mut args, &mut appends) {
                decoder.recycle(args);
                continue;
            }
            if !appends.is_empty()
                && !stoppable(
                    answer_appends(&shared, &conn, &mut appends, &mut output),
                    &entry,
                    &mut shutdown,
                )
                .await
            {
                return;
            }
            // Before a command that may block, the replies before it go out (as Redis writes
            // a client's pending replies when it blocks).
            if !output.is_empty()
                && commands::may_block(&args)
                && !stoppable(
                    flush(&mut socket, &mut output, &shared),
                    &entry,
                    &mut shutdown,
                )
                .await
            {
                return;
            }
            // A command may wait (BLOCK); a kill, a shutdown or the client leaving ends it.
            // What the client sends meanwhile is kept for after it, up to the buffer limit.
            // A client that half-closes after its requests still gets the replies of those
            // that do not block (as Redis, which runs them before reading the end).
            let reply = {
                let run = commands::execute(&shared, &mut conn, args);
                tokio::pin!(run);
                loop {
                    tokio::select! {
                        biased;
                        reply = &mut run => break reply,
                        _ = entry.kill.notified() => return,
                        _ = shutdown.changed() => return,
                        gone = client_gone(&mut socket, &mut input, &shared),
                            if !eof && input.len() < shared.config.limits.max_query_buffer => {
                            eof = gone;
                            if eof && entry.blocked.load(Ordering::Relaxed) {
                                return;
                            }
                        }
                        _ = tokio::time::sleep(Duration::from_millis(100)), if eof => {
                            if entry.blocked.load(Ordering::Relaxed) {
                                return;
                            }
                        }
                    }
                }
            };
            reply.encode(conn.protocol, &mut output);
            if conn.closing {
                break;
            }
        }
        // (Each guarded: the futures are large, and building one to do nothing is a copy.)
        if !appends.is_empty()
            && !stoppable(
                answer_appends(&shared, &conn, &mut appends, &mut output),
                &entry,
                &mut shutdown,
            )
            .await
        {
            return;
        }
        if !output.is_empty()
            && !stoppable(
                flush(&mut socket, &mut output, &shared),
                &entry,
                &mut shutdown,
            )
            .await
        {
            return;
        }
        if eof || conn.closing || entry.killed.load(Ordering::SeqCst) {
            return;
        }
        if input.is_empty() && input.capacity() > KEEP_BUFFER {
            input = BytesMut::new();
        }
        if input.capacity() - input.len() < READ_SIZE / 4 {
            input.reserve(READ_SIZE);
        }
        tokio::select! {
            read = socket.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    shared.stats.net_input_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            },
            _ = entry.kill.notified() => return,
            _ = shutdown.changed() => return,
        }
    }
}

/// Bytes a read asks for at least.
const READ_SIZE: usize = 4096;
/// A buffer larger than this is dropped once empty rather than kept for the next burst.
const KEEP_BUFFER: usize = 64 * 1024;

/// XADDs proposed together at most; the next request waits for them.
const MAX_STARTED: usize = 1024;

/// Proposes the XADDs read so far, together, and writes their replies, in order. Always
/// `true` (see `stoppable`).
async fn answer_appends(
    shared: &Shared,
    conn: &Conn,
    appends: &mut Vec<manifold_core::engine::AppendRequest>,
    output: &mut BytesMut,
) -> bool {
    if !appends.is_empty() {
        // The next run of XADDs starts with room for as many as this one (up to a pipeline
        // of 16, so an idle connection keeps little): no regrowth request by request.
        let room = appends.len().min(16);
        let run = std::mem::replace(appends, Vec::with_capacity(room));
        commands::append_all(shared, conn, run, output).await;
    }
    true
}

/// Writes the replies gathered so far; `false` when the client is gone.
async fn flush(socket: &mut TcpStream, output: &mut BytesMut, shared: &Shared) -> bool {
    if output.is_empty() {
        return true;
    }
    shared
        .stats
        .net_output_bytes
        .fetch_add(output.len() as u64, Ordering::Relaxed);
    if socket.write_all(output).await.is_err() {
        return false;
    }
    output.clear();
    if output.capacity() > KEEP_BUFFER {
        *output = BytesMut::new();
    }
    true
}

/// Runs `work` unless a CLIENT KILL or the server's shutdown comes first (a client that stops
/// reading, or a commit that stalls, must not make the connection unkillable); `false` when
/// the connection must end.
async fn stoppable(
    work: impl std::future::Future<Output = bool>,
    entry: &ClientEntry,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        ok = work => ok,
        _ = entry.kill.notified() => false,
        _ = shutdown.changed() => false,
    }
}

/// While a command runs: reads what the client sends meanwhile (kept for after it), and
/// answers `true` when the client has gone.
async fn client_gone(socket: &mut TcpStream, input: &mut BytesMut, shared: &Shared) -> bool {
    if input.capacity() - input.len() < READ_SIZE / 4 {
        input.reserve(READ_SIZE);
    }
    match socket.read_buf(input).await {
        Ok(0) | Err(_) => true,
        Ok(n) => {
            shared
                .stats
                .net_input_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
            false
        }
    }
}
