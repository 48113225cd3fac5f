//! The WebSocket push protocol (`GET /ws`, docs/protocol-mapping.md "HTTP"): JSON text frames.
//! A client subscribes to a topic, several topics or an MQTT filter — from the latest message,
//! the earliest, or a cursor, or as a member of a consumer group (`groups.rs`) — publishes
//! (acknowledged with the message's ID and cursor), acknowledges group messages, unsubscribes
//! and pings. Each subscription is a loop of the long-poll's reads and waits (`poll.rs`); one
//! of a single topic that reaches the head is written by the topic's hub (`hub.rs`) until the
//! hub lets go of it. Either way a client that reconnects with its last cursor gets every later
//! message once, in order.
//!
//! Every frame out goes through the connection's outbox (`outbox.rs`); tungstenite only reads.
//! A client that does not read gets at most the outbox's queue; when it stays full, the socket
//! taking nothing, for `SLOW_AFTER` its connection is closed with code 4008 and it resumes from
//! its last cursor (a client catching up fast is only held back: its reads wait for room).
//! Owns the upgrade, the client frames and the subscriptions' tasks; what is read and stored
//! is the engine's, through the client's principal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use manifold_core::engine::{AppendRequest, Client};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};

use crate::groups::{self, Membership};
use crate::hub::{Hubs, Sink};
use crate::outbox::{Outbox, SocketIo, encode_text};
use crate::poll::{Follow, Poll};
use crate::rest::{Failure, Rest, client, cursor};

/// The socket's read buffer to start with (tungstenite's default, 128 KiB, is zero-filled at
/// the first read: 128 KiB of RSS per connection). Client frames are small; a larger one grows
/// it.
const READ_BUFFER: usize = 4096;
/// A client whose queue stays full this long, the socket taking nothing (it does not read),
/// counts as too slow.
const SLOW_AFTER: Duration = Duration::from_secs(5);
/// The close code of a client too slow to take its messages (it resumes from its cursor).
pub const SLOW_CONSUMER: u16 = 4008;
const SLOW: (u16, &str) = (SLOW_CONSUMER, "too slow: reconnect from your last cursor");
/// A live tail (a subscription from `latest`) whose next message is older than this skips to
/// the head, as an MQTT clean session does (`lag_limit_ms` in the subscribe; 0: never).
const DEFAULT_LAG_LIMIT: Duration = Duration::from_secs(60);
/// How long a closing connection waits for its last frames (its close frame among them) to
/// go out: a slow consumer that reads again within it gets what was queued, then the close;
/// one that does not is dropped.
const LINGER: Duration = Duration::from_secs(30);

/// `GET /ws`: upgrades (the principal is the request's: a token in the `Authorization` header,
/// the `access_token` query parameter or the `manifold_token` cookie, or `default`). The
/// handshake is done here rather than by axum's `WebSocketUpgrade`, which keeps the socket to
/// itself: the topic hubs write to it directly (`outbox.rs`).
pub(crate) async fn ws(
    State(Rest {
        engine,
        stopped,
        hubs,
    }): State<Rest>,
    mut request: Request,
) -> Result<Response, Failure> {
    let client = client(&engine, request.headers(), request.uri().query())?;
    let accept = accept_key(request.headers())?;
    let upgrading = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            Failure(
                StatusCode::UPGRADE_REQUIRED,
                "bad_request",
                "this connection cannot be upgraded".into(),
            )
        })?;
    // A client frame at most as large as the largest message and some room for its JSON (not
    // tungstenite's 64 MiB); a larger one closes the connection with 1009.
    let max = engine.max_message_bytes().saturating_add(64 * 1024);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrading.await else {
            return;
        };
        match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(upgraded) {
            Ok(parts) => {
                // What the client sent after its upgrade request, copied: the buffer it is in
                // is the HTTP connection's (8 KiB or more), not to be kept with the socket.
                let early = parts.read_buf.to_vec();
                let stream = parts.io.into_inner();
                drop(parts.read_buf);
                run(stream, early, max, client, stopped, hubs).await
            }
            Err(_) => tracing::warn!("a WebSocket upgrade not over a TCP stream: closed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// Checks an upgrade request (RFC 6455 4.2.1, as axum does); its `Sec-WebSocket-Accept`.
fn accept_key(headers: &HeaderMap) -> Result<String, Failure> {
    let bad = |m: &str| Failure(StatusCode::BAD_REQUEST, "bad_request", m.into());
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has(header::CONNECTION, "upgrade") {
        return Err(bad("Connection header did not include 'upgrade'"));
    }
    if !has(header::UPGRADE, "websocket") {
        return Err(bad("`Upgrade` header did not include 'websocket'"));
    }
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(bad("`Sec-WebSocket-Version` header did not include '13'"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("`Sec-WebSocket-Key` header missing"))?;
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// A subscription of the connection: its task, and the sink a hub may write it through.
struct Subscription {
    task: JoinHandle<()>,
    sink: Arc<Sink>,
}

/// The connection: client frames in (through tungstenite), frames out through the outbox.
async fn run(
    stream: TcpStream,
    early: Vec<u8>,
    max: usize,
    client: Client,
    stopped: watch::Receiver<bool>,
    hubs: Arc<Hubs>,
) {
    let (outbox, flusher) = Outbox::new(Arc::new(stream));
    let flusher = tokio::spawn(flusher);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let io = SocketIo {
        outbox: outbox.clone(),
    };
    let mut frames_in =
        WebSocketStream::from_partially_read(io, early, Role::Server, Some(config)).await;
    let mut subs: HashMap<String, Subscription> = HashMap::new();
    let mut shutdown = stopped.clone();
    let mut done = outbox.done();
    loop {
        let frame = tokio::select! {
            f = frames_in.next() => f,
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                outbox.close(1001, "server shutting down");
                break;
            }
            // Closing (a slow consumer's close queued) or the socket failed.
            _ = done.wait_for(|d| *d) => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                let answer = error(None, "bad_request", "frames are JSON text");
                if !answer_with(&outbox, &answer).await {
                    break;
                }
                continue;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                outbox.close(1009, "frame too large");
                break;
            }
            Some(Ok(Message::Close(_))) => {
                // tungstenite queued its answer; this writes it (through the outbox).
                let _ = frames_in.flush().await;
                break;
            }
            Some(Err(_)) | None => break,
        };
        let follows = (&stopped, &hubs);
        // (Boxed: a connection holds the state of a frame's handling only while it runs.)
        let answer = Box::pin(handle(&text, &client, &outbox, follows, &mut subs)).await;
        if let Some(answer) = answer
            && !answer_with(&outbox, &answer).await
        {
            break;
        }
    }
    for (_, sub) in subs {
        sub.sink.cancel();
        sub.task.abort();
    }
    outbox.drained(LINGER).await;
    outbox.end();
    let _ = flusher.await;
}

/// Sends an answer frame; whether the connection takes it.
async fn answer_with(outbox: &Outbox, answer: &Value) -> bool {
    let text = answer.to_string();
    outbox.send(&[text.as_bytes()], SLOW_AFTER, SLOW).await
}

fn error(reference: Option<&Value>, error: &str, message: &str) -> Value {
    json!({"type": "error", "ref": reference, "error": error, "message": message})
}

/// One client frame; the answer to send (`None`: already sent, as a subscribe's is, before
/// its first message).
async fn handle(
    text: &str,
    client: &Client,
    outbox: &Arc<Outbox>,
    (stopped, hubs): (&watch::Receiver<bool>, &Arc<Hubs>),
    subs: &mut HashMap<String, Subscription>,
) -> Option<Value> {
    let bad = |reference: Option<&Value>, message: &str| error(reference, "bad_request", message);
    let Ok(req) = serde_json::from_str::<Value>(text) else {
        return Some(bad(None, "a frame is a JSON object"));
    };
    let reference = req.get("ref");
    Some(match req["type"].as_str() {
        Some("ping") => json!({"type": "pong", "ref": reference}),
        Some("subscribe") => {
            let Some(id) = req["id"].as_str().map(String::from) else {
                return Some(bad(reference, "subscribe needs an id"));
            };
            if subs.contains_key(&id) {
                return Some(bad(reference, "a subscription with this id exists"));
            }
            let poll = match subscription(client, &req) {
                Ok(p) => p,
                Err(Failure(_, e, m)) => return Some(error(reference, e, &m)),
            };
            // Only a live tail passes messages over: a subscription from a cursor or the
            // earliest, or a group member's, gets every one.
            let live =
                poll.member.is_none() && matches!(req["from"].as_str(), None | Some("latest"));
            let lag_limit = req["lag_limit_ms"]
                .as_u64()
                .map_or(DEFAULT_LAG_LIMIT, Duration::from_millis);
            let lag_limit = (live && !lag_limit.is_zero()).then_some(lag_limit);
            // The answer goes ahead of the subscription's first message.
            let answer = json!({"type": "subscribed", "id": id, "ref": reference});
            if !answer_with(outbox, &answer).await {
                return None;
            }
            // Each message's frame: `{"type":"message","sub":ID,` + the message's fields.
            let sink = Sink::new(
                outbox,
                format!(r#"{{"type":"message","sub":{},"#, json!(id)),
            );
            let task = tokio::spawn(follow(
                client.clone(),
                poll,
                lag_limit,
                id.clone(),
                sink.clone(),
                (stopped.clone(), hubs.clone()),
            ));
            subs.insert(id, Subscription { task, sink });
            return None;
        }
        Some("unsubscribe") => {
            let id = req["id"].as_str().unwrap_or_default();
            match subs.remove(id) {
                Some(sub) => {
                    // No hub writes for it after `cancel`; its own task is gone once awaited
                    // (a poll under way on another thread finishes first).
                    sub.sink.cancel();
                    sub.task.abort();
                    let _ = sub.task.await;
                    json!({"type": "unsubscribed", "id": id, "ref": reference})
                }
                None => bad(reference, "no subscription with this id"),
            }
        }
        Some("ack") => match ack(client, &req).await {
            Ok(acked) => json!({"type": "acked", "ref": reference, "acked": acked}),
            Err(Failure(_, e, m)) => error(reference, e, &m),
        },
        Some("publish") => match publish(client, &req).await {
            Ok((id, cursor)) => {
                json!({"type": "published", "ref": reference, "id": id, "cursor": cursor})
            }
            Err(Failure(_, e, m)) => error(reference, e, &m),
        },
        _ => bad(
            reference,
            "type is subscribe, unsubscribe, publish, ack or ping",
        ),
    })
}

/// A subscribe frame's reads: `topic`, `topics` or `filter`, and `from`: `latest` (default),
/// `earliest` or a cursor. With `group` and `consumer`, a group member's reads (`from`:
/// where a group it creates starts; `claim_idle_ms`: when an unacknowledged message goes
/// again; `noack`).
fn subscription(client: &Client, req: &Value) -> Result<Poll, Failure> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut topics = strings(&req["topics"]);
    if let Some(t) = req["topic"].as_str() {
        topics.push(t.to_string());
    }
    let filter = req["filter"].as_str().map(String::from);
    let name = |k: &str| req[k].as_str().map(String::from);
    if let Some(mut member) = Membership::new(name("group"), name("consumer"))? {
        member.earliest = match req["from"].as_str().unwrap_or("latest") {
            "latest" => false,
            "earliest" => true,
            _ => {
                return Err(Failure(
                    axum::http::StatusCode::BAD_REQUEST,
                    "bad_request",
                    "a group subscription is from latest or earliest (the group keeps its place)"
                        .into(),
                ));
            }
        };
        if let Some(ms) = req["claim_idle_ms"].as_u64() {
            member.claim_idle = Duration::from_millis(ms);
        }
        member.noack = req["noack"].as_bool().unwrap_or(false);
        let mut poll = Poll::new(topics, filter, None)?;
        poll.member = Some(member);
        return Ok(poll);
    }
    let after = match req["from"].as_str().unwrap_or("latest") {
        "latest" => None,
        "earliest" => Some(match (&topics[..], &filter) {
            // Before the topic's first message, in its incarnation now (none yet: its first).
            ([topic], None) => {
                let incarnation = client
                    .topic_head(0, topic.as_bytes())?
                    .map_or(0, |h| h.incarnation);
                cursor(manifold_core::store::StreamId::new(0, 0), incarnation)
            }
            _ => "0.0".to_string(),
        }),
        c => {
            // Checked now: a bad cursor is the subscribe's answer.
            match (&topics[..], &filter) {
                ([_], None) => drop(crate::rest::parse_cursor(c)?),
                _ => drop(crate::poll::position(c)?),
            }
            Some(c.to_string())
        }
    };
    Poll::new(topics, filter, after)
}

/// A subscription: reads after its cursor and sends each message, until the connection ends.
/// A subscription of one topic that reaches the head attaches to the topic's hub, which
/// writes it each new message from then on; when the hub lets go of it (its queue was full,
/// the topic was created again, the hub stopped), it reads by cursor again. With a lag limit,
/// a batch read whose first message is older than it is passed over, the reads go on from the
/// head, and the client is told `{"type": "skipped", "sub", "cursor"}`.
async fn follow(
    client: Client,
    poll: Poll,
    lag_limit: Option<Duration>,
    id: String,
    sink: Arc<Sink>,
    (stopped, hubs): (watch::Receiver<bool>, Arc<Hubs>),
) {
    let topic = poll.topic().map(String::from);
    let mut reads = Follow::new(client.clone(), poll, stopped, None);
    let Some(outbox) = sink.outbox() else {
        return;
    };
    let mut frames = Vec::new();
    // Refused by the hub: the next read waits for what comes.
    let mut wait = false;
    loop {
        // A subscription the hub may write to looks without waiting first. (The reads are
        // boxed: a subscription the hub writes to holds no read's state.)
        let batch = match &topic {
            Some(_) if !std::mem::take(&mut wait) => {
                Box::pin(reads.next_until(tokio::time::Instant::now())).await
            }
            _ => Box::pin(reads.next()).await,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(Failure(_, e, m)) => {
                let _ = answer_with(&outbox, &error(None, e, &m)).await;
                return;
            }
        };
        if let Some(topic) = &topic
            && batch.messages.is_empty()
            && !batch.reset
            && !reads.stopped()
        {
            // At the head: the hub writes from here if it has everything after the cursor
            // (none: the topic did not exist — the hub may pass it from its first message).
            let at = reads.cursor();
            let attached = hubs.attach(&client, topic, &sink, at);
            if attached {
                sink.released().await;
            }
            reads.set_cursor(sink.last());
            wait = !attached;
            continue;
        }
        let oldest = batch.messages.first().map(|m| m.timestamp_ms);
        if let (Some(limit), Some(oldest)) = (lag_limit, oldest)
            && now_ms().saturating_sub(oldest) > limit.as_millis() as u64
        {
            let frame = match reads.skip_to_head() {
                Ok(cursor) => json!({"type": "skipped", "sub": id, "cursor": cursor}),
                Err(Failure(_, e, m)) => error(None, e, &m),
            };
            if !answer_with(&outbox, &frame).await {
                return;
            }
            continue;
        }
        if batch.reset && !answer_with(&outbox, &json!({"type": "reset", "sub": id})).await {
            return;
        }
        // The batch's frames written together: each message's JSON as rendered once for every
        // reader, after the frame's own fields.
        frames.clear();
        for m in &batch.messages {
            encode_text(
                &mut frames,
                &[sink.head().as_bytes(), m.fields().as_bytes()],
            );
        }
        if !frames.is_empty() && !outbox.send_encoded(&frames, SLOW_AFTER, SLOW).await {
            return;
        }
        if frames.capacity() > 64 * 1024 {
            frames = Vec::new();
        }
        if reads.stopped() {
            return;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An ack frame: `group`, `ids` (the messages' cursors) and `topic` (a stream group) or
/// `filter` (a filter group). How many were pending.
async fn ack(client: &Client, req: &Value) -> Result<u64, Failure> {
    let bad = |m: &str| Failure(axum::http::StatusCode::BAD_REQUEST, "bad_request", m.into());
    let group = req["group"]
        .as_str()
        .ok_or_else(|| bad("ack needs a group"))?;
    let ids: Vec<&str> = req["ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if ids.is_empty() {
        return Err(bad("ack needs ids: the messages' cursors"));
    }
    match (req["topic"].as_str(), req["filter"].as_str()) {
        (Some(topic), None) => {
            let ids = ids
                .iter()
                .map(|c| groups::stream_id(c))
                .collect::<Result<Vec<_>, _>>()?;
            groups::ack_topic(client, crate::rest::topic_of(topic)?, group, ids).await
        }
        (None, Some(filter)) => {
            let positions = ids
                .iter()
                .map(|c| crate::poll::position(c))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(client
                .filter_group_ack(
                    Bytes::copy_from_slice(group.as_bytes()),
                    Bytes::copy_from_slice(filter.as_bytes()),
                    positions,
                )
                .await?)
        }
        _ => Err(bad("ack needs a topic or a filter")),
    }
}

/// A publish frame: `topic`, `payload` (a string) or `fields` (an object of strings), and an
/// optional `key`. The message's ID and cursor.
async fn publish(client: &Client, req: &Value) -> Result<(String, String), Failure> {
    let bad = |m: &str| Failure(axum::http::StatusCode::BAD_REQUEST, "bad_request", m.into());
    let topic = req["topic"]
        .as_str()
        .ok_or_else(|| bad("publish needs a topic"))?;
    let key = crate::rest::topic_of(topic)?;
    let fields: Vec<(Bytes, Bytes)> = match (&req["payload"], &req["fields"]) {
        (Value::String(p), Value::Null) => vec![(
            Bytes::from_static(b"payload"),
            Bytes::copy_from_slice(p.as_bytes()),
        )],
        (Value::Null, Value::Object(f)) if !f.is_empty() => f
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().map_or_else(|| v.to_string(), String::from);
                (
                    Bytes::copy_from_slice(k.as_bytes()),
                    Bytes::from(v.into_bytes()),
                )
            })
            .collect(),
        _ => return Err(bad("publish needs a payload string or a fields object")),
    };
    let mut append = AppendRequest::new(0, key.clone(), fields);
    if let Some(k) = req["key"].as_str() {
        append.message_key = Bytes::copy_from_slice(k.as_bytes());
    }
    let id = client
        .append(append)
        .await?
        .ok_or_else(|| bad("nothing stored"))?;
    let incarnation = client.topic_head(0, &key)?.map_or(0, |h| h.incarnation);
    Ok((id.to_string(), cursor(id, incarnation)))
}
