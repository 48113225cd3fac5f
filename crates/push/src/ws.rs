//! The WebSocket push protocol (`GET /ws`, docs/protocol-mapping.md "HTTP"): JSON text frames.
//! A client subscribes to a topic, several topics or an MQTT filter — from the latest message,
//! the earliest, or a cursor, or as a member of a consumer group (`groups.rs`) — publishes
//! (acknowledged with the message's ID and cursor), acknowledges group messages, unsubscribes
//! and pings. Each subscription is a loop of the long-poll's reads and waits
//! (`poll.rs`), so a client that reconnects with its last cursor gets every later message once,
//! in order.
//!
//! A client that does not read gets at most `OUTBOX` frames queued; when they stay queued for
//! `SLOW_AFTER` its connection is closed with code 4008 and it resumes from its last cursor (a
//! client catching up fast is only held back: its reads wait for room). Owns the frames and the
//! subscriptions' tasks; what is read and stored is the engine's, through the client's
//! principal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use manifold_core::engine::{AppendRequest, Client};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::groups::{self, Membership};
use crate::hub::Hubs;
use crate::poll::{Follow, Poll};
use crate::rest::{Failure, Rest, client, cursor};

/// The socket's read buffer to start with (tungstenite's default, 128 KiB, is zero-filled at
/// the first read: 128 KiB of RSS per connection). Client frames are small; a larger one grows
/// it.
const READ_BUFFER: usize = 4096;
/// Frames the writer sends with one flush at most.
const WRITE_BATCH: usize = 64;
/// Frames queued for a client at most.
const OUTBOX: usize = 1024;
/// A client whose queue stays full this long (it does not read) counts as too slow.
const SLOW_AFTER: Duration = Duration::from_secs(5);
/// The close code of a client too slow to take its messages (it resumes from its cursor).
pub const SLOW_CONSUMER: u16 = 4008;
/// A live tail (a subscription from `latest`) whose next message is older than this skips to
/// the head, as an MQTT clean session does (`lag_limit_ms` in the subscribe; 0: never).
const DEFAULT_LAG_LIMIT: Duration = Duration::from_secs(60);

/// `GET /ws`: upgrades (the principal is the request's: a token in the `Authorization` header,
/// the `access_token` query parameter or the `manifold_token` cookie, or `default`).
pub(crate) async fn ws(
    State(Rest {
        engine,
        stopped,
        hubs,
    }): State<Rest>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Failure> {
    let client = client(&engine, &headers, query.as_deref())?;
    // A client frame at most as large as the largest message and some room for its JSON (not
    // tungstenite's 64 MiB); a larger one closes the connection with 1009.
    let max = engine.max_message_bytes().saturating_add(64 * 1024);
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| run(socket, client, stopped, hubs)))
}

/// What the writer sends next.
enum Out {
    Text(String),
    /// Close with this code and reason, then stop.
    Close(u16, &'static str),
}

async fn run(socket: WebSocket, client: Client, stopped: watch::Receiver<bool>, hubs: Arc<Hubs>) {
    let (mut frames_out, mut frames_in) = socket.split();
    let (out, mut outbox) = mpsc::channel::<Out>(OUTBOX);
    // A subscription that found the outbox full asks for the slow-consumer close here (the
    // outbox itself is full).
    let (close, closing) = watch::channel(false);
    let writer = tokio::spawn(async move {
        loop {
            // (Asked for only while the outbox is full: this writer is then between sends,
            // never waiting for the outbox.)
            let next = if *closing.borrow() {
                Some(Out::Close(
                    SLOW_CONSUMER,
                    "too slow: reconnect from your last cursor",
                ))
            } else {
                outbox.recv().await
            };
            // The frames queued now go out together, with one flush.
            let mut text = match next {
                Some(Out::Text(t)) => t,
                Some(Out::Close(code, reason)) => {
                    let _ = frames_out.send(close_frame(code, reason)).await;
                    return;
                }
                None => return,
            };
            let mut more = WRITE_BATCH;
            loop {
                if frames_out
                    .feed(Message::Text(Utf8Bytes::from(text)))
                    .await
                    .is_err()
                {
                    return;
                }
                more -= 1;
                match outbox.try_recv() {
                    Ok(Out::Text(t)) if more > 0 => text = t,
                    Ok(Out::Text(t)) => {
                        // Sent after this flush.
                        if frames_out.flush().await.is_err() {
                            return;
                        }
                        more = WRITE_BATCH;
                        text = t;
                    }
                    Ok(Out::Close(code, reason)) => {
                        let _ = frames_out.send(close_frame(code, reason)).await;
                        return;
                    }
                    Err(_) => break,
                }
            }
            if frames_out.flush().await.is_err() {
                return;
            }
        }
    });
    let mut subs: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut shutdown = stopped.clone();
    loop {
        let frame = tokio::select! {
            f = frames_in.next() => f,
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                let _ = out.send(Out::Close(1001, "server shutting down")).await;
                break;
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                let answer = error(None, "bad_request", "frames are JSON text");
                let _ = out.send(Out::Text(answer.to_string())).await;
                continue;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
        };
        let follows = (&stopped, &hubs);
        let answer = handle(&text, &client, &out, &close, follows, &mut subs).await;
        if let Some(answer) = answer
            && out.send(Out::Text(answer.to_string())).await.is_err()
        {
            break;
        }
    }
    for (_, task) in subs {
        task.abort();
    }
    drop(out);
    let _ = writer.await;
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

fn error(reference: Option<&Value>, error: &str, message: &str) -> Value {
    json!({"type": "error", "ref": reference, "error": error, "message": message})
}

/// One client frame; the answer to send (`None`: already queued, as a subscribe's is, before
/// its first message).
async fn handle(
    text: &str,
    client: &Client,
    out: &mpsc::Sender<Out>,
    close: &watch::Sender<bool>,
    (stopped, hubs): (&watch::Receiver<bool>, &Arc<Hubs>),
    subs: &mut HashMap<String, JoinHandle<()>>,
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
            out.send(Out::Text(answer.to_string())).await.ok()?;
            let task = tokio::spawn(follow(
                client.clone(),
                poll,
                lag_limit,
                id.clone(),
                out.clone(),
                close.clone(),
                (stopped.clone(), hubs.clone()),
            ));
            subs.insert(id, task);
            return None;
        }
        Some("unsubscribe") => {
            let id = req["id"].as_str().unwrap_or_default();
            match subs.remove(id) {
                Some(task) => {
                    task.abort();
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

/// A subscription: reads after its cursor and queues each message, until the connection ends.
/// With a lag limit, a batch whose first message is older than it is passed over, the reads
/// go on from the head, and the client is told `{"type": "skipped", "sub", "cursor"}`.
async fn follow(
    client: Client,
    poll: Poll,
    lag_limit: Option<Duration>,
    id: String,
    out: mpsc::Sender<Out>,
    close: watch::Sender<bool>,
    (stopped, hubs): (watch::Receiver<bool>, Arc<Hubs>),
) {
    let mut reads = Follow::new(client, poll, stopped, Some(hubs));
    let frame_head = format!(r#"{{"type":"message","sub":{},"#, json!(id));
    loop {
        let batch = match reads.next().await {
            Ok(b) => b,
            Err(Failure(_, e, m)) => {
                let _ = out.try_send(Out::Text(error(None, e, &m).to_string()));
                return;
            }
        };
        let oldest = batch.messages.first().map(|m| m.timestamp_ms);
        if let (Some(limit), Some(oldest)) = (lag_limit, oldest)
            && now_ms().saturating_sub(oldest) > limit.as_millis() as u64
        {
            let frame = match reads.skip_to_head() {
                Ok(cursor) => json!({"type": "skipped", "sub": id, "cursor": cursor}),
                Err(Failure(_, e, m)) => error(None, e, &m),
            };
            if !queue(&out, &close, frame.to_string()).await {
                return;
            }
            continue;
        }
        if batch.reset {
            let frame = json!({"type": "reset", "sub": id}).to_string();
            if !queue(&out, &close, frame).await {
                return;
            }
        }
        for m in &batch.messages {
            // The message's JSON as rendered once for every reader, after the frame's own
            // fields: `{"type":"message","sub":S,` + the message's fields.
            let body = m.json.strip_prefix('{').unwrap_or(&m.json);
            let mut frame = String::with_capacity(frame_head.len() + body.len());
            frame.push_str(&frame_head);
            frame.push_str(body);
            if !queue(&out, &close, frame).await {
                return;
            }
        }
        if reads.stopped() {
            return;
        }
    }
}

/// Queues a frame for the writer; `false` when the subscription is to end: the connection is
/// gone, or its queue stayed full for `SLOW_AFTER` (too slow: it closes, the client resumes).
async fn queue(out: &mpsc::Sender<Out>, close: &watch::Sender<bool>, frame: String) -> bool {
    // Room in the queue (the common case): no timer.
    let frame = match out.try_send(Out::Text(frame)) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(frame)) => frame,
    };
    match tokio::time::timeout(SLOW_AFTER, out.send(frame)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            let _ = close.send(true);
            false
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
