//! Long-polling (`GET /poll`): answers as soon as anything after the cursor exists, else with
//! no messages when the timeout passes — always with the cursor to poll from next. A wait is
//! one of the engine's waiters (woken by the commit that adds to its topics; nothing runs
//! while it waits), or for one topic at its head a place on the topic's hub (`hub.rs`). A
//! shutdown of the listener answers waiting polls at once. `Follow` is the same reading for
//! the streams that never time out (SSE, WebSocket subscriptions).
//!
//! One topic (`topic=T`) pages by that topic's cursor (`ID@INCARNATION`, as the history);
//! several (`topic=A&topic=B`) or an MQTT filter (`filter=sensors/+`) by a position in the
//! log (`INDEX.SUB`). Without a cursor a poll waits for what comes after it began.
//! Owns the waiting and the cursors of filter reads; the message shape is `rest.rs`'s.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use manifold_core::engine::{Client, topic_filter};
use manifold_core::store::StreamId;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::groups::{self, Membership, Target};
use crate::hub::{Hubs, Item};
use crate::rest::{Failure, Rest, client, cursor, message_json, parse_cursor, topic_of};

/// How long a poll waits by default, and at most.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Messages one answer carries at most (and by default).
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// What a poll asked for.
pub(crate) struct Poll {
    topics: Vec<String>,
    filter: Option<String>,
    pub(crate) after: Option<String>,
    timeout: Duration,
    limit: usize,
    /// Read as a member of a consumer group (`group=G&consumer=C`), not from a cursor.
    pub(crate) member: Option<Membership>,
    /// Nothing after `after` up to this applied index (the last batch's `settled`): wait for
    /// a change past it before reading. Saves a follower at the head one read per message.
    settled: Option<u64>,
}

fn bad(error: &'static str, message: String) -> Failure {
    Failure(StatusCode::BAD_REQUEST, error, message)
}

impl Poll {
    /// The topic of a plain read of one topic (not several, not a filter, not a group's).
    pub(crate) fn topic(&self) -> Option<&str> {
        match (&self.topics[..], &self.filter, &self.member) {
            ([topic], None, None) => Some(topic),
            _ => None,
        }
    }

    /// Reads of `topics` or of `filter` (one of the two), after `after`.
    pub(crate) fn new(
        topics: Vec<String>,
        filter: Option<String>,
        after: Option<String>,
    ) -> Result<Poll, Failure> {
        if topics.is_empty() == filter.is_none() {
            return Err(bad(
                "bad_request",
                "a topic (one or more) or a filter, not both".into(),
            ));
        }
        Ok(Poll {
            topics,
            filter,
            after,
            timeout: DEFAULT_TIMEOUT,
            limit: DEFAULT_LIMIT,
            member: None,
            settled: None,
        })
    }
}

pub(crate) fn parse(query: Option<&str>) -> Result<Poll, Failure> {
    let mut poll = Poll {
        topics: Vec::new(),
        filter: None,
        after: None,
        timeout: DEFAULT_TIMEOUT,
        limit: DEFAULT_LIMIT,
        member: None,
        settled: None,
    };
    let (mut group, mut consumer) = (None, None);
    let mut claim_idle = None;
    let mut earliest = false;
    let mut noack = false;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "topic" => poll.topics.push(v.into_owned()),
            "filter" => poll.filter = Some(v.into_owned()),
            "after" => poll.after = Some(v.into_owned()),
            "timeout" => poll.timeout = duration(&v)?.min(MAX_TIMEOUT),
            "limit" => {
                poll.limit = v
                    .parse::<usize>()
                    .map_err(|_| bad("bad_limit", format!("limit {v:?} is not a number")))?
                    .clamp(1, MAX_LIMIT)
            }
            "group" => group = Some(v.into_owned()),
            "consumer" => consumer = Some(v.into_owned()),
            "claim_idle" => claim_idle = Some(duration(&v)?),
            "start" => {
                earliest = match v.as_ref() {
                    "earliest" => true,
                    "latest" => false,
                    _ => {
                        return Err(bad(
                            "bad_request",
                            format!("start {v:?} is earliest or latest"),
                        ));
                    }
                }
            }
            "noack" => noack = v == "true" || v == "1",
            _ => {}
        }
    }
    poll.member = Membership::new(group, consumer)?.map(|mut m| {
        m.claim_idle = claim_idle.unwrap_or(m.claim_idle);
        m.earliest = earliest;
        m.noack = noack;
        m
    });
    if poll.topics.is_empty() == poll.filter.is_none() {
        return Err(bad(
            "bad_request",
            "poll needs topic=T (one or more) or filter=F, not both".into(),
        ));
    }
    Ok(poll)
}

/// `30s`, `500ms` or a number of seconds.
pub(crate) fn duration(v: &str) -> Result<Duration, Failure> {
    let wrong = || {
        bad(
            "bad_timeout",
            format!("timeout {v:?} is not 30s, 500ms or 30"),
        )
    };
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| wrong());
    }
    v.strip_suffix('s')
        .unwrap_or(v)
        .parse()
        .map(Duration::from_secs)
        .map_err(|_| wrong())
}

/// `GET /poll?topic=T[&topic=U]|filter=F[&after=CURSOR][&timeout=30s][&limit=N]`, or as a
/// group member: `...&group=G&consumer=C[&claim_idle=30s][&start=latest|earliest][&noack=1]`.
pub async fn poll(
    State(Rest {
        engine,
        stopped,
        hubs,
    }): State<Rest>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let client = client(&engine, &headers, query.as_deref())?;
    let poll = parse(query.as_deref())?;
    let deadline = Instant::now() + poll.timeout;
    // A poll of one topic at its head waits on the topic's hub, as SSE and WebSocket followers.
    let batch = Follow::new(client, poll, stopped, Some(hubs))
        .next_until(deadline)
        .await?;
    // The messages as rendered (shared), the rest around them.
    let mut body = String::from("{\"messages\":[");
    for (k, m) in batch.messages.iter().enumerate() {
        if k > 0 {
            body.push(',');
        }
        body.push_str(&m.json);
    }
    body.push_str("],\"next\":");
    body.push_str(&json!(batch.next).to_string());
    body.push_str(if batch.reset {
        ",\"reset\":true}"
    } else {
        ",\"reset\":false}"
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A message rendered as JSON once (`rest::message_json`), shared by every reader it goes to.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    /// The JSON object, as text.
    pub(crate) json: Arc<str>,
    /// Its `cursor`.
    pub(crate) cursor: Arc<str>,
    /// Its `timestamp_ms` (when it was stored).
    pub(crate) timestamp_ms: u64,
}

impl Rendered {
    /// The JSON's fields without its opening `{`: what a frame of its own fields goes before.
    pub(crate) fn fields(&self) -> &str {
        self.json.strip_prefix('{').unwrap_or(&self.json)
    }

    /// A message's JSON (with its `cursor` and `timestamp_ms`), rendered.
    pub(crate) fn new(message: &Value) -> Rendered {
        Rendered {
            json: Arc::from(message.to_string()),
            cursor: Arc::from(message["cursor"].as_str().unwrap_or_default()),
            timestamp_ms: message["timestamp_ms"].as_u64().unwrap_or(0),
        }
    }
}

/// What one read after a cursor found: messages (each with its `cursor`), the cursor to go on
/// from, and whether the given cursor was of an earlier incarnation of the topic.
pub(crate) struct Batch {
    pub(crate) messages: Vec<Rendered>,
    pub(crate) next: Option<String>,
    pub(crate) reset: bool,
    /// The read took everything after the cursor up to this applied index: the next read
    /// after `next` can wait for a change past it before it looks.
    pub(crate) settled: Option<u64>,
}

/// A poll that never times out: the batches of a stream (SSE) or a subscription (WebSocket),
/// each after the last one's cursor, until the listener stops.
pub(crate) struct Follow {
    client: Client,
    poll: Poll,
    stopped: watch::Receiver<bool>,
    /// Where a follower of one topic at its head takes its messages from (`hub.rs`).
    hubs: Option<Arc<Hubs>>,
    /// Its topic's hub, once joined.
    live: Option<broadcast::Receiver<Item>>,
    /// Just joined: one read by cursor first (what came before joining is not in the hub).
    catch_up: bool,
}

/// How long one read of a [`Follow`] may wait before it looks again (shutdown ends it sooner).
const ROUND: Duration = Duration::from_secs(3600);

impl Follow {
    /// Follows `poll`; with `hubs`, one topic's follower at its head takes its messages from
    /// the topic's hub.
    pub(crate) fn new(
        client: Client,
        poll: Poll,
        stopped: watch::Receiver<bool>,
        hubs: Option<Arc<Hubs>>,
    ) -> Follow {
        let single = poll.member.is_none() && poll.filter.is_none() && poll.topics.len() == 1;
        Follow {
            client,
            poll,
            stopped,
            hubs: hubs.filter(|_| single),
            live: None,
            catch_up: false,
        }
    }

    /// The next batch, waited for; the next one starts after it.
    pub(crate) async fn next(&mut self) -> Result<Batch, Failure> {
        self.next_until(Instant::now() + ROUND).await
    }

    /// The next batch, waited for until `deadline` (then empty, with the cursor to go on from).
    /// A follower of one topic that finds nothing new joins the topic's hub and waits there.
    pub(crate) async fn next_until(&mut self, deadline: Instant) -> Result<Batch, Failure> {
        loop {
            if self.live.is_some()
                && !self.catch_up
                && let Some(batch) = self.next_live(deadline).await
            {
                return Ok(batch);
            }
            // A follower that may use a hub looks without waiting first.
            let hub_ready = self.hubs.is_some() && self.live.is_none();
            let wait_here = !(hub_ready || self.catch_up);
            let batch = self
                .read(if wait_here { deadline } else { Instant::now() })
                .await?;
            let found = !batch.messages.is_empty() || batch.reset;
            if found || wait_here || self.stopped() || Instant::now() >= deadline {
                return Ok(batch);
            }
            if std::mem::take(&mut self.catch_up) {
                continue; // nothing came before joining: on to the hub
            }
            match (&self.hubs, &self.poll.after) {
                // At the head: wait on the topic's hub, after one more look (what was committed
                // before joining is not in it).
                (Some(hubs), Some(_)) => {
                    self.live = Some(hubs.join(&self.client, &self.poll.topics[0]));
                    self.catch_up = true;
                }
                // The topic is not there yet: wait on the engine.
                _ => return self.read(deadline).await,
            }
        }
    }

    /// One read by cursor, waiting for something new until `deadline`; the cursor goes on
    /// after it.
    async fn read(&mut self, deadline: Instant) -> Result<Batch, Failure> {
        let mut waiting = Waiting {
            deadline,
            stopped: self.stopped.clone(),
        };
        let batch = next_batch(&self.client, &self.poll, &mut waiting).await?;
        if let Some(next) = &batch.next {
            self.poll.after = Some(next.clone());
        }
        self.poll.settled = batch.settled;
        Ok(batch)
    }

    /// The hub's next messages after the cursor (waited for); `None` when the follower must
    /// read by cursor instead (it fell too far behind, the topic was created again, the hub
    /// stopped): it leaves the hub.
    async fn next_live(&mut self, deadline: Instant) -> Option<Batch> {
        let Some((mut last, incarnation)) = self
            .poll
            .after
            .as_deref()
            .and_then(|c| parse_cursor(c).ok())
        else {
            self.live = None;
            return None;
        };
        let rx = self.live.as_mut()?;
        let mut messages: Vec<Rendered> = Vec::new();
        loop {
            // (A shutdown stops the hub: this ends with `Closed`, and the read by cursor that
            // follows sees the shutdown.)
            let item = if messages.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(item) => item,
                    // Nothing before the deadline: an empty batch, the cursor as it was.
                    Err(_) => break,
                }
            } else {
                match rx.try_recv() {
                    Ok(item) => Ok(item),
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                }
            };
            match item {
                Ok(Item::Message {
                    id,
                    incarnation: i,
                    rendered,
                }) if i == incarnation => {
                    // (What the catch-up read had already given is passed over.)
                    if id > last {
                        last = id;
                        messages.push(rendered);
                        if messages.len() >= self.poll.limit {
                            break;
                        }
                    }
                }
                other => {
                    self.live = None;
                    if matches!(other, Err(broadcast::error::RecvError::Closed)) && !self.stopped()
                    {
                        // The hub stopped on a failed read: this follower waits on the engine
                        // from now on (and meets the failure itself if it lasts).
                        self.hubs = None;
                    }
                    if messages.is_empty() {
                        return None;
                    }
                    break;
                }
            }
        }
        let next = match messages.last() {
            Some(m) => Some(m.cursor.to_string()),
            None => self.poll.after.clone(),
        };
        self.poll.after = next.clone();
        self.poll.settled = None;
        Some(Batch {
            messages,
            next,
            reset: false,
            settled: None,
        })
    }

    /// Passes over everything committed now: the next batch starts at the head of the topic
    /// (or of the log, for several topics or a filter). The new cursor.
    pub(crate) fn skip_to_head(&mut self) -> Result<Option<String>, Failure> {
        let next = match (&self.poll.topics[..], &self.poll.filter) {
            ([topic], None) => self
                .client
                .topic_head(0, &topic_of(topic)?)?
                .map(|h| cursor(h.last_id, h.incarnation)),
            _ => Some(format!(
                "{}.{}",
                self.client.engine().applied_index(),
                u16::MAX
            )),
        };
        if next.is_some() {
            self.poll.after = next.clone();
            self.poll.settled = None;
            self.live = None;
            self.catch_up = false;
        }
        Ok(next)
    }

    /// The cursor the next batch starts after, for a follower of one topic.
    pub(crate) fn cursor(&self) -> Option<(StreamId, u64)> {
        self.poll
            .after
            .as_deref()
            .and_then(|c| parse_cursor(c).ok())
    }

    /// Moves the cursor of a follower of one topic (the next batch starts after it).
    pub(crate) fn set_cursor(&mut self, (id, incarnation): (StreamId, u64)) {
        self.poll.after = Some(cursor(id, incarnation));
        self.poll.settled = None;
    }

    /// Whether the listener is shutting down.
    pub(crate) fn stopped(&self) -> bool {
        *self.stopped.borrow()
    }
}

/// The next messages after `poll.after`, waiting for them as `waiting` allows.
async fn next_batch(client: &Client, poll: &Poll, waiting: &mut Waiting) -> Result<Batch, Failure> {
    if let Some(member) = &poll.member {
        let target = match &poll.filter {
            Some(f) => Target::Filter(f),
            None => Target::Topics(&poll.topics),
        };
        return groups::next_batch(client, target, member, poll.limit, waiting).await;
    }
    match (&poll.topics[..], &poll.filter) {
        ([topic], None) => one_topic(client, topic, poll, waiting).await,
        _ => positions(client, poll, waiting).await,
    }
}

/// Until when a poll may wait: its deadline, or the listener's shutdown.
pub(crate) struct Waiting {
    deadline: Instant,
    stopped: watch::Receiver<bool>,
}

impl Waiting {
    /// Whether the poll must answer now.
    pub(crate) fn over(&self) -> bool {
        Instant::now() >= self.deadline || *self.stopped.borrow()
    }

    /// Waits for `wait` (an engine wait), at most until the deadline or the shutdown (then
    /// `None`).
    pub(crate) async fn until<T>(
        &mut self,
        wait: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            r = wait => Some(r),
            _ = self.stopped.wait_for(|s| *s) => None,
            () = tokio::time::sleep_until(self.deadline) => None,
        }
    }

    pub(crate) fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// A poll of one topic, by its cursor.
async fn one_topic(
    client: &Client,
    topic: &str,
    poll: &Poll,
    waiting: &mut Waiting,
) -> Result<Batch, Failure> {
    let key = topic_of(topic)?;
    let given = poll.after.as_deref().map(parse_cursor).transpose()?;
    // Without a cursor: what comes after the topic's last message now.
    let mut from = match (given, client.topic_head(0, &key)?) {
        (Some(c), _) => Some(c),
        (None, Some(head)) => Some((head.last_id, head.incarnation)),
        (None, None) => None,
    };
    let topics = [(0, key.clone())];
    let mut settled = poll.settled;
    loop {
        if let Some(at) = settled.take()
            && let Some(Err(e)) = waiting
                .until(client.wait(&topics, at, waiting.left()))
                .await
        {
            return Err(e.into());
        }
        let at = client.engine().applied_index();
        if let Some(info) = client.topic_head(0, &key)? {
            // (Incarnation 0: a cursor from before the topic existed, never a reset.)
            let reset = from.is_some_and(|(_, incarnation)| {
                incarnation != 0 && incarnation != info.incarnation
            });
            let start = match from {
                Some((id, _)) if !reset => Bound::Excluded(id),
                _ => Bound::Unbounded,
            };
            let messages =
                client.read_range(0, &key, start, Bound::Unbounded, Some(poll.limit), false)?;
            let next_id = messages.last().map(|m| m.id).or(match start {
                Bound::Excluded(id) => Some(id),
                _ => None,
            });
            let next = next_id.map(|id| cursor(id, info.incarnation));
            if !messages.is_empty() || reset || waiting.over() {
                let settled = (messages.len() < poll.limit && !reset).then_some(at);
                let messages = messages
                    .iter()
                    .map(|m| Rendered::new(&message_json(topic, m, cursor(m.id, info.incarnation))))
                    .collect();
                return Ok(Batch {
                    messages,
                    next,
                    reset,
                    settled,
                });
            }
            from = next_id.map(|id| (id, info.incarnation));
        } else if waiting.over() {
            let next = from.map(|(id, incarnation)| cursor(id, incarnation));
            return Ok(Batch {
                messages: Vec::new(),
                next,
                reset: false,
                settled: None,
            });
        }
        let left = waiting.left();
        if let Some(Err(e)) = waiting.until(client.wait(&topics, at, left)).await {
            return Err(e.into());
        }
    }
}

/// A log position cursor: `INDEX.SUB`.
pub(crate) fn position(s: &str) -> Result<(u64, u16), Failure> {
    let wrong = || {
        bad(
            "bad_cursor",
            format!("{s:?} is not a cursor of a filter poll (INDEX.SUB, as its \"next\")"),
        )
    };
    let (index, sub) = s.split_once('.').ok_or_else(wrong)?;
    Ok((
        index.parse().map_err(|_| wrong())?,
        sub.parse().map_err(|_| wrong())?,
    ))
}

/// A poll of several topics or a filter, by log position.
async fn positions(client: &Client, poll: &Poll, waiting: &mut Waiting) -> Result<Batch, Failure> {
    let filters: Vec<Bytes> = match &poll.filter {
        Some(f) => vec![Bytes::copy_from_slice(f.as_bytes())],
        None => poll
            .topics
            .iter()
            .map(|t| Bytes::copy_from_slice(t.as_bytes()))
            .collect(),
    };
    for f in &filters {
        topic_filter::check_filter(f).map_err(|e| {
            bad(
                "bad_filter",
                format!("{:?}: {e}", String::from_utf8_lossy(f)),
            )
        })?;
    }
    let filters: Vec<&[u8]> = filters.iter().map(|f| f.as_ref()).collect();
    // Without a cursor: what comes after the entries applied now.
    let mut from = match &poll.after {
        Some(c) => position(c)?,
        None => (client.engine().applied_index(), u16::MAX),
    };
    let mut settled = poll.settled;
    loop {
        if let Some(at) = settled.take()
            && let Some(Err(e)) = waiting
                .until(client.wait_filters(&filters, at, waiting.left()))
                .await
        {
            return Err(e.into());
        }
        let at = client.engine().applied_index();
        // From the cursor's own entry (the rest of it may be new), keeping what is after it.
        let messages: Vec<_> = client
            .read_filters(
                &filters,
                from.0.saturating_sub(1),
                poll.limit.saturating_add(1),
            )?
            .into_iter()
            .filter(|m| (m.message.log_index, m.message.sub) > from)
            .take(poll.limit)
            .collect();
        if let Some(last) = messages.last() {
            let messages: Vec<Rendered> = messages
                .iter()
                .map(|m| {
                    let here = format!("{}.{}", m.message.log_index, m.message.sub);
                    let topic = String::from_utf8_lossy(&m.topic);
                    Rendered::new(&message_json(&topic, &m.message, here))
                })
                .collect();
            let next = format!("{}.{}", last.message.log_index, last.message.sub);
            let settled = (messages.len() < poll.limit).then_some(at);
            return Ok(Batch {
                messages,
                next: Some(next),
                reset: false,
                settled,
            });
        }
        // Nothing up to `at`: the next read starts after it.
        from = from.max((at, u16::MAX));
        if waiting.over() {
            let next = format!("{}.{}", from.0, from.1);
            return Ok(Batch {
                messages: Vec::new(),
                next: Some(next),
                reset: false,
                settled: None,
            });
        }
        let left = waiting.left();
        if let Some(Err(e)) = waiting.until(client.wait_filters(&filters, at, left)).await {
            return Err(e.into());
        }
    }
}
