//! Reading by MQTT filter from a log index (a persistent session's replay) over many topics.
//! `MANIFOLD_BENCH_DIR` as the other benchmarks.

mod common;
mod engine_common;

use common::bench_dir;
use engine_common::{open_engine, request, runtime};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};

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

criterion_group!(benches, filter_read);
criterion_main!(benches);
