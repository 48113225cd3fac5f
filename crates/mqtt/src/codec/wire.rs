//! The field types of MQTT's wire format (spec 1.5 / 3.1.1 1.5): bytes, two- and four-byte
//! integers, variable byte integers, UTF-8 strings, binary data and string pairs — read from
//! one whole packet (a missing byte there is a malformed packet, never "wait for more") and
//! written with their limits checked.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};

/// The largest value a variable byte integer holds (four bytes).
pub const MAX_VARINT: u32 = 268_435_455;

/// Reads the fields of one packet's body.
pub struct Reader {
    buf: Bytes,
}

fn short() -> DecodeError {
    DecodeError::Malformed("the packet ends inside a field")
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(short());
        }
        Ok(self.buf.get_u8())
    }

    // MQTT's integers are big-endian on the wire (spec 1.5.2): the one place the workspace's
    // little-endian rule does not hold.
    #[allow(clippy::big_endian_bytes)]
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    #[allow(clippy::big_endian_bytes)]
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A variable byte integer: at most four bytes, in its shortest form.
    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let (value, used) = match read_varint(&self.buf)? {
            Some(v) => v,
            None => return Err(short()),
        };
        self.buf.advance(used);
        Ok(value)
    }

    /// `n` bytes, shared with the packet.
    pub fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(short());
        }
        Ok(self.buf.split_to(n))
    }

    /// The rest of the packet (a PUBLISH payload).
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary data: a two-byte length, then the bytes.
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A UTF-8 string: valid UTF-8 without U+0000 (spec 1.5.4; 3.1.1 1.5.3).
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let s = std::str::from_utf8(&raw)
            .map_err(|_| DecodeError::Malformed("a string is not valid UTF-8"))?;
        if s.contains('\0') {
            return Err(DecodeError::Malformed("a string contains U+0000"));
        }
        Ok(s.to_owned())
    }

    /// A string pair (v5 user property).
    pub fn pair(&mut self) -> Result<(String, String), DecodeError> {
        Ok((self.string()?, self.string()?))
    }

    /// Nothing may follow the last field.
    pub fn end(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(what))
        }
    }
}

/// A variable byte integer at the start of `buf`: `(value, bytes used)`, or `None` if `buf`
/// ends before it does. More than four bytes, or a longer form than needed (a last byte of
/// 0 after the first), is malformed.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(DecodeError::Malformed(
                    "a variable byte integer is not in its shortest form",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::Malformed(
        "a variable byte integer is longer than four bytes",
    ))
}

/// How many bytes `value` takes as a variable byte integer.
pub fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a variable byte integer (`value` ≤ [`MAX_VARINT`]).
pub fn put_varint(out: &mut BytesMut, value: u32) {
    let mut b = [0u8; 4];
    let n = write_varint(&mut b, value);
    out.put_slice(&b[..n]);
}

/// Writes a variable byte integer into `dst` (room for [`varint_len`] bytes); returns its
/// length.
pub fn write_varint(dst: &mut [u8], mut value: u32) -> usize {
    let mut i = 0;
    loop {
        let mut b = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            b |= 0x80;
        }
        dst[i] = b;
        i += 1;
        if value == 0 {
            return i;
        }
    }
}

/// Checks a string or binary field's length before anything is written.
pub fn check_len(field: &'static str, len: usize) -> Result<(), EncodeError> {
    if len > usize::from(u16::MAX) {
        Err(EncodeError::FieldTooLong(field))
    } else {
        Ok(())
    }
}

/// Writes binary data (length checked by [`check_len`] first).
pub fn put_binary(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

/// The size of a string or binary field on the wire.
pub fn field_len(b: &[u8]) -> usize {
    2 + b.len()
}
