//! PUBACK, PUBREC, PUBREL and PUBCOMP (spec 3.4–3.7; 3.1.1 3.4–3.7): one shape — a packet
//! identifier, then in 5.0 an optional reason code and optional properties (a remaining
//! length of 2 means success and no properties, 3 a reason code and no properties). 3.1.1
//! has the identifier only.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::framer::PacketType;
use super::properties::Scope;
use super::wire::Reader;
use super::{
    Ack, Protocol, check_packet_id, no_properties, packet_id, put_code_and_properties,
    read_code_and_properties,
};

/// The reason codes each may carry (spec 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1).
fn valid(code: u8, kind: PacketType) -> bool {
    match kind {
        PacketType::PubAck | PacketType::PubRec => {
            matches!(
                code,
                0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
            )
        }
        _ => matches!(code, 0x00 | 0x92),
    }
}

pub fn decode(r: &mut Reader, protocol: Protocol, kind: PacketType) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut ack = Ack::new(packet_id);
    if protocol == Protocol::V5 {
        (ack.code, ack.properties) =
            read_code_and_properties(r, Scope::Ack, |code| valid(code, kind))?;
    }
    r.end("bytes after the last field of an acknowledgement")?;
    Ok(ack)
}

pub fn encode(
    a: &Ack,
    protocol: Protocol,
    kind: PacketType,
    out: &mut BytesMut,
) -> Result<u8, EncodeError> {
    check_packet_id(a.packet_id)?;
    no_properties(&a.properties, protocol)?;
    if protocol == Protocol::V311 && a.code != 0 {
        return Err(EncodeError::Invalid(
            "a reason code this packet does not define",
        ));
    }
    out.put_u16(a.packet_id);
    if protocol == Protocol::V5 {
        put_code_and_properties(a.code, &a.properties, Scope::Ack, |c| valid(c, kind), out)?;
    }
    Ok(if kind == PacketType::PubRel {
        0b0010
    } else {
        0
    })
}
