//! Raft, DLedger-style, written for Manifold: the consensus core that makes the CommitLog a
//! replicated log. Sans-IO — `Raft::step` takes events (ticks, messages, appends and fsyncs
//! done) with the driver's clock and returns actions (send, persist, commit, role change);
//! the driver owns sockets, the store and time. Pre-vote, check-quorum, leader stickiness,
//! the current-term commit rule, pipelined appends with fast back-off, leadership transfer.
//!
//! The core (`node`, `election`, `replication`, `progress`, `transfer`, `log_terms`) never does
//! IO, reads a clock, uses global randomness or looks into entry bytes. `replica_log` and
//! `hard_state` are the driver's half: carrying actions out against the store and the disk.

mod config;
pub mod driver;
mod election;
pub mod handshake;
pub mod hard_state;
mod log_terms;
pub mod members_file;
pub mod membership;
mod message;
mod node;
mod progress;
mod reconfig;
mod replica_log;
mod replication;
mod transfer;
pub mod transport;
pub mod wire;

pub use config::{RaftConfig, Rng};
pub use hard_state::HARD_STATE_FILE;
pub use log_terms::LogTerms;
pub use membership::{ConfigAt, Member, MemberRole, Membership, MembershipChange};
pub use message::{
    Action, AppendHeader, AppendReply, Entry, Event, HardState, Message, NodeId, Role, VoteReply,
    VoteRequest,
};
pub use node::Raft;
pub use replica_log::{appends, log_terms, persist};
