//! What the engine tests share: an engine configuration sized for the simulated disk, which
//! holds every byte in memory (small segments, map files, arena and index files).
#![allow(dead_code)] // each test file uses part of this

use manifold_core::engine::EngineConfig;

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
