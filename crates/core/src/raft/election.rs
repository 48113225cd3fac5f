//! Elections: pre-vote, vote, and the rules a voter follows. A node campaigns only after a
//! majority says in a pre-vote that it would win (so a partitioned node rejoining never
//! bumps everyone's term), votes only for a log at least as up to date as its own (compared
//! by the last entry's own term, then index), and refuses any candidate while it hears from a
//! live leader — unless the leader itself asked for the election (transfer).

use super::message::{Message, NodeId, Role, VoteReply, VoteRequest};
use super::node::Raft;

impl Raft {
    /// Election timeout: ask for pre-votes for the next term.
    pub(super) fn start_pre_vote(&mut self) {
        self.become_pre_candidate();
        let me = self.counts(self.cfg.id, self.cfg.incarnation);
        self.votes.insert(self.cfg.id, (me, self.cfg.incarnation));
        let req = VoteRequest {
            term: self.hard.term + 1,
            pre: true,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer: false,
        };
        for p in self.voter_peers() {
            self.send(p, Message::Vote(req));
        }
        self.count_votes();
    }

    /// A majority would vote for us: a real election in the next term.
    pub(super) fn campaign(&mut self, transfer: bool) {
        self.become_candidate();
        let me = self.counts(self.cfg.id, self.cfg.incarnation);
        self.votes.insert(self.cfg.id, (me, self.cfg.incarnation));
        let req = VoteRequest {
            term: self.hard.term,
            pre: false,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer,
        };
        for p in self.voter_peers() {
            self.send(p, Message::Vote(req));
        }
        self.count_votes();
    }

    /// A (pre-)vote request whose term is not below ours.
    pub(super) fn on_vote(&mut self, from: NodeId, v: VoteRequest) {
        let ours = (self.log.last_term(), self.log.last_index());
        let up_to_date = (v.last_term, v.last_index) >= ours;
        let free = if v.pre {
            v.term > self.hard.term
                || (self.leader.is_none()
                    && (self.hard.voted_for == 0 || self.hard.voted_for == from))
        } else {
            self.hard.voted_for == from || (self.hard.voted_for == 0 && self.leader.is_none())
        };
        let sticky = !v.transfer && self.in_lease();
        // Membership is not checked here (Raft dissertation §4.1): this node's configuration
        // may be older than the candidate's — a learner promoted by an entry it has not
        // received yet must still vote, or that entry can never commit. Safety is the
        // candidate's count: by its own configuration, a vote from a node or a directory that
        // holds no pinned voter's place counts for nothing; a removed node's candidacy lacks
        // the entry that removed it, which a majority holds.
        let eligible = true;
        let granted = up_to_date && free && !sticky && self.healthy && eligible;
        if !up_to_date && !sticky && self.healthy && eligible && self.role == Role::Follower {
            // A candidate behind us is looking for a leader and none is live: we would win
            // where it cannot, so campaign soon rather than after a whole timeout of our own.
            let soon = self.now + self.rng.between(0, self.cfg.heartbeat_ms.max(1));
            self.election_deadline = self.election_deadline.min(soon);
        }
        if granted && !v.pre {
            self.hard.voted_for = from;
            self.save_hard_state();
            // A vote given restarts the wait: the candidate is about to lead.
            self.reset_election_timer();
        }
        let term = if granted && v.pre {
            v.term
        } else {
            self.hard.term
        };
        self.send(
            from,
            Message::VoteReply(VoteReply {
                term,
                pre: v.pre,
                granted,
            }),
        );
    }

    /// An answer to our (pre-)vote request (its term is not below ours).
    pub(super) fn on_vote_reply(&mut self, from: NodeId, incarnation: u64, r: VoteReply) {
        if !self.counts(from, incarnation) {
            return;
        }
        let counts = match self.role {
            Role::PreCandidate => {
                r.pre
                    && ((r.granted && r.term == self.hard.term + 1)
                        || (!r.granted && r.term == self.hard.term))
            }
            Role::Candidate => !r.pre && r.term == self.hard.term,
            _ => false,
        };
        if counts {
            self.votes.insert(from, (r.granted, incarnation));
            self.count_votes();
        }
    }

    /// Wins or loses the (pre-)election once a majority has answered either way.
    fn count_votes(&mut self) {
        let granted = self.votes.values().filter(|(g, _)| *g).count();
        let refused = self.votes.len() - granted;
        if granted >= self.majority() {
            match self.role {
                Role::PreCandidate => self.campaign(false),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
        } else if refused >= self.majority() {
            self.become_follower(self.hard.term, None);
        }
    }

    /// The leader hands over: campaign at once, without pre-vote and past stickiness.
    pub(super) fn on_timeout_now(&mut self, from: NodeId) {
        if self.role == Role::Follower
            && self.leader == Some(from)
            && self.healthy
            && self.is_voter()
        {
            self.campaign(true);
        }
    }
}
