//! The broker's node-local counters — connections, packets and bytes in and out — as Mosquitto
//! publishes them under `$SYS/broker/...` and as Prometheus text for `/metrics`. Node-local
//! soft state: never in the log, reset by a restart. It only counts; it never decides
//! anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

/// The counters, shared by every connection of the node.
#[derive(Debug)]
pub struct BrokerStats {
    started: Instant,
    /// Clients connected now (CONNACK 0 sent, connection not ended).
    pub connected: AtomicU64,
    /// Connections accepted (CONNACK 0) since the start.
    pub connections: AtomicU64,
    /// Control packets received / sent.
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    /// PUBLISH packets received / sent.
    pub publish_received: AtomicU64,
    pub publish_sent: AtomicU64,
    /// Bytes read from / written to clients.
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Times a clean session fell behind its lag limit and skipped to the head of the log.
    pub lag_skips: AtomicU64,
    /// Live subscribers whose messages a topic hub writes now (`hub.rs`).
    pub hub_subscribers: AtomicU64,
    /// Times a hub let go of a subscriber whose socket did not keep up.
    pub hub_let_go: AtomicU64,
}

impl Default for BrokerStats {
    fn default() -> Self {
        BrokerStats {
            started: Instant::now(),
            connected: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            packets_received: AtomicU64::new(0),
            packets_sent: AtomicU64::new(0),
            publish_received: AtomicU64::new(0),
            publish_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            lag_skips: AtomicU64::new(0),
            hub_subscribers: AtomicU64::new(0),
            hub_let_go: AtomicU64::new(0),
        }
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl BrokerStats {
    /// Every counter once: its `$SYS` topic, its `/metrics` family, the family's type and help,
    /// its value now.
    fn counters(&self) -> [(&'static str, &'static str, &'static str, &'static str, u64); 11] {
        let c =
            |sys, metric, kind, help, counter: &AtomicU64| (sys, metric, kind, help, get(counter));
        [
            c(
                "clients/connected",
                "manifold_mqtt_clients_connected",
                "gauge",
                "MQTT clients connected to this node.",
                &self.connected,
            ),
            c(
                "clients/total",
                "manifold_mqtt_connections_total",
                "counter",
                "MQTT connections accepted by this node.",
                &self.connections,
            ),
            c(
                "messages/received",
                "manifold_mqtt_packets_received_total",
                "counter",
                "MQTT control packets received.",
                &self.packets_received,
            ),
            c(
                "messages/sent",
                "manifold_mqtt_packets_sent_total",
                "counter",
                "MQTT control packets sent.",
                &self.packets_sent,
            ),
            c(
                "publish/messages/received",
                "manifold_mqtt_publish_received_total",
                "counter",
                "MQTT PUBLISH packets received.",
                &self.publish_received,
            ),
            c(
                "publish/messages/sent",
                "manifold_mqtt_publish_sent_total",
                "counter",
                "MQTT PUBLISH packets sent.",
                &self.publish_sent,
            ),
            c(
                "bytes/received",
                "manifold_mqtt_bytes_received_total",
                "counter",
                "Bytes read from MQTT clients.",
                &self.bytes_received,
            ),
            c(
                "bytes/sent",
                "manifold_mqtt_bytes_sent_total",
                "counter",
                "Bytes written to MQTT clients.",
                &self.bytes_sent,
            ),
            c(
                "clients/lag-skips",
                "manifold_mqtt_lag_skips_total",
                "counter",
                "Times a clean session past its lag limit skipped to the head of the log.",
                &self.lag_skips,
            ),
            c(
                "clients/hub",
                "manifold_mqtt_hub_subscribers",
                "gauge",
                "Live subscribers whose messages a topic hub writes.",
                &self.hub_subscribers,
            ),
            c(
                "clients/hub-let-go",
                "manifold_mqtt_hub_let_go_total",
                "counter",
                "Times a topic hub let go of a subscriber whose socket did not keep up.",
                &self.hub_let_go,
            ),
        ]
    }

    /// The `$SYS` topics and their values now, Mosquitto's names.
    pub fn sys_messages(&self) -> Vec<(String, Bytes)> {
        let mut out = vec![
            (
                "$SYS/broker/version".to_string(),
                Bytes::from(format!("manifold {}", env!("CARGO_PKG_VERSION"))),
            ),
            (
                "$SYS/broker/uptime".to_string(),
                Bytes::from(format!("{} seconds", self.started.elapsed().as_secs())),
            ),
        ];
        for (sys, _, _, _, value) in self.counters() {
            out.push((format!("$SYS/broker/{sys}"), Bytes::from(value.to_string())));
        }
        out
    }

    /// The counters as Prometheus text (families `manifold_mqtt_*`).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (_, name, kind, help, value) in self.counters() {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}
