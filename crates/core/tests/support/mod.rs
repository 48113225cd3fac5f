//! What the engine tests share: an engine configuration sized for the simulated disk, which
//! holds every byte in memory (small segments, map files, arena and index files), opening an
//! engine on it, and a runtime to drive the engine's async calls.
#![allow(dead_code)] // each test file uses part of this

use std::path::PathBuf;
use std::sync::Arc;

use manifold_core::engine::{Engine, EngineConfig, EngineError};
use manifold_core::store::SimDisk;

/// The engine on the simulated disk's `/data`.
pub fn open(disk: &SimDisk, config: EngineConfig) -> Result<Engine, EngineError> {
    Engine::open(Arc::new(disk.clone()), &PathBuf::from("/data"), config)
}

/// A small multi-threaded runtime with timers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime")
}

/// Small files, and a snapshot + checkpoint after every applied batch (so restarts load
/// snapshots and journals mid-run).
pub fn small_config() -> EngineConfig {
    let mut c = EngineConfig::default();
    c.store.log.segment_size = 64 * 1024;
    c.store.log.index_records_per_file = 256;
    c.store.queues.arena_file_slots = 64;
    c.store.index.slots = 64;
    c.store.index.entries = 256;
    c.store.dispatch_checkpoint_interval_ms = 0;
    c
}
