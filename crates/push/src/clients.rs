//! `GET /mqtt/clients`: the group's MQTT sessions as applied — connected ones first, each with
//! the node holding it, its subscriptions and packets in flight — for the console and scripts.
//! Reads the engine's session state only (the same on every node); never changes it.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::rest::{Failure, Rest, client};

/// Sessions listed at most (and by default).
const MAX_LISTED: usize = 1000;
const DEFAULT_LISTED: usize = 100;

/// `GET /mqtt/clients[?limit=N]`: `{total, connected, clients: [{client_id, connected, node,
/// subscriptions, inflight, expiry_s, disconnected_ms}]}`.
pub(crate) async fn list(
    State(Rest { engine, .. }): State<Rest>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    // Authenticated as every route is (a wrong token is 401).
    client(&engine, &headers, query.as_deref())?;
    let limit = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "limit")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_LISTED)
        .clamp(1, MAX_LISTED);
    let summary = engine.sessions_summary(limit);
    let clients: Vec<Value> = summary
        .sessions
        .iter()
        .map(|s| {
            let subscriptions: Vec<_> = s
                .subscriptions
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            json!({
                "client_id": String::from_utf8_lossy(&s.client),
                "connected": s.connected,
                "node": s.node,
                "subscriptions": subscriptions,
                "inflight": s.inflight,
                "expiry_s": s.expiry_s,
                "disconnected_ms": s.disconnected_ms,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "total": summary.total,
        "connected": summary.connected,
        "clients": clients,
    }))
    .into_response())
}
