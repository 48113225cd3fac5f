//! The fixed header (spec 2.1; 3.1.1 2.2): packet type, flags and remaining length. [`check`]
//! says whether a whole packet is buffered — reading no further than its fixed header, and
//! refusing a packet larger than the limit as soon as its length is known — so the packet
//! decoders only ever see whole packets. [`put_header`] completes a packet written in place,
//! refusing one larger than the peer's limit or MQTT's.

use bytes::BytesMut;

use super::error::{DecodeError, EncodeError};
use super::wire::{self, MAX_VARINT};

/// The packet types (the fixed header's high four bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    /// 5.0 only.
    Auth = 15,
}

impl PacketType {
    fn from_bits(bits: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match bits {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }
}

/// A buffered packet's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: PacketType,
    /// The low four bits of the first byte.
    pub flags: u8,
    /// Bytes of the fixed header (2 to 5).
    pub header_len: usize,
    /// The remaining length.
    pub remaining: usize,
}

impl FixedHeader {
    /// The whole packet's size.
    pub fn len(&self) -> usize {
        self.header_len + self.remaining
    }

    /// Never: a fixed header is at least two bytes.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The fixed header of the packet at the front of `buf` if all of the packet is buffered;
/// `None` if more bytes are needed. Errors: packet type 0, a bad remaining length, or a packet
/// larger than `max` (known from the header alone).
pub fn check(buf: &[u8], max: u32) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some(packet_type) = PacketType::from_bits(first >> 4) else {
        return Err(DecodeError::Malformed("packet type 0 is reserved"));
    };
    let Some((remaining, used)) = wire::read_varint(&buf[1..])? else {
        return Ok(None);
    };
    let header_len = 1 + used;
    let size = header_len as u64 + u64::from(remaining);
    if size > u64::from(max) {
        return Err(DecodeError::TooLarge { size, max });
    }
    let header = FixedHeader {
        packet_type,
        flags: first & 0x0f,
        header_len,
        remaining: remaining as usize,
    };
    Ok((buf.len() >= header.len()).then_some(header))
}

/// The flags each packet type must carry (PUBLISH's are its DUP, QoS and RETAIN, checked by
/// its decoder).
pub fn check_flags(h: &FixedHeader) -> Result<(), DecodeError> {
    let want = match h.packet_type {
        PacketType::Publish => return Ok(()),
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
        _ => 0,
    };
    if h.flags == want {
        Ok(())
    } else {
        Err(DecodeError::Malformed("reserved flags of the fixed header"))
    }
}

/// The largest fixed header: one byte and a four-byte remaining length.
pub const MAX_HEADER: usize = 5;

/// Completes a packet written at `out[start..]` as [`MAX_HEADER`] bytes of room and then its
/// body: writes the fixed header of `packet_type` with `flags` just before the body and closes
/// the gap — if the packet fits within `max` (and MQTT's largest remaining length).
pub fn put_header(
    packet_type: PacketType,
    flags: u8,
    start: usize,
    max: u32,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let body_start = start + MAX_HEADER;
    let body_len = out.len() - body_start;
    if body_len > MAX_VARINT as usize {
        return Err(EncodeError::TooLarge {
            size: body_len as u64,
            max: u64::from(MAX_VARINT),
        });
    }
    let remaining = body_len as u32;
    let header_len = 1 + wire::varint_len(remaining);
    let size = (header_len + body_len) as u64;
    if size > u64::from(max) {
        return Err(EncodeError::TooLarge {
            size,
            max: u64::from(max),
        });
    }
    let header_start = body_start - header_len;
    let header = &mut out[header_start..body_start];
    header[0] = ((packet_type as u8) << 4) | flags;
    wire::write_varint(&mut header[1..], remaining);
    let gap = header_start - start;
    if gap > 0 {
        out.copy_within(header_start.., start);
        out.truncate(out.len() - gap);
    }
    Ok(())
}
