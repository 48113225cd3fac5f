//! Manifold's HTTP listener on `--http-addr`. It carries the web console (`console.rs`, at
//! `/`), the admin routes (`admin.rs`: health, cluster status, metrics, leadership transfer),
//! REST over the log (`rest.rs`: publish, history, topics; `poll.rs`: long-polling; `sse.rs`:
//! Server-Sent Events; `ws.rs`: the WebSocket push protocol; `groups.rs`: consumer groups and
//! acks over them; `hub.rs`: the live tail every follower of a topic at its head shares;
//! `outbox.rs`: a WebSocket connection's outgoing frames; `clients.rs`: the MQTT sessions) and
//! what other front ends hand it (MQTT over WebSocket at `/mqtt`).
//!
//! Owns the HTTP surface only: every answer comes from the engine's public API; nothing here
//! changes the log except through it.

pub mod admin;
mod clients;
mod console;
pub mod cors;
mod groups;
mod hub;
mod outbox;
mod poll;
mod prometheus;
pub mod rest;
mod sse;
pub mod ws;

use std::sync::Arc;

use manifold_core::engine::Engine;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// More of `/metrics`: Prometheus text another part of the node renders (the MQTT broker's
/// counters), appended to the engine's.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// Every route of the HTTP listener.
/// `stopped` turns true when the listener shuts down (waiting polls answer then).
pub fn router(
    engine: Arc<Engine>,
    metrics: Vec<MetricsSource>,
    stopped: watch::Receiver<bool>,
) -> axum::Router {
    admin::routes(engine.clone(), metrics)
        .merge(rest::routes(engine, stopped))
        .merge(console::routes())
}

/// Serves the HTTP listener until `stopped` turns true; requests under way finish first.
/// `more` are routes other front ends serve here (the MQTT broker's `/mqtt` WebSocket);
/// `cors`, the origins browsers' pages may call it from.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    metrics: Vec<MetricsSource>,
    more: axum::Router,
    cors: cors::Cors,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = router(engine, metrics, stopped.clone())
        .merge(more)
        .layer(axum::middleware::from_fn_with_state(cors, cors::layer));
    // TCP_NODELAY: a pushed message goes out at once, not after the client's delayed ACK of
    // the one before (Nagle), as the MQTT and RESP listeners do.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
}
