//! A million topics × ten messages (an MQTT deployment with a topic per device): append,
//! dispatch, then report anonymous and file-backed RSS, open file handles, disk bytes per
//! topic, and the reopen time — the reopen measured in a fresh child process so its RSS is
//! the store's own.
//!
//! `MANIFOLD_BENCH_TOPICS` (default 1,000,000), `MANIFOLD_BENCH_DIR` (default
//! `target/bench-data`, a real disk).

mod common;

use common::bench_dir;

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use manifold_core::store::{
    AppendTicket, EntryKind, MessageStore, NewEntry, RealFs, RecordOp, StoreConfig, StreamId,
    SubRecord,
};

const PER_TOPIC: u64 = 10;
const PER_ENTRY: u64 = 100;

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Allocated bytes (blocks) and files under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                let (b, f) = disk_usage(&e.path());
                bytes += b;
                files += f;
            } else {
                bytes += m.blocks() * 512;
                files += 1;
            }
        }
    }
    (bytes, files)
}

fn mib(kib_or_bytes: u64, unit: u64) -> f64 {
    (kib_or_bytes * unit) as f64 / (1u64 << 20) as f64
}

fn reopen(dir: &Path) {
    let start = Instant::now();
    let store = MessageStore::open(Arc::new(RealFs), dir, StoreConfig::default()).expect("reopen");
    let last = store.log().last_index();
    store.dispatch_to(last).expect("dispatch");
    let took = start.elapsed();
    println!(
        "reopen: {:.0} ms, {} topics, RssAnon {:.1} MiB, RssFile {:.1} MiB, open fds {}",
        took.as_secs_f64() * 1000.0,
        store.topic_count(),
        mib(status("RssAnon:"), 1024),
        mib(status("RssFile:"), 1024),
        open_fds(),
    );
}

fn main() {
    if let Some(dir) = std::env::var_os("MANIFOLD_TOPICS_REOPEN") {
        reopen(Path::new(&dir));
        return;
    }
    let topics: u64 = std::env::var("MANIFOLD_BENCH_TOPICS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let store =
        MessageStore::open(Arc::new(RealFs), dir.path(), StoreConfig::default()).expect("open");
    let names: Vec<Bytes> = (0..topics)
        .map(|t| Bytes::from(format!("device/{t:07}/telemetry")))
        .collect();
    let payload = Bytes::from(vec![b'x'; 64]);

    let start = Instant::now();
    let mut inflight: VecDeque<AppendTicket> = VecDeque::new();
    for round in 0..PER_TOPIC {
        let mut t = 0;
        while t < topics {
            let records = (t..(t + PER_ENTRY).min(topics))
                .map(|k| SubRecord {
                    op: RecordOp::Message,
                    db: 0,
                    topic: names[k as usize].clone(),
                    id: StreamId::new(round + 1, 0),
                    message_key: Bytes::new(),
                    properties: Vec::new(),
                    fields: vec![(Bytes::from_static(b"payload"), payload.clone())],
                })
                .collect();
            let e = NewEntry {
                term: 1,
                kind: EntryKind::Command,
                timestamp_ms: round,
                command: Bytes::new(),
                records,
            };
            if inflight.len() == 64 {
                inflight.pop_front().expect("full").wait().expect("append");
            }
            inflight.push_back(store.log().append(&e).expect("append"));
            t += PER_ENTRY;
        }
    }
    for ticket in inflight {
        ticket.wait().expect("append");
    }
    let appended = start.elapsed();
    drop(names); // the bench's own copy of the names is not the store's memory
    let start = Instant::now();
    let last = store.log().last_index();
    store.dispatch_to(last).expect("dispatch");
    store.checkpoint().expect("checkpoint");
    let dispatched = start.elapsed();
    let messages = topics * PER_TOPIC;
    println!(
        "{topics} topics x {PER_TOPIC} messages: append {:.1} s ({:.0} msg/s), dispatch {:.1} s ({:.0} msg/s)",
        appended.as_secs_f64(),
        messages as f64 / appended.as_secs_f64(),
        dispatched.as_secs_f64(),
        messages as f64 / dispatched.as_secs_f64(),
    );
    println!(
        "after dispatch: RssAnon {:.1} MiB, RssFile {:.1} MiB, open fds {}, queue handles {}",
        mib(status("RssAnon:"), 1024),
        mib(status("RssFile:"), 1024),
        open_fds(),
        store.open_queue_handles(),
    );
    store.close().expect("close");
    for sub in ["commitlog", "raftindex", "consumequeue", "index"] {
        let (bytes, files) = disk_usage(&dir.path().join(sub));
        println!(
            "disk {sub}: {:.1} MiB in {files} files, {:.0} bytes per topic",
            mib(bytes, 1),
            bytes as f64 / topics as f64
        );
    }
    let status = Command::new(std::env::current_exe().expect("exe"))
        .env("MANIFOLD_TOPICS_REOPEN", dir.path())
        .status()
        .expect("reopen child");
    assert!(status.success());
}
