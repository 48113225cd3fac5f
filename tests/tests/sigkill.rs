//! A real child process appending with `sync` is killed with SIGKILL again and again; every
//! index it printed as completed must be present, byte for byte, after reopening.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use manifold_core::store::{CommitLog, LogConfig, RealFs};
use manifold_tests::kill_test_entry;

const ROUNDS: u32 = 24;

fn verify(dir: &std::path::Path, printed: u64) -> anyhow::Result<u64> {
    let config = LogConfig {
        segment_size: 256 * 1024,
        index_records_per_file: 1024,
        ..LogConfig::default()
    };
    let log = CommitLog::open(Arc::new(RealFs), dir, config)?;
    let last = log.last_index();
    ensure!(
        last >= printed,
        "acknowledged index {printed} lost: log ends at {last}"
    );
    for i in 1..=last {
        let got = log.entry(i)?;
        let want = kill_test_entry(i);
        ensure!(
            got.command == want.command && got.records == want.records,
            "entry {i} differs"
        );
    }
    log.close()?;
    Ok(last)
}

#[test]
fn acknowledged_appends_survive_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let child = env!("CARGO_BIN_EXE_append_child");
    let mut printed = 0u64;
    let mut kills = 0;
    for round in 0..ROUNDS {
        let mut proc = Command::new(child)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn append_child")?;
        let stdout = proc.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.next().context("child exited before ready")??;
        ensure!(
            ready.starts_with("ready "),
            "unexpected first line {ready:?}"
        );
        // Kill at a moment that varies by round: after 5..120 ms of appending.
        let deadline = Instant::now() + Duration::from_millis(5 + u64::from(round * 37 % 115));
        while Instant::now() < deadline {
            match lines.next() {
                Some(line) => printed = printed.max(line?.trim().parse()?),
                None => bail!("child exited on its own in round {round}"),
            }
        }
        proc.kill()?; // SIGKILL
        proc.wait()?;
        kills += 1;
        // Lines the child printed before it died still count as acknowledged.
        for line in lines {
            if let Ok(n) = line?.trim().parse::<u64>() {
                printed = printed.max(n);
            }
        }
        // Every other round the parent recovers; otherwise the child recovers on its own.
        if round % 2 == 1 {
            verify(dir.path(), printed)?;
        }
    }
    ensure!(kills >= 20, "only {kills} kills");
    ensure!(printed > 0, "the child never completed an append");
    let last = verify(dir.path(), printed)?;
    println!("{kills} kills, {printed} acknowledged, log ends at {last}");
    Ok(())
}
