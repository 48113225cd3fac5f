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
use manifold_core::engine::groups::{Group, Pending};
use manifold_core::engine::journal::{self, JournalEntry};
use manifold_core::engine::{
    AppendRequest, Engine, EngineConfig, EngineState, GroupStart, IdSpec, ReadFrom, Retained,
};
use manifold_core::store::storage::write_atomic;
use manifold_core::store::{LogConfig, Outcome, RealFs, StoreConfig, StreamId};

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

/// What a snapshot costs the applier. The state: 100k retained messages of 100-byte payloads
/// and 1k consumer groups with 1k pending entries each (1M). The applier pays the clone (the
/// state is on persistent maps) and, once the snapshot thread has written the snapshot, the
/// journal of what it applied meanwhile (here 20k entries, ~65 ms at 300k entries/s) before
/// the store's dispatch checkpoint, which is measured with the store. Encoding and writing the
/// snapshot happen on another thread; they are measured here for scale.
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
    g.bench_function("snapshot/applier/journal_20k_entries", |b| {
        b.iter(|| write_atomic(&RealFs, &journal_path, &journal::encode(&journal)).expect("write"))
    });
    // The store's dispatch checkpoint after 10k appends to 100 streams (queue files, index,
    // rows and the dispatch file made durable).
    let engine = open_engine(&dir.path().join("store"));
    let rt = runtime();
    for presync in [false, true] {
        let name = if presync {
            "snapshot/applier/store_checkpoint_after_10k_presynced"
        } else {
            "snapshot/applier/store_checkpoint_after_10k"
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
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
                    });
                    if presync {
                        // What the snapshot thread does before the applier checkpoints.
                        engine.store().presync().expect("presync");
                    }
                    let start = Instant::now();
                    engine.store().checkpoint().expect("checkpoint");
                    total += start.elapsed();
                }
                total
            })
        });
    }
    g.bench_function("snapshot/thread/encode", |b| b.iter(|| state.encode()));
    g.bench_function("snapshot/thread/encode+write", |b| {
        b.iter(|| write_atomic(&RealFs, &path, &state.encode()).expect("write"))
    });
    g.finish();
}

/// Reading by MQTT filter from a log index (a persistent session's replay): 10,000 topics of
/// 50 messages each (500k messages); `site/7/#` matches 100 of them (5,000 messages). Reads
/// 1,000 messages from the start of the log, the last 10 (a session almost caught up), and
/// with a filter matching nothing (the pass over the topic table every read makes).
fn filter_read(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let engine = open_engine(dir.path());
    let rt = runtime();
    rt.block_on(async {
        let mut handles = Vec::new();
        for task in 0..100u32 {
            let engine = engine.clone();
            handles.push(tokio::spawn(async move {
                for round in 0..50u32 {
                    for k in 0..100u32 {
                        let t = task * 100 + k;
                        let mut r = request("x");
                        r.key = Bytes::from(format!("site/{}/dev/{}", t % 100, t / 100));
                        r.fields[0].1 = Bytes::from(round.to_string());
                        engine.append(r).await.expect("append");
                    }
                }
            }));
        }
        for h in handles {
            h.await.expect("task");
        }
    });
    let last = engine.applied_index();
    let tail = engine
        .read_filters(&[b"site/7/#"], 0, usize::MAX)
        .expect("read")
        .iter()
        .rev()
        .nth(10)
        .map(|m| m.message.log_index)
        .expect("messages");
    let mut g = c.benchmark_group("engine");
    g.sample_size(20);
    g.bench_function("filter_read/500k_log/100_of_10k_topics/first_1000", |b| {
        b.iter(|| {
            let got = engine.read_filters(&[b"site/7/#"], 0, 1000).expect("read");
            assert_eq!(got.len(), 1000);
        })
    });
    g.bench_function("filter_read/500k_log/100_of_10k_topics/last_10", |b| {
        b.iter(|| {
            let got = engine
                .read_filters(&[b"site/7/#"], tail, 1000)
                .expect("read");
            assert_eq!(got.len(), 10);
        })
    });
    g.bench_function("filter_read/500k_log/no_match", |b| {
        b.iter(|| {
            let got = engine.read_filters(&[b"nothing/#"], 0, 1000).expect("read");
            assert!(got.is_empty() && last > 0);
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    engine_appends,
    group_read_ack,
    filter_read,
    snapshot_stall
);
criterion_main!(benches);
