//! SUBACK (spec 3.9; 3.1.1 3.9): a packet identifier, 5.0 properties, one code per filter of
//! the SUBSCRIBE (3.1.1: granted QoS 0–2 or 0x80 failure; 5.0: its reason codes).

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, Scope};
use super::wire::Reader;
use super::{Protocol, SubAck, check_packet_id, packet_id, put_properties};

fn valid(code: u8, protocol: Protocol) -> bool {
    match protocol {
        Protocol::V311 => matches!(code, 0x00 | 0x01 | 0x02 | 0x80),
        Protocol::V5 => matches!(
            code,
            0x00 | 0x01 | 0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
        ),
    }
}

pub fn decode(r: &mut Reader, protocol: Protocol) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = match protocol {
        Protocol::V5 => Properties::decode(r, Scope::SubAck)?,
        Protocol::V311 => Properties::default(),
    };
    let codes = r.rest().to_vec();
    if codes.is_empty() {
        return Err(DecodeError::Protocol("a SUBACK without a code"));
    }
    if !codes.iter().all(|c| valid(*c, protocol)) {
        return Err(DecodeError::Protocol(
            "a SUBACK code this version does not define",
        ));
    }
    Ok(SubAck {
        packet_id,
        codes,
        properties,
    })
}

pub fn encode(s: &SubAck, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    check_packet_id(s.packet_id)?;
    if s.codes.is_empty() || !s.codes.iter().all(|c| valid(*c, protocol)) {
        return Err(EncodeError::Invalid("SUBACK codes"));
    }
    out.put_u16(s.packet_id);
    put_properties(&s.properties, protocol, Scope::SubAck, out)?;
    out.put_slice(&s.codes);
    Ok(())
}
