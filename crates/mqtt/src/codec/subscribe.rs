//! SUBSCRIBE (spec 3.8; 3.1.1 3.8): a packet identifier, 5.0 properties (at most one
//! Subscription Identifier), then at least one topic filter with its options byte. Checks:
//! an empty list, invalid filters (`a+/`, `a/#/b`, a `$share/` without group or filter), QoS
//! 3, reserved option bits, Retain Handling 3, No Local on a shared subscription.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, Scope};
use super::wire::Reader;
use super::{
    Protocol, QoS, Subscribe, Subscription, check_packet_id, packet_id, put_properties, put_string,
    topic,
};

/// A filter a SUBSCRIBE or UNSUBSCRIBE may name: valid, and if shared, a valid share.
pub fn check_filter(filter: &str) -> Result<(), &'static str> {
    if !topic::valid_filter(filter) {
        return Err("a topic filter is not valid");
    }
    match topic::shared(filter) {
        Some(Err(why)) => Err(why),
        _ => Ok(()),
    }
}

pub fn decode(r: &mut Reader, protocol: Protocol) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = match protocol {
        Protocol::V5 => Properties::decode(r, Scope::Subscribe)?,
        Protocol::V311 => Properties::default(),
    };
    let mut subscriptions = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        check_filter(&filter).map_err(DecodeError::Protocol)?;
        let options = r.u8()?;
        let reserved = match protocol {
            Protocol::V311 => 0xfc,
            Protocol::V5 => 0xc0,
        };
        if options & reserved != 0 {
            return Err(DecodeError::Malformed(
                "reserved subscription option bits are set",
            ));
        }
        let Some(qos) = QoS::from_bits(options & 0x03) else {
            return Err(DecodeError::Malformed("a requested QoS of 3"));
        };
        let s = Subscription {
            filter,
            qos,
            no_local: options & 0x04 != 0,
            retain_as_published: options & 0x08 != 0,
            retain_handling: (options >> 4) & 0x03,
        };
        if s.retain_handling == 3 {
            return Err(DecodeError::Protocol("a Retain Handling of 3"));
        }
        if s.no_local && topic::shared(&s.filter).is_some() {
            return Err(DecodeError::Protocol("No Local on a shared subscription"));
        }
        subscriptions.push(s);
    }
    if subscriptions.is_empty() {
        return Err(DecodeError::Protocol("a SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        subscriptions,
        properties,
    })
}

pub fn encode(s: &Subscribe, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    check_packet_id(s.packet_id)?;
    if s.subscriptions.is_empty() {
        return Err(EncodeError::Invalid("a SUBSCRIBE without a topic filter"));
    }
    out.put_u16(s.packet_id);
    put_properties(&s.properties, protocol, Scope::Subscribe, out)?;
    for sub in &s.subscriptions {
        check_filter(&sub.filter).map_err(EncodeError::Invalid)?;
        let v5_options = sub.no_local || sub.retain_as_published || sub.retain_handling != 0;
        if protocol == Protocol::V311 && v5_options {
            return Err(EncodeError::Invalid(
                "MQTT 3.1.1 has no subscription options",
            ));
        }
        if sub.retain_handling > 2 {
            return Err(EncodeError::Invalid("a Retain Handling above 2"));
        }
        if sub.no_local && topic::shared(&sub.filter).is_some() {
            return Err(EncodeError::Invalid("No Local on a shared subscription"));
        }
        put_string(out, "a topic filter", &sub.filter)?;
        out.put_u8(
            sub.qos as u8
                | (u8::from(sub.no_local) << 2)
                | (u8::from(sub.retain_as_published) << 3)
                | (sub.retain_handling << 4),
        );
    }
    Ok(())
}
