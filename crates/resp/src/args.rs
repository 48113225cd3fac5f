//! Reading command arguments the way Redis 7.0 reads them: integers (`string2ll`), stream IDs
//! (`streamGenericParseIDOrReply`), keywords (case-insensitive), with Redis's error replies.
//!
//! Owns argument syntax only; it must never look at the engine or decide what a command does.

use bytes::Bytes;
use manifold_core::store::StreamId;

use crate::reply::Reply;

/// `-ERR value is not an integer or out of range`.
pub fn not_an_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

/// `-ERR syntax error`.
pub fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

/// `-ERR Invalid stream ID specified as stream command argument`.
pub fn invalid_stream_id() -> Reply {
    Reply::err("Invalid stream ID specified as stream command argument")
}

/// Whether `arg` is `keyword`, ignoring ASCII case.
pub fn is(arg: &[u8], keyword: &str) -> bool {
    arg.eq_ignore_ascii_case(keyword.as_bytes())
}

/// A signed 64-bit integer exactly as Redis's `string2ll` takes it: optional `-`, digits, no
/// leading zeros (but `0`), no `+`, no spaces, no `-0`, at most 20 characters.
pub fn parse_i64(arg: &[u8]) -> Option<i64> {
    if arg.is_empty() || arg.len() > 20 {
        return None;
    }
    if arg == b"0" {
        return Some(0);
    }
    let (negative, digits) = match arg.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, arg),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    if negative {
        if v > i64::MAX as u64 + 1 {
            return None;
        }
        Some((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// [`parse_i64`] or the Redis error reply.
pub fn int(arg: &[u8]) -> Result<i64, Reply> {
    parse_i64(arg).ok_or_else(not_an_integer)
}

/// An unsigned 64-bit integer as Redis's `string2ull` takes it: `string2ll` when that works
/// (negative refused), else `strtoull` over the whole string (leading spaces and a `+` taken,
/// values up to 2^64 - 1).
pub fn parse_u64(arg: &[u8]) -> Option<u64> {
    if let Some(v) = parse_i64(arg) {
        return u64::try_from(v).ok();
    }
    let s = arg.iter().position(|c| !c.is_ascii_whitespace())?;
    let rest = &arg[s..];
    let (negative, digits) = match rest.split_first() {
        Some((b'+', d)) => (false, d),
        Some((b'-', d)) => (true, d),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    // strtoull negates a `-`: only `-0` (any number of zeros) stays in range here.
    if negative && v != 0 {
        return None;
    }
    Some(v)
}

/// How a stream ID argument may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdForm {
    /// `ms-seq` or `ms` (the sequence given as `missing_seq`); `-` and `+` refused.
    Strict,
    /// Also `-` (0-0) and `+` (the largest ID): range bounds.
    Interval,
}

/// A stream ID as `streamGenericParseIDOrReply` reads it; `ms` alone takes `missing_seq`.
pub fn stream_id(arg: &[u8], form: IdForm, missing_seq: u64) -> Result<StreamId, Reply> {
    parse_stream_id(arg, form, missing_seq).ok_or_else(invalid_stream_id)
}

fn parse_stream_id(arg: &[u8], form: IdForm, missing_seq: u64) -> Option<StreamId> {
    if arg.len() > 127 {
        return None;
    }
    match (arg, form) {
        (b"-", IdForm::Interval) => return Some(StreamId::new(0, 0)),
        (b"+", IdForm::Interval) => return Some(StreamId::new(u64::MAX, u64::MAX)),
        (b"-" | b"+", IdForm::Strict) => return None,
        _ => {}
    }
    match arg.iter().position(|&c| c == b'-') {
        Some(dash) => Some(StreamId::new(
            parse_u64(&arg[..dash])?,
            parse_u64(&arg[dash + 1..])?,
        )),
        None => Some(StreamId::new(parse_u64(arg)?, missing_seq)),
    }
}

/// The ID argument of XADD: `*`, `ms-*`, `ms-seq` or `ms` (seq 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddId {
    /// `*`.
    Auto,
    /// `ms-*`.
    AutoSeq(u64),
    /// An explicit ID.
    Explicit(StreamId),
}

/// Reads XADD's ID argument.
pub fn add_id(arg: &[u8]) -> Result<AddId, Reply> {
    if arg == b"*" {
        return Ok(AddId::Auto);
    }
    if let Some(ms) = arg.strip_suffix(b"-*") {
        if arg.len() > 127 {
            return Err(invalid_stream_id());
        }
        return parse_u64(ms)
            .map(AddId::AutoSeq)
            .ok_or_else(invalid_stream_id);
    }
    stream_id(arg, IdForm::Strict, 0).map(AddId::Explicit)
}

/// A range bound of XRANGE/XREVRANGE: an ID (`-`, `+`, `ms`, `ms-seq`), exclusive if it
/// starts with `(` — then strictly an ID, as Redis parses it (`(-` and `(+` are invalid).
/// `missing_seq` is 0 for a start, `u64::MAX` for an end.
pub fn range_bound(arg: &[u8], missing_seq: u64) -> Result<(StreamId, bool), Reply> {
    match arg.strip_prefix(b"(").filter(|rest| !rest.is_empty()) {
        Some(rest) => Ok((stream_id(rest, IdForm::Strict, missing_seq)?, true)),
        None => Ok((stream_id(arg, IdForm::Interval, missing_seq)?, false)),
    }
}

/// The ID right after `id`, if any (`streamIncrID`).
pub fn next_id(id: StreamId) -> Option<StreamId> {
    if id.seq < u64::MAX {
        Some(StreamId::new(id.ms, id.seq + 1))
    } else if id.ms < u64::MAX {
        Some(StreamId::new(id.ms + 1, 0))
    } else {
        None
    }
}

/// The ID right before `id`, if any (`streamDecrID`).
pub fn prev_id(id: StreamId) -> Option<StreamId> {
    if id.seq > 0 {
        Some(StreamId::new(id.ms, id.seq - 1))
    } else if id.ms > 0 {
        Some(StreamId::new(id.ms - 1, u64::MAX))
    } else {
        None
    }
}

/// A stream ID as Redis prints it (`<ms>-<seq>`), made in one allocation of its exact size.
pub fn id_bulk(id: StreamId) -> Reply {
    let mut buf = [0u8; ID_TEXT_MAX];
    let at = id_text(id, &mut buf, ID_TEXT_MAX);
    Reply::Bulk(Bytes::copy_from_slice(&buf[at..]))
}

/// Longest stream ID text: two u64s of up to 20 digits and the dash.
const ID_TEXT_MAX: usize = 41;

/// Prints `id` as Redis does (`<ms>-<seq>`) in `buf`, ending just before `end`; returns where
/// it starts.
fn id_text(id: StreamId, buf: &mut [u8], end: usize) -> usize {
    let at = digits_before(id.seq, buf, end) - 1;
    buf[at] = b'-';
    digits_before(id.ms, buf, at)
}

/// Writes `id` as a bulk string reply (`$<len>\r\n<ms>-<seq>\r\n`, the same in RESP2 and
/// RESP3) straight into `out`: an XADD's answer without a reply value in between. Built back
/// to front in one stack buffer (the length is known once the ID is printed) and copied out
/// once.
pub fn put_id_bulk(id: StreamId, out: &mut bytes::BytesMut) {
    let mut buf = [0u8; ID_TEXT_MAX + 7];
    let end = buf.len() - 2;
    buf[end..].copy_from_slice(b"\r\n");
    let mut at = id_text(id, &mut buf, end);
    let len = end - at;
    at -= 2;
    buf[at..at + 2].copy_from_slice(b"\r\n");
    at = digits_before(len as u64, &mut buf, at) - 1;
    buf[at] = b'$';
    out.extend_from_slice(&buf[at..]);
}

/// "00" to "99", each two bytes.
const DIGIT_PAIRS: [u8; 200] = {
    let mut pairs = [0u8; 200];
    let mut n = 0;
    while n < 100 {
        pairs[2 * n] = b'0' + (n / 10) as u8;
        pairs[2 * n + 1] = b'0' + (n % 10) as u8;
        n += 1;
    }
    pairs
};

/// Writes `n` in decimal to `buf` ending just before `end`; returns where it starts.
fn digits_before(mut n: u64, buf: &mut [u8], mut end: usize) -> usize {
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        end -= 2;
        buf[end..end + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        end -= 2;
        buf[end..end + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        end -= 1;
        buf[end] = b'0' + n as u8;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_redis_prints_them() {
        for (ms, seq) in [
            (0, 0),
            (0, 1),
            (1, 0),
            (9, 10),
            (99, 100),
            (100, 99),
            (12_345, 678_901),
            (1_700_000_000_000, 42),
            (u64::MAX, u64::MAX),
        ] {
            let id = StreamId::new(ms, seq);
            assert_eq!(id_bulk(id), Reply::Bulk(Bytes::from(format!("{ms}-{seq}"))));
            // Written straight out, it is the bulk string either protocol encodes.
            for protocol in [crate::reply::Protocol::Resp2, crate::reply::Protocol::Resp3] {
                let mut direct = bytes::BytesMut::new();
                put_id_bulk(id, &mut direct);
                let mut encoded = bytes::BytesMut::new();
                id_bulk(id).encode(protocol, &mut encoded);
                assert_eq!(direct, encoded, "{ms}-{seq}");
            }
        }
    }

    #[test]
    fn integers_follow_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-5"), Some(-5));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"1.5",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"+7"), Some(7));
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"18446744073709551616"), None);
    }

    #[test]
    fn stream_ids_as_redis_reads_them() {
        let id = |a: &[u8]| stream_id(a, IdForm::Interval, 0).ok();
        assert_eq!(id(b"5"), Some(StreamId::new(5, 0)));
        assert_eq!(id(b"5-3"), Some(StreamId::new(5, 3)));
        assert_eq!(id(b"-"), Some(StreamId::new(0, 0)));
        assert_eq!(id(b"+"), Some(StreamId::new(u64::MAX, u64::MAX)));
        assert_eq!(id(b"5-"), None);
        assert_eq!(id(b"-5"), None);
        assert_eq!(id(b"a-1"), None);
        assert_eq!(stream_id(b"+", IdForm::Strict, 0).ok(), None);
        assert_eq!(add_id(b"*").ok(), Some(AddId::Auto));
        assert_eq!(add_id(b"7-*").ok(), Some(AddId::AutoSeq(7)));
        assert_eq!(
            add_id(b"7").ok(),
            Some(AddId::Explicit(StreamId::new(7, 0)))
        );
        assert_eq!(
            range_bound(b"(5", u64::MAX).ok(),
            Some((StreamId::new(5, u64::MAX), true))
        );
    }
}
