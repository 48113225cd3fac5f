//! Every packet of both MQTT versions encodes and decodes back to itself, whole or fed one
//! byte at a time; the encoder refuses what the wire cannot carry instead of writing it.

use bytes::{Bytes, BytesMut};
use manifold_mqtt::codec::{
    Ack, Auth, ConnAck, Connect, DecodeError, Disconnect, EncodeError, Packet, Properties,
    Protocol, Publish, QoS, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe, Will, decode,
    encode,
};

const MAX: u32 = 1 << 20;

fn user() -> Vec<(String, String)> {
    vec![
        ("k".into(), "v".into()),
        ("k".into(), "second".into()),
        ("é".into(), "".into()),
    ]
}

/// Every packet this version has, each with every field it can carry set.
fn packets(protocol: Protocol) -> Vec<Packet> {
    let v5 = protocol == Protocol::V5;
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    let mut out = vec![
        Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: "device-1".into(),
            will: Some(Will {
                topic: "dev/1/status".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: props(Properties {
                    will_delay: Some(5),
                    payload_format: Some(1),
                    message_expiry: Some(60),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("r/1".into()),
                    correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                    user: user(),
                    ..Properties::default()
                }),
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"\xffsecret")),
            properties: props(Properties {
                session_expiry: Some(3600),
                receive_maximum: Some(20),
                maximum_packet_size: Some(65536),
                topic_alias_maximum: Some(10),
                request_response_info: Some(1),
                request_problem_info: Some(0),
                auth_method: Some("SCRAM".into()),
                auth_data: Some(Bytes::from_static(b"abc")),
                user: user(),
                ..Properties::default()
            }),
        })),
        Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: false,
            keep_alive: 0,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: props(Properties {
                session_expiry: Some(0),
                receive_maximum: Some(100),
                maximum_qos: Some(1),
                retain_available: Some(1),
                maximum_packet_size: Some(1 << 20),
                assigned_client_id: Some("auto-1".into()),
                topic_alias_maximum: Some(5),
                reason_string: Some("welcome".into()),
                wildcard_available: Some(1),
                subscription_ids_available: Some(1),
                shared_available: Some(1),
                server_keep_alive: Some(30),
                response_info: Some("resp/".into()),
                server_reference: Some("other:1883".into()),
                auth_method: Some("SCRAM".into()),
                auth_data: Some(Bytes::from_static(b"x")),
                user: user(),
                ..Properties::default()
            }),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: if v5 { 0x86 } else { 4 },
            properties: Properties::default(),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::new(),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "sensors/é/temp".into(),
            packet_id: 65535,
            properties: props(Properties {
                payload_format: Some(0),
                message_expiry: Some(10),
                topic_alias: Some(3),
                response_topic: Some("reply/to".into()),
                correlation_data: Some(Bytes::from_static(b"id")),
                subscription_ids: vec![1, 268_435_455],
                content_type: Some("application/json".into()),
                user: user(),
                ..Properties::default()
            }),
            payload: Bytes::from(vec![0u8; 70_000]),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Subscribe(Subscribe {
            packet_id: 7,
            subscriptions: vec![
                Subscription::new("a/+/c", QoS::AtMostOnce),
                Subscription {
                    filter: "#".into(),
                    qos: QoS::ExactlyOnce,
                    no_local: v5,
                    retain_as_published: v5,
                    retain_handling: if v5 { 2 } else { 0 },
                },
                Subscription::new("$share/g/x/#", QoS::AtLeastOnce),
            ],
            properties: props(Properties {
                subscription_ids: vec![42],
                user: user(),
                ..Properties::default()
            }),
        }),
        Packet::SubAck(SubAck {
            packet_id: 7,
            codes: if v5 {
                vec![0, 2, 0x87, 0x9E]
            } else {
                vec![0, 1, 2, 0x80]
            },
            properties: props(Properties {
                reason_string: Some("partly".into()),
                ..Properties::default()
            }),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 9,
            filters: vec!["a/+/c".into(), "$share/g/x/#".into()],
            properties: props(Properties {
                user: user(),
                ..Properties::default()
            }),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 9,
            codes: if v5 { vec![0, 0x11] } else { vec![] },
            properties: props(Properties {
                reason_string: Some("done".into()),
                ..Properties::default()
            }),
        }),
        Packet::Disconnect(Disconnect::default()),
    ];
    for (i, kind) in [0u8, 1, 2, 3].into_iter().enumerate() {
        let plain = Ack::new(100 + i as u16);
        let rich = Ack {
            packet_id: 200 + i as u16,
            code: match kind {
                0 | 1 => 0x10,
                _ => 0x92,
            },
            properties: Properties {
                reason_string: Some("why".into()),
                user: user(),
                ..Properties::default()
            },
        };
        // 5.0's three forms: no reason code, a reason code alone, both with properties.
        let alone = Ack {
            packet_id: 300 + i as u16,
            code: rich.code,
            properties: Properties::default(),
        };
        let wrap = |a: Ack| match kind {
            0 => Packet::PubAck(a),
            1 => Packet::PubRec(a),
            2 => Packet::PubRel(a),
            _ => Packet::PubComp(a),
        };
        out.push(wrap(plain));
        if v5 {
            out.push(wrap(rich));
            out.push(wrap(alone));
        }
    }
    if v5 {
        out.push(Packet::Disconnect(Disconnect {
            code: 0x8E,
            properties: Properties::default(),
        }));
        out.push(Packet::Disconnect(Disconnect {
            code: 0x04,
            properties: Properties {
                session_expiry: Some(0),
                reason_string: Some("bye".into()),
                server_reference: Some("b:1883".into()),
                user: user(),
                ..Properties::default()
            },
        }));
        out.push(Packet::Auth(Auth::default()));
        out.push(Packet::Auth(Auth {
            code: 0x18,
            properties: Properties {
                auth_method: Some("SCRAM".into()),
                auth_data: Some(Bytes::from_static(b"challenge")),
                reason_string: Some("more".into()),
                user: user(),
                ..Properties::default()
            },
        }));
        // An empty topic stands for an alias.
        out.push(Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: String::new(),
            packet_id: 1,
            properties: Properties {
                topic_alias: Some(3),
                ..Properties::default()
            },
            payload: Bytes::from_static(b"x"),
        }));
    }
    out
}

fn bytes_of(p: &Packet, protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, protocol, u32::MAX, &mut out).expect("encodable");
    out
}

/// The connection's version, as the decoder is told after CONNECT.
fn after_connect(p: &Packet, protocol: Protocol) -> Option<Protocol> {
    match p {
        Packet::Connect(_) => None,
        _ => Some(protocol),
    }
}

#[test]
fn every_packet_of_both_versions_round_trips() {
    for protocol in [Protocol::V311, Protocol::V5] {
        for p in packets(protocol) {
            let mut buf = bytes_of(&p, protocol);
            let len = buf.len();
            // A following packet stays in the buffer.
            buf.extend_from_slice(&[0xC0, 0x00]);
            let got = decode(&mut buf, after_connect(&p, protocol), MAX)
                .unwrap_or_else(|e| panic!("{protocol:?} {p:?}: {e}"));
            assert_eq!(got.as_ref(), Some(&p), "{protocol:?}");
            assert_eq!(&buf[..], &[0xC0, 0x00], "{protocol:?}: {len} bytes taken");
        }
    }
}

#[test]
fn a_packet_fed_one_byte_at_a_time_is_decoded_once_whole() {
    for protocol in [Protocol::V311, Protocol::V5] {
        for p in packets(protocol) {
            let all = bytes_of(&p, protocol);
            let mut buf = BytesMut::new();
            for (i, b) in all.iter().enumerate() {
                buf.extend_from_slice(&[*b]);
                let got = decode(&mut buf, after_connect(&p, protocol), MAX).expect("valid");
                if i + 1 < all.len() {
                    assert_eq!(
                        got,
                        None,
                        "{protocol:?} {p:?} decoded after {} bytes",
                        i + 1
                    );
                    assert_eq!(buf.len(), i + 1, "nothing taken before the packet is whole");
                } else {
                    assert_eq!(got.as_ref(), Some(&p));
                    assert!(buf.is_empty());
                }
            }
        }
    }
}

#[test]
fn known_wire_bytes() {
    // PINGREQ, a 3.1.1 PUBACK, mosquitto's DISCONNECT, and a CONNECT as mosquitto_sub sends it.
    assert_eq!(&bytes_of(&Packet::PingReq, Protocol::V311)[..], b"\xC0\x00");
    assert_eq!(
        &bytes_of(&Packet::PubAck(Ack::new(10)), Protocol::V311)[..],
        b"\x40\x02\x00\x0A"
    );
    assert_eq!(
        &bytes_of(&Packet::Disconnect(Disconnect::default()), Protocol::V5)[..],
        b"\xE0\x00"
    );
    let connect = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    assert_eq!(
        &bytes_of(&connect, Protocol::V311)[..],
        b"\x10\x0D\x00\x04MQTT\x04\x02\x00\x3C\x00\x01c"
    );
    // 5.0 DISCONNECT with a reason code and no property length (remaining length 1).
    let mut buf = BytesMut::from(&b"\xE0\x01\x8E"[..]);
    let got = decode(&mut buf, Some(Protocol::V5), MAX).expect("valid");
    assert_eq!(
        got,
        Some(Packet::Disconnect(Disconnect {
            code: 0x8E,
            properties: Properties::default()
        }))
    );
    // AUTH with nothing after it: success.
    let mut buf = BytesMut::from(&b"\xF0\x00"[..]);
    assert_eq!(
        decode(&mut buf, Some(Protocol::V5), MAX),
        Ok(Some(Packet::Auth(Auth::default())))
    );
}

#[test]
fn the_encoder_refuses_what_the_wire_cannot_carry() {
    let publish = |topic: &str, qos: QoS, packet_id: u16| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::new(),
        })
    };
    let refused = |p: &Packet, protocol: Protocol, max: u32| {
        let mut out = BytesMut::from(&b"keep"[..]);
        let r = encode(p, protocol, max, &mut out);
        assert_eq!(&out[..], b"keep", "nothing written on {r:?}");
        r.expect_err("refused")
    };
    let long = "x".repeat(65_536);
    // A topic that long is not a topic name; a property string that long cannot be written.
    assert!(matches!(
        refused(&publish(&long, QoS::AtMostOnce, 0), Protocol::V5, u32::MAX),
        EncodeError::Invalid(_)
    ));
    let mut long_property = match publish("a", QoS::AtMostOnce, 0) {
        Packet::Publish(p) => p,
        _ => unreachable!(),
    };
    long_property.properties.user = vec![("k".into(), long.clone())];
    assert_eq!(
        refused(&Packet::Publish(long_property), Protocol::V5, u32::MAX),
        EncodeError::FieldTooLong("a user property")
    );
    assert!(matches!(
        refused(&publish("a/+", QoS::AtMostOnce, 0), Protocol::V5, u32::MAX),
        EncodeError::Invalid(_)
    ));
    assert!(matches!(
        refused(&publish("a", QoS::AtLeastOnce, 0), Protocol::V5, u32::MAX),
        EncodeError::Invalid(_)
    ));
    assert_eq!(
        refused(&publish("a", QoS::AtMostOnce, 0), Protocol::V5, 4),
        EncodeError::TooLarge { size: 6, max: 4 }
    );
    // 5.0 only: AUTH, properties, reason codes; and properties outside their packet.
    assert!(matches!(
        refused(&Packet::Auth(Auth::default()), Protocol::V311, u32::MAX),
        EncodeError::Invalid(_)
    ));
    let mut with_props = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a".into(),
        packet_id: 0,
        properties: Properties {
            message_expiry: Some(1),
            ..Properties::default()
        },
        payload: Bytes::new(),
    };
    assert!(matches!(
        refused(
            &Packet::Publish(with_props.clone()),
            Protocol::V311,
            u32::MAX
        ),
        EncodeError::Invalid(_)
    ));
    with_props.properties = Properties {
        session_expiry: Some(1),
        ..Properties::default()
    };
    assert!(matches!(
        refused(&Packet::Publish(with_props), Protocol::V5, u32::MAX),
        EncodeError::Invalid(_)
    ));
    let ack = Ack {
        packet_id: 1,
        code: 0x10,
        properties: Properties::default(),
    };
    assert!(matches!(
        refused(&Packet::PubAck(ack), Protocol::V311, u32::MAX),
        EncodeError::Invalid(_)
    ));
    assert!(matches!(
        refused(
            &Packet::Subscribe(Subscribe {
                packet_id: 1,
                subscriptions: vec![Subscription::new("a+/", QoS::AtMostOnce)],
                properties: Properties::default()
            }),
            Protocol::V311,
            u32::MAX
        ),
        EncodeError::Invalid(_)
    ));
}

#[test]
fn a_packet_over_the_limit_is_refused_from_its_header() {
    // A PUBLISH announcing 1 MiB + 1 of body: refused with only its fixed header buffered.
    let mut buf = BytesMut::from(&b"\x30\x81\x80\x40"[..]);
    let e = decode(&mut buf, Some(Protocol::V5), MAX).expect_err("too large");
    assert_eq!(
        e,
        DecodeError::TooLarge {
            size: 1_048_581,
            max: MAX
        }
    );
    assert_eq!(e.reason_code(), 0x95);
}
