//! Child process of the SIGKILL test: opens the log under the given directory with `sync`
//! flushing and appends forever, 16 in flight, printing each index once its append completed.
//! The parent kills it with SIGKILL at a random moment.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use manifold_core::store::{CommitLog, LogConfig, RealFs};
use manifold_tests::kill_test_entry;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).context("usage: append_child DIR")?);
    let config = LogConfig {
        segment_size: 256 * 1024,
        index_records_per_file: 1024,
        ..LogConfig::default()
    };
    let log = CommitLog::open(Arc::new(RealFs), &dir, config)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", log.last_index())?;
    out.flush()?;
    loop {
        let mut tickets = Vec::with_capacity(16);
        for _ in 0..16 {
            let n = log.last_index() + 1;
            tickets.push(log.append(&kill_test_entry(n))?);
        }
        for t in tickets {
            let index = t.wait()?;
            writeln!(out, "{index}")?;
        }
        out.flush()?;
    }
}
