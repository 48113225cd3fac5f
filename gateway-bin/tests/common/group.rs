//! A three-node group of real `manifold serve` processes on loopback (`--peers`), each member
//! with its MQTT, RESP and HTTP ports: start, SIGKILL, the role `/cluster` reports, and the
//! leader once one is elected. For the tests of the front ends in a group.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::free_port;

/// A group member with its MQTT, RESP and HTTP ports.
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub mqtt: u16,
    pub resp: u16,
    pub http: u16,
    pub child: Option<Child>,
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
    pub fn start(&mut self, peers: &str) -> anyhow::Result<()> {
        let (dir, id) = (&self.dir, self.id);
        self.child = Some(super::member_with_mqtt(
            dir,
            id,
            peers,
            self.mqtt,
            self.resp,
            self.http,
            &[],
        )?);
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// The role `/cluster` reports.
    pub fn role(&self) -> Option<String> {
        let (status, body) = super::http(self.http, "GET", "/cluster").ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["role"].as_str().map(String::from)
    }

    pub fn publish(&self, args: &[&str]) -> anyhow::Result<()> {
        super::mqtt::mosquitto_pub(self.mqtt, args)
    }

    pub fn subscribe(&self, args: &[&str]) -> anyhow::Result<Child> {
        super::mqtt::mosquitto_sub(self.mqtt, args)
    }
}

/// Three nodes as one group, and the index of the one leading once a leader is elected.
pub fn group(root: &Path) -> anyhow::Result<(Vec<Node>, String, usize)> {
    let mut nodes = Vec::new();
    let mut peers = Vec::new();
    for id in 1..=3u64 {
        peers.push(format!("{id}=127.0.0.1:{}", free_port()?));
        nodes.push(Node {
            id,
            dir: root.join(format!("n{id}")),
            mqtt: free_port()?,
            resp: free_port()?,
            http: free_port()?,
            child: None,
        });
    }
    let peers = peers.join(",");
    for n in &mut nodes {
        n.start(&peers)?;
    }
    let leader = leader(&nodes, Duration::from_secs(20))?;
    Ok((nodes, peers, leader))
}

pub fn leader(nodes: &[Node], limit: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for (i, n) in nodes.iter().enumerate() {
            if n.child.is_some() && n.role().as_deref() == Some("leader") {
                return Ok(i);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no leader within {limit:?}")
}
