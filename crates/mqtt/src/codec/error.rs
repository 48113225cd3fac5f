//! What can go wrong decoding or encoding a packet, and the MQTT 5 reason code a broker sends
//! (in DISCONNECT, or CONNACK for a bad CONNECT) before it closes the connection.

/// A packet that cannot be accepted. The connection is closed after it: nothing after a bad
/// packet can be framed with confidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes break the packet's format (v5 reason code 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The bytes are well formed but break a rule of the protocol (v5 reason code 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The remaining length says the packet is larger than the limit (v5 reason code 0x95).
    #[error("packet of {size} bytes is larger than the maximum of {max}")]
    TooLarge {
        /// The whole packet's size, fixed header included.
        size: u64,
        /// The limit.
        max: u32,
    },
    /// A CONNECT for a protocol version this broker does not speak (3.1.1: CONNACK return
    /// code 1; 5.0: CONNACK 0x84).
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// The protocol name as sent (lossy UTF-8).
        name: String,
        /// The protocol level as sent.
        level: u8,
    },
}

impl DecodeError {
    /// The MQTT 5 reason code for this error: what DISCONNECT (or CONNACK) carries.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => 0x81,
            DecodeError::Protocol(_) => 0x82,
            DecodeError::TooLarge { .. } => 0x95,
            DecodeError::UnsupportedProtocol { .. } => 0x84,
        }
    }
}

/// A packet that cannot be put on the wire as asked: nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field longer than 65,535 bytes.
    #[error("{0} is longer than 65,535 bytes")]
    FieldTooLong(&'static str),
    /// The packet would be larger than the peer's maximum packet size, or than MQTT's own
    /// limit (a remaining length of 268,435,455).
    #[error("packet of {size} bytes is larger than the maximum of {max}")]
    TooLarge {
        /// The packet's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The packet, or a part of it, does not exist in this protocol version or breaks one of
    /// its rules (a property outside its packet, a packet id of 0, ...).
    #[error("cannot encode: {0}")]
    Invalid(&'static str),
}
