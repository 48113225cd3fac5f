//! AUTH (spec 3.15): 5.0 only (type 15 is reserved in 3.1.1). A remaining length of 0 means
//! success without properties; otherwise a reason code (0x00, 0x18 continue, 0x19
//! re-authenticate) and properties.

use bytes::BytesMut;

use super::error::{DecodeError, EncodeError};
use super::properties::Scope;
use super::wire::Reader;
use super::{Auth, Protocol, put_code_and_properties, read_code_and_properties};

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
    (a.code, a.properties) = read_code_and_properties(r, Scope::Auth, valid)?;
    r.end("bytes after the last AUTH field")?;
    Ok(a)
}

pub fn encode(a: &Auth, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    if protocol == Protocol::V311 {
        return Err(EncodeError::Invalid("MQTT 3.1.1 has no AUTH"));
    }
    put_code_and_properties(a.code, &a.properties, Scope::Auth, valid, out)
}
