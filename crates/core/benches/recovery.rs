//! Recovery time after a crash, for logs of several sizes: a child process fills a log to the
//! size, keeps appending (sync, 800 in flight) for a while, and is killed with SIGKILL; the
//! parent then times `CommitLog::open`, which recovers. The claim under test: recovery time
//! does not grow with the log's size (it scans from the checkpoint, not from the start).
//!
//! `MANIFOLD_RECOVERY_GIB` (default "1,20") lists the sizes; `MANIFOLD_BENCH_DIR` (default
//! `target/bench-data`) must be on a real disk with room for the largest.

mod common;

use common::{bench_dir, entry};

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use manifold_core::store::{AppendTicket, CommitLog, LogConfig, RealFs};

/// Appends with `window` in flight until `stop` says so.
fn append_while(log: &CommitLog, body: usize, window: usize, mut stop: impl FnMut(u64) -> bool) {
    let mut inflight: VecDeque<AppendTicket> = VecDeque::new();
    let mut n = log.last_index();
    while !stop(n) {
        if inflight.len() == window {
            let t = inflight.pop_front().expect("full window");
            t.wait().expect("append");
        }
        n += 1;
        inflight.push_back(log.append(&entry(n, body)).expect("append"));
    }
    for t in inflight {
        t.wait().expect("append");
    }
}

fn child(dir: &Path, gib: u64) {
    let log = CommitLog::open(Arc::new(RealFs), dir, LogConfig::default()).expect("open");
    let target = gib << 30;
    let big = 64 * 1024;
    let per_entry = entry(0, big).encoded_len() as u64;
    append_while(&log, big, 64, |n| n * per_entry >= target);
    println!("filled {}", log.last_index());
    // Then small entries until killed.
    append_while(&log, 100, 800, |_| false);
}

fn main() {
    if let Some(dir) = std::env::var_os("MANIFOLD_RECOVERY_CHILD") {
        let gib = std::env::var("MANIFOLD_RECOVERY_CHILD_GIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        child(Path::new(&dir), gib);
        return;
    }
    let sizes: Vec<u64> = std::env::var("MANIFOLD_RECOVERY_GIB")
        .unwrap_or_else(|_| "1,20".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for gib in sizes {
        let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
        let fill_start = Instant::now();
        let mut proc = Command::new(std::env::current_exe().expect("exe"))
            .env("MANIFOLD_RECOVERY_CHILD", dir.path())
            .env("MANIFOLD_RECOVERY_CHILD_GIB", gib.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(proc.stdout.take().expect("stdout")).lines();
        let filled = lines.next().expect("child output").expect("line");
        let fill_time = fill_start.elapsed();
        std::thread::sleep(Duration::from_millis(2500));
        proc.kill().expect("SIGKILL");
        proc.wait().expect("reap");
        let start = Instant::now();
        let log =
            CommitLog::open(Arc::new(RealFs), dir.path(), LogConfig::default()).expect("recover");
        let took = start.elapsed();
        let r = log.recovery_report().clone();
        println!(
            "recovery/{gib}GiB: {:.1} ms  (unclean {}, scanned {} entries from index {}, zeroed {} bytes, \
             last index {}; {filled} after {:.0} s of filling)",
            took.as_secs_f64() * 1000.0,
            r.unclean_shutdown,
            r.scanned_entries,
            r.scan_from,
            r.zeroed_bytes,
            r.last_index,
            fill_time.as_secs_f64(),
        );
        log.close().expect("close");
    }
}
