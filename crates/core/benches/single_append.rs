//! One append in flight, as a whole process, against the disk's own ceiling: run it twice,
//! `log` (CommitLog, sync mode: append, wait, repeat) and `raw` (pwrite + fdatasync of the
//! same record size on a file preallocated the same way), and compare the two wall times
//! pair by pair with a process timer (`hyperfine`, `/usr/bin/time`).
//!
//! Usage: `single_append log|raw [COUNT]` (default 3000). `MANIFOLD_BENCH_DIR` as the others.
//! Under `cargo bench` (an argument `--bench`), alternates the two three times and prints
//! their rates and ratio.

mod common;

use common::{bench_dir, entry};

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use manifold_core::store::{CommitLog, LogConfig, RealFs};

const SEGMENT: u64 = 64 << 20;

fn log(count: u64) -> f64 {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let config = LogConfig {
        segment_size: SEGMENT,
        ..LogConfig::default()
    };
    let log = CommitLog::open(Arc::new(RealFs), dir.path(), config).expect("open");
    // Steady state: the background preallocation of the next segment is done (it happens
    // once per segment; its big fdatasync would otherwise compete with the timed ones).
    while !log.next_segment_ready() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let start = Instant::now();
    for n in 1..=count {
        log.append(&entry(n, 100))
            .expect("append")
            .wait()
            .expect("durable");
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn raw(count: u64) -> f64 {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("raw"))
        .expect("raw file");
    let zeros = vec![0u8; 1 << 20];
    for i in 0..SEGMENT >> 20 {
        file.write_all_at(&zeros, i << 20).expect("zero");
    }
    file.sync_all().expect("sync");
    let record = vec![b'x'; entry(0, 100).encoded_len()];
    let start = Instant::now();
    for n in 0..count {
        file.write_all_at(&record, 64 + n * record.len() as u64)
            .expect("write");
        file.sync_data().expect("fdatasync");
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(3000);
    match args.first().map(String::as_str) {
        Some("log") => println!("log: {:.0} appends/s", log(count)),
        Some("raw") => println!("raw: {:.0} fdatasyncs/s", raw(count)),
        _ => {
            for _ in 0..3 {
                let (l, r) = (log(count), raw(count));
                println!(
                    "single append: log {l:.0}/s, raw pwrite+fdatasync {r:.0}/s, ratio {:.2}",
                    l / r
                );
            }
        }
    }
}
