//! The MQTT codec on arbitrary bytes: the first byte picks the connection's state (before
//! CONNECT, 3.1.1, 5.0); the rest is a stream of packets, decoded until it ends or is refused.
//! Never a panic; every packet accepted encodes to bytes that decode to the same packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use manifold_mqtt::codec::{Packet, Protocol, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut version = match mode % 3 {
        0 => None,
        1 => Some(Protocol::V311),
        _ => Some(Protocol::V5),
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(p)) = decode(&mut buf, version, 1 << 16) {
        let protocol = match &p {
            Packet::Connect(c) => c.protocol,
            _ => version.unwrap_or(Protocol::V5),
        };
        let mut again = BytesMut::new();
        encode(&p, protocol, u32::MAX, &mut again).expect("an accepted packet encodes");
        let before = match &p {
            Packet::Connect(_) => None,
            _ => Some(protocol),
        };
        let back = decode(&mut again, before, u32::MAX).expect("and decodes again");
        assert_eq!(back.as_ref(), Some(&p));
        assert!(again.is_empty());
        version = Some(protocol);
    }
});
