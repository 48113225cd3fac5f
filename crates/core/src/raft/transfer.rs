//! Leadership transfer: the leader stops taking proposals, brings the chosen voter up to its
//! last entry, then tells it to campaign at once (`TimeoutNow`); the voter's request carries
//! `transfer`, so the others vote despite hearing from the old leader a moment ago. Abandoned
//! after an election timeout if the voter never caught up or never won.

use super::message::{Message, NodeId, Role};
use super::node::Raft;

impl Raft {
    pub(super) fn start_transfer(&mut self, to: NodeId) {
        if self.role != Role::Leader || to == self.cfg.id || !self.progress.contains_key(&to) {
            return;
        }
        self.transfer = Some((to, self.now + self.cfg.election_min_ms));
        if self.match_index(to) == Some(self.log.last_index()) {
            self.send_timeout_now(to);
        } else {
            self.send_append(to);
        }
    }

    /// `to` acknowledged more: if it is the transferee and has everything, it may campaign.
    pub(super) fn maybe_finish_transfer(&mut self, to: NodeId) {
        if self.transfer.is_some_and(|(t, _)| t == to)
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
