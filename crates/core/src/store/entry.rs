//! The CommitLog record: one Raft log entry holding an opaque engine command and zero or more
//! sub-records (messages), and the end-of-segment blank marker. Encoding and validation only;
//! this module does no IO and must never trust a length it has not checked against the buffer.
//!
//! Byte layout (little-endian throughout) is documented in `docs/storage-format.md`.

use bytes::Bytes;

use super::le::{u16_at, u32_at, u64_at};

/// Position of an entry in the Raft log. Starts at 1; 0 means "before the first entry".
pub type LogIndex = u64;
/// Raft term.
pub type Term = u64;

/// Magic of a log entry record ("MFE1" read as little-endian u32).
pub const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"MFE1");
/// Magic of the end-of-segment blank marker ("MFBL").
pub const BLANK_MAGIC: u32 = u32::from_le_bytes(*b"MFBL");
/// Size of the fixed entry header.
pub const ENTRY_HEADER_LEN: usize = 48;
/// Size of the blank marker (size + magic). A segment always keeps room for one.
pub const BLANK_LEN: usize = 8;
/// Size of the fixed part of a sub-record.
pub const SUB_RECORD_HEADER_LEN: usize = 40;

/// A Redis stream ID `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// Builds `ms-seq`.
    pub const fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What an entry means to the layers above. The store only distinguishes them for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A leader's no-op at the start of its term; no command, no sub-records.
    Noop = 1,
    /// An engine command, with the messages it appends as sub-records.
    Command = 2,
    /// A cluster membership change.
    Config = 3,
}

impl EntryKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(EntryKind::Noop),
            2 => Some(EntryKind::Command),
            3 => Some(EntryKind::Config),
            _ => None,
        }
    }
}

/// What a sub-record does to its topic. The dispatcher applies these in log order to the
/// ConsumeQueue, so XDEL flags, trims and dropped topics are re-derived on recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RecordOp {
    /// A message appended to the topic (the topic is created if it does not exist).
    #[default]
    Message = 0,
    /// XDEL: the entry with exactly this stream ID is marked deleted.
    Delete = 1,
    /// Trim: entries with a stream ID below this one are gone.
    Trim = 2,
    /// The topic is dropped; a later message creates a new incarnation.
    Drop = 3,
    /// Trim to a length (MAXLEN): the oldest entries go until `id.ms` live entries remain.
    TrimToLen = 4,
    /// The topic is created empty if it does not exist (XGROUP CREATE MKSTREAM).
    Create = 5,
    /// Retention: in **every** topic, the entries of log entries below `id.ms` are gone (the
    /// topic key is not used).
    RetainFrom = 6,
    /// XSETID: the stream's last ID becomes `id`; with the property `added` (8 bytes) its
    /// entries-added counter, with `maxdel` (16 bytes: ms, seq) its max deleted ID.
    SetId = 7,
}

impl RecordOp {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(RecordOp::Message),
            1 => Some(RecordOp::Delete),
            2 => Some(RecordOp::Trim),
            3 => Some(RecordOp::Drop),
            4 => Some(RecordOp::TrimToLen),
            5 => Some(RecordOp::Create),
            6 => Some(RecordOp::RetainFrom),
            7 => Some(RecordOp::SetId),
            _ => None,
        }
    }
}

/// One message (or topic operation) inside an entry, on stream topic `(db, topic)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubRecord {
    /// What this sub-record does; `Message` for a message.
    pub op: RecordOp,
    /// Redis database 0..=15 (MQTT and HTTP use 0).
    pub db: u8,
    /// Topic key, arbitrary bytes.
    pub topic: Bytes,
    /// Stream ID, resolved by the proposer.
    pub id: StreamId,
    /// Message key for the IndexFile; empty = none.
    pub message_key: Bytes,
    /// Properties (content type, MQTT v5 user properties, ...), in order.
    pub properties: Vec<(Bytes, Bytes)>,
    /// Field/value pairs, in order.
    pub fields: Vec<(Bytes, Bytes)>,
}

impl SubRecord {
    /// Encoded size of this sub-record.
    pub fn encoded_len(&self) -> usize {
        let pairs =
            |v: &[(Bytes, Bytes)]| v.iter().map(|(a, b)| 8 + a.len() + b.len()).sum::<usize>();
        SUB_RECORD_HEADER_LEN
            + self.topic.len()
            + self.message_key.len()
            + pairs(&self.properties)
            + pairs(&self.fields)
    }
}

/// An entry as the caller hands it to [`crate::store::CommitLog::append`]; the log assigns
/// the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Kind.
    pub kind: EntryKind,
    /// Leader timestamp in ms since the Unix epoch (the store timestamp of its messages).
    pub timestamp_ms: u64,
    /// Opaque engine command bytes.
    pub command: Bytes,
    /// Messages appended by the command.
    pub records: Vec<SubRecord>,
}

impl NewEntry {
    /// A no-op entry.
    pub fn noop(term: Term, timestamp_ms: u64) -> Self {
        NewEntry {
            term,
            kind: EntryKind::Noop,
            timestamp_ms,
            command: Bytes::new(),
            records: Vec::new(),
        }
    }

    /// Encoded size of the whole record.
    pub fn encoded_len(&self) -> usize {
        ENTRY_HEADER_LEN
            + self.command.len()
            + self
                .records
                .iter()
                .map(SubRecord::encoded_len)
                .sum::<usize>()
    }
}

/// A decoded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Log index.
    pub index: LogIndex,
    /// Term.
    pub term: Term,
    /// Kind.
    pub kind: EntryKind,
    /// Leader timestamp (ms).
    pub timestamp_ms: u64,
    /// Engine command bytes.
    pub command: Bytes,
    /// Messages.
    pub records: Vec<SubRecord>,
}

/// The fixed header of an entry, readable without decoding the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    /// Total record size.
    pub size: u32,
    /// CRC32C of bytes `[12, size)`.
    pub crc: u32,
    /// Kind.
    pub kind: EntryKind,
    /// Term.
    pub term: Term,
    /// Index.
    pub index: LogIndex,
    /// Leader timestamp.
    pub timestamp_ms: u64,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header or the declared size.
    #[error("record truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Unknown magic.
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// Declared size out of bounds.
    #[error("bad record size {0}")]
    BadSize(u32),
    /// CRC mismatch.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Unknown entry kind or non-zero reserved bits.
    #[error("bad header field: {0}")]
    BadHeader(&'static str),
    /// The body does not parse into exactly the declared parts.
    #[error("malformed body: {0}")]
    BadBody(&'static str),
}

/// What sits at a record position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Zeros: the end of the written log in this segment.
    Empty,
    /// The blank marker: the rest of the segment is unused.
    Blank,
    /// An entry of this total size (header not yet validated beyond size and magic).
    Entry(u32),
}

/// Classifies the 8 bytes at a record position.
pub fn classify(first8: &[u8; 8]) -> Result<Slot, DecodeError> {
    let size = u32_at(first8, 0);
    let magic = u32_at(first8, 4);
    match magic {
        0 if size == 0 => Ok(Slot::Empty),
        BLANK_MAGIC => Ok(Slot::Blank),
        ENTRY_MAGIC if (size as usize) >= ENTRY_HEADER_LEN => Ok(Slot::Entry(size)),
        ENTRY_MAGIC => Err(DecodeError::BadSize(size)),
        other => Err(DecodeError::BadMagic(other)),
    }
}

/// Appends the blank marker filling `remaining` bytes of a segment.
pub fn encode_blank(out: &mut Vec<u8>, remaining: u32) {
    out.extend_from_slice(&remaining.to_le_bytes());
    out.extend_from_slice(&BLANK_MAGIC.to_le_bytes());
}

/// Appends the encoded record of `entry` at `index` to `out`; returns its CRC. Each header is
/// built on the stack and copied in once (every append of the log runs this).
pub fn encode_entry(out: &mut Vec<u8>, entry: &NewEntry, index: LogIndex) -> u32 {
    let start = out.len();
    let size = entry.encoded_len() as u32;
    out.reserve(size as usize);
    let mut h = [0u8; ENTRY_HEADER_LEN];
    h[0..4].copy_from_slice(&size.to_le_bytes());
    h[4..8].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
    // 8..12: the CRC, patched below.
    h[12] = entry.kind as u8;
    // 13: flags; 14..16: reserved.
    h[16..24].copy_from_slice(&entry.term.to_le_bytes());
    h[24..32].copy_from_slice(&index.to_le_bytes());
    h[32..40].copy_from_slice(&entry.timestamp_ms.to_le_bytes());
    h[40..44].copy_from_slice(&(entry.command.len() as u32).to_le_bytes());
    h[44..48].copy_from_slice(&(entry.records.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&entry.command);
    for r in &entry.records {
        encode_sub_record(out, r);
    }
    debug_assert_eq!(out.len() - start, size as usize);
    let crc = crc32c::crc32c(&out[start + 12..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    crc
}

fn encode_sub_record(out: &mut Vec<u8>, r: &SubRecord) {
    let mut h = [0u8; SUB_RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&(r.encoded_len() as u32).to_le_bytes());
    h[4] = r.db;
    h[5] = r.op as u8;
    // 6..8: reserved.
    h[8..16].copy_from_slice(&r.id.ms.to_le_bytes());
    h[16..24].copy_from_slice(&r.id.seq.to_le_bytes());
    h[24..28].copy_from_slice(&(r.topic.len() as u32).to_le_bytes());
    h[28..32].copy_from_slice(&(r.message_key.len() as u32).to_le_bytes());
    h[32..36].copy_from_slice(&(r.properties.len() as u32).to_le_bytes());
    h[36..40].copy_from_slice(&(r.fields.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&r.topic);
    out.extend_from_slice(&r.message_key);
    for (k, v) in r.properties.iter().chain(&r.fields) {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
}

/// Validates a whole record's header and CRC (not the body structure).
pub fn check_record(buf: &[u8]) -> Result<EntryHeader, DecodeError> {
    if buf.len() < ENTRY_HEADER_LEN {
        return Err(DecodeError::Truncated {
            need: ENTRY_HEADER_LEN,
            have: buf.len(),
        });
    }
    let size = u32_at(buf, 0);
    let magic = u32_at(buf, 4);
    if magic != ENTRY_MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    if (size as usize) < ENTRY_HEADER_LEN {
        return Err(DecodeError::BadSize(size));
    }
    if buf.len() < size as usize {
        return Err(DecodeError::Truncated {
            need: size as usize,
            have: buf.len(),
        });
    }
    let stored = u32_at(buf, 8);
    let computed = crc32c::crc32c(&buf[12..size as usize]);
    if stored != computed {
        return Err(DecodeError::BadCrc { stored, computed });
    }
    let kind = EntryKind::from_u8(buf[12]).ok_or(DecodeError::BadHeader("kind"))?;
    if buf[13] != 0 || u16_at(buf, 14) != 0 {
        return Err(DecodeError::BadHeader("reserved bits set"));
    }
    Ok(EntryHeader {
        size,
        crc: stored,
        kind,
        term: u64_at(buf, 16),
        index: u64_at(buf, 24),
        timestamp_ms: u64_at(buf, 32),
    })
}

/// Decodes a whole record. `buf` must hold exactly the record; slices share its memory.
pub fn decode_entry(buf: &Bytes) -> Result<LogEntry, DecodeError> {
    let h = check_record(buf)?;
    if h.size as usize != buf.len() {
        return Err(DecodeError::BadSize(h.size));
    }
    let command_len = u32_at(buf, 40) as usize;
    let count = u32_at(buf, 44) as usize;
    let mut r = Reader {
        buf,
        pos: ENTRY_HEADER_LEN,
    };
    let command = r.take(command_len)?;
    // Each sub-record needs at least its header: bound the allocation by what the buffer holds.
    if count > (buf.len() - r.pos) / SUB_RECORD_HEADER_LEN {
        return Err(DecodeError::BadBody("sub-record count exceeds record"));
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        records.push(r.sub_record()?);
    }
    if r.pos != buf.len() {
        return Err(DecodeError::BadBody("trailing bytes after sub-records"));
    }
    Ok(LogEntry {
        index: h.index,
        term: h.term,
        kind: h.kind,
        timestamp_ms: h.timestamp_ms,
        command,
        records,
    })
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or(DecodeError::BadBody("length past end of record"))?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32_at(&b, 0))
    }
    fn pairs(&mut self, n: usize, end: usize) -> Result<Vec<(Bytes, Bytes)>, DecodeError> {
        if n > end.saturating_sub(self.pos) / 8 {
            return Err(DecodeError::BadBody("pair count exceeds sub-record"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let kl = self.u32()? as usize;
            let k = self.take(kl)?;
            let vl = self.u32()? as usize;
            let val = self.take(vl)?;
            v.push((k, val));
        }
        Ok(v)
    }
    fn sub_record(&mut self) -> Result<SubRecord, DecodeError> {
        let start = self.pos;
        let head = self.take(SUB_RECORD_HEADER_LEN)?;
        let len = u32_at(&head, 0) as usize;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= self.buf.len() && len >= SUB_RECORD_HEADER_LEN);
        let end = end.ok_or(DecodeError::BadBody("sub-record length"))?;
        let op = RecordOp::from_u8(head[5]).ok_or(DecodeError::BadBody("sub-record op"))?;
        if u16_at(&head, 6) != 0 {
            return Err(DecodeError::BadBody("sub-record reserved bits set"));
        }
        let id = StreamId::new(u64_at(&head, 8), u64_at(&head, 16));
        let topic = self.take(u32_at(&head, 24) as usize)?;
        let message_key = self.take(u32_at(&head, 28) as usize)?;
        let properties = self.pairs(u32_at(&head, 32) as usize, end)?;
        let fields = self.pairs(u32_at(&head, 36) as usize, end)?;
        if self.pos != end {
            return Err(DecodeError::BadBody(
                "sub-record length does not match contents",
            ));
        }
        Ok(SubRecord {
            op,
            db: head[4],
            topic,
            id,
            message_key,
            properties,
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
    }
    fn pairs() -> impl Strategy<Value = Vec<(Bytes, Bytes)>> {
        proptest::collection::vec((bytes(), bytes()), 0..4)
    }
    fn sub_record() -> impl Strategy<Value = SubRecord> {
        let op = prop_oneof![
            Just(RecordOp::Message),
            Just(RecordOp::Delete),
            Just(RecordOp::Trim),
            Just(RecordOp::Drop),
            Just(RecordOp::TrimToLen),
            Just(RecordOp::Create),
            Just(RecordOp::RetainFrom),
            Just(RecordOp::SetId)
        ];
        (
            op,
            0u8..16,
            bytes(),
            any::<u64>(),
            any::<u64>(),
            bytes(),
            pairs(),
            pairs(),
        )
            .prop_map(
                |(op, db, topic, ms, seq, message_key, properties, fields)| SubRecord {
                    op,
                    db,
                    topic,
                    id: StreamId::new(ms, seq),
                    message_key,
                    properties,
                    fields,
                },
            )
    }
    fn new_entry() -> impl Strategy<Value = NewEntry> {
        (
            any::<u64>(),
            prop_oneof![
                Just(EntryKind::Noop),
                Just(EntryKind::Command),
                Just(EntryKind::Config)
            ],
            any::<u64>(),
            bytes(),
            proptest::collection::vec(sub_record(), 0..4),
        )
            .prop_map(|(term, kind, timestamp_ms, command, records)| NewEntry {
                term,
                kind,
                timestamp_ms,
                command,
                records,
            })
    }

    proptest! {
        #[test]
        fn entry_round_trips(e in new_entry(), index in 1u64..u64::MAX) {
            let mut buf = Vec::new();
            let crc = encode_entry(&mut buf, &e, index);
            prop_assert_eq!(buf.len(), e.encoded_len());
            let bytes = Bytes::from(buf);
            let d = decode_entry(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(d.index, index);
            prop_assert_eq!(check_record(&bytes).ok().map(|h| h.crc), Some(crc));
            prop_assert_eq!(NewEntry { term: d.term, kind: d.kind, timestamp_ms: d.timestamp_ms,
                command: d.command, records: d.records }, e);
        }

        #[test]
        fn any_flipped_byte_or_short_read_is_rejected(e in new_entry(), at in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            encode_entry(&mut buf, &e, 7);
            let i = at.index(buf.len());
            let mut flipped = buf.clone();
            flipped[i] ^= 0x5a;
            prop_assert!(decode_entry(&Bytes::from(flipped)).is_err());
            let short = Bytes::copy_from_slice(&buf[..cut.index(buf.len())]);
            prop_assert!(decode_entry(&short).is_err());
        }

        #[test]
        fn decoding_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_entry(&Bytes::from(data));
        }
    }

    #[test]
    fn classify_distinguishes_zeros_blank_and_entries() {
        assert_eq!(classify(&[0; 8]), Ok(Slot::Empty));
        let mut b = Vec::new();
        encode_blank(&mut b, 100);
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        assert_eq!(classify(&a), Ok(Slot::Blank));
        assert!(classify(&[1, 2, 3, 4, 5, 6, 7, 8]).is_err());
    }
}
