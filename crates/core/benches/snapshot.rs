//! What a snapshot of the engine state costs the applier (the clone, the journal, the store's
//! checkpoint with and without the snapshot thread's presync) and the snapshot thread (encode,
//! write). `MANIFOLD_BENCH_DIR` as the other benchmarks.

mod common;
mod engine_common;

use common::bench_dir;
use engine_common::{open_engine, request, runtime};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use manifold_core::engine::groups::{Group, Pending};
use manifold_core::engine::journal::{self, JournalEntry};
use manifold_core::engine::{EngineState, Retained};
use manifold_core::store::storage::write_atomic;
use manifold_core::store::{Outcome, RealFs, StreamId};

/// What a snapshot costs the applier. The state: 100k retained messages of 100-byte payloads
/// and 1k consumer groups with 1k pending entries each (1M). The applier pays the clone (the
/// state is on persistent maps) and, once the snapshot thread has written the snapshot, the
/// capture of the store's dispatch checkpoint. Encoding and writing the snapshot, the journal
/// of what was applied meanwhile (here 20k entries, ~65 ms at 300k entries/s) and making the
/// store's checkpoint durable happen on other threads; they are measured here for scale.
fn snapshot_stall(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let mut state = EngineState::default();
    for n in 0..100_000u32 {
        state.retained.insert(
            (0, Bytes::from(format!("site/{}/sensor/{n}", n % 100))),
            Arc::new(Retained {
                id: StreamId::new(1_700_000_000_000 + u64::from(n), 0),
                timestamp_ms: 1_700_000_000_000,
                log_index: u64::from(n) + 2,
                properties: Vec::new(),
                fields: vec![(Bytes::from_static(b"payload"), Bytes::from(vec![b'x'; 100]))],
            }),
        );
    }
    for g in 0..1000u32 {
        let mut group = Group::default();
        for p in 0..1000u64 {
            let consumer = Bytes::from(format!("consumer-{}", p % 8));
            let id = StreamId::new(1_700_000_000_000 + p, 0);
            group.pel.insert(
                id,
                Pending {
                    consumer: consumer.clone(),
                    delivered_ms: 1_700_000_000_000,
                    count: 1,
                },
            );
            group
                .consumers
                .entry(consumer)
                .or_default()
                .pending
                .insert(id);
        }
        state
            .groups
            .streams
            .entry((0, Bytes::from(format!("stream-{}", g % 100))))
            .or_default()
            .insert(Bytes::from(format!("group-{g}")), group);
    }
    let journal: Vec<JournalEntry> = (0..20_000u64)
        .map(|i| JournalEntry {
            index: 1_000_000 + i,
            outcomes: vec![Outcome::Added],
            reads: Vec::new(),
        })
        .collect();
    let path = dir.path().join("snapshot");
    let journal_path = dir.path().join("journal");
    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    g.bench_function("snapshot/applier/clone_state", |b| b.iter(|| state.clone()));
    g.bench_function("snapshot/thread/journal_20k_entries", |b| {
        b.iter(|| write_atomic(&RealFs, &journal_path, &journal::encode(&journal)).expect("write"))
    });
    // The store's dispatch checkpoint after 10k appends to 100 streams (queue files, index,
    // rows and the dispatch file made durable): what the applier pays (the capture under the
    // dispatch lock) and what the checkpoint thread does after it, with and without the
    // snapshot thread's presync before.
    let engine = open_engine(&dir.path().join("store"));
    let rt = runtime();
    let fill = || {
        rt.block_on(async {
            let mut handles = Vec::new();
            for t in 0..100u32 {
                let engine = engine.clone();
                let mut r = request("x");
                r.key = Bytes::from(format!("s{t}"));
                handles.push(tokio::spawn(async move {
                    for _ in 0..100 {
                        engine.append(r.clone()).await.expect("append");
                    }
                }));
            }
            for h in handles {
                h.await.expect("task");
            }
        })
    };
    for (presync, name) in [
        (false, "snapshot/applier/store_checkpoint_capture_after_10k"),
        (
            true,
            "snapshot/applier/store_checkpoint_capture_after_10k_presynced",
        ),
    ] {
        let mut finish = Duration::ZERO;
        let mut finishes = 0u32;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    fill();
                    if presync {
                        // What the snapshot thread does before the applier checkpoints.
                        engine.store().presync().expect("presync");
                    }
                    let start = Instant::now();
                    let pending = engine.store().begin_checkpoint().expect("capture");
                    total += start.elapsed();
                    let start = Instant::now();
                    engine.store().finish_checkpoint(pending).expect("finish");
                    finish += start.elapsed();
                    finishes += 1;
                }
                total
            })
        });
        eprintln!(
            "{name}: the checkpoint thread's part (sync, dispatch file) took {:.2} ms on average",
            finish.as_secs_f64() * 1e3 / f64::from(finishes.max(1))
        );
    }
    g.bench_function("snapshot/thread/encode", |b| b.iter(|| state.encode()));
    g.bench_function("snapshot/thread/encode+write", |b| {
        b.iter(|| write_atomic(&RealFs, &path, &state.encode()).expect("write"))
    });
    g.finish();
}

criterion_group!(benches, snapshot_stall);
criterion_main!(benches);
