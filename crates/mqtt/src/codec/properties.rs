//! MQTT 5 properties (spec 2.2.2): one struct for all of them, and for each packet the set it
//! may carry. Decoding refuses a property outside its packet, a repeated one (only User
//! Property repeats, and Subscription Identifier in a PUBLISH sent to a client) and values the
//! spec forbids (a Receive Maximum of 0, a Payload Format Indicator of 2, ...). Encoding
//! refuses the same, so the broker cannot send what a strict client would reject.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::wire::{self, MAX_VARINT, Reader};

/// Where a property list sits: each allows its own properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Every MQTT 5 property; a packet uses the ones its [`Scope`] allows. `None` / empty: absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01 (PUBLISH, Will): 0 bytes, 1 UTF-8.
    pub payload_format: Option<u8>,
    /// 0x02 (PUBLISH, Will), seconds.
    pub message_expiry: Option<u32>,
    /// 0x03 (PUBLISH, Will).
    pub content_type: Option<String>,
    /// 0x08 (PUBLISH, Will).
    pub response_topic: Option<String>,
    /// 0x09 (PUBLISH, Will).
    pub correlation_data: Option<bytes::Bytes>,
    /// 0x0B (SUBSCRIBE: at most one; PUBLISH to a client: one per matching subscription).
    pub subscription_ids: Vec<u32>,
    /// 0x11 (CONNECT, CONNACK, DISCONNECT), seconds.
    pub session_expiry: Option<u32>,
    /// 0x12 (CONNACK).
    pub assigned_client_id: Option<String>,
    /// 0x13 (CONNACK), seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15 (CONNECT, CONNACK, AUTH).
    pub auth_method: Option<String>,
    /// 0x16 (CONNECT, CONNACK, AUTH).
    pub auth_data: Option<bytes::Bytes>,
    /// 0x17 (CONNECT): 0 or 1.
    pub request_problem_info: Option<u8>,
    /// 0x18 (Will), seconds.
    pub will_delay: Option<u32>,
    /// 0x19 (CONNECT): 0 or 1.
    pub request_response_info: Option<u8>,
    /// 0x1A (CONNACK).
    pub response_info: Option<String>,
    /// 0x1C (CONNACK, DISCONNECT).
    pub server_reference: Option<String>,
    /// 0x1F (CONNACK, acks, SUBACK, UNSUBACK, DISCONNECT, AUTH).
    pub reason_string: Option<String>,
    /// 0x21 (CONNECT, CONNACK): not 0.
    pub receive_maximum: Option<u16>,
    /// 0x22 (CONNECT, CONNACK).
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 (PUBLISH): not 0.
    pub topic_alias: Option<u16>,
    /// 0x24 (CONNACK): 0 or 1.
    pub maximum_qos: Option<u8>,
    /// 0x25 (CONNACK): 0 or 1.
    pub retain_available: Option<u8>,
    /// 0x26 (every packet with properties), in order, repeats allowed.
    pub user: Vec<(String, String)>,
    /// 0x27 (CONNECT, CONNACK): not 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28 (CONNACK): 0 or 1.
    pub wildcard_available: Option<u8>,
    /// 0x29 (CONNACK): 0 or 1.
    pub subscription_ids_available: Option<u8>,
    /// 0x2A (CONNACK): 0 or 1.
    pub shared_available: Option<u8>,
}

/// Whether property `id` may appear in `scope`.
fn allowed(id: u8, scope: Scope) -> bool {
    use Scope::*;
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(scope, Publish | Will),
        0x0B => matches!(scope, Publish | Subscribe),
        0x11 => matches!(scope, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => scope == ConnAck,
        0x15 | 0x16 => matches!(scope, Connect | ConnAck | Auth),
        0x17 | 0x19 => scope == Connect,
        0x18 => scope == Will,
        0x1C => matches!(scope, ConnAck | Disconnect),
        0x1F => matches!(scope, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth),
        0x21 | 0x22 | 0x27 => matches!(scope, Connect | ConnAck),
        0x23 => scope == Publish,
        0x26 => true,
        _ => false,
    }
}

fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("a property appears twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(r: &mut Reader, what: &'static str) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

impl Properties {
    /// Reads a property list (its variable-byte length, then the properties) for `scope`.
    pub fn decode(r: &mut Reader, scope: Scope) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        let mut r = Reader::new(r.take(len)?);
        let mut p = Properties::default();
        while !r.is_empty() {
            // The identifier is a variable byte integer; every defined one fits in one byte.
            let id = r.varint()?;
            let id = match u8::try_from(id) {
                Ok(id) if allowed(id, scope) => id,
                _ => {
                    return Err(DecodeError::Protocol(
                        "a property not allowed in this packet",
                    ));
                }
            };
            match id {
                0x01 => once(
                    &mut p.payload_format,
                    flag(&mut r, "payload format indicator")?,
                )?,
                0x02 => once(&mut p.message_expiry, r.u32()?)?,
                0x03 => once(&mut p.content_type, r.string()?)?,
                0x08 => {
                    let topic = r.string()?;
                    if !super::topic::valid_name(&topic) {
                        return Err(DecodeError::Protocol(
                            "a response topic is not a topic name",
                        ));
                    }
                    once(&mut p.response_topic, topic)?
                }
                0x09 => once(&mut p.correlation_data, r.binary()?)?,
                0x0B => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("a subscription identifier of 0"));
                    }
                    if scope == Scope::Subscribe && !p.subscription_ids.is_empty() {
                        return Err(DecodeError::Protocol("two subscription identifiers"));
                    }
                    p.subscription_ids.push(v);
                }
                0x11 => once(&mut p.session_expiry, r.u32()?)?,
                0x12 => once(&mut p.assigned_client_id, r.string()?)?,
                0x13 => once(&mut p.server_keep_alive, r.u16()?)?,
                0x15 => once(&mut p.auth_method, r.string()?)?,
                0x16 => once(&mut p.auth_data, r.binary()?)?,
                0x17 => once(
                    &mut p.request_problem_info,
                    flag(&mut r, "request problem information")?,
                )?,
                0x18 => once(&mut p.will_delay, r.u32()?)?,
                0x19 => once(
                    &mut p.request_response_info,
                    flag(&mut r, "request response information")?,
                )?,
                0x1A => once(&mut p.response_info, r.string()?)?,
                0x1C => once(&mut p.server_reference, r.string()?)?,
                0x1F => once(&mut p.reason_string, r.string()?)?,
                0x21 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("a receive maximum of 0"));
                    }
                    once(&mut p.receive_maximum, v)?
                }
                0x22 => once(&mut p.topic_alias_maximum, r.u16()?)?,
                0x23 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("a topic alias of 0"));
                    }
                    once(&mut p.topic_alias, v)?
                }
                0x24 => once(&mut p.maximum_qos, flag(&mut r, "maximum QoS")?)?,
                0x25 => once(&mut p.retain_available, flag(&mut r, "retain available")?)?,
                0x26 => p.user.push(r.pair()?),
                0x27 => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("a maximum packet size of 0"));
                    }
                    once(&mut p.maximum_packet_size, v)?
                }
                0x28 => once(
                    &mut p.wildcard_available,
                    flag(&mut r, "wildcard subscription available")?,
                )?,
                0x29 => once(
                    &mut p.subscription_ids_available,
                    flag(&mut r, "subscription identifiers available")?,
                )?,
                0x2A => once(
                    &mut p.shared_available,
                    flag(&mut r, "shared subscription available")?,
                )?,
                _ => {
                    return Err(DecodeError::Protocol(
                        "a property not allowed in this packet",
                    ));
                }
            }
        }
        Ok(p)
    }

    /// The properties present, as `(identifier, encoded value length)`, in identifier order
    /// (user properties last, as sent).
    fn present(&self) -> Vec<(u8, usize)> {
        let s = |v: &Option<String>| v.as_ref().map(|s| wire::field_len(s.as_bytes()));
        let b = |v: &Option<bytes::Bytes>| v.as_ref().map(|b| wire::field_len(b));
        let fixed = |present: bool, n: usize| present.then_some(n);
        let mut out: Vec<(u8, usize)> = [
            (0x01, fixed(self.payload_format.is_some(), 1)),
            (0x02, fixed(self.message_expiry.is_some(), 4)),
            (0x03, s(&self.content_type)),
            (0x08, s(&self.response_topic)),
            (0x09, b(&self.correlation_data)),
            (0x11, fixed(self.session_expiry.is_some(), 4)),
            (0x12, s(&self.assigned_client_id)),
            (0x13, fixed(self.server_keep_alive.is_some(), 2)),
            (0x15, s(&self.auth_method)),
            (0x16, b(&self.auth_data)),
            (0x17, fixed(self.request_problem_info.is_some(), 1)),
            (0x18, fixed(self.will_delay.is_some(), 4)),
            (0x19, fixed(self.request_response_info.is_some(), 1)),
            (0x1A, s(&self.response_info)),
            (0x1C, s(&self.server_reference)),
            (0x1F, s(&self.reason_string)),
            (0x21, fixed(self.receive_maximum.is_some(), 2)),
            (0x22, fixed(self.topic_alias_maximum.is_some(), 2)),
            (0x23, fixed(self.topic_alias.is_some(), 2)),
            (0x24, fixed(self.maximum_qos.is_some(), 1)),
            (0x25, fixed(self.retain_available.is_some(), 1)),
            (0x27, fixed(self.maximum_packet_size.is_some(), 4)),
            (0x28, fixed(self.wildcard_available.is_some(), 1)),
            (0x29, fixed(self.subscription_ids_available.is_some(), 1)),
            (0x2A, fixed(self.shared_available.is_some(), 1)),
        ]
        .into_iter()
        .filter_map(|(id, n)| n.map(|n| (id, n)))
        .collect();
        out.extend(
            self.subscription_ids
                .iter()
                .map(|v| (0x0B, wire::varint_len(*v))),
        );
        out.extend(self.user.iter().map(|(k, v)| {
            (
                0x26,
                wire::field_len(k.as_bytes()) + wire::field_len(v.as_bytes()),
            )
        }));
        out
    }

    /// Checks the list can be sent in `scope`; returns the length of its body (without the
    /// length prefix).
    pub fn check(&self, scope: Scope) -> Result<usize, EncodeError> {
        let strings = [
            &self.content_type,
            &self.response_topic,
            &self.assigned_client_id,
            &self.auth_method,
            &self.response_info,
            &self.server_reference,
            &self.reason_string,
        ];
        for v in strings.into_iter().flatten() {
            wire::check_len("a property string", v.len())?;
        }
        for v in [&self.correlation_data, &self.auth_data]
            .into_iter()
            .flatten()
        {
            wire::check_len("a property's binary data", v.len())?;
        }
        for (k, v) in &self.user {
            wire::check_len("a user property", k.len())?;
            wire::check_len("a user property", v.len())?;
        }
        let flags = [
            self.payload_format,
            self.request_problem_info,
            self.request_response_info,
            self.maximum_qos,
            self.retain_available,
            self.wildcard_available,
            self.subscription_ids_available,
            self.shared_available,
        ];
        if flags.into_iter().flatten().any(|f| f > 1) {
            return Err(EncodeError::Invalid(
                "a property that is 0 or 1 holds another value",
            ));
        }
        if self.receive_maximum == Some(0)
            || self.topic_alias == Some(0)
            || self.maximum_packet_size == Some(0)
        {
            return Err(EncodeError::Invalid("a property that may not be 0 is 0"));
        }
        if self
            .subscription_ids
            .iter()
            .any(|v| *v == 0 || *v > MAX_VARINT)
            || (scope == Scope::Subscribe && self.subscription_ids.len() > 1)
        {
            return Err(EncodeError::Invalid(
                "a subscription identifier out of range",
            ));
        }
        let mut len = 0;
        for (id, n) in self.present() {
            if !allowed(id, scope) {
                return Err(EncodeError::Invalid(
                    "a property not allowed in this packet",
                ));
            }
            len += 1 + n;
        }
        if len > MAX_VARINT as usize {
            return Err(EncodeError::TooLarge {
                size: len as u64,
                max: u64::from(MAX_VARINT),
            });
        }
        Ok(len)
    }

    /// Writes the list, `len` from [`Properties::check`].
    pub fn encode(&self, len: usize, out: &mut BytesMut) {
        wire::put_varint(out, len as u32);
        let s = |out: &mut BytesMut, id: u8, v: &Option<String>| {
            if let Some(v) = v {
                out.put_u8(id);
                wire::put_binary(out, v.as_bytes());
            }
        };
        let byte = |out: &mut BytesMut, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u8(v);
            }
        };
        let short = |out: &mut BytesMut, id: u8, v: Option<u16>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u16(v);
            }
        };
        let long = |out: &mut BytesMut, id: u8, v: Option<u32>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u32(v);
            }
        };
        let bin = |out: &mut BytesMut, id: u8, v: &Option<bytes::Bytes>| {
            if let Some(v) = v {
                out.put_u8(id);
                wire::put_binary(out, v);
            }
        };
        byte(out, 0x01, self.payload_format);
        long(out, 0x02, self.message_expiry);
        s(out, 0x03, &self.content_type);
        s(out, 0x08, &self.response_topic);
        bin(out, 0x09, &self.correlation_data);
        long(out, 0x11, self.session_expiry);
        s(out, 0x12, &self.assigned_client_id);
        short(out, 0x13, self.server_keep_alive);
        s(out, 0x15, &self.auth_method);
        bin(out, 0x16, &self.auth_data);
        byte(out, 0x17, self.request_problem_info);
        long(out, 0x18, self.will_delay);
        byte(out, 0x19, self.request_response_info);
        s(out, 0x1A, &self.response_info);
        s(out, 0x1C, &self.server_reference);
        s(out, 0x1F, &self.reason_string);
        short(out, 0x21, self.receive_maximum);
        short(out, 0x22, self.topic_alias_maximum);
        short(out, 0x23, self.topic_alias);
        byte(out, 0x24, self.maximum_qos);
        byte(out, 0x25, self.retain_available);
        long(out, 0x27, self.maximum_packet_size);
        byte(out, 0x28, self.wildcard_available);
        byte(out, 0x29, self.subscription_ids_available);
        byte(out, 0x2A, self.shared_available);
        for v in &self.subscription_ids {
            out.put_u8(0x0B);
            wire::put_varint(out, *v);
        }
        for (k, v) in &self.user {
            out.put_u8(0x26);
            wire::put_binary(out, k.as_bytes());
            wire::put_binary(out, v.as_bytes());
        }
    }

    /// Whether no property is present (field by field: no default built to compare with).
    pub fn is_empty(&self) -> bool {
        let Properties {
            payload_format,
            message_expiry,
            content_type,
            response_topic,
            correlation_data,
            subscription_ids,
            session_expiry,
            assigned_client_id,
            server_keep_alive,
            auth_method,
            auth_data,
            request_problem_info,
            will_delay,
            request_response_info,
            response_info,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            topic_alias,
            maximum_qos,
            retain_available,
            user,
            maximum_packet_size,
            wildcard_available,
            subscription_ids_available,
            shared_available,
        } = self;
        payload_format.is_none()
            && message_expiry.is_none()
            && content_type.is_none()
            && response_topic.is_none()
            && correlation_data.is_none()
            && subscription_ids.is_empty()
            && session_expiry.is_none()
            && assigned_client_id.is_none()
            && server_keep_alive.is_none()
            && auth_method.is_none()
            && auth_data.is_none()
            && request_problem_info.is_none()
            && will_delay.is_none()
            && request_response_info.is_none()
            && response_info.is_none()
            && server_reference.is_none()
            && reason_string.is_none()
            && receive_maximum.is_none()
            && topic_alias_maximum.is_none()
            && topic_alias.is_none()
            && maximum_qos.is_none()
            && retain_available.is_none()
            && user.is_empty()
            && maximum_packet_size.is_none()
            && wildcard_available.is_none()
            && subscription_ids_available.is_none()
            && shared_available.is_none()
    }
}
