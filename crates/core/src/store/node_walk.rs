//! Walks a topic's queue entries in order and groups them into the Redis stream nodes they
//! belong to ([`super::stream_node`]), handing each node out once nothing later can join it.
//!
//! An entry opens a node (`CQ_NODE_START`), joins an older one (`CQ_NODE_JOIN`, the node opened
//! `skip` node-openings back), or goes into the node of the entry before it. So a node's entries
//! need not be adjacent: between them lie only entries of nodes XDEL removed (none live). A node
//! is final once a later node has a live entry (that node was never removed, so every entry
//! after its start went into it or a later one), or the queue ends.
//!
//! This module reads queue entries and never writes anything.

use std::collections::VecDeque;

use super::consume_queue::{ConsumeQueues, CqEntry};
use super::entry::StreamId;
use super::error::Result;
use super::topics::Topic;

/// Queue entries read at a time.
const CHUNK: u64 = 128;

/// One node as the walk saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkNode {
    /// Position of the entry that opened it; `None`: opened before the walk began (the node
    /// holding the first position walked, with any other that began earlier and has entries
    /// after it — those are all removed ones).
    pub start: Option<u64>,
    /// Position just past its last entry.
    pub end: u64,
    /// Its live entries (neither deleted nor trimmed).
    pub live: u64,
    /// Of those, the ones at or after the walk's `split` position.
    pub live_from_split: u64,
    /// ID of its last entry, deleted or not (Redis's last ID of the node).
    pub last_id: StreamId,
    /// Entries the walk saw in it.
    pub members: u64,
}

impl WalkNode {
    fn new(start: Option<u64>) -> WalkNode {
        WalkNode {
            start,
            end: 0,
            live: 0,
            live_from_split: 0,
            last_id: StreamId::default(),
            members: 0,
        }
    }
}

/// How a walk reads the queue: `(from, count)` to the entries.
pub type Reader<'a> = Box<dyn FnMut(u64, u64) -> Result<Vec<CqEntry>> + 'a>;

/// A walk over `[from, len)` of one topic's queue.
pub struct NodeWalk<'a> {
    /// Reads `count` queue entries from a position.
    read: Reader<'a>,
    topic: &'a Topic,
    /// Next position to read.
    next: u64,
    /// Live entries at or after this position are counted apart (`live_from_split`).
    split: u64,
    /// Entries below this position are trimmed: never live.
    live_from: u64,
    /// Positions of the node-opening entries seen, in order; the `i`-th opened node `i + 1`.
    starts: Vec<u64>,
    /// Nodes not handed out yet, in order; `pending[k]` is node `handed + k` (node 0: the one
    /// opened before the walk).
    pending: VecDeque<WalkNode>,
    handed: usize,
    /// Node of the entry read last.
    current: usize,
    /// Whether the members below `split` of every pending node are kept (`keeping_members`).
    keep: bool,
    /// Those members, alongside `pending`.
    pending_members: VecDeque<Vec<(u64, CqEntry)>>,
    /// Those of the node handed out last.
    last_members: Vec<(u64, CqEntry)>,
    /// Entries read below `split`, and how many of them were deleted.
    seen_below: u64,
    deleted_below: u64,
}

impl<'a> NodeWalk<'a> {
    /// A walk from position `from` (at or above the topic's `first_live`).
    pub fn new(queues: &'a ConsumeQueues, topic: &'a Topic, from: u64) -> NodeWalk<'a> {
        Self::with_reader(
            topic,
            from,
            Box::new(move |at, count| queues.read(topic, at, count)),
        )
    }

    /// A walk reading through `read` (the dispatcher's, which sees entries not yet written).
    pub fn with_reader(topic: &'a Topic, from: u64, read: Reader<'a>) -> NodeWalk<'a> {
        NodeWalk {
            read,
            topic,
            next: from,
            split: u64::MAX,
            live_from: 0,
            starts: Vec::new(),
            pending: VecDeque::from([WalkNode::new(None)]),
            handed: 0,
            current: 0,
            keep: false,
            pending_members: VecDeque::from([Vec::new()]),
            last_members: Vec::new(),
            seen_below: 0,
            deleted_below: 0,
        }
    }

    /// Counts live entries at or after `split` apart.
    pub fn with_split(mut self, split: u64) -> Self {
        self.split = split;
        self
    }

    /// Counts entries below `first_live` as trimmed, never live (a walk begun below it).
    pub fn live_from(mut self, first_live: u64) -> Self {
        self.live_from = first_live;
        self
    }

    /// Keeps each node's members below `split` (all of them without a split), for
    /// [`members_of_last`](Self::members_of_last). Only nodes not yet final are held.
    pub fn keeping_members(mut self) -> Self {
        self.keep = true;
        self
    }

    /// The members kept of the node handed out last, in order.
    pub fn members_of_last(&self) -> &[(u64, CqEntry)] {
        &self.last_members
    }

    /// Entries read below `split`, and how many of those were deleted: all of `[from, split)`
    /// once a node opened at or after `split` has been handed out, or the walk ended.
    pub fn below_split(&self) -> (u64, u64) {
        (self.seen_below, self.deleted_below)
    }

    /// The next node once it is final, in order (empty nodes skipped); `None` at the end.
    pub fn next_final(&mut self) -> Result<Option<WalkNode>> {
        loop {
            let done = self.next >= self.topic.len;
            if !self.pending.is_empty() && (done || self.pending.iter().skip(1).any(|n| n.live > 0))
            {
                self.handed += 1;
                self.last_members = self.pending_members.pop_front().unwrap_or_default();
                match self.pending.pop_front() {
                    Some(node) if node.members > 0 => return Ok(Some(node)),
                    _ => continue,
                }
            }
            if done {
                return Ok(None);
            }
            let count = (self.topic.len - self.next).min(CHUNK);
            let chunk = (self.read)(self.next, count)?;
            if chunk.is_empty() {
                self.next = self.topic.len;
                continue;
            }
            for e in &chunk {
                self.add(self.next, e);
                self.next += 1;
            }
        }
    }

    /// Files entry `e` at position `p` under its node.
    fn add(&mut self, p: u64, e: &CqEntry) {
        if p < self.split {
            self.seen_below += 1;
            self.deleted_below += u64::from(e.is_deleted());
        }
        let node = if e.opens_node() {
            self.starts.push(p);
            self.pending.push_back(WalkNode::new(Some(p)));
            self.pending_members.push_back(Vec::new());
            self.handed + self.pending.len() - 1
        } else if let Some(skip) = e.joins_node() {
            let skip = usize::from(skip);
            if skip >= 1 && skip <= self.starts.len() {
                self.starts.len() - skip + 1
            } else {
                0
            }
        } else {
            self.current
        };
        // A node already handed out can take no more entries (it was final); should the flags
        // say otherwise, the entry goes to the oldest node still open.
        let node = node.max(self.handed);
        if self.pending.is_empty() {
            self.pending.push_back(WalkNode::new(None));
            self.pending_members.push_back(Vec::new());
        }
        let k = (node - self.handed).min(self.pending.len() - 1);
        self.current = self.handed + k;
        let n = &mut self.pending[k];
        n.end = p + 1;
        n.members += 1;
        n.last_id = e.id;
        if !e.is_deleted() && p >= self.live_from {
            n.live += 1;
            if p >= self.split {
                n.live_from_split += 1;
            }
        }
        if self.keep
            && p < self.split
            && let Some(members) = self.pending_members.get_mut(k)
        {
            members.push((p, *e));
        }
    }
}
