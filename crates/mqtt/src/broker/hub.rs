//! Topic hubs: live subscribers of one filter share one reader of the log. A connection at the
//! head whose session is one plain QoS 0 subscription, ending with the connection (the live
//! telemetry fan-out), attaches to the hub of its filter; the hub waits on the engine once,
//! reads each new message once, encodes its PUBLISH once per protocol version and writes it to
//! every attached connection's socket itself ([`Outbox::offer`]) — no task woken, no session
//! looked up, no packet built per subscriber.
//!
//! A subscriber attaches only with everything the hub has sent so far ([`Hubs::attach`]:
//! its position is at or past the hub's last message), and from then on gets every message
//! after its position once, in log order. The hub lets go of a subscriber whose socket does
//! not keep up (its queue is full), whose socket failed, or whose connection is gone, and
//! tells it where it stopped: the connection goes back to reading by cursor from there,
//! exactly as before it attached. So a message is never sent twice or skipped by the move.
//!
//! Owns the hubs and their subscriber lists; never commits anything (a clean session's QoS 0
//! cursor is never committed), never reads the socket, never decides what a session receives
//! beyond the one filter it was attached with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use manifold_core::engine::{Engine, TopicMessage};
use tokio::sync::Notify;

use super::message_properties;
use super::outbox::Outbox;
use super::payload::payload_of;
use super::stats::{self, BrokerStats};
use crate::codec::{Packet, Protocol, Publish, QoS, encode};

/// Messages a hub reads from the log at a time.
const READ_BATCH: usize = 256;

/// The node's hubs, by filter.
pub(crate) struct Hubs {
    engine: Arc<Engine>,
    stats: Arc<BrokerStats>,
    by_filter: Mutex<HashMap<Bytes, Arc<Hub>>>,
}

struct Hub {
    filter: Bytes,
    state: Mutex<HubState>,
    /// Its last subscriber left: the hub stops.
    emptied: Notify,
}

struct HubState {
    sinks: Vec<Arc<Sink>>,
    /// Every message matching up to this log index has been offered to the subscribers.
    read: u64,
    /// The log index of the last message offered (where the hub started, before any): a
    /// subscriber with everything up to here has everything the others were sent.
    last: u64,
}

/// One attached subscriber.
struct Sink {
    /// Its connection's socket (weakly: a connection that ended is let go at the next write).
    outbox: Weak<Outbox>,
    protocol: Protocol,
    /// The client's Maximum Packet Size.
    max_packet: u32,
    /// It had every message up to this log index when it attached.
    from: u64,
    /// Whether the hub still writes to it; once not, `position` is where it stopped.
    attached: AtomicBool,
    position: AtomicU64,
    /// The hub let go of it.
    let_go: Notify,
}

/// A connection's place in a hub, until it detaches.
pub(crate) struct Attached {
    hubs: Arc<Hubs>,
    hub: Arc<Hub>,
    sink: Arc<Sink>,
}

impl Hubs {
    pub(crate) fn new(engine: Arc<Engine>, stats: Arc<BrokerStats>) -> Arc<Hubs> {
        Arc::new(Hubs {
            engine,
            stats,
            by_filter: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Bytes, Arc<Hub>>> {
        self.by_filter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a connection that has every message matching `filter` up to log index
    /// `position` to the filter's hub (started if there is none): from now on the hub writes it
    /// every message after `position`. `None` when the hub has already sent a message after
    /// `position` (the connection reads it by cursor, and tries again later).
    pub(crate) fn attach(
        self: &Arc<Self>,
        filter: &Bytes,
        outbox: &Arc<Outbox>,
        protocol: Protocol,
        max_packet: u32,
        position: u64,
    ) -> Option<Attached> {
        let mut hubs = self.lock();
        let hub = match hubs.get(filter) {
            Some(hub) => hub.clone(),
            None => {
                let hub = Arc::new(Hub {
                    filter: filter.clone(),
                    state: Mutex::new(HubState {
                        sinks: Vec::new(),
                        read: position,
                        last: position,
                    }),
                    emptied: Notify::new(),
                });
                hubs.insert(filter.clone(), hub.clone());
                tokio::spawn(self.clone().run(hub.clone()));
                hub
            }
        };
        let mut st = hub.lock();
        if position < st.last {
            return None;
        }
        let sink = Arc::new(Sink {
            outbox: Arc::downgrade(outbox),
            protocol,
            max_packet,
            from: position,
            attached: AtomicBool::new(true),
            position: AtomicU64::new(position),
            let_go: Notify::new(),
        });
        st.sinks.push(sink.clone());
        drop(st);
        stats::add(&self.stats.hub_subscribers, 1);
        Some(Attached {
            hubs: self.clone(),
            hub: hub.clone(),
            sink,
        })
    }

    /// A hub's life: wait for messages of its filter, read them, offer them to every
    /// subscriber; stop once it has none.
    async fn run(self: Arc<Self>, hub: Arc<Hub>) {
        let filters = [hub.filter.as_ref()];
        loop {
            let after = hub.lock().read;
            tokio::select! {
                woken = self.engine.wait_filters(&filters, after, Duration::MAX) => {
                    if let Err(e) = woken {
                        tracing::debug!(error = %e, "an MQTT hub's wait failed");
                        self.stop(&hub, true);
                        return;
                    }
                }
                () = hub.emptied.notified() => {}
            }
            if self.stop(&hub, false) {
                return;
            }
            // Everything there is, a batch at a time.
            loop {
                let applied = self.engine.applied_index();
                let after = hub.lock().read;
                let read = match self.engine.read_filters(&filters, after, READ_BATCH) {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::debug!(error = %e, "an MQTT hub's read failed");
                        self.stop(&hub, true);
                        return;
                    }
                };
                let full = read.len() >= READ_BATCH;
                // A read that is not full went through every entry applied before it.
                let through = read
                    .last()
                    .map_or(after, |m| m.message.log_index)
                    .max(if full { 0 } else { applied });
                self.offer(&hub, &read, through);
                if !full {
                    break;
                }
            }
        }
    }

    /// Stops `hub` if it has no subscribers left, or (`all`) letting go of every one it has:
    /// whether it stopped. A connection attaching now starts a new hub.
    fn stop(&self, hub: &Arc<Hub>, all: bool) -> bool {
        let mut hubs = self.lock();
        let mut st = hub.lock();
        if !all && !st.sinks.is_empty() {
            return false;
        }
        let read = st.read;
        for sink in st.sinks.drain(..) {
            sink.release(read);
            self.left(false);
        }
        if hubs.get(&hub.filter).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(&hub.filter);
        }
        true
    }

    /// Offers the messages of `read` (in log order) to every subscriber that lacks them: one
    /// write per subscriber for the whole read, taken or refused a log entry at a time. The
    /// hub has then read `through`.
    fn offer(&self, hub: &Hub, read: &[TopicMessage], through: u64) {
        let now = message_properties::now_ms();
        let (mut packets, mut bytes, mut let_go) = (0u64, 0u64, 0u64);
        let mut v311: Option<Rendered> = None;
        let mut v5: Option<Rendered> = None;
        let mut st = hub.lock();
        st.sinks.retain(|sink| {
            let run = match sink.protocol {
                Protocol::V5 => v5.get_or_insert_with(|| render(read, Protocol::V5, now)),
                p => v311.get_or_insert_with(|| render(read, p, now)),
            };
            // The entries it lacks.
            let first = run.indexes.partition_point(|i| *i <= sink.from);
            if first == run.indexes.len() {
                return true;
            }
            let start = first.checked_sub(1).map_or(0, |k| run.ends[k]);
            let taken = match sink.outbox.upgrade() {
                // One the client could not take goes by cursor (which passes over it).
                Some(_) if run.largest > sink.max_packet as usize => 0,
                Some(out) => out
                    .offer(&run.bytes, start, &run.ends[first..])
                    .unwrap_or(0),
                None => 0,
            };
            let last = first + taken;
            packets += run.counts[last] - run.counts[first];
            let end = last.checked_sub(1).map_or(start, |k| run.ends[k]);
            bytes += (end - start) as u64;
            match run.indexes.get(last) {
                None => true,
                Some(next) => {
                    sink.release(next - 1);
                    let_go += 1;
                    false
                }
            }
        });
        if let Some(m) = read.last() {
            st.last = st.last.max(m.message.log_index);
        }
        st.read = st.read.max(through);
        let emptied = st.sinks.is_empty();
        drop(st);
        if emptied {
            hub.emptied.notify_one();
        }
        for _ in 0..let_go {
            self.left(true);
        }
        stats::add(&self.stats.publish_sent, packets);
        stats::add(&self.stats.packets_sent, packets);
        stats::add(&self.stats.bytes_sent, bytes);
    }
}

impl Hubs {
    /// A subscriber left a hub (`let_go`: the hub let go of it).
    fn left(&self, let_go: bool) {
        self.stats.hub_subscribers.fetch_sub(1, Ordering::Relaxed);
        if let_go {
            stats::add(&self.stats.hub_let_go, 1);
        }
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Sink {
    /// The hub stops writing to it: it has every message up to `position`. Under the hub's
    /// lock.
    fn release(&self, position: u64) {
        self.position
            .store(position.max(self.from), Ordering::Release);
        self.attached.store(false, Ordering::Release);
        self.let_go.notify_one();
    }
}

/// Says when the hub lets go of a connection (then [`Attached::detach`]).
pub(crate) struct LetGo(Arc<Sink>);

impl LetGo {
    pub(crate) async fn let_go(&self) {
        self.0.let_go.notified().await;
    }
}

impl Attached {
    pub(crate) fn signal(&self) -> LetGo {
        LetGo(self.sink.clone())
    }

    /// Leaves the hub: the log index up to which the connection has every message of its
    /// filter. The hub writes nothing more to it once this returns.
    pub(crate) fn detach(self) -> u64 {
        self.leave()
    }

    /// [`Attached::detach`], also when dropped (a connection's task that ended otherwise).
    fn leave(&self) -> u64 {
        let mut st = self.hub.lock();
        if self.sink.attached.load(Ordering::Acquire) {
            st.sinks.retain(|s| !Arc::ptr_eq(s, &self.sink));
            let read = st.read;
            self.sink.release(read);
            self.hubs.left(false);
            if st.sinks.is_empty() {
                self.hub.emptied.notify_one();
            }
        }
        self.sink.position.load(Ordering::Acquire)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.leave();
    }
}

/// A read's PUBLISH packets for one protocol version, as every subscriber gets them: one
/// buffer, with where each log entry's packets end.
struct Rendered {
    bytes: BytesMut,
    /// Per log entry: its index, the end of its packets in `bytes`.
    indexes: Vec<u64>,
    ends: Vec<usize>,
    /// Packets before each entry (and after the last): `counts[k]` of the first `k`.
    counts: Vec<u64>,
    /// The largest packet's length.
    largest: usize,
}

/// Encodes the messages of `read` as QoS 0 PUBLISH packets (an expired one is passed over, as
/// the cursor's reads do).
fn render(read: &[TopicMessage], protocol: Protocol, now: u64) -> Rendered {
    let mut out = Rendered {
        bytes: BytesMut::new(),
        indexes: Vec::new(),
        ends: Vec::new(),
        counts: vec![0],
        largest: 0,
    };
    let mut count = 0;
    for entry in read.chunk_by(|a, b| a.message.log_index == b.message.log_index) {
        for m in entry {
            let stored = &m.message.properties;
            if message_properties::expired(stored, m.message.timestamp_ms, now) {
                continue;
            }
            let publish = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: String::from_utf8_lossy(&m.topic).into_owned(),
                packet_id: 0,
                properties: message_properties::outgoing(
                    stored,
                    m.message.timestamp_ms,
                    now,
                    protocol == Protocol::V5,
                ),
                payload: payload_of(&m.message.fields),
            };
            let before = out.bytes.len();
            match encode(
                &Packet::Publish(publish),
                protocol,
                u32::MAX,
                &mut out.bytes,
            ) {
                Ok(()) => {
                    count += 1;
                    out.largest = out.largest.max(out.bytes.len() - before);
                }
                Err(e) => tracing::debug!(error = %e, "an MQTT message not sent"),
            }
        }
        out.indexes.push(entry[0].message.log_index);
        out.ends.push(out.bytes.len());
        out.counts.push(count);
    }
    out
}
