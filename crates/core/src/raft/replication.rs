//! Replication: the leader's appends (probe, then pipelined), the follower's consistency
//! check and conflict truncation, acknowledgements after the follower's own fsync, and the
//! commit rule — an index commits when a majority holds it durably **and** it is of the
//! leader's current term (Raft §5.4.2; DLedger 0.3.1.2 counted older-term entries, the
//! paper's Figure 8). It never truncates a committed entry.

use crate::store::{LogIndex, Term};

use super::message::{Action, AppendHeader, AppendReply, Entry, Message, NodeId, Role};
use super::node::Raft;

impl Raft {
    /// Leader: its own entries were appended through `last_index` in its term.
    pub(super) fn on_appended(&mut self, last_index: LogIndex, term: Term) {
        if self.role != Role::Leader
            || term != self.hard.term
            || last_index <= self.log.last_index()
        {
            return;
        }
        let count = last_index - self.log.last_index();
        // A follower that held everything is behind from now on: its resend clock starts.
        let (was, now) = (self.log.last_index(), self.now);
        for p in self.progress.values_mut() {
            if p.match_index >= was {
                p.last_progress_ms = now;
            }
        }
        self.log.append(self.hard.term, count);
        // The driver may have reported these entries durable before it reported them appended.
        if let Some((index, term)) = self.early_persisted
            && index <= self.log.last_index()
        {
            self.early_persisted = None;
            self.on_persisted(index, term);
        }
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for p in peers {
            self.send_append(p);
        }
    }

    /// The local log is durable through `index` (entry of `term`).
    pub(super) fn on_persisted(&mut self, index: LogIndex, term: Term) {
        if index > self.log.last_index() && self.role == Role::Leader && term == self.hard.term {
            // Ahead of the `Appended` that tells us of these entries: kept until it comes.
            self.early_persisted = Some((index, term));
            return;
        }
        if self.log.term_at(index) != Some(term) || index <= self.persisted {
            return;
        }
        self.persisted = index;
        match self.role {
            Role::Leader => self.maybe_commit(),
            Role::Follower => {
                self.acknowledge();
                self.advance_follower_commit();
            }
            _ => {}
        }
    }

    /// Sends the next append to `to` if its window allows.
    pub(super) fn send_append(&mut self, to: NodeId) {
        let last = self.log.last_index();
        let commit = self.commit;
        let term = self.hard.term;
        let max = self.cfg.max_append_entries;
        let max_inflight = self.cfg.max_inflight;
        let Some(p) = self.progress.get_mut(&to) else {
            return;
        };
        if !p.can_send(max_inflight) {
            return;
        }
        if p.needs_snapshot && p.next_index <= self.log.base_index() + 1 {
            self.offer_image(to);
            return;
        }
        let probing = matches!(p.state, super::progress::SendState::Probe { .. });
        // Replicating and up to date: nothing to send (heartbeats carry liveness).
        if !probing && p.next_index > last {
            return;
        }
        let prev_index = p.next_index - 1;
        let Some(prev_term) = self.log.term_at(prev_index) else {
            // Below what the log holds: the follower needs an image of this node.
            p.next_index = self.log.base_index() + 1;
            p.needs_snapshot = true;
            self.offer_image(to);
            return;
        };
        let upto = last.min(prev_index.saturating_add(max));
        p.sent(upto);
        p.sent_commit = p.sent_commit.max(commit);
        self.actions.push(Action::SendEntries {
            to,
            header: AppendHeader {
                term,
                prev_index,
                prev_term,
                commit,
            },
            last: upto,
        });
    }

    /// Leader: `to` needs entries the log no longer holds. It is offered an image, and probed
    /// from the first entry held — which it accepts once it installed one — at most once per
    /// `image_retry_ms` (each probe it refuses brings it back here).
    fn offer_image(&mut self, to: NodeId) {
        let base = self.log.base_index();
        let (term, commit, now) = (self.hard.term, self.commit, self.now);
        let retry = self.cfg.image_retry_ms;
        let Some(prev_term) = self.log.term_at(base) else {
            return;
        };
        let Some(p) = self.progress.get_mut(&to) else {
            return;
        };
        if p.image_offered_ms.is_some_and(|t| now < t + retry) {
            return;
        }
        p.image_offered_ms = Some(now);
        self.send(to, Message::InstallImage { term });
        let Some(p) = self.progress.get_mut(&to) else {
            return;
        };
        p.next_index = base + 1;
        p.sent(base);
        self.actions.push(Action::SendEntries {
            to,
            header: AppendHeader {
                term,
                prev_index: base,
                prev_term,
                commit,
            },
            last: base,
        });
    }

    /// Follower: an append from the current leader.
    pub(super) fn on_append(&mut self, from: NodeId, h: AppendHeader, mut entries: Vec<Entry>) {
        let term = self.hard.term;
        let reject = |hint_index, hint_term| {
            Message::AppendReply(AppendReply {
                term,
                success: false,
                index: h.prev_index,
                hint_index,
                hint_term,
            })
        };
        if h.prev_index > self.log.last_index() {
            let hint = self.log.last_index() + 1;
            self.send(from, reject(hint, 0));
            return;
        }
        // The last index this request covers: once accepted, the logs match through it.
        let request_last = h.prev_index + entries.len() as u64;
        let mut first = h.prev_index + 1;
        if h.prev_index <= self.commit {
            // Committed entries are in every leader's log, with the same terms: skipped (the
            // entry before them too, even when this log no longer holds it: retention or an
            // image cut the log below its commit). A term that differs shows this node
            // committed entries the leader does not have.
            let skip = (self.commit - h.prev_index).min(entries.len() as u64);
            let differs = |index: LogIndex, term: Term| {
                self.log.term_at(index).is_some_and(|held| held != term)
            };
            if differs(h.prev_index, h.prev_term)
                || (0..skip).any(|k| differs(first + k, entries[k as usize].term))
            {
                self.diverged(from, h.prev_index);
                return;
            }
            entries.drain(..skip as usize);
            first += skip;
        } else if self.log.term_at(h.prev_index) != Some(h.prev_term) {
            // We hold another term there (the index is above the commit, hence above the
            // base, so its term is known): skip back over all of that term at once.
            let held = self.log.term_at(h.prev_index).unwrap_or(0);
            let hint = self
                .log
                .first_of_term(held)
                .unwrap_or(h.prev_index)
                .max(self.commit + 1);
            self.send(from, reject(hint, held));
            return;
        }
        // Entries already held with the same term stay; the first that differs (or is new)
        // and everything after it are written.
        let mut same = 0usize;
        while same < entries.len()
            && self.log.term_at(first + same as u64) == Some(entries[same].term)
        {
            same += 1;
        }
        if same < entries.len() {
            let at = first + same as u64;
            let truncate = (at <= self.log.last_index()).then_some(at - 1);
            if truncate.is_some_and(|t| t < self.commit) {
                self.diverged(from, h.prev_index);
                return;
            }
            let new = entries.split_off(same);
            if new.windows(2).any(|w| w[1].term < w[0].term)
                || new[0].term < self.log.term_at(at - 1).unwrap_or(0)
            {
                // Terms fall along the entries: a malformed append. Nothing written.
                self.send(from, reject(at, 0));
                return;
            }
            self.note_configs(truncate, at, &new);
            if let Some(t) = truncate {
                self.log.truncate_after(t);
                self.persisted = self.persisted.min(t);
                self.acked = self.acked.min(t);
            }
            for e in &new {
                self.log.append(e.term, 1);
            }
            self.actions.push(Action::Persist {
                truncate_after: truncate,
                first_index: at,
                entries: new,
            });
        }
        self.verified = self.verified.max(request_last);
        self.leader_commit = self.leader_commit.max(h.commit);
        self.advance_follower_commit();
        if self.persisted >= request_last {
            self.acknowledge_at(from, request_last);
        }
    }

    /// Follower: entries this node committed (and may have applied) are not the leader's —
    /// possible only after acknowledged writes were lost (`async` flushing, a majority down
    /// before its disks caught up). Committed entries are never truncated in place: the
    /// append is refused, and the node installs an image of the leader instead.
    fn diverged(&mut self, leader: NodeId, prev_index: LogIndex) {
        let term = self.hard.term;
        self.send(
            leader,
            Message::AppendReply(AppendReply {
                term,
                success: false,
                index: prev_index,
                hint_index: self.commit + 1,
                hint_term: 0,
            }),
        );
        self.actions.push(Action::FetchImage {
            leader,
            diverged: true,
        });
    }

    /// Follower: tells the leader how far the log matches durably.
    fn acknowledge(&mut self) {
        let Some(leader) = self.leader else { return };
        let upto = self.persisted.min(self.verified);
        if upto > self.acked {
            self.acknowledge_at(leader, upto);
        }
    }

    fn acknowledge_at(&mut self, leader: NodeId, index: LogIndex) {
        let index = index.min(self.persisted);
        self.acked = self.acked.max(index);
        let term = self.hard.term;
        self.send(
            leader,
            Message::AppendReply(AppendReply {
                term,
                success: true,
                index,
                hint_index: 0,
                hint_term: 0,
            }),
        );
    }

    /// Follower: commits what the leader committed, as far as the local log is known to
    /// match it (through an append: `verified`; through the leader's knowledge of this node's
    /// match index: a heartbeat's commit) and is durable.
    pub(super) fn advance_follower_commit(&mut self) {
        let to = self
            .leader_commit
            .min(self.verified)
            .max(self.heartbeat_commit)
            .min(self.persisted);
        if to > self.commit {
            self.commit = to;
            self.actions.push(Action::Commit(to));
            self.compact_configs();
        }
    }

    /// Leader: a follower's answer, from its directory `incarnation`.
    pub(super) fn on_append_reply(&mut self, from: NodeId, incarnation: u64, r: AppendReply) {
        if self.role != Role::Leader {
            return;
        }
        let now = self.now;
        let last = self.log.last_index();
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.recent_active = true;
        p.last_heard_ms = now;
        if p.incarnation != incarnation {
            // Another directory answers for this node (a wiped disk came back): it holds
            // only what it acknowledges from now on.
            if p.incarnation != 0 {
                p.lost_log(0, now);
            }
            p.incarnation = incarnation;
        }
        if r.success {
            if p.matched(r.index.min(last), now) {
                // A heartbeat gave it the commit only as far as it then held: it may apply
                // more now (it hears with the next append, or a push in 1 ms if none comes).
                if p.sent_commit < self.commit.min(p.match_index) && self.commit_push_at.is_none() {
                    self.commit_push_at = Some(now + self.cfg.commit_push_ms);
                }
                self.maybe_commit();
                self.maybe_finish_transfer(from);
                self.maybe_reconfigure();
            }
            self.send_append(from);
            return;
        }
        // A rejection of an append below what already matched is stale — unless the follower
        // says its log now ends below that match: it lost its disk and came back empty (a new
        // directory), so it is caught up again from what it holds.
        if r.hint_term == 0 && r.hint_index <= p.match_index {
            p.lost_log(r.hint_index.saturating_sub(1), now);
            self.send_append(from);
            return;
        }
        if r.index < p.match_index {
            return;
        }
        // While probing, only the answer to the probe out moves the leader: the other appends
        // of a pipeline refused along with the first (each sent past where the follower's log
        // ends, or reordered on the way) are stale — each would send the probe again, and the
        // whole range after it with it.
        if matches!(p.state, super::progress::SendState::Probe { .. })
            && r.index.saturating_add(1) != p.next_index
        {
            return;
        }
        // Where to try next, never past the index just refused: the follower's end if it is
        // shorter; else past our last entry of the term it holds there, or, if we hold none
        // of that term, to its first entry of it.
        let next = match (r.hint_term, self.log.last_of_term(r.hint_term)) {
            (0, _) | (_, None) => r.hint_index,
            (_, Some(end)) => end + 1,
        };
        let next = next.min(r.index).max(1);
        p.probe_from(next, now);
        self.send_append(from);
    }

    /// Leader: a heartbeat answer shows the follower is there: a waiting probe may go again.
    pub(super) fn on_heartbeat_reply(&mut self, from: NodeId, incarnation: u64, healthy: bool) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let now = self.now;
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.recent_active = true;
        p.last_heard_ms = now;
        p.healthy = healthy;
        if p.incarnation != incarnation {
            if p.incarnation != 0 {
                p.lost_log(0, now);
            }
            p.incarnation = incarnation;
        }
        if p.match_index < last {
            p.resume();
            self.send_append(from);
        }
        self.maybe_found();
    }

    /// Leader: a follower behind that acknowledged nothing for `resend_ms` lost an append:
    /// probe it again from its match index.
    pub(super) fn resend_stalled(&mut self) {
        let last = self.log.last_index();
        let now = self.now;
        let due: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| p.match_index < last && now >= p.last_progress_ms + self.cfg.resend_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(p) = self.progress.get_mut(&id) {
                let next = p.match_index + 1;
                p.probe_from(next, now);
            }
            self.send_append(id);
        }
    }

    /// Leader: heartbeats to every follower, with the commit index each may apply.
    pub(super) fn broadcast_heartbeat(&mut self) {
        self.heartbeat_deadline = self.now + self.cfg.heartbeat_ms;
        self.commit_push_at = None;
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.send_heartbeat(to);
        }
    }

    /// Leader: pushes an advanced commit index to followers that did not get as much of it
    /// as they hold yet.
    pub(super) fn push_commit(&mut self) {
        self.commit_push_at = None;
        let commit = self.commit;
        let behind: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| p.sent_commit < commit.min(p.match_index))
            .map(|(id, _)| *id)
            .collect();
        for to in behind {
            self.send_heartbeat(to);
        }
    }

    /// Leader: a heartbeat to `to`, carrying the commit index as far as `to` is known to hold
    /// the entries durably (its match index): it may apply that much without an append.
    fn send_heartbeat(&mut self, to: NodeId) {
        let commit = self.commit;
        let Some(p) = self.progress.get_mut(&to) else {
            return;
        };
        let theirs = commit.min(p.match_index);
        p.sent_commit = p.sent_commit.max(theirs);
        let term = self.hard.term;
        self.send(
            to,
            Message::Heartbeat {
                term,
                commit: theirs,
            },
        );
    }

    /// Leader: the highest index a majority holds durably, if of the current term, commits.
    pub(super) fn maybe_commit(&mut self) {
        // Only the directories that hold a voter's place count, this node's own included.
        let mut matched: Vec<LogIndex> = self
            .progress
            .iter()
            .filter(|(id, p)| self.counts(**id, p.incarnation))
            .map(|(_, p)| p.match_index)
            .collect();
        if self.is_voter() {
            matched.push(self.persisted);
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&candidate) = matched.get(self.majority() - 1) else {
            return;
        };
        if candidate > self.commit && self.log.term_at(candidate) == Some(self.hard.term) {
            self.commit = candidate;
            self.actions.push(Action::Commit(candidate));
            if self.commit_push_at.is_none() && !self.progress.is_empty() {
                self.commit_push_at = Some(self.now + self.cfg.commit_push_ms);
            }
            self.compact_configs();
            self.maybe_reconfigure();
        }
    }
}
