//! Three `manifold serve` processes whose Raft traffic goes through TCP proxies the test
//! controls, one per direction of each link (node i reaches node j only through the proxy
//! `i→j`), so a link can be cut both ways or one way, and a process can be SIGSTOPped:
//! - a leader cut off from both followers stops acknowledging (check-quorum), the majority
//!   elects another and takes writes, and after the heal the old leader follows without
//!   losing or duplicating anything;
//! - a follower that cannot hear the leader (one-way) does not depose it: pre-vote and
//!   stickiness keep the leader, writes go on, and the follower catches up after the heal;
//! - a SIGSTOPped leader is replaced, and after SIGCONT it steps down and follows;
//! - a node whose disk was wiped never helps a stale node win: with the leader down, the
//!   stale node and the wiped one elect nobody, and nothing committed is lost.
//!
//! Forwarded writes use the same links, so they are partitioned too.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

mod common;
use common::free_port;

/// A one-direction TCP proxy: accepts on its own port, connects to `to`, copies both ways
/// while the link is up; cutting it closes every connection it carries and refuses new ones.
struct Link {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Link {
    /// Listens now (holding its port while the nodes' ports are picked); copies to the port
    /// `to` will hold once set.
    fn start(to: Arc<AtomicU16>) -> anyhow::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, open2) = (up.clone(), open.clone());
        thread::spawn(move || {
            for inbound in listener.incoming() {
                let to = to.load(Ordering::SeqCst);
                let Ok(inbound) = inbound else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)) else {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                if let Ok(mut list) = open2.lock() {
                    for s in [&inbound, &outbound] {
                        if let Ok(c) = s.try_clone() {
                            list.push(c);
                        }
                    }
                }
                for (from, to) in [(&inbound, &outbound), (&outbound, &inbound)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Ok(Link { port, up, open })
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut list) = self.open.lock() {
            for s in list.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    fn heal(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

struct Node {
    id: u64,
    dir: PathBuf,
    raft: u16,
    resp: u16,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three nodes; `links[i][j]` carries node i's traffic to node j.
struct Group {
    nodes: Vec<Node>,
    links: Vec<Vec<Option<Link>>>,
}

impl Group {
    fn start(root: &Path) -> anyhow::Result<Group> {
        // The proxies first: their ports are held, so a node's port picked after cannot be one.
        let targets: Vec<Arc<AtomicU16>> = (0..3).map(|_| Arc::default()).collect();
        let mut links = Vec::new();
        for i in 0..3 {
            let mut row = Vec::new();
            for (j, to) in targets.iter().enumerate() {
                row.push(if i == j {
                    None
                } else {
                    Some(Link::start(to.clone())?)
                });
            }
            links.push(row);
        }
        let mut nodes = Vec::new();
        for (id, target) in (1..=3u64).zip(&targets) {
            let raft = free_port()?;
            target.store(raft, Ordering::SeqCst);
            nodes.push(Node {
                id,
                dir: root.join(format!("n{id}")),
                raft,
                resp: free_port()?,
                child: None,
            });
        }
        let mut g = Group { nodes, links };
        for i in 0..3 {
            g.spawn(i)?;
        }
        Ok(g)
    }

    fn link(&self, from: usize, to: usize) -> anyhow::Result<&Link> {
        self.links[from][to].as_ref().context("no link to itself")
    }

    /// Node i sees each peer at its proxy, itself at its real port.
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let peers: Vec<String> = (0..3)
            .map(|j| {
                let port = match &self.links[i][j] {
                    Some(l) => l.port,
                    None => self.nodes[j].raft,
                };
                format!("{}=127.0.0.1:{port}", j + 1)
            })
            .collect();
        let n = &mut self.nodes[i];
        let raft = vec!["--raft-addr".to_string(), format!("127.0.0.1:{}", n.raft)];
        n.child = Some(common::member(
            &n.dir,
            n.id,
            &peers.join(","),
            n.resp,
            0,
            &raft,
        )?);
        Ok(())
    }

    fn signal(&self, i: usize, sig: &str) -> anyhow::Result<()> {
        let child = self.nodes[i].child.as_ref().context("not running")?;
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()?
            .success();
        ensure!(ok, "kill -{sig}");
        Ok(())
    }

    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.nodes[i].child.take().context("not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    fn client(&self, i: usize) -> anyhow::Result<redis::Connection> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}/", self.nodes[i].resp))?;
        let con = c.get_connection_with_timeout(Duration::from_millis(500))?;
        con.set_read_timeout(Some(Duration::from_secs(5)))?;
        con.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(con)
    }

    /// `(role, term)` from INFO.
    fn role(&self, i: usize) -> Option<(String, u64)> {
        let mut con = self.client(i).ok()?;
        let info: String = redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        Some((
            field("manifold_raft_role:")?,
            field("manifold_raft_term:")?.parse().ok()?,
        ))
    }

    /// The node (among `among`) that says it leads, waiting up to 10 s.
    fn leader(&self, among: &[usize]) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for &i in among {
                if self.role(i).is_some_and(|(r, _)| r == "leader") {
                    return Ok(i);
                }
            }
            ensure!(Instant::now() < deadline, "no leader among {among:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// XADD `s * n <n>` through node i.
    fn write(&self, i: usize, n: u64) -> redis::RedisResult<String> {
        let mut con = self
            .client(i)
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
        redis::cmd("XADD")
            .arg("s")
            .arg("*")
            .arg("n")
            .arg(n)
            .query(&mut con)
    }

    fn values(&self, i: usize) -> anyhow::Result<Vec<u64>> {
        let mut con = self.client(i)?;
        let entries: Vec<(String, Vec<(String, u64)>)> = redis::cmd("XRANGE")
            .arg("s")
            .arg("-")
            .arg("+")
            .query(&mut con)?;
        Ok(entries.into_iter().map(|(_, f)| f[0].1).collect())
    }

    /// Every node ends with exactly `acked` (in order, once each) within 10 s.
    fn converge(&self, acked: &[u64]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lists: Vec<Vec<u64>> = (0..3).map(|i| self.values(i).unwrap_or_default()).collect();
            if lists.iter().all(|l| l == acked) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the nodes hold {lists:?}, acknowledged {acked:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_leader_cut_off_stops_acknowledging_and_the_majority_goes_on() -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let g = Group::start(root.path())?;
    let l = g.leader(&[0, 1, 2])?;
    let mut acked = Vec::new();
    for n in 0..10 {
        g.write(l, n)?;
        acked.push(n);
    }
    let (_, old_term) = g.role(l).context("leader answers")?;
    for j in (0..3).filter(|&j| j != l) {
        g.link(l, j)?.cut();
        g.link(j, l)?.cut();
    }
    // The majority elects a leader of a later term and takes writes, through either node.
    let others: Vec<usize> = (0..3).filter(|&j| j != l).collect();
    let nl = g.leader(&others)?;
    let (_, new_term) = g.role(nl).context("new leader answers")?;
    ensure!(new_term > old_term, "term {new_term} after {old_term}");
    for (k, n) in (10..20).enumerate() {
        g.write(others[k % 2], n)?;
        acked.push(n);
    }
    // The old leader steps down within an election timeout and acknowledges nothing.
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.role(l).is_some_and(|(r, _)| r == "leader") {
        ensure!(Instant::now() < deadline, "the cut-off leader still leads");
        thread::sleep(Duration::from_millis(20));
    }
    let refused = g.write(l, 999);
    ensure!(refused.is_err(), "a cut-off node acknowledged {refused:?}");
    // Healed: one history everywhere, the refused write nowhere.
    for j in (0..3).filter(|&j| j != l) {
        g.link(l, j)?.heal();
        g.link(j, l)?.heal();
    }
    g.converge(&acked)?;
    g.write(l, 20)?;
    acked.push(20);
    g.converge(&acked)
}

#[test]
fn a_follower_that_cannot_hear_the_leader_does_not_depose_it() -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let g = Group::start(root.path())?;
    let l = g.leader(&[0, 1, 2])?;
    let (_, term) = g.role(l).context("leader answers")?;
    let f = (l + 1) % 3;
    // One way: the leader's messages to f are lost; f's still arrive.
    g.link(l, f)?.cut();
    let mut acked = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < until {
        g.write(l, n)?;
        acked.push(n);
        n += 1;
        thread::sleep(Duration::from_millis(20));
    }
    // The cut is real: f holds none of what was written meanwhile.
    ensure!(g.values(f)?.is_empty(), "node {} heard the leader", f + 1);
    // f's pre-votes found no majority (the other follower hears the leader): same leader,
    // same term.
    ensure!(g.leader(&[0, 1, 2])? == l, "leadership moved");
    let (_, now) = g.role(l).context("leader answers")?;
    ensure!(
        now == term,
        "term {now} after {term}: the group was disrupted"
    );
    g.link(l, f)?.heal();
    g.converge(&acked)
}

#[test]
fn a_stopped_leader_is_replaced_and_follows_after_it_resumes() -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let g = Group::start(root.path())?;
    let l = g.leader(&[0, 1, 2])?;
    let mut acked = Vec::new();
    for n in 0..5 {
        g.write(l, n)?;
        acked.push(n);
    }
    g.signal(l, "STOP")?;
    let others: Vec<usize> = (0..3).filter(|&j| j != l).collect();
    let nl = g.leader(&others)?;
    for n in 5..10 {
        g.write(nl, n)?;
        acked.push(n);
    }
    g.signal(l, "CONT")?;
    // It hears the new term and follows: a write through it goes to the new leader.
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.role(l).is_some_and(|(r, _)| r == "leader") {
        ensure!(
            Instant::now() < deadline,
            "the resumed node still says it leads"
        );
        thread::sleep(Duration::from_millis(20));
    }
    g.write(l, 10)?;
    acked.push(10);
    g.converge(&acked)
}

#[test]
fn a_wiped_node_never_helps_a_stale_node_win() -> anyhow::Result<()> {
    let _serial = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let mut g = Group::start(root.path())?;
    let l = g.leader(&[0, 1, 2])?;
    let (stale, wiped) = ((l + 1) % 3, (l + 2) % 3);
    // Every node holds the founding configuration (which pins each voter to its directory)
    // and a first write.
    let mut acked = vec![100];
    g.write(l, 100)?;
    g.converge(&acked)?;
    // The stale node misses everything written from now on.
    for j in (0..3).filter(|&j| j != stale) {
        g.link(stale, j)?.cut();
        g.link(j, stale)?.cut();
    }
    for n in 0..10 {
        g.write(l, n)?;
        acked.push(n);
    }
    // The leader goes down; the other holder of those writes loses its disk and comes back
    // empty; the stale node is reachable again.
    g.kill(l)?;
    g.kill(wiped)?;
    std::fs::remove_dir_all(&g.nodes[wiped].dir)?;
    for j in (0..3).filter(|&j| j != stale) {
        g.link(stale, j)?.heal();
        g.link(j, stale)?.heal();
    }
    g.spawn(wiped)?;
    // Several election timeouts: the wiped node's vote counts for nothing (its directory is
    // not the one the configuration pins), so no leader.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for i in [stale, wiped] {
            let role = g.role(i).map(|(r, _)| r);
            ensure!(
                role.as_deref() != Some("leader"),
                "node {} leads without the writes it never had",
                i + 1
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    // The old leader returns: it leads (or the stale node, once it has caught up), and every
    // node ends with every write.
    g.spawn(l)?;
    g.leader(&[0, 1, 2])?;
    g.write(wiped, 10)?;
    acked.push(10);
    g.converge(&acked)
}
