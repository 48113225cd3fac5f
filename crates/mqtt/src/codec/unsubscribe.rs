//! UNSUBSCRIBE (spec 3.10; 3.1.1 3.10): a packet identifier, 5.0 properties (user properties
//! only), then at least one topic filter.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, Scope};
use super::subscribe::check_filter;
use super::wire::Reader;
use super::{Protocol, Unsubscribe, check_packet_id, packet_id, put_properties, put_string};

pub fn decode(r: &mut Reader, protocol: Protocol) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = match protocol {
        Protocol::V5 => Properties::decode(r, Scope::Unsubscribe)?,
        Protocol::V311 => Properties::default(),
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        check_filter(&filter).map_err(DecodeError::Protocol)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(
            "an UNSUBSCRIBE without a topic filter",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

pub fn encode(u: &Unsubscribe, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    check_packet_id(u.packet_id)?;
    if u.filters.is_empty() {
        return Err(EncodeError::Invalid(
            "an UNSUBSCRIBE without a topic filter",
        ));
    }
    out.put_u16(u.packet_id);
    put_properties(&u.properties, protocol, Scope::Unsubscribe, out)?;
    for f in &u.filters {
        check_filter(f).map_err(EncodeError::Invalid)?;
        put_string(out, "a topic filter", f)?;
    }
    Ok(())
}
