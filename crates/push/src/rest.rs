//! REST over the log (docs/protocol-mapping.md, "HTTP"): publish a message
//! (`POST /topics/{topic}`), read a topic's history from a cursor (`GET
//! /topics/{topic}/messages`) and list topics (`GET /topics?match=FILTER`). A topic is one
//! percent-encoded path segment (`/topics/sensors%2Fa`). Every answer is JSON, errors too
//! (`{"error", "message"}` with the status that says what went wrong).
//!
//! Owns the HTTP shapes only: what is stored and read is the engine's, through the requesting
//! principal's `Client`; it never touches the log otherwise.

use std::ops::Bound;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use manifold_core::engine::{
    AppendRequest, Client, Engine, EngineError, GroupError, Message, topic_filter,
};
use manifold_core::store::StreamId;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

/// Messages a history read returns at most (and by default).
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

/// What the REST handlers share: the engine, and the listener's shutdown (a waiting poll
/// answers at once when it comes, so shutdown does not wait out its timeout).
#[derive(Clone)]
pub(crate) struct Rest {
    pub(crate) engine: Arc<Engine>,
    pub(crate) stopped: watch::Receiver<bool>,
    /// The live tails SSE and WebSocket followers of a topic share (`hub.rs`).
    pub(crate) hubs: Arc<crate::hub::Hubs>,
}

/// The REST routes; `stopped` turns true when the listener shuts down.
pub fn routes(engine: Arc<Engine>, stopped: watch::Receiver<bool>) -> Router {
    // A body as large as the largest message (a larger one is refused with 413).
    let body_limit = engine.max_message_bytes().saturating_add(64 * 1024);
    Router::new()
        .route("/topics", get(list))
        .route(
            "/topics/{topic}",
            post(publish).layer(axum::extract::DefaultBodyLimit::max(body_limit)),
        )
        .route("/topics/{topic}/messages", get(history))
        .route("/topics/{topic}/groups", get(crate::groups::list))
        .route(
            "/topics/{topic}/groups/{group}/ack",
            post(crate::groups::ack),
        )
        .route("/groups/{group}/ack", post(crate::groups::ack_filter))
        .route("/groups", get(crate::groups::all))
        .route("/mqtt/clients", get(crate::clients::list))
        .route("/poll", get(crate::poll::poll))
        .route("/sse", get(crate::sse::sse))
        .route("/ws", get(crate::ws::ws))
        .with_state(Rest {
            engine,
            hubs: crate::hub::Hubs::new(stopped.clone()),
            stopped,
        })
}

/// A JSON error answer.
pub(crate) struct Failure(
    pub(crate) StatusCode,
    pub(crate) &'static str,
    pub(crate) String,
);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let Failure(status, error, message) = self;
        (
            status,
            axum::Json(json!({"error": error, "message": message})),
        )
            .into_response()
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Failure {
        let (status, error) = match &e {
            EngineError::NoPermission { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            EngineError::BadCredentials => (StatusCode::UNAUTHORIZED, "unauthorized"),
            EngineError::BadTopic(_) => (StatusCode::BAD_REQUEST, "bad_topic"),
            EngineError::Group(GroupError::NoGroup) => (StatusCode::NOT_FOUND, "unknown_group"),
            EngineError::Group(GroupError::NoStream) => (StatusCode::NOT_FOUND, "unknown_topic"),
            EngineError::Group(GroupError::PendingLimit) => {
                (StatusCode::TOO_MANY_REQUESTS, "pending_limit")
            }
            EngineError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            EngineError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            EngineError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Failure(status, error, e.to_string())
    }
}

/// The requesting principal, from a token `NAME:SECRET`: `Authorization: Bearer TOKEN`, else
/// the query's `access_token=TOKEN` or the cookie `manifold_token=TOKEN` (browsers'
/// `EventSource` and `WebSocket` cannot set headers); without one, the unauthenticated
/// principal (`default`).
pub(crate) fn client(
    engine: &Arc<Engine>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Client, Failure> {
    let unauthorized = |m: &str| Failure(StatusCode::UNAUTHORIZED, "unauthorized", m.into());
    let token: Option<String> = match headers.get(header::AUTHORIZATION) {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| unauthorized("Authorization must be Bearer NAME:SECRET"))?
                .to_string(),
        ),
        None => form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
            .or_else(|| {
                headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|c| c.trim().strip_prefix("manifold_token="))
                    .map(String::from)
            }),
    };
    let principal = match token {
        Some(token) => {
            let (name, secret) = token.split_once(':').unwrap_or((&token, ""));
            engine.authenticate(name.as_bytes(), secret.as_bytes())?
        }
        None => engine.anonymous()?,
    };
    Ok(Client::new(engine.clone(), principal))
}

/// A topic from the URL: any non-empty key, as over RESP (one with MQTT wildcards or `#` is
/// a stream MQTT clients cannot publish to, but may read with a filter that matches it).
pub(crate) fn topic_of(topic: &str) -> Result<Bytes, Failure> {
    if topic.is_empty() {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "bad_topic",
            "a topic is not empty".into(),
        ));
    }
    Ok(Bytes::copy_from_slice(topic.as_bytes()))
}

/// `POST /topics/{topic}`: the body is stored exactly as field `payload`, with its content
/// type as property `content-type` (a form body becomes fields instead); `X-Message-Key` goes
/// to the IndexFile; `Idempotency-Key` makes a repeat answer the first one instead of storing
/// again. 201 `{id, cursor}` once committed.
async fn publish(
    State(Rest { engine, .. }): State<Rest>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let client = client(&engine, &headers, query.as_deref())?;
    let key = topic_of(&topic)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| Bytes::copy_from_slice(v.as_bytes()));
    let form = content_type.as_ref().is_some_and(|t| {
        t.split(|b| *b == b';')
            .next()
            .is_some_and(|m| m.trim_ascii() == b"application/x-www-form-urlencoded")
    });
    let mut req = if form {
        let fields: Vec<(Bytes, Bytes)> = form_urlencoded::parse(&body)
            .map(|(k, v)| {
                (
                    Bytes::from(k.into_owned().into_bytes()),
                    Bytes::from(v.into_owned().into_bytes()),
                )
            })
            .collect();
        if fields.is_empty() {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                "no_fields",
                "a form body needs at least one field".into(),
            ));
        }
        AppendRequest::new(0, key.clone(), fields)
    } else {
        let mut req =
            AppendRequest::new(0, key.clone(), vec![(Bytes::from_static(b"payload"), body)]);
        if let Some(t) = content_type {
            req.properties
                .push((Bytes::from_static(b"content-type"), t));
        }
        req
    };
    if let Some(k) = headers.get("x-message-key") {
        req.message_key = Bytes::copy_from_slice(k.as_bytes());
    }
    if let Some(k) = headers.get("idempotency-key") {
        let mut producer = b"http:".to_vec();
        producer.extend_from_slice(k.as_bytes());
        req.producer = Some((Bytes::from(producer), 0));
    }
    let id = client.append(req).await?.ok_or_else(|| {
        Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the append stored nothing".into(),
        )
    })?;
    let incarnation = engine.topic_head(0, &key).map_or(0, |h| h.incarnation);
    let body = json!({"id": id.to_string(), "cursor": cursor(id, incarnation)});
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    after: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    reverse: bool,
    /// Only messages with this message key (the IndexFile's), stored from `from` to `to`
    /// (ms since the epoch, inclusive), newest first.
    key: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
}

/// `GET /topics/{topic}/messages?after=CURSOR&limit=N[&reverse=true]`: the messages after the
/// cursor (before it, newest first, with `reverse`), at most `limit` (100; at most 1000), and
/// `next`, the cursor to go on from. With `key=K[&from=MS][&to=MS]`: the messages with that
/// message key stored in that time range, newest first, through the IndexFile. A cursor of an earlier incarnation of the topic (deleted
/// and created again) reads from the start and says `"reset": true`.
async fn history(
    State(Rest { engine, .. }): State<Rest>,
    Path(topic): Path<String>,
    Query(q): Query<HistoryQuery>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let client = client(&engine, &headers, query.as_deref())?;
    let key = topic_of(&topic)?;
    let info = client
        .topic_head(0, &key)?
        .ok_or_else(|| unknown_topic(&topic))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    if let Some(message_key) = &q.key {
        let from = q.from.unwrap_or(0);
        let to = q.to.unwrap_or(u64::MAX);
        let found = client.find_by_key(0, &key, message_key.as_bytes(), from, to, limit)?;
        let messages: Vec<Value> = found
            .iter()
            .map(|m| message_json(&topic, m, cursor(m.id, info.incarnation)))
            .collect();
        return Ok(
            axum::Json(json!({"topic": topic, "key": message_key, "messages": messages}))
                .into_response(),
        );
    }
    let after = q.after.as_deref().map(parse_cursor).transpose()?;
    let reset = after.is_some_and(|(_, incarnation)| incarnation != info.incarnation);
    let from = after.filter(|_| !reset).map(|(id, _)| id);
    let (start, end) = match (q.reverse, from) {
        (false, Some(id)) => (Bound::Excluded(id), Bound::Unbounded),
        (true, Some(id)) => (Bound::Unbounded, Bound::Excluded(id)),
        (_, None) => (Bound::Unbounded, Bound::Unbounded),
    };
    let messages = client.read_range(0, &key, start, end, Some(limit), q.reverse)?;
    let next = match (messages.last(), from) {
        (Some(m), _) => Some(cursor(m.id, info.incarnation)),
        (None, Some(id)) => Some(cursor(id, info.incarnation)),
        (None, None) => None,
    };
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| message_json(&topic, m, cursor(m.id, info.incarnation)))
        .collect();
    Ok(axum::Json(json!({
        "topic": topic,
        "messages": messages,
        "next": next,
        "reset": reset,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(rename = "match")]
    filter: Option<String>,
}

/// `GET /topics?match=FILTER`: the topics an MQTT filter matches (`#` by default: every topic
/// not starting with `$`), by name, each with its length and last ID.
async fn list(
    State(Rest { engine, .. }): State<Rest>,
    Query(q): Query<ListQuery>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let client = client(&engine, &headers, query.as_deref())?;
    let filter = q.filter.unwrap_or_else(|| "#".into());
    topic_filter::check_filter(filter.as_bytes()).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            "bad_filter",
            format!("invalid filter {filter:?}: {e}"),
        )
    })?;
    let mut keys = client.topics(0, b"*");
    keys.sort();
    let mut topics = Vec::new();
    for key in keys {
        if !topic_filter::filter_matches(filter.as_bytes(), &key) {
            continue;
        }
        if let Some(head) = client.topic_head(0, &key)? {
            topics.push(json!({
                "topic": text(&key),
                "length": head.length,
                "last_id": head.last_id.to_string(),
            }));
        }
    }
    Ok(axum::Json(json!({ "topics": topics })).into_response())
}

/// The answer about a topic that does not exist (404 `unknown_topic`).
pub(crate) fn unknown_topic(topic: &str) -> Failure {
    Failure(
        StatusCode::NOT_FOUND,
        "unknown_topic",
        format!("no topic {topic:?}"),
    )
}

/// A message's cursor: `ID@INCARNATION`.
pub(crate) fn cursor(id: StreamId, incarnation: u64) -> String {
    format!("{id}@{incarnation}")
}

/// What [`cursor`] wrote.
pub(crate) fn parse_cursor(s: &str) -> Result<(StreamId, u64), Failure> {
    let bad = || {
        Failure(
            StatusCode::BAD_REQUEST,
            "bad_cursor",
            format!("{s:?} is not a cursor (ID@INCARNATION, as a message's \"cursor\")"),
        )
    };
    let (id, incarnation) = s.split_once('@').ok_or_else(bad)?;
    let (ms, seq) = id.split_once('-').ok_or_else(bad)?;
    Ok((
        StreamId::new(
            ms.parse().map_err(|_| bad())?,
            seq.parse().map_err(|_| bad())?,
        ),
        incarnation.parse().map_err(|_| bad())?,
    ))
}

/// One message: `{topic, id, cursor, fields | payload, properties}`. A message whose only
/// field is `payload` (an MQTT or HTTP publish) shows `payload`; any other shows `fields`, an
/// object in order where a repeated name maps to an array of its values.
pub fn message_json(topic: &str, m: &Message, cursor: String) -> Value {
    let mut out = Map::new();
    out.insert("topic".into(), Value::String(topic.into()));
    out.insert("id".into(), Value::String(m.id.to_string()));
    out.insert("cursor".into(), Value::String(cursor));
    match &m.fields[..] {
        [(name, value)] if name.as_ref() == b"payload" => {
            out.insert("payload".into(), text(value));
        }
        fields => {
            out.insert("fields".into(), Value::Object(pairs(fields)));
        }
    }
    out.insert("properties".into(), Value::Object(pairs(&m.properties)));
    if !m.message_key.is_empty() {
        out.insert("key".into(), text(&m.message_key));
    }
    out.insert("timestamp_ms".into(), Value::from(m.timestamp_ms));
    Value::Object(out)
}

/// Pairs as an object; a repeated name maps to an array of its values.
fn pairs(pairs: &[(Bytes, Bytes)]) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in pairs {
        let name = match text(name) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        match out.get_mut(&name) {
            Some(Value::Array(values)) => values.push(text(value)),
            Some(one) => {
                let first = one.take();
                *one = Value::Array(vec![first, text(value)]);
            }
            None => {
                out.insert(name, text(value));
            }
        }
    }
    out
}

/// UTF-8 bytes as a string, any others as `{"base64": "..."}`.
fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.into()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}
