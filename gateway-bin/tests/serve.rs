//! `manifold serve` as a real process: ready, SIGTERM for a clean stop, SIGKILL and restart,
//! and `manifold inspect` on what it leaves behind.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

mod common;
use common::BIN;

/// The server process, killed if a test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `manifold serve` and waits for its ready line; returns the process and that line.
fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<(Server, String)> {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        // Any free port: tests run in parallel, and a Redis may hold 6379 (a Mosquitto 1883).
        .args(["--resp-addr", "127.0.0.1:0"])
        .args(if extra.contains(&"--mqtt-addr") {
            &[][..]
        } else {
            &["--mqtt-addr", "127.0.0.1:0"][..]
        })
        .args(if extra.contains(&"--http-addr") {
            &[][..]
        } else {
            &["--http-addr", "127.0.0.1:0"][..]
        })
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("spawn manifold serve")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the ready line, as a supervisor would.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("manifold ready") => return Ok((Server(child), line)),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                bail!("manifold serve did not become ready");
            }
        }
    }
}

fn signal(server: &Server, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(server.0.id().to_string())
        .status()?;
    ensure!(status.success(), "kill -{name} failed");
    Ok(())
}

fn inspect(dir: &Path) -> anyhow::Result<(i32, String)> {
    let out = Command::new(BIN)
        .arg("inspect")
        .arg("--data-dir")
        .arg(dir)
        .output()?;
    Ok((
        out.status.code().context("signal")?,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn sigterm_stops_cleanly_and_the_directory_verifies() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut child, ready) = start(dir.path(), &[])?;
    ensure!(ready.contains("term=1"), "first start is term 1: {ready}");
    signal(&child, "TERM")?;
    let status = child.0.wait()?;
    ensure!(status.success(), "exit status {status}");
    let (code, out) = inspect(dir.path())?;
    ensure!(code == 0, "{out}");
    ensure!(out.contains("shutdown: clean"), "{out}");
    ensure!(
        out.contains("log: 1 entries, indexes 1..=1"),
        "the term's no-op: {out}"
    );
    Ok(())
}

#[test]
fn after_sigkill_the_directory_verifies_and_a_restart_starts_a_new_term() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut child, _) = start(dir.path(), &[])?;
    child.0.kill()?; // SIGKILL
    child.0.wait()?;
    let (code, out) = inspect(dir.path())?;
    ensure!(code == 0, "{out}");
    ensure!(out.contains("shutdown: unclean"), "{out}");
    let (mut child, ready) = start(dir.path(), &[])?;
    ensure!(ready.contains("term=2"), "{ready}");
    signal(&child, "INT")?;
    ensure!(child.0.wait()?.success());
    let (code, out) = inspect(dir.path())?;
    ensure!(code == 0 && out.contains("shutdown: clean"), "{out}");
    ensure!(out.contains("log: 2 entries"), "one no-op per term: {out}");
    Ok(())
}

#[test]
fn a_peers_list_that_does_not_make_a_group_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for (peers, why) in [
        (
            "2=127.0.0.1:7002,3=127.0.0.1:7003",
            "--peers does not name this node",
        ),
        (
            "1=127.0.0.1:7001,1=127.0.0.1:7002",
            "--peers names node 1 twice",
        ),
        ("1=127.0.0.1:7001,2", "is not ID=HOST:PORT"),
        ("1=127.0.0.1:7001,x=127.0.0.1:7002", "is not a node id"),
    ] {
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--node-id", "1", "--peers", peers])
            .output()?;
        ensure!(out.status.code() == Some(2), "{peers}: {:?}", out.status);
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(err.contains(why), "{peers}: {err}");
    }
    Ok(())
}

#[test]
fn a_closed_stderr_does_not_kill_the_node() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--resp-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--mqtt-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    loop {
        let line = lines.next().context("exited before ready")??;
        if line.contains("manifold ready") {
            break;
        }
    }
    drop(lines); // the supervisor goes away: the node's next log lines hit a closed pipe
    let server = Server(child);
    signal(&server, "TERM")?;
    let mut server = server;
    let status = server.0.wait()?;
    ensure!(status.success(), "exit status {status}");
    let (code, out) = inspect(dir.path())?;
    ensure!(code == 0 && out.contains("shutdown: clean"), "{out}");
    Ok(())
}

#[test]
fn a_single_node_answers_the_admin_routes_as_its_own_leader() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = common::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let (server, _) = start(dir.path(), &["--http-addr", &addr])?;
    let get = |path: &str| common::http(port, "GET", path);
    let cli = |args: &[&str]| -> anyhow::Result<(i32, String, String)> {
        let out = Command::new(BIN)
            .arg("cluster")
            .args(args)
            .args(["--http-addr", &addr])
            .output()?;
        Ok((
            out.status.code().context("killed")?,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (code, out, err) = cli(&["status", "--json"])?;
    ensure!(code == 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        v["role"] == "leader" && v["leader_id"] == 1 && v["node_id"] == 1,
        "{v}"
    );
    ensure!(v["peers"].as_array().is_some_and(Vec::is_empty), "{v}");
    ensure!(
        v["applied_index"].as_u64() >= Some(1),
        "the no-op is applied: {v}"
    );
    let (status, _) = get("/health")?;
    ensure!(status == 200);
    let (status, page) = get("/metrics")?;
    ensure!(
        status == 200 && page.contains("manifold_raft_role{role=\"leader\"} 1"),
        "{page}"
    );
    let (status, _) = get("/no/such/route")?;
    ensure!(status == 404);
    let (code, _, err) = cli(&["transfer-leader", "--to", "2"])?;
    ensure!(code == 1 && err.contains("group of one"), "{code} {err}");
    signal(&server, "TERM")?;
    Ok(())
}

#[test]
fn a_data_directory_of_another_node_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, _) = start(dir.path(), &[])?;
    signal(&server, "TERM")?;
    let mut server = server;
    server.0.wait()?;
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--node-id", "2", "--resp-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
        .output()?;
    ensure!(out.status.code() == Some(2), "{:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("belongs to node 1, not node 2"),
        "stderr: {err}"
    );
    let (code, summary) = inspect(dir.path())?;
    ensure!(
        code == 0 && summary.contains("directory: node 1, incarnation "),
        "{summary}"
    );
    // Its own node still opens it.
    let (server, _) = start(dir.path(), &[])?;
    signal(&server, "TERM")?;
    Ok(())
}
