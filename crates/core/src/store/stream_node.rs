//! Redis's stream nodes, modelled so that an approximate trim (`~`) cuts where Redis would.
//!
//! Redis 7.0 keeps a stream as a radix tree of listpack *nodes*. An XADD goes into the tail node
//! unless that node already holds `stream-node-max-entries` entries (live and deleted), or its
//! listpack size plus the new entry's field and value lengths reaches `stream-node-max-bytes`;
//! then it opens a new node. A node whose live entries XDEL removes all goes away; a `~` trim
//! removes whole nodes only. So which entries a `~` trim keeps depends on the listpack sizes.
//!
//! This module owns that arithmetic: the byte size Redis's listpack encoding gives each element,
//! and the state of a topic's tail node ([`TailNode`], kept in the topic row). Which queue entry
//! opened a node is recorded with the entry itself (`CQ_NODE_START`); the dispatcher walks those
//! flags. It never reads or writes files, and nothing here decides what a stream contains.

use bytes::Bytes;

use super::entry::StreamId;

/// Redis's `stream-node-max-entries` default.
pub const NODE_MAX_ENTRIES: u32 = 100;
/// Redis's `stream-node-max-bytes` default.
pub const NODE_MAX_BYTES: u32 = 4096;
/// Redis's largest listpack (`STREAM_LISTPACK_MAX_SIZE`, 1 GiB): the byte limit when the
/// setting is 0 or above it.
const LISTPACK_MAX_SIZE: u64 = 1 << 30;

/// When a stream node is full, as Redis's two settings say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    /// Entries (live and deleted) a node holds at most (`stream-node-max-entries`; 0: no limit).
    pub max_entries: u32,
    /// Listpack bytes a node is closed at (`stream-node-max-bytes`; 0: 1 GiB).
    pub max_bytes: u32,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            max_entries: NODE_MAX_ENTRIES,
            max_bytes: NODE_MAX_BYTES,
        }
    }
}

impl NodeLimits {
    fn byte_limit(&self) -> u64 {
        match u64::from(self.max_bytes) {
            0 => LISTPACK_MAX_SIZE,
            b => b.min(LISTPACK_MAX_SIZE),
        }
    }
}

/// The newest node of a stream, as far as the next append needs it. Stored in the topic row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailNode {
    /// Queue position of the entry that opened it.
    pub start: u64,
    /// Entries in it, live and deleted (Redis's `count + deleted`).
    pub entries: u32,
    /// Of those, live: neither deleted nor trimmed (Redis's `count`).
    pub live: u32,
    /// Listpack bytes, without the two elements holding `count` and `deleted`.
    pub bytes: u64,
    /// ID of the entry that opened it (the master ID the others are delta-encoded against).
    pub master: StreamId,
    /// [`fields_hash`] of the field names of that entry (the master fields).
    pub fields: u64,
    /// Not 0: XDEL removed the newer nodes, and the next entry that joins this node is marked
    /// `CQ_NODE_JOIN` with this many node-opening entries back to this node's first.
    pub skip: u8,
}

impl TailNode {
    /// The node an entry opens at queue position `start`: header, master entry, the entry.
    pub fn open(start: u64, id: StreamId, fields: &[(Bytes, Bytes)]) -> TailNode {
        // Total bytes (4) and element count (2) header, end byte (1).
        let mut bytes = 7 + int_len(fields.len() as i64) + int_len(0);
        bytes += fields.iter().map(|(f, _)| str_len(f)).sum::<u64>();
        let mut node = TailNode {
            start,
            entries: 1,
            live: 1,
            bytes,
            master: id,
            fields: fields_hash(fields),
            skip: 0,
        };
        node.bytes += node.entry_len(id, fields, true);
        node
    }

    /// Redis's `lpBytes` of the node now.
    pub fn listpack_bytes(&self) -> u64 {
        let deleted = self.entries.saturating_sub(self.live);
        self.bytes + int_len(i64::from(self.live)) + int_len(i64::from(deleted))
    }

    /// Whether an entry with these fields goes into this node rather than opening one.
    pub fn has_room(&self, fields: &[(Bytes, Bytes)], limits: NodeLimits) -> bool {
        let lengths: u64 = fields.iter().map(|(f, v)| (f.len() + v.len()) as u64).sum();
        if self.listpack_bytes() + lengths >= limits.byte_limit() {
            return false;
        }
        limits.max_entries == 0 || self.entries < limits.max_entries
    }

    /// Adds the entry (the caller checked [`has_room`](Self::has_room)); returns the `skip`
    /// its queue entry is marked with (0: none, it follows the entry before it).
    pub fn add(&mut self, id: StreamId, fields: &[(Bytes, Bytes)]) -> u8 {
        let same = fields_hash(fields) == self.fields;
        self.bytes += self.entry_len(id, fields, same);
        self.entries += 1;
        self.live += 1;
        std::mem::take(&mut self.skip)
    }

    /// Listpack bytes of one entry: flags, ID deltas, [field count, fields], values, and the
    /// element count that lets Redis walk the node backwards.
    fn entry_len(&self, id: StreamId, fields: &[(Bytes, Bytes)], same: bool) -> u64 {
        let n = fields.len() as i64;
        // Flags: STREAM_ITEM_FLAG_SAMEFIELDS (2) or none; the deleted bit (1) never changes
        // the size.
        let mut len = int_len(if same { 2 } else { 0 })
            + int_len(id.ms.wrapping_sub(self.master.ms) as i64)
            + int_len(id.seq.wrapping_sub(self.master.seq) as i64);
        if !same {
            len += int_len(n) + fields.iter().map(|(f, _)| str_len(f)).sum::<u64>();
        }
        len += fields.iter().map(|(_, v)| str_len(v)).sum::<u64>();
        let elements = n + 3 + if same { 0 } else { n + 1 };
        len + int_len(elements)
    }
}

/// A stable 64-bit hash (FNV-1a) of field names, count and lengths included: whether an
/// entry's fields are its node's master fields (Redis then leaves the names out). Stored in
/// rows, so it must never change.
pub fn fields_hash(fields: &[(Bytes, Bytes)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(&(fields.len() as u64).to_le_bytes());
    for (f, _) in fields {
        feed(&(f.len() as u64).to_le_bytes());
        feed(f);
    }
    h
}

/// Size of a listpack element holding integer `v`: encoding and value, then the back-length.
fn int_len(v: i64) -> u64 {
    let encoded = if (0..=127).contains(&v) {
        1
    } else if (-4096..=4095).contains(&v) {
        2
    } else if i16::try_from(v).is_ok() {
        3
    } else if (-(1 << 23)..(1 << 23)).contains(&v) {
        4
    } else if i32::try_from(v).is_ok() {
        5
    } else {
        9
    };
    encoded + backlen(encoded)
}

/// Size of a listpack element holding string `s`: an integer if Redis reads it as one.
fn str_len(s: &[u8]) -> u64 {
    if let Some(v) = as_integer(s) {
        return int_len(v);
    }
    let n = s.len() as u64;
    let encoded = match n {
        0..64 => 1 + n,
        64..4096 => 2 + n,
        _ => 5 + n,
    };
    encoded + backlen(encoded)
}

/// Bytes of the back-length of an element of `len` bytes.
fn backlen(len: u64) -> u64 {
    match len {
        0..=127 => 1,
        128..16383 => 2,
        16383..2_097_151 => 3,
        2_097_151..268_435_455 => 4,
        _ => 5,
    }
}

/// `s` as Redis's `lpStringToInt64` reads it: at most 20 bytes, an optional `-`, no leading
/// zeros (only `0` itself), no `+`, no spaces, within `i64`.
fn as_integer(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    match digits.first() {
        Some(b'1'..=b'9') if digits.iter().all(u8::is_ascii_digit) => {}
        _ => return None,
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fv(pairs: &[(&str, &str)]) -> Vec<(Bytes, Bytes)> {
        pairs
            .iter()
            .map(|(f, v)| {
                (
                    Bytes::copy_from_slice(f.as_bytes()),
                    Bytes::copy_from_slice(v.as_bytes()),
                )
            })
            .collect()
    }

    #[test]
    fn integers_are_read_as_redis_reads_them() {
        assert_eq!(as_integer(b"0"), Some(0));
        assert_eq!(as_integer(b"-1"), Some(-1));
        assert_eq!(as_integer(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(as_integer(b"-9223372036854775808"), Some(i64::MIN));
        for no in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1a",
            b"9223372036854775808",
        ] {
            assert_eq!(as_integer(no), None, "{:?}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn element_sizes_follow_the_listpack_encodings() {
        assert_eq!(int_len(0), 2);
        assert_eq!(int_len(127), 2);
        assert_eq!(int_len(128), 3);
        assert_eq!(int_len(-4096), 3);
        assert_eq!(int_len(4096), 4);
        assert_eq!(int_len(-32768), 4);
        assert_eq!(int_len(40_000), 5);
        assert_eq!(int_len(1 << 30), 6);
        assert_eq!(int_len(1 << 40), 10);
        assert_eq!(str_len(b""), 2);
        assert_eq!(str_len(b"v"), 3);
        assert_eq!(str_len(&[b'x'; 63]), 65);
        assert_eq!(str_len(&[b'x'; 64]), 67);
        assert_eq!(str_len(&[b'x'; 125]), 128);
        assert_eq!(str_len(&[b'x'; 126]), 130);
        assert_eq!(str_len(&[b'x'; 4096]), 4101 + 2);
        assert_eq!(str_len(b"12"), 2);
    }

    #[test]
    fn a_node_of_one_small_entry_has_redis_s_size() {
        // XADD s 1-1 f v: header 7, count 2, deleted 2, master count 2, "f" 3, terminator 2,
        // flags 2, deltas 2 + 2, "v" 3, element count 2 = 29.
        let n = TailNode::open(0, StreamId::new(1, 1), &fv(&[("f", "v")]));
        assert_eq!(n.listpack_bytes(), 29);
        let mut m = n;
        m.add(StreamId::new(2, 1), &fv(&[("f", "v")]));
        assert_eq!(m.listpack_bytes(), 29 + 11);
        let mut other = n;
        other.add(StreamId::new(2, 1), &fv(&[("g", "v")]));
        // Other fields: the count and the name are written too.
        assert_eq!(other.listpack_bytes(), 29 + 11 + 5);
    }

    #[test]
    fn a_node_closes_at_the_entry_or_byte_limit() {
        let limits = NodeLimits {
            max_entries: 3,
            max_bytes: 4096,
        };
        let f = fv(&[("f", "v")]);
        let mut n = TailNode::open(0, StreamId::new(1, 0), &f);
        for ms in 2..=3 {
            assert!(n.has_room(&f, limits));
            n.add(StreamId::new(ms, 0), &f);
        }
        assert!(!n.has_room(&f, limits), "three entries");
        let big = fv(&[("f", &"x".repeat(4096 - 29))]);
        let n = TailNode::open(0, StreamId::new(1, 0), &f);
        assert!(
            !n.has_room(&big, NodeLimits::default()),
            "29 + 1 + 4067 >= 4096"
        );
        let fits = fv(&[("f", &"x".repeat(4096 - 31))]);
        assert!(n.has_room(&fits, NodeLimits::default()));
    }
}
