//! PUBLISH (spec 3.3; 3.1.1 3.3): DUP, QoS and RETAIN in the fixed header, the topic name, a
//! packet identifier at QoS 1 and 2, 5.0 properties, and the payload (the rest of the packet,
//! shared with the read buffer, never copied). Checks: QoS 3, DUP at QoS 0, packet identifier
//! 0, wildcards in the topic, an empty topic (5.0: allowed only with a topic alias). Whether a
//! Subscription Identifier may come from this peer is the broker's call (a client may not
//! send one).

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, Scope};
use super::wire::Reader;
use super::{
    Protocol, Publish, QoS, check_packet_id, packet_id, put_properties, put_string, topic,
};

pub fn decode(r: &mut Reader, protocol: Protocol, flags: u8) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let retain = flags & 0x01 != 0;
    let Some(qos) = QoS::from_bits((flags >> 1) & 0x03) else {
        return Err(DecodeError::Malformed("a PUBLISH QoS of 3"));
    };
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = match protocol {
        Protocol::V5 => Properties::decode(r, Scope::Publish)?,
        Protocol::V311 => Properties::default(),
    };
    let aliased = topic.is_empty() && properties.topic_alias.is_some();
    if !aliased && !topic::valid_name(&topic) {
        return Err(DecodeError::Protocol("a PUBLISH topic is not a topic name"));
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// Writes the body; returns the fixed header's flags.
pub fn encode(p: &Publish, protocol: Protocol, out: &mut BytesMut) -> Result<u8, EncodeError> {
    let aliased = p.topic.is_empty() && p.properties.topic_alias.is_some();
    if !aliased && !topic::valid_name(&p.topic) {
        return Err(EncodeError::Invalid("a PUBLISH topic is not a topic name"));
    }
    match p.qos {
        QoS::AtMostOnce if p.dup => {
            return Err(EncodeError::Invalid("DUP on a QoS 0 PUBLISH"));
        }
        QoS::AtMostOnce if p.packet_id != 0 => {
            return Err(EncodeError::Invalid(
                "a packet identifier on a QoS 0 PUBLISH",
            ));
        }
        QoS::AtMostOnce => {}
        _ => check_packet_id(p.packet_id)?,
    }
    put_string(out, "the topic name", &p.topic)?;
    if p.qos != QoS::AtMostOnce {
        out.put_u16(p.packet_id);
    }
    put_properties(&p.properties, protocol, Scope::Publish, out)?;
    out.put_slice(&p.payload);
    Ok((u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain))
}
