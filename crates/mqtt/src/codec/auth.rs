//! AUTH (spec 3.15): 5.0 only (type 15 is reserved in 3.1.1). A remaining length of 0 means
//! success without properties; otherwise a reason code (0x00, 0x18 continue, 0x19
//! re-authenticate) and properties.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, Scope};
use super::wire::Reader;
use super::{Auth, Protocol};

fn valid(code: u8) -> bool {
    matches!(code, 0x00 | 0x18 | 0x19)
}

pub fn decode(r: &mut Reader, protocol: Protocol) -> Result<Auth, DecodeError> {
    if protocol == Protocol::V311 {
        return Err(DecodeError::Malformed(
            "packet type 15 is reserved in MQTT 3.1.1",
        ));
    }
    let mut a = Auth::default();
    if !r.is_empty() {
        a.code = r.u8()?;
        if !valid(a.code) {
            return Err(DecodeError::Protocol(
                "an AUTH reason code 5.0 does not define",
            ));
        }
        // A reason code without a property length: no properties (as DISCONNECT reads it).
        if !r.is_empty() {
            a.properties = Properties::decode(r, Scope::Auth)?;
        }
    }
    r.end("bytes after the last AUTH field")?;
    Ok(a)
}

pub fn encode(a: &Auth, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    if protocol == Protocol::V311 {
        return Err(EncodeError::Invalid("MQTT 3.1.1 has no AUTH"));
    }
    if !valid(a.code) {
        return Err(EncodeError::Invalid(
            "an AUTH reason code 5.0 does not define",
        ));
    }
    if a.code != 0 || !a.properties.is_empty() {
        out.put_u8(a.code);
        let len = a.properties.check(Scope::Auth)?;
        a.properties.encode(len, out);
    }
    Ok(())
}
