//! MQTT QoS 2 exactly once, with the real broker SIGKILLed at every step of the flow in both
//! directions: a publisher's message is stored once whatever it has to send again after the
//! restart, and a subscriber that follows the protocol (a packet id seen and not yet released
//! is a duplicate) takes each message once. Also the Receive Maximum (DISCONNECT 0x93) and a
//! packet id that carries a new message once its exchange is over.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::ensure;
use bytes::Bytes;
use common::mqtt::{Node, Raw, node};
use manifold_mqtt::codec::{Ack, Packet, Properties, Publish, QoS, Subscribe, Subscription};

fn publish(topic: &str, packet_id: u16, dup: bool, payload: &str) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    })
}

/// Where the broker dies, from the publisher's side: after ...
#[derive(Debug, Clone, Copy)]
enum Inbound {
    /// PUBLISH written, PUBREC not waited for.
    Publish,
    /// PUBREC received, PUBREL not sent.
    PubRec,
    /// PUBREL written, PUBCOMP not waited for.
    PubRel,
}

#[test]
fn an_inbound_qos2_message_is_stored_once_whichever_step_the_broker_dies_at() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut node = node(dir.path())?;
    for (n, step) in [Inbound::Publish, Inbound::PubRec, Inbound::PubRel]
        .into_iter()
        .enumerate()
    {
        let topic = format!("in/{n}");
        let (mut client, _) = Raw::connect(node.mqtt, "q2-in")?;
        client.send(&publish(&topic, 7, false, "once"))?;
        match step {
            Inbound::Publish => {}
            Inbound::PubRec => assert_eq!(client.next()?, Packet::PubRec(Ack::new(7))),
            Inbound::PubRel => {
                assert_eq!(client.next()?, Packet::PubRec(Ack::new(7)));
                client.send(&Packet::PubRel(Ack::new(7)))?;
            }
        }
        node = node.kill_and_restart()?;
        let (mut client, present) = Raw::connect(node.mqtt, "q2-in")?;
        ensure!(present, "{step:?}: the session survives");
        match step {
            // The client cannot know whether the message was stored: it sends it again.
            Inbound::Publish | Inbound::PubRec => {
                client.send(&publish(&topic, 7, true, "once"))?;
                assert_eq!(client.next()?, Packet::PubRec(Ack::new(7)), "{step:?}");
                client.send(&Packet::PubRel(Ack::new(7)))?;
                assert_eq!(client.next()?, Packet::PubComp(Ack::new(7)), "{step:?}");
            }
            // PUBREL again: the release may have been committed (0x92, not found) or not.
            Inbound::PubRel => {
                client.send(&Packet::PubRel(Ack::new(7)))?;
                match client.next()? {
                    Packet::PubComp(a) => {
                        ensure!(a.packet_id == 7 && matches!(a.code, 0 | 0x92), "{a:?}")
                    }
                    other => anyhow::bail!("PUBCOMP expected: {other:?}"),
                }
            }
        }
        assert_eq!(node.resp(&["XLEN", &topic])?, ":1", "{step:?}");
        // The exchange is over: packet id 7 carries a new message.
        client.send(&publish(&topic, 7, false, "next"))?;
        assert_eq!(client.next()?, Packet::PubRec(Ack::new(7)));
        client.send(&Packet::PubRel(Ack::new(7)))?;
        assert_eq!(client.next()?, Packet::PubComp(Ack::new(7)));
        assert_eq!(node.resp(&["XLEN", &topic])?, ":2", "{step:?}");
        client.send(&Packet::Disconnect(Default::default()))?;
    }
    Ok(())
}

/// A subscriber that follows the protocol: a PUBLISH whose packet id it holds (received, not
/// yet released) is not a new message.
struct Receiver {
    raw: Raw,
    held: HashSet<u16>,
    taken: HashMap<String, usize>,
}

impl Receiver {
    fn connect(node: &Node) -> anyhow::Result<Receiver> {
        let (raw, _) = Raw::connect(node.mqtt, "q2-out")?;
        Ok(Receiver {
            raw,
            held: HashSet::new(),
            taken: HashMap::new(),
        })
    }

    /// Takes a PUBLISH: counts it if new; answers PUBREC if `answer`.
    fn take(&mut self, p: &Publish, answer: bool) -> anyhow::Result<()> {
        if self.held.insert(p.packet_id) {
            *self
                .taken
                .entry(String::from_utf8_lossy(&p.payload).into_owned())
                .or_default() += 1;
        }
        if answer {
            self.raw.send(&Packet::PubRec(Ack::new(p.packet_id)))?;
        }
        Ok(())
    }

    /// Answers whatever the broker sends until it has been quiet for a while.
    fn settle(&mut self) -> anyhow::Result<()> {
        while let Some(p) = self.raw.next_within(Duration::from_millis(700))? {
            match p {
                Packet::Publish(p) => self.take(&p, true)?,
                Packet::PubRel(a) => {
                    self.held.remove(&a.packet_id);
                    self.raw.send(&Packet::PubComp(Ack::new(a.packet_id)))?;
                }
                other => anyhow::bail!("unexpected {other:?}"),
            }
        }
        Ok(())
    }
}

/// Where the broker dies, from the subscriber's side: after ...
#[derive(Debug, Clone, Copy)]
enum Outbound {
    /// PUBLISH received, PUBREC not sent.
    Publish,
    /// PUBREC written, PUBREL not waited for.
    PubRec,
    /// PUBREL received, PUBCOMP written.
    PubComp,
}

#[test]
fn an_outbound_qos2_message_is_taken_once_whichever_step_the_broker_dies_at() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut node = node(dir.path())?;
    let mut receiver = Receiver::connect(&node)?;
    receiver.raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        subscriptions: vec![Subscription::new("out/#", QoS::ExactlyOnce)],
        properties: Properties::default(),
    }))?;
    ensure!(matches!(receiver.raw.next()?, Packet::SubAck(_)));
    let steps = [Outbound::Publish, Outbound::PubRec, Outbound::PubComp];
    for (n, step) in steps.into_iter().enumerate() {
        let payload = format!("m{n}");
        let (mut publisher, _) = Raw::connect(node.mqtt, "q2-pub")?;
        publisher.send(&publish(&format!("out/{n}"), 1, false, &payload))?;
        assert_eq!(publisher.next()?, Packet::PubRec(Ack::new(1)));
        publisher.send(&Packet::PubRel(Ack::new(1)))?;
        assert_eq!(publisher.next()?, Packet::PubComp(Ack::new(1)));
        let Packet::Publish(p) = receiver.raw.next()? else {
            anyhow::bail!("{step:?}: PUBLISH expected");
        };
        match step {
            Outbound::Publish => receiver.take(&p, false)?,
            Outbound::PubRec => receiver.take(&p, true)?,
            Outbound::PubComp => {
                receiver.take(&p, true)?;
                assert_eq!(receiver.raw.next()?, Packet::PubRel(Ack::new(p.packet_id)));
                receiver.held.remove(&p.packet_id);
                receiver.raw.send(&Packet::PubComp(Ack::new(p.packet_id)))?;
            }
        }
        node = node.kill_and_restart()?;
        let held = std::mem::take(&mut receiver.held);
        let taken = std::mem::take(&mut receiver.taken);
        receiver = Receiver::connect(&node)?;
        receiver.held = held;
        receiver.taken = taken;
        receiver.settle()?;
        ensure!(
            receiver.held.is_empty(),
            "{step:?}: every exchange ended: {:?}",
            receiver.held
        );
    }
    let want: HashMap<String, usize> = (0..3).map(|n| (format!("m{n}"), 1)).collect();
    assert_eq!(receiver.taken, want, "each message once");
    Ok(())
}

#[test]
fn more_unreleased_qos2_messages_than_the_receive_maximum_is_disconnect_0x93() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let (mut client, _) = Raw::connect(node.mqtt, "greedy")?;
    // The broker's Receive Maximum is 100: 100 exchanges may wait for PUBREL.
    for id in 1..=100u16 {
        client.send(&publish("greedy", id, false, "x"))?;
        assert_eq!(client.next()?, Packet::PubRec(Ack::new(id)));
    }
    // A resend of one of them is not a new exchange.
    client.send(&publish("greedy", 50, true, "x"))?;
    assert_eq!(client.next()?, Packet::PubRec(Ack::new(50)));
    client.send(&publish("greedy", 101, false, "x"))?;
    match client.next()? {
        Packet::Disconnect(d) => assert_eq!(d.code, 0x93),
        other => anyhow::bail!("DISCONNECT 0x93 expected: {other:?}"),
    }
    assert_eq!(node.resp(&["XLEN", "greedy"])?, ":100");
    Ok(())
}
