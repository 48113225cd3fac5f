//! The little-endian byte codec the engine's own encodings share (engine state, apply
//! journals, group commands): writers that append fields, and a reader that checks every
//! length and count against the bytes that hold it, so decoding never panics and never
//! allocates more than the input could describe.

use bytes::Bytes;

use crate::store::StreamId;

/// Appends a u32 length and the bytes.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends a stream ID: `ms` u64, `seq` u64.
pub fn put_id(out: &mut Vec<u8>, id: StreamId) {
    out.extend_from_slice(&id.ms.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
}

/// Appends a u32 count, then each pair as two `put_bytes`.
pub fn put_pairs(out: &mut Vec<u8>, pairs: &[(Bytes, Bytes)]) {
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        put_bytes(out, k);
        put_bytes(out, v);
    }
}

/// Reads fields in order; every error says where the bytes ran out or went wrong.
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Reads `b` from its start.
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b, at: 0 }
    }

    /// Whether every byte was read.
    pub fn finished(&self) -> bool {
        self.at == self.b.len()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.b.len() - self.at
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.b.len())
            .ok_or_else(|| format!("the bytes end inside a field at byte {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// A byte that must be 0 or 1.
    pub fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            f => Err(format!("flag {f} at byte {}", self.at - 1)),
        }
    }

    /// A u16.
    pub fn u16(&mut self) -> Result<u16, String> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }

    /// A u32.
    pub fn u32(&mut self) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    /// A u64.
    pub fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A stream ID.
    pub fn id(&mut self) -> Result<StreamId, String> {
        Ok(StreamId::new(self.u64()?, self.u64()?))
    }

    /// A u32 length and that many bytes (copied out).
    pub fn bytes(&mut self) -> Result<Bytes, String> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }

    /// A u32 count of items of at least `min` bytes each, refused when the rest of the input
    /// could not hold them.
    pub fn count(&mut self, min: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n > self.remaining() / min.max(1) {
            return Err(format!("count {n} exceeds the bytes left"));
        }
        Ok(n)
    }

    /// What `put_pairs` wrote.
    pub fn pairs(&mut self) -> Result<Vec<(Bytes, Bytes)>, String> {
        let n = self.count(8)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((self.bytes()?, self.bytes()?));
        }
        Ok(out)
    }
}
