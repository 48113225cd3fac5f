//! What Raft nodes say to each other, and what the core asks its driver to do. Plain data:
//! the core never touches a socket, a clock or a disk; the driver turns `Action`s into IO and
//! IO results back into `Event`s.

use bytes::Bytes;

use crate::store::{LogIndex, Term};

use super::membership::{ConfigAt, Membership, MembershipChange};

/// A node's identity in the group (its `--node-id`).
pub type NodeId = u64;

/// One log entry on the wire: its term and the store's encoded record (opaque to the core).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Term the entry was created in.
    pub term: Term,
    /// The entry as the store encodes it.
    pub data: Bytes,
}

/// A vote request, real or pre-vote. The candidate is the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteRequest {
    /// The candidate's term (for a pre-vote: the term it would campaign in).
    pub term: Term,
    /// A pre-vote: asks whether the voter would vote, changes no one's term.
    pub pre: bool,
    /// Index and term of the candidate's last entry (the entry's own term, never the
    /// candidate's current term: rocketmq#2178 elected a stale node by comparing those).
    pub last_index: LogIndex,
    pub last_term: Term,
    /// Sent after a `TimeoutNow`: voters drop their leader stickiness for it.
    pub transfer: bool,
}

/// The answer to a vote request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteReply {
    /// The voter's term, or the request's term for a granted pre-vote.
    pub term: Term,
    pub pre: bool,
    pub granted: bool,
}

/// The header of an append: where the entries go and what the leader has committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendHeader {
    pub term: Term,
    /// The entry just before the first one sent, which the follower must hold.
    pub prev_index: LogIndex,
    pub prev_term: Term,
    /// The leader's commit index.
    pub commit: LogIndex,
}

/// A follower's answer to an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReply {
    pub term: Term,
    pub success: bool,
    /// Success: the follower's log matches the leader's, durably, up to here. Failure: the
    /// `prev_index` it could not match.
    pub index: LogIndex,
    /// Failure: where the leader should look next (fast back-off): one past the follower's
    /// last index if its log is shorter (`hint_term` 0), else the first index of the term it
    /// holds at `prev_index` (`hint_term`).
    pub hint_index: LogIndex,
    pub hint_term: Term,
}

/// Node-to-node messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Vote(VoteRequest),
    VoteReply(VoteReply),
    /// Entries `prev_index + 1 ..` (none: a probe).
    Append {
        header: AppendHeader,
        entries: Vec<Entry>,
    },
    AppendReply(AppendReply),
    /// The leader's liveness and commit index, on their own lane: never behind bulk appends.
    Heartbeat {
        term: Term,
        commit: LogIndex,
    },
    /// Carries the follower's storage health: a leader hands leadership only to a voter
    /// whose disk is healthy.
    HeartbeatReply {
        term: Term,
        healthy: bool,
    },
    /// Campaign now, without pre-vote (leadership transfer).
    TimeoutNow {
        term: Term,
    },
    /// A follower asked to hand leadership to `to` passes the request to the leader.
    TransferRequest {
        term: Term,
        to: NodeId,
    },
    /// A follower asked for a membership change passes the request to the leader.
    MembershipRequest {
        term: Term,
        change: MembershipChange,
    },
    /// The leader no longer holds the entries the follower needs next (retention removed
    /// them): fetch an image of the leader and install it.
    InstallImage {
        term: Term,
    },
}

impl Message {
    /// The sender's term.
    pub fn term(&self) -> Term {
        match self {
            Message::Vote(v) => v.term,
            Message::VoteReply(v) => v.term,
            Message::Append { header, .. } => header.term,
            Message::AppendReply(r) => r.term,
            Message::Heartbeat { term, .. }
            | Message::HeartbeatReply { term, .. }
            | Message::TimeoutNow { term }
            | Message::TransferRequest { term, .. }
            | Message::MembershipRequest { term, .. }
            | Message::InstallImage { term } => *term,
        }
    }
}

/// Term and vote: what must be durable before any message that depends on it goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: Term,
    /// 0 = no vote in `term`.
    pub voted_for: NodeId,
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Asking for pre-votes: its term is unchanged until a majority would vote for it.
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    /// The role's name as status reports show it: `follower`, `pre-candidate`, `candidate`,
    /// `leader`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// What happened, for the core to react to. Every event comes with the driver's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed; timers due by now fire.
    Tick,
    /// A message from node `from`, whose data directory is `incarnation` (its votes and
    /// acknowledgements count only for the place that incarnation holds).
    Message {
        from: NodeId,
        incarnation: u64,
        msg: Message,
    },
    /// The leader appended its own entries (proposals, or the no-op it was asked for) through
    /// `last_index`, all in `term`. Ignored unless the node still leads that term (entries
    /// appended just before it stepped down are dropped by the next `Persist` or election).
    Appended {
        last_index: LogIndex,
        term: Term,
    },
    /// The local log is durable through `index`, whose entry has `term` (a report about an
    /// entry since truncated does not match and is ignored).
    Persisted {
        index: LogIndex,
        term: Term,
    },
    /// Hand leadership to `to` (a voter). A follower passes the request to the leader it
    /// knows.
    TransferLeader {
        to: NodeId,
    },
    /// The leader appended the Config entry it asked for (`AppendConfig`) at `index`, in
    /// `term` (ignored unless the node still leads that term).
    ConfigAppended {
        index: LogIndex,
        term: Term,
        members: Membership,
    },
    /// An operator asks for a membership change; a follower passes it to the leader.
    ChangeMembership(MembershipChange),
    /// Retention removed the log's entries below `first_index` (all committed and applied):
    /// their terms are forgotten, and a follower that needs them is reported as needing a
    /// snapshot instead of being sent entries the log no longer holds.
    LogCompacted {
        first_index: LogIndex,
    },
    /// The driver's answer to `PauseProposals`: no proposal is appended from now on, and the
    /// log ends at `last_index` (entries of `term`; ignored unless the node still leads it).
    ProposalsPaused {
        last_index: LogIndex,
        term: Term,
    },
    /// The disk failed or stalled: a leader steps down; the node neither campaigns nor votes
    /// until `StorageRecovered`.
    StorageFailed,
    StorageRecovered,
}

/// What the core asks the driver to do, in order. `SaveHardState` must be durable before
/// any later action of the same batch is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    SaveHardState(HardState),
    Send {
        to: NodeId,
        msg: Message,
    },
    /// Send the entries `header.prev_index + 1 ..= last` (read from the store) after `header`.
    /// The driver may split the range into several appends, in order, each bounded in bytes
    /// (an entry larger than the bound goes alone).
    SendEntries {
        to: NodeId,
        header: AppendHeader,
        last: LogIndex,
    },
    /// Follower: drop the local log after `truncate_after` (if any), then append `entries`
    /// (their indexes follow), and report `Persisted` once durable. Never truncates a
    /// committed entry.
    Persist {
        truncate_after: Option<LogIndex>,
        first_index: LogIndex,
        entries: Vec<Entry>,
    },
    /// New leader: append a no-op in `term` (then report `Appended`).
    AppendNoop {
        term: Term,
    },
    /// Entries up to here are committed: apply them.
    Commit(LogIndex),
    /// Leader: write `configs` (what is in force now and since the last committed one) with
    /// `members` added at the index the new Config entry gets, durably, then append that
    /// entry in `term` and report `ConfigAppended`.
    AppendConfig {
        term: Term,
        configs: Vec<ConfigAt>,
        members: Membership,
    },
    /// The configurations in the log changed (a follower received or lost Config entries):
    /// write them durably before any later action (the `Persist` that carries them).
    SaveMembers(Vec<ConfigAt>),
    /// A transfer starts: stop appending proposals, then answer `ProposalsPaused` with the
    /// log's last index (the transferee must catch up with a log that no longer grows).
    PauseProposals,
    /// The transfer was abandoned while this node still leads: take proposals again.
    ResumeProposals,
    RoleChanged {
        role: Role,
        term: Term,
        leader: Option<NodeId>,
    },
    /// Follower: fetch an image of `leader` and install it (the node restarts on it), unless
    /// one is being fetched already — because the leader offers one (this node is behind its
    /// retained log), or because this node's committed entries are not the leader's
    /// (`diverged`: possible only after a loss of acknowledged writes, `async` flushing with a
    /// majority down; applied entries are never truncated in place).
    FetchImage {
        leader: NodeId,
        diverged: bool,
    },
}
