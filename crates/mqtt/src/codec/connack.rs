//! CONNACK (spec 3.2; 3.1.1 3.2): the acknowledge flags (only Session Present), the return
//! code (3.1.1: 0–5) or reason code (5.0), and 5.0 properties.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, Scope};
use super::wire::Reader;
use super::{ConnAck, Protocol, put_properties};

/// 5.0 CONNACK reason codes (spec 3.2.2.2).
const V5_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];

fn valid(code: u8, protocol: Protocol) -> bool {
    match protocol {
        Protocol::V311 => code <= 5,
        Protocol::V5 => V5_CODES.contains(&code),
    }
}

pub fn decode(r: &mut Reader, protocol: Protocol) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xfe != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flags are set"));
    }
    let code = r.u8()?;
    if !valid(code, protocol) {
        return Err(DecodeError::Protocol(
            "a CONNACK code this version does not define",
        ));
    }
    let session_present = flags & 0x01 != 0;
    if session_present && code != 0 {
        return Err(DecodeError::Protocol(
            "session present on a refused connection",
        ));
    }
    let properties = match protocol {
        Protocol::V5 => Properties::decode(r, Scope::ConnAck)?,
        Protocol::V311 => Properties::default(),
    };
    r.end("bytes after the last CONNACK field")?;
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}

pub fn encode(c: &ConnAck, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    if !valid(c.code, protocol) {
        return Err(EncodeError::Invalid(
            "a CONNACK code this version does not define",
        ));
    }
    if c.session_present && c.code != 0 {
        return Err(EncodeError::Invalid(
            "session present on a refused connection",
        ));
    }
    out.put_u8(u8::from(c.session_present));
    out.put_u8(c.code);
    put_properties(&c.properties, protocol, Scope::ConnAck, out)
}
