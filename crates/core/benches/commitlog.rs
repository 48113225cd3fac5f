//! CommitLog append throughput on the real filesystem, with the raw disk as the reference:
//! `baseline/pwrite_fdatasync` is one overwrite + one `fdatasync` per entry on a preallocated
//! file, the ceiling for one append in flight.
//!
//! The data directory is `$MANIFOLD_BENCH_DIR` or `target/bench-data`: it must be on a real
//! disk (a tmpfs makes fdatasync free and the figures meaningless).

mod common;

use common::{bench_dir, entry};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use manifold_core::store::{AppendTicket, CommitLog, FlushMode, LogConfig, NewEntry, RealFs};

fn open(flush: FlushMode) -> (tempfile::TempDir, CommitLog) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let config = LogConfig {
        segment_size: 256 << 20,
        flush,
        ..LogConfig::default()
    };
    let log = CommitLog::open(Arc::new(RealFs), dir.path(), config).expect("open");
    while !log.next_segment_ready() {
        std::thread::sleep(Duration::from_millis(5)); // start in steady state
    }
    (dir, log)
}

/// Appends `n` entries keeping `window` in flight from one thread.
fn run_window(log: &CommitLog, n: u64, window: usize, e: &NewEntry) -> Duration {
    let start = Instant::now();
    let mut inflight: VecDeque<AppendTicket> = VecDeque::with_capacity(window);
    for _ in 0..n {
        if inflight.len() == window {
            let t = inflight.pop_front().expect("window is full");
            t.wait().expect("append");
        }
        inflight.push_back(log.append(e).expect("append"));
    }
    for t in inflight {
        t.wait().expect("append");
    }
    start.elapsed()
}

fn appends(c: &mut Criterion) {
    let e = entry(1, 100);
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));

    let (_d1, log) = open(FlushMode::Sync);
    g.bench_function("sync/800_in_flight", |b| {
        b.iter_custom(|n| run_window(&log, n, 800, &e))
    });
    g.bench_function("sync/1_in_flight", |b| {
        b.iter_custom(|n| run_window(&log, n, 1, &e))
    });
    drop(log);

    let (_d2, log) = open(FlushMode::Async { interval_ms: 100 });
    g.bench_function("async/64_in_flight", |b| {
        b.iter_custom(|n| run_window(&log, n, 64, &e))
    });
    drop(log);

    // The reference: the disk's own overwrite + fdatasync rate on a preallocated file.
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let path = dir.path().join("raw");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("raw");
    let size = 64u64 << 20;
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![0u8; size as usize], 0).expect("zero");
    file.sync_all().expect("sync");
    let record = vec![b'x'; e.encoded_len()];
    let mut off = 0u64;
    g.bench_function("baseline/pwrite_fdatasync", |b| {
        b.iter(|| {
            std::os::unix::fs::FileExt::write_all_at(&file, &record, off).expect("write");
            file.sync_data().expect("sync");
            off = (off + record.len() as u64) % (size - record.len() as u64);
        })
    });
    g.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
