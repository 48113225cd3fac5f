//! What the multi-process tests share: starting `manifold serve` and waiting for its ready line,
//! and picking ports. Each test binary uses part of it.
#![allow(dead_code)]

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

/// A port for a test listener: random, below Linux's ephemeral range (32768–60999 by default)
/// so no outgoing connection's source port takes it between this check and the node's bind,
/// and free now.
pub fn free_port() -> anyhow::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0..1000u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port below the ephemeral range")
}
