//! Turning a client's bytes into commands: the incremental Redis request decoder.
//!
//! Owns the framing of requests as Redis 7.0 reads them (`processMultibulkBuffer`,
//! `processInlineBuffer` in networking.c, `sdssplitargs` in sds.c, `string2ll` in util.c), with
//! the same error texts. It must never panic, read past the buffer, allocate beyond its
//! [`Limits`] (a claimed count or length reserves nothing beyond a small cap), or execute
//! anything: a command leaves here as plain arguments.
//!
//! Incremental: a header line is searched once (the search resumes where the last call
//! stopped) and a bulk payload is waited for by its length, so a 500 MB bulk arriving in 64 KiB
//! reads is never re-scanned. Between calls the caller may only append to the buffer.
//!
//! Where this differs from Redis 7.0, on purpose:
//! - Redis skips the byte after a header line's `\r` and the two bytes after a bulk payload
//!   without looking at them. Here they must be `\n` and `\r\n`; otherwise the error is
//!   `invalid multibulk length` (count line) or `invalid bulk length` (length line, payload):
//!   the declared length did not match the bytes, and framing on would mis-frame silently.
//! - Redis finds lines with `strchr`, which stops at a NUL byte, so a line holding a NUL never
//!   completes until the 64 KiB limit trips. Here a NUL is an ordinary byte: in a header line
//!   it makes the number invalid, in an inline line it is part of an argument.
//! - `expected '$', got '%c'` shows `\r`/`\n` as a space (as Redis's reply sanitising does),
//!   printable ASCII as itself and any other byte as `\xHH` (Redis sends the raw byte, or cuts
//!   the message at a NUL); an error text must be UTF-8.
//! - The query buffer limit counts what an incomplete command holds: the unparsed buffer, plus
//!   the bytes of the arguments already split off it (they stay pinned in the read buffer) and
//!   one [`Bytes`] handle per argument. Redis counts only its unparsed query buffer and closes
//!   the client without a reply, logging "Closing client that reached max query buffer
//!   length"; here it is [`ProtocolError::QueryBufferLimit`], which the connection may reply
//!   before closing like any other protocol error.
//! - The `unauthenticated multibulk length` / `unauthenticated bulk length` checks apply when
//!   the connection says the client has not authenticated yet
//!   ([`Decoder::set_unauthenticated`]).

use bytes::{Buf, Bytes, BytesMut};

/// A multibulk's argument vector is never pre-allocated beyond this many slots (as Redis).
const PREALLOC_ARGS: usize = 1024;
/// Arguments a command may have to be read by the fast path (XADD with a few fields has 5–9).
const FAST_ARGS: usize = 16;
/// The largest argument vector [`Decoder::recycle`] keeps.
const RECYCLE_ARGS: usize = 16;
/// What one decoded argument costs beyond its bytes, counted against the query buffer limit.
const ARG_HANDLE: usize = std::mem::size_of::<Bytes>();

/// Every bound the decoder enforces; each is a Redis config value or constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string (`proto-max-bulk-len`).
    pub max_bulk_len: usize,
    /// Most arguments in one multibulk (Redis: `INT_MAX`).
    pub max_multibulk_len: usize,
    /// Longest inline request, and longest `*`/`$` header line, without its newline
    /// (`PROTO_INLINE_MAX_SIZE`).
    pub max_inline_len: usize,
    /// Most bytes an incomplete command may hold (`client-query-buffer-limit`).
    pub max_query_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: i32::MAX as usize,
            max_inline_len: 64 * 1024,
            max_query_buffer: 1024 * 1024 * 1024,
        }
    }
}

/// A request that cannot be read: the connection replies `-ERR <Display>` and closes.
/// Each text is Redis 7.0's reply without the leading `ERR `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A `*` count line longer than `max_inline_len` with no `\r` yet.
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A count that is not a number, is above `max_multibulk_len`, or whose line is not `\r\n`.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `$` length line longer than `max_inline_len` with no `\r` yet.
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// A multibulk argument that does not start with `$`.
    #[error("Protocol error: expected '$', got '{}'", shown(*.0))]
    ExpectedDollar(u8),
    /// A length that is not a number, is negative or above `max_bulk_len`, or a line or
    /// payload not followed by `\r\n`.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An inline request longer than `max_inline_len` with no `\n` yet.
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    /// An inline request with an unclosed quote, or a closing quote not followed by a space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// An incomplete command holding more than `max_query_buffer` bytes.
    #[error("Protocol error: client reached max query buffer length")]
    QueryBufferLimit,
    /// Before authentication: more than 10 arguments.
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// Before authentication: a bulk longer than 16 KiB.
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
}

/// Arguments an unauthenticated client may send at most (Redis 7.0).
const UNAUTHENTICATED_ARGS: usize = 10;
/// Longest bulk an unauthenticated client may send (Redis 7.0).
const UNAUTHENTICATED_BULK: usize = 16_384;

/// A byte as `%c` would print it in a one-line error reply.
fn shown(byte: u8) -> String {
    match byte {
        b'\r' | b'\n' => " ".to_owned(),
        0x20..=0x7e => char::from(byte).to_string(),
        _ => format!("\\x{byte:02x}"),
    }
}

/// A multibulk being read: the arguments so far and what they hold.
#[derive(Debug)]
struct Partial {
    /// Bulks still to read, including one whose payload is awaited.
    remaining: usize,
    args: Vec<Bytes>,
    /// Bytes consumed for this command so far, plus one handle per argument.
    held: usize,
}

#[derive(Debug)]
enum State {
    /// Between commands: the next byte decides multibulk (`*`) or inline.
    Idle,
    /// Inside a multibulk, waiting for a `$<len>` line.
    Multibulk(Partial),
    /// Inside a multibulk, the `$<len>` line read: waiting for `len` bytes and `\r\n`.
    Bulk { partial: Partial, len: usize },
}

/// What one step of the state machine decided.
enum Step {
    Command(Vec<Bytes>),
    Continue,
    NeedMore,
}

/// The incremental decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// The client has not authenticated: Redis's much smaller limits apply.
    unauthenticated: bool,
    state: State,
    /// Bytes at the front of the buffer already searched for the current line's terminator.
    scanned: usize,
    /// An argument vector given back by the caller ([`Decoder::recycle`]), empty, for the
    /// next multibulk: a pipeline of XADDs allocates none.
    spare: Vec<Bytes>,
}

impl Decoder {
    /// A decoder at the start of a connection's stream.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            unauthenticated: false,
            state: State::Idle,
            scanned: 0,
            spare: Vec::new(),
        }
    }

    /// Gives back a command's argument vector once the caller is done with it: the next
    /// multibulk reuses its room. One of more than [`RECYCLE_ARGS`] slots is dropped instead
    /// (an idle connection keeps little).
    pub fn recycle(&mut self, mut args: Vec<Bytes>) {
        if args.capacity() <= RECYCLE_ARGS {
            args.clear();
            self.spare = args;
        }
    }

    /// Whether the client is still to authenticate: then, as Redis 7.0, a request may hold at
    /// most 10 arguments and bulks of at most 16 KiB (`Protocol error: unauthenticated ...`).
    pub fn set_unauthenticated(&mut self, unauthenticated: bool) {
        self.unauthenticated = unauthenticated;
    }

    /// Takes the next complete command from `buf` (a bytes::BytesMut the connection reads
    /// into), consuming its bytes; Ok(None) when more bytes are needed (keep what's there), Err
    /// on a protocol error (the connection must reply the error and close).
    ///
    /// Empty commands (`*0`, `*-1`, a blank inline line) are consumed and skipped. Bulk
    /// arguments are split out of `buf` without copying; inline arguments are fresh buffers.
    /// After an error the decoder is back at its start, but the stream is lost: close.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        if matches!(self.state, State::Idle)
            && let Some(args) = self.whole_multibulk(buf)
        {
            return Ok(Some(args));
        }
        loop {
            let step = match std::mem::replace(&mut self.state, State::Idle) {
                State::Idle => self.start(buf),
                State::Multibulk(partial) => self.bulk_header(buf, partial),
                State::Bulk { partial, len } => self.bulk_payload(buf, partial, len),
            };
            match step {
                Ok(Step::Command(args)) => return Ok(Some(args)),
                Ok(Step::Continue) => {}
                Ok(Step::NeedMore) => {
                    let held = match &self.state {
                        State::Idle => 0,
                        State::Multibulk(partial) | State::Bulk { partial, .. } => partial.held,
                    };
                    if held.saturating_add(buf.len()) > self.limits.max_query_buffer {
                        return Err(self.fail(ProtocolError::QueryBufferLimit));
                    }
                    return Ok(None);
                }
                Err(error) => return Err(self.fail(error)),
            }
        }
    }

    /// The fast path, for the common case of a pipeline: a multibulk already whole in `buf`,
    /// within every limit, read in one pass and split off the buffer once (each argument a
    /// slice of that one piece). `None` for anything else — not whole yet, an error, an empty
    /// or huge count — which the state machine then reads, with its errors, as before.
    fn whole_multibulk(&mut self, buf: &mut BytesMut) -> Option<Vec<Bytes>> {
        let b: &[u8] = buf;
        if b.first() != Some(&b'*') {
            return None;
        }
        let (count, mut at) = header_number(b, 1)?;
        let count = Some(count).filter(|&c| {
            (1..=FAST_ARGS).contains(&c)
                && c <= self.limits.max_multibulk_len
                && !(self.unauthenticated && c > UNAUTHENTICATED_ARGS)
        })?;
        let mut spans = [(0usize, 0usize); FAST_ARGS];
        for span in spans.iter_mut().take(count) {
            if b.get(at) != Some(&b'$') {
                return None;
            }
            let (len, start) = header_number(b, at + 1)?;
            let len = Some(len).filter(|&len| {
                len <= self.limits.max_bulk_len
                    && !(self.unauthenticated && len > UNAUTHENTICATED_BULK)
            })?;
            let end = start.checked_add(len)?;
            if b.get(end..end.checked_add(2)?) != Some(&b"\r\n"[..]) {
                return None;
            }
            *span = (start, end);
            at = end + 2;
        }
        let whole = buf.split_to(at).freeze();
        self.scanned = 0;
        let mut args = std::mem::take(&mut self.spare);
        args.reserve(count);
        args.extend(spans[..count].iter().map(|&(a, z)| whole.slice(a..z)));
        Some(args)
    }

    fn fail(&mut self, error: ProtocolError) -> ProtocolError {
        self.state = State::Idle;
        self.scanned = 0;
        error
    }

    fn start(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        match buf.first() {
            None => Ok(Step::NeedMore),
            Some(b'*') => self.multibulk_header(buf),
            Some(_) => self.inline(buf),
        }
    }

    /// `*<count>\r\n`: a count <= 0 is an empty command, skipped.
    fn multibulk_header(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        let Some(cr) = self.header_line(buf, ProtocolError::TooBigMultibulkCount)? else {
            return Ok(Step::NeedMore);
        };
        let count = buf
            .get(1..cr)
            .and_then(string2ll)
            .filter(|_| buf.get(cr + 1) == Some(&b'\n'))
            .ok_or(ProtocolError::InvalidMultibulkLength)?;
        let Ok(count) = usize::try_from(count) else {
            self.consume(buf, cr + 2);
            return Ok(Step::Continue);
        };
        if count > self.limits.max_multibulk_len {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        if self.unauthenticated && count > UNAUTHENTICATED_ARGS {
            return Err(ProtocolError::UnauthenticatedMultibulkLength);
        }
        self.consume(buf, cr + 2);
        if count == 0 {
            return Ok(Step::Continue);
        }
        let mut args = std::mem::take(&mut self.spare);
        args.reserve(count.min(PREALLOC_ARGS));
        self.state = State::Multibulk(Partial {
            remaining: count,
            args,
            held: cr + 2,
        });
        Ok(Step::Continue)
    }

    /// `$<len>\r\n`.
    fn bulk_header(
        &mut self,
        buf: &mut BytesMut,
        mut partial: Partial,
    ) -> Result<Step, ProtocolError> {
        let Some(cr) = self.header_line(buf, ProtocolError::TooBigBulkCount)? else {
            self.state = State::Multibulk(partial);
            return Ok(Step::NeedMore);
        };
        match buf.first() {
            Some(b'$') => {}
            other => return Err(ProtocolError::ExpectedDollar(other.copied().unwrap_or(0))),
        }
        let len = buf
            .get(1..cr)
            .and_then(string2ll)
            .filter(|_| buf.get(cr + 1) == Some(&b'\n'))
            .and_then(|len| usize::try_from(len).ok())
            .filter(|&len| len <= self.limits.max_bulk_len)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        if self.unauthenticated && len > UNAUTHENTICATED_BULK {
            return Err(ProtocolError::UnauthenticatedBulkLength);
        }
        self.consume(buf, cr + 2);
        partial.held = partial.held.saturating_add(cr + 2);
        self.state = State::Bulk { partial, len };
        Ok(Step::Continue)
    }

    /// `len` payload bytes, then `\r\n`.
    fn bulk_payload(
        &mut self,
        buf: &mut BytesMut,
        mut partial: Partial,
        len: usize,
    ) -> Result<Step, ProtocolError> {
        let end = len.saturating_add(2);
        let Some(crlf) = buf.get(len..end) else {
            self.state = State::Bulk { partial, len };
            return Ok(Step::NeedMore);
        };
        if crlf != b"\r\n" {
            return Err(ProtocolError::InvalidBulkLength);
        }
        let arg = buf.split_to(len).freeze();
        self.consume(buf, 2);
        partial.held = partial.held.saturating_add(end + ARG_HANDLE);
        partial.args.push(arg);
        partial.remaining -= 1;
        if partial.remaining == 0 {
            return Ok(Step::Command(partial.args));
        }
        self.state = State::Multibulk(partial);
        Ok(Step::Continue)
    }

    /// A line up to `\n` (a `\r` before it dropped), split like `sdssplitargs`.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        let Some(newline) = self.find(buf, b'\n') else {
            if buf.len() > self.limits.max_inline_len {
                return Err(ProtocolError::TooBigInline);
            }
            return Ok(Step::NeedMore);
        };
        let mut line = buf.get(..newline).unwrap_or_default();
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        let args = split_args(line).ok_or(ProtocolError::UnbalancedQuotes)?;
        self.consume(buf, newline + 1);
        if args.is_empty() {
            return Ok(Step::Continue);
        }
        Ok(Step::Command(args))
    }

    /// The `\r` ending the `*`/`$` line at the front of `buf`, once a byte follows it (as
    /// Redis); `too_big` when the line outgrows `max_inline_len` without one.
    fn header_line(
        &mut self,
        buf: &[u8],
        too_big: ProtocolError,
    ) -> Result<Option<usize>, ProtocolError> {
        match self.find(buf, b'\r') {
            Some(cr) if cr + 1 < buf.len() => Ok(Some(cr)),
            Some(_) => Ok(None),
            None if buf.len() > self.limits.max_inline_len => Err(too_big),
            None => Ok(None),
        }
    }

    /// The first `byte` in `buf`, resuming after the bytes earlier calls searched.
    fn find(&mut self, buf: &[u8], byte: u8) -> Option<usize> {
        let from = self.scanned.min(buf.len());
        let found = buf.get(from..)?.iter().position(|&b| b == byte);
        match found {
            Some(at) => Some(from + at),
            None => {
                self.scanned = buf.len();
                None
            }
        }
    }

    fn consume(&mut self, buf: &mut BytesMut, n: usize) {
        buf.advance(n.min(buf.len()));
        self.scanned = 0;
    }
}

/// For the fast path: the number of a `*`/`$` header line whose digits start at `from`, and
/// where the next line starts. Only what [`string2ll`] accepts and is not negative, in at most
/// 18 digits, on a whole line ending in `\r\n`; `None` for anything else (the state machine
/// then reads the line, and refuses it if it must).
fn header_number(b: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut value = usize::from(b.get(from)?.wrapping_sub(b'0'));
    if value > 9 {
        return None;
    }
    let mut at = from + 1;
    loop {
        let digit = b.get(at)?.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        // No leading zero (as string2ll), and no more digits than a usize surely holds.
        if value == 0 || at - from >= 18 {
            return None;
        }
        value = value * 10 + usize::from(digit);
        at += 1;
    }
    (b.get(at..at + 2)? == b"\r\n").then_some((value, at + 2))
}

/// Redis's `string2ll`: an optional `-`, then digits with no leading zero (or just `0`), at
/// most 20 bytes, no sign `+`, no spaces; `None` if it is not exactly that or overflows.
fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let mut value: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(value)
    } else {
        i64::try_from(value).ok()
    }
}

/// C's `isspace` in the C locale.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_value(byte: Option<&u8>) -> Option<u8> {
    char::from(*byte?)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Redis's `sdssplitargs`: blanks separate arguments; `"..."` takes the escapes `\n \r \t \b
/// \a \xHH` and `\<any>` for that byte; `'...'` takes `\'`; a quote may open mid-argument, and
/// a closing quote must be followed by a blank or the end. `None` on unbalanced quotes.
fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|&b| is_space(b)) {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut arg = Vec::new();
        let mut quote = None;
        loop {
            let byte = line.get(i).copied();
            match (quote, byte) {
                (Some(_), None) => return None,
                (Some(q), Some(b)) if b == q => {
                    if line.get(i + 1).is_some_and(|&next| !is_space(next)) {
                        return None;
                    }
                    i += 1;
                    break;
                }
                (Some(b'"'), Some(b'\\')) => {
                    let hex = hex_value(line.get(i + 2)).zip(hex_value(line.get(i + 3)));
                    match (line.get(i + 1), hex) {
                        (Some(b'x'), Some((high, low))) => {
                            arg.push(high * 16 + low);
                            i += 4;
                        }
                        (Some(&escaped), _) => {
                            arg.push(match escaped {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 0x08,
                                b'a' => 0x07,
                                other => other,
                            });
                            i += 2;
                        }
                        (None, _) => {
                            arg.push(b'\\');
                            i += 1;
                        }
                    }
                }
                (Some(_), Some(b'\\')) if line.get(i + 1) == Some(&b'\'') => {
                    arg.push(b'\'');
                    i += 2;
                }
                (Some(_), Some(b)) => {
                    arg.push(b);
                    i += 1;
                }
                (None, None | Some(b' ' | b'\n' | b'\r' | b'\t')) => {
                    i += 1;
                    break;
                }
                (None, Some(b @ (b'"' | b'\''))) => {
                    quote = Some(b);
                    i += 1;
                }
                (None, Some(b)) => {
                    arg.push(b);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(arg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_line_is_searched_once() {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        for _ in 0..1000 {
            buf.extend_from_slice(b"abcdefgh");
            assert_eq!(decoder.decode(&mut buf), Ok(None));
            assert_eq!(
                decoder.scanned,
                buf.len(),
                "the next search starts past these"
            );
        }
        buf.extend_from_slice(b"\n");
        let command = decoder.decode(&mut buf).expect("valid").expect("complete");
        assert_eq!(command.len(), 1);
        assert_eq!(decoder.scanned, 0);
    }

    #[test]
    fn a_whole_multibulk_is_one_piece_and_a_given_back_vector_is_reused() {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf =
            BytesMut::from(&b"*3\r\n$4\r\nXADD\r\n$0\r\n\r\n$2\r\nab\r\n*1\r\n$4\r\nPI"[..]);
        let args = decoder.decode(&mut buf).expect("valid").expect("whole");
        assert_eq!(args, [&b"XADD"[..], b"", b"ab"]);
        assert_eq!(
            &buf[..],
            b"*1\r\n$4\r\nPI",
            "only the first command is taken"
        );
        assert!(matches!(decoder.state, State::Idle));
        let room = args.as_ptr();
        decoder.recycle(args);
        buf.extend_from_slice(b"NG\r\n");
        let args = decoder.decode(&mut buf).expect("valid").expect("whole");
        assert_eq!(args, [&b"PING"[..]]);
        assert_eq!(
            args.as_ptr(),
            room,
            "the vector given back holds the next command"
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_big_bulk_is_awaited_by_its_length() {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"*1\r\n$1000000\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(matches!(decoder.state, State::Bulk { len: 1_000_000, .. }));
        assert!(buf.is_empty(), "the header line is consumed once read");
    }
}
