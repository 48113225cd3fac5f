//! Manifold's core: the store (`store`), the RocketMQ-style log that is also the Raft log; the
//! Raft consensus core (`raft`, sans-IO) that replicates it; and the engine (`engine`), the API
//! every front end uses.

pub mod engine;
pub mod raft;
pub mod store;
