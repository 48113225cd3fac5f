//! Differential tests against an independent codec, `mqttbytes` (a dev-dependency only): for
//! random valid packets of the kinds both understand, MQTT 3.1.1 encodes to the very bytes
//! mqttbytes writes and each side decodes the other's bytes to the same packet; for MQTT 5.0,
//! PUBLISH (with properties) and SUBSCRIBE (with options) decode both ways to the same packet
//! (the two write properties in different orders). Random bytes never panic the decoder, and
//! whatever it accepts encodes to bytes it decodes to the same packet again.

use bytes::{Bytes, BytesMut};
use manifold_mqtt::codec::{
    Ack, ConnAck, Connect, Packet, Properties, Protocol, Publish, QoS, SubAck, Subscribe,
    Subscription, UnsubAck, Unsubscribe, Will, decode, encode,
};
use mqttbytes::v4 as mb;
use mqttbytes::v5 as mb5;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const MAX: u32 = 1 << 20;

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn mb_qos(q: QoS) -> mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

fn topic() -> impl Strategy<Value = String> {
    "[a-zé0-9]{1,6}(/[a-z0-9$ ]{0,6}){0,3}"
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![Just("+".to_string()), "[a-z0-9]{0,5}"], 1..4),
        any::<bool>(),
    )
        .prop_map(|(levels, hash)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str(if f.is_empty() { "#" } else { "/#" });
            }
            if f.is_empty() { "#".into() } else { f }
        })
}

fn pid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic(),
        pid(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(qos, dup, retain, topic, id, payload)| Publish {
            dup: dup && qos != QoS::AtMostOnce,
            qos,
            retain,
            topic,
            packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
            properties: Properties::default(),
            payload: Bytes::from(payload),
        })
}

/// A 3.1.1 packet of any kind, with the mqttbytes packet it must equal.
fn v4_packet() -> impl Strategy<Value = (Packet, mb::Packet)> {
    let connect = (
        "[a-zA-Z0-9-]{0,23}",
        any::<u16>(),
        any::<bool>(),
        prop::option::of((
            topic(),
            prop::collection::vec(any::<u8>(), 0..40),
            qos(),
            any::<bool>(),
        )),
        prop::option::of(("[a-z]{1,8}", "[a-z0-9é]{1,8}")),
    )
        .prop_map(|(id, keep_alive, clean, will, login)| {
            let ours = Connect {
                protocol: Protocol::V311,
                clean_start: clean,
                keep_alive,
                client_id: id.clone(),
                will: will.clone().map(|(topic, payload, qos, retain)| Will {
                    topic,
                    payload: Bytes::from(payload),
                    qos,
                    retain,
                    properties: Properties::default(),
                }),
                username: login.clone().map(|l| l.0),
                password: login.clone().map(|l| Bytes::from(l.1.into_bytes())),
                properties: Properties::default(),
            };
            let mut theirs = mb::Connect::new(id);
            theirs.keep_alive = keep_alive;
            theirs.clean_session = clean;
            theirs.last_will = will.map(|(topic, payload, qos, retain)| {
                mb::LastWill::new(topic, payload, mb_qos(qos), retain)
            });
            theirs.login = login.map(|(u, p)| mb::Login::new(u, p));
            (Packet::Connect(Box::new(ours)), mb::Packet::Connect(theirs))
        });
    let connack = (any::<bool>(), 0u8..=5).prop_map(|(present, code)| {
        let present = present && code == 0;
        let theirs = match code {
            0 => mb::ConnectReturnCode::Success,
            1 => mb::ConnectReturnCode::RefusedProtocolVersion,
            2 => mb::ConnectReturnCode::BadClientId,
            3 => mb::ConnectReturnCode::ServiceUnavailable,
            4 => mb::ConnectReturnCode::BadUserNamePassword,
            _ => mb::ConnectReturnCode::NotAuthorized,
        };
        (
            Packet::ConnAck(ConnAck {
                session_present: present,
                code,
                properties: Properties::default(),
            }),
            mb::Packet::ConnAck(mb::ConnAck::new(theirs, present)),
        )
    });
    let publish = publish().prop_map(|p| {
        let mut theirs = mb::Publish::from_bytes(p.topic.clone(), mb_qos(p.qos), p.payload.clone());
        theirs.dup = p.dup;
        theirs.retain = p.retain;
        theirs.pkid = p.packet_id;
        (Packet::Publish(p), mb::Packet::Publish(theirs))
    });
    let acks = (0u8..4, pid()).prop_map(|(kind, id)| match kind {
        0 => (
            Packet::PubAck(Ack::new(id)),
            mb::Packet::PubAck(mb::PubAck::new(id)),
        ),
        1 => (
            Packet::PubRec(Ack::new(id)),
            mb::Packet::PubRec(mb::PubRec::new(id)),
        ),
        2 => (
            Packet::PubRel(Ack::new(id)),
            mb::Packet::PubRel(mb::PubRel::new(id)),
        ),
        _ => (
            Packet::PubComp(Ack::new(id)),
            mb::Packet::PubComp(mb::PubComp::new(id)),
        ),
    });
    let subscribe = (pid(), prop::collection::vec((filter(), qos()), 1..5)).prop_map(|(id, fs)| {
        let ours = Subscribe {
            packet_id: id,
            subscriptions: fs
                .iter()
                .map(|(f, q)| Subscription::new(f.clone(), *q))
                .collect(),
            properties: Properties::default(),
        };
        let theirs = mb::Subscribe {
            pkid: id,
            filters: fs
                .into_iter()
                .map(|(f, q)| mb::SubscribeFilter::new(f, mb_qos(q)))
                .collect(),
        };
        (Packet::Subscribe(ours), mb::Packet::Subscribe(theirs))
    });
    let suback = (
        pid(),
        prop::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)], 1..5),
    )
        .prop_map(|(id, codes)| {
            let theirs = codes
                .iter()
                .map(|c| match c {
                    0 => mb::SubscribeReasonCode::Success(mqttbytes::QoS::AtMostOnce),
                    1 => mb::SubscribeReasonCode::Success(mqttbytes::QoS::AtLeastOnce),
                    2 => mb::SubscribeReasonCode::Success(mqttbytes::QoS::ExactlyOnce),
                    _ => mb::SubscribeReasonCode::Failure,
                })
                .collect();
            (
                Packet::SubAck(SubAck {
                    packet_id: id,
                    codes,
                    properties: Properties::default(),
                }),
                mb::Packet::SubAck(mb::SubAck::new(id, theirs)),
            )
        });
    let unsubscribe = (pid(), prop::collection::vec(filter(), 1..4)).prop_map(|(id, fs)| {
        (
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                filters: fs.clone(),
                properties: Properties::default(),
            }),
            mb::Packet::Unsubscribe(mb::Unsubscribe {
                pkid: id,
                topics: fs,
            }),
        )
    });
    let unsuback = pid().prop_map(|id| {
        (
            Packet::UnsubAck(UnsubAck {
                packet_id: id,
                codes: Vec::new(),
                properties: Properties::default(),
            }),
            mb::Packet::UnsubAck(mb::UnsubAck::new(id)),
        )
    });
    let bare = prop_oneof![
        Just((Packet::PingReq, mb::Packet::PingReq)),
        Just((Packet::PingResp, mb::Packet::PingResp)),
        Just((
            Packet::Disconnect(Default::default()),
            mb::Packet::Disconnect
        )),
    ];
    prop_oneof![
        connect,
        connack,
        publish,
        acks,
        subscribe,
        suback,
        unsubscribe,
        unsuback,
        bare
    ]
}

/// mqttbytes' bytes for one of its packets.
fn mb_bytes(p: &mb::Packet) -> BytesMut {
    let mut out = BytesMut::new();
    let written = match p {
        mb::Packet::Connect(c) => c.write(&mut out),
        mb::Packet::ConnAck(c) => c.write(&mut out),
        mb::Packet::Publish(c) => c.write(&mut out),
        mb::Packet::PubAck(c) => c.write(&mut out),
        mb::Packet::PubRec(c) => c.write(&mut out),
        mb::Packet::PubRel(c) => c.write(&mut out),
        mb::Packet::PubComp(c) => c.write(&mut out),
        mb::Packet::Subscribe(c) => c.write(&mut out),
        mb::Packet::SubAck(c) => c.write(&mut out),
        mb::Packet::Unsubscribe(c) => c.write(&mut out),
        mb::Packet::UnsubAck(c) => c.write(&mut out),
        mb::Packet::PingReq => mb::PingReq.write(&mut out),
        mb::Packet::PingResp => mb::PingResp.write(&mut out),
        mb::Packet::Disconnect => mb::Disconnect.write(&mut out),
    };
    written.expect("mqttbytes writes it");
    out
}

fn ours(p: &Packet, protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, protocol, u32::MAX, &mut out).expect("we encode it");
    out
}

fn decoded(mut bytes: BytesMut, p: &Packet, protocol: Protocol) -> Option<Packet> {
    let version = match p {
        Packet::Connect(_) => None,
        _ => Some(protocol),
    };
    let got = decode(&mut bytes, version, MAX).expect("we decode it");
    assert!(bytes.is_empty(), "one packet, all taken");
    got
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn v311_packets_match_mqttbytes_byte_for_byte((p, theirs) in v4_packet()) {
        let mine = ours(&p, Protocol::V311);
        let their_bytes = mb_bytes(&theirs);
        prop_assert_eq!(&mine[..], &their_bytes[..]);
        let mut buf = mine.clone();
        prop_assert_eq!(mb::read(&mut buf, MAX as usize).expect("mqttbytes reads ours"), theirs);
        prop_assert_eq!(decoded(their_bytes, &p, Protocol::V311), Some(p));
    }

    #[test]
    fn v5_publish_and_subscribe_match_mqttbytes(
        p in publish(),
        expiry in prop::option::of(any::<u32>()),
        content in prop::option::of("[a-z/]{0,12}"),
        correlation in prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        user in prop::collection::vec(("[a-z]{0,4}", "[a-zé]{0,4}"), 0..3),
        id in 1u16..,
        subs in prop::collection::vec((filter(), qos(), any::<bool>(), any::<bool>(), 0u8..3), 1..4),
    ) {
        let mut mine = p;
        mine.properties = Properties {
            message_expiry: expiry,
            content_type: content.clone(),
            correlation_data: correlation.clone().map(Bytes::from),
            user: user.clone(),
            ..Properties::default()
        };
        let mut theirs = mb5::Publish::from_bytes(mine.topic.clone(), mb_qos(mine.qos), mine.payload.clone());
        theirs.dup = mine.dup;
        theirs.retain = mine.retain;
        theirs.pkid = mine.packet_id;
        theirs.properties = (!mine.properties.is_empty()).then(|| mb5::PublishProperties {
            payload_format_indicator: None,
            message_expiry_interval: expiry,
            topic_alias: None,
            response_topic: None,
            correlation_data: correlation.map(Bytes::from),
            user_properties: user,
            subscription_identifiers: Vec::new(),
            content_type: content,
        });
        let packet = Packet::Publish(mine);
        let mut buf = ours(&packet, Protocol::V5);
        prop_assert_eq!(mb5::read(&mut buf, MAX as usize).expect("mqttbytes reads ours"), mb5::Packet::Publish(theirs.clone()));
        let mut their_bytes = BytesMut::new();
        theirs.write(&mut their_bytes).expect("mqttbytes writes it");
        prop_assert_eq!(decoded(their_bytes, &packet, Protocol::V5), Some(packet));

        let sub = Subscribe {
            packet_id: id,
            subscriptions: subs
                .iter()
                .map(|(f, q, nl, rap, rh)| Subscription {
                    filter: f.clone(),
                    qos: *q,
                    no_local: *nl,
                    retain_as_published: *rap,
                    retain_handling: *rh,
                })
                .collect(),
            properties: Properties::default(),
        };
        let theirs = mb5::Subscribe {
            pkid: id,
            filters: subs
                .into_iter()
                .map(|(f, q, nl, rap, rh)| mb5::SubscribeFilter {
                    path: f,
                    qos: mb_qos(q),
                    nolocal: nl,
                    preserve_retain: rap,
                    retain_forward_rule: match rh {
                        0 => mb5::RetainForwardRule::OnEverySubscribe,
                        1 => mb5::RetainForwardRule::OnNewSubscribe,
                        _ => mb5::RetainForwardRule::Never,
                    },
                })
                .collect(),
            properties: None,
        };
        let packet = Packet::Subscribe(sub);
        let mut buf = ours(&packet, Protocol::V5);
        prop_assert_eq!(mb5::read(&mut buf, MAX as usize).expect("mqttbytes reads ours"), mb5::Packet::Subscribe(theirs.clone()));
        let mut their_bytes = BytesMut::new();
        theirs.write(&mut their_bytes).expect("mqttbytes writes it");
        prop_assert_eq!(decoded(their_bytes, &packet, Protocol::V5), Some(packet));
    }

    #[test]
    fn random_bytes_never_panic_and_what_is_accepted_re_encodes(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        v5 in any::<bool>(),
        connected in any::<bool>(),
    ) {
        let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
        let mut buf = BytesMut::from(&bytes[..]);
        let version = connected.then_some(protocol);
        if let Ok(Some(p)) = decode(&mut buf, version, MAX) {
            let protocol = match &p {
                Packet::Connect(c) => c.protocol,
                _ => protocol,
            };
            let mut again = BytesMut::new();
            encode(&p, protocol, u32::MAX, &mut again).expect("what we accept we can encode");
            let version = match &p {
                Packet::Connect(_) => None,
                _ => Some(protocol),
            };
            prop_assert_eq!(decode(&mut again, version, MAX).expect("and decode again"), Some(p));
        }
    }
}

#[test]
fn random_packets_built_from_valid_headers_never_panic() {
    // Random bodies behind every fixed header: the fuzz target's inputs, on stable Rust.
    let mut rng = proptest::test_runner::TestRunner::deterministic();
    for first in 0u8..=255 {
        for _ in 0..64 {
            let body = prop::collection::vec(any::<u8>(), 0..40)
                .new_tree(&mut rng)
                .expect("tree")
                .current();
            let mut bytes = vec![first, body.len() as u8];
            bytes.extend(body);
            for version in [None, Some(Protocol::V311), Some(Protocol::V5)] {
                let mut buf = BytesMut::from(&bytes[..]);
                let _ = decode(&mut buf, version, MAX);
            }
        }
    }
}
