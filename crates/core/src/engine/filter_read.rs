//! Reading by MQTT filter from a log-index position: the messages of every db-0 topic that any
//! of the filters matches (topics created since included), each once however many filters
//! match it, in log order. The position is a log index, so one cursor covers any number of
//! topics (MQTT persistent sessions, HTTP filter long-polls).
//!
//! The cost is finding the matching topics in the topic index (the matching branches only),
//! their queue reads from the position (a binary search each, then a merge of their queues)
//! and one CommitLog read per message returned — never a scan of the log or of every topic.
//! Reads only applied state; changes nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use bytes::Bytes;

use super::{Engine, EngineError, Message, Result, topic_filter};
use crate::store::{CqEntry, LogIndex, Topic};

/// A message read by filter, with the topic it was published to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    /// The topic (a db-0 key).
    pub topic: Bytes,
    /// The message.
    pub message: Message,
}

/// Queue entries read ahead per topic while merging.
const CHUNK: u64 = 64;

/// One matching topic's place in the merge.
struct Cursor {
    topic: Topic,
    /// Next queue position to read.
    next: u64,
    /// Entries read and not merged yet (live only), oldest first.
    buffered: std::collections::VecDeque<CqEntry>,
}

impl Engine {
    /// Messages of the db-0 topics matching any of `filters` that came from log entries after
    /// `after`, in log order, each once: at most `count`, except that a read never ends inside
    /// a log entry (all messages of its last entry are included), so the last message's log
    /// index is the next call's `after`.
    pub fn read_filters(
        &self,
        filters: &[&[u8]],
        after: LogIndex,
        count: usize,
    ) -> Result<Vec<TopicMessage>> {
        for f in filters {
            topic_filter::check_filter(f).map_err(EngineError::BadTopic)?;
        }
        let store = self.store();
        // One point in time for the topics and their queues: every topic created up to `bound`
        // is in the index taken after it, and entries after `bound` (whose topics may not be)
        // are left to the next read. Without it a topic created just now could be missed while
        // a later message of another topic is returned, and a cursor would move past the first.
        let bound = store.dispatched_index();
        // The matching topics, each once however many filters match it.
        let keys = self.inner.matching_topics(filters);
        let mut cursors = Vec::new();
        for key in keys {
            let Some(t) = store.topic(0, &key) else {
                continue; // dropped since the index was built
            };
            if t.first_live >= t.len {
                continue;
            }
            let next = store.seek_log_index(&t, after.saturating_add(1))?;
            if next < t.len {
                cursors.push(Cursor {
                    topic: t,
                    next,
                    buffered: Default::default(),
                });
            }
        }
        // A heap of each cursor's head: (log index, sub-record, cursor).
        let mut heap = BinaryHeap::new();
        for (k, c) in cursors.iter_mut().enumerate() {
            if let Some(e) = head(store, c)? {
                heap.push(Reverse((e.log_index, e.sub, k)));
            }
        }
        let mut out: Vec<TopicMessage> = Vec::new();
        while let Some(Reverse((index, _, k))) = heap.pop() {
            if index > bound
                || (out.len() >= count && out.last().is_some_and(|m| m.message.log_index != index))
            {
                break;
            }
            let c = &mut cursors[k];
            let Some(e) = c.buffered.pop_front() else {
                continue;
            };
            out.push(TopicMessage {
                topic: c.topic.key.clone(),
                message: self.message_of(&c.topic, &e)?,
            });
            if let Some(e) = head(store, c)? {
                heap.push(Reverse((e.log_index, e.sub, k)));
            }
        }
        Ok(out)
    }
}

/// The cursor's next live entry, reading ahead when its buffer is empty.
fn head(store: &crate::store::MessageStore, c: &mut Cursor) -> Result<Option<CqEntry>> {
    while c.buffered.is_empty() && c.next < c.topic.len {
        let n = (c.topic.len - c.next).min(CHUNK);
        c.buffered.extend(
            store
                .read_queue(&c.topic, c.next, n)?
                .into_iter()
                .map(|(_, e)| e),
        );
        c.next += n;
    }
    Ok(c.buffered.front().copied())
}
