//! Raft, DLedger-style, written for Manifold: the consensus core that makes the CommitLog a
//! replicated log. Sans-IO — `Raft::step` takes events (ticks, messages, appends and fsyncs
//! done) with the driver's clock and returns actions (send, persist, commit, role change);
//! the driver owns sockets, the store and time. Pre-vote, check-quorum, leader stickiness,
//! the current-term commit rule, pipelined appends with fast back-off, leadership transfer.
//!
//! Never here: IO, wall-clock reads, global randomness, entry bytes beyond passing them on.

mod config;
mod election;
mod log_terms;
mod message;
mod node;
mod progress;
mod replication;
mod transfer;

pub use config::RaftConfig;
pub use log_terms::LogTerms;
pub use message::{
    Action, AppendHeader, AppendReply, Entry, Event, HardState, Message, NodeId, Role, VoteReply,
    VoteRequest,
};
pub use node::Raft;
