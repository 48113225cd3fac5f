//! Live tails shared by every follower of a topic at its head. Ten thousand WebSocket or SSE
//! clients following one topic would otherwise each wait on the engine, read each new message
//! from the store and render its JSON; with a hub, one task per topic does that once and hands
//! the rendered message to all of them (a `broadcast` channel).
//!
//! A follower (`poll::Follow`) reads by its own cursor until a read finds it at the head, then
//! joins the topic's hub and reads once more (what was committed before it joined is not in
//! the channel, so that read covers it). From then on it takes the hub's messages, passing
//! over those at or before its cursor. It goes back to reading by cursor — and joins again
//! later — when it falls more than `CAPACITY` messages behind, when the topic is deleted and
//! created again, or when the hub stops. So a follower gets the same messages, in the same
//! order, either way.
//!
//! Owns the hubs and their tasks; never decides what a follower may read (a follower joins only
//! after its own read of the topic, through its own principal, succeeded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use manifold_core::engine::Client;
use manifold_core::store::StreamId;
use tokio::sync::{broadcast, watch};

use crate::poll::{Follow, Poll, Rendered};

/// Messages a hub holds for its slowest follower; one further behind reads by cursor. (The
/// ring is allocated whole: about 100 bytes a message, per followed topic.)
const CAPACITY: usize = 128;
/// How often a hub without messages looks whether anyone still follows it.
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// What a hub hands its followers.
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
    /// Which hub of the topic (a stopping one removes its entry only if still its own).
    generation: u64,
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

    /// The topic's hub, started (reading through `client`) if it has none.
    pub(crate) fn join(
        self: &Arc<Self>,
        client: &Client,
        topic: &str,
    ) -> broadcast::Receiver<Item> {
        let key = Bytes::copy_from_slice(topic.as_bytes());
        let mut hubs = self.lock();
        if let Some(hub) = hubs.get(&key) {
            return hub.tx.subscribe();
        }
        let generation = {
            let mut g = self
                .next_generation
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *g += 1;
            *g
        };
        let (tx, rx) = broadcast::channel(CAPACITY);
        hubs.insert(
            key.clone(),
            Hub {
                tx: tx.clone(),
                generation,
            },
        );
        tokio::spawn(run(
            self.clone(),
            client.clone(),
            topic.to_string(),
            key,
            tx,
            generation,
        ));
        rx
    }

    /// Removes the hub's entry if it is still this one (and nobody follows it, unless `force`);
    /// whether it did.
    fn leave(
        &self,
        key: &Bytes,
        tx: &broadcast::Sender<Item>,
        generation: u64,
        force: bool,
    ) -> bool {
        let mut hubs = self.lock();
        if !force && tx.receiver_count() > 0 {
            return false;
        }
        if hubs.get(key).is_some_and(|h| h.generation == generation) {
            hubs.remove(key);
        }
        true
    }
}

/// A hub: follows the topic from its head as it is when the hub starts, and hands each batch to
/// the followers, until none is left (checked as each batch comes, and every `IDLE_CHECK`),
/// the listener stops, or a read fails (its followers then read by cursor, and meet the
/// failure themselves).
async fn run(
    hubs: Arc<Hubs>,
    client: Client,
    topic: String,
    key: Bytes,
    tx: broadcast::Sender<Item>,
    generation: u64,
) {
    let Ok(poll) = Poll::new(vec![topic.clone()], None, None) else {
        hubs.leave(&key, &tx, generation, true);
        return;
    };
    let mut follow = Follow::new(client, poll, hubs.stopped.clone(), None);
    loop {
        if hubs.leave(&key, &tx, generation, false) {
            return;
        }
        let deadline = tokio::time::Instant::now() + IDLE_CHECK;
        let Ok(batch) = follow.next_until(deadline).await else {
            hubs.leave(&key, &tx, generation, true);
            return;
        };
        if batch.reset {
            let _ = tx.send(Item::Reset);
        }
        for rendered in batch.messages {
            let Ok((id, incarnation)) = crate::rest::parse_cursor(&rendered.cursor) else {
                continue;
            };
            let _ = tx.send(Item::Message {
                id,
                incarnation,
                rendered,
            });
        }
        if follow.stopped() {
            hubs.leave(&key, &tx, generation, true);
            return;
        }
    }
}
