//! Who is in the group: the members (voters and learners), each with its Raft address and the
//! incarnation of the data directory that holds its place, as a Config entry of the log
//! carries them. Plain data and its bytes; which configuration is in force, and what it
//! counts, is the core's (`node.rs`).
//!
//! A voter's incarnation is the random number its data directory was created with (the
//! `identity` file): a wiped disk comes back with a new one, so its answers and votes do not
//! count for the place the lost directory held until a committed change names the new one.
//! Incarnation 0 stands for "whichever directory answers first": the bootstrap configuration
//! from `--peers`, which a leader pins to the incarnations it hears as soon as it leads.
//!
//! ```text
//! membership = version:u8(1) count:u32 count × member
//! member     = id:u64 incarnation:u64 role:u8 addr_len:u16 addr:addr_len bytes (UTF-8)
//! role       = 1 voter | 2 learner | 3 learner to promote once caught up
//! ```
//! All integers little-endian; the bytes end exactly after the last member. Members are
//! sorted by id, ids are unique and not 0.

use crate::store::entry::{ENTRY_HEADER_LEN, EntryKind, check_record};
use crate::store::{LogIndex, NewEntry, Term};

use super::message::NodeId;

/// A member's part in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberRole {
    /// Votes, and counts towards commits.
    Voter,
    /// Receives the log, never votes; `promote`: the leader makes it a voter once it holds
    /// every committed entry.
    Learner { promote: bool },
}

/// One member of the group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub id: NodeId,
    /// The data directory holding the place (0: not pinned yet, any).
    pub incarnation: u64,
    pub role: MemberRole,
    /// Its Raft address (`host:port`).
    pub addr: String,
}

/// A configuration of the group: its members, sorted by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Membership {
    members: Vec<Member>,
}

/// A configuration and the log entry that carries it (index 0: the bootstrap one, from
/// `--peers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigAt {
    pub index: LogIndex,
    pub term: Term,
    pub members: Membership,
}

/// A change an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// A new node joins as a learner; promoted to voter once caught up unless `learner`.
    Add {
        id: NodeId,
        addr: String,
        learner: bool,
    },
    /// A member leaves (a voter, a learner, or the leader itself, which then hands over).
    Remove { id: NodeId },
}

/// Longest address a member may have.
pub const MAX_ADDR: usize = 255;
/// Most members a configuration may have.
pub const MAX_MEMBERS: usize = 64;

impl Membership {
    /// A configuration of these members (sorted by id; a repeated id keeps the last).
    pub fn new(mut members: Vec<Member>) -> Membership {
        members.sort_by_key(|m| m.id);
        members.dedup_by(|b, a| {
            if a.id == b.id {
                std::mem::swap(a, b);
                true
            } else {
                false
            }
        });
        Membership { members }
    }

    /// The bootstrap configuration: every node of `--peers` a voter, incarnations not pinned.
    pub fn bootstrap(voters: &[(NodeId, String)]) -> Membership {
        Membership::new(
            voters
                .iter()
                .map(|(id, addr)| Member {
                    id: *id,
                    incarnation: 0,
                    role: MemberRole::Voter,
                    addr: addr.clone(),
                })
                .collect(),
        )
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|i| &self.members[i])
    }

    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut Member> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|i| &mut self.members[i])
    }

    /// Adds or replaces the member with `m.id`.
    pub fn put(&mut self, m: Member) {
        match self.members.binary_search_by_key(&m.id, |x| x.id) {
            Ok(i) => self.members[i] = m,
            Err(i) => self.members.insert(i, m),
        }
    }

    pub fn remove(&mut self, id: NodeId) -> Option<Member> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|i| self.members.remove(i))
    }

    /// The voters' ids.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|m| m.role == MemberRole::Voter)
            .map(|m| m.id)
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.get(id).is_some_and(|m| m.role == MemberRole::Voter)
    }

    /// Whether the directory `incarnation` of node `id` may hold a voter's place: pinned to
    /// it, or not pinned yet (whether that counts is the Raft core's rule).
    pub fn may_hold(&self, id: NodeId, incarnation: u64) -> bool {
        self.get(id).is_some_and(|m| {
            m.role == MemberRole::Voter && (m.incarnation == 0 || m.incarnation == incarnation)
        })
    }

    /// The bytes of a Config entry's command.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.members.len() * 32);
        out.push(1);
        out.extend_from_slice(&(self.members.len() as u32).to_le_bytes());
        for m in &self.members {
            out.extend_from_slice(&m.id.to_le_bytes());
            out.extend_from_slice(&m.incarnation.to_le_bytes());
            out.push(match m.role {
                MemberRole::Voter => 1,
                MemberRole::Learner { promote: false } => 2,
                MemberRole::Learner { promote: true } => 3,
            });
            let addr = &m.addr.as_bytes()[..m.addr.len().min(MAX_ADDR)];
            out.extend_from_slice(&(addr.len() as u16).to_le_bytes());
            out.extend_from_slice(addr);
        }
        out
    }

    /// Decodes a Config entry's command; `None` when the bytes are not one.
    pub fn decode(b: &[u8]) -> Option<Membership> {
        let mut r = b;
        let take = |r: &mut &[u8], n: usize| -> Option<Vec<u8>> {
            if r.len() < n {
                return None;
            }
            let (a, rest) = r.split_at(n);
            *r = rest;
            Some(a.to_vec())
        };
        let u64_of = |v: Vec<u8>| v.try_into().ok().map(u64::from_le_bytes);
        if take(&mut r, 1)? != [1] {
            return None;
        }
        let count = u32::from_le_bytes(take(&mut r, 4)?.try_into().ok()?) as usize;
        if count > MAX_MEMBERS {
            return None;
        }
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            let id = u64_of(take(&mut r, 8)?)?;
            let incarnation = u64_of(take(&mut r, 8)?)?;
            let role = match take(&mut r, 1)?[0] {
                1 => MemberRole::Voter,
                2 => MemberRole::Learner { promote: false },
                3 => MemberRole::Learner { promote: true },
                _ => return None,
            };
            let len = u16::from_le_bytes(take(&mut r, 2)?.try_into().ok()?) as usize;
            if len > MAX_ADDR {
                return None;
            }
            let addr = String::from_utf8(take(&mut r, len)?).ok()?;
            if id == 0 || members.last().is_some_and(|m: &Member| m.id >= id) {
                return None;
            }
            members.push(Member {
                id,
                incarnation,
                role,
                addr,
            });
        }
        r.is_empty().then_some(Membership { members })
    }
}

/// The log entry that carries `members`, made by the leader in `term`.
pub fn config_entry(term: Term, timestamp_ms: u64, members: &Membership) -> NewEntry {
    NewEntry {
        term,
        kind: EntryKind::Config,
        timestamp_ms,
        command: bytes::Bytes::from(members.encode()),
        records: Vec::new(),
    }
}

/// The configuration a log record carries, if it is a Config entry that decodes (the
/// record's checksum verified).
pub fn config_of(record: &[u8]) -> Option<Membership> {
    if record.len() < ENTRY_HEADER_LEN || record[12] != EntryKind::Config as u8 {
        return None;
    }
    check_record(record).ok()?;
    let len = u32::from_le_bytes(record[40..44].try_into().ok()?) as usize;
    let command = record.get(ENTRY_HEADER_LEN..ENTRY_HEADER_LEN.checked_add(len)?)?;
    Membership::decode(command)
}

impl std::fmt::Display for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let role = match m.role {
                MemberRole::Voter => "voter",
                MemberRole::Learner { promote: true } => "learner→voter",
                MemberRole::Learner { promote: false } => "learner",
            };
            write!(f, "{}:{}@{:x}", m.id, role, m.incarnation)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Membership {
        Membership::new(vec![
            Member {
                id: 3,
                incarnation: 7,
                role: MemberRole::Learner { promote: true },
                addr: "127.0.0.1:9003".into(),
            },
            Member {
                id: 1,
                incarnation: 0,
                role: MemberRole::Voter,
                addr: "127.0.0.1:9001".into(),
            },
        ])
    }

    #[test]
    fn bytes_round_trip_and_every_cut_is_refused() {
        let m = sample();
        let b = m.encode();
        assert_eq!(Membership::decode(&b), Some(m.clone()));
        for cut in 0..b.len() {
            assert_eq!(Membership::decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(Membership::decode(&longer), None);
        assert_eq!(m.voters().collect::<Vec<_>>(), vec![1]);
        assert!(
            m.may_hold(1, 99),
            "an unpinned place may be any directory's"
        );
        assert!(!m.may_hold(3, 7), "a learner holds no voter's place");
    }

    #[test]
    fn unsorted_or_bad_roles_are_refused() {
        let mut b = sample().encode();
        // The first member's role byte: version 1 + count 4 + id 8 + incarnation 8.
        b[21] = 9;
        assert_eq!(Membership::decode(&b), None);
        let two = Membership::new(vec![
            Member {
                id: 2,
                incarnation: 1,
                role: MemberRole::Voter,
                addr: String::new(),
            },
            Member {
                id: 1,
                incarnation: 1,
                role: MemberRole::Voter,
                addr: String::new(),
            },
        ]);
        let mut b = two.encode();
        // Swap the ids: 2 then 1.
        b[5..13].copy_from_slice(&2u64.to_le_bytes());
        b[5 + 8 + 8 + 1 + 2..5 + 8 + 8 + 1 + 2 + 8].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(Membership::decode(&b), None);
    }
}
