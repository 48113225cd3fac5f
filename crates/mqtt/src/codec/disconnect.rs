//! DISCONNECT (spec 3.14; 3.1.1 3.14). 3.1.1: no body. 5.0: a remaining length of 0 is a
//! normal disconnection (`E0 00`, what most clients send), 1 a reason code and no properties
//! (`E0 01 8E` — the packet mqttbytes consumes and then asks more bytes for), more a reason
//! code and properties.

use bytes::BytesMut;

use super::error::{DecodeError, EncodeError};
use super::properties::Scope;
use super::wire::Reader;
use super::{
    Disconnect, Protocol, no_properties, put_code_and_properties, read_code_and_properties,
};

/// 5.0 DISCONNECT reason codes (spec 3.14.2.1).
fn valid(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x04
            | 0x80
            | 0x81
            | 0x82
            | 0x83
            | 0x87
            | 0x89
            | 0x8B
            | 0x8D
            | 0x8E
            | 0x8F
            | 0x90
            | 0x93
            | 0x94
            | 0x95
            | 0x96
            | 0x97
            | 0x98
            | 0x99
            | 0x9A
            | 0x9B
            | 0x9C
            | 0x9D
            | 0x9E
            | 0x9F
            | 0xA0
            | 0xA1
            | 0xA2
    )
}

pub fn decode(r: &mut Reader, protocol: Protocol) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::default();
    if protocol == Protocol::V5 {
        (d.code, d.properties) = read_code_and_properties(r, Scope::Disconnect, valid)?;
    }
    r.end("bytes after the last DISCONNECT field")?;
    Ok(d)
}

pub fn encode(d: &Disconnect, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    no_properties(&d.properties, protocol)?;
    match protocol {
        Protocol::V311 if d.code != 0 => Err(EncodeError::Invalid(
            "a 3.1.1 DISCONNECT has no reason code",
        )),
        Protocol::V311 => Ok(()),
        Protocol::V5 => {
            put_code_and_properties(d.code, &d.properties, Scope::Disconnect, valid, out)
        }
    }
}
