//! The real broker with `rumqttc`, the Rust MQTT client, in both protocol versions: QoS levels
//! in order, a persistent session that gets what it missed across a broker SIGKILL (3.1.1), and
//! MQTT 5 properties carried through the log and a shared subscription split between two
//! members, each message once (5.0).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::mqtt::node;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Polls a 3.1.1 event loop until `n` PUBLISH packets came: `(topic, payload, qos)`.
async fn take_v4(
    events: &mut rumqttc::EventLoop,
    n: usize,
) -> anyhow::Result<Vec<(String, String, u8)>> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = timeout(Duration::from_secs(10), events.poll())
            .await
            .with_context(|| format!("after {got:?}"))??;
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
            got.push((
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos as u8,
            ));
        }
    }
    Ok(got)
}

/// Polls until the broker's SUBACK.
async fn subscribed_v4(events: &mut rumqttc::EventLoop) -> anyhow::Result<()> {
    loop {
        let event = timeout(Duration::from_secs(10), events.poll()).await??;
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = event {
            return Ok(());
        }
    }
}

/// Drives a publisher's event loop in the background; every PUBACK / PUBCOMP it gets is sent
/// on the returned channel.
fn drive_v4(mut events: rumqttc::EventLoop) -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(
                    rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_),
                )) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    rx
}

async fn acked(rx: &mut mpsc::UnboundedReceiver<()>, n: usize) -> anyhow::Result<()> {
    for _ in 0..n {
        timeout(Duration::from_secs(10), rx.recv())
            .await?
            .context("publisher gone")?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v311_qos_levels_in_order_and_a_persistent_session_across_a_sigkill()
-> anyhow::Result<()> {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let dir = tempfile::tempdir()?;
    let mut node = node(dir.path())?;
    let options = |id: &str, port: u16| {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(false);
        o
    };
    let (sub, mut sub_events) = AsyncClient::new(options("rq-sub", node.mqtt), 10);
    sub.subscribe("r/#", QoS::AtLeastOnce).await?;
    subscribed_v4(&mut sub_events).await?;
    let (publisher, pub_events) = AsyncClient::new(options("rq-pub", node.mqtt), 10);
    let mut acks = drive_v4(pub_events);
    for (qos, payload) in [
        (QoS::AtMostOnce, "m0"),
        (QoS::AtLeastOnce, "m1"),
        (QoS::ExactlyOnce, "m2"),
    ] {
        publisher.publish("r/a", qos, false, payload).await?;
    }
    // At min(published, granted) QoS, in publish order.
    assert_eq!(
        take_v4(&mut sub_events, 3).await?,
        [
            ("r/a".to_string(), "m0".to_string(), 0),
            ("r/a".to_string(), "m1".to_string(), 1),
            ("r/a".to_string(), "m2".to_string(), 1),
        ]
    );
    acked(&mut acks, 2).await?;
    // The subscriber goes away; what is published meanwhile waits in the log, through a
    // SIGKILL of the broker.
    drop(sub_events);
    drop(sub);
    for payload in ["away1", "away2"] {
        publisher
            .publish("r/b", QoS::AtLeastOnce, false, payload)
            .await?;
    }
    acked(&mut acks, 2).await?;
    node = tokio::task::block_in_place(|| node.kill_and_restart())?;
    let (_sub, mut sub_events) = AsyncClient::new(options("rq-sub", node.mqtt), 10);
    assert_eq!(
        take_v4(&mut sub_events, 2).await?,
        [
            ("r/b".to_string(), "away1".to_string(), 1),
            ("r/b".to_string(), "away2".to_string(), 1),
        ]
    );
    Ok(())
}

/// Polls a 5.0 event loop, sending each PUBLISH's `(topic, payload, properties)` on `tx`.
fn drive_v5(
    mut events: rumqttc::v5::EventLoop,
    tx: mpsc::UnboundedSender<(
        String,
        String,
        Option<rumqttc::v5::mqttbytes::v5::PublishProperties>,
    )>,
) {
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::v5::Packet;
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let payload = String::from_utf8_lossy(&p.payload).into_owned();
                    if tx.send((topic, payload, p.properties)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_properties_and_a_shared_subscription_split_between_members()
-> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::{AsyncClient, MqttOptions};
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let options = |id: &str| {
        let mut o = MqttOptions::new(id, "127.0.0.1", node.mqtt);
        o.set_keep_alive(Duration::from_secs(5));
        o
    };
    let (all_tx, mut all_rx) = mpsc::unbounded_channel();
    let (shared_tx, mut shared_rx) = mpsc::unbounded_channel();
    let (watcher, events) = AsyncClient::new(options("rq5-watch"), 10);
    watcher.subscribe("jobs", QoS::AtLeastOnce).await?;
    drive_v5(events, all_tx);
    let mut members = Vec::new();
    for id in ["rq5-m1", "rq5-m2"] {
        let (member, events) = AsyncClient::new(options(id), 10);
        member.subscribe("$share/w/jobs", QoS::AtLeastOnce).await?;
        drive_v5(events, shared_tx.clone());
        members.push(member);
    }
    // Let the SUBSCRIBEs land before the first message (a share starts at the group's `$`).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (publisher, events) = AsyncClient::new(options("rq5-pub"), 10);
    drive_v5(events, mpsc::unbounded_channel().0);
    let properties = PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..PublishProperties::default()
    };
    for n in 0..20 {
        publisher
            .publish_with_properties(
                "jobs",
                QoS::AtLeastOnce,
                false,
                format!("job{n}"),
                properties.clone(),
            )
            .await?;
    }
    // The plain subscriber gets every one, in order, with its properties.
    for n in 0..20 {
        let (topic, payload, props) = timeout(Duration::from_secs(10), all_rx.recv())
            .await?
            .context("watcher gone")?;
        assert_eq!((topic.as_str(), payload), ("jobs", format!("job{n}")));
        let props = props.context("properties")?;
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            props.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
    }
    // The two members share them: each message to one member.
    let mut seen = HashSet::new();
    while seen.len() < 20 {
        let (_, payload, _) = timeout(Duration::from_secs(10), shared_rx.recv())
            .await
            .with_context(|| format!("shared so far: {seen:?}"))?
            .context("members gone")?;
        ensure!(seen.insert(payload.clone()), "{payload} twice");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        shared_rx.try_recv().is_err(),
        "a message went to two members"
    );
    Ok(())
}
