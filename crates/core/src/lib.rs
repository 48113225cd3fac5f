//! Manifold's core. Today: the store (`store`), the RocketMQ-style log that is also the Raft
//! log. The engine and the Raft module sit on top of it in later issues.

pub mod store;
