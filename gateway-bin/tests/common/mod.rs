//! What the multi-process tests share: starting `manifold serve` and waiting for its ready line,
//! and picking ports. Each test binary uses part of it.
#![allow(dead_code)]

pub mod group;
pub mod mqtt;
pub mod ws;

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
    // Never the same port twice in one test binary: a group picks a dozen before any node
    // binds, and a repeat would make one node fail to start.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0..1000u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free port below the ephemeral range")
}

/// Starts group member `id` on `dir` with `--peers PEERS`, its RESP and HTTP listeners on
/// these ports (0: any), small segments, and `extra` flags.
pub fn member(
    dir: &std::path::Path,
    id: u64,
    peers: &str,
    resp: u16,
    http: u16,
    extra: &[String],
) -> anyhow::Result<Child> {
    member_with_mqtt(dir, id, peers, 0, resp, http, extra)
}

/// [`member`] with its MQTT listener on port `mqtt` too.
pub fn member_with_mqtt(
    dir: &std::path::Path,
    id: u64,
    peers: &str,
    mqtt: u16,
    resp: u16,
    http: u16,
    extra: &[String],
) -> anyhow::Result<Child> {
    let mut args: Vec<String> = vec!["--data-dir".into(), dir.display().to_string()];
    for a in [
        "--node-id",
        &id.to_string(),
        "--peers",
        peers,
        "--resp-addr",
        &format!("127.0.0.1:{resp}"),
        "--http-addr",
        &format!("127.0.0.1:{http}"),
        "--mqtt-addr",
        &format!("127.0.0.1:{mqtt}"),
        "--segment-size",
        "1048576",
    ] {
        args.push(a.to_string());
    }
    args.extend(extra.iter().cloned());
    serve(&args).with_context(|| format!("node {id}"))
}

/// One HTTP/1.1 request to a local listener (the answer read to its end; a chunked one is
/// refused): status and body.
pub fn http(port: u16, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no response head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    anyhow::ensure!(
        !head.to_ascii_lowercase().contains("chunked"),
        "a chunked answer: {head}"
    );
    Ok((status, body.to_string()))
}

/// Held by each multi-process test for its whole run: one group of nodes at a time per test
/// binary. Several groups at once on a two-core machine starve heartbeats past the 300 ms a
/// follower keeps faith in its leader, and the tests' timing claims (who may depose whom)
/// would depend on the load instead of the protocol.
pub fn one_group_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `script` with `python3 - ARG` and expects it to print `OK` and exit 0 (a test written
/// with a Python client library: redis-py, paho-mqtt).
pub fn run_python(script: &str, arg: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .arg("-")
        .arg(arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run python3")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && stdout.trim() == "OK",
        "python3 exited {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
