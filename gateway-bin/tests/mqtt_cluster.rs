//! The MQTT broker in a three-node group (`manifold serve --peers`, real processes on
//! loopback): a client may connect to any node — its session commands go to the leader like
//! any write — and sees the one log; a persistent session follows its client from node to node.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::group::{Node, group};

fn output(child: Child) -> anyhow::Result<String> {
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Clients on a follower work as on the leader: a subscriber there gets what is published on
/// every node, in order; its persistent session, left on one follower, is picked up on the
/// other follower and on the leader with what it missed.
#[test]
fn mqtt_clients_on_any_node_share_the_log_and_their_sessions() -> anyhow::Result<()> {
    let _one = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (nodes, _peers, l) = group(root.path())?;
    let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let (f1, f2) = (&nodes[followers[0]], &nodes[followers[1]]);

    // A QoS 1 subscriber on a follower; publishers on all three nodes.
    let sub = f1.subscribe(&["-t", "c/#", "-q", "1", "-C", "3", "-W", "30", "-v"])?;
    std::thread::sleep(Duration::from_millis(800));
    f1.publish(&["-t", "c/a", "-m", "from f1", "-q", "1"])?;
    nodes[l].publish(&["-t", "c/b", "-m", "from the leader", "-q", "1"])?;
    f2.publish(&["-t", "c/c", "-m", "from f2", "-q", "1"])?;
    assert_eq!(
        output(sub)?,
        "c/a from f1\nc/b from the leader\nc/c from f2\n"
    );

    // A persistent session made on one follower...
    let first = f1.subscribe(&[
        "-t", "away/#", "-q", "1", "-c", "-i", "roamer", "-C", "1", "-W", "30",
    ])?;
    std::thread::sleep(Duration::from_millis(800));
    f2.publish(&["-t", "away/0", "-m", "m0", "-q", "1"])?;
    assert_eq!(output(first)?, "m0\n");
    // ... misses two messages while away, and finds them on the other follower ...
    f1.publish(&["-t", "away/1", "-m", "m1", "-q", "1"])?;
    nodes[l].publish(&["-t", "away/2", "-m", "m2", "-q", "1"])?;
    let back = f2.subscribe(&[
        "-t", "away/#", "-q", "1", "-c", "-i", "roamer", "-C", "2", "-W", "30",
    ])?;
    assert_eq!(output(back)?, "m1\nm2\n");
    // ... and the next one on the leader, where nothing is delivered twice.
    f2.publish(&["-t", "away/3", "-m", "m3", "-q", "1"])?;
    let last = nodes[l].subscribe(&[
        "-t", "away/#", "-q", "1", "-c", "-i", "roamer", "-C", "1", "-W", "30",
    ])?;
    assert_eq!(output(last)?, "m3\n");
    Ok(())
}

/// A client id connected on one node and then on another: the first connection is told it
/// was taken over (v5 DISCONNECT 0x8E) — the session's Open names its connection, and every
/// node disconnects its own connection of a session opened elsewhere — and its session, with
/// what it subscribed to, goes on at the second node.
#[test]
fn a_connection_on_another_node_takes_the_session_over() -> anyhow::Result<()> {
    use common::mqtt::Raw;
    use manifold_mqtt::codec::{Packet, Properties, QoS, Subscribe, Subscription};
    let _one = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (nodes, _peers, l) = group(root.path())?;
    let f = (l + 1) % 3;
    let (mut first, present) = Raw::connect(nodes[f].mqtt, "wanderer")?;
    ensure!(!present, "a new session");
    first.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        subscriptions: vec![Subscription::new("w/t", QoS::AtLeastOnce)],
        properties: Properties::default(),
    }))?;
    ensure!(matches!(first.next()?, Packet::SubAck(_)), "SUBACK");
    let (mut second, present) = Raw::connect(nodes[l].mqtt, "wanderer")?;
    ensure!(present, "the session was there");
    match first.next_within(Duration::from_secs(10))? {
        Some(Packet::Disconnect(d)) => ensure!(d.code == 0x8E, "taken over: {d:?}"),
        other => bail!("DISCONNECT 0x8E expected on the first node, got {other:?}"),
    }
    nodes[f].publish(&["-t", "w/t", "-m", "still subscribed", "-q", "1"])?;
    match second.next()? {
        Packet::Publish(p) => ensure!(p.payload.as_ref() == b"still subscribed", "{p:?}"),
        other => bail!("the message on the second node, got {other:?}"),
    }
    Ok(())
}

/// Nodes that die holding connections: their clients' Wills go out through the others. A
/// follower SIGKILLed is declared lost by the leader once silent for 3 s; a leader SIGKILLed,
/// by the leader elected after it.
#[test]
fn the_wills_of_a_dead_nodes_clients_go_out_through_the_others() -> anyhow::Result<()> {
    use common::mqtt::Raw;
    use manifold_mqtt::codec::{QoS, Will};
    let _one = common::one_group_at_a_time();
    let root = tempfile::tempdir()?;
    let (mut nodes, peers, l) = group(root.path())?;
    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(b"node died"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    // A follower dies with a client on it; a watcher on the leader sees the Will.
    let f = (l + 1) % 3;
    let (_on_follower, _) = Raw::connect_with_will(nodes[f].mqtt, "dev-f", Some(will("w/f")))?;
    let watcher = nodes[l].subscribe(&["-t", "w/#", "-q", "1", "-C", "1", "-W", "30", "-v"])?;
    std::thread::sleep(Duration::from_millis(800));
    nodes[f].kill()?;
    assert_eq!(output(watcher)?, "w/f node died\n");

    // The leader dies with a client on it; a watcher on the follower left sees the Will once
    // a new leader (the follower restarted, or the other) has declared it lost.
    nodes[f].start(&peers)?;
    let (_on_leader, _) = Raw::connect_with_will(nodes[l].mqtt, "dev-l", Some(will("w/l")))?;
    let other = (l + 2) % 3;
    let watcher = nodes[other].subscribe(&["-t", "w/#", "-q", "1", "-C", "1", "-W", "30", "-v"])?;
    std::thread::sleep(Duration::from_millis(800));
    nodes[l].kill()?;
    assert_eq!(output(watcher)?, "w/l node died\n");
    Ok(())
}

/// QoS 2 publishes while the leader is SIGKILLed mid-stream, from a client on a follower and
/// from one on the leader; half-way, a PUBLISH is committed and its PUBREC never read, the
/// leader dies and the client reconnects. A client that follows the protocol — after a lost
/// connection it reconnects, to any node, and sends again, DUP, the PUBLISH not yet PUBREC'd
/// or the PUBREL not yet PUBCOMP'd — gets each message stored exactly once, in order, on every
/// node (the broker's appends carry the session's producer sequence, which the new leader's
/// dedupe answers).
#[test]
fn qos2_publishes_are_stored_once_across_a_leader_failover() -> anyhow::Result<()> {
    let _one = common::one_group_at_a_time();
    for on_leader in [false, true] {
        let root = tempfile::tempdir()?;
        let (mut nodes, _peers, l) = group(root.path())?;
        let first = if on_leader { l } else { (l + 1) % 3 };
        let reconnects = qos2_stream(&mut nodes, first, l, "q2/failover")?;
        ensure!(reconnects > 0, "the client reconnected");
        let want: Vec<String> = (1..=QOS2_MESSAGES).map(|i| format!("m{i}")).collect();
        for n in nodes.iter().filter(|n| n.child.is_some()) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let got = payloads(n, "q2/failover")?;
                if got == want {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "node {} (client on the leader: {on_leader}): {} messages, not {} once \
                     each in order: {got:?}",
                    n.id,
                    got.len(),
                    QOS2_MESSAGES
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

const QOS2_MESSAGES: u16 = 60;

/// Publishes `m1`.. at QoS 2 from client `q2-pub`, first connected to `nodes[first]`,
/// SIGKILLing `nodes[kill]` right after sending PUBLISH number half-way; returns how often the
/// client had to reconnect.
fn qos2_stream(nodes: &mut [Node], first: usize, kill: usize, topic: &str) -> anyhow::Result<u32> {
    use common::mqtt::Raw;
    use manifold_mqtt::codec::{Ack, Packet, Properties, Publish, QoS};
    let publish = |id: u16, dup: bool| {
        Packet::Publish(Publish {
            dup,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: topic.into(),
            packet_id: id,
            properties: Properties::default(),
            payload: bytes::Bytes::from(format!("m{id}")),
        })
    };
    // Any running node, starting with `at`.
    let connect = |nodes: &[Node], at: usize| -> anyhow::Result<Raw> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut k = at;
        loop {
            if nodes[k].child.is_some()
                && let Ok((raw, _)) = Raw::connect(nodes[k].mqtt, "q2-pub")
            {
                return Ok(raw);
            }
            ensure!(Instant::now() < deadline, "no node took the client back");
            k = (k + 1) % nodes.len();
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut raw = connect(nodes, first)?;
    let mut reconnects = 0;
    for id in 1..=QOS2_MESSAGES {
        // PUBLISH until PUBREC, then PUBREL until PUBCOMP; a lost connection (or a broker
        // that says nothing for 10 s) means reconnect and send the same step again, DUP.
        let mut released = false;
        let mut dup = false;
        loop {
            let sent = if released {
                raw.send(&Packet::PubRel(Ack::new(id)))
            } else {
                raw.send(&publish(id, dup))
            };
            let answer = if id == QOS2_MESSAGES / 2 && nodes[kill].child.is_some() {
                // The PUBLISH is committed by now; the leader dies and the client never reads
                // its PUBREC: it must send the PUBLISH again, wherever it reconnects.
                std::thread::sleep(Duration::from_millis(300));
                nodes[kill].kill()?;
                Ok(None)
            } else {
                match sent {
                    Ok(()) => raw.next_within(Duration::from_secs(10)),
                    Err(e) => Err(e),
                }
            };
            match answer {
                Ok(Some(Packet::PubRec(a))) if a.packet_id == id && !released => released = true,
                Ok(Some(Packet::PubComp(a))) if a.packet_id == id && released => break,
                Ok(Some(other)) => bail!("message {id}: unexpected {other:?}"),
                Ok(None) | Err(_) => {
                    reconnects += 1;
                    ensure!(reconnects < 20, "message {id}: the broker never answered");
                    raw = connect(nodes, first)?;
                    dup = true;
                }
            }
        }
    }
    Ok(reconnects)
}

/// The `payload` field of every entry of `key`, in order (redis-cli's raw XRANGE output).
fn payloads(node: &Node, key: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &node.resp.to_string(),
            "--raw",
            "XRANGE",
            key,
            "-",
            "+",
        ])
        .output()
        .context("redis-cli (Debian package redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // Each entry: its ID, then field, value pairs.
    Ok(lines
        .windows(2)
        .filter(|w| w[0] == "payload")
        .map(|w| w[1].to_string())
        .collect())
}
