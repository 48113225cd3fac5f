//! Consumer groups over HTTP against a real `manifold serve`: long-poll members of one group
//! get disjoint messages, acknowledge them (`POST .../groups/{g}/ack`), and what one leaves
//! unacknowledged past `claim_idle` goes to the next member that reads — the same group a
//! RESP client reads with XREADGROUP and inspects with XPENDING. WebSocket members of a filter
//! group (MQTT `$share` with wildcards) share an MQTT publisher's messages and ack by frame.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::mqtt::{Node, node};
use common::ws::{self, Socket, send, try_next};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

fn http() -> anyhow::Result<Client> {
    Ok(Client::builder().timeout(Duration::from_secs(20)).build()?)
}

fn publish(c: &Client, node: &Node, topic: &str, body: &str) -> anyhow::Result<Value> {
    let r = c
        .post(format!("http://127.0.0.1:{}/topics/{topic}", node.http))
        .body(body.to_string())
        .send()?;
    ensure!(r.status() == StatusCode::CREATED, "{}", r.status());
    Ok(r.json()?)
}

/// `GET /poll?QUERY`: its messages' payloads and the whole answer.
fn poll(c: &Client, node: &Node, query: &str) -> anyhow::Result<(Vec<String>, Value)> {
    let r = c
        .get(format!("http://127.0.0.1:{}/poll?{query}", node.http))
        .send()?;
    ensure!(r.status() == StatusCode::OK, "{query}: {}", r.status());
    let v: Value = r.json()?;
    let payloads = v["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .map(|m| m["payload"].as_str().unwrap_or_default().to_string())
        .collect();
    Ok((payloads, v))
}

fn ack(c: &Client, node: &Node, path: &str, cursors: &[&Value]) -> anyhow::Result<Value> {
    let r = c
        .post(format!("http://127.0.0.1:{}{path}", node.http))
        .json(&json!({ "ids": cursors }))
        .send()?;
    let status = r.status();
    let v: Value = r.json()?;
    ensure!(status == StatusCode::OK, "{path}: {status} {v}");
    Ok(v)
}

fn cursor_of<'a>(answer: &'a Value, payload: &str) -> anyhow::Result<&'a Value> {
    answer["messages"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["payload"] == payload))
        .map(|m| &m["cursor"])
        .with_context(|| format!("{payload} in {answer}"))
}

#[test]
fn long_poll_members_share_a_group_ack_and_take_over_idle_messages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let c = http()?;
    for i in 1..=4 {
        publish(&c, &node, "jobs", &format!("j{i}"))?;
    }
    // The first member's read creates the group at the start (start=earliest).
    let member = |consumer: &str, rest: &str| {
        format!("topic=jobs&group=workers&consumer={consumer}&timeout=0&claim_idle=400ms{rest}")
    };
    let (a, a_answer) = poll(&c, &node, &member("a", "&start=earliest&limit=2"))?;
    ensure!(a == ["j1", "j2"], "{a_answer}");
    ensure!(
        a_answer["messages"][0]["group"] == "workers"
            && a_answer["messages"][0]["redelivered"] == false,
        "{a_answer}"
    );
    let (b, _) = poll(&c, &node, &member("b", ""))?;
    ensure!(b == ["j3", "j4"], "b: {b:?}");
    let (none, answer) = poll(&c, &node, &member("b", ""))?;
    ensure!(none.is_empty(), "{answer}");

    // The same group over RESP: four pending, two each; a RESP member gets only what is new.
    let mut redis =
        redis::Client::open(format!("redis://127.0.0.1:{}/", node.resp))?.get_connection()?;
    let pending: (u64, String, String, Vec<(String, String)>) = redis::cmd("XPENDING")
        .arg("jobs")
        .arg("workers")
        .query(&mut redis)?;
    ensure!(pending.0 == 4, "{pending:?}");
    ensure!(
        pending.3 == [("a".into(), "2".into()), ("b".into(), "2".into())],
        "{pending:?}"
    );
    publish(&c, &node, "jobs", "j5")?;
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "workers", "r", "STREAMS", "jobs", ">"])
        .query(&mut redis)?;
    let text = format!("{read:?}");
    ensure!(
        text.contains("j5") && !text.contains("j1") && !text.contains("j4"),
        "{text}"
    );

    // a acknowledges j1 (by cursor): acked once, a repeat acks nothing.
    let ack_path = "/topics/jobs/groups/workers/ack";
    let j1 = cursor_of(&a_answer, "j1")?;
    ensure!(ack(&c, &node, ack_path, &[j1])?["acked"] == 1);
    ensure!(ack(&c, &node, ack_path, &[j1])?["acked"] == 0);

    // Past claim_idle, a new member takes what nobody acknowledged: j2 (a), j3, j4 (b), j5
    // (the RESP member) — marked redelivered.
    std::thread::sleep(Duration::from_millis(500));
    let (taken, answer) = poll(&c, &node, &member("c", ""))?;
    let taken: BTreeSet<String> = taken.into_iter().collect();
    ensure!(
        taken == BTreeSet::from(["j2", "j3", "j4", "j5"].map(String::from)),
        "{answer}"
    );
    ensure!(
        answer["messages"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m["redelivered"] == true)),
        "{answer}"
    );
    let ids: Vec<&Value> = answer["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .map(|m| &m["id"])
        .collect();
    ensure!(ack(&c, &node, ack_path, &ids)?["acked"] == 4);

    // A waiting member wakes when a message comes.
    let waiter = {
        let c = c.clone();
        let url = format!(
            "http://127.0.0.1:{}/poll?topic=jobs&group=workers&consumer=d&timeout=15s",
            node.http
        );
        std::thread::spawn(move || -> anyhow::Result<(Value, Duration)> {
            let started = Instant::now();
            let v: Value = c.get(url).send()?.json()?;
            Ok((v, started.elapsed()))
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    publish(&c, &node, "jobs", "j6")?;
    let (woke, waited) = waiter.join().map_err(|_| anyhow::anyhow!("panicked"))??;
    ensure!(woke["messages"][0]["payload"] == "j6", "{woke}");
    ensure!(waited < Duration::from_secs(10), "{waited:?}");

    // The group as HTTP shows it: pending j6 (d's), the members.
    let groups: Value = c
        .get(format!("http://127.0.0.1:{}/topics/jobs/groups", node.http))
        .send()?
        .json()?;
    let g = &groups["groups"][0];
    ensure!(g["name"] == "workers" && g["pending"] == 1, "{groups}");
    let names: BTreeSet<&str> = g["consumers"]
        .as_array()
        .context("consumers")?
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    ensure!(
        names == BTreeSet::from(["a", "b", "c", "d", "r"]),
        "{groups}"
    );

    // Bad group requests: a group without a consumer, an ack without ids, an unknown group.
    let r = c
        .get(format!(
            "http://127.0.0.1:{}/poll?topic=jobs&group=workers",
            node.http
        ))
        .send()?;
    ensure!(r.status() == StatusCode::BAD_REQUEST, "{}", r.status());
    let r = c
        .post(format!("http://127.0.0.1:{}{ack_path}", node.http))
        .json(&json!({"ids": []}))
        .send()?;
    ensure!(r.status() == StatusCode::BAD_REQUEST, "{}", r.status());
    let unknown = ack(&c, &node, "/topics/jobs/groups/nobody/ack", &[j1])?;
    ensure!(unknown["acked"] == 0, "{unknown}");
    Ok(())
}

fn open(node: &Node) -> anyhow::Result<Socket> {
    ws::open(node.http, Duration::from_millis(300))
}

/// Frames of type `kind` from either socket until `until` holds or 10 s pass.
fn collect(
    sockets: &mut [&mut Socket],
    until: impl Fn(&[Vec<Value>]) -> bool,
) -> anyhow::Result<Vec<Vec<Value>>> {
    let mut got = vec![Vec::new(); sockets.len()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !until(&got) {
        ensure!(Instant::now() < deadline, "only {got:?}");
        for (i, ws) in sockets.iter_mut().enumerate() {
            if let Some(v) = try_next(ws)? {
                got[i].push(v);
            }
        }
    }
    Ok(got)
}

fn of_type<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}

#[test]
fn websocket_members_of_a_filter_group_share_mqtt_messages_and_ack() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let (mut one, mut two) = (open(&node)?, open(&node)?);
    let join = |ws: &mut Socket, consumer: &str| -> anyhow::Result<()> {
        send(
            ws,
            json!({"type": "subscribe", "id": "s", "filter": "dev/+", "group": "fleet",
                   "consumer": consumer, "claim_idle_ms": 500, "ref": 1}),
        )?;
        let subscribed = collect(&mut [ws], |g| !of_type(&g[0], "subscribed").is_empty())?;
        ensure!(subscribed[0].len() == 1, "{subscribed:?}");
        Ok(())
    };
    let publish = |from: usize, to: usize| -> anyhow::Result<()> {
        for i in from..to {
            node.publish(&["-q", "1", "-t", &format!("dev/{i}"), "-m", &format!("m{i}")])?;
        }
        Ok(())
    };
    // `two` takes the first three and stops reading (it stays a member, its messages pending
    // with it); `one` gets the next three.
    join(&mut two, "two")?;
    publish(0, 3)?;
    let mut first = collect(&mut [&mut two], |g| of_type(&g[0], "message").len() >= 3)?;
    send(&mut two, json!({"type": "unsubscribe", "id": "s"}))?;
    collect(&mut [&mut two], |g| {
        !of_type(&g[0], "unsubscribed").is_empty()
    })?;
    join(&mut one, "one")?;
    publish(3, 6)?;
    let mut got = collect(&mut [&mut one], |g| of_type(&g[0], "message").len() >= 3)?;
    got.append(&mut first);
    let payloads = |frames: &[Value]| -> Vec<String> {
        of_type(frames, "message")
            .iter()
            .map(|m| m["payload"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (p1, p2) = (payloads(&got[0]), payloads(&got[1]));
    let all: BTreeSet<&String> = p1.iter().chain(&p2).collect();
    ensure!(
        all.len() == 6 && p1.len() == 3 && p2.len() == 3,
        "{p1:?} {p2:?}"
    );

    // `one` acknowledges all of its messages; `two` none of them.
    let cursors: Vec<Value> = of_type(&got[0], "message")
        .iter()
        .map(|m| m["cursor"].clone())
        .collect();
    send(
        &mut one,
        json!({"type": "ack", "filter": "dev/+", "group": "fleet", "ids": cursors, "ref": 2}),
    )?;
    let acked = collect(&mut [&mut one], |g| !of_type(&g[0], "acked").is_empty())?;
    ensure!(
        of_type(&acked[0], "acked")[0]["acked"] == p1.len(),
        "{acked:?}"
    );
    // `two` goes away without acking: past claim_idle its messages go to `one`, redelivered.
    drop(two);
    let again = collect(&mut [&mut one], |g| {
        of_type(&g[0], "message").len() >= p2.len()
    })?;
    let redelivered: BTreeSet<String> = of_type(&again[0], "message")
        .iter()
        .map(|m| {
            ensure!(m["redelivered"] == true, "{m}");
            Ok(m["payload"].as_str().unwrap_or_default().to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        redelivered == p2.iter().cloned().collect(),
        "{redelivered:?} vs {p2:?}"
    );
    // A bad ack frame is an error answer, the connection stays.
    send(
        &mut one,
        json!({"type": "ack", "group": "fleet", "ids": ["1.0"]}),
    )?;
    let error = collect(&mut [&mut one], |g| !of_type(&g[0], "error").is_empty())?;
    ensure!(of_type(&error[0], "error")[0]["error"] == "bad_request");
    Ok(())
}

/// `GET /groups` lists every topic's groups, whatever made them; `GET /mqtt/clients` the MQTT
/// sessions, connected ones with their node and subscriptions, and a persistent one after its
/// client left.
#[test]
fn groups_and_mqtt_clients_are_listed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let c = http()?;
    publish(&c, &node, "orders", "o1")?;
    ensure!(node.resp(&["XGROUP", "CREATE", "orders", "billing", "0"])? == "+OK");
    let get = |path: &str| -> anyhow::Result<Value> {
        Ok(c.get(format!("http://127.0.0.1:{}{path}", node.http))
            .send()?
            .json()?)
    };
    let groups = get("/groups")?;
    ensure!(
        groups["groups"]
            == json!([{"topic": "orders", "name": "billing", "consumers": 0, "pending": 0,
                       "lag": 1, "last_delivered_id": "0-0"}]),
        "{groups}"
    );
    // A persistent MQTT session (clean session off), connected, then gone.
    let mut watcher = node.subscribe(&["-i", "watcher", "-c", "-q", "1", "-t", "orders/#"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let clients = loop {
        let v = get("/mqtt/clients")?;
        if v["connected"] == 1 {
            break v;
        }
        ensure!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let one = &clients["clients"][0];
    ensure!(
        one["client_id"] == "watcher"
            && one["connected"] == true
            && one["node"] == 1
            && one["subscriptions"] == json!(["orders/#"]),
        "{clients}"
    );
    watcher.kill()?;
    watcher.wait()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get("/mqtt/clients")?;
        if v["connected"] == 0 {
            ensure!(
                v["total"] == 1 && v["clients"][0]["connected"] == false,
                "{v}"
            );
            break;
        }
        ensure!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
