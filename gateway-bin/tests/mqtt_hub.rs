//! Live subscribers (clean sessions, one QoS 0 subscription) at the head of their filter are
//! written by the filter's hub, over real TCP against the real broker: every message once and
//! in order whichever way it reached them — a subscriber that stops reading is let go by the
//! hub and, reading again, gets the rest by cursor; one that subscribes to a second filter
//! leaves the hub and gets each message of both once; MQTT 3.1.1 and 5.0 subscribers of one
//! hub each get their own version's packets, properties included.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use common::mqtt::{Node, Raw, node};
use manifold_mqtt::codec::{Ack, Packet, Properties, Publish, QoS};

/// A client whose session ends with its connection, subscribed to `filter` at QoS 0.
fn live(node: &Node, id: &str, filter: &str) -> anyhow::Result<Raw> {
    let properties = Properties {
        session_expiry: Some(0),
        ..Properties::default()
    };
    let (mut raw, _) = Raw::connect_with(node.mqtt, id, None, properties)?;
    raw.subscribe(1, filter, QoS::AtMostOnce)?;
    Ok(raw)
}

/// A `/metrics` value of the node.
fn metric(node: &Node, name: &str) -> anyhow::Result<u64> {
    let text = node.http_get("/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("{name} in {text}"))
}

/// Waits until `/metrics` says `name` is `want`.
fn metric_becomes(node: &Node, name: &str, want: u64) -> anyhow::Result<()> {
    metric_until(node, name, |got| got == want)
}

/// Waits until `/metrics` says `name` is a value `ok` takes.
fn metric_until(node: &Node, name: &str, ok: impl Fn(u64) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = metric(node, name)?;
        if ok(got) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{name}: {got}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: Vec<u8>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from(payload),
    })
}

/// The PUBLISH packets `raw` gets until one with payload `last`: (topic, payload head).
fn take_until(raw: &mut Raw, last: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
    let mut got = Vec::new();
    loop {
        match raw
            .next()
            .with_context(|| format!("after {} messages", got.len()))?
        {
            Packet::Publish(p) => {
                let head = p.payload.split(|b| *b == b' ').next().unwrap_or_default();
                got.push((p.topic.clone(), String::from_utf8_lossy(head).into_owned()));
                if p.payload[..] == *last {
                    return Ok(got);
                }
            }
            other => anyhow::bail!("PUBLISH expected: {other:?}"),
        }
    }
}

#[test]
fn a_live_subscriber_that_stops_reading_is_let_go_by_its_hub_and_catches_up() -> anyhow::Result<()>
{
    const N: usize = 3000;
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let mut fast = live(&node, "fast", "live/#")?;
    let mut other = live(&node, "other", "live/#")?;
    let mut slow = live(&node, "slow", "live/#")?;
    metric_becomes(&node, "manifold_mqtt_hub_subscribers", 3)?;

    // Two keep reading while 3,000 messages of 8 KiB pour in (more than the slow one's socket
    // buffers and its queue in the broker hold); the third reads nothing.
    let readers: Vec<_> = [fast, other]
        .into_iter()
        .map(|mut raw| std::thread::spawn(move || take_until(&mut raw, b"end").map(|g| (raw, g))))
        .collect();
    let (mut publisher, _) = Raw::connect(node.mqtt, "publisher")?;
    for k in 0..N {
        let mut payload = format!("{k} ").into_bytes();
        payload.resize(8 * 1024, b'x');
        publisher.send(&publish("live/a", QoS::AtMostOnce, 0, payload))?;
    }
    publisher.send(&publish("live/a", QoS::AtLeastOnce, 1, b"end".to_vec()))?;
    assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(1)));
    let expected: Vec<(String, String)> = (0..N)
        .map(|k| k.to_string())
        .chain(["end".to_string()])
        .map(|p| ("live/a".to_string(), p))
        .collect();
    let mut readers = readers.into_iter();
    let mut next_reader = || -> anyhow::Result<Raw> {
        let (raw, got) = readers
            .next()
            .context("a reader")?
            .join()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))??;
        assert_eq!(
            got, expected,
            "a reading subscriber: every message once, in order"
        );
        Ok(raw)
    };
    fast = next_reader()?;
    other = next_reader()?;
    // (The readers may have been let go too, on a slow machine.)
    metric_until(&node, "manifold_mqtt_hub_let_go_total", |n| n >= 1)?;

    // The slow one reads again: the rest comes by cursor from where the hub stopped, once.
    assert_eq!(
        take_until(&mut slow, b"end")?,
        expected,
        "the subscriber let go: every message once, in order"
    );
    // Caught up, it is back on the hub.
    metric_becomes(&node, "manifold_mqtt_hub_subscribers", 3)?;

    // A second filter: `fast` leaves the hub and gets each message of both filters once.
    fast.subscribe(2, "news", QoS::AtMostOnce)?;
    metric_becomes(&node, "manifold_mqtt_hub_subscribers", 2)?;
    publisher.send(&publish("live/b", QoS::AtLeastOnce, 2, b"one".to_vec()))?;
    assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(2)));
    publisher.send(&publish("news", QoS::AtLeastOnce, 3, b"two".to_vec()))?;
    assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(3)));
    publisher.send(&publish("live/c", QoS::AtLeastOnce, 4, b"three".to_vec()))?;
    assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(4)));
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(t, p)| (t.to_string(), p.to_string()))
            .collect()
    };
    assert_eq!(
        take_until(&mut fast, b"three")?,
        pairs(&[("live/b", "one"), ("news", "two"), ("live/c", "three")])
    );
    for raw in [&mut other, &mut slow] {
        assert_eq!(
            take_until(raw, b"three")?,
            pairs(&[("live/b", "one"), ("live/c", "three")])
        );
    }
    // Nothing more, twice or late.
    for raw in [&mut fast, &mut other, &mut slow] {
        assert_eq!(raw.next_within(Duration::from_millis(300))?, None);
    }
    Ok(())
}

/// `mosquitto_sub` in MQTT 3.1.1 and 5.0 on one hub: each gets its version's packets, the 5.0
/// one with the message's properties.
#[test]
fn one_hub_writes_each_protocol_version_its_own_packets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let v311 = node.subscribe(&["-V", "mqttv311", "-t", "hub/t", "-C", "2", "-W", "20"])?;
    let v5 = node.subscribe(&[
        "-V",
        "mqttv5",
        "-t",
        "hub/t",
        "-C",
        "2",
        "-W",
        "20",
        "-F",
        "%t %p %C %P",
    ])?;
    metric_becomes(&node, "manifold_mqtt_hub_subscribers", 2)?;
    let sent = metric(&node, "manifold_mqtt_publish_sent_total")?;
    node.publish(&["-t", "hub/t", "-m", "plain"])?;
    node.publish(&[
        "-V",
        "mqttv5",
        "-t",
        "hub/t",
        "-m",
        "typed",
        "-D",
        "publish",
        "content-type",
        "text/plain",
        "-D",
        "publish",
        "user-property",
        "site",
        "north",
    ])?;
    let out = |child: std::process::Child| -> anyhow::Result<String> {
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "{out:?}");
        Ok(String::from_utf8(out.stdout)?)
    };
    assert_eq!(out(v311)?, "plain\ntyped\n");
    assert_eq!(
        out(v5)?,
        "hub/t plain  \nhub/t typed text/plain site:north\n"
    );
    // Each counted as sent.
    metric_becomes(&node, "manifold_mqtt_publish_sent_total", sent + 4)?;
    Ok(())
}
