//! How long after its commit a waiting reader is woken: one waiter on one topic, one append at
//! a time. For each flush mode it reports the time from the log's acknowledgement of the entry
//! (the pwrite in `async`, the fdatasync in `sync`: [`CommitLog::acknowledged`]) to the waiter
//! running again — what the pipeline adds beyond the disk: the applier's wake-up, apply, the
//! waiter task's wake-up — and, for context, from the `append` call to the waiter running.
//! The same appends with nobody waiting give the append's own round trip, and `floor/` what
//! waking a parked task from a plain thread costs here by itself. Prints percentiles
//! over `MANIFOLD_WAKE_SAMPLES` (default 20,000) sequential samples; a percentile needs every
//! sample, which criterion does not report. `MANIFOLD_BENCH_DIR` as the other benchmarks.
//!
//! [`CommitLog::acknowledged`]: manifold_core::store::CommitLog::acknowledged

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
    for (mode, flush) in [
        ("async", FlushMode::Async { interval_ms: 1000 }),
        ("sync", FlushMode::Sync),
    ] {
        let dir = tempfile::tempdir_in(common::bench_dir()).expect("tempdir");
        let engine = open(dir.path(), flush);
        let (mut from_commit, mut from_append) = rt.block_on(woken(&engine, &request, samples));
        report(&format!("wake/commit-to-waiter/{mode}"), &mut from_commit);
        report(&format!("wake/append-to-waiter/{mode}"), &mut from_append);
        // The same appends with nobody waiting: the append's own round trip, for comparison
        // (the applier wakes waiters just before it replies).
        let mut own = rt.block_on(async {
            let mut lat = Vec::with_capacity(samples);
            for _ in 0..samples {
                let start = Instant::now();
                engine.append(request.clone()).await.expect("append");
                lat.push(start.elapsed());
            }
            lat
        });
        report(&format!("wake/append-reply/{mode}"), &mut own);
    }
    floor(&rt, samples);
}

/// The floor under commit → waiter on this machine, measured in the same run: a plain thread
/// (as the applier is) wakes a task parked on the same runtime (as a blocked reader is)
/// through a oneshot, with nothing else in between; and, for scale, a plain thread waking
/// another plain thread.
fn floor(rt: &tokio::runtime::Runtime, samples: usize) {
    let (ask_tx, mut ask_rx) = tokio::sync::mpsc::unbounded_channel();
    let (woke_tx, woke_rx) = std::sync::mpsc::channel::<Instant>();
    rt.spawn(async move {
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            if ask_tx.send(tx).is_err() || rx.await.is_err() {
                return;
            }
            if woke_tx.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    let mut to_task = Vec::with_capacity(samples);
    for n in 0..samples + 1000 {
        let Some(tx) = ask_rx.blocking_recv() else {
            break;
        };
        std::thread::sleep(Duration::from_micros(50)); // the task's worker parks
        let start = Instant::now();
        let _ = tx.send(());
        let woke = woke_rx.recv().expect("woken");
        if n >= 1000 {
            to_task.push(woke.saturating_duration_since(start));
        }
    }
    drop(ask_rx);
    report("floor/thread-to-parked-task", &mut to_task);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (woke_tx, woke_rx) = std::sync::mpsc::channel::<Instant>();
    let other = std::thread::spawn(move || {
        while go_rx.recv().is_ok() {
            if woke_tx.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    let mut to_thread = Vec::with_capacity(samples);
    for n in 0..samples + 1000 {
        std::thread::sleep(Duration::from_micros(50)); // the other thread sleeps
        let start = Instant::now();
        go_tx.send(()).expect("thread");
        let woke = woke_rx.recv().expect("woken");
        if n >= 1000 {
            to_thread.push(woke.saturating_duration_since(start));
        }
    }
    drop(go_tx);
    let _ = other.join();
    report("floor/thread-to-sleeping-thread", &mut to_thread);
}

fn open(dir: &std::path::Path, flush: FlushMode) -> Arc<Engine> {
    let config = EngineConfig {
        store: StoreConfig {
            log: LogConfig {
                segment_size: 256 << 20,
                flush,
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

/// One waiter woken by one append at a time, after 1,000 warm-up rounds: for each sample, the
/// time from the entry's acknowledgement by the log to the waiter running, and from the
/// `append` call to the waiter running.
async fn woken(
    engine: &Arc<Engine>,
    request: &AppendRequest,
    samples: usize,
) -> (Vec<Duration>, Vec<Duration>) {
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
    let mut from_commit = Vec::with_capacity(samples);
    let mut from_append = Vec::with_capacity(samples);
    let mut n = 0;
    while from_commit.len() < samples {
        go_tx.send(engine.applied_index()).expect("waiter");
        // Let the waiter register before the append.
        while engine.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let start = Instant::now();
        engine.append(request.clone()).await.expect("append");
        let index = engine.applied_index();
        let woke = rx.recv().await.expect("wake");
        n += 1;
        // A sample counts only if the last acknowledgement was this entry's alone (a timer's
        // entry acknowledged later would shorten it).
        let acked = engine.store().log().acknowledged();
        if let (true, Some((at, when))) = (n > 1000, acked)
            && at == index
        {
            from_commit.push(woke.saturating_duration_since(when));
            from_append.push(woke.saturating_duration_since(start));
        }
    }
    drop(go_tx);
    let _ = waiter.await;
    (from_commit, from_append)
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
