//! The listener and what every connection shares: the engine, the table of connected clients
//! (CLIENT LIST / KILL / ID), and the counters INFO reports.
//!
//! Owns accepting connections and the shared registry. It must never run a command itself:
//! each connection does (`connection.rs`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use manifold_core::engine::Engine;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::request::Limits;

/// Settings of the RESP front end.
#[derive(Debug, Clone)]
pub struct RespConfig {
    /// Request limits. The bulk length defaults to the engine's `max_message_bytes` (Redis's
    /// `proto-max-bulk-len` is 512 MB; nothing longer could be stored here anyway).
    pub limits: Limits,
    /// Most connected clients (`maxclients`); one more is told `-ERR max number of clients
    /// reached` and closed.
    pub max_clients: usize,
    /// The Manifold version INFO and HELLO report next to the Redis compatibility level.
    pub version: &'static str,
}

impl RespConfig {
    /// Defaults for `engine`.
    pub fn for_engine(max_message_bytes: usize) -> Self {
        RespConfig {
            limits: Limits {
                max_bulk_len: max_message_bytes,
                ..Limits::default()
            },
            max_clients: 10_000,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// The Redis version clients are told: the compatibility level of the command set.
pub const REDIS_VERSION: &str = "7.0.15";

/// One connected client, as CLIENT LIST shows it.
#[derive(Debug)]
pub struct ClientEntry {
    /// CLIENT ID.
    pub id: u64,
    /// Peer address.
    pub addr: SocketAddr,
    /// Local address.
    pub laddr: SocketAddr,
    /// When it connected.
    pub created: Instant,
    /// CLIENT SETNAME.
    pub name: Mutex<Bytes>,
    /// CLIENT SETINFO LIB-NAME / LIB-VER.
    pub lib: Mutex<(Bytes, Bytes)>,
    /// SELECTed database.
    pub db: AtomicU8,
    /// Protocol version (2 or 3).
    pub resp: AtomicU8,
    /// Last command's name (lowercase).
    pub last_cmd: Mutex<&'static str>,
    /// When it last sent a command (ms since the Unix epoch).
    pub last_interaction_ms: AtomicU64,
    /// In a blocking command.
    pub blocked: AtomicBool,
    /// Commands queued since MULTI; -1 outside a transaction (CLIENT LIST `multi`).
    pub multi: AtomicI64,
    /// CLIENT KILL: set, then the connection is woken and closes.
    pub killed: AtomicBool,
    /// Wakes the connection for a kill.
    pub kill: Notify,
    /// The user it is authenticated as.
    pub user: Mutex<Bytes>,
}

impl ClientEntry {
    /// Marks it killed and wakes it.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.kill.notify_one();
    }
}

/// Counters for INFO's stats, commandstats and errorstats sections.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections_received: AtomicU64,
    /// Connections refused at `max_clients`.
    pub rejected_connections: AtomicU64,
    /// Commands run.
    pub commands_processed: AtomicU64,
    /// Error replies sent.
    pub error_replies: AtomicU64,
    /// Clients in a blocking command now.
    pub blocked_clients: AtomicU64,
    /// Bytes read from and written to clients.
    pub net_input_bytes: AtomicU64,
    /// See `net_input_bytes`.
    pub net_output_bytes: AtomicU64,
    /// Per command: calls, microseconds, rejected (before running), failed (error reply).
    pub commands: Mutex<BTreeMap<&'static str, CommandStat>>,
    /// Per error code (the first word of the error): count.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

/// One command's counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommandStat {
    /// Calls.
    pub calls: u64,
    /// Time spent, in microseconds.
    pub usec: u64,
    /// Refused before running (arity, unknown subcommand, auth).
    pub rejected: u64,
    /// Ran and answered an error.
    pub failed: u64,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Settings.
    pub config: RespConfig,
    /// Connected clients by id.
    clients: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    next_id: AtomicU64,
    /// Counters.
    pub stats: Stats,
    /// When the server started.
    pub started: Instant,
    /// The listening address.
    pub addr: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The connected clients, oldest first (those killed and still closing left out).
    pub fn clients(&self) -> Vec<Arc<ClientEntry>> {
        let mut v: Vec<_> = lock(&self.clients)
            .values()
            .filter(|c| !c.killed.load(Ordering::SeqCst))
            .cloned()
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }

    fn register(&self, addr: SocketAddr, laddr: SocketAddr) -> Option<Arc<ClientEntry>> {
        let mut clients = lock(&self.clients);
        if clients.len() >= self.config.max_clients {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ClientEntry {
            id,
            addr,
            laddr,
            created: Instant::now(),
            name: Mutex::new(Bytes::new()),
            lib: Mutex::new((Bytes::new(), Bytes::new())),
            db: AtomicU8::new(0),
            resp: AtomicU8::new(2),
            last_cmd: Mutex::new("NULL"),
            last_interaction_ms: AtomicU64::new(now_ms()),
            blocked: AtomicBool::new(false),
            multi: AtomicI64::new(-1),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
            user: Mutex::new(Bytes::from_static(b"default")),
        });
        clients.insert(id, entry.clone());
        Some(entry)
    }

    fn unregister(&self, id: u64) {
        lock(&self.clients).remove(&id);
    }

    /// Counts a command run (or refused) and its reply.
    pub fn count_command(
        &self,
        name: &'static str,
        usec: u64,
        rejected: bool,
        error: Option<&str>,
    ) {
        self.stats
            .commands_processed
            .fetch_add(1, Ordering::Relaxed);
        {
            let mut cmds = lock(&self.stats.commands);
            let s = cmds.entry(name).or_default();
            if rejected {
                s.rejected += 1;
            } else {
                s.calls += 1;
                s.usec += usec;
                if error.is_some() {
                    s.failed += 1;
                }
            }
        }
        if let Some(e) = error {
            self.count_error(e);
        }
    }

    /// Counts `n` runs of one command that ran (a pipeline's XADDs), `usec` in all, `failed`
    /// of them answered with an error (each error counted by the caller with
    /// [`Shared::count_error`]).
    pub fn count_commands(&self, name: &'static str, n: u64, usec: u64, failed: u64) {
        self.stats
            .commands_processed
            .fetch_add(n, Ordering::Relaxed);
        let mut cmds = lock(&self.stats.commands);
        let s = cmds.entry(name).or_default();
        s.calls += n;
        s.usec += usec;
        s.failed += failed;
    }

    /// Counts an error reply under its code (`ERR`, `WRONGTYPE`, ...).
    pub fn count_error(&self, text: &str) {
        self.stats.error_replies.fetch_add(1, Ordering::Relaxed);
        let code = text.split(' ').next().unwrap_or("ERR").to_string();
        *lock(&self.stats.errors).entry(code).or_default() += 1;
    }

    /// CONFIG RESETSTAT.
    pub fn reset_stats(&self) {
        let s = &self.stats;
        for c in [
            &s.connections_received,
            &s.rejected_connections,
            &s.commands_processed,
            &s.error_replies,
            &s.net_input_bytes,
            &s.net_output_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        lock(&s.commands).clear();
        lock(&s.errors).clear();
    }

    /// Command counters, for INFO.
    pub fn command_stats(&self) -> Vec<(&'static str, CommandStat)> {
        lock(&self.stats.commands)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Error counters, for INFO.
    pub fn error_stats(&self) -> Vec<(String, u64)> {
        lock(&self.stats.errors)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// A connection's place in the client table, given back when dropped.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Serves RESP on `listener` until `shutdown` turns true; then stops accepting and tells every
/// connection to close after the command it is running.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    config: RespConfig,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        engine,
        config,
        clients: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        stats: Stats::default(),
        started: Instant::now(),
        addr: listener.local_addr()?,
    });
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (socket, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                shared.stats.connections_received.fetch_add(1, Ordering::Relaxed);
                let laddr = socket.local_addr().unwrap_or(shared.addr);
                let Some(entry) = shared.register(addr, laddr) else {
                    shared.stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    tasks.spawn(crate::connection::refuse(socket));
                    continue;
                };
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    // Out of the client table however the connection ends (a panic included).
                    let _registered = Registered { shared: shared.clone(), id: entry.id };
                    crate::connection::run(socket, shared, entry, shutdown).await;
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    for c in lock(&shared.clients).values() {
        c.kill();
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
