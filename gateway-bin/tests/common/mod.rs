//! What the multi-process tests share: starting `manifold serve` and waiting for its ready line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

pub const BIN: &str = env!("CARGO_BIN_EXE_manifold");

/// Spawns `manifold serve ARGS` (stderr piped, `RUST_LOG=info`) and waits up to 30 s for its
/// ready line; the child's stderr goes on being drained, as a supervisor would.
pub fn serve(args: &[String]) -> anyhow::Result<Child> {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn manifold serve")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("manifold ready") => return Ok(child),
            Ok(line) => said.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("manifold serve did not become ready: {said:?}");
            }
        }
    }
}
