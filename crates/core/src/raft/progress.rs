//! What the leader knows of one follower's log, and how it sends to it: **probe** (one append
//! at a time until an answer shows where the logs match) or **replicate** (appends pipelined
//! up to a window). It owns match/next indexes and the in-flight window; it never decides
//! commits (the leader counts matches) and never sends (it says whether to).

use std::collections::VecDeque;

use crate::store::LogIndex;

/// How the leader sends to a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendState {
    /// Where the logs match is not known: one append in flight at a time.
    Probe { waiting: bool },
    /// The logs match at `match_index`: appends pipelined, each remembered by its last index.
    Replicate { inflight: VecDeque<LogIndex> },
}

/// The leader's record of one follower.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Highest index known to match the leader's log durably on the follower.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    pub state: SendState,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// When it last answered anything.
    pub last_heard_ms: u64,
    /// Its disk was healthy at its last heartbeat answer.
    pub healthy: bool,
    /// When an answer last moved `match_index` forward (or the state was reset).
    pub last_progress_ms: u64,
    /// Highest commit index sent to it (with an append or a heartbeat).
    pub sent_commit: LogIndex,
    /// The directory that last answered for it (0: none yet).
    pub incarnation: u64,
    /// It needs entries the leader's log no longer holds (retention cut them): only a
    /// snapshot install can catch it up.
    pub needs_snapshot: bool,
    /// When it was last offered an image (and probed from the log's start).
    pub image_offered_ms: Option<u64>,
}

impl Progress {
    /// A follower of a new leader whose last index is `last`: probed from the end.
    pub fn new(last: LogIndex, now: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index: last + 1,
            state: SendState::Probe { waiting: false },
            recent_active: false,
            last_heard_ms: 0,
            healthy: true,
            last_progress_ms: now,
            sent_commit: 0,
            incarnation: 0,
            needs_snapshot: false,
            image_offered_ms: None,
        }
    }

    /// Whether another append may go out now.
    pub fn can_send(&self, max_inflight: usize) -> bool {
        match &self.state {
            SendState::Probe { waiting } => !waiting,
            SendState::Replicate { inflight } => inflight.len() < max_inflight,
        }
    }

    /// Notes an append ending at `last` went out.
    pub fn sent(&mut self, last: LogIndex) {
        match &mut self.state {
            SendState::Probe { waiting } => *waiting = true,
            SendState::Replicate { inflight } => {
                inflight.push_back(last);
                self.next_index = last + 1;
            }
        }
    }

    /// The follower matches through `index`: returns whether that is news.
    pub fn matched(&mut self, index: LogIndex, now: u64) -> bool {
        if let SendState::Replicate { inflight } = &mut self.state {
            while inflight.front().is_some_and(|l| *l <= index) {
                inflight.pop_front();
            }
        }
        if index <= self.match_index {
            return false;
        }
        self.match_index = index;
        self.needs_snapshot = false;
        self.next_index = self.next_index.max(index + 1);
        self.last_progress_ms = now;
        if matches!(self.state, SendState::Probe { .. }) {
            self.state = SendState::Replicate {
                inflight: VecDeque::new(),
            };
        }
        true
    }

    /// Back to probing from `next` (a rejection, or a silence while behind).
    pub fn probe_from(&mut self, next: LogIndex, now: u64) {
        self.next_index = next.max(self.match_index + 1);
        self.state = SendState::Probe { waiting: false };
        self.last_progress_ms = now;
    }

    /// The follower's log ends below what it once acknowledged: its disk was lost (it came
    /// back as a new directory). What it holds now is all that matches; probe from its end.
    pub fn lost_log(&mut self, end: LogIndex, now: u64) {
        self.match_index = end.min(self.match_index);
        self.probe_from(end + 1, now);
    }

    /// Lets a probe go out again (a heartbeat answer shows the follower is there).
    pub fn resume(&mut self) {
        if let SendState::Probe { waiting } = &mut self.state {
            *waiting = false;
        }
    }
}
