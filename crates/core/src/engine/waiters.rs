//! Readers waiting for new messages on topics (XREAD BLOCK, long-poll, subscribers). A commit
//! wakes exactly the waiters of the topics it touched and hands them the applied entry, shared
//! (`Arc`): a thousand waiters at the head cost one decode and no reads. Idle waiters cost no CPU.
//! MQTT filter waiters are checked against each touched db-0 topic (a list, not a trie: cost
//! per commit is filters × topics touched).
//! Waiters registered with an order (blocked group readers) also get a [`Turn`]: a place in
//! their topic's line, which lasts across wakes, so the reader that has waited longest reads
//! first and gets the new entries first (Redis serves blocked clients FIFO per stream). A
//! reader joins the line when it is woken, or when it finds on registering that it missed an
//! entry, and leaves it when it drops its turn.
//! This module never decides what a waiter reads; it only says that something arrived.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};

use super::topic_filter;
use crate::store::LogEntry;

/// A topic: `(db, key)`.
pub type TopicKey = (u8, Bytes);

/// What a woken waiter gets: the entry, and its turn if it waits in order.
pub type Woken = (Arc<LogEntry>, Option<Turn>);

#[derive(Debug)]
struct Waiting {
    tx: oneshot::Sender<Woken>,
    /// Ordered waiters: their place (smaller first).
    order: Option<u64>,
    /// The log index it waits after.
    after: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each topic's waiters by id: registration order (woken first come, first served; a
    /// cancel is a lookup, not a scan — ten thousand followers of a topic each cancel their
    /// wait once woken).
    by_topic: HashMap<TopicKey, BTreeSet<u64>>,
    /// The filter of each filter waiter (db 0), in registration order (woken first come,
    /// first served; a cancel costs a lookup, not a scan).
    by_filter: BTreeMap<u64, Bytes>,
    waiting: HashMap<u64, Waiting>,
    next_id: u64,
    /// The lines of ordered readers, per topic (gone once no turn holds them).
    lines: HashMap<TopicKey, Weak<Line>>,
}

impl Inner {
    /// A place in `topic`'s line for waiter `id` of `order`.
    fn join(&mut self, topic: &TopicKey, order: u64, id: u64) -> Turn {
        let line = match self.lines.get(topic).and_then(Weak::upgrade) {
            Some(line) => line,
            None => {
                let line = Arc::new(Line::default());
                self.lines.retain(|_, l| l.strong_count() > 0);
                self.lines.insert(topic.clone(), Arc::downgrade(&line));
                line
            }
        };
        let place = (order, id);
        line.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(place);
        line.changed.notify_waiters();
        Turn {
            line,
            place,
            topic: topic.clone(),
        }
    }
}

/// A topic's line of ordered readers wanting to read: `(order, waiter id)`, first first.
#[derive(Debug, Default)]
struct Line {
    pending: Mutex<BTreeSet<(u64, u64)>>,
    changed: Notify,
}

/// An ordered reader's place in its topic's line: it reads when [`Turn::is_first`] (awaiting
/// [`Turn::changed`] otherwise); dropping it (once its read is done, or when it gives up) lets
/// the next one go.
#[derive(Debug)]
pub struct Turn {
    line: Arc<Line>,
    place: (u64, u64),
    topic: TopicKey,
}

impl Turn {
    /// The topic whose line this is.
    pub fn topic(&self) -> &TopicKey {
        &self.topic
    }

    /// Whether no reader is ahead of this one in the line.
    pub fn is_first(&self) -> bool {
        self.lock().first() == Some(&self.place)
    }

    /// Completes when the line changes (a reader joins or leaves it) after this call: create
    /// it before checking, await it after.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.line.changed.notified()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<(u64, u64)>> {
        self.line.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.lock().remove(&self.place);
        self.line.changed.notify_waiters();
    }
}

/// The registry.
#[derive(Debug, Default)]
pub struct Waiters {
    inner: Mutex<Inner>,
    /// Waiters registered: a commit with none to wake takes no lock.
    count: AtomicUsize,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `count` in step with the registry (called with it locked, after a change).
    fn counted(&self, inner: &Inner) {
        self.count.store(inner.waiting.len(), Ordering::SeqCst);
    }

    /// Registers a waiter on `topics`; the receiver gets the first applied entry that adds a
    /// message to any of them.
    /// With `order`, it takes its turn among the ordered waiters the same commit wakes.
    pub fn register(
        &self,
        topics: &[TopicKey],
        order: Option<u64>,
        after: u64,
    ) -> (u64, oneshot::Receiver<Woken>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.waiting.insert(id, Waiting { tx, order, after });
        self.counted(&inner);
        for t in topics {
            inner.by_topic.entry(t.clone()).or_default().insert(id);
        }
        (id, rx)
    }

    /// Registers a waiter on the db-0 topics matched by the valid MQTT `filter`.
    pub fn register_filter(&self, filter: Bytes) -> (u64, oneshot::Receiver<Woken>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.waiting.insert(
            id,
            Waiting {
                tx,
                order: None,
                after: 0,
            },
        );
        self.counted(&inner);
        inner.by_filter.insert(id, filter);
        (id, rx)
    }

    /// Removes a waiter that gave up (timeout, disconnect).
    pub fn cancel(&self, id: u64, topics: &[TopicKey]) {
        let mut inner = self.lock();
        inner.waiting.remove(&id);
        self.counted(&inner);
        inner.by_filter.remove(&id);
        for t in topics {
            if let Some(ids) = inner.by_topic.get_mut(t) {
                ids.remove(&id);
                if ids.is_empty() {
                    inner.by_topic.remove(t);
                }
            }
        }
    }

    /// Wakes the waiters of `topics` with `entry`; an ordered one joins the line of the topic
    /// that woke it.
    pub fn wake<'a>(&self, entry: &Arc<LogEntry>, topics: impl Iterator<Item = (u8, &'a Bytes)>) {
        if self.count.load(Ordering::SeqCst) == 0 {
            return; // nobody waits: no lock
        }
        let mut woken = Vec::new();
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            for (db, key) in topics {
                if db == 0
                    && !inner.by_filter.is_empty()
                    && topic_filter::check_topic_name(key).is_ok()
                {
                    let waiting = &mut inner.waiting;
                    inner.by_filter.retain(|id, filter| {
                        if !topic_filter::filter_matches(filter, key) {
                            return true;
                        }
                        woken.extend(waiting.remove(id).map(|w| (w.tx, None)));
                        false
                    });
                }
                let topic = (db, key.clone());
                let Some(ids) = inner.by_topic.remove(&topic) else {
                    continue;
                };
                for id in ids {
                    if let Some(w) = inner.waiting.remove(&id) {
                        let turn = w.order.map(|order| inner.join(&topic, order, id));
                        woken.push((w.tx, turn));
                    }
                }
            }
            self.counted(inner);
        }
        for (tx, turn) in woken {
            // A waiter gone meanwhile drops its turn with the value: the next one goes on.
            let _ = tx.send((entry.clone(), turn));
        }
    }

    /// A place in `topic`'s line for the ordered waiter `id` that found, on registering, that
    /// it had missed an entry (it reads at once, but in its turn); it leaves the registry. `None`
    /// if a commit woke it meanwhile: that wake gave it its place, and the turn is in its
    /// receiver. (Taking a second place would leave two turns on one place: dropping either
    /// would take the place from the other, which would then never be first.)
    pub fn join_missed(&self, topic: &TopicKey, order: u64, id: u64) -> Option<Turn> {
        let mut inner = self.lock();
        inner.waiting.remove(&id)?;
        self.counted(&inner);
        Some(inner.join(topic, order, id))
    }

    /// Whether a reader ahead of `turn` (smaller order) waits on its topic after a log index
    /// below `newest` (the entry of the topic's newest message): that entry is about to wake
    /// it, and it must read first.
    pub fn earlier_waiting(&self, turn: &Turn, newest: u64) -> bool {
        let inner = self.lock();
        inner.by_topic.get(&turn.topic).is_some_and(|ids| {
            ids.iter().any(|id| {
                inner
                    .waiting
                    .get(id)
                    .is_some_and(|w| w.order.is_some_and(|o| o < turn.place.0) && w.after < newest)
            })
        })
    }

    /// Waiters registered (for tests and metrics).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EntryKind;

    fn entry() -> Arc<LogEntry> {
        Arc::new(LogEntry {
            index: 1,
            term: 1,
            kind: EntryKind::Command,
            timestamp_ms: 0,
            command: Bytes::new(),
            records: Vec::new(),
        })
    }

    #[test]
    fn a_waiter_woken_while_it_takes_its_missed_turn_holds_one_place() {
        let waiters = Waiters::default();
        let topic: TopicKey = (0, Bytes::from_static(b"s"));
        let (first, mut rx) = waiters.register(std::slice::from_ref(&topic), Some(1), 0);
        // A commit wakes it while it is finding, on its own, that it missed that entry.
        waiters.wake(&entry(), std::iter::once((0, &topic.1)));
        assert!(waiters.join_missed(&topic, 1, first).is_none());
        let (_, turn) = rx.try_recv().expect("woken");
        let turn = turn.expect("a turn");
        // A reader behind it, and one that missed nothing while registering.
        let (second, _rx) = waiters.register(std::slice::from_ref(&topic), Some(2), 0);
        let behind = waiters.join_missed(&topic, 2, second).expect("not woken");
        assert_eq!(waiters.len(), 0);
        assert!(turn.is_first());
        assert!(!behind.is_first());
        drop(turn);
        assert!(behind.is_first());
    }
}
