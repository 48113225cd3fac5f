//! End-to-end appends through the engine's pipeline (propose → append → fdatasync → apply →
//! reply) with `sync` flushing and 800 appends in flight (800 tasks, one append each at a
//! time), 100-byte values, one stream; the consumer-group read + ack cycle (XREADGROUP COUNT
//! 100, then XACK of what it got, 16 consumers); and what a snapshot of the engine state costs.
//! `MANIFOLD_BENCH_DIR` as the other benchmarks.

mod common;

use common::bench_dir;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use manifold_core::engine::{
    AppendRequest, Engine, EngineConfig, EngineState, GroupStart, IdSpec, ReadFrom, Retained,
};
use manifold_core::store::storage::write_atomic;
use manifold_core::store::{LogConfig, RealFs, StoreConfig, StreamId};

fn open_engine(dir: &std::path::Path) -> Arc<Engine> {
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
    let engine = Arc::new(Engine::open(Arc::new(RealFs), dir, config).expect("open"));
    while !engine.store().log().next_segment_ready() {
        std::thread::sleep(Duration::from_millis(5));
    }
    engine
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime")
}

fn request(key: &'static str) -> AppendRequest {
    AppendRequest {
        db: 0,
        key: Bytes::from_static(key.as_bytes()),
        id: IdSpec::Auto,
        fields: vec![(Bytes::from_static(b"payload"), Bytes::from(vec![b'x'; 100]))],
        properties: Vec::new(),
        message_key: Bytes::new(),
        nomkstream: false,
        trim: None,
        retain: manifold_core::engine::RetainEffect::None,
        producer: None,
    }
}

/// Appends `n` messages with 800 in flight.
async fn fill(engine: &Arc<Engine>, request: &AppendRequest, n: u64) {
    let tasks = 800u64;
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
}

fn engine_appends(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let engine = open_engine(dir.path());
    let rt = runtime();
    let request = request("bench");
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("append/sync/800_in_flight", |b| {
        b.iter_custom(|n| {
            let start = Instant::now();
            rt.block_on(fill(&engine, &request, n));
            start.elapsed()
        })
    });
    g.finish();
}

/// The group cycle: each of 16 consumers reads `>` with COUNT 100 and acknowledges what it got,
/// until the `n` messages appended beforehand (not timed) are all read and acknowledged. Each
/// read and each ack is a command through the log (fdatasync'd, `sync`).
fn group_read_ack(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let engine = open_engine(dir.path());
    let rt = runtime();
    let request = request("jobs");
    rt.block_on(async {
        engine
            .group_create(
                0,
                Bytes::from_static(b"jobs"),
                Bytes::from_static(b"g"),
                GroupStart::Last,
                true,
                None,
            )
            .await
            .expect("group");
    });
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("group/read+ack/16_consumers_count_100", |b| {
        b.iter_custom(|n| {
            rt.block_on(fill(&engine, &request, n));
            let start = Instant::now();
            rt.block_on(async {
                let left = Arc::new(std::sync::atomic::AtomicU64::new(n));
                let mut handles = Vec::new();
                for c in 0..16 {
                    let engine = engine.clone();
                    let left = left.clone();
                    let consumer = Bytes::from(format!("c{c}"));
                    handles.push(tokio::spawn(async move {
                        while left.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                            let served = engine
                                .read_group(
                                    0,
                                    Bytes::from_static(b"g"),
                                    consumer.clone(),
                                    vec![(Bytes::from_static(b"jobs"), ReadFrom::New)],
                                    100,
                                    false,
                                )
                                .await
                                .expect("read");
                            let Some((_, entries)) = served.into_iter().next() else {
                                tokio::task::yield_now().await;
                                continue;
                            };
                            let ids: Vec<StreamId> = entries.iter().map(|e| e.id).collect();
                            let got = ids.len() as u64;
                            let acked = engine
                                .ack(
                                    0,
                                    Bytes::from_static(b"jobs"),
                                    Bytes::from_static(b"g"),
                                    ids,
                                )
                                .await
                                .expect("ack");
                            assert_eq!(acked, got);
                            left.fetch_sub(got, std::sync::atomic::Ordering::Relaxed);
                        }
                    }));
                }
                for h in handles {
                    h.await.expect("consumer");
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

criterion_group!(benches, engine_appends, group_read_ack, snapshot_stall);
criterion_main!(benches);
