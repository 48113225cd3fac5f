//! One node's Raft state machine: roles, terms, timers, and the dispatch of events to the
//! election (`election.rs`), replication (`replication.rs`) and transfer (`transfer.rs`)
//! rules. Sans-IO: events in (with the driver's clock), actions out; no socket, clock, disk
//! or global randomness inside, so a seed and a sequence of events replay exactly.

use std::collections::{BTreeMap, VecDeque};

use crate::store::{LogIndex, Term};

use super::config::{RaftConfig, Rng};
use super::log_terms::LogTerms;
use super::membership::{ConfigAt, MemberRole, Membership, MembershipChange};
use super::message::{Action, Event, HardState, Message, NodeId, Role};
use super::progress::Progress;

/// A Raft node's volatile and persistent state (the persistent part is written by the driver
/// on `SaveHardState`; the log by the store).
#[derive(Debug)]
pub struct Raft {
    pub(super) cfg: RaftConfig,
    pub(super) rng: Rng,
    pub(super) hard: HardState,
    pub(super) role: Role,
    pub(super) leader: Option<NodeId>,
    pub(super) log: LogTerms,
    pub(super) commit: LogIndex,
    /// The local log is durable through here.
    pub(super) persisted: LogIndex,
    /// Follower: the local log is known to match the current leader's through here.
    pub(super) verified: LogIndex,
    /// Follower: the index last acknowledged to the current leader.
    pub(super) acked: LogIndex,
    /// Follower: the highest commit index an append of the current leader carried (it
    /// applies as far as `verified` reaches).
    pub(super) leader_commit: LogIndex,
    /// Follower: the highest commit index a heartbeat of the current leader carried. The
    /// leader caps it at this node's match index (entries it knows this node holds durably
    /// in its term), so it applies as far as the local log is durable, `verified` or not.
    pub(super) heartbeat_commit: LogIndex,
    /// Leader: a `Persisted` report past the log's end (the driver's `Appended` for those
    /// entries had not arrived yet), applied once they are known.
    pub(super) early_persisted: Option<(LogIndex, Term)>,
    /// Votes received in the current (pre-)election, with the voter's incarnation.
    pub(super) votes: BTreeMap<NodeId, (bool, u64)>,
    /// The configurations in the log: the last committed one (index 0: the bootstrap one)
    /// and every later one; the last is in force (a Config entry counts once appended).
    pub(super) configs: Vec<ConfigAt>,
    /// Leader: a Config entry asked for and not reported appended yet.
    pub(super) config_pending: bool,
    /// Leader of a group still on its bootstrap configuration: when it founds the group at
    /// the latest (its first entry, pinning the voters it heard from).
    pub(super) founding_due: Option<u64>,
    /// Leader: operator changes waiting for the one under way to commit.
    pub(super) changes: VecDeque<MembershipChange>,
    /// Leader: each follower's progress.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    pub(super) now: u64,
    pub(super) election_deadline: u64,
    pub(super) heartbeat_deadline: u64,
    pub(super) quorum_deadline: u64,
    /// When a leader was last heard from (followers) — the stickiness window starts there.
    pub(super) leader_contact: Option<u64>,
    /// Leader: when it began leading (a follower not heard from since is silent from then).
    pub(super) leading_since: u64,
    /// Leader: a transfer under way to this voter, abandoned at the deadline.
    pub(super) transfer: Option<(NodeId, u64)>,
    /// Leader: the driver confirmed proposals are paused for the transfer under way.
    pub(super) transfer_ready: bool,
    /// Leader: no hand-over to the preferred leader before this time.
    pub(super) prefer_not_before: u64,
    /// Leader: when an advanced commit index must be pushed to followers that lack it.
    pub(super) commit_push_at: Option<u64>,
    pub(super) healthy: bool,
    pub(super) actions: Vec<Action>,
}

impl Raft {
    /// A node starting (or restarting) as a follower with its durable hard state and log
    /// (all of it durable: what a restart recovered), knowing `commit` is committed (at
    /// least what its engine applied). A group of one campaigns at the first tick.
    pub fn new(
        cfg: RaftConfig,
        hard: HardState,
        log: LogTerms,
        commit: LogIndex,
        now: u64,
    ) -> Raft {
        let rng = Rng::new(cfg.seed ^ cfg.id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let persisted = log.last_index();
        let mut raft = Raft {
            rng,
            hard,
            role: Role::Follower,
            leader: None,
            commit: commit.min(persisted),
            persisted,
            verified: 0,
            acked: 0,
            leader_commit: 0,
            heartbeat_commit: 0,
            early_persisted: None,
            votes: BTreeMap::new(),
            configs: vec![ConfigAt {
                index: 0,
                term: 0,
                members: cfg.members.clone(),
            }],
            config_pending: false,
            founding_due: None,
            changes: VecDeque::new(),
            progress: BTreeMap::new(),
            now,
            election_deadline: now,
            heartbeat_deadline: u64::MAX,
            quorum_deadline: u64::MAX,
            leader_contact: None,
            leading_since: 0,
            transfer: None,
            transfer_ready: false,
            prefer_not_before: 0,
            commit_push_at: None,
            healthy: true,
            actions: Vec::new(),
            log,
            cfg,
        };
        if !raft.alone() {
            raft.reset_election_timer();
        }
        raft
    }

    /// The configurations a restart found on disk (the `members` file), kept where the log
    /// still holds their entries (the file is written before an entry is: one whose append
    /// never became durable is dropped). Call before the first `step`.
    pub fn restore_configs(&mut self, saved: Vec<ConfigAt>) {
        let base = self.log.base_index();
        let mut kept: Vec<ConfigAt> = saved
            .into_iter()
            .filter(|c| {
                c.index > 0
                    && c.index <= self.log.last_index()
                    && (c.index <= base || self.log.term_at(c.index) == Some(c.term))
            })
            .collect();
        kept.sort_by_key(|c| c.index);
        kept.dedup_by_key(|c| c.index);
        self.configs.truncate(1);
        self.configs.extend(kept);
        self.compact_configs();
        if !self.alone() {
            self.reset_election_timer();
        }
    }

    /// A group of one, this node its only voter: it campaigns at once.
    fn alone(&self) -> bool {
        self.counts(self.cfg.id, self.cfg.incarnation) && self.membership().voters().count() == 1
    }

    /// Leading a group of one: each entry of this term is committed as soon as this node's
    /// log makes it durable (`Persisted` commits it, nothing else is counted).
    pub fn leads_alone(&self) -> bool {
        self.role == Role::Leader && self.alone()
    }

    /// Whether `members`, once in force, would have this node (this incarnation) as its only
    /// voter.
    pub fn alone_in(&self, members: &Membership) -> bool {
        members.voters().count() == 1
            && members.get(self.cfg.id).is_some_and(|m| {
                m.role == MemberRole::Voter && m.incarnation == self.cfg.incarnation
            })
    }

    /// Feeds one event at time `now` (milliseconds on the driver's monotonic clock).
    pub fn step(&mut self, now: u64, event: Event) {
        self.now = self.now.max(now);
        match event {
            Event::Tick => self.tick(),
            Event::Message {
                from,
                incarnation,
                msg,
            } => self.on_message(from, incarnation, msg),
            Event::ConfigAppended {
                index,
                term,
                members,
            } => self.on_config_appended(index, term, members),
            Event::ChangeMembership(change) => self.request_change(change),
            Event::LogCompacted { first_index } => {
                let base = first_index.saturating_sub(1).min(self.commit);
                self.log.compact_to(base);
            }
            Event::Appended { last_index, term } => self.on_appended(last_index, term),
            Event::Persisted { index, term } => self.on_persisted(index, term),
            Event::TransferLeader { to } => self.request_transfer(to),
            Event::ProposalsPaused { last_index, term } => {
                self.on_proposals_paused(last_index, term)
            }
            Event::StorageFailed => {
                self.healthy = false;
                if self.role != Role::Follower {
                    self.become_follower(self.hard.term, None);
                }
            }
            Event::StorageRecovered => self.healthy = true,
        }
    }

    /// The actions produced so far, to carry out in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// When the next `Tick` is due.
    pub fn next_deadline(&self) -> u64 {
        match self.role {
            Role::Leader => {
                let mut at = self.heartbeat_deadline.min(self.quorum_deadline);
                if let Some(t) = self.commit_push_at {
                    at = at.min(t);
                }
                if let Some((_, t)) = self.transfer {
                    at = at.min(t);
                }
                if let Some(t) = self.founding_due {
                    at = at.min(t);
                }
                for p in self.progress.values() {
                    if p.match_index < self.log.last_index() {
                        at = at.min(p.last_progress_ms + self.cfg.resend_ms);
                    }
                }
                at
            }
            _ => self.election_deadline,
        }
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> Term {
        self.hard.term
    }
    pub fn hard_state(&self) -> HardState {
        self.hard
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }
    pub fn persisted_index(&self) -> LogIndex {
        self.persisted
    }
    pub fn log_terms(&self) -> &LogTerms {
        &self.log
    }
    /// The other members, voters and learners.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.peers().collect()
    }
    /// The configuration in force.
    pub fn membership(&self) -> &Membership {
        &self.configs[self.configs.len() - 1].members
    }
    /// Every configuration still in the log (the last committed one first).
    pub fn configs(&self) -> &[ConfigAt] {
        &self.configs
    }
    /// Leader: whether a follower needs entries the log no longer holds (retention cut
    /// them): only a snapshot install could catch it up.
    pub fn peer_needs_snapshot(&self, peer: NodeId) -> Option<bool> {
        self.progress.get(&peer).map(|p| p.needs_snapshot)
    }
    /// Leader: the incarnation a follower last answered with (0: not heard yet).
    pub fn peer_incarnation(&self, peer: NodeId) -> Option<u64> {
        self.progress.get(&peer).map(|p| p.incarnation)
    }
    /// A follower's match index as the leader knows it.
    pub fn match_index(&self, peer: NodeId) -> Option<LogIndex> {
        self.progress.get(&peer).map(|p| p.match_index)
    }
    /// Leader: how long a follower has not answered (since its last answer, or since this
    /// node began leading if it has not answered since).
    pub fn peer_silent_ms(&self, peer: NodeId) -> Option<u64> {
        self.progress.get(&peer).map(|p| {
            self.now
                .saturating_sub(p.last_heard_ms.max(self.leading_since))
        })
    }
    /// Leader: whether a follower's last heartbeat answer said its disk is healthy.
    pub fn peer_healthy(&self, peer: NodeId) -> Option<bool> {
        self.progress.get(&peer).map(|p| p.healthy)
    }
    /// Whether this node's own storage is healthy.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// The term a proposal may be appended in now: leader, healthy, not handing over.
    pub fn can_propose(&self) -> Option<Term> {
        (self.role == Role::Leader
            && self.healthy
            && self.transfer.is_none()
            && self.founding_due.is_none())
        .then_some(self.hard.term)
    }

    pub(super) fn majority(&self) -> usize {
        self.membership().voters().count() / 2 + 1
    }

    /// The other members (voters and learners): who the leader replicates to.
    pub(super) fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.cfg.id;
        self.membership()
            .members()
            .iter()
            .map(|m| m.id)
            .filter(move |v| *v != me)
    }

    /// The other voters: who a candidate asks.
    pub(super) fn voter_peers(&self) -> Vec<NodeId> {
        let me = self.cfg.id;
        self.membership().voters().filter(|v| *v != me).collect()
    }

    /// Whether this node takes part in elections (campaigns, grants votes): it is a voter
    /// of the configuration in force and its place is not held by another incarnation (a
    /// place not pinned yet may be its own; whether its vote counts is the candidate's call).
    pub fn is_voter(&self) -> bool {
        self.may_hold(self.cfg.id, self.cfg.incarnation)
    }

    /// Whether this node starts elections: a voter; or a node the last configuration in its
    /// log removed while that change is not known committed — it may hold the newest log the
    /// others need, and leads (without counting itself) until the change commits, as a leader
    /// that removed itself does (Raft dissertation §4.2.2).
    fn may_campaign(&self) -> bool {
        let last = &self.configs[self.configs.len() - 1];
        self.is_voter() || (last.members.get(self.cfg.id).is_none() && last.index > self.commit)
    }

    /// Whether node `id`'s directory `incarnation` may hold a voter's place: a voter whose
    /// place is pinned to it or not pinned yet.
    pub(super) fn may_hold(&self, id: NodeId, incarnation: u64) -> bool {
        self.membership().may_hold(id, incarnation)
    }

    /// Whether node `id` answering as `incarnation` holds a voter's place: what its votes and
    /// acknowledgements count for. Only a pinned place counts — or any directory while the
    /// configuration in force is the bootstrap one (no Config entry in the log yet: a group
    /// founded from nothing, whose first leader pins its voters in its first entry).
    pub(super) fn counts(&self, id: NodeId, incarnation: u64) -> bool {
        let bootstrap = self.configs[self.configs.len() - 1].index == 0;
        self.membership().get(id).is_some_and(|m| {
            m.role == MemberRole::Voter
                && (m.incarnation == incarnation || (m.incarnation == 0 && bootstrap))
        })
    }

    pub(super) fn send(&mut self, to: NodeId, msg: Message) {
        self.actions.push(Action::Send { to, msg });
    }

    pub(super) fn save_hard_state(&mut self) {
        self.actions.push(Action::SaveHardState(self.hard));
    }

    pub(super) fn reset_election_timer(&mut self) {
        let wait = self
            .rng
            .between(self.cfg.election_min_ms, self.cfg.election_max_ms);
        self.election_deadline = self.now + wait;
    }

    fn announce(&mut self) {
        self.actions.push(Action::RoleChanged {
            role: self.role,
            term: self.hard.term,
            leader: self.leader,
        });
    }

    /// Follower of `term` (adopted, with no vote, if higher), under `leader` if known.
    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let before = (self.role, self.hard.term, self.leader);
        if term > self.hard.term {
            self.hard = HardState { term, voted_for: 0 };
            self.save_hard_state();
        }
        if (self.hard.term, leader) != (before.1, before.2) {
            self.verified = 0;
            self.acked = 0;
            self.leader_commit = 0;
            self.heartbeat_commit = 0;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        self.transfer = None;
        self.commit_push_at = None;
        self.early_persisted = None;
        self.founding_due = None;
        if leader.is_some() {
            self.leader_contact = Some(self.now);
        }
        self.reset_election_timer();
        if (self.role, self.hard.term, self.leader) != before {
            self.announce();
        }
    }

    pub(super) fn become_pre_candidate(&mut self) {
        self.start_round(Role::PreCandidate);
    }

    /// A real election: the next term and our own vote, durable before anyone hears of it.
    pub(super) fn become_candidate(&mut self) {
        self.hard = HardState {
            term: self.hard.term + 1,
            voted_for: self.cfg.id,
        };
        self.save_hard_state();
        self.start_round(Role::Candidate);
    }

    /// A new (pre-)election round in `role`: no leader, no votes yet, a fresh timeout.
    fn start_round(&mut self, role: Role) {
        self.role = role;
        self.leader = None;
        self.leader_contact = None;
        self.votes.clear();
        self.reset_election_timer();
        self.announce();
    }

    pub(super) fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leading_since = self.now;
        self.leader = Some(self.cfg.id);
        self.transfer = None;
        // A new leader settles before handing over to the preferred one.
        self.prefer_not_before = self.now + self.cfg.election_max_ms;
        let last = self.log.last_index();
        let now = self.now;
        let heard: BTreeMap<NodeId, u64> = self.votes.iter().map(|(v, (_, i))| (*v, *i)).collect();
        self.votes.clear();
        self.config_pending = false;
        self.progress = self
            .peers()
            .map(|p| {
                let mut progress = Progress::new(last, now);
                progress.incarnation = heard.get(&p).copied().unwrap_or(0);
                (p, progress)
            })
            .collect();
        self.heartbeat_deadline = now;
        self.quorum_deadline = now + self.cfg.election_min_ms;
        self.announce();
        // Entries of earlier terms commit only under one of this term (Raft §5.4.2). A group
        // still on its bootstrap configuration is founded here: the first entry pins the
        // voters to the directories that elected it (its own and those whose votes counted),
        // so from then on a lost disk's new directory counts for nothing.
        self.broadcast_heartbeat();
        if self.configs[self.configs.len() - 1].index == 0 {
            // Founding waits for every voter's answer (an unpinned place counts for nothing
            // until a later change pins it) up to an election timeout, then goes with what it
            // heard.
            self.founding_due = Some(self.now + self.cfg.election_min_ms);
            self.maybe_found();
        } else {
            self.actions.push(Action::AppendNoop {
                term: self.hard.term,
            });
        }
    }

    fn tick(&mut self) {
        if self.role != Role::Leader {
            if self.now >= self.election_deadline {
                // Only a voter campaigns: a learner, a removed node, or a directory whose
                // place another incarnation holds waits for the leader.
                if self.healthy && self.may_campaign() {
                    self.start_pre_vote();
                } else {
                    self.reset_election_timer();
                }
            }
            return;
        }
        if self.now >= self.quorum_deadline {
            self.check_quorum();
            if self.role != Role::Leader {
                return;
            }
        }
        if self.now >= self.heartbeat_deadline {
            self.broadcast_heartbeat();
            self.maybe_prefer();
            self.maybe_reconfigure();
        }
        if self.transfer.is_some_and(|(_, at)| self.now >= at) {
            self.abandon_transfer();
        }
        self.maybe_found();
        if self.commit_push_at.is_some_and(|at| self.now >= at) {
            self.push_commit();
        }
        self.resend_stalled();
    }

    /// A leader that heard from no majority within an election timeout steps down (its
    /// followers may have elected another: it must stop acknowledging).
    fn check_quorum(&mut self) {
        self.quorum_deadline = self.now + self.cfg.election_min_ms;
        let me = usize::from(self.is_voter());
        let active = me
            + self
                .progress
                .iter()
                .filter(|(id, p)| p.recent_active && self.counts(**id, p.incarnation))
                .count();
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        if active < self.majority() {
            self.become_follower(self.hard.term, None);
        }
    }

    /// The stickiness window: a live leader is known, so (pre-)votes are refused.
    pub(super) fn in_lease(&self) -> bool {
        match self.role {
            Role::Leader => true,
            _ => {
                self.leader.is_some()
                    && self
                        .leader_contact
                        .is_some_and(|t| self.now < t + self.cfg.election_min_ms)
            }
        }
    }

    fn on_message(&mut self, from: NodeId, incarnation: u64, msg: Message) {
        if from == self.cfg.id {
            return;
        }
        let term = msg.term();
        if term > self.hard.term {
            match &msg {
                Message::Vote(v) if v.pre => {}
                Message::VoteReply(r) if r.pre && r.granted => {}
                // A live leader is known: a disruptive candidate changes nobody's term.
                Message::Vote(v) if !v.transfer && self.in_lease() => return,
                Message::Append { .. }
                | Message::Heartbeat { .. }
                | Message::InstallImage { .. } => {
                    self.become_follower(term, Some(from));
                }
                _ => self.become_follower(term, None),
            }
        } else if term < self.hard.term {
            // A stale leader learns the term and steps down; a stale pre-candidate too.
            let reply = match msg {
                Message::Append { header, .. } => {
                    Some(Message::AppendReply(super::message::AppendReply {
                        term: self.hard.term,
                        success: false,
                        index: header.prev_index,
                        hint_index: 0,
                        hint_term: 0,
                    }))
                }
                Message::Heartbeat { .. } => Some(Message::HeartbeatReply {
                    term: self.hard.term,
                    healthy: self.healthy,
                }),
                Message::Vote(v) if v.pre => Some(Message::VoteReply(super::message::VoteReply {
                    term: self.hard.term,
                    pre: true,
                    granted: false,
                })),
                _ => None,
            };
            if let Some(reply) = reply {
                self.send(from, reply);
            }
            return;
        }
        match msg {
            Message::Vote(v) => self.on_vote(from, v),
            Message::VoteReply(r) => self.on_vote_reply(from, incarnation, r),
            Message::Append { header, entries } => {
                self.heard_from_leader(from);
                if self.role == Role::Follower {
                    self.on_append(from, header, entries);
                }
            }
            Message::AppendReply(r) => self.on_append_reply(from, incarnation, r),
            Message::Heartbeat { commit, .. } => {
                self.heard_from_leader(from);
                if self.role == Role::Follower {
                    self.heartbeat_commit = self.heartbeat_commit.max(commit);
                    self.advance_follower_commit();
                    let term = self.hard.term;
                    let healthy = self.healthy;
                    self.send(from, Message::HeartbeatReply { term, healthy });
                    // The leader sends a commit only as far as it counts this node's log
                    // matched: one past our end means we lost entries we acknowledged (a power
                    // cut took them before the disk had them: `--flush async`). Say where our
                    // log ends, as a follower back with less does, so the leader sends them
                    // again — on an idle group no append would ever show it.
                    let last = self.log.last_index();
                    if commit > last {
                        self.send(
                            from,
                            Message::AppendReply(super::message::AppendReply {
                                term,
                                success: false,
                                index: commit,
                                hint_index: last + 1,
                                hint_term: 0,
                            }),
                        );
                    }
                }
            }
            Message::HeartbeatReply { healthy, .. } => {
                self.on_heartbeat_reply(from, incarnation, healthy)
            }
            Message::TimeoutNow { .. } => self.on_timeout_now(from),
            Message::TransferRequest { to, .. } => self.start_transfer(to),
            Message::MembershipRequest { change, .. } => self.request_change(change),
            Message::InstallImage { .. } => {
                self.heard_from_leader(from);
                if self.role == Role::Follower {
                    self.actions.push(Action::FetchImage {
                        leader: from,
                        diverged: false,
                    });
                }
            }
        }
    }

    /// An append or heartbeat of the current term: its sender leads this term.
    fn heard_from_leader(&mut self, from: NodeId) {
        match self.role {
            Role::Leader => return, // two leaders in one term cannot happen: ignore
            Role::Follower if self.leader == Some(from) => {}
            _ => self.become_follower(self.hard.term, Some(from)),
        }
        self.leader_contact = Some(self.now);
        self.reset_election_timer();
    }
}
