//! End-to-end appends through the engine's pipeline (propose → append → fdatasync → apply →
//! reply) with `sync` flushing and 800 appends in flight (800 tasks, one append each at a
//! time), 100-byte values, one stream; and what a snapshot of the engine state costs.
//! `MANIFOLD_BENCH_DIR` as the other benchmarks.

mod common;

use common::bench_dir;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use manifold_core::engine::{AppendRequest, Engine, EngineConfig, EngineState, IdSpec, Retained};
use manifold_core::store::storage::write_atomic;
use manifold_core::store::{LogConfig, RealFs, StoreConfig, StreamId};

fn engine_appends(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let config = EngineConfig {
        store: StoreConfig {
            log: LogConfig {
                segment_size: 256 << 20,
                ..LogConfig::default()
            },
            ..StoreConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::open(Arc::new(RealFs), dir.path(), config).expect("open"));
    while !engine.store().log().next_segment_ready() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let request = AppendRequest {
        db: 0,
        key: Bytes::from_static(b"bench"),
        id: IdSpec::Auto,
        fields: vec![(Bytes::from_static(b"payload"), Bytes::from(vec![b'x'; 100]))],
        properties: Vec::new(),
        message_key: Bytes::new(),
        nomkstream: false,
        trim: None,
        retain: manifold_core::engine::RetainEffect::None,
        producer: None,
    };
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("append/sync/800_in_flight", |b| {
        b.iter_custom(|n| {
            let tasks = 800u64;
            let start = Instant::now();
            rt.block_on(async {
                let mut handles = Vec::new();
                for t in 0..tasks {
                    let engine = engine.clone();
                    let request = request.clone();
                    let mine = n / tasks + u64::from(t < n % tasks);
                    handles.push(tokio::spawn(async move {
                        for _ in 0..mine {
                            engine.append(request.clone()).await.expect("append");
                        }
                    }));
                }
                for h in handles {
                    h.await.expect("task");
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

/// What a snapshot costs the applier (which waits for it): encoding the engine state and
/// writing it atomically (temp file, fdatasync, rename, directory fsync), for 100k retained
/// messages of 100-byte payloads. The store's dispatch checkpoint that follows it is measured
/// with the store.
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
    let path = dir.path().join("snapshot");
    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    g.bench_function("snapshot/100k_retained/encode", |b| {
        b.iter(|| state.encode())
    });
    g.bench_function("snapshot/100k_retained/encode+write", |b| {
        b.iter(|| write_atomic(&RealFs, &path, &state.encode()).expect("write"))
    });
    g.finish();
}

criterion_group!(benches, engine_appends, snapshot_stall);
criterion_main!(benches);
