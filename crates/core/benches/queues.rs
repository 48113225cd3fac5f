//! ConsumeQueue scan and seek on a 20M-entry queue (a migrated topic of 640 MiB of entries),
//! built directly through `ConsumeQueues` on the real filesystem.
//!
//! `MANIFOLD_BENCH_DIR` (default `target/bench-data`) must be on a real disk.
//! `MANIFOLD_BENCH_CQ_ENTRIES` overrides the queue length (default 20,000,000).

mod common;

use common::bench_dir;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use manifold_core::store::consume_queue::ConsumeQueues;
use manifold_core::store::{CqConfig, CqEntry, RealFs, StreamId, Topic};

fn id_of(n: u64) -> StreamId {
    // Several entries per millisecond, as a busy stream has.
    StreamId::new(1_700_000_000_000 + n / 4, n % 4)
}

fn queues(c: &mut Criterion) {
    let len: u64 = std::env::var("MANIFOLD_BENCH_CQ_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000);
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let cqs = ConsumeQueues::open(Arc::new(RealFs), dir.path(), CqConfig::default()).expect("open");
    let mut topic = Topic {
        id: 1,
        db: 0,
        key: Bytes::from_static(b"bench"),
        incarnation: 1,
        len: 0,
        first_live: 0,
        last_applied: (0, 0),
        slot: 0,
        migrated: true,
        dropped: false,
        last_id: StreamId::default(),
        removed_below: 0,
        deleted: 0,
        max_deleted_id: StreamId::default(),
        entries_added: 0,
        tail: None,
        nodes: 0,
        head_kept: false,
        head_start: None,
        head_gone: false,
    };
    let batch = 65_536u64;
    let mut n = 0;
    while n < len {
        let take = batch.min(len - n);
        let entries: Vec<CqEntry> = (n..n + take)
            .map(|i| CqEntry {
                log_index: i + 1,
                sub: 0,
                id: id_of(i),
                size: 120,
                flags: 0,
                skip: 0,
            })
            .collect();
        cqs.write_many(&topic, n, &entries).expect("write");
        n += take;
    }
    topic.len = len;
    cqs.sync().expect("sync");

    let mut g = c.benchmark_group("consume_queue");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    let chunk = 1024u64;
    g.throughput(Throughput::Elements(chunk));
    let mut at = 0u64;
    g.bench_function("scan_1024", |b| {
        b.iter(|| {
            let v = cqs.read(&topic, at, chunk).expect("read");
            at = (at + chunk) % (len - chunk);
            v.len()
        })
    });
    g.throughput(Throughput::Elements(1));
    cqs.seek(&topic, id_of(len / 2))
        .expect("builds the sparse index");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    g.bench_function(format!("seek_in_{len}"), |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let target = x % len;
            let got = cqs.seek(&topic, id_of(target)).expect("seek");
            assert_eq!(got, target);
            got
        })
    });
    g.finish();
}

criterion_group!(benches, queues);
criterion_main!(benches);
