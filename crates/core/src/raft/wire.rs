//! The bytes of a Raft message between nodes: one frame per message, length-prefixed and
//! checksummed, decodable without trusting the sender (every length is checked against the
//! frame and a limit; a bad frame is an error, never a panic, and the connection ends).
//!
//! ```text
//! frame   = len:u32 crc:u32 body            len = body length; crc = CRC32C(body)
//! body    = version:u8 kind:u8 from:u64 incarnation:u64 term:u64 fields
//! kind 1  Vote          pre:u8 transfer:u8 last_index:u64 last_term:u64
//! kind 2  VoteReply     pre:u8 granted:u8
//! kind 3  Append        prev_index:u64 prev_term:u64 commit:u64 count:u32
//!                       count × (term:u64 len:u32 record:len bytes)
//! kind 4  AppendReply   success:u8 index:u64 hint_index:u64 hint_term:u64
//! kind 5  Heartbeat     commit:u64
//! kind 6  HeartbeatReply healthy:u8
//! kind 7  TimeoutNow
//! kind 8  TransferRequest  to:u64
//! kind 9  MembershipRequest op:u8 id:u64, then for op 1 (add): learner:u8 addr_len:u16 addr
//!                       (op 2: remove)
//! kind 10 InstallImage
//! ```
//! `incarnation` is the sender's data directory (its `identity`).
//! All integers little-endian. Owns the encoding only; what a message means is the core's.

use bytes::{Buf, Bytes};

use super::membership::{MAX_ADDR, MembershipChange};
use super::message::{AppendHeader, AppendReply, Entry, Message, NodeId, VoteReply, VoteRequest};

/// Format version carried in every frame.
pub const WIRE_VERSION: u8 = 3;
/// Bytes before the body: length and CRC.
pub const FRAME_HEADER: usize = 8;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("raft frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("raft frame checksum mismatch")]
    BadCrc,
    #[error("raft frame version {0} not understood")]
    Version(u8),
    #[error("raft frame kind {0} unknown")]
    Kind(u8),
    #[error("raft frame malformed: {0}")]
    Malformed(&'static str),
}

/// Appends the frame of `msg` from node `from` (its directory `incarnation`) to `out`.
pub fn encode(out: &mut Vec<u8>, from: NodeId, incarnation: u64, msg: &Message) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.push(WIRE_VERSION);
    let kind: u8 = match msg {
        Message::Vote(_) => 1,
        Message::VoteReply(_) => 2,
        Message::Append { .. } => 3,
        Message::AppendReply(_) => 4,
        Message::Heartbeat { .. } => 5,
        Message::HeartbeatReply { .. } => 6,
        Message::TimeoutNow { .. } => 7,
        Message::TransferRequest { .. } => 8,
        Message::MembershipRequest { .. } => 9,
        Message::InstallImage { .. } => 10,
    };
    out.push(kind);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&incarnation.to_le_bytes());
    out.extend_from_slice(&msg.term().to_le_bytes());
    let u64le = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
    match msg {
        Message::Vote(v) => {
            out.push(u8::from(v.pre));
            out.push(u8::from(v.transfer));
            u64le(out, v.last_index);
            u64le(out, v.last_term);
        }
        Message::VoteReply(r) => {
            out.push(u8::from(r.pre));
            out.push(u8::from(r.granted));
        }
        Message::Append { header, entries } => {
            u64le(out, header.prev_index);
            u64le(out, header.prev_term);
            u64le(out, header.commit);
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for e in entries {
                u64le(out, e.term);
                out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
                out.extend_from_slice(&e.data);
            }
        }
        Message::AppendReply(r) => {
            out.push(u8::from(r.success));
            u64le(out, r.index);
            u64le(out, r.hint_index);
            u64le(out, r.hint_term);
        }
        Message::Heartbeat { commit, .. } => u64le(out, *commit),
        Message::TransferRequest { to, .. } => u64le(out, *to),
        Message::HeartbeatReply { healthy, .. } => out.push(u8::from(*healthy)),
        Message::TimeoutNow { .. } | Message::InstallImage { .. } => {}
        Message::MembershipRequest { change, .. } => match change {
            MembershipChange::Add { id, addr, learner } => {
                out.push(1);
                u64le(out, *id);
                out.push(u8::from(*learner));
                let addr = &addr.as_bytes()[..addr.len().min(MAX_ADDR)];
                out.extend_from_slice(&(addr.len() as u16).to_le_bytes());
                out.extend_from_slice(addr);
            }
            MembershipChange::Remove { id } => {
                out.push(2);
                u64le(out, *id);
            }
        },
    }
    let body_len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The body length a buffered frame header announces, checked against `limit`: how many
/// bytes to read after the header.
pub fn body_len(header: &[u8; FRAME_HEADER], limit: usize) -> Result<usize, WireError> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > limit {
        return Err(WireError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes one frame's body (after the header): the sender, its incarnation, the message.
/// Entry records share `body`'s memory.
pub fn decode(
    header: &[u8; FRAME_HEADER],
    body: Bytes,
) -> Result<(NodeId, u64, Message), WireError> {
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if crc32c::crc32c(&body) != crc {
        return Err(WireError::BadCrc);
    }
    let mut r = Reader(body);
    let version = r.u8()?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let kind = r.u8()?;
    let from = r.u64()?;
    let incarnation = r.u64()?;
    let term = r.u64()?;
    let msg = match kind {
        1 => Message::Vote(VoteRequest {
            term,
            pre: r.flag()?,
            transfer: r.flag()?,
            last_index: r.u64()?,
            last_term: r.u64()?,
        }),
        2 => Message::VoteReply(VoteReply {
            term,
            pre: r.flag()?,
            granted: r.flag()?,
        }),
        3 => {
            let header = AppendHeader {
                term,
                prev_index: r.u64()?,
                prev_term: r.u64()?,
                commit: r.u64()?,
            };
            let count = r.u32()? as usize;
            // Each entry takes at least 12 bytes: a count the frame cannot hold is refused
            // before anything is allocated for it.
            if count > r.0.remaining() / 12 {
                return Err(WireError::Malformed("entry count exceeds the frame"));
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let term = r.u64()?;
                let len = r.u32()? as usize;
                entries.push(Entry {
                    term,
                    data: r.bytes(len)?,
                });
            }
            Message::Append { header, entries }
        }
        4 => Message::AppendReply(AppendReply {
            term,
            success: r.flag()?,
            index: r.u64()?,
            hint_index: r.u64()?,
            hint_term: r.u64()?,
        }),
        5 => Message::Heartbeat {
            term,
            commit: r.u64()?,
        },
        6 => Message::HeartbeatReply {
            term,
            healthy: r.flag()?,
        },
        7 => Message::TimeoutNow { term },
        8 => Message::TransferRequest { term, to: r.u64()? },
        9 => {
            let change = match r.u8()? {
                1 => {
                    let id = r.u64()?;
                    let learner = r.flag()?;
                    let len = r.u16()? as usize;
                    if len > MAX_ADDR {
                        return Err(WireError::Malformed("an address longer than 255 bytes"));
                    }
                    let addr = String::from_utf8(r.bytes(len)?.to_vec())
                        .map_err(|_| WireError::Malformed("an address is not UTF-8"))?;
                    MembershipChange::Add { id, addr, learner }
                }
                2 => MembershipChange::Remove { id: r.u64()? },
                _ => return Err(WireError::Malformed("unknown membership change")),
            };
            Message::MembershipRequest { term, change }
        }
        10 => Message::InstallImage { term },
        k => return Err(WireError::Kind(k)),
    };
    if r.0.has_remaining() {
        return Err(WireError::Malformed("bytes after the message"));
    }
    Ok((from, incarnation, msg))
}

/// Checked reads from a frame body.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.0.remaining() < n {
            return Err(WireError::Malformed("frame ends inside a field"));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn flag(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed("a flag is neither 0 nor 1")),
        }
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.0.get_u16_le())
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.0.get_u64_le())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, WireError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(from: NodeId, msg: Message) {
        let mut buf = Vec::new();
        encode(&mut buf, from, from * 1000 + 7, &msg);
        let header: [u8; FRAME_HEADER] = buf[..FRAME_HEADER].try_into().expect("header");
        assert_eq!(body_len(&header, 1 << 20), Ok(buf.len() - FRAME_HEADER));
        let body = Bytes::copy_from_slice(&buf[FRAME_HEADER..]);
        assert_eq!(decode(&header, body), Ok((from, from * 1000 + 7, msg)));
    }

    #[test]
    fn every_message_round_trips() {
        roundtrip(
            3,
            Message::Vote(VoteRequest {
                term: 9,
                pre: true,
                last_index: 77,
                last_term: 8,
                transfer: false,
            }),
        );
        roundtrip(
            1,
            Message::VoteReply(VoteReply {
                term: 9,
                pre: false,
                granted: true,
            }),
        );
        roundtrip(
            2,
            Message::Append {
                header: AppendHeader {
                    term: 4,
                    prev_index: 10,
                    prev_term: 3,
                    commit: 9,
                },
                entries: vec![
                    Entry {
                        term: 4,
                        data: Bytes::from_static(b"abc"),
                    },
                    Entry {
                        term: 4,
                        data: Bytes::new(),
                    },
                ],
            },
        );
        roundtrip(
            2,
            Message::AppendReply(AppendReply {
                term: 4,
                success: false,
                index: 10,
                hint_index: 5,
                hint_term: 2,
            }),
        );
        roundtrip(
            5,
            Message::Heartbeat {
                term: 1,
                commit: u64::MAX,
            },
        );
        roundtrip(
            5,
            Message::HeartbeatReply {
                term: 1,
                healthy: false,
            },
        );
        roundtrip(5, Message::TimeoutNow { term: 1 });
        roundtrip(5, Message::InstallImage { term: 9 });
        roundtrip(6, Message::TransferRequest { term: 2, to: 3 });
        roundtrip(
            6,
            Message::MembershipRequest {
                term: 2,
                change: MembershipChange::Add {
                    id: 4,
                    addr: "127.0.0.1:7004".into(),
                    learner: true,
                },
            },
        );
        roundtrip(
            6,
            Message::MembershipRequest {
                term: 2,
                change: MembershipChange::Remove { id: 4 },
            },
        );
    }

    #[test]
    fn a_corrupt_or_oversized_frame_is_refused() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 1, &Message::Heartbeat { term: 1, commit: 2 });
        let header: [u8; FRAME_HEADER] = buf[..FRAME_HEADER].try_into().expect("header");
        assert!(matches!(
            body_len(&header, 4),
            Err(WireError::TooLarge { .. })
        ));
        let mut body = buf[FRAME_HEADER..].to_vec();
        body[3] ^= 1;
        assert_eq!(decode(&header, Bytes::from(body)), Err(WireError::BadCrc));
    }

    proptest! {
        /// Any body with a matching CRC decodes or is refused: never a panic, never an
        /// allocation bigger than the frame.
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), kind in 0u8..11) {
            let mut b = body;
            if b.len() >= 2 {
                b[0] = WIRE_VERSION;
                b[1] = kind;
            }
            let crc = crc32c::crc32c(&b);
            let mut header = [0u8; FRAME_HEADER];
            header[..4].copy_from_slice(&(b.len() as u32).to_le_bytes());
            header[4..].copy_from_slice(&crc.to_le_bytes());
            let _ = decode(&header, Bytes::from(b));
        }
    }
}
