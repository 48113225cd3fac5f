//! Restart time of a loaded engine: a child process appends `MANIFOLD_RESTART_MESSAGES`
//! (default 10,000,000) 100-byte messages over 100 streams (`sync`, 800 in flight), creates
//! 1,000 consumer groups (10 per stream) and has each read 1,000 entries (1,000,000 pending),
//! then keeps appending and reading until it is killed with SIGKILL. The parent times
//! `Engine::open` — store recovery, the snapshot and journal loaded, the log after the
//! checkpoint re-applied, a new term's no-op committed: the node serves when it returns — and
//! then a clean close followed by another open.
//!
//! `MANIFOLD_BENCH_DIR` (default `target/bench-data`) must be on a real disk with room for
//! the log (~2 GB at the default size).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use manifold_core::engine::{AppendRequest, Engine, EngineConfig, GroupStart, ReadFrom};
use manifold_core::store::{RealFs, StreamId};

const STREAMS: u64 = 100;
const GROUPS_PER_STREAM: u64 = 10;
const PENDING_PER_GROUP: u64 = 1000;

fn request(stream: u64) -> AppendRequest {
    AppendRequest::new(
        0,
        Bytes::from(format!("stream-{stream}")),
        vec![(Bytes::from_static(b"payload"), Bytes::from(vec![b'x'; 100]))],
    )
}

async fn fill(engine: &Arc<Engine>, n: u64) {
    let tasks = 800u64;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let engine = engine.clone();
        let mine = n / tasks + u64::from(t < n % tasks);
        handles.push(tokio::spawn(async move {
            for k in 0..mine {
                let r = request((t + k) % STREAMS);
                engine.append(r).await.expect("append");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
}

fn child(dir: &Path, messages: u64) {
    let engine =
        Arc::new(Engine::open(Arc::new(RealFs), dir, EngineConfig::default()).expect("open"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    rt.block_on(async {
        fill(&engine, messages).await;
        for s in 0..STREAMS {
            for g in 0..GROUPS_PER_STREAM {
                let key = Bytes::from(format!("stream-{s}"));
                let group = Bytes::from(format!("group-{g}"));
                engine
                    .group_create(
                        0,
                        key.clone(),
                        group.clone(),
                        GroupStart::Id(StreamId::default()),
                        false,
                        None,
                    )
                    .await
                    .expect("group");
                engine
                    .read_group(
                        0,
                        group,
                        Bytes::from_static(b"c"),
                        vec![(key, ReadFrom::New)],
                        PENDING_PER_GROUP,
                        false,
                    )
                    .await
                    .expect("read");
            }
        }
        println!("filled {}", engine.applied_index());
        // Until killed: appends and group reads.
        let mut k = 0u64;
        loop {
            fill(&engine, 8000).await;
            let key = Bytes::from(format!("stream-{}", k % STREAMS));
            let _ = engine
                .read_group(
                    0,
                    Bytes::from_static(b"group-0"),
                    Bytes::from_static(b"d"),
                    vec![(key, ReadFrom::New)],
                    10,
                    false,
                )
                .await;
            k += 1;
        }
    });
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("restart: bench");
        return;
    }
    let messages: u64 = std::env::var("MANIFOLD_RESTART_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    if let Some(dir) = std::env::var_os("MANIFOLD_RESTART_CHILD") {
        child(Path::new(&dir), messages);
        return;
    }
    // Profiling the open alone: `MANIFOLD_RESTART_OPEN=DIR` opens a directory a killed run
    // left (`MANIFOLD_RESTART_KEEP=1` keeps it) and stops there.
    if let Some(dir) = std::env::var_os("MANIFOLD_RESTART_OPEN") {
        let start = Instant::now();
        let engine =
            Engine::open(Arc::new(RealFs), Path::new(&dir), EngineConfig::default()).expect("open");
        println!(
            "restart/open: {:?} (applied {}) {:?}",
            start.elapsed(),
            engine.applied_index(),
            engine.open_stats()
        );
        std::mem::forget(engine); // leave the directory as it was: no checkpoint, no close
        return;
    }
    let dir = tempfile::tempdir_in(common::bench_dir()).expect("tempdir");
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .env("MANIFOLD_RESTART_CHILD", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    let filled = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("filled") => break l,
            Some(_) => continue,
            None => panic!("child ended before filling"),
        }
    };
    println!("restart: {filled} in {:?}", started.elapsed());
    // Let it run past a few checkpoints, then kill it mid-write: anywhere in the checkpoint
    // cycle, or with `MANIFOLD_RESTART_KILL=worst` at the worst moment: as a new snapshot
    // appears, before the checkpoint that follows it, so the open re-applies everything since
    // the previous checkpoint (an interval plus the snapshot's write time of traffic).
    std::thread::sleep(Duration::from_secs(3));
    if std::env::var("MANIFOLD_RESTART_KILL").as_deref() == Ok("worst") {
        let snapshots = dir.path().join(manifold_core::engine::SNAPSHOT_DIR);
        let names = || -> Vec<std::ffi::OsString> {
            std::fs::read_dir(&snapshots)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
                .unwrap_or_default()
        };
        let before = names();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let now = names();
            let new_snapshot = now.iter().any(|n| {
                !before.contains(n)
                    && n.to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            });
            if new_snapshot {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    if std::env::var_os("MANIFOLD_RESTART_KEEP").is_some() {
        let kept = dir.keep();
        println!("restart: kept {}", kept.display());
        return;
    }
    let start = Instant::now();
    let engine = Engine::open(Arc::new(RealFs), dir.path(), EngineConfig::default()).expect("open");
    let after_kill = start.elapsed();
    let pending: u64 = (0..STREAMS)
        .flat_map(|s| (0..GROUPS_PER_STREAM).map(move |g| (s, g)))
        .map(|(s, g)| {
            engine
                .pending_summary(
                    0,
                    format!("stream-{s}").as_bytes(),
                    format!("group-{g}").as_bytes(),
                )
                .map_or(0, |p| p.count)
        })
        .sum();
    let messages_now: u64 = (0..STREAMS)
        .map(|s| engine.len(0, format!("stream-{s}").as_bytes()))
        .sum();
    println!(
        "restart/after-sigkill: open {after_kill:?} ({messages_now} messages, {pending} pending, applied {}) {:?}",
        engine.applied_index(),
        engine.open_stats()
    );
    let start = Instant::now();
    engine.close().expect("close");
    let close = start.elapsed();
    let start = Instant::now();
    let engine = Engine::open(Arc::new(RealFs), dir.path(), EngineConfig::default()).expect("open");
    println!(
        "restart/after-close: close {close:?}, open {:?} {:?}",
        start.elapsed(),
        engine.open_stats()
    );
    drop(engine);
}
