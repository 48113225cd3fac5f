//! UNSUBACK (spec 3.11; 3.1.1 3.11): a packet identifier; in 5.0 also properties and one
//! reason code per filter of the UNSUBSCRIBE.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, Scope};
use super::wire::Reader;
use super::{Protocol, UnsubAck, check_packet_id, packet_id, put_properties};

fn valid(code: u8) -> bool {
    matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
}

pub fn decode(r: &mut Reader, protocol: Protocol) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut u = UnsubAck {
        packet_id,
        codes: Vec::new(),
        properties: Properties::default(),
    };
    if protocol == Protocol::V5 {
        u.properties = Properties::decode(r, Scope::UnsubAck)?;
        u.codes = r.rest().to_vec();
        if u.codes.is_empty() {
            return Err(DecodeError::Protocol("an UNSUBACK without a reason code"));
        }
        if !u.codes.iter().all(|c| valid(*c)) {
            return Err(DecodeError::Protocol(
                "an UNSUBACK code 5.0 does not define",
            ));
        }
    }
    r.end("bytes after the packet identifier of a 3.1.1 UNSUBACK")?;
    Ok(u)
}

pub fn encode(u: &UnsubAck, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    check_packet_id(u.packet_id)?;
    match protocol {
        Protocol::V311 if !u.codes.is_empty() => {
            return Err(EncodeError::Invalid("a 3.1.1 UNSUBACK has no reason codes"));
        }
        Protocol::V5 if u.codes.is_empty() || !u.codes.iter().all(|c| valid(*c)) => {
            return Err(EncodeError::Invalid("UNSUBACK reason codes"));
        }
        _ => {}
    }
    out.put_u16(u.packet_id);
    put_properties(&u.properties, protocol, Scope::UnsubAck, out)?;
    out.put_slice(&u.codes);
    Ok(())
}
