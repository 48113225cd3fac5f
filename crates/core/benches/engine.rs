//! End-to-end appends through the engine's pipeline (propose → append → fdatasync → apply →
//! reply) with `sync` flushing and 800 appends in flight (800 tasks, one append each at a
//! time; and 50 tasks each proposing runs of 16, as the RESP front end proposes a connection's
//! pipeline), 100-byte values, one stream; and the consumer-group read + ack cycle (XREADGROUP
//! COUNT 100, then XACK of what it got, 16 consumers). `MANIFOLD_BENCH_DIR` as the other
//! benchmarks.

mod common;
mod engine_common;

// The binary's allocator (gateway-bin): what the pipeline runs on in production. The
// applier frees what the proposers allocated; glibc's arenas make that a lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use common::bench_dir;
use engine_common::{fill, open_engine, request, runtime};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use manifold_core::engine::{GroupStart, ReadFrom};
use manifold_core::store::StreamId;

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
    // The same 800 in flight as the RESP front end proposes a pipeline: 50 producers, each
    // with a run of 16 appends in one `append_many` (each still its own log entry).
    g.bench_function("append_many/sync/50x16_in_flight", |b| {
        b.iter_custom(|n| {
            let start = Instant::now();
            rt.block_on(fill_pipelined(&engine, &request, n, 50, 16));
            start.elapsed()
        })
    });
    g.finish();
}

/// Appends `n` messages from `producers` tasks, each proposing runs of `run` at a time.
async fn fill_pipelined(
    engine: &Arc<manifold_core::engine::Engine>,
    request: &manifold_core::engine::AppendRequest,
    n: u64,
    producers: u64,
    run: u64,
) {
    let mut handles = Vec::new();
    for t in 0..producers {
        let engine = engine.clone();
        let request = request.clone();
        let mut mine = n / producers + u64::from(t < n % producers);
        handles.push(tokio::spawn(async move {
            while mine > 0 {
                let k = mine.min(run);
                let reqs = (0..k).map(|_| request.clone()).collect();
                for answer in engine.append_many(reqs).await {
                    answer.expect("append");
                }
                mine -= k;
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
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

criterion_group!(benches, engine_appends, group_read_ack);
criterion_main!(benches);
