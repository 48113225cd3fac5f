//! A lean WebSocket client for the fan-out run: the RFC 6455 handshake (the server's
//! `Sec-WebSocket-Accept` checked), masked client frames, and server frames read from one small
//! buffer without a copy. Ten thousand of them on the same two cores as the server: every
//! microsecond the load generator spends per frame is taken from the server it measures
//! (tungstenite's general reader cost this generator about 4 µs a frame in user space).

use anyhow::{Context, bail, ensure};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Frames larger than this are refused (the fan-out's messages are small).
const MAX_FRAME: usize = 1 << 20;

pub struct Socket {
    stream: TcpStream,
    buf: Vec<u8>,
    /// `buf[start..end]` is read and not yet taken.
    start: usize,
    end: usize,
}

/// What a read found.
pub enum Frame<'a> {
    Text(&'a [u8]),
    Close(Option<u16>),
}

impl Socket {
    /// Connects to `addr` (`HOST:PORT`) and upgrades at `path`.
    pub async fn connect(addr: &str, path: &str) -> anyhow::Result<Socket> {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let key = base64::engine::general_purpose::STANDARD.encode(rand_u128().to_le_bytes());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; 4096];
        let mut end = 0;
        let head_end = loop {
            let n = stream.read(&mut buf[end..]).await?;
            ensure!(n > 0, "closed during the handshake");
            end += n;
            if let Some(i) = crate::http::find(&buf[..end], b"\r\n\r\n") {
                break i + 4;
            }
            ensure!(end < buf.len(), "handshake answer too long");
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        ensure!(head.starts_with("http/1.1 101"), "no upgrade: {head}");
        let accept = derive_accept_key(key.as_bytes()).to_ascii_lowercase();
        ensure!(
            head.contains(&format!("sec-websocket-accept: {accept}")),
            "wrong Sec-WebSocket-Accept: {head}"
        );
        Ok(Socket {
            stream,
            buf,
            start: head_end,
            end,
        })
    }

    /// Sends a text frame (masked, as a client must).
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send_frame(0x1, text.as_bytes()).await
    }

    /// Sends a frame, masked.
    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&[(n >> 8) as u8, n as u8]);
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend((0..8).rev().map(|i| (n >> (8 * i)) as u8));
            }
        }
        let mask = (rand_u128() as u32).to_le_bytes();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// The next text or close frame (pings are answered, other frames passed over).
    pub async fn next(&mut self) -> anyhow::Result<Frame<'_>> {
        loop {
            match self.take()? {
                Some((0x1, (a, b))) => return Ok(Frame::Text(&self.buf[a..b])),
                Some((0x8, (a, b))) => {
                    let code = (b - a >= 2)
                        .then(|| u16::from(self.buf[a]) << 8 | u16::from(self.buf[a + 1]));
                    return Ok(Frame::Close(code));
                }
                Some((0x9, (a, b))) => {
                    let ping = self.buf[a..b].to_vec();
                    self.send_frame(0xa, &ping).await?;
                }
                Some(_) => {}
                None => self.fill().await?,
            }
        }
    }

    /// The opcode and payload bounds of the next whole frame in the buffer, taken.
    fn take(&mut self) -> anyhow::Result<Option<(u8, (usize, usize))>> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return Ok(None);
        }
        ensure!(b[0] & 0x80 != 0, "fragmented frames are not expected here");
        ensure!(b[1] & 0x80 == 0, "a server frame must not be masked");
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(b[2]) << 8 | usize::from(b[3]), 4),
            127 if b.len() >= 10 => {
                let n = b[2..10].iter().fold(0u64, |n, &x| n << 8 | u64::from(x));
                (usize::try_from(n)?, 10)
            }
            126 | 127 => return Ok(None),
            n => (usize::from(n), 2),
        };
        ensure!(len <= MAX_FRAME, "a frame of {len} bytes");
        if b.len() < at + len {
            return Ok(None);
        }
        let opcode = b[0] & 0x0f;
        let payload = (self.start + at, self.start + at + len);
        self.start += at + len;
        Ok(Some((opcode, payload)))
    }

    /// Reads more (moving what is left of the buffer to its start first).
    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.end, self.start) = (self.end - self.start, 0);
        }
        if self.end == self.buf.len() {
            self.buf.resize((self.buf.len() * 2).min(MAX_FRAME + 16), 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            bail!("connection closed");
        }
        self.end += n;
        Ok(())
    }
}

/// A random number (from the standard library's randomly seeded hasher: no extra crate).
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u8(1);
    let mut b = state.build_hasher();
    b.write_u8(2);
    u128::from(a.finish()) << 64 | u128::from(b.finish())
}
