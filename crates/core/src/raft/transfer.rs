//! Leadership transfer (only to a voter whose disk its last heartbeat answer said is healthy):
//! the leader stops taking proposals (`PauseProposals`, answered with
//! `ProposalsPaused` and the log's true end, so no entry appended meanwhile is missed), brings
//! the chosen voter up to its last entry, then tells it to campaign at once (`TimeoutNow`); the voter's request carries
//! `transfer`, so the others vote despite hearing from the old leader a moment ago. Abandoned
//! after an election timeout if the voter never caught up or never won. A follower asked for
//! a transfer passes the request to its leader. With a preferred leader configured, a leader
//! that is not it hands over once the preferred voter answers and holds every committed entry
//! (retried no sooner than ten election timeouts after an attempt, so a voter that cannot win
//! does not keep the group without a leader).

use super::message::{Action, Message, NodeId, Role};
use super::node::Raft;
use crate::store::{LogIndex, Term};

impl Raft {
    /// A transfer asked of this node: started if it leads, else passed to the leader.
    pub(super) fn request_transfer(&mut self, to: NodeId) {
        match (self.role, self.leader) {
            (Role::Leader, _) => self.start_transfer(to),
            (_, Some(leader)) if leader != self.cfg.id => {
                let term = self.hard.term;
                self.send(leader, Message::TransferRequest { term, to });
            }
            _ => {}
        }
    }

    /// Leader, at each heartbeat: hands over to the preferred leader when it is up (answered
    /// within a heartbeat period or two) and holds everything committed.
    pub(super) fn maybe_prefer(&mut self) {
        let Some(to) = self.cfg.preferred_leader else {
            return;
        };
        if self.role != Role::Leader
            || to == self.cfg.id
            || self.transfer.is_some()
            || self.now < self.prefer_not_before
        {
            return;
        }
        let Some(p) = self.progress.get(&to) else {
            return;
        };
        let live = p.last_heard_ms + 2 * self.cfg.heartbeat_ms.max(1) >= self.now;
        if live && p.healthy && p.match_index >= self.commit && self.counts(to, p.incarnation) {
            self.prefer_not_before = self.now + 10 * self.cfg.election_max_ms;
            self.start_transfer(to);
        }
    }

    pub(super) fn start_transfer(&mut self, to: NodeId) {
        if self.role != Role::Leader
            || to == self.cfg.id
            || !self.progress.get(&to).is_some_and(|p| {
                // Not heard from yet is no reason to refuse: it campaigns only once caught up
                // (its answers then say which directory it is).
                p.healthy && (p.incarnation == 0 || self.counts(to, p.incarnation))
            })
            || self.transfer.is_some()
        {
            return;
        }
        self.transfer = Some((to, self.now + self.cfg.election_min_ms));
        self.transfer_ready = false;
        self.actions.push(Action::PauseProposals);
    }

    /// Proposals stopped with the log ending at `last_index`: the transferee is brought up to
    /// there, then told to campaign.
    pub(super) fn on_proposals_paused(&mut self, last_index: LogIndex, term: Term) {
        if self.role != Role::Leader || term != self.hard.term || self.transfer.is_none() {
            return;
        }
        self.on_appended(last_index, term);
        self.transfer_ready = true;
        if let Some((to, _)) = self.transfer {
            if self.match_index(to) == Some(self.log.last_index()) {
                self.send_timeout_now(to);
            } else {
                self.send_append(to);
            }
        }
    }

    /// A transfer that did not finish in time: the leader takes proposals again.
    pub(super) fn abandon_transfer(&mut self) {
        if self.transfer.take().is_some() && self.role == Role::Leader {
            self.actions.push(Action::ResumeProposals);
        }
    }

    /// `to` acknowledged more: if it is the transferee and has everything, it may campaign.
    pub(super) fn maybe_finish_transfer(&mut self, to: NodeId) {
        if self.transfer_ready
            && self.transfer.is_some_and(|(t, _)| t == to)
            && self.match_index(to) == Some(self.log.last_index())
        {
            self.send_timeout_now(to);
        }
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        let term = self.hard.term;
        self.send(to, Message::TimeoutNow { term });
    }

    /// The voter a transfer under way goes to.
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.transfer.map(|(t, _)| t)
    }
}
