//! Manifold's core: the store (`store`), the RocketMQ-style log that is also the Raft log, and
//! the engine (`engine`), the API every front end uses. The Raft module (replication) comes in
//! between in a later issue, behind the engine's API.

pub mod engine;
pub mod store;
