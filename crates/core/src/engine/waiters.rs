//! Readers waiting for new messages on topics (XREAD BLOCK, long-poll, subscribers). A commit
//! wakes exactly the waiters of the topics it touched and hands them the applied entry, shared
//! (`Arc`): a thousand waiters at the head cost one decode and no reads. Idle waiters cost no CPU.
//! MQTT filter waiters are checked against each touched db-0 topic (a list, not a trie: cost
//! per commit is filters × topics touched).
//! This module never decides what a waiter reads; it only says that something arrived.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::topic_filter;
use crate::store::LogEntry;

/// A topic: `(db, key)`.
pub type TopicKey = (u8, Bytes);

#[derive(Debug, Default)]
struct Inner {
    by_topic: HashMap<TopicKey, Vec<u64>>,
    /// `(waiter, filter)` of filter waiters (db 0).
    by_filter: Vec<(u64, Bytes)>,
    waiting: HashMap<u64, oneshot::Sender<Arc<LogEntry>>>,
    next_id: u64,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Waiters {
    inner: Mutex<Inner>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter on `topics`; the receiver gets the first applied entry that adds a
    /// message to any of them.
    pub fn register(&self, topics: &[TopicKey]) -> (u64, oneshot::Receiver<Arc<LogEntry>>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.waiting.insert(id, tx);
        for t in topics {
            inner.by_topic.entry(t.clone()).or_default().push(id);
        }
        (id, rx)
    }

    /// Registers a waiter on the db-0 topics matched by the valid MQTT `filter`.
    pub fn register_filter(&self, filter: Bytes) -> (u64, oneshot::Receiver<Arc<LogEntry>>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.waiting.insert(id, tx);
        inner.by_filter.push((id, filter));
        (id, rx)
    }

    /// Removes a waiter that gave up (timeout, disconnect).
    pub fn cancel(&self, id: u64, topics: &[TopicKey]) {
        let mut inner = self.lock();
        inner.waiting.remove(&id);
        inner.by_filter.retain(|(w, _)| *w != id);
        for t in topics {
            if let Some(ids) = inner.by_topic.get_mut(t) {
                ids.retain(|w| *w != id);
                if ids.is_empty() {
                    inner.by_topic.remove(t);
                }
            }
        }
    }

    /// Wakes the waiters of `topics` with `entry`.
    pub fn wake<'a>(&self, entry: &Arc<LogEntry>, topics: impl Iterator<Item = (u8, &'a Bytes)>) {
        let mut senders = Vec::new();
        {
            let mut inner = self.lock();
            let inner = &mut *inner;
            for (db, key) in topics {
                if db == 0
                    && !inner.by_filter.is_empty()
                    && topic_filter::check_topic_name(key).is_ok()
                {
                    let waiting = &mut inner.waiting;
                    inner.by_filter.retain(|(id, filter)| {
                        if !topic_filter::filter_matches(filter, key) {
                            return true;
                        }
                        senders.extend(waiting.remove(id));
                        false
                    });
                }
                let Some(ids) = inner.by_topic.remove(&(db, key.clone())) else {
                    continue;
                };
                for id in ids {
                    if let Some(tx) = inner.waiting.remove(&id) {
                        senders.push(tx);
                    }
                }
            }
        }
        for tx in senders {
            let _ = tx.send(entry.clone());
        }
    }

    /// Waiters registered (for tests and metrics).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }
}
