//! The MQTT broker: accepts connections on the MQTT listeners (TCP, TLS, and WebSocket at
//! `/mqtt` on the HTTP listener: [`websocket`]) and runs one [`connection`] task each, on the
//! engine; [`transport`] gives the connection one shape of byte stream whatever carried it.
//! Every session is the engine's (a clean session is one that ends with its connection): its
//! subscriptions, its cursor in the log and its packets in flight are committed state, so
//! what a client missed while away is read from the log, not kept in RAM. A session belongs
//! to the connection that opened it last, on whichever node: this module follows the opens the
//! engine applies and tells its own connection of a session opened elsewhere to leave.
//! This module owns the listeners and the node's table of connected client ids (a new
//! connection with a client id already connected here takes the session over); it never
//! decides what a session receives (the engine does) and never parses bytes (the codec does).

mod connection;
mod hub;
pub mod message_properties;
mod outbox;
pub mod payload;
pub mod stats;
mod transport;
pub mod websocket;

pub use stats::BrokerStats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use manifold_core::engine::Engine;
use manifold_core::engine::{Owner, SessionEvent};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

/// The broker's limits and defaults.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The largest packet taken from a client (MQTT 5: told in CONNACK); the engine's
    /// `max_message_bytes` plus room for a PUBLISH's header and properties.
    pub max_packet_size: u32,
    /// The longest keep alive a client may ask for; a longer one (or 0) is cut to it, and an
    /// MQTT 5 client is told (Server Keep Alive). 0: no maximum.
    pub max_keep_alive: u16,
    /// How long a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// QoS 1 and 2 PUBLISH packets a client may have unacknowledged towards the broker
    /// (MQTT 5 Receive Maximum; more is DISCONNECT 0x93).
    pub receive_maximum: u16,
    /// How long an MQTT 3.1.1 persistent session (Clean Session 0) outlives its connection,
    /// in seconds (as Mosquitto's `persistent_client_expiration`); `u32::MAX`: for ever.
    pub persistent_session_expiry_s: u32,
    /// A clean session (one that ends with its connection) whose next message is older than
    /// this (ms) skips to the head of the log: live QoS 0 telemetry never replays minutes
    /// late. 0: never.
    pub clean_lag_limit_ms: u64,
    /// How often the `$SYS/broker/...` values are published to their subscribers (Mosquitto's
    /// `sys_interval`); a new subscription gets them at once.
    pub sys_interval: Duration,
    /// QoS 1/2 messages a session has in flight towards its client at most (MQTT 5: fewer if
    /// the client's Receive Maximum says so). Each is committed session state.
    pub max_inflight: u16,
    /// The topic aliases a client may set up towards the broker (MQTT 5 Topic Alias
    /// Maximum); 0: none.
    pub topic_alias_maximum: u16,
}

impl BrokerConfig {
    /// Defaults for an engine taking messages of up to `max_message_bytes`.
    pub fn for_engine(max_message_bytes: usize) -> BrokerConfig {
        BrokerConfig {
            max_packet_size: u32::try_from(max_message_bytes.saturating_add(64 * 1024))
                .unwrap_or(u32::MAX),
            max_keep_alive: 0,
            connect_timeout: Duration::from_secs(10),
            receive_maximum: 100,
            persistent_session_expiry_s: u32::MAX,
            topic_alias_maximum: 64,
            max_inflight: 1024,
            sys_interval: Duration::from_secs(10),
            clean_lag_limit_ms: 60_000,
        }
    }
}

/// A connection holding a client id: how to take the session from it.
struct Holder {
    connection: u64,
    /// Tells it to leave (without closing the session: the new connection has it).
    leave: watch::Sender<bool>,
    /// Completes once it has left.
    gone: Option<oneshot::Receiver<()>>,
}

/// What connections share.
pub(crate) struct Shared {
    engine: Arc<Engine>,
    /// This broker run: connections are named `(node, boot, connection)` in the sessions they
    /// open, so a restarted node tells its old connections from its new ones.
    boot: u64,
    config: BrokerConfig,
    holders: Mutex<HashMap<Bytes, Holder>>,
    next_connection: AtomicU64,
    /// This node's counters.
    stats: Arc<BrokerStats>,
    /// The `$SYS` topics and values, as of the last tick.
    sys: watch::Sender<Arc<Vec<(String, Bytes)>>>,
    /// Bumped when a session on this node has closed: its shared subscriptions' pending
    /// messages may have been handed to a member connected here.
    sessions_closed: watch::Sender<u64>,
    /// Live subscribers' shared readers, by filter.
    hubs: Arc<hub::Hubs>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<Bytes, Holder>> {
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes connection `connection` the holder of `client`, after the connection holding it
    /// (if any) has left; returns what tells this one to leave in turn, and what it signals
    /// when it has.
    async fn take(
        &self,
        client: &Bytes,
        connection: u64,
    ) -> (watch::Receiver<bool>, oneshot::Sender<()>) {
        let (leave, told) = watch::channel(false);
        let (done, gone) = oneshot::channel();
        let before = self.lock().insert(
            client.clone(),
            Holder {
                connection,
                leave,
                gone: Some(gone),
            },
        );
        if let Some(mut old) = before {
            let _ = old.leave.send(true);
            if let Some(gone) = old.gone.take() {
                // A connection stuck writing to a dead socket must not hold the session.
                let _ = tokio::time::timeout(Duration::from_secs(5), gone).await;
            }
        }
        (told, done)
    }

    /// This node's connection `connection`, as sessions name it.
    fn owner(&self, connection: u64) -> Owner {
        Owner {
            node: self.engine.node_id(),
            boot: self.boot,
            connection,
        }
    }

    /// Whether `owner` is a connection of another broker (another node, or an earlier run of
    /// this one).
    fn elsewhere(&self, owner: Owner) -> bool {
        owner.node != self.engine.node_id() || owner.boot != self.boot
    }

    /// Tells the connections here that lost their sessions to leave: the one holding a
    /// session another broker's connection opened (another node, or an earlier run here), or
    /// all of them when this run's connections were declared lost; `None`: look at each.
    fn follow(&self, event: Option<SessionEvent>) {
        let me = self.engine.node_id();
        let holders = self.lock();
        let leave = |h: &Holder| {
            let _ = h.leave.send(true);
        };
        match event {
            Some(SessionEvent::Opened {
                client,
                owner: Some(owner),
            }) if self.elsewhere(owner) => {
                // (A newer connection here takes the session from an older one itself.)
                if let Some(h) = holders.get(&client) {
                    leave(h);
                }
            }
            Some(SessionEvent::Opened { .. }) => {}
            Some(SessionEvent::Lost { node, except_boot }) => {
                if node == me && except_boot != self.boot {
                    holders.values().for_each(leave);
                }
            }
            None => {
                for (client, h) in holders.iter() {
                    let held_elsewhere = self
                        .engine
                        .session(client)
                        .and_then(|s| s.owner)
                        .is_some_and(|o| self.elsewhere(o));
                    if held_elsewhere {
                        leave(h);
                    }
                }
            }
        }
    }

    /// Connection `connection` no longer holds `client` (unless another took it since).
    fn release(&self, client: &Bytes, connection: u64) {
        let mut holders = self.lock();
        if holders
            .get(client)
            .is_some_and(|h| h.connection == connection)
        {
            holders.remove(client);
        }
    }
}

/// A node's MQTT broker: what the connections of every listener share (the engine, the table
/// of connected client ids, the counters) and the tasks running them. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: watch::Receiver<bool>,
}

impl Broker {
    /// A broker on `engine`: its connections are told to close (MQTT 5: DISCONNECT 0x8B, server
    /// shutting down) when `shutdown` turns true. Starts the `$SYS` ticker (on the current
    /// tokio runtime).
    pub fn new(
        engine: Arc<Engine>,
        config: BrokerConfig,
        stats: Arc<BrokerStats>,
        shutdown: watch::Receiver<bool>,
    ) -> Broker {
        let mut sys_tick = tokio::time::interval(config.sys_interval);
        sys_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = Arc::new(Shared {
            boot: boot_id(),
            sys: watch::channel(Arc::new(stats.sys_messages())).0,
            hubs: hub::Hubs::new(engine.clone(), stats.clone()),
            stats,
            engine,
            config,
            holders: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            sessions_closed: watch::channel(0).0,
        });
        let broker = Broker {
            shared,
            tasks: TaskTracker::new(),
            shutdown,
        };
        let (shared, mut shutdown) = (broker.shared.clone(), broker.shutdown.clone());
        broker.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stopping(&mut shutdown) => break,
                    _ = sys_tick.tick() => {
                        shared.sys.send_replace(Arc::new(shared.stats.sys_messages()));
                    }
                }
            }
        });
        // Sessions taken by connections elsewhere: their holders here leave.
        let (shared, mut shutdown) = (broker.shared.clone(), broker.shutdown.clone());
        let mut events = shared.engine.session_events();
        broker.tasks.spawn(async move {
            loop {
                let event = tokio::select! {
                    () = stopping(&mut shutdown) => break,
                    event = events.recv() => event,
                };
                match event {
                    Ok(event) => shared.follow(Some(event)),
                    Err(broadcast::error::RecvError::Lagged(_)) => shared.follow(None),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        // The connections of this node's earlier runs are gone: the sessions they held close
        // as lost connections' (their Wills go out). Retried until taken (no leader yet).
        // (Every session a connection here opened was applied here before its CONNACK.)
        let (shared, mut shutdown) = (broker.shared.clone(), broker.shutdown.clone());
        broker.tasks.spawn(async move {
            let node = shared.engine.node_id();
            while shared.engine.sessions_held_by(node, shared.boot) {
                match shared.engine.sessions_lost(node, shared.boot).await {
                    Ok(()) => break,
                    Err(e) => tracing::debug!(error = %e, "declaring earlier connections lost"),
                }
                tokio::select! {
                    () = stopping(&mut shutdown) => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        broker
    }

    /// Serves MQTT on `listener` (plain TCP) until shutdown.
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        self.accept(listener, None).await
    }

    /// Serves MQTT over TLS (`mqtts`) on `listener` until shutdown. A handshake not done within
    /// the CONNECT timeout closes the connection.
    pub async fn serve_tls(&self, listener: TcpListener, tls: TlsAcceptor) -> std::io::Result<()> {
        self.accept(listener, Some(tls)).await
    }

    /// Waits, once shutdown has begun, until every connection of every listener has closed
    /// (and with them their hold on the engine).
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn accept(&self, listener: TcpListener, tls: Option<TlsAcceptor>) -> std::io::Result<()> {
        let mut shutdown = self.shutdown.clone();
        loop {
            let socket = tokio::select! {
                () = stopping(&mut shutdown) => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            match &tls {
                None => {
                    let (rd, wr) = transport::tcp(socket);
                    self.connection(rd, wr);
                }
                Some(tls) => {
                    let (tls, broker) = (tls.clone(), self.clone());
                    let timeout = self.shared.config.connect_timeout;
                    self.tasks.spawn(async move {
                        match tokio::time::timeout(timeout, tls.accept(socket)).await {
                            Ok(Ok(stream)) => {
                                let (rd, wr) = tokio::io::split(stream);
                                let (rd, wr) = transport::stream(Box::new(rd), Box::new(wr));
                                broker.connection(rd, wr);
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    }

    /// Runs one connection on a stream of MQTT bytes; `false` (and nothing runs) once shutdown
    /// has begun.
    fn connection(&self, rd: transport::Reader, wr: transport::Writer) -> bool {
        let mut shutdown = self.shutdown.clone();
        // Seen as it is now: the one change to come (to true) wakes the connection.
        if *shutdown.borrow_and_update() {
            return false;
        }
        let id = self.shared.next_connection.fetch_add(1, Ordering::Relaxed);
        self.tasks
            .spawn(connection::run(rd, wr, self.shared.clone(), id, shutdown));
        true
    }
}

/// Completes once `shutdown` is true (at once if it is already).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A value of this broker run's own: the wall clock in nanoseconds at start (never 0).
fn boot_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos.max(1)
}
