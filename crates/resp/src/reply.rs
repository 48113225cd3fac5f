//! Replies: what a command answers, as plain data, and its encoding in the protocol version
//! the connection speaks (RESP2 until `HELLO 3`, then RESP3).
//!
//! Owns the reply shapes that differ between the versions (maps, sets, doubles, booleans and
//! nulls flatten into RESP2 the way Redis flattens them). Encoding goes through
//! `redis-protocol`'s frame encoders, except RESP2's null array (`*-1`), which that crate has
//! no frame for. It must never decide what a command answers, only how it is written.

use bytes::{BufMut, Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;

/// The protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, the default.
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// A reply, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A simple string (`+...`).
    Simple(Bytes),
    /// An error (`-...`): the whole text, starting with its code (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    /// An integer.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// The null bulk string (RESP2 `$-1`, RESP3 `_`).
    Nil,
    /// The null array (RESP2 `*-1`, RESP3 `_`).
    NilArray,
    /// An array.
    Array(Vec<Reply>),
    /// A map (RESP2: a flat array of key, value, key, value...).
    Map(Vec<(Reply, Reply)>),
    /// A set (RESP2: an array).
    Set(Vec<Reply>),
    /// A double (RESP2: a bulk string, as Redis formats it).
    Double(f64),
    /// A boolean (RESP2: the integer 1 or 0).
    Bool(bool),
    /// A verbatim string with its three-letter format (`txt`); RESP2: a bulk string.
    Verbatim(&'static str, Bytes),
}

impl Reply {
    /// A bulk string of `s`.
    pub fn bulk(s: impl Into<Bytes>) -> Reply {
        Reply::Bulk(s.into())
    }

    /// A map entry named by a constant (XINFO's and HELLO's fields).
    pub fn field(name: &'static str, value: Reply) -> (Reply, Reply) {
        (Reply::bulk(name), value)
    }

    /// A simple string of a constant.
    pub fn simple(s: &'static str) -> Reply {
        Reply::Simple(Bytes::from_static(s.as_bytes()))
    }

    /// An error `ERR <text>`.
    pub fn err(text: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {text}"))
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the encoding of this reply in `protocol` to `out`. Consumes the reply: its
    /// strings move into the frames instead of being shared with them.
    pub fn encode(self, protocol: Protocol, out: &mut BytesMut) {
        // Encoding only fails for frames these conversions never build (streamed or
        // attribute-bearing ones), so a failure is a bug here: reported, never sent half-way.
        let result = match protocol {
            Protocol::Resp2 => {
                if self.has_null_array() {
                    // redis-protocol's RESP2 frames have no null array: written by hand.
                    self.encode_resp2_by_hand(out);
                    Ok(0)
                } else {
                    redis_protocol::resp2::encode::extend_encode(out, &self.into_resp2(), false)
                }
            }
            Protocol::Resp3 => redis_protocol::resp3::encode::complete::extend_encode(
                out,
                &self.into_resp3(),
                false,
            ),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "reply encoding failed");
            out.put_slice(b"-ERR reply encoding failed\r\n");
        }
    }

    fn has_null_array(&self) -> bool {
        match self {
            Reply::NilArray => true,
            Reply::Array(items) | Reply::Set(items) => items.iter().any(Reply::has_null_array),
            Reply::Map(pairs) => pairs
                .iter()
                .any(|(k, v)| k.has_null_array() || v.has_null_array()),
            _ => false,
        }
    }

    fn into_resp2(self) -> Frame2 {
        match self {
            Reply::Ok => Frame2::SimpleString(Bytes::from_static(b"OK")),
            Reply::Simple(s) => Frame2::SimpleString(s),
            Reply::Error(e) => Frame2::Error(sanitize(&e).into()),
            Reply::Int(n) => Frame2::Integer(n),
            Reply::Bulk(b) | Reply::Verbatim(_, b) => Frame2::BulkString(b),
            Reply::Nil | Reply::NilArray => Frame2::Null,
            Reply::Array(items) | Reply::Set(items) => {
                Frame2::Array(items.into_iter().map(Reply::into_resp2).collect())
            }
            Reply::Map(pairs) => Frame2::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| [k.into_resp2(), v.into_resp2()])
                    .collect(),
            ),
            Reply::Double(d) => Frame2::BulkString(Bytes::from(format_double(d))),
            Reply::Bool(b) => Frame2::Integer(i64::from(b)),
        }
    }

    /// RESP2 written directly, for a reply holding a null array somewhere.
    fn encode_resp2_by_hand(self, out: &mut BytesMut) {
        match self {
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) | Reply::Set(items) => {
                out.put_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.encode_resp2_by_hand(out);
                }
            }
            Reply::Map(pairs) => {
                out.put_slice(format!("*{}\r\n", pairs.len() * 2).as_bytes());
                for (k, v) in pairs {
                    k.encode_resp2_by_hand(out);
                    v.encode_resp2_by_hand(out);
                }
            }
            other => {
                if let Err(e) =
                    redis_protocol::resp2::encode::extend_encode(out, &other.into_resp2(), false)
                {
                    tracing::error!(error = %e, "reply encoding failed");
                }
            }
        }
    }

    fn into_resp3(self) -> Frame3 {
        match self {
            Reply::Ok => Frame3::SimpleString {
                data: Bytes::from_static(b"OK"),
                attributes: None,
            },
            Reply::Simple(s) => Frame3::SimpleString {
                data: s,
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: sanitize(&e).into(),
                attributes: None,
            },
            Reply::Int(n) => Frame3::Number {
                data: n,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b,
                attributes: None,
            },
            Reply::Verbatim(format, b) => Frame3::VerbatimString {
                data: b,
                format: match format {
                    "mkd" => redis_protocol::resp3::types::VerbatimStringFormat::Markdown,
                    _ => redis_protocol::resp3::types::VerbatimStringFormat::Text,
                },
                attributes: None,
            },
            Reply::Nil | Reply::NilArray => Frame3::Null,
            Reply::Array(items) => Frame3::Array {
                data: items.into_iter().map(Reply::into_resp3).collect(),
                attributes: None,
            },
            Reply::Set(items) => Frame3::Set {
                data: items.into_iter().map(Reply::into_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => Frame3::Map {
                data: pairs
                    .into_iter()
                    .map(|(k, v)| (k.into_resp3(), v.into_resp3()))
                    .collect(),
                attributes: None,
            },
            Reply::Double(d) => Frame3::Double {
                data: d,
                attributes: None,
            },
            Reply::Bool(b) => Frame3::Boolean {
                data: b,
                attributes: None,
            },
        }
    }
}

/// An error or status text on one line: Redis replaces `\r` and `\n` with spaces.
fn sanitize(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// A double as Redis writes it in RESP2 bulk strings (`%.17g`, `inf`, `-inf`).
fn format_double(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf" } else { "-inf" }.into();
    }
    if d == d.trunc() && d.abs() < 1e17 {
        return format!("{}", d as i64);
    }
    format!("{d}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, p: Protocol) -> Vec<u8> {
        let mut b = BytesMut::new();
        r.clone().encode(p, &mut b);
        b.to_vec()
    }

    #[test]
    fn shapes_in_both_protocols() {
        use Protocol::*;
        assert_eq!(enc(&Reply::Ok, Resp2), b"+OK\r\n");
        assert_eq!(enc(&Reply::Nil, Resp2), b"$-1\r\n");
        assert_eq!(enc(&Reply::NilArray, Resp2), b"*-1\r\n");
        assert_eq!(enc(&Reply::Nil, Resp3), b"_\r\n");
        assert_eq!(enc(&Reply::NilArray, Resp3), b"_\r\n");
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Int(1))]);
        assert_eq!(enc(&map, Resp2), b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&map, Resp3), b"%1\r\n$1\r\na\r\n:1\r\n");
        let nested = Reply::Array(vec![Reply::Int(1), Reply::NilArray, Reply::bulk("x")]);
        assert_eq!(enc(&nested, Resp2), b"*3\r\n:1\r\n*-1\r\n$1\r\nx\r\n");
        assert_eq!(
            enc(&Reply::Error("ERR a\r\nb".into()), Resp2),
            b"-ERR a  b\r\n"
        );
        assert_eq!(enc(&Reply::Bool(true), Resp2), b":1\r\n");
        assert_eq!(enc(&Reply::Bool(true), Resp3), b"#t\r\n");
        assert_eq!(enc(&Reply::Double(1.5), Resp2), b"$3\r\n1.5\r\n");
    }
}
