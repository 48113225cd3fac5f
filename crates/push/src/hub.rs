//! Live tails shared by every follower of a topic at its head. Ten thousand WebSocket or SSE
//! clients following one topic would otherwise each wait on the engine, read each new message
//! from the store and render its JSON; with a hub, one task per topic does that once and hands
//! the rendered message to all of them.
//!
//! Two kinds of follower take from a hub:
//!
//! - A reader (`poll::Follow`: long-polls, SSE) reads by its own cursor until a read finds it
//!   at the head, then joins the topic's hub (a `broadcast` channel) and reads once more (what
//!   was committed before it joined is not in the channel, so that read covers it). From then
//!   on it takes the hub's messages, passing over those at or before its cursor. It goes back
//!   to reading by cursor — and joins again later — when it falls more than `CAPACITY`
//!   messages behind, when the topic is deleted and created again, or when the hub stops.
//! - A WebSocket subscription at the head attaches a [`Sink`]: the hub writes each message's
//!   frame to the connection itself (`outbox.rs`), so a message costs a subscriber one write
//!   and no task wake-up. The hub keeps its last `CAPACITY` messages; a subscription attaches
//!   only if its cursor is among them or after (it is written what it has not had yet, under
//!   the hub's lock, so nothing falls between its read and the hub's writes). The hub lets go
//!   of it — and it reads by cursor again — when its connection's queue is full, when the
//!   topic is created again, or when the hub stops.
//!
//! Either way a follower gets the same messages, in the same order, each once.
//!
//! Owns the hubs, their tasks and the sinks' cursors while attached; never decides what a
//! follower may read (a follower joins or attaches only after its own read of the topic,
//! through its own principal, succeeded).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use manifold_core::engine::Client;
use manifold_core::store::StreamId;
use tokio::sync::{Notify, broadcast, watch};

use crate::outbox::{Outbox, Sent};
use crate::poll::{Follow, Poll, Rendered};

/// Messages a hub holds for its slowest reader, and keeps for subscriptions attaching; one
/// further behind reads by cursor. (The ring is allocated whole: about 100 bytes a message,
/// per followed topic.)
const CAPACITY: usize = 128;
/// How often a hub without messages looks whether anyone still follows it.
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// What a hub hands its readers.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// The next message of the topic.
    Message {
        id: StreamId,
        incarnation: u64,
        rendered: Rendered,
    },
    /// The topic was deleted and created again: read by cursor (which says `reset`).
    Reset,
}

/// Every topic's hub.
pub(crate) struct Hubs {
    by_topic: Mutex<HashMap<Bytes, Hub>>,
    stopped: watch::Receiver<bool>,
    next_generation: Mutex<u64>,
}

struct Hub {
    tx: broadcast::Sender<Item>,
    live: Arc<Live>,
    /// Which hub of the topic (a stopping one removes its entry only if still its own).
    generation: u64,
}

/// What a hub writes to its sinks from.
struct Live {
    state: Mutex<LiveState>,
}

struct LiveState {
    /// Every message of this incarnation after this ID passes through `recent` (`None`: the hub
    /// does not know where it stands; nothing attaches).
    floor: Option<(StreamId, u64)>,
    /// The last messages, oldest first.
    recent: VecDeque<(StreamId, u64, Rendered)>,
    /// Subscriptions attached since the hub took its last batch (it takes them with the next).
    added: Vec<Arc<Sink>>,
    /// The hub stopped: nothing attaches.
    stopped: bool,
    /// The topic was created again: the next message starts the incarnation the hub follows.
    fresh: bool,
}

/// A WebSocket subscription a hub may write to: its connection, its frame's start, and its
/// cursor while the hub writes.
pub(crate) struct Sink {
    /// The connection's outbox (weak: a hub holding the sink does not keep a connection that
    /// ended, or its socket, open).
    outbox: Weak<Outbox>,
    /// The frame before the message's own fields: `{"type":"message","sub":ID,`.
    head: Box<str>,
    state: Mutex<SinkState>,
    /// Wakes the subscription when the hub lets go of it.
    released: Notify,
}

struct SinkState {
    /// The last message the subscription has had, and its topic's incarnation.
    last: StreamId,
    incarnation: u64,
    /// A hub writes to it.
    attached: bool,
    /// In a hub's list (`added` or the hub's own), attached or not yet dropped from it.
    listed: bool,
    /// Unsubscribed: nothing more is written.
    cancelled: bool,
}

impl Sink {
    pub(crate) fn new(outbox: &Arc<Outbox>, head: String) -> Arc<Sink> {
        Arc::new(Sink {
            outbox: Arc::downgrade(outbox),
            head: head.into_boxed_str(),
            state: Mutex::new(SinkState {
                last: StreamId::new(0, 0),
                incarnation: 0,
                attached: false,
                listed: false,
                cancelled: false,
            }),
            released: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection's outbox, while the connection lasts.
    pub(crate) fn outbox(&self) -> Option<Arc<Outbox>> {
        self.outbox.upgrade()
    }

    /// The frame before a message's own fields.
    pub(crate) fn head(&self) -> &str {
        &self.head
    }

    /// The last message written while attached.
    pub(crate) fn last(&self) -> (StreamId, u64) {
        let state = self.lock();
        (state.last, state.incarnation)
    }

    /// No hub writes to it any more (once this returns, none will): an unsubscribe.
    pub(crate) fn cancel(&self) {
        let mut state = self.lock();
        state.cancelled = true;
        state.attached = false;
    }

    /// Waits until the hub lets go of it.
    pub(crate) async fn released(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.lock().attached {
                return;
            }
            released.await;
        }
    }

    /// Writes the messages it has not had; whether the hub keeps it in its list (`false`: the
    /// hub let go of it — its queue is full, its connection closing — or it was detached).
    fn write(&self, messages: &[(StreamId, u64, Rendered)]) -> bool {
        let mut state = self.lock();
        for (id, incarnation, rendered) in messages {
            if !self.write_one(&mut state, (*id, *incarnation), rendered) {
                break;
            }
        }
        state.listed = state.attached;
        state.listed
    }

    /// One message unless it has had it; `false` when the hub lets go of it or has.
    fn write_one(
        &self,
        state: &mut SinkState,
        (id, incarnation): (StreamId, u64),
        rendered: &Rendered,
    ) -> bool {
        if !state.attached {
            return false;
        }
        if id <= state.last {
            return true;
        }
        let sent = match self.outbox.upgrade() {
            Some(outbox) => outbox.try_text(&[self.head.as_bytes(), rendered.fields().as_bytes()]),
            None => Sent::Closed,
        };
        match sent {
            Sent::Taken => {
                (state.last, state.incarnation) = (id, incarnation);
                true
            }
            Sent::Full | Sent::Closed => {
                state.attached = false;
                self.released.notify_waiters();
                false
            }
        }
    }

    /// Whether a hub with no message for it keeps it (attached, its connection open).
    fn keep(&self) -> bool {
        let mut state = self.lock();
        if state.attached && !self.outbox.upgrade().is_some_and(|o| o.open()) {
            state.attached = false;
            self.released.notify_waiters();
        }
        state.listed = state.attached;
        state.listed
    }

    /// The hub lets go of it and drops it from its list.
    fn release(&self) {
        let mut state = self.lock();
        state.attached = false;
        state.listed = false;
        self.released.notify_waiters();
    }
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches `sink` after `at` (the subscription's cursor: `None` or `0-0@0` when the topic
    /// did not exist when it looked) if the hub has every message after it: it is written
    /// those it has not had, then each new one. `now` is the topic's incarnation as it is now
    /// (`None`: missing). Whether or not, the subscription goes on after `sink.last()` (for a
    /// refused `None`: `0-0@0`, the topic's first message whenever it comes).
    fn attach(&self, sink: &Arc<Sink>, at: Option<(StreamId, u64)>, now: Option<u64>) -> bool {
        let zero = StreamId::new(0, 0);
        let mut live = self.lock();
        let (last, incarnation, covered) = match (at, live.floor) {
            (Some((id, i)), Some((floor, hub))) if i != 0 => (id, i, i == hub && id >= floor),
            // Before the topic existed: covered by a hub that passes it from its first message
            // (started while it was missing, or since it was created again) — unless that
            // incarnation is gone (the topic was deleted since).
            (None | Some((_, 0)), floor) if at.is_none_or(|(id, _)| id == zero) => match floor {
                None => (zero, 0, live.fresh),
                Some((floor, hub)) if floor == zero && now == Some(hub) => (zero, hub, true),
                Some(_) => (zero, 0, false),
            },
            (Some((id, i)), _) => (id, i, false),
            (None, _) => (zero, 0, false),
        };
        let mut state = sink.lock();
        (state.last, state.incarnation) = (last, incarnation);
        if state.cancelled || live.stopped || !covered {
            return false;
        }
        state.attached = true;
        for (id, incarnation, rendered) in &live.recent {
            if !sink.write_one(&mut state, (*id, *incarnation), rendered) {
                break;
            }
        }
        // (Still in the hub's list from an earlier attachment: not listed twice.)
        if state.attached && !std::mem::replace(&mut state.listed, true) {
            live.added.push(sink.clone());
        }
        state.attached
    }

    /// Lets go of the sinks attached since the last batch; with `stop`, none attaches again.
    fn release_added(&self, stop: bool) {
        let mut live = self.lock();
        live.stopped |= stop;
        for sink in live.added.drain(..) {
            sink.release();
        }
    }
}

impl Hubs {
    pub(crate) fn new(stopped: watch::Receiver<bool>) -> Arc<Hubs> {
        Arc::new(Hubs {
            by_topic: Mutex::new(HashMap::new()),
            stopped,
            next_generation: Mutex::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Bytes, Hub>> {
        self.by_topic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The topic's hub, started (reading through `client`) if it has none; `f` runs on it
    /// under the lock a stopping hub takes too.
    fn with_hub<T>(self: &Arc<Self>, client: &Client, topic: &str, f: impl FnOnce(&Hub) -> T) -> T {
        let key = Bytes::copy_from_slice(topic.as_bytes());
        let mut hubs = self.lock();
        if let Some(hub) = hubs.get(&key) {
            return f(hub);
        }
        let generation = {
            let mut g = self
                .next_generation
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *g += 1;
            *g
        };
        // Where the hub starts: the topic's head now (it passes everything after it).
        let floor = client
            .topic_head(0, topic.as_bytes())
            .ok()
            .flatten()
            .map(|h| (h.last_id, h.incarnation));
        let (tx, _) = broadcast::channel(CAPACITY);
        let live = Arc::new(Live {
            state: Mutex::new(LiveState {
                floor,
                recent: VecDeque::with_capacity(CAPACITY),
                added: Vec::new(),
                stopped: false,
                // (The topic is missing: the hub passes it from its first message.)
                fresh: floor.is_none(),
            }),
        });
        let hub = Hub {
            tx: tx.clone(),
            live: live.clone(),
            generation,
        };
        let out = f(&hub);
        hubs.insert(key.clone(), hub);
        tokio::spawn(run(
            self.clone(),
            client.clone(),
            (topic.to_string(), key, floor),
            tx,
            live,
            generation,
        ));
        out
    }

    /// Joins the topic's hub as a reader.
    pub(crate) fn join(
        self: &Arc<Self>,
        client: &Client,
        topic: &str,
    ) -> broadcast::Receiver<Item> {
        self.with_hub(client, topic, |hub| hub.tx.subscribe())
    }

    /// Attaches `sink` to the topic's hub after `at`, the subscription's cursor at the head
    /// (`None`: the topic did not exist when it looked); whether the hub writes to it now (if
    /// not, it reads by cursor).
    pub(crate) fn attach(
        self: &Arc<Self>,
        client: &Client,
        topic: &str,
        sink: &Arc<Sink>,
        at: Option<(StreamId, u64)>,
    ) -> bool {
        // (Read before the hub's lock: a topic created since is fine, the hub passes it; one
        // deleted since is not covered.)
        let now = client
            .topic_head(0, topic.as_bytes())
            .ok()
            .flatten()
            .map(|h| h.incarnation);
        self.with_hub(client, topic, |hub| hub.live.attach(sink, at, now))
    }

    /// Removes the hub's entry if it is still this one (and nobody follows it, unless `force`:
    /// no reader, no sink in `sinks` — the hub's list — or attached since); whether it did. A
    /// removed hub lets go of its sinks.
    fn leave(
        &self,
        key: &Bytes,
        (tx, live, sinks): (&broadcast::Sender<Item>, &Live, &mut Vec<Arc<Sink>>),
        generation: u64,
        force: bool,
    ) -> bool {
        let mut hubs = self.lock();
        if !force {
            sinks.retain(|s| s.keep());
            if tx.receiver_count() > 0 || !sinks.is_empty() || !live.lock().added.is_empty() {
                return false;
            }
        }
        if hubs.get(key).is_some_and(|h| h.generation == generation) {
            hubs.remove(key);
        }
        live.release_added(true);
        for sink in sinks.drain(..) {
            sink.release();
        }
        true
    }
}

/// A hub: follows the topic from its head as it was when the hub started, hands each batch to
/// its readers and writes it to its sinks, until none is left (checked as each batch comes,
/// and every `IDLE_CHECK`), the listener stops, or a read fails (its followers then read by
/// cursor, and meet the failure themselves).
async fn run(
    hubs: Arc<Hubs>,
    client: Client,
    (topic, key, floor): (String, Bytes, Option<(StreamId, u64)>),
    tx: broadcast::Sender<Item>,
    live: Arc<Live>,
    generation: u64,
) {
    // From the head as it was; a missing topic from its first message (`0-0@0`: before it
    // existed, never a reset).
    let (id, incarnation) = floor.unwrap_or((StreamId::new(0, 0), 0));
    let after = Some(crate::rest::cursor(id, incarnation));
    // The subscriptions it writes to (owned here: attaching ones wait in `added`).
    let mut sinks: Vec<Arc<Sink>> = Vec::new();
    let Ok(poll) = Poll::new(vec![topic.clone()], None, after) else {
        hubs.leave(&key, (&tx, &live, &mut sinks), generation, true);
        return;
    };
    let mut follow = Follow::new(client, poll, hubs.stopped.clone(), None);
    let mut messages = Vec::new();
    loop {
        if hubs.leave(&key, (&tx, &live, &mut sinks), generation, false) {
            return;
        }
        let deadline = tokio::time::Instant::now() + IDLE_CHECK;
        let Ok(batch) = follow.next_until(deadline).await else {
            hubs.leave(&key, (&tx, &live, &mut sinks), generation, true);
            return;
        };
        if batch.reset {
            let _ = tx.send(Item::Reset);
            forget(&live, &mut sinks, true);
        }
        messages.clear();
        for rendered in batch.messages {
            let Ok((id, incarnation)) = crate::rest::parse_cursor(&rendered.cursor) else {
                continue;
            };
            if tx.receiver_count() > 0 {
                let _ = tx.send(Item::Message {
                    id,
                    incarnation,
                    rendered: rendered.clone(),
                });
            }
            messages.push((id, incarnation, rendered));
        }
        if record(&live, &messages, &mut sinks) {
            // Written outside the lock: a subscription attaching meanwhile is written these
            // from `recent`, and skips them here.
            sinks.retain(|sink| sink.write(&messages));
        } else {
            forget(&live, &mut sinks, false);
        }
        if follow.stopped() {
            hubs.leave(&key, (&tx, &live, &mut sinks), generation, true);
            return;
        }
    }
}

/// The hub no longer knows where it stands (the topic was created again: with `fresh`, its
/// next message starts the new incarnation): it lets go of every sink, and none attaches until
/// it knows again.
fn forget(live: &Live, sinks: &mut Vec<Arc<Sink>>, fresh: bool) {
    let mut state = live.lock();
    state.recent.clear();
    state.floor = None;
    state.fresh = fresh;
    drop(state);
    live.release_added(false);
    for sink in sinks.drain(..) {
        sink.release();
    }
}

/// Keeps a batch's messages in `recent` (moving the floor past those that leave it) and takes
/// the sinks attached since the last batch into `sinks`; `false` if a message is not of the
/// incarnation the hub follows (not expected).
fn record(live: &Live, messages: &[(StreamId, u64, Rendered)], sinks: &mut Vec<Arc<Sink>>) -> bool {
    let mut state = live.lock();
    for (id, incarnation, rendered) in messages {
        match state.floor {
            Some((_, i)) if i == *incarnation => {}
            // The first message of a new incarnation: the hub has all of it.
            None if state.fresh => {
                state.floor = Some((StreamId::new(0, 0), *incarnation));
                state.fresh = false;
            }
            _ => return false,
        }
        if state.recent.len() == CAPACITY
            && let Some((gone, _, _)) = state.recent.pop_front()
        {
            state.floor = Some((gone, *incarnation));
        }
        state
            .recent
            .push_back((*id, *incarnation, rendered.clone()));
    }
    sinks.append(&mut state.added);
    true
}
