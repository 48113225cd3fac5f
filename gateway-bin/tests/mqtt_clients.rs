//! The real `manifold` binary with real MQTT clients — Debian's `mosquitto_pub` and
//! `mosquitto_sub` and Python's paho-mqtt, both protocol versions — and raw TCP for what no
//! client sends: messages across MQTT and RESP, QoS 0/1/2, retained messages, persistent
//! sessions across a SIGKILL, Wills, takeover, and bad first packets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Output};
use std::time::Duration;

use anyhow::{Context, ensure};
use common::mqtt::{Node, Raw, node};

fn output(child: Child) -> anyhow::Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&stdout).into_owned();
    ensure!(
        status.success(),
        "mosquitto_sub: {status}: {text} {}",
        String::from_utf8_lossy(&stderr)
    );
    Ok(text)
}

/// Waits until a subscriber's SUBSCRIBE is surely in: `mosquitto_sub -E` (exit once
/// subscribed) with the same persistent session, run before the real one.
fn subscribed(node: &Node, id: &str, filter: &str, version: &str) -> anyhow::Result<()> {
    let sub = node.subscribe(&[
        "-V", version, "-i", id, "-c", "-q", "2", "-t", filter, "-E", "-x", "3600",
    ])?;
    output(sub).map(|_| ())
}

#[test]
fn messages_cross_mqtt_versions_qos_levels_and_resp_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    for version in ["mqttv311", "mqttv5"] {
        let id = format!("reader-{version}");
        subscribed(&node, &id, "a/#", version)?;
        let sub = node.subscribe(&[
            "-V", version, "-i", &id, "-c", "-x", "3600", "-q", "2", "-t", "a/#", "-v", "-C", "5",
            "-W", "20",
        ])?;
        node.publish(&["-t", "a/b", "-m", "zero", "-q", "0"])?;
        node.publish(&["-t", "a/b", "-m", "one", "-q", "1", "-V", "mqttv5"])?;
        node.publish(&["-t", "a/c/d", "-m", "two", "-q", "2"])?;
        ensure!(
            node.resp(&["XADD", "a/e", "*", "payload", "raw bytes"])?
                .starts_with('$')
        );
        ensure!(
            node.resp(&["XADD", "a/e", "*", "temp", "21.5", "unit", "C"])?
                .starts_with('$')
        );
        let got = output(sub)?;
        assert_eq!(
            got,
            "a/b zero\na/b one\na/c/d two\na/e raw bytes\na/e {\"temp\":\"21.5\",\"unit\":\"C\"}\n",
            "{version}"
        );
    }
    // What MQTT published is a stream entry: field `payload`, the bytes as sent.
    let range = node.resp(&["XLEN", "a/b"])?;
    assert_eq!(range, ":4");
    Ok(())
}

#[test]
fn a_persistent_session_gets_what_it_missed_once_and_in_order_across_a_sigkill()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    subscribed(&node, "dev1", "s/#", "mqttv311")?;
    for i in 0..5 {
        node.publish(&["-t", &format!("s/{i}"), "-m", &format!("m{i}"), "-q", "1"])?;
    }
    let node = node.kill_and_restart()?;
    node.publish(&["-t", "s/5", "-m", "m5", "-q", "1"])?;
    let sub = node.subscribe(&[
        "-i", "dev1", "-c", "-q", "1", "-t", "s/#", "-v", "-C", "6", "-W", "20",
    ])?;
    let got = output(sub)?;
    let want: String = (0..6).map(|i| format!("s/{i} m{i}\n")).collect();
    assert_eq!(got, want);
    // Nothing is left for it: a second reconnect gets nothing within a second.
    let again = node.subscribe(&["-i", "dev1", "-c", "-q", "1", "-t", "s/#", "-v", "-W", "1"])?;
    let rest = again.wait_with_output()?;
    assert_eq!(String::from_utf8_lossy(&rest.stdout), "");
    Ok(())
}

#[test]
fn retained_messages_reach_later_subscribers_and_an_empty_payload_clears_them() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    node.publish(&["-t", "r/1", "-m", "kept", "-r", "-q", "1"])?;
    node.publish(&["-t", "r/2", "-m", "also", "-r"])?;
    let sub = node.subscribe(&["-t", "r/#", "-v", "-C", "2", "-W", "10"])?;
    let mut got: Vec<String> = output(sub)?.lines().map(String::from).collect();
    got.sort();
    assert_eq!(got, ["r/1 kept", "r/2 also"]);
    node.publish(&["-t", "r/1", "-n", "-r"])?;
    let sub = node.subscribe(&["-t", "r/#", "-v", "-C", "1", "-W", "10"])?;
    assert_eq!(output(sub)?, "r/2 also\n");
    Ok(())
}

#[test]
fn publishes_to_sys_topics_are_refused_and_only_those() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    // Acknowledged (3.1.1 has no refusal code) and not stored.
    node.publish(&["-t", "$SYS/broker/uptime", "-m", "forged", "-q", "1"])?;
    node.publish(&["-t", "$SYSTEM/x", "-m", "mine", "-q", "1"])?;
    assert_eq!(node.resp(&["XLEN", "$SYS/broker/uptime"])?, ":0");
    assert_eq!(node.resp(&["XLEN", "$SYSTEM/x"])?, ":1");
    // Nor over RESP (any protocol: the engine's rule), as Redis refuses a key an ACL denies.
    let refused = node.resp(&["XADD", "$SYS/broker/uptime", "*", "payload", "forged"])?;
    ensure!(refused.starts_with("-NOPERM"), "{refused}");
    let added = node.resp(&["XADD", "$SYSTEM/y", "*", "payload", "ok"])?;
    ensure!(added.starts_with('$'), "an ID: {added}");
    Ok(())
}

#[test]
fn a_will_is_published_when_its_client_vanishes_and_not_after_a_disconnect() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    subscribed(&node, "watcher", "w/#", "mqttv311")?;
    let watcher = node.subscribe(&[
        "-i", "watcher", "-c", "-q", "1", "-t", "w/#", "-v", "-C", "1", "-W", "20",
    ])?;
    // A clean DISCONNECT: its Will is dropped.
    node.publish(&[
        "-t",
        "x",
        "-m",
        "bye",
        "--will-topic",
        "w/polite",
        "--will-payload",
        "no",
    ])?;
    // A client that vanishes: its connection closes without DISCONNECT.
    let will = manifold_mqtt::codec::Will {
        topic: "w/rude".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: manifold_mqtt::codec::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    let (rude, _) = Raw::connect_with_will(node.mqtt, "rude", Some(will))?;
    drop(rude);
    assert_eq!(output(watcher)?, "w/rude gone\n");
    Ok(())
}

/// A client connected when the broker is SIGKILLed lost its connection too: once the broker is
/// back its Will goes out (the restarted broker declares its earlier run's connections lost),
/// to a persistent subscriber that was away as well.
#[test]
fn the_wills_of_clients_connected_when_the_broker_died_go_out_after_its_restart()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    subscribed(&node, "watcher", "w/#", "mqttv311")?;
    let will = manifold_mqtt::codec::Will {
        topic: "w/crashed".into(),
        payload: bytes::Bytes::from_static(b"gone with the broker"),
        qos: manifold_mqtt::codec::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    let (_held, _) = Raw::connect_with_will(node.mqtt, "crashed", Some(will))?;
    let node = node.kill_and_restart()?;
    let watcher = node.subscribe(&[
        "-i", "watcher", "-c", "-q", "1", "-t", "w/#", "-v", "-C", "1", "-W", "20",
    ])?;
    assert_eq!(output(watcher)?, "w/crashed gone with the broker\n");
    Ok(())
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_the_session_over() -> anyhow::Result<()> {
    use manifold_mqtt::codec::{Disconnect, Packet};
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let (mut first, _) = Raw::connect(node.mqtt, "same")?;
    subscribed(&node, "same", "t/#", "mqttv5")?;
    // The first is told why (5.0 reason 0x8E, session taken over), then closed.
    assert_eq!(
        first.next()?,
        Packet::Disconnect(Disconnect {
            code: 0x8E,
            ..Disconnect::default()
        })
    );
    assert!(first.next().is_err(), "the first connection stays open");
    Ok(())
}

/// Raw TCP: the bytes of one exchange.
fn exchange(port: u16, send: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(send)?;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    Ok(got)
}

#[test]
fn bad_first_packets_are_answered_as_the_spec_says_and_the_connection_closed() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    // Not a CONNECT: closed, nothing said.
    assert_eq!(exchange(node.mqtt, b"\xC0\x00")?, b"");
    // MQTT 3.1 (MQIsdp, level 3): CONNACK return code 1, unacceptable protocol version.
    let mqisdp = b"\x10\x0F\x00\x06MQIsdp\x03\x02\x00\x3C\x00\x01c";
    assert_eq!(exchange(node.mqtt, mqisdp)?, b"\x20\x02\x00\x01");
    // 3.1.1, an empty client id with Clean Session 0: return code 2, identifier rejected.
    let empty_id = b"\x10\x0C\x00\x04MQTT\x04\x00\x00\x3C\x00\x00";
    assert_eq!(exchange(node.mqtt, empty_id)?, b"\x20\x02\x00\x02");
    // 5.0: a good CONNECT, then a SUBSCRIBE with the wrong fixed-header flags: CONNACK, then
    // DISCONNECT 0x81 (malformed packet), then the connection closes.
    let mut v5 = b"\x10\x0E\x00\x04MQTT\x05\x02\x00\x3C\x00\x00\x01c".to_vec();
    v5.extend_from_slice(b"\x80\x07\x00\x01\x00\x00\x01a\x00");
    let got = exchange(node.mqtt, &v5)?;
    ensure!(got.starts_with(b"\x20"), "CONNACK first: {got:?}");
    assert!(
        got.ends_with(b"\xE0\x02\x81\x00") || got.ends_with(b"\xE0\x01\x81"),
        "{got:?}"
    );
    Ok(())
}

#[test]
fn v5_message_properties_topic_aliases_and_expiry_carry_through_the_log() -> anyhow::Result<()> {
    use bytes::Bytes;
    use manifold_mqtt::codec::{Ack, Packet, Properties, Publish, QoS, Subscribe, Subscription};
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let session = |aliases| Properties {
        session_expiry: Some(3600),
        topic_alias_maximum: aliases,
        ..Properties::default()
    };
    let publish = |topic: &str, id, properties, payload: &'static [u8]| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: id,
            properties,
            payload: Bytes::from_static(payload),
        })
    };
    let (mut sub, _) = Raw::connect_with(node.mqtt, "props-sub", None, session(Some(5)))?;
    sub.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        subscriptions: vec![Subscription::new("p/#", QoS::AtLeastOnce)],
        properties: Properties {
            subscription_ids: vec![9],
            ..Properties::default()
        },
    }))?;
    ensure!(matches!(sub.next()?, Packet::SubAck(_)));

    let sent = Properties {
        content_type: Some("application/json".into()),
        payload_format: Some(1),
        message_expiry: Some(100),
        response_topic: Some("p/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr")),
        user: vec![("key".into(), "k1".into()), ("x".into(), "y".into())],
        ..Properties::default()
    };
    let (mut publisher, _) = Raw::connect_with(node.mqtt, "props-pub", None, session(None))?;
    let mut first = sent.clone();
    first.topic_alias = Some(3);
    publisher.send(&publish("p/a", 1, first, b"{}"))?;
    let aliased = Properties {
        topic_alias: Some(3),
        ..Properties::default()
    };
    publisher.send(&publish("", 2, aliased, b"second"))?;
    assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(1)));
    assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(2)));

    // The subscriber gets every property back, and the broker's own alias for the topic.
    let Packet::Publish(one) = sub.next()? else {
        anyhow::bail!("PUBLISH expected")
    };
    let mut want = sent.clone();
    want.subscription_ids = vec![9];
    want.topic_alias = Some(1);
    ensure!(
        matches!(one.properties.message_expiry, Some(99..=100)),
        "{one:?}"
    );
    want.message_expiry = one.properties.message_expiry;
    assert_eq!((one.topic.as_str(), &one.properties), ("p/a", &want));
    let Packet::Publish(two) = sub.next()? else {
        anyhow::bail!("PUBLISH expected")
    };
    assert_eq!((two.topic.as_str(), &two.payload[..]), ("", &b"second"[..]));
    assert_eq!(two.properties.topic_alias, Some(1));
    assert_eq!(two.properties.subscription_ids, vec![9]);
    assert_eq!(two.properties.content_type, None);
    sub.send(&Packet::PubAck(Ack::new(one.packet_id)))?;
    sub.send(&Packet::PubAck(Ack::new(two.packet_id)))?;
    // The user property `key` is the message key the IndexFile finds.
    assert_eq!(node.resp(&["MANIFOLD.FIND", "p/a", "k1"])?, "*1");

    // An expired message is not delivered to a session that was away; others are.
    sub.send(&Packet::Disconnect(Default::default()))?;
    // Gone once the broker closes the connection: nothing published after goes to it.
    while sub.next().is_ok() {}
    let short = Properties {
        message_expiry: Some(1),
        ..Properties::default()
    };
    publisher.send(&publish("p/short", 3, short, b"gone"))?;
    publisher.send(&publish("p/long", 4, Properties::default(), b"kept"))?;
    assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(3)));
    assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(4)));
    std::thread::sleep(Duration::from_millis(2100));
    let (mut sub, present) = Raw::connect_with(node.mqtt, "props-sub", None, session(None))?;
    ensure!(present);
    let Packet::Publish(next) = sub.next()? else {
        anyhow::bail!("PUBLISH expected")
    };
    assert_eq!(
        (next.topic.as_str(), &next.payload[..]),
        ("p/long", &b"kept"[..])
    );

    // Aliases the broker did not allow, or never set up, end the connection.
    for (alias, topic, code) in [(65u16, "p/x", 0x94u8), (7, "", 0x82)] {
        let (mut bad, _) = Raw::connect_with(node.mqtt, "props-bad", None, session(None))?;
        let properties = Properties {
            topic_alias: Some(alias),
            ..Properties::default()
        };
        bad.send(&publish(topic, 1, properties, b"x"))?;
        match bad.next()? {
            Packet::Disconnect(d) => assert_eq!(d.code, code, "alias {alias}"),
            other => anyhow::bail!("DISCONNECT expected: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn v5_no_local_and_retain_as_published() -> anyhow::Result<()> {
    use bytes::Bytes;
    use manifold_mqtt::codec::{Ack, Packet, Properties, Publish, QoS, Subscribe, Subscription};
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let publish = |topic: &str, id, retain, payload: &'static [u8]| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain,
            topic: topic.into(),
            packet_id: id,
            properties: Properties::default(),
            payload: Bytes::from_static(payload),
        })
    };
    let subscribe = |raw: &mut Raw, options: bool| -> anyhow::Result<()> {
        let mut s = Subscription::new("o/#", QoS::AtLeastOnce);
        s.no_local = options;
        s.retain_as_published = options;
        raw.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: vec![s],
            properties: Properties::default(),
        }))?;
        ensure!(matches!(raw.next()?, Packet::SubAck(_)));
        Ok(())
    };
    let (mut a, _) = Raw::connect(node.mqtt, "opt-a")?;
    subscribe(&mut a, true)?;
    let (mut c, _) = Raw::connect(node.mqtt, "opt-c")?;
    subscribe(&mut c, false)?;
    let (mut b, _) = Raw::connect(node.mqtt, "opt-b")?;
    // A's own message does not come back to it (No Local); C gets it.
    a.send(&publish("o/self", 1, false, b"mine"))?;
    assert_eq!(a.next()?, Packet::PubAck(Ack::new(1)));
    b.send(&publish("o/theirs", 1, true, b"r1"))?;
    assert_eq!(b.next()?, Packet::PubAck(Ack::new(1)));
    b.send(&publish("o/plain", 2, false, b"p1"))?;
    assert_eq!(b.next()?, Packet::PubAck(Ack::new(2)));
    let take = |raw: &mut Raw, n: usize| -> anyhow::Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        while out.len() < n {
            let Packet::Publish(p) = raw.next()? else {
                anyhow::bail!("PUBLISH expected");
            };
            raw.send(&Packet::PubAck(Ack::new(p.packet_id)))?;
            out.push((p.topic, p.retain));
        }
        Ok(out)
    };
    // Retain As Published keeps B's retain flag on a live delivery; without it, it is 0.
    assert_eq!(
        take(&mut a, 2)?,
        vec![("o/theirs".into(), true), ("o/plain".into(), false)]
    );
    assert_eq!(
        take(&mut c, 3)?,
        vec![
            ("o/self".into(), false),
            ("o/theirs".into(), false),
            ("o/plain".into(), false)
        ]
    );
    Ok(())
}

/// `$share/g/jobs` is Redis consumer group `g` of stream `jobs`: MQTT members and an
/// XREADGROUP consumer share its messages, each message once; a member that leaves hands what
/// it held unacknowledged to another member.
#[test]
fn shared_subscriptions_are_consumer_groups_shared_with_xreadgroup() -> anyhow::Result<()> {
    use bytes::Bytes;
    use manifold_mqtt::codec::{Ack, Packet, Properties, Publish, QoS};
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    // Members whose sessions end with their connections, taking 1 and 2 messages at a time.
    let mut m1 = Raw::windowed_subscriber(node.mqtt, "share-1", "$share/g/jobs", 1)?;
    let mut m2 = Raw::windowed_subscriber(node.mqtt, "share-2", "$share/g/jobs", 2)?;
    let (mut publisher, _) = Raw::connect(node.mqtt, "share-pub")?;
    for k in 1..=6u16 {
        publisher.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "jobs".into(),
            packet_id: k,
            properties: Properties::default(),
            payload: Bytes::from(format!("j{k}")),
        }))?;
        assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(k)));
    }
    let publish = |raw: &mut Raw| -> anyhow::Result<Publish> {
        match raw.next()? {
            Packet::Publish(p) => Ok(p),
            other => anyhow::bail!("PUBLISH expected: {other:?}"),
        }
    };
    // Each member takes what its window holds, unacknowledged ...
    let held_by_1 = publish(&mut m1)?;
    let held_by_2 = [publish(&mut m2)?, publish(&mut m2)?];
    // ... and an XREADGROUP consumer of the same group gets the rest.
    let mut redis =
        redis::Client::open(format!("redis://127.0.0.1:{}/", node.resp))?.get_connection()?;
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP", "g", "resp-1", "COUNT", "10", "STREAMS", "jobs", ">",
        ])
        .query(&mut redis)?;
    let by_resp: Vec<String> = read.keys[0]
        .ids
        .iter()
        .map(|e| e.get::<String>("payload").unwrap_or_default())
        .collect();
    let mut all: Vec<String> = by_resp.clone();
    all.push(String::from_utf8_lossy(&held_by_1.payload).into_owned());
    all.extend(
        held_by_2
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned()),
    );
    all.sort();
    assert_eq!(
        all,
        ["j1", "j2", "j3", "j4", "j5", "j6"],
        "each once: {by_resp:?}"
    );
    ensure!(by_resp.len() == 3, "{by_resp:?}");

    // Member 1 vanishes holding its message: member 2 gets it once its window has room.
    drop(m1);
    for p in &held_by_2 {
        m2.send(&Packet::PubAck(Ack::new(p.packet_id)))?;
    }
    let handed = publish(&mut m2)?;
    assert_eq!(handed.payload, held_by_1.payload);
    ensure!(handed.dup, "a redelivery is flagged DUP");
    m2.send(&Packet::PubAck(Ack::new(handed.packet_id)))?;
    // Only the XREADGROUP consumer's three are still pending.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (pending, ..): (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&["jobs", "g"])
            .query(&mut redis)?;
        if pending == 3 {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "pending: {pending}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `$share/w/sensors/+` (a wildcard) is the engine's filter group `(w, sensors/+)`: two
/// members share its messages, each once; a member that vanishes releases what it held, and
/// the other takes it (flagged DUP) once its window has room.
#[test]
fn wildcard_shared_subscriptions_split_messages_and_survive_a_member_leaving() -> anyhow::Result<()>
{
    use bytes::Bytes;
    use manifold_mqtt::codec::{Ack, Packet, Properties, Publish, QoS};
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let publish = |raw: &mut Raw| -> anyhow::Result<Publish> {
        match raw.next()? {
            Packet::Publish(p) => Ok(p),
            other => anyhow::bail!("PUBLISH expected: {other:?}"),
        }
    };
    let mut m1 = Raw::windowed_subscriber(node.mqtt, "wild-1", "$share/w/sensors/+", 1)?;
    let mut m2 = Raw::windowed_subscriber(node.mqtt, "wild-2", "$share/w/sensors/+", 1)?;
    let (mut publisher, _) = Raw::connect(node.mqtt, "wild-pub")?;
    for k in 1..=4u16 {
        publisher.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: format!("sensors/{}", if k % 2 == 0 { "a" } else { "b" }),
            packet_id: k,
            properties: Properties::default(),
            payload: Bytes::from(format!("s{k}")),
        }))?;
        assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(k)));
    }
    // A window of one each: each member holds one message, unacknowledged.
    let held_by_1 = publish(&mut m1)?;
    let first_of_2 = publish(&mut m2)?;
    ensure!(held_by_1.payload != first_of_2.payload);
    // Member 1 vanishes: what it held is released, and member 2 gets it and the rest.
    drop(m1);
    let mut got = vec![first_of_2.clone()];
    let mut last = first_of_2;
    while got.len() < 4 {
        m2.send(&Packet::PubAck(Ack::new(last.packet_id)))?;
        last = publish(&mut m2)?;
        got.push(last.clone());
    }
    m2.send(&Packet::PubAck(Ack::new(last.packet_id)))?;
    let again = got
        .iter()
        .find(|p| p.payload == held_by_1.payload)
        .context("member 1's message reached member 2")?;
    ensure!(again.dup, "a redelivery is flagged DUP");
    let mut payloads: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    payloads.sort();
    assert_eq!(payloads, ["s1", "s2", "s3", "s4"]);
    ensure!(
        m2.next_within(Duration::from_millis(300))?.is_none(),
        "nothing twice"
    );
    Ok(())
}

/// `$SYS/broker/...` as Mosquitto publishes them (node-local, not in the log): a new
/// subscriber gets the values at once, flagged retained; `/metrics` has the same counters.
#[test]
fn sys_topics_and_metrics_report_the_brokers_counters() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    node.publish(&["-t", "counted", "-m", "x", "-q", "1"])?;
    let got = output(node.subscribe(&[
        "-t",
        "$SYS/broker/#",
        "-v",
        "-C",
        "10",
        "-W",
        "10",
        "-F",
        "%r %t %p",
    ])?)?;
    let value = |topic: &str| -> Option<String> {
        got.lines()
            .find(|l| l.split(' ').nth(1) == Some(topic))
            .map(|l| l.splitn(3, ' ').nth(2).unwrap_or("").to_string())
    };
    assert_eq!(
        value("$SYS/broker/version").as_deref(),
        Some(concat!("manifold ", env!("CARGO_PKG_VERSION"))),
        "{got}"
    );
    // This subscriber itself is connected; the publisher came and went.
    assert_eq!(
        value("$SYS/broker/clients/connected").as_deref(),
        Some("1"),
        "{got}"
    );
    assert_eq!(
        value("$SYS/broker/clients/total").as_deref(),
        Some("2"),
        "{got}"
    );
    assert_eq!(
        value("$SYS/broker/publish/messages/received").as_deref(),
        Some("1"),
        "{got}"
    );
    ensure!(
        got.lines().all(|l| l.starts_with("1 ")),
        "flagged retained: {got}"
    );
    let metrics = node.http_get("/metrics")?;
    ensure!(
        metrics.contains("manifold_mqtt_publish_received_total 1"),
        "{metrics}"
    );
    ensure!(
        metrics.contains("manifold_mqtt_connections_total 2"),
        "{metrics}"
    );
    Ok(())
}

/// A clean session that fell further behind than `--mqtt-lag-limit-ms` skips to the head of
/// the log: live subscribers never replay stale messages; the skip is counted.
#[test]
fn a_clean_session_past_its_lag_limit_skips_to_the_head() -> anyhow::Result<()> {
    use bytes::Bytes;
    use manifold_mqtt::codec::{Ack, Packet, Properties, Publish, QoS};
    let dir = tempfile::tempdir()?;
    let node = common::mqtt::node_with(dir.path(), &["--mqtt-lag-limit-ms", "300"])?;
    // A clean session taking one message at a time: holding one unacknowledged, it falls
    // behind while the others are published.
    let mut slow = Raw::windowed_subscriber(node.mqtt, "slow", "lag/#", 1)?;
    let (mut publisher, _) = Raw::connect(node.mqtt, "lag-pub")?;
    let mut publish = |id: u16, payload: &str| -> anyhow::Result<()> {
        publisher.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "lag/t".into(),
            packet_id: id,
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }))?;
        assert_eq!(publisher.next()?, Packet::PubAck(Ack::new(id)));
        Ok(())
    };
    for k in 1..=20 {
        publish(k, &format!("m{k}"))?;
    }
    let Packet::Publish(first) = slow.next()? else {
        anyhow::bail!("PUBLISH expected");
    };
    assert_eq!(&first.payload[..], b"m1");
    std::thread::sleep(Duration::from_millis(600));
    // Caught up again (its window reopens): the stale ones are passed over; what comes after
    // is delivered.
    slow.send(&Packet::PubAck(Ack::new(first.packet_id)))?;
    std::thread::sleep(Duration::from_millis(200));
    publish(21, "fresh")?;
    let Packet::Publish(next) = slow.next()? else {
        anyhow::bail!("PUBLISH expected");
    };
    assert_eq!(&next.payload[..], b"fresh");
    let metrics = node.http_get("/metrics")?;
    ensure!(
        metrics.contains("manifold_mqtt_lag_skips_total 1"),
        "{metrics}"
    );
    Ok(())
}

/// Keep alive at 1.5 times (MQTT 3.1.2.10): a client that sends PINGREQ in time stays, one that
/// goes quiet is told DISCONNECT 0x8D after 1.5 periods and closed.
#[test]
fn the_keep_alive_is_enforced_at_one_and_a_half_times() -> anyhow::Result<()> {
    use manifold_mqtt::codec::{Packet, Properties};
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let (mut pinging, _) =
        Raw::connect_keep_alive(node.mqtt, "pinging", None, Properties::default(), 1)?;
    let (mut quiet, _) =
        Raw::connect_keep_alive(node.mqtt, "quiet", None, Properties::default(), 1)?;
    for n in 1..=6 {
        std::thread::sleep(Duration::from_millis(500));
        pinging.send(&Packet::PingReq)?;
        assert_eq!(pinging.next()?, Packet::PingResp);
        if n == 2 {
            // 1 s: one period passed, not one and a half.
            let early = quiet.next_within(Duration::from_millis(1))?;
            ensure!(early.is_none(), "closed too soon: {early:?}");
        }
    }
    // 3 s: it went at 1.5 s.
    match quiet.next_within(Duration::from_millis(1))? {
        Some(Packet::Disconnect(d)) => assert_eq!(d.code, 0x8D),
        other => anyhow::bail!("DISCONNECT 0x8D expected: {other:?}"),
    }
    ensure!(quiet.next().is_err(), "then closed");
    // The one that pinged is still served after 3 s.
    pinging.send(&Packet::PingReq)?;
    assert_eq!(pinging.next()?, Packet::PingResp);
    Ok(())
}

/// `--mqtt-persistent-expiry-s` (Mosquitto's `persistent_client_expiration`): a 3.1.1
/// persistent session (Clean Session 0) is kept across a disconnect, and ends once it has been
/// away that long.
#[test]
fn a_persistent_311_session_expires_after_the_configured_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = common::mqtt::node_with(dir.path(), &["--mqtt-persistent-expiry-s", "1"])?;
    // CONNECT 3.1.1, Clean Session 0, client id "exp", then DISCONNECT.
    let visit = || {
        exchange(
            node.mqtt,
            b"\x10\x0F\x00\x04MQTT\x04\x00\x00\x3C\x00\x03exp\xE0\x00",
        )
    };
    assert_eq!(visit()?, b"\x20\x02\x00\x00", "a new session");
    assert_eq!(visit()?, b"\x20\x02\x01\x00", "kept: session present");
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(visit()?, b"\x20\x02\x00\x00", "expired after 1 s away");
    Ok(())
}

/// Python's paho-mqtt (2.x), both protocol versions: a persistent subscriber at QoS 2, QoS 0/1/2
/// publishes in order, a retained message for a later subscriber, and a reconnect that gets
/// what was published while away. Prints OK or what went wrong.
const PAHO_SCRIPT: &str = r#"
import sys, threading, time
import paho.mqtt.client as mqtt

port = int(sys.argv[1])
V2 = mqtt.CallbackAPIVersion.VERSION2

def client(cid, protocol, clean):
    if protocol == mqtt.MQTTv5:
        c = mqtt.Client(V2, client_id=cid, protocol=protocol)
        props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=clean, properties=props)
    else:
        c = mqtt.Client(V2, client_id=cid, protocol=protocol, clean_session=clean)
        c.connect("127.0.0.1", port)
    return c

def collect(c, want, topic):
    got, done, subscribed = [], threading.Event(), threading.Event()
    def on_message(_c, _u, m):
        got.append((m.topic, m.payload.decode(), m.qos, bool(m.retain)))
        if len(got) >= want:
            done.set()
    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.loop_start()
    c.subscribe(topic, qos=2)
    assert subscribed.wait(10), "no SUBACK"
    return got, done

for name, protocol in (("v311", mqtt.MQTTv311), ("v5", mqtt.MQTTv5)):
    sub = client("paho-sub-" + name, protocol, False)
    got, done = collect(sub, 3, name + "/#")
    pub = client("paho-pub-" + name, protocol, True)
    pub.loop_start()
    for qos in (0, 1, 2):
        pub.publish(name + "/q", "m%d" % qos, qos=qos).wait_for_publish(10)
    assert done.wait(10), "live: %r" % got
    assert [(t, p, q) for t, p, q, _ in got] == [(name + "/q", "m0", 0), (name + "/q", "m1", 1), (name + "/q", "m2", 2)], got
    # Away: what is published meanwhile comes on reconnect, once.
    sub.disconnect(); sub.loop_stop()
    pub.publish(name + "/away", "while-away", qos=1).wait_for_publish(10)
    pub.publish(name + "/kept", "retained", qos=1, retain=True).wait_for_publish(10)
    # The queued messages come once each; the SUBSCRIBE paho sends again on reconnect also
    # re-sends the retained message, flagged (MQTT 3.8.4), as Mosquitto does.
    sub = client("paho-sub-" + name, protocol, False)
    got, done = collect(sub, 3, name + "/#")
    assert done.wait(10), "after reconnect: %r" % got
    time.sleep(0.5)
    assert sorted((t, p, r) for t, p, _, r in got) == sorted([(name + "/away", "while-away", False), (name + "/kept", "retained", False), (name + "/kept", "retained", True)]), got
    sub.disconnect(); sub.loop_stop()
    # A new subscriber (QoS 2) gets the retained message, flagged, at the QoS it was
    # published with (1), acknowledged like any other.
    fresh = client("paho-fresh-" + name, protocol, True)
    got, done = collect(fresh, 1, name + "/kept")
    assert done.wait(10), "retained: %r" % got
    assert got[0][1:] == ("retained", 1, True), got
    fresh.disconnect(); fresh.loop_stop()
    pub.disconnect(); pub.loop_stop()
print("OK")
"#;

#[test]
fn python_paho_mqtt_in_both_versions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    common::run_python(PAHO_SCRIPT, &node.mqtt.to_string())
}
