//! The MQTT codec: the framer ([`decode`]: a whole packet buffered before anything is parsed,
//! its remaining length a minimal variable byte integer within the maximum packet size), one
//! file per packet type decoding and encoding it for both protocol versions (3.1.1 and 5.0,
//! their differences spelled out where they are), and [`encode`], which refuses what cannot be
//! put on the wire rather than write a corrupt frame.
//!
//! Decoding is strict: fixed-header flags, reserved bits, packet identifier 0, strings that
//! are not UTF-8 or hold U+0000, wildcards in topic names, filters like `a+/`, properties
//! outside their packet or repeated, reason codes the packet does not define, and bytes left
//! over after the last field are all errors, each with the MQTT 5 reason code to close with.
//! A packet cut short inside its own remaining length is malformed — never "wait for more",
//! which would desynchronise the stream.
//!
//! The codec never touches a socket or the engine.

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
pub mod error;
mod framer;
pub mod properties;
mod publish;
mod suback;
mod subscribe;
pub mod topic;
mod unsuback;
mod unsubscribe;
mod wire;

use bytes::{BufMut, Bytes, BytesMut};

pub use error::{DecodeError, EncodeError};
pub use framer::{FixedHeader, PacketType};
pub use properties::Properties;

/// The protocol version a connection speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Protocol {
    /// The protocol level byte of its CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS of two bits; 3 is not one.
    pub fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Seconds; 0: no keep alive.
    pub keep_alive: u16,
    /// May be empty (the broker decides what that means).
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    /// 5.0 only.
    pub properties: Properties,
}

/// A CONNECT's Will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 only.
    pub properties: Properties,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// 3.1.1: the return code (0–5); 5.0: the reason code.
    pub code: u8,
    /// 5.0 only.
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in 5.0 when a topic alias stands for it.
    pub topic: String,
    /// 0 at QoS 0; never 0 otherwise.
    pub packet_id: u16,
    /// 5.0 only.
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (which one is the [`Packet`] variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    /// 5.0: the reason code (0 in 3.1.1).
    pub code: u8,
    /// 5.0 only.
    pub properties: Properties,
}

impl Ack {
    /// A success ack of `packet_id` with no properties.
    pub fn new(packet_id: u16) -> Ack {
        Ack {
            packet_id,
            code: 0,
            properties: Properties::default(),
        }
    }
}

/// One filter of a SUBSCRIBE, with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    /// The maximum QoS asked for.
    pub qos: QoS,
    /// 5.0 only.
    pub no_local: bool,
    /// 5.0 only.
    pub retain_as_published: bool,
    /// 5.0 only: 0 send retained at subscribe, 1 only if the subscription is new, 2 never.
    pub retain_handling: u8,
}

impl Subscription {
    /// `filter` at `qos` with the default options.
    pub fn new(filter: impl Into<String>, qos: QoS) -> Subscription {
        Subscription {
            filter: filter.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// At least one.
    pub subscriptions: Vec<Subscription>,
    /// 5.0 only.
    pub properties: Properties,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per filter: 3.1.1 return codes (0, 1, 2, 0x80) or 5.0 reason codes.
    pub codes: Vec<u8>,
    /// 5.0 only.
    pub properties: Properties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    /// At least one.
    pub filters: Vec<String>,
    /// 5.0 only.
    pub properties: Properties,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// 5.0: one reason code per filter; 3.1.1: none.
    pub codes: Vec<u8>,
    /// 5.0 only.
    pub properties: Properties,
}

/// DISCONNECT (3.1.1: no body).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// 5.0 reason code (0: normal disconnection).
    pub code: u8,
    /// 5.0 only.
    pub properties: Properties,
}

/// AUTH (5.0 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// 0x00 success, 0x18 continue authentication, 0x19 re-authenticate.
    pub code: u8,
    pub properties: Properties,
}

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// Its type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// Takes one packet off the front of `buf` if it is all there: `Ok(None)` asks for more bytes
/// and leaves `buf` as it was. `protocol` is the connection's version; `None` before its
/// CONNECT, when only a CONNECT is decoded (it names its version). A packet whose size exceeds
/// `max_packet_size` is refused from its fixed header, before its body arrives.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = framer::check(buf, max_packet_size)? else {
        return Ok(None);
    };
    if protocol.is_none() && header.packet_type != PacketType::Connect {
        return Err(DecodeError::Protocol("the first packet is not CONNECT"));
    }
    framer::check_flags(&header)?;
    let frame = buf.split_to(header.len()).freeze();
    let mut r = wire::Reader::new(frame.slice(header.header_len..));
    // A CONNECT names its own version; every other packet is read in the connection's.
    let p = protocol.unwrap_or(Protocol::V5);
    let packet = match header.packet_type {
        PacketType::Connect => Packet::Connect(Box::new(connect::decode(&mut r)?)),
        PacketType::ConnAck => Packet::ConnAck(connack::decode(&mut r, p)?),
        PacketType::Publish => Packet::Publish(publish::decode(&mut r, p, header.flags)?),
        PacketType::PubAck => Packet::PubAck(ack::decode(&mut r, p, PacketType::PubAck)?),
        PacketType::PubRec => Packet::PubRec(ack::decode(&mut r, p, PacketType::PubRec)?),
        PacketType::PubRel => Packet::PubRel(ack::decode(&mut r, p, PacketType::PubRel)?),
        PacketType::PubComp => Packet::PubComp(ack::decode(&mut r, p, PacketType::PubComp)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe::decode(&mut r, p)?),
        PacketType::SubAck => Packet::SubAck(suback::decode(&mut r, p)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe::decode(&mut r, p)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsuback::decode(&mut r, p)?),
        PacketType::PingReq => {
            r.end("PINGREQ has no body")?;
            Packet::PingReq
        }
        PacketType::PingResp => {
            r.end("PINGRESP has no body")?;
            Packet::PingResp
        }
        PacketType::Disconnect => Packet::Disconnect(disconnect::decode(&mut r, p)?),
        PacketType::Auth => Packet::Auth(auth::decode(&mut r, p)?),
    };
    Ok(Some(packet))
}

/// Appends `packet` to `out` in `protocol`'s format; on an error nothing is appended.
/// `max_packet_size`: the peer's limit (MQTT 5 Maximum Packet Size; else `u32::MAX`).
pub fn encode(
    packet: &Packet,
    protocol: Protocol,
    max_packet_size: u32,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    // The body is written in place after room for the largest fixed header, which is then
    // written just before it and the gap closed: one pass, no buffer of its own.
    let start = out.len();
    out.put_bytes(0, framer::MAX_HEADER);
    let written = encode_body(packet, protocol, out);
    let flags = match written {
        Ok(flags) => flags,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let r = framer::put_header(packet.packet_type(), flags, start, max_packet_size, out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Writes `packet`'s body at the end of `out`; returns its fixed header's flags.
fn encode_body(packet: &Packet, protocol: Protocol, out: &mut BytesMut) -> Result<u8, EncodeError> {
    let body = out;
    Ok(match packet {
        Packet::Connect(c) => {
            if c.protocol != protocol {
                return Err(EncodeError::Invalid(
                    "a CONNECT of another protocol version",
                ));
            }
            connect::encode(c, body)?;
            0
        }
        Packet::ConnAck(c) => {
            connack::encode(c, protocol, body)?;
            0
        }
        Packet::Publish(p) => publish::encode(p, protocol, body)?,
        Packet::PubAck(a) => ack::encode(a, protocol, PacketType::PubAck, body)?,
        Packet::PubRec(a) => ack::encode(a, protocol, PacketType::PubRec, body)?,
        Packet::PubRel(a) => ack::encode(a, protocol, PacketType::PubRel, body)?,
        Packet::PubComp(a) => ack::encode(a, protocol, PacketType::PubComp, body)?,
        Packet::Subscribe(s) => {
            subscribe::encode(s, protocol, body)?;
            0b0010
        }
        Packet::SubAck(s) => {
            suback::encode(s, protocol, body)?;
            0
        }
        Packet::Unsubscribe(u) => {
            unsubscribe::encode(u, protocol, body)?;
            0b0010
        }
        Packet::UnsubAck(u) => {
            unsuback::encode(u, protocol, body)?;
            0
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            disconnect::encode(d, protocol, body)?;
            0
        }
        Packet::Auth(a) => {
            auth::encode(a, protocol, body)?;
            0
        }
    })
}

/// Encodes a string field's length check and bytes (shared by the packet files).
fn put_string(out: &mut BytesMut, field: &'static str, s: &str) -> Result<(), EncodeError> {
    wire::check_len(field, s.len())?;
    wire::put_binary(out, s.as_bytes());
    Ok(())
}

/// Checks a packet identifier that may not be 0.
fn packet_id(r: &mut wire::Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Malformed("a packet identifier of 0")),
        id => Ok(id),
    }
}

/// The same, encoding.
fn check_packet_id(id: u16) -> Result<(), EncodeError> {
    if id == 0 {
        Err(EncodeError::Invalid("a packet identifier of 0"))
    } else {
        Ok(())
    }
}

/// Properties are 5.0's: a 3.1.1 packet carrying any cannot be encoded.
fn no_properties(p: &Properties, protocol: Protocol) -> Result<(), EncodeError> {
    if protocol == Protocol::V311 && !p.is_empty() {
        Err(EncodeError::Invalid("MQTT 3.1.1 has no properties"))
    } else {
        Ok(())
    }
}

/// Writes a 5.0 property list for `scope` (nothing in 3.1.1, where there must be none).
fn put_properties(
    p: &Properties,
    protocol: Protocol,
    scope: properties::Scope,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    no_properties(p, protocol)?;
    if protocol == Protocol::V5 {
        let len = p.check(scope)?;
        p.encode(len, out);
    }
    Ok(())
}

/// The 5.0 tail of PUBACK-family packets, DISCONNECT and AUTH: a reason code and properties,
/// both omitted when the code is 0 and there are none, the properties alone omitted after a
/// code (spec 3.4.2.2, 3.14.2.2, 3.15.2.2). `valid` says which codes the packet defines.
fn read_code_and_properties(
    r: &mut wire::Reader,
    scope: properties::Scope,
    valid: impl Fn(u8) -> bool,
) -> Result<(u8, Properties), DecodeError> {
    if r.is_empty() {
        return Ok((0, Properties::default()));
    }
    let code = r.u8()?;
    if !valid(code) {
        return Err(DecodeError::Protocol(
            "a reason code this packet does not define",
        ));
    }
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        Properties::decode(r, scope)?
    };
    Ok((code, properties))
}

/// Writes that tail, as short as it may be.
fn put_code_and_properties(
    code: u8,
    p: &Properties,
    scope: properties::Scope,
    valid: impl Fn(u8) -> bool,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if !valid(code) {
        return Err(EncodeError::Invalid(
            "a reason code this packet does not define",
        ));
    }
    if code == 0 && p.is_empty() {
        return Ok(());
    }
    out.put_u8(code);
    if !p.is_empty() {
        let len = p.check(scope)?;
        p.encode(len, out);
    }
    Ok(())
}
