//! Three `manifold serve` processes as one Raft group on loopback, with a real Redis client:
//! a leader is elected; a writer keeps appending through whichever node leads while the test
//! SIGKILLs the leader and restarts it, cycle after cycle; afterwards every node holds every
//! acknowledged write exactly once, in the same order, and `manifold inspect` finds each data
//! directory clean. Failover times (leader SIGKILL → first acknowledged write through a
//! survivor) are printed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

mod common;
use common::BIN;
use common::free_port;

/// SIGKILL-and-restart cycles of the leader (`MANIFOLD_CLUSTER_CYCLES` to change).
fn cycles() -> usize {
    std::env::var("MANIFOLD_CLUSTER_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

struct Node {
    id: u64,
    dir: PathBuf,
    resp: u16,
    http: u16,
    /// More `serve` flags.
    extra: Vec<String>,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Node {
    fn start(&mut self, peers: &str) -> anyhow::Result<()> {
        self.child = Some(common::member(
            &self.dir,
            self.id,
            peers,
            self.resp,
            self.http,
            &self.extra,
        )?);
        Ok(())
    }

    fn kill(&mut self, signal: &str) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()?;
        ensure!(status.success(), "kill -{signal} failed");
        child.wait()?;
        Ok(())
    }

    fn client(&self) -> anyhow::Result<redis::Connection> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}/", self.resp))?;
        let con = c.get_connection_with_timeout(Duration::from_millis(500))?;
        con.set_read_timeout(Some(Duration::from_secs(3)))?;
        con.set_write_timeout(Some(Duration::from_secs(3)))?;
        Ok(con)
    }

    /// `manifold_raft_role` from INFO, if the node answers.
    fn role(&self) -> Option<String> {
        let mut con = self.client().ok()?;
        let info: String = redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("manifold_raft_role:"))
            .map(|r| r.trim().to_string())
    }
}

/// The node that says it leads (and takes writes), waiting up to `limit`.
fn leader(nodes: &[Node], limit: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for (i, n) in nodes.iter().enumerate() {
            if n.child.is_some() && n.role().as_deref() == Some("leader") {
                return Ok(i);
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    bail!("no leader within {limit:?}")
}

/// Appends `n` through whichever running node takes it; the ID if one did. A node that
/// refuses (an error reply) or cannot be reached is passed over; one that took the request and
/// then went silent (a reset, a timeout) ends the attempt: the write may have been made, and
/// sending it again elsewhere would make a second one — as a real client without an
/// idempotency key would. (Followers forward writes to the leader, so any node takes them.)
fn write_once(nodes: &Mutex<Vec<(u16, bool)>>, n: u64) -> Option<String> {
    let targets = nodes.lock().ok()?.clone();
    for (port, up) in targets {
        if !up {
            continue;
        }
        let Ok(c) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
            continue;
        };
        let Ok(mut con) = c.get_connection_with_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let _ = con.set_read_timeout(Some(Duration::from_secs(3)));
        let r: redis::RedisResult<String> = redis::cmd("XADD")
            .arg("s")
            .arg("*")
            .arg("n")
            .arg(n)
            .query(&mut con);
        match r {
            Ok(id) => return Some(id),
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    || e.code().is_some() => {}
            Err(_) => return None,
        }
    }
    None
}

/// Three nodes started as one group with `extra` flags each; the `--peers` value.
fn group(root: &Path, extra: &[&str]) -> anyhow::Result<(Vec<Node>, String)> {
    group_each(root, |_| extra.iter().map(|s| s.to_string()).collect())
}

/// Three nodes started as one group, node `id` with the flags `extra(id)`.
fn group_each(
    root: &Path,
    extra: impl Fn(u64) -> Vec<String>,
) -> anyhow::Result<(Vec<Node>, String)> {
    let mut nodes = Vec::new();
    let mut peers = Vec::new();
    for id in 1..=3u64 {
        peers.push(format!("{id}=127.0.0.1:{}", free_port()?));
        nodes.push(Node {
            id,
            dir: root.join(format!("n{id}")),
            resp: free_port()?,
            http: free_port()?,
            extra: extra(id),
            child: None,
        });
    }
    let peers = peers.join(",");
    for n in &mut nodes {
        n.start(&peers)?;
    }
    Ok((nodes, peers))
}

fn values(node: &Node) -> anyhow::Result<Vec<u64>> {
    let mut con = node.client()?;
    let entries: Vec<(String, Vec<(String, u64)>)> = redis::cmd("XRANGE")
        .arg("s")
        .arg("-")
        .arg("+")
        .query(&mut con)?;
    Ok(entries.into_iter().map(|(_, f)| f[0].1).collect())
}

fn inspect(dir: &Path) -> anyhow::Result<i32> {
    let out = Command::new(BIN)
        .arg("inspect")
        .arg("--data-dir")
        .arg(dir)
        .output()?;
    out.status.code().context("inspect killed")
}

#[test]
fn a_three_node_group_keeps_every_acknowledged_write_through_leader_kills() -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (mut nodes, peers) = group(root.path(), &[])?;
    // A healthy leader answers every command of a pipeline (an entry committed before its
    // proposal reached the applier was once answered READONLY).
    let l = leader(&nodes, Duration::from_secs(10))?;
    let mut con = nodes[l].client()?;
    // Slow, not wrong, when the disk is busy (CI starts this binary right after the build,
    // its writeback still going): every reply must come, within a generous bound.
    con.set_read_timeout(Some(Duration::from_secs(30)))?;
    for _ in 0..20 {
        let mut pipe = redis::pipe();
        for i in 0..200 {
            pipe.cmd("XADD").arg("p").arg("*").arg("i").arg(i);
        }
        let ids: Vec<String> = pipe.query(&mut con)?;
        ensure!(
            ids.len() == 200,
            "a pipeline of 200 XADDs got {} replies",
            ids.len()
        );
    }
    drop(con);

    // The writer: one append at a time, through any node that takes it.
    let up = Arc::new(Mutex::new(
        nodes.iter().map(|n| (n.resp, true)).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    // The last write started: one started after a kill can only be acknowledged by a survivor.
    let started = Arc::new(AtomicU64::new(0));
    let writer = {
        let (up, stop, acked, started) = (up.clone(), stop.clone(), acked.clone(), started.clone());
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                started.store(n, Ordering::SeqCst);
                if write_once(&up, n).is_some()
                    && let Ok(mut a) = acked.lock()
                {
                    a.push(n);
                }
            }
        })
    };

    let mut failovers = Vec::new();
    for _ in 0..cycles() {
        thread::sleep(Duration::from_millis(200));
        let l = leader(&nodes, Duration::from_secs(10))?;
        let killed = Instant::now();
        nodes[l].kill("KILL")?;
        let after = started.load(Ordering::SeqCst);
        // Failover: until a write started after the kill is acknowledged (by a survivor).
        loop {
            ensure!(
                killed.elapsed() < Duration::from_secs(10),
                "no write acknowledged 10 s after the leader was killed"
            );
            if acked
                .lock()
                .map(|a| a.last().is_some_and(|v| *v > after))
                .unwrap_or(false)
            {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        failovers.push(killed.elapsed());
        nodes[l].start(&peers)?;
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?;
    failovers.sort();
    if !failovers.is_empty() {
        eprintln!(
            "failover over {} leader kills: p50 {:?}, max {:?}",
            failovers.len(),
            failovers[failovers.len() / 2],
            failovers[failovers.len() - 1]
        );
    }

    // Every node ends with every acknowledged write, once, in the same order.
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    ensure!(!acked.is_empty(), "nothing was acknowledged");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lists = Vec::new();
    loop {
        lists.clear();
        for n in &nodes {
            lists.push(values(n).unwrap_or_default());
        }
        if lists.windows(2).all(|w| w[0] == w[1]) || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    for (n, list) in nodes.iter().zip(&lists) {
        let mut seen = std::collections::HashSet::new();
        for v in list {
            ensure!(seen.insert(*v), "node {}: write {v} twice", n.id);
        }
        for v in &acked {
            ensure!(
                seen.contains(v),
                "node {}: acknowledged write {v} missing",
                n.id
            );
        }
        ensure!(
            list.windows(2).all(|w| w[0] < w[1]),
            "node {}: writes out of order",
            n.id
        );
    }
    ensure!(
        lists.windows(2).all(|w| w[0] == w[1]),
        "the nodes hold different streams"
    );
    // State-machine safety: at the same applied index, the same engine state everywhere.
    eventually(|| {
        let mut seen = Vec::new();
        for n in &nodes {
            let (status, body) = http(n.http, "GET", "/cluster/digest")?;
            ensure!(status == 200, "/cluster/digest {status}");
            let v: serde_json::Value = serde_json::from_str(&body)?;
            seen.push((v["applied_index"].clone(), v["state_digest"].clone()));
        }
        ensure!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "applied index and digest per node: {seen:?}"
        );
        Ok(())
    })?;
    let mut logs = Vec::new();
    for n in &mut nodes {
        n.kill("TERM")?;
        ensure!(inspect(&n.dir)? == 0, "inspect finds node {} unclean", n.id);
        logs.push(digests(&n.dir)?);
    }
    // Log matching: the logs agree entry for entry (index, term, CRC of the record) as far as
    // the shortest goes, and that holds every acknowledged write.
    let common = logs.iter().map(Vec::len).min().unwrap_or(0);
    ensure!(
        common > acked.len(),
        "the shortest log has {common} entries for {} writes",
        acked.len()
    );
    for (n, log) in nodes.iter().zip(&logs).skip(1) {
        ensure!(
            log[..common] == logs[0][..common],
            "node {}'s log differs from node 1's",
            n.id
        );
    }
    Ok(())
}

/// `manifold inspect --digest`: one `index term crc` line per entry.
fn digests(dir: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(BIN)
        .arg("inspect")
        .arg("--data-dir")
        .arg(dir)
        .arg("--digest")
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() == 3
                && f[0].parse::<u64>().is_ok()
                && f[1].parse::<u64>().is_ok()
                && f[2].len() == 8
        })
        .map(str::to_string)
        .collect())
}

/// XADD `key * n <n>` through whichever node leads, retried (up to 10 s) while leadership
/// moves: a loaded machine may hold an election at any time.
fn xadd_on_leader(nodes: &[Node], key: &str, n: u64) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = leader(nodes, Duration::from_secs(10))?;
        let r: anyhow::Result<String> = nodes[l].client().and_then(|mut con| {
            Ok(redis::cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("n")
                .arg(n)
                .query(&mut con)?)
        });
        match r {
            Ok(id) => return Ok(id),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits up to 10 s for `check` to pass; its last error otherwise.
fn eventually(check: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    eventually_within(Duration::from_secs(10), check)
}

/// Waits up to `limit` for `check` to pass; its last error otherwise.
fn eventually_within(
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

use common::http;

/// `manifold cluster ARGS --http-addr` the node's listener: exit code, stdout, stderr.
fn cluster_cli(node: &Node, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(BIN)
        .arg("cluster")
        .args(args)
        .args(["--http-addr", &format!("127.0.0.1:{}", node.http)])
        .output()?;
    Ok((
        out.status.code().context("killed")?,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `GET /cluster` of a node, parsed.
fn cluster_json(node: &Node) -> anyhow::Result<serde_json::Value> {
    let (code, out, err) = cluster_cli(node, &["status", "--json"])?;
    ensure!(code == 0, "cluster status failed ({code}): {err}");
    Ok(serde_json::from_str(&out)?)
}

/// The value of the metrics line starting with `prefix`.
fn metric(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn admin_routes_report_the_group_and_a_transfer_moves_its_leadership() -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (mut nodes, _) = group(root.path(), &[])?;
    for i in 0..100 {
        xadd_on_leader(&nodes, "s", i)?;
    }
    eventually(|| {
        let l = leader(&nodes, Duration::from_secs(10))?;
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("s")
            .arg("g")
            .arg("0")
            .query(&mut nodes[l].client()?)?;
        Ok(())
    })?;

    // Every node names the same leader and serves (once no election is under way).
    eventually(|| {
        let l = leader(&nodes, Duration::from_secs(10))?;
        for n in &nodes {
            let v = cluster_json(n)?;
            ensure!(v["node_id"] == n.id, "{v}");
            ensure!(v["leader_id"] == nodes[l].id, "node {} names {v}", n.id);
            ensure!(v["peers"].as_array().map(Vec::len) == Some(2), "{v}");
            let (status, body) = http(n.http, "GET", "/health")?;
            ensure!(status == 200, "node {} /health {status} {body}", n.id);
        }
        Ok(())
    })?;
    // The leader knows its followers' progress; the text form says the same; its metrics show
    // the role, the fsyncs and the group's lag (100 entries, none delivered).
    eventually(|| {
        let l = leader(&nodes, Duration::from_secs(10))?;
        let v = cluster_json(&nodes[l])?;
        ensure!(v["role"] == "leader", "{v}");
        for p in v["peers"].as_array().context("peers")? {
            ensure!(p["match_index"].as_u64().is_some(), "{p}");
        }
        let (code, text, _) = cluster_cli(&nodes[l], &["status"])?;
        ensure!(code == 0 && text.contains("role leader"), "{text}");
        ensure!(
            text.lines().filter(|l| l.starts_with("peer ")).count() == 2,
            "{text}"
        );
        let (status, page) = http(nodes[l].http, "GET", "/metrics")?;
        ensure!(status == 200, "/metrics {status}");
        ensure!(
            metric(&page, "manifold_raft_role{role=\"leader\"}") == Some(1.0),
            "{page}"
        );
        ensure!(
            metric(&page, "manifold_fsync_seconds_count").unwrap_or(0.0) >= 100.0,
            "{page}"
        );
        ensure!(
            metric(
                &page,
                "manifold_group_lag{db=\"0\",stream=\"s\",group=\"g\"}"
            ) == Some(100.0),
            "{page}"
        );
        ensure!(page.contains("manifold_raft_peer_lag{peer="), "{page}");
        Ok(())
    })?;

    // A transfer asked of a follower moves leadership to the third node.
    let l = leader(&nodes, Duration::from_secs(10))?;
    let asked = (l + 1) % 3;
    let target = (l + 2) % 3;
    let to = nodes[target].id.to_string();
    let (code, out, err) = cluster_cli(&nodes[asked], &["transfer-leader", "--to", &to])?;
    ensure!(code == 0, "transfer failed ({code}): {out}{err}");
    ensure!(out.contains(&format!("node {to} leads")), "{out}");
    xadd_on_leader(&nodes, "s", 100)?;
    eventually(|| {
        let all = values(&nodes[target])?;
        ensure!(all == (0..=100).collect::<Vec<_>>(), "{all:?}");
        Ok(())
    })?;
    // A transfer to a node that is not a voter is refused with the reason.
    let (code, _, err) = cluster_cli(&nodes[target], &["transfer-leader", "--to", "9"])?;
    ensure!(code == 1 && err.contains("not a voter"), "{code} {err}");

    // With two nodes gone, the last one knows no leader and says so.
    let last = (target + 1) % 3;
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != last {
            n.kill("KILL")?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http(nodes[last].http, "GET", "/health")?;
        if status == 503 {
            ensure!(body.contains("no leader"), "{body}");
            break;
        }
        ensure!(Instant::now() < deadline, "/health still {status} alone");
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn the_preferred_leader_takes_over_whenever_it_is_back() -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (mut nodes, peers) = group(root.path(), &["--preferred-leader", "2"])?;
    let wait_for = |nodes: &[Node], want: usize| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while leader(nodes, Duration::from_secs(10))? != want {
            ensure!(
                Instant::now() < deadline,
                "node {} never led",
                nodes[want].id
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    wait_for(&nodes, 1)?;
    ensure!(cluster_json(&nodes[0])?["preferred_leader"] == 2);
    nodes[1].kill("KILL")?;
    ensure!(leader(&nodes, Duration::from_secs(10))? != 1);
    xadd_on_leader(&nodes, "s", 0)?;
    nodes[1].start(&peers)?;
    wait_for(&nodes, 1)?;
    eventually(|| {
        let all = values(&nodes[1])?;
        ensure!(all == [0], "{all:?}");
        Ok(())
    })?;
    Ok(())
}

#[test]
fn a_follower_takes_writes_and_group_reads_for_its_clients() -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (nodes, _) = group(root.path(), &[])?;
    let l = leader(&nodes, Duration::from_secs(10))?;
    let f = (l + 1) % 3;
    let mut con = nodes[f].client()?;
    // One XADD through the follower: the leader appends it; the follower shows it at once.
    let first: String = redis::cmd("XADD")
        .arg("s")
        .arg("*")
        .arg("n")
        .arg(0)
        .query(&mut con)?;
    let len: u64 = redis::cmd("XLEN").arg("s").query(&mut con)?;
    ensure!(len == 1, "XLEN {len} on the follower after its own XADD");
    // A pipeline through the follower: every reply, in order.
    let mut pipe = redis::pipe();
    for i in 1..=100 {
        pipe.cmd("XADD").arg("s").arg("*").arg("n").arg(i);
    }
    let ids: Vec<String> = pipe.query(&mut con)?;
    ensure!(ids.len() == 100, "{} replies", ids.len());
    // Errors are the leader's, spelled as Redis spells them.
    let low: redis::RedisResult<String> = redis::cmd("XADD")
        .arg("s")
        .arg("1-1")
        .arg("n")
        .arg("x")
        .query(&mut con);
    let e = low.err().context("an ID below the top is refused")?;
    ensure!(
        e.to_string()
            .contains("equal or smaller than the target stream top item"),
        "{e}"
    );
    // A consumer group through the follower.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("s")
        .arg("g")
        .arg("0")
        .query(&mut con)?;
    let again: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("s")
        .arg("g")
        .arg("0")
        .query(&mut con);
    let e = again.err().context("a second XGROUP CREATE is refused")?;
    ensure!(e.code() == Some("BUSYGROUP"), "{e}");
    type Read = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;
    let read: Read = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c")
        .arg("COUNT")
        .arg(5)
        .arg("STREAMS")
        .arg("s")
        .arg(">")
        .query(&mut con)?;
    let got: Vec<&String> = read[0].1.iter().map(|(id, _)| id).collect();
    ensure!(got.len() == 5 && *got[0] == first, "{got:?}");
    let acked: u64 = redis::cmd("XACK")
        .arg("s")
        .arg("g")
        .arg(got.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        .query(&mut con)?;
    ensure!(acked == 5, "XACK {acked}");
    // MULTI … EXEC through the follower: the leader runs it, all of it at one point.
    let (a, b): (String, String) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg("s")
        .arg("*")
        .arg("n")
        .arg(101)
        .cmd("XADD")
        .arg("t")
        .arg("*")
        .arg("n")
        .arg(0)
        .query(&mut con)?;
    ensure!(a.contains('-') && b.contains('-'), "{a} {b}");
    // The leader holds all of it.
    let all = values(&nodes[l])?;
    ensure!(all == (0..=101).collect::<Vec<_>>(), "{all:?}");
    let mut lead = nodes[l].client()?;
    let pending: redis::Value = redis::cmd("XPENDING").arg("s").arg("g").query(&mut lead)?;
    let redis::Value::Array(parts) = &pending else {
        bail!("XPENDING answered {pending:?}");
    };
    ensure!(parts.first() == Some(&redis::Value::Int(0)), "{pending:?}");
    Ok(())
}

#[test]
fn a_node_without_the_cluster_secret_is_kept_out() -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let mut configs = Vec::new();
    for id in 1..=3u64 {
        let path = root.path().join(format!("n{id}.toml"));
        let secret = if id == 3 { "wrong" } else { "s3cret" };
        std::fs::write(&path, format!("cluster_secret = \"{secret}\"\n"))?;
        configs.push(path);
    }
    let (nodes, _) = group_each(root.path(), |id| {
        vec![
            "--config".to_string(),
            configs[(id - 1) as usize].display().to_string(),
        ]
    })?;
    // Nodes 1 and 2 form the group and take writes; node 3 never hears of a leader.
    let l = leader(&nodes[..2], Duration::from_secs(10))?;
    xadd_on_leader(&nodes[..2], "s", 1)?;
    thread::sleep(Duration::from_millis(1500));
    let v = cluster_json(&nodes[2])?;
    ensure!(v["leader_id"].is_null(), "node 3 joined: {v}");
    ensure!(v["last_index"] == 0, "node 3 got entries: {v}");
    let lead = cluster_json(&nodes[l])?;
    let third = lead["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"] == 3))
        .context("node 3 among the peers")?;
    ensure!(
        third["match_index"] == 0,
        "the leader reached node 3: {lead}"
    );
    // Both sides count the refusals.
    for n in [&nodes[l], &nodes[2]] {
        let (_, page) = http(n.http, "GET", "/metrics")?;
        let refused = metric(&page, "manifold_raft_handshakes_refused_total").unwrap_or(0.0);
        ensure!(refused > 0.0, "node {} counted no refusal", n.id);
    }
    Ok(())
}

/// The members a node's `/cluster` lists: `(id, member)` for itself and each peer.
fn members_of(node: &Node) -> anyhow::Result<Vec<(u64, String)>> {
    let v = cluster_json(node)?;
    let mut out = vec![(
        v["node_id"].as_u64().context("node_id")?,
        v["membership"].as_str().unwrap_or("").to_string(),
    )];
    for p in v["peers"].as_array().into_iter().flatten() {
        out.push((
            p["id"].as_u64().context("peer id")?,
            p["member"].as_str().unwrap_or("").to_string(),
        ));
    }
    out.sort();
    Ok(out)
}

#[test]
fn a_node_added_to_a_running_group_catches_up_then_votes_and_a_removed_leader_hands_over()
-> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (mut nodes, peers) = group(root.path(), &[])?;
    let mut written = Vec::new();
    for n in 0..20 {
        xadd_on_leader(&nodes, "s", n)?;
        written.push(n);
    }
    // Node 4 starts with `--join` (a learner that never campaigns) and is added through a
    // node that may be a follower: it learns the whole log, then becomes a voter.
    let raft4 = free_port()?;
    let peers4 = format!("{peers},4=127.0.0.1:{raft4}");
    nodes.push(joining_node(root.path(), 4)?);
    nodes[3].start(&peers4)?;
    let l = leader(&nodes, Duration::from_secs(10))?;
    let asked = (l + 1) % 3;
    let (code, out, err) = cluster_cli(
        &nodes[asked],
        &["add", "--id", "4", "--addr", &format!("127.0.0.1:{raft4}")],
    )?;
    ensure!(code == 0, "cluster add failed ({code}): {out} {err}");
    ensure!(out.contains("member 4  voter"), "{out}");
    eventually(|| {
        ensure!(
            values(&nodes[3])? == written,
            "node 4 holds {:?}",
            values(&nodes[3])
        );
        let members = members_of(&nodes[3])?;
        ensure!(
            members.iter().all(|(_, m)| m == "voter") && members.len() == 4,
            "node 4 sees {members:?}"
        );
        let (_, page) = http(nodes[3].http, "GET", "/metrics")?;
        ensure!(
            metric(&page, "manifold_raft_members{member=\"voter\"}") == Some(4.0)
                && metric(&page, "manifold_raft_voter") == Some(1.0),
            "{page}"
        );
        Ok(())
    })?;
    // Requests that name no new member are refused before anything is asked of the group.
    for bad in [
        "/cluster/members?id=5",
        "/cluster/members?addr=127.0.0.1:1",
        "/cluster/members?id=0&addr=127.0.0.1:1",
        "/cluster/members?id=x&addr=127.0.0.1:1",
    ] {
        let (status, body) = http(nodes[0].http, "POST", bad)?;
        ensure!(status == 400, "{bad}: {status} {body}");
    }
    // Node 3 leaves; then a majority of {1, 2, 4} needs node 4's vote once one of 1, 2 is
    // down: it is a real voter.
    let (code, out, err) = cluster_cli(&nodes[0], &["remove", "--id", "3"])?;
    ensure!(code == 0, "cluster remove failed ({code}): {out} {err}");
    ensure!(!out.contains("member 3 "), "{out}");
    nodes[2].kill("KILL")?;
    let l = leader(&nodes, Duration::from_secs(10))?;
    let down = if l == 0 { 1 } else { 0 };
    nodes[down].kill("KILL")?;
    for n in 20..25 {
        xadd_on_leader(&nodes, "s", n)?;
        written.push(n);
    }
    nodes[down].start(&peers4)?;
    // The leader removes itself: it hands over to a caught-up voter and steps down; the
    // group goes on with the other two.
    let l = leader(&nodes, Duration::from_secs(10))?;
    let (code, out, err) = cluster_cli(&nodes[l], &["remove", "--id", &nodes[l].id.to_string()])?;
    ensure!(
        code == 0,
        "removing the leader failed ({code}): {out} {err}; {:?}",
        nodes
            .iter()
            .map(|n| cluster_json(n).map(|v| v.to_string()).unwrap_or_default())
            .collect::<Vec<_>>()
    );
    let rest: Vec<usize> = [0, 1, 3].into_iter().filter(|&i| i != l).collect();
    eventually(|| {
        let nl = leader(&nodes, Duration::from_secs(1))?;
        ensure!(rest.contains(&nl), "node {} leads", nodes[nl].id);
        Ok(())
    })?;
    for n in 25..30 {
        xadd_on_leader(&nodes, "s", n)?;
        written.push(n);
    }
    eventually(|| {
        for &i in &rest {
            ensure!(
                values(&nodes[i])? == written,
                "node {} differs",
                nodes[i].id
            );
            let ids = member_ids(&nodes[i])?;
            ensure!(
                !ids.contains(&nodes[l].id) && !ids.contains(&3),
                "node {} still lists {ids:?}",
                nodes[i].id
            );
        }
        Ok(())
    })?;
    // `replace`: node 5 takes the place of one of the two (added, caught up, then the other
    // removed), asked through the one that stays.
    let (stays, leaves) = (rest[0], rest[1]);
    let raft5 = free_port()?;
    nodes.push(joining_node(root.path(), 5)?);
    nodes[4].start(&format!("{peers4},5=127.0.0.1:{raft5}"))?;
    let (code, out, err) = cluster_cli(
        &nodes[stays],
        &[
            "replace",
            "--id",
            &nodes[leaves].id.to_string(),
            "--with",
            "5",
            "--addr",
            &format!("127.0.0.1:{raft5}"),
        ],
    )?;
    ensure!(code == 0, "cluster replace failed ({code}): {out} {err}");
    nodes[leaves].kill("KILL")?;
    for n in 30..35 {
        xadd_on_leader(&nodes, "s", n)?;
        written.push(n);
    }
    eventually(|| {
        for i in [stays, 4] {
            ensure!(
                values(&nodes[i])? == written,
                "node {} differs",
                nodes[i].id
            );
            let ids = member_ids(&nodes[i])?;
            ensure!(
                ids == [nodes[stays].id.min(5), nodes[stays].id.max(5)],
                "node {} lists {ids:?}",
                nodes[i].id
            );
        }
        Ok(())
    })
}

/// Node `id` to be started with `--join` (a learner until the group adds it).
fn joining_node(root: &Path, id: u64) -> anyhow::Result<Node> {
    Ok(Node {
        id,
        dir: root.join(format!("n{id}")),
        resp: free_port()?,
        http: free_port()?,
        extra: vec!["--join".into()],
        child: None,
    })
}

/// The ids of the members a node's `/cluster` lists, itself included, sorted.
fn member_ids(node: &Node) -> anyhow::Result<Vec<u64>> {
    Ok(members_of(node)?.into_iter().map(|(id, _)| id).collect())
}

/// The incarnation a node's `/cluster` shows for member `id` (empty: not pinned).
fn incarnation_of(node: &Node, id: u64) -> anyhow::Result<String> {
    let v = cluster_json(node)?;
    let peer = v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["id"].as_u64() == Some(id))
        .with_context(|| format!("node {id} not listed: {v}"))?;
    Ok(peer["incarnation"].as_str().unwrap_or("").to_string())
}

#[test]
fn a_wiped_node_gets_its_place_back_once_caught_up_and_counts_again() -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (mut nodes, peers) = group(root.path(), &[])?;
    let mut written = Vec::new();
    for n in 0..10 {
        xadd_on_leader(&nodes, "s", n)?;
        written.push(n);
    }
    let l = leader(&nodes, Duration::from_secs(10))?;
    let (w, other) = ((l + 1) % 3, (l + 2) % 3);
    let before = incarnation_of(&nodes[l], nodes[w].id)?;
    ensure!(!before.is_empty(), "node {} not pinned", nodes[w].id);
    // Its disk is lost: it comes back as a new directory, is caught up, and the leader hands
    // it its place (pinned to the new incarnation).
    nodes[w].kill("KILL")?;
    std::fs::remove_dir_all(&nodes[w].dir)?;
    nodes[w].start(&peers)?;
    eventually(|| {
        ensure!(
            values(&nodes[w])? == written,
            "node {} not caught up",
            nodes[w].id
        );
        let now = incarnation_of(&nodes[l], nodes[w].id)?;
        ensure!(!now.is_empty() && now != before, "still pinned to {now:?}");
        ensure!(
            cluster_json(&nodes[w])?["membership"] == "voter",
            "node {} is not a voter",
            nodes[w].id
        );
        Ok(())
    })?;
    // It counts again: with the third node down, the leader and it are the majority.
    nodes[other].kill("KILL")?;
    for n in 10..15 {
        xadd_on_leader(&nodes, "s", n)?;
        written.push(n);
    }
    eventually(|| {
        ensure!(
            values(&nodes[w])? == written,
            "node {} differs",
            nodes[w].id
        );
        Ok(())
    })
}

#[test]
fn a_group_of_one_grows_into_three_that_survive_the_first_nodes_loss() -> anyhow::Result<()> {
    grow_from_one(false)
}

/// A plain single node (no `--peers`) killed with SIGKILL, its directory started again as a
/// group of one: what it held — acknowledged before the kill — is there, and it grows into a
/// group of three as one started with `--peers` does.
#[test]
fn a_plain_single_nodes_directory_becomes_a_group_of_one_and_grows() -> anyhow::Result<()> {
    grow_from_one(true)
}

/// Node 1 alone (first as a plain single node if `plain_first`), then nodes 2 and 3 added
/// through `manifold cluster add`; then node 1 goes for good and the other two go on.
fn grow_from_one(plain_first: bool) -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let rafts: Vec<u16> = (0..3).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let mut nodes: Vec<Node> = (1..=3u64)
        .map(|id| {
            Ok(Node {
                id,
                dir: root.path().join(format!("n{id}")),
                resp: free_port()?,
                http: free_port()?,
                extra: if id == 1 {
                    Vec::new()
                } else {
                    vec!["--join".into()]
                },
                child: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let peer = |i: usize| format!("{}=127.0.0.1:{}", i + 1, rafts[i]);
    let mut written = Vec::new();
    if plain_first {
        let args: Vec<String> = [
            "--data-dir",
            &nodes[0].dir.display().to_string(),
            "--node-id",
            "1",
            "--resp-addr",
            &format!("127.0.0.1:{}", nodes[0].resp),
            "--http-addr",
            &format!("127.0.0.1:{}", nodes[0].http),
            "--mqtt-addr",
            "127.0.0.1:0",
            "--segment-size",
            "1048576",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        nodes[0].child = Some(common::serve(&args)?);
        let mut con = nodes[0].client()?;
        for n in 100..110 {
            let _: String = redis::cmd("XADD")
                .arg("s")
                .arg("*")
                .arg("n")
                .arg(n)
                .query(&mut con)?;
            written.push(n);
        }
        let _: String = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("s")
            .arg("g")
            .arg("0")
            .query(&mut con)?;
        // A single node is a group of one with no Raft listener: nothing can join it.
        let (code, _, err) =
            cluster_cli(&nodes[0], &["add", "--id", "2", "--addr", "127.0.0.1:9"])?;
        ensure!(
            code == 1 && err.contains("no Raft listener"),
            "a single node refuses a member ({code}): {err}"
        );
        nodes[0].kill("KILL")?;
    }
    // `--peers` naming only itself: a group of one, on the Raft path.
    nodes[0].start(&peer(0))?;
    eventually(|| {
        let got = values(&nodes[0])?;
        ensure!(
            got == written,
            "after the restart as a group of one: {got:?}"
        );
        Ok(())
    })?;
    for n in 0..10 {
        xadd_on_leader(&nodes[..1], "s", n)?;
        written.push(n);
    }
    for i in 1..3 {
        let peers = (0..=i).map(peer).collect::<Vec<_>>().join(",");
        nodes[i].start(&peers)?;
        let (code, out, err) = cluster_cli(
            &nodes[0],
            &[
                "add",
                "--id",
                &(i + 1).to_string(),
                "--addr",
                &format!("127.0.0.1:{}", rafts[i]),
            ],
        )?;
        ensure!(
            code == 0,
            "adding node {} failed ({code}): {out} {err}",
            i + 1
        );
    }
    eventually(|| {
        for n in &nodes {
            ensure!(values(n)? == written, "node {} differs", n.id);
            ensure!(
                members_of(n)?.len() == 3,
                "node {} sees {:?}",
                n.id,
                members_of(n)
            );
            // The plain node's consumer group came along.
            let groups: Vec<redis::Value> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg("s")
                .query(&mut n.client()?)?;
            ensure!(
                groups.len() == usize::from(plain_first),
                "node {}: {groups:?}",
                n.id
            );
        }
        Ok(())
    })?;
    // The first node goes for good: the two it brought in go on.
    nodes[0].kill("KILL")?;
    for n in 10..15 {
        xadd_on_leader(&nodes, "s", n)?;
        written.push(n);
    }
    eventually(|| {
        for n in &nodes[1..] {
            ensure!(values(n)? == written, "node {} differs", n.id);
        }
        Ok(())
    })?;
    // Its directory now holds the group's configuration: started without `--peers` (as a
    // single node, alone), it refuses to serve rather than lead a log that is the group's.
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir", &nodes[0].dir.display().to_string()])
        .args(["--resp-addr", &format!("127.0.0.1:{}", nodes[0].resp)])
        .args(["--http-addr", &format!("127.0.0.1:{}", nodes[0].http)])
        .args(["--mqtt-addr", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("a single node served a group's directory");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err)?;
    }
    ensure!(
        status.code() == Some(2) && err.contains("voters are [1, 2, 3]"),
        "{status}: {err}"
    );
    Ok(())
}

/// What a client sees of stream `s`: its entries and XINFO STREAM (lengths, IDs, entries
/// added, the radix-tree counts: derived state an image must carry).
fn stream_view(node: &Node) -> anyhow::Result<(redis::Value, redis::Value)> {
    let mut con = node.client()?;
    let entries: redis::Value = redis::cmd("XRANGE")
        .arg("s")
        .arg("-")
        .arg("+")
        .query(&mut con)?;
    let info: redis::Value = redis::cmd("XINFO").arg("STREAM").arg("s").query(&mut con)?;
    Ok((entries, info))
}

#[test]
fn a_follower_behind_the_retained_log_installs_an_image_of_the_leader_and_catches_up()
-> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (mut nodes, peers) = group(
        root.path(),
        &["--retention-ms", "1500", "--retention-check-ms", "200"],
    )?;
    xadd_on_leader(&nodes, "s", 0)?;
    let l = leader(&nodes, Duration::from_secs(10))?;
    let away = (l + 1) % 3;
    nodes[away].kill("KILL")?;
    // Several 1 MiB segments of entries, then past the retention: the leader's log no longer
    // starts where the node that is away stopped.
    let l = leader(&nodes, Duration::from_secs(10))?;
    let mut con = nodes[l].client()?;
    con.set_read_timeout(Some(Duration::from_secs(30)))?;
    let value = "v".repeat(1500);
    let started = Instant::now();
    for _ in 0..20 {
        let mut pipe = redis::pipe();
        for _ in 0..200 {
            pipe.cmd("XADD")
                .arg("s")
                .arg("*")
                .arg("f")
                .arg(&value)
                .ignore();
        }
        pipe.query::<()>(&mut con)
            .with_context(|| format!("after {:?}", started.elapsed()))?;
    }
    eprintln!("4,000 XADDs in {:?}", started.elapsed());
    thread::sleep(Duration::from_millis(2500));
    xadd_on_leader(&nodes, "s", 1).context("the write after the retention")?;
    let before = nodes[away].dir.join("commitlog");
    let first_segment = |dir: &Path| -> anyhow::Result<Option<String>> {
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names.into_iter().next())
    };
    ensure!(
        first_segment(&before)?.as_deref() == Some("00000000000000000000"),
        "the node away still holds the log from its start"
    );
    nodes[away].start(&peers)?;
    let id = nodes[away].id;
    // The leader offers it an image; it fetches it, restarts on it (same process) and then
    // follows from the log (a loaded machine may take a while).
    eventually_within(Duration::from_secs(60), || {
        let l = leader(&nodes, Duration::from_secs(1))?;
        let v = cluster_json(&nodes[l])?;
        let peer = v["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"].as_u64() == Some(id))
            .cloned()
            .context("peer listed")?;
        ensure!(peer["needs_snapshot"] == false, "{peer}");
        ensure!(stream_view(&nodes[away])? == stream_view(&nodes[l])?);
        // It says so, and the leader counted the image it sent.
        let mine = cluster_json(&nodes[away])?;
        ensure!(mine["installed_image"].as_u64().is_some(), "{mine}");
        ensure!(mine["image"] == "none", "{mine}");
        let mut sent = 0.0;
        for n in nodes.iter().filter(|n| n.id != id) {
            let (_, page) = http(n.http, "GET", "/metrics")?;
            sent += metric(&page, "manifold_images_sent_total").unwrap_or(0.0);
        }
        ensure!(sent >= 1.0, "images sent: {sent}");
        Ok(())
    })?;
    ensure!(
        first_segment(&before)?.as_deref() != Some("00000000000000000000"),
        "the node's log now starts where the leader's does"
    );
    let last = xadd_on_leader(&nodes, "s", 2)?;
    eventually(|| {
        let (_, info) = stream_view(&nodes[away])?;
        ensure!(
            format!("{info:?}").contains(&last),
            "{last} not on the node: {info:?}"
        );
        Ok(())
    })?;
    // It restarts from its own directory like any node, and the group's digests agree.
    nodes[away].kill("TERM")?;
    nodes[away].start(&peers)?;
    eventually(|| {
        let l = leader(&nodes, Duration::from_secs(1))?;
        ensure!(stream_view(&nodes[away])? == stream_view(&nodes[l])?);
        Ok(())
    })
}
