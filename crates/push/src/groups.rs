//! Consumer groups over HTTP: a long-poll, SSE stream or WebSocket subscription with
//! `group=G&consumer=C` reads as a member of the engine's consumer group — the group XREADGROUP
//! reads for topics, the filter group MQTT `$share/G/filter` joins for a filter — so no two
//! members, whatever their protocol, get the same message. Acknowledgements go to
//! `POST /topics/{topic}/groups/{group}/ack` (a filter group's to `POST /groups/{group}/ack`);
//! a message left unacknowledged for `claim_idle` (30 s) goes again to the next member that
//! reads, marked `"redelivered": true` (a visibility timeout).
//!
//! A group a reader names that does not exist is created: at the topic's end (`start=latest`,
//! the default, as MQTT's shared subscriptions) or its beginning (`start=earliest`).
//!
//! Owns the group reads and acks of the HTTP transports; which message goes to whom is the
//! engine's, decided when the read command applies. Never reads a group without a command:
//! what a member is given is only what the group handed it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use manifold_core::engine::{
    Client, EngineError, GroupError, GroupStart, PendingQuery, ReadFrom, topic_filter,
};
use manifold_core::store::StreamId;
use serde_json::{Value, json};

use crate::poll::{Batch, Rendered, Waiting, position};
use crate::rest::{Failure, Rest, client, cursor, message_json, parse_cursor, topic_of};

/// How long a delivered message may stay unacknowledged before another read takes it.
pub(crate) const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);

/// A read as a member of a group.
#[derive(Debug, Clone)]
pub(crate) struct Membership {
    pub(crate) group: String,
    pub(crate) consumer: String,
    /// Unacknowledged messages idle this long are delivered again.
    pub(crate) claim_idle: Duration,
    /// A group created by this read starts at the beginning (else at the end).
    pub(crate) earliest: bool,
    /// Delivered messages need no acknowledgement (XREADGROUP NOACK).
    pub(crate) noack: bool,
}

impl Membership {
    /// The membership a request names with `group` and `consumer` (both or neither).
    pub(crate) fn new(
        group: Option<String>,
        consumer: Option<String>,
    ) -> Result<Option<Membership>, Failure> {
        match (group, consumer) {
            (None, None) => Ok(None),
            (Some(group), Some(consumer)) if !group.is_empty() && !consumer.is_empty() => {
                Ok(Some(Membership {
                    group,
                    consumer,
                    claim_idle: DEFAULT_CLAIM_IDLE,
                    earliest: false,
                    noack: false,
                }))
            }
            _ => Err(bad(
                "bad_request",
                "a group read needs both group and consumer (not empty)".into(),
            )),
        }
    }
}

fn bad(error: &'static str, message: String) -> Failure {
    Failure(StatusCode::BAD_REQUEST, error, message)
}

/// What a member reads: topics (a stream group each) or a filter (a filter group).
pub(crate) enum Target<'a> {
    Topics(&'a [String]),
    Filter(&'a str),
}

/// The next messages the group gives `member` (redeliveries of messages idle for
/// `claim_idle` first, then new ones, at most `limit`), waiting for them as `waiting` allows.
/// The batch has no `next`: the group keeps each member's place.
pub(crate) async fn next_batch(
    client: &Client,
    target: Target<'_>,
    member: &Membership,
    limit: usize,
    waiting: &mut Waiting,
) -> Result<Batch, Failure> {
    let group = Bytes::copy_from_slice(member.group.as_bytes());
    let consumer = Bytes::copy_from_slice(member.consumer.as_bytes());
    match target {
        Target::Topics(topics) => {
            let keys = topics
                .iter()
                .map(|t| topic_of(t))
                .collect::<Result<Vec<_>, _>>()?;
            for key in &keys {
                ensure_group(client, key, &group, member.earliest).await?;
            }
            loop {
                let at = client.engine().applied_index();
                let mut messages = Vec::new();
                for key in &keys {
                    let room = limit.saturating_sub(messages.len());
                    messages
                        .extend(claim_topic(client, key, &group, &consumer, member, room).await?);
                }
                let room = limit.saturating_sub(messages.len());
                if room > 0 && keys.iter().any(|k| client.group_has_new(0, k, &group)) {
                    messages
                        .extend(read_new(client, &keys, &group, &consumer, member, room).await?);
                }
                if !messages.is_empty() || waiting.over() {
                    return Ok(group_batch(messages));
                }
                let topics: Vec<_> = keys.iter().map(|k| (0, k.clone())).collect();
                let wait = client.wait(&topics, at, waiting.left().min(member.claim_idle));
                if let Some(Err(e)) = waiting.until(wait).await {
                    return Err(e.into());
                }
            }
        }
        Target::Filter(filter) => {
            let filter = Bytes::copy_from_slice(filter.as_bytes());
            topic_filter::check_filter(&filter).map_err(|e| {
                bad(
                    "bad_filter",
                    format!("{:?}: {e}", String::from_utf8_lossy(&filter)),
                )
            })?;
            if client.engine().filter_group(&group, &filter).is_none() {
                client
                    .filter_group_join(group.clone(), filter.clone())
                    .await?;
            }
            loop {
                let at = client.engine().applied_index();
                let mut messages =
                    claim_filter(client, &filter, &group, &consumer, member, limit).await?;
                let room = limit.saturating_sub(messages.len());
                if room > 0 {
                    let got = client
                        .filter_group_read(
                            group.clone(),
                            filter.clone(),
                            consumer.clone(),
                            room,
                            member.noack,
                        )
                        .await?;
                    messages.extend(filter_messages(got, &member.group, false));
                }
                if !messages.is_empty() || waiting.over() {
                    return Ok(group_batch(messages));
                }
                let filters = [filter.as_ref()];
                let wait = client.wait_filters(&filters, at, waiting.left().min(member.claim_idle));
                if let Some(Err(e)) = waiting.until(wait).await {
                    return Err(e.into());
                }
            }
        }
    }
}

fn group_batch(messages: Vec<Value>) -> Batch {
    Batch {
        messages: messages.iter().map(Rendered::new).collect(),
        next: None,
        reset: false,
        settled: None,
    }
}

/// Creates the group (and the topic, as XGROUP CREATE MKSTREAM) unless it exists.
async fn ensure_group(
    client: &Client,
    key: &Bytes,
    group: &Bytes,
    earliest: bool,
) -> Result<(), Failure> {
    let exists = client
        .groups_info(0, key)?
        .is_some_and(|groups| groups.iter().any(|g| g.name == *group));
    if exists {
        return Ok(());
    }
    let start = if earliest {
        GroupStart::Id(StreamId::new(0, 0))
    } else {
        GroupStart::Last
    };
    match client
        .group_create(0, key.clone(), group.clone(), start, true, None)
        .await
    {
        // Another reader created it first.
        Ok(()) | Err(EngineError::Group(GroupError::GroupExists)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The topic's pending messages idle for `claim_idle`, taken for `consumer` (XAUTOCLAIM) —
/// only when some are (a look at the pending list first, so an idle reader logs nothing).
async fn claim_topic(
    client: &Client,
    key: &Bytes,
    group: &Bytes,
    consumer: &Bytes,
    member: &Membership,
    room: usize,
) -> Result<Vec<Value>, Failure> {
    if room == 0 || member.noack {
        return Ok(Vec::new());
    }
    let idle_ms = member.claim_idle.as_millis() as u64;
    let query = PendingQuery {
        start: StreamId::new(0, 0),
        end: StreamId::new(u64::MAX, u64::MAX),
        count: 1,
        consumer: None,
        min_idle_ms: Some(idle_ms),
    };
    if read_or_gone(client.pending(0, key, group, &query))?.is_empty() {
        return Ok(Vec::new());
    }
    let claimed = client
        .autoclaim(
            0,
            key.clone(),
            group.clone(),
            consumer.clone(),
            idle_ms,
            StreamId::new(0, 0),
            room as u64,
            false,
        )
        .await?;
    let incarnation = incarnation(client, key)?;
    let topic = String::from_utf8_lossy(key);
    Ok(claimed
        .entries
        .iter()
        .filter_map(|e| e.message.as_ref())
        .map(|m| {
            member_json(
                message_json(&topic, m, cursor(m.id, incarnation)),
                &member.group,
                true,
            )
        })
        .collect())
}

/// A read of a group that went away meanwhile finds nothing (the next round creates it).
fn read_or_gone<T: Default>(r: Result<T, EngineError>) -> Result<T, Failure> {
    match r {
        Err(EngineError::Group(GroupError::NoGroup)) => Ok(T::default()),
        r => Ok(r?),
    }
}

fn incarnation(client: &Client, key: &[u8]) -> Result<u64, Failure> {
    Ok(client.topic_head(0, key)?.map_or(0, |h| h.incarnation))
}

/// New messages of the topics for `consumer` (one XREADGROUP `>` command).
async fn read_new(
    client: &Client,
    keys: &[Bytes],
    group: &Bytes,
    consumer: &Bytes,
    member: &Membership,
    room: usize,
) -> Result<Vec<Value>, Failure> {
    let streams = keys.iter().map(|k| (k.clone(), ReadFrom::New)).collect();
    let read = client
        .read_group(
            0,
            group.clone(),
            consumer.clone(),
            streams,
            room as u64,
            member.noack,
        )
        .await;
    let mut out = Vec::new();
    for (key, entries) in read_or_gone(read)? {
        let incarnation = incarnation(client, &key)?;
        let topic = String::from_utf8_lossy(&key);
        out.extend(entries.iter().filter_map(|e| e.message.as_ref()).map(|m| {
            let json = message_json(&topic, m, cursor(m.id, incarnation));
            member_json(json, &member.group, false)
        }));
    }
    Ok(out)
}

/// The filter group's messages idle for `claim_idle` (or released by a member that left),
/// taken for `consumer` — only when some are.
async fn claim_filter(
    client: &Client,
    filter: &Bytes,
    group: &Bytes,
    consumer: &Bytes,
    member: &Membership,
    room: usize,
) -> Result<Vec<Value>, Failure> {
    if room == 0 || member.noack {
        return Ok(Vec::new());
    }
    let idle_ms = member.claim_idle.as_millis() as u64;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let claimable = client
        .engine()
        .filter_group(group, filter)
        .is_some_and(|g| {
            g.pel
                .values()
                .any(|p| p.consumer.is_empty() || now_ms.saturating_sub(p.delivered_ms) >= idle_ms)
        });
    if !claimable {
        return Ok(Vec::new());
    }
    let got = client
        .filter_group_claim(
            group.clone(),
            filter.clone(),
            consumer.clone(),
            idle_ms,
            room as u64,
        )
        .await?;
    Ok(filter_messages(got, &member.group, true))
}

fn filter_messages(
    got: Vec<manifold_core::engine::FilterDelivery>,
    group: &str,
    redelivered: bool,
) -> Vec<Value> {
    got.into_iter()
        .filter_map(|d| {
            let m = d.message?;
            let here = format!("{}.{}", d.position.0, d.position.1);
            let json = message_json(&String::from_utf8_lossy(&d.topic), &m, here);
            Some(member_json(json, group, redelivered))
        })
        .collect()
}

/// A message as a member gets it: with its group, and whether it was delivered before.
fn member_json(mut m: Value, group: &str, redelivered: bool) -> Value {
    if let Value::Object(o) = &mut m {
        o.insert("group".into(), Value::from(group));
        o.insert("redelivered".into(), Value::from(redelivered));
    }
    m
}

/// The IDs an ack body names: `{"ids": [...]}` (or `{"cursors": [...]}`), each a message's
/// `cursor` or its ID; a plain-text body of IDs separated by whitespace or commas works too.
fn ack_ids(body: &[u8]) -> Result<Vec<String>, Failure> {
    let wrong = || {
        bad(
            "bad_request",
            "an ack body is {\"ids\": [CURSOR, ...]} (the messages' cursors)".into(),
        )
    };
    let ids: Vec<String> = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v
            .get("ids")
            .or_else(|| v.get("cursors"))
            .and_then(Value::as_array)
            .ok_or_else(wrong)?
            .iter()
            .map(|c| c.as_str().map(String::from).ok_or_else(wrong))
            .collect::<Result<_, _>>()?,
        Err(_) => std::str::from_utf8(body)
            .map_err(|_| wrong())?
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    };
    if ids.is_empty() {
        return Err(wrong());
    }
    Ok(ids)
}

/// `POST /topics/{topic}/groups/{group}/ack` with the delivered messages' cursors (or IDs):
/// `{"acked": N}`, how many were pending (a repeat acks nothing).
pub(crate) async fn ack(
    State(Rest { engine, .. }): State<Rest>,
    Path((topic, group)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let client = client(&engine, &headers, query.as_deref())?;
    let key = topic_of(&topic)?;
    let ids = ack_ids(&body)?
        .iter()
        .map(|c| stream_id(c))
        .collect::<Result<Vec<_>, _>>()?;
    let acked = ack_topic(&client, key, &group, ids).await?;
    Ok(axum::Json(json!({ "acked": acked })).into_response())
}

/// Acknowledges `ids` in the topic's group: how many were pending.
pub(crate) async fn ack_topic(
    client: &Client,
    key: Bytes,
    group: &str,
    ids: Vec<StreamId>,
) -> Result<u64, Failure> {
    let group = Bytes::copy_from_slice(group.as_bytes());
    match client.ack(0, key, group, ids).await {
        // As XACK: nothing was pending in a group that is not there.
        Err(EngineError::Group(GroupError::NoGroup | GroupError::NoStream)) => Ok(0),
        r => Ok(r?),
    }
}

/// A message's ID from its cursor (`ID@INCARNATION`) or the ID itself.
pub(crate) fn stream_id(s: &str) -> Result<StreamId, Failure> {
    if s.contains('@') {
        return Ok(parse_cursor(s)?.0);
    }
    parse_cursor(&format!("{s}@0")).map(|(id, _)| id)
}

/// `POST /groups/{group}/ack?filter=F` with the delivered messages' cursors (`INDEX.SUB`):
/// `{"acked": N}`.
pub(crate) async fn ack_filter(
    State(Rest { engine, .. }): State<Rest>,
    Path(group): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let client = client(&engine, &headers, query.as_deref())?;
    let filter = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "filter")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| bad("bad_request", "a filter group's ack needs filter=F".into()))?;
    let positions = ack_ids(&body)?
        .iter()
        .map(|c| position(c))
        .collect::<Result<Vec<_>, _>>()?;
    let acked = client
        .filter_group_ack(
            Bytes::from(group.into_bytes()),
            Bytes::from(filter.into_bytes()),
            positions,
        )
        .await?;
    Ok(axum::Json(json!({ "acked": acked })).into_response())
}

/// `GET /topics/{topic}/groups`: the topic's consumer groups (whatever protocol reads them),
/// each with its consumers, pending count, lag and last delivered ID.
pub(crate) async fn list(
    State(Rest { engine, .. }): State<Rest>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let client = client(&engine, &headers, query.as_deref())?;
    let key = topic_of(&topic)?;
    let groups = client
        .groups_info(0, &key)?
        .ok_or_else(|| crate::rest::unknown_topic(&topic))?;
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let consumers: Vec<Value> = client
            .consumers_info(0, &key, &g.name)?
            .unwrap_or_default()
            .iter()
            .map(|c| {
                json!({
                    "name": String::from_utf8_lossy(&c.name),
                    "pending": c.pending,
                    "idle_ms": c.idle_ms,
                })
            })
            .collect();
        out.push(json!({
            "name": String::from_utf8_lossy(&g.name),
            "pending": g.pending,
            "lag": g.lag,
            "last_delivered_id": g.last_delivered_id.to_string(),
            "entries_read": g.entries_read,
            "consumers": consumers,
        }));
    }
    Ok(axum::Json(json!({ "topic": topic, "groups": out })).into_response())
}

/// Most groups `GET /groups` lists.
const MAX_GROUPS_LISTED: usize = 1000;

/// `GET /groups`: every topic's consumer groups the principal may read (at most 1,000), each
/// `{topic, name, consumers, pending, lag, last_delivered_id}`, by topic.
pub(crate) async fn all(
    State(Rest { engine, .. }): State<Rest>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let client = client(&engine, &headers, query.as_deref())?;
    let groups: Vec<Value> = engine
        .all_groups_info(MAX_GROUPS_LISTED)
        .into_iter()
        .filter(|(db, topic, _)| *db == 0 && client.principal().may_subscribe(topic))
        .map(|(_, topic, g)| {
            json!({
                "topic": String::from_utf8_lossy(&topic),
                "name": String::from_utf8_lossy(&g.name),
                "consumers": g.consumers,
                "pending": g.pending,
                "lag": g.lag,
                "last_delivered_id": g.last_delivered_id.to_string(),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "groups": groups })).into_response())
}
