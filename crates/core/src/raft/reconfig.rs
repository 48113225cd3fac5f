//! Membership changes, one voter at a time (Raft dissertation §4.1): a Config entry is in
//! force as soon as it is in the log (appended, not committed); the leader appends the next
//! one only after the last has committed and after an entry of its own term has committed
//! (the fix for the single-server change bug). What it changes on its own: incarnations not
//! pinned yet (the bootstrap configuration) are pinned to the directories that answer; a
//! voter whose directory came back with another incarnation (a wiped disk) gets its place
//! back once it holds every committed entry; a learner to promote becomes a voter once caught
//! up. What operators ask (`ChangeMembership`): add a learner, remove a member. A leader that
//! removed itself hands over and steps down once the change commits.
//!
//! Never here: IO, or a change that adds or removes more than one voter.

use crate::store::{LogIndex, Term};

use super::membership::{ConfigAt, Member, MemberRole, Membership, MembershipChange};
use super::message::{Action, Message, NodeId, Role};
use super::node::Raft;
use super::progress::Progress;

impl Raft {
    /// An operator's change: queued by the leader, passed on by a follower.
    pub(super) fn request_change(&mut self, change: MembershipChange) {
        match (self.role, self.leader) {
            (Role::Leader, _) => {
                if !self.changes.contains(&change) {
                    self.changes.push_back(change);
                }
                self.maybe_reconfigure();
            }
            (_, Some(leader)) if leader != self.cfg.id => {
                let term = self.hard.term;
                self.send(leader, Message::MembershipRequest { term, change });
            }
            _ => {}
        }
    }

    /// Leader of a group on its bootstrap configuration: founds it — the first entry of its
    /// term pins every voter to the directory it heard from (its own, the votes', the
    /// heartbeat answers') — once every voter answered or the founding is due.
    pub(super) fn maybe_found(&mut self) {
        let Some(due) = self.founding_due else {
            return;
        };
        let all = self.membership().voters().all(|v| self.heard(v) != 0);
        if self.role != Role::Leader || !(all || self.now >= due) {
            return;
        }
        let founding = self.pinned(self.membership());
        self.founding_due = None;
        self.config_pending = true;
        self.actions.push(Action::AppendConfig {
            term: self.hard.term,
            configs: self.configs.clone(),
            members: founding,
        });
    }

    /// Leader: the next configuration, if one is due and none is under way.
    pub(super) fn maybe_reconfigure(&mut self) {
        if self.role != Role::Leader
            || self.founding_due.is_some()
            || self.config_pending
            || !self.healthy
            || self.transfer.is_some()
            || self.configs[self.configs.len() - 1].index > self.commit
            || self.log.term_at(self.commit) != Some(self.hard.term)
        {
            return;
        }
        let current = self.membership().clone();
        let me = self.cfg.id;
        // Incarnations not pinned yet take the directory that answers (no place changes
        // hands: nothing else counted for it).
        let mut next = self.pinned(&current);
        // One change of who votes: an operator's first, else a returned directory or a
        // learner to promote, once it holds every committed entry.
        while let Some(change) = self.changes.pop_front() {
            if let Some(changed) = self.apply_change(&next, &change) {
                next = changed;
                break;
            }
        }
        if next.voters().eq(current.voters()) {
            let caught_up = |id: NodeId| {
                self.progress
                    .get(&id)
                    .is_some_and(|p| p.incarnation != 0 && p.match_index >= self.commit)
            };
            let due = current.members().iter().find(|m| {
                m.id != me
                    && caught_up(m.id)
                    && match m.role {
                        MemberRole::Voter => {
                            m.incarnation != 0 && m.incarnation != self.heard(m.id)
                        }
                        MemberRole::Learner { promote } => promote,
                    }
            });
            if let Some(m) = due {
                next.put(Member {
                    incarnation: self.heard(m.id),
                    role: MemberRole::Voter,
                    ..m.clone()
                });
            }
        }
        if next != current {
            self.config_pending = true;
            let term = self.hard.term;
            self.actions.push(Action::AppendConfig {
                term,
                configs: self.configs.clone(),
                members: next,
            });
        }
    }

    /// The incarnation node `id` answers from, as far as the leader heard (0: not yet).
    fn heard(&self, id: NodeId) -> u64 {
        if id == self.cfg.id {
            self.cfg.incarnation
        } else {
            self.progress.get(&id).map_or(0, |p| p.incarnation)
        }
    }

    /// `config` with every place not pinned yet pinned to the directory heard from, if any.
    fn pinned(&self, config: &Membership) -> Membership {
        let mut next = config.clone();
        for m in config.members() {
            let incarnation = self.heard(m.id);
            if m.incarnation == 0 && incarnation != 0 {
                next.put(Member {
                    incarnation,
                    ..m.clone()
                });
            }
        }
        next
    }

    /// `config` with an operator's change made, if it is one to make (an add of a node
    /// already there, a remove of one that is not, or of the last voter, is dropped).
    fn apply_change(&self, config: &Membership, change: &MembershipChange) -> Option<Membership> {
        let mut next = config.clone();
        match change {
            MembershipChange::Add { id, addr, learner } => {
                if *id == 0 || config.get(*id).is_some() {
                    return None;
                }
                next.put(Member {
                    id: *id,
                    incarnation: 0,
                    role: MemberRole::Learner { promote: !learner },
                    addr: addr.clone(),
                });
            }
            MembershipChange::Remove { id } => {
                next.remove(*id)?;
                // The voters whose place is pinned must still make a majority (a place not
                // pinned counts for nothing until its node answers), and the last voter stays.
                let voters = next.voters().count();
                let pinned = next
                    .members()
                    .iter()
                    .filter(|m| m.role == MemberRole::Voter && m.incarnation != 0)
                    .count();
                if voters == 0 || pinned < voters / 2 + 1 {
                    return None;
                }
            }
        }
        Some(next)
    }

    /// Leader: the Config entry it asked for is in the log at `index`.
    pub(super) fn on_config_appended(&mut self, index: LogIndex, term: Term, members: Membership) {
        if term == self.hard.term {
            self.config_pending = false;
        }
        if self.role != Role::Leader || term != self.hard.term {
            return;
        }
        if index <= self.configs[self.configs.len() - 1].index {
            return;
        }
        self.on_appended(index, term);
        self.configs.push(ConfigAt {
            index,
            term,
            members,
        });
        self.sync_progress();
        // Counting changed: the commit index may move (a voter gone), the send set too.
        self.maybe_commit();
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for p in peers {
            self.send_append(p);
        }
    }

    /// Leader: a progress record for every member in force, none for others.
    pub(super) fn sync_progress(&mut self) {
        let ids: Vec<NodeId> = self.peers().collect();
        self.progress.retain(|id, _| ids.contains(id));
        let (last, now) = (self.log.last_index(), self.now);
        for id in ids {
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(last, now));
        }
    }

    /// Follower: the entries at `first..` (after a truncation after `truncated`, if any)
    /// changed which configurations are in the log: they are written before the entries.
    pub(super) fn note_configs(
        &mut self,
        truncated: Option<LogIndex>,
        first: LogIndex,
        entries: &[super::message::Entry],
    ) {
        let mut changed = false;
        if let Some(t) = truncated {
            let before = self.configs.len();
            while self.configs.len() > 1 && self.configs[self.configs.len() - 1].index > t {
                self.configs.pop();
            }
            changed = self.configs.len() != before;
        }
        for (k, e) in entries.iter().enumerate() {
            if let Some(members) = super::membership::config_of(&e.data) {
                self.configs.push(ConfigAt {
                    index: first + k as u64,
                    term: e.term,
                    members,
                });
                changed = true;
            }
        }
        if changed {
            self.actions.push(Action::SaveMembers(self.configs.clone()));
        }
    }

    /// The commit index moved: configurations before the last committed one are history. A
    /// leader whose removal committed hands over to the most caught-up voter and steps down.
    pub(super) fn compact_configs(&mut self) {
        let committed = self
            .configs
            .iter()
            .rposition(|c| c.index <= self.commit)
            .unwrap_or(0);
        if committed > 0 {
            self.configs.drain(..committed);
        }
        if self.role == Role::Leader
            && self.configs[self.configs.len() - 1].index <= self.commit
            && !self.membership().is_voter(self.cfg.id)
        {
            let last = self.log.last_index();
            let heir = self
                .progress
                .iter()
                .filter(|(id, p)| self.counts(**id, p.incarnation) && p.match_index == last)
                .map(|(id, _)| *id)
                .next();
            if let Some(to) = heir {
                let term = self.hard.term;
                self.send(to, Message::TimeoutNow { term });
            }
            self.become_follower(self.hard.term, None);
        }
    }
}
