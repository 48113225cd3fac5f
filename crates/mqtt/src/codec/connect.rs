//! CONNECT (spec 3.1; 3.1.1 3.1): the only packet decoded before the connection's version is
//! known — it names the version itself (protocol "MQTT", level 4 or 5). Checks: the reserved
//! flag, Will flags without a Will, Will QoS 3, a 3.1.1 password without a user name, the
//! Will topic, 5.0 authentication data without a method, nothing after the last field.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, Scope};
use super::wire::{self, Reader};
use super::{Connect, Protocol, QoS, Will, put_properties, put_string, topic};

pub fn decode(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        _ => {
            return Err(DecodeError::UnsupportedProtocol {
                name: String::from_utf8_lossy(&name).into_owned(),
                level,
            });
        }
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("the reserved CONNECT flag is set"));
    }
    let clean_start = flags & 0x02 != 0;
    let has_will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !has_will && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed("Will QoS or retain without a Will"));
    }
    let Some(will_qos) = QoS::from_bits(will_qos) else {
        return Err(DecodeError::Malformed("a Will QoS of 3"));
    };
    if protocol == Protocol::V311 && has_password && !has_username {
        return Err(DecodeError::Malformed("a password without a user name"));
    }
    let keep_alive = r.u16()?;
    let properties = match protocol {
        Protocol::V5 => Properties::decode(r, Scope::Connect)?,
        Protocol::V311 => Properties::default(),
    };
    if properties.auth_data.is_some() && properties.auth_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without a method",
        ));
    }
    let client_id = r.string()?;
    let will = if has_will {
        let properties = match protocol {
            Protocol::V5 => Properties::decode(r, Scope::Will)?,
            Protocol::V311 => Properties::default(),
        };
        let topic = r.string()?;
        if !topic::valid_name(&topic) {
            return Err(DecodeError::Protocol("the Will topic is not a topic name"));
        }
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    r.end("bytes after the last CONNECT field")?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

pub fn encode(c: &Connect, out: &mut BytesMut) -> Result<(), EncodeError> {
    let protocol = c.protocol;
    if protocol == Protocol::V311 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::Invalid("a 3.1.1 password without a user name"));
    }
    wire::put_binary(out, b"MQTT");
    out.put_u8(protocol.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    put_properties(&c.properties, protocol, Scope::Connect, out)?;
    put_string(out, "the client identifier", &c.client_id)?;
    if let Some(w) = &c.will {
        if !topic::valid_name(&w.topic) {
            return Err(EncodeError::Invalid("the Will topic is not a topic name"));
        }
        put_properties(&w.properties, protocol, Scope::Will, out)?;
        put_string(out, "the Will topic", &w.topic)?;
        wire::check_len("the Will payload", w.payload.len())?;
        wire::put_binary(out, &w.payload);
    }
    if let Some(u) = &c.username {
        put_string(out, "the user name", u)?;
    }
    if let Some(p) = &c.password {
        wire::check_len("the password", p.len())?;
        wire::put_binary(out, p);
    }
    Ok(())
}
