//! A minimal HTTP/1.1 client over one keep-alive TCP connection: requests with a
//! `Content-Length` answer (what every JSON route of Manifold sends), and a streamed response
//! read as raw bytes (Server-Sent Events). Just enough for a load generator that holds ten
//! thousand connections without a client library's per-connection weight.

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection to `addr` (`HOST:PORT`).
pub struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    pub async fn connect(addr: &str) -> anyhow::Result<Http> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends a request and reads its answer: status and body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.send(method, path, body).await?;
        self.response().await
    }

    /// Sends a request without reading the answer (see [`Http::response`]).
    pub async fn send(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<()> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n").into_bytes();
        if !body.is_empty() || method == "POST" {
            req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        Ok(())
    }

    /// The answer to the request sent last.
    pub async fn response(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("header")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .context("status")?
            .parse()
            .context("status")?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .context("no content-length")?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok((status, body))
    }

    /// Reads more bytes of a streamed response into `out` (cleared first); 0 at the end.
    pub async fn read_some(&mut self, out: &mut Vec<u8>) -> anyhow::Result<usize> {
        out.clear();
        if !self.buf.is_empty() {
            out.append(&mut self.buf);
            return Ok(out.len());
        }
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).await?;
        out.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The string value of `"key":"..."` in a JSON text (no escapes in the values read here).
pub fn json_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let tag = format!("\"{key}\":\"");
    let start = text.find(&tag)? + tag.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}
