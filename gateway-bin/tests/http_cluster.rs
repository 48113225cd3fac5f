//! The HTTP push front end in a three-node group (real processes): a WebSocket subscriber on a
//! follower keeps receiving across a SIGKILL of the leader, publishes made through any node
//! (retried with an `Idempotency-Key` while no leader answers) are stored once, and a cursor
//! taken on one node resumes on any other — over WebSocket, a long-poll by topic cursor and a
//! filter long-poll by log position — with every later message once, in order, the restarted
//! old leader included.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::group::{Node, group, leader};
use common::ws::{self, Socket};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};
use tungstenite::Message;

fn open(node: &Node) -> anyhow::Result<Socket> {
    ws::open(node.http, Duration::from_secs(20))
}

/// The next `n` messages' payloads and the last one's cursor.
fn messages(ws: &mut Socket, n: usize) -> anyhow::Result<(Vec<String>, String)> {
    let (mut got, mut cursor) = (Vec::new(), String::new());
    while got.len() < n {
        match ws.read()? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                match v["type"].as_str() {
                    Some("message") => {
                        got.push(v["payload"].as_str().context("payload")?.to_string());
                        cursor = v["cursor"].as_str().context("cursor")?.to_string();
                    }
                    Some("subscribed") => {}
                    _ => bail!("unexpected {v}"),
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    Ok((got, cursor))
}

fn subscribe(ws: &mut Socket, from: &str) -> anyhow::Result<()> {
    let frame = json!({"type": "subscribe", "id": "s", "topic": "feed", "from": from});
    ws.send(Message::text(frame.to_string()))?;
    match ws.read()? {
        Message::Text(t) if t.as_str().contains("subscribed") => Ok(()),
        other => bail!("{other:?}"),
    }
}

/// POST through the first live node that stores it, retried (same idempotency key) while the
/// group has no leader: stored once whatever the retries.
fn publish(c: &Client, nodes: &[Node], body: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for n in nodes.iter().filter(|n| n.child.is_some()) {
            let r = c
                .post(format!("http://127.0.0.1:{}/topics/feed", n.http))
                .header("idempotency-key", body)
                .body(body.to_string())
                .send();
            if r.is_ok_and(|r| r.status() == StatusCode::CREATED) {
                return Ok(());
            }
        }
        ensure!(Instant::now() < deadline, "{body} never stored");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn poll(c: &Client, node: &Node, query: &str) -> anyhow::Result<Value> {
    let r = c
        .get(format!("http://127.0.0.1:{}/poll?{query}", node.http))
        .send()?;
    ensure!(r.status() == StatusCode::OK, "{}", r.status());
    Ok(r.json()?)
}

fn payloads(v: &Value) -> Vec<String> {
    v["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["payload"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn cursors_resume_on_any_node_across_a_leader_failover() -> anyhow::Result<()> {
    let _one = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (mut nodes, peers, l) = group(root.path())?;
    let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let (f1, f2) = (followers[0], followers[1]);
    let c = Client::builder().timeout(Duration::from_secs(10)).build()?;

    // A live subscriber on a follower; messages published through the other follower.
    let mut ws = open(&nodes[f1])?;
    subscribe(&mut ws, "latest")?;
    let first: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
    for m in &first {
        publish(&c, &nodes[f2..=f2], m)?;
    }
    let (got, cursor_a) = messages(&mut ws, 5)?;
    ensure!(got == first, "{got:?}");
    // A filter cursor (a log position) taken on the same follower.
    let filter_from = poll(&c, &nodes[f1], "filter=%23&timeout=0")?["next"]
        .as_str()
        .context("next")?
        .to_string();

    // The leader dies; a new one is elected among the followers; publishing goes on.
    nodes[l].kill()?;
    leader(&nodes, Duration::from_secs(20))?;
    let second: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    for m in &second {
        publish(&c, &nodes, m)?;
    }
    // The subscriber on the surviving follower got each once, in order.
    let (got, _) = messages(&mut ws, 5)?;
    ensure!(got == second, "{got:?}");

    // Its cursor from before the failover resumes on the other node, over WebSocket...
    let mut elsewhere = open(&nodes[f2])?;
    subscribe(&mut elsewhere, &cursor_a)?;
    let (got, _) = messages(&mut elsewhere, 5)?;
    ensure!(got == second, "{got:?}");
    // ...and over long-polls: by the topic cursor, and by the filter's log position.
    let by_topic = poll(&c, &nodes[f2], &format!("topic=feed&after={cursor_a}"))?;
    ensure!(payloads(&by_topic) == second, "{by_topic}");
    let by_filter = poll(&c, &nodes[f1], &format!("filter=%23&after={filter_from}"))?;
    ensure!(payloads(&by_filter) == second, "{by_filter}");

    // The old leader comes back as a follower: the same cursor reads the same messages there.
    nodes[l].start(&peers)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let back = poll(
            &c,
            &nodes[l],
            &format!("topic=feed&after={cursor_a}&timeout=1s"),
        )?;
        if payloads(&back) == second {
            break;
        }
        ensure!(Instant::now() < deadline, "the restarted node: {back}");
    }
    Ok(())
}
