//! How long after an append a waiting reader is woken: one waiter on one topic, one append at
//! a time, in `async` flush mode so that no fdatasync is on the path (the figure is what the
//! pipeline adds beyond the disk: propose, pwrite, apply, wake). Prints percentiles over
//! `MANIFOLD_WAKE_SAMPLES` (default 20,000) sequential samples; a percentile needs every sample,
//! which criterion does not report. `MANIFOLD_BENCH_DIR` as the other benchmarks.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use manifold_core::engine::{AppendRequest, Engine, EngineConfig, Wake};
use manifold_core::store::{FlushMode, LogConfig, RealFs, StoreConfig};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("wake: bench");
        return;
    }
    let samples: usize = std::env::var("MANIFOLD_WAKE_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir_in(common::bench_dir()).expect("tempdir");
    let config = EngineConfig {
        store: StoreConfig {
            log: LogConfig {
                segment_size: 256 << 20,
                flush: FlushMode::Async { interval_ms: 1000 },
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
        .enable_time()
        .build()
        .expect("runtime");
    let request = AppendRequest::new(
        0,
        Bytes::from_static(b"wake"),
        vec![(Bytes::from_static(b"payload"), Bytes::from(vec![b'x'; 100]))],
    );
    let mut lat = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let (go_tx, mut go_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let waiter = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let topics = [(0u8, Bytes::from_static(b"wake"))];
                while let Some(after) = go_rx.recv().await {
                    loop {
                        match engine.wait(&topics, after, Duration::from_secs(5)).await {
                            Wake::Entry(_) => break,
                            Wake::Changed => break,
                            Wake::Timeout => continue,
                        }
                    }
                    if tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
            })
        };
        let mut lat = Vec::with_capacity(samples);
        for n in 0..samples + 1000 {
            go_tx.send(engine.applied_index()).expect("waiter");
            // Let the waiter register before the append.
            while engine.waiting() == 0 {
                tokio::task::yield_now().await;
            }
            let start = Instant::now();
            engine.append(request.clone()).await.expect("append");
            let woke = rx.recv().await.expect("wake");
            if n >= 1000 {
                lat.push(woke.saturating_duration_since(start));
            }
        }
        drop(go_tx);
        let _ = waiter.await;
        lat
    });
    report("wake/append-to-waiter/async", &mut lat);
    // The same appends with nobody waiting: the append's own round trip, for comparison (the
    // applier wakes waiters just before it replies).
    let mut own = rt.block_on(async {
        let mut lat = Vec::with_capacity(samples);
        for _ in 0..samples {
            let start = Instant::now();
            engine.append(request.clone()).await.expect("append");
            lat.push(start.elapsed());
        }
        lat
    });
    report("wake/append-reply/async", &mut own);
}

fn report(name: &str, lat: &mut [Duration]) {
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "{name}: n={} p50={:?} p90={:?} p99={:?} p99.9={:?} max={:?}",
        lat.len(),
        p(0.50),
        p(0.90),
        p(0.99),
        p(0.999),
        lat[lat.len() - 1]
    );
}
