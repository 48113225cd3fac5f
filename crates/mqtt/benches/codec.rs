//! The MQTT codec against `mqttbytes` on the same bytes, in one run: decoding a stream of
//! 1,000 PUBLISH packets (QoS 1, a 30-byte topic, 64-byte payload) from one buffer, and
//! encoding them, in 3.1.1 and (with a content type and a user property) in 5.0. Ours checks
//! more (UTF-8, topic rules, properties) and still must not cost a front end its throughput.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use manifold_mqtt::codec::{Packet, Properties, Protocol, Publish, QoS, decode, encode};

const PACKETS: usize = 1000;
const TOPIC: &str = "sensors/device-000123/temperatu";
const MAX: u32 = 1 << 20;

fn ours(protocol: Protocol) -> Packet {
    let properties = match protocol {
        Protocol::V311 => Properties::default(),
        Protocol::V5 => Properties {
            content_type: Some("application/json".into()),
            user: vec![("site".into(), "north".into())],
            ..Properties::default()
        },
    };
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TOPIC.into(),
        packet_id: 7,
        properties,
        payload: Bytes::from(vec![b'x'; 64]),
    })
}

fn stream(protocol: Protocol) -> BytesMut {
    let p = ours(protocol);
    let mut out = BytesMut::new();
    for _ in 0..PACKETS {
        encode(&p, protocol, u32::MAX, &mut out).expect("encodable");
    }
    out
}

fn decode_ours(input: &[u8], protocol: Protocol) -> usize {
    let mut buf = BytesMut::from(input);
    let mut n = 0;
    while let Some(p) = decode(&mut buf, Some(protocol), MAX).expect("valid") {
        n += usize::from(matches!(p, Packet::Publish(_)));
    }
    n
}

fn decode_v4(input: &[u8]) -> usize {
    let mut buf = BytesMut::from(input);
    let mut n = 0;
    while !buf.is_empty() {
        let p = mqttbytes::v4::read(&mut buf, MAX as usize).expect("valid");
        n += usize::from(matches!(p, mqttbytes::v4::Packet::Publish(_)));
    }
    n
}

fn decode_v5(input: &[u8]) -> usize {
    let mut buf = BytesMut::from(input);
    let mut n = 0;
    while !buf.is_empty() {
        let p = mqttbytes::v5::read(&mut buf, MAX as usize).expect("valid");
        n += usize::from(matches!(p, mqttbytes::v5::Packet::Publish(_)));
    }
    n
}

fn codec(c: &mut Criterion) {
    let v4 = stream(Protocol::V311);
    let v5 = stream(Protocol::V5);
    assert_eq!(decode_ours(&v4, Protocol::V311), PACKETS);
    assert_eq!(decode_v4(&v4), PACKETS);
    assert_eq!(decode_ours(&v5, Protocol::V5), PACKETS);
    assert_eq!(decode_v5(&v5), PACKETS);

    let mut mb4 = mqttbytes::v4::Publish::new(TOPIC, mqttbytes::QoS::AtLeastOnce, vec![b'x'; 64]);
    mb4.pkid = 7;
    let mut mb5 = mqttbytes::v5::Publish::new(TOPIC, mqttbytes::QoS::AtLeastOnce, vec![b'x'; 64]);
    mb5.pkid = 7;
    mb5.properties = Some(mqttbytes::v5::PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![("site".into(), "north".into())],
        subscription_identifiers: Vec::new(),
        content_type: Some("application/json".into()),
    });
    let (p4, p5) = (ours(Protocol::V311), ours(Protocol::V5));

    let mut g = c.benchmark_group("mqtt");
    g.throughput(Throughput::Elements(PACKETS as u64));
    g.bench_function("decode_publish_v311/ours", |b| {
        b.iter(|| black_box(decode_ours(black_box(&v4), Protocol::V311)))
    });
    g.bench_function("decode_publish_v311/mqttbytes", |b| {
        b.iter(|| black_box(decode_v4(black_box(&v4))))
    });
    g.bench_function("decode_publish_v5/ours", |b| {
        b.iter(|| black_box(decode_ours(black_box(&v5), Protocol::V5)))
    });
    g.bench_function("decode_publish_v5/mqttbytes", |b| {
        b.iter(|| black_box(decode_v5(black_box(&v5))))
    });
    g.bench_function("encode_publish_v311/ours", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(v4.len());
            for _ in 0..PACKETS {
                encode(black_box(&p4), Protocol::V311, u32::MAX, &mut out).expect("encodable");
            }
            black_box(out.len())
        })
    });
    g.bench_function("encode_publish_v311/mqttbytes", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(v4.len());
            for _ in 0..PACKETS {
                black_box(&mb4).write(&mut out).expect("encodable");
            }
            black_box(out.len())
        })
    });
    g.bench_function("encode_publish_v5/ours", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(v5.len());
            for _ in 0..PACKETS {
                encode(black_box(&p5), Protocol::V5, u32::MAX, &mut out).expect("encodable");
            }
            black_box(out.len())
        })
    });
    g.bench_function("encode_publish_v5/mqttbytes", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(v5.len());
            for _ in 0..PACKETS {
                black_box(&mb5).write(&mut out).expect("encodable");
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
