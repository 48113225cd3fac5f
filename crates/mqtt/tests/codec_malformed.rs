//! Every malformed case the two specifications name, and those the abandoned `mqttbytes`
//! accepts or mis-frames: each is refused with the MQTT 5 reason code the broker closes with
//! (0x81 malformed, 0x82 protocol error, 0x95 too large, 0x84 unsupported version), and
//! nothing after it is framed.

use bytes::BytesMut;
use manifold_mqtt::codec::{DecodeError, Protocol, decode};

const V3: Option<Protocol> = Some(Protocol::V311);
const V5: Option<Protocol> = Some(Protocol::V5);

/// `(what, version, bytes, reason code)`.
fn cases() -> Vec<(&'static str, Option<Protocol>, Vec<u8>, u8)> {
    let connect = |flags: u8, level: u8, rest: &[u8]| {
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags, 0x00, 0x3C];
        if level == 5 {
            body.push(0x00); // no properties
        }
        body.extend_from_slice(rest);
        let mut p = vec![0x10, body.len() as u8];
        p.extend(body);
        p
    };
    vec![
        ("packet type 0", V3, vec![0x00, 0x00], 0x81),
        (
            "a remaining length of five bytes",
            V3,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            0x81,
        ),
        (
            "a remaining length not in its shortest form",
            V3,
            vec![0xC0, 0x80, 0x00],
            0x81,
        ),
        ("PINGREQ with flags", V3, vec![0xC1, 0x00], 0x81),
        ("PINGREQ with a body", V3, vec![0xC0, 0x01, 0x00], 0x81),
        (
            "SUBSCRIBE with flags 0",
            V3,
            vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            0x81,
        ),
        (
            "PUBREL with flags 0",
            V5,
            vec![0x60, 0x02, 0x00, 0x01],
            0x81,
        ),
        (
            "UNSUBSCRIBE with flags 0",
            V3,
            vec![0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
            0x81,
        ),
        ("PUBACK with flags", V3, vec![0x41, 0x02, 0x00, 0x01], 0x81),
        (
            "the first packet is not CONNECT",
            None,
            vec![0xC0, 0x00],
            0x82,
        ),
        (
            "CONNECT with flags in its fixed header",
            None,
            {
                let mut p = connect(0x02, 4, &[0x00, 0x01, b'c']);
                p[0] = 0x11;
                p
            },
            0x81,
        ),
        (
            "CONNECT with the reserved flag",
            None,
            connect(0x03, 4, &[0x00, 0x01, b'c']),
            0x81,
        ),
        (
            "CONNECT with Will QoS but no Will",
            None,
            connect(0x0A, 4, &[0x00, 0x01, b'c']),
            0x81,
        ),
        (
            "CONNECT with Will retain but no Will",
            None,
            connect(0x22, 4, &[0x00, 0x01, b'c']),
            0x81,
        ),
        (
            "CONNECT with Will QoS 3",
            None,
            connect(0x1E, 4, &[0x00, 0x01, b'c', 0x00, 0x01, b't', 0x00, 0x00]),
            0x81,
        ),
        (
            "3.1.1 CONNECT with a password and no user name",
            None,
            connect(0x42, 4, &[0x00, 0x01, b'c', 0x00, 0x01, b'p']),
            0x81,
        ),
        (
            "CONNECT with bytes after its last field",
            None,
            connect(0x02, 4, &[0x00, 0x01, b'c', 0xFF]),
            0x81,
        ),
        (
            "CONNECT cut inside its client id",
            None,
            connect(0x02, 4, &[0x00, 0x05, b'c']),
            0x81,
        ),
        (
            "CONNECT for MQTT 3.1 (MQIsdp)",
            None,
            {
                let body = [
                    0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C, 0x00,
                    0x01, b'c',
                ];
                let mut p = vec![0x10, body.len() as u8];
                p.extend(body);
                p
            },
            0x84,
        ),
        (
            "CONNECT for level 6",
            None,
            connect(0x02, 6, &[0x00, 0x01, b'c']),
            0x84,
        ),
        (
            "a client id that is not UTF-8",
            None,
            connect(0x02, 4, &[0x00, 0x02, 0xC3, 0x28]),
            0x81,
        ),
        (
            "a client id with U+0000",
            None,
            connect(0x02, 4, &[0x00, 0x02, b'a', 0x00]),
            0x81,
        ),
        (
            "a Will topic with a wildcard",
            None,
            connect(0x06, 4, &[0x00, 0x01, b'c', 0x00, 0x01, b'#', 0x00, 0x00]),
            0x82,
        ),
        (
            "PUBLISH QoS 3",
            V3,
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            0x81,
        ),
        (
            "PUBLISH QoS 0 with DUP",
            V3,
            vec![0x38, 0x03, 0x00, 0x01, b'a'],
            0x81,
        ),
        (
            "PUBLISH QoS 1 with packet id 0",
            V3,
            vec![0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
            0x81,
        ),
        (
            "PUBLISH to `#`",
            V3,
            vec![0x30, 0x03, 0x00, 0x01, b'#'],
            0x82,
        ),
        (
            "PUBLISH to `a/+`",
            V5,
            vec![0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00],
            0x82,
        ),
        (
            "3.1.1 PUBLISH to an empty topic",
            V3,
            vec![0x30, 0x02, 0x00, 0x00],
            0x82,
        ),
        (
            "5.0 PUBLISH to an empty topic without an alias",
            V5,
            vec![0x30, 0x03, 0x00, 0x00, 0x00],
            0x82,
        ),
        (
            "PUBLISH topic with U+0000",
            V3,
            vec![0x30, 0x04, 0x00, 0x02, b'a', 0x00],
            0x81,
        ),
        (
            "PUBLISH cut inside its topic",
            V3,
            vec![0x30, 0x03, 0x00, 0x05, b'a'],
            0x81,
        ),
        (
            "5.0 PUBLISH without its property length",
            V5,
            vec![0x30, 0x03, 0x00, 0x01, b'a'],
            0x81,
        ),
        (
            "a property outside its packet (Session Expiry in PUBLISH)",
            V5,
            vec![0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0, 0, 0, 1],
            0x82,
        ),
        (
            "an unknown property",
            V5,
            vec![0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x7F, 0x00],
            0x82,
        ),
        (
            "a repeated property",
            V5,
            vec![
                0x30, 0x0F, 0x00, 0x01, b'a', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2,
            ],
            0x82,
        ),
        (
            "a payload format indicator of 2",
            V5,
            vec![0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x01, 0x02],
            0x82,
        ),
        (
            "a topic alias of 0",
            V5,
            vec![0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00],
            0x82,
        ),
        (
            "a property list longer than the packet",
            V5,
            vec![0x30, 0x06, 0x00, 0x01, b'a', 0x09, 0x01, 0x00],
            0x81,
        ),
        (
            "SUBSCRIBE with packet id 0",
            V3,
            vec![0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
            0x81,
        ),
        (
            "SUBSCRIBE with no filters",
            V3,
            vec![0x82, 0x02, 0x00, 0x01],
            0x82,
        ),
        (
            "SUBSCRIBE asking QoS 3",
            V3,
            vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03],
            0x81,
        ),
        (
            "3.1.1 SUBSCRIBE with reserved option bits",
            V3,
            vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
            0x81,
        ),
        (
            "5.0 SUBSCRIBE with reserved option bits",
            V5,
            vec![0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40],
            0x81,
        ),
        (
            "5.0 SUBSCRIBE with Retain Handling 3",
            V5,
            vec![0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
            0x82,
        ),
        (
            "filter `a+/`",
            V3,
            vec![0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'+', b'/', 0x00],
            0x82,
        ),
        (
            "filter `a/#/b`",
            V3,
            vec![
                0x82, 0x0A, 0x00, 0x01, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x00,
            ],
            0x82,
        ),
        (
            "an empty filter",
            V3,
            vec![0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
            0x82,
        ),
        (
            "a filter with U+0000",
            V3,
            vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00],
            0x81,
        ),
        (
            "a shared subscription without a filter",
            V3,
            {
                let f = b"$share/g";
                let mut p = vec![
                    0x82,
                    (2 + 2 + f.len() + 1) as u8,
                    0x00,
                    0x01,
                    0x00,
                    f.len() as u8,
                ];
                p.extend_from_slice(f);
                p.push(0x00);
                p
            },
            0x82,
        ),
        (
            "No Local on a shared subscription",
            V5,
            {
                let f = b"$share/g/a";
                let mut p = vec![
                    0x82,
                    (2 + 1 + 2 + f.len() + 1) as u8,
                    0x00,
                    0x01,
                    0x00,
                    0x00,
                    f.len() as u8,
                ];
                p.extend_from_slice(f);
                p.push(0x04);
                p
            },
            0x82,
        ),
        (
            "two subscription identifiers",
            V5,
            vec![
                0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00,
            ],
            0x82,
        ),
        (
            "a subscription identifier of 0",
            V5,
            vec![
                0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x00,
            ],
            0x82,
        ),
        (
            "UNSUBSCRIBE with no filters",
            V3,
            vec![0xA2, 0x02, 0x00, 0x01],
            0x82,
        ),
        (
            "3.1.1 PUBACK with a reason code",
            V3,
            vec![0x40, 0x03, 0x00, 0x01, 0x00],
            0x81,
        ),
        (
            "PUBACK with packet id 0",
            V5,
            vec![0x40, 0x02, 0x00, 0x00],
            0x81,
        ),
        (
            "PUBACK cut inside its packet id",
            V5,
            vec![0x40, 0x01, 0x00],
            0x81,
        ),
        (
            "PUBREL with a PUBACK reason code",
            V5,
            vec![0x62, 0x03, 0x00, 0x01, 0x10],
            0x82,
        ),
        (
            "3.1.1 DISCONNECT with a body",
            V3,
            vec![0xE0, 0x01, 0x00],
            0x81,
        ),
        (
            "5.0 DISCONNECT with an undefined reason code",
            V5,
            vec![0xE0, 0x01, 0x05],
            0x82,
        ),
        (
            "a client's DISCONNECT carrying Receive Maximum",
            V5,
            vec![0xE0, 0x05, 0x00, 0x03, 0x21, 0x00, 0x01],
            0x82,
        ),
        ("AUTH in 3.1.1", V3, vec![0xF0, 0x00], 0x81),
        (
            "AUTH with an undefined reason code",
            V5,
            vec![0xF0, 0x02, 0x01, 0x00],
            0x82,
        ),
        (
            "CONNACK with reserved flags",
            V3,
            vec![0x20, 0x02, 0x02, 0x00],
            0x81,
        ),
        (
            "3.1.1 CONNACK code 6",
            V3,
            vec![0x20, 0x02, 0x00, 0x06],
            0x82,
        ),
        (
            "SUBACK with an undefined code",
            V3,
            vec![0x90, 0x03, 0x00, 0x01, 0x03],
            0x82,
        ),
        (
            "3.1.1 UNSUBACK with a code",
            V3,
            vec![0xB0, 0x03, 0x00, 0x01, 0x00],
            0x81,
        ),
    ]
}

#[test]
fn every_malformed_case_is_refused_with_its_reason_code() {
    for (what, protocol, bytes, code) in cases() {
        let mut buf = BytesMut::from(&bytes[..]);
        // A valid packet after it must never be reached.
        buf.extend_from_slice(&[0xC0, 0x00]);
        match decode(&mut buf, protocol, 1 << 20) {
            Err(e) => assert_eq!(e.reason_code(), code, "{what}: {e}"),
            Ok(p) => panic!("{what}: accepted as {p:?}"),
        }
    }
}

#[test]
fn the_desynchronising_cases_are_whole_packets() {
    // mqttbytes consumes `E0 01 8E` and then asks for more bytes; here it is one whole packet
    // and the PINGREQ after it is the next one.
    let mut buf = BytesMut::from(&b"\xE0\x01\x8E\xC0\x00"[..]);
    assert!(decode(&mut buf, V5, 1024).expect("valid").is_some());
    assert_eq!(&buf[..], b"\xC0\x00");
    assert!(decode(&mut buf, V5, 1024).expect("valid").is_some());
    // A packet cut inside its own remaining length is malformed, not "more bytes".
    let mut buf = BytesMut::from(&b"\x40\x01\x00\xC0\x00"[..]);
    assert!(matches!(
        decode(&mut buf, V5, 1024),
        Err(DecodeError::Malformed(_))
    ));
}
