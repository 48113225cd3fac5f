//! A client of the WebSocket push protocol (`/ws`) for the tests: tungstenite on a plain TCP
//! stream with a read timeout, JSON text frames.

use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// A connection to `/ws` on the HTTP port, its reads waiting at most `timeout`.
pub fn open(http: u16, timeout: Duration) -> anyhow::Result<Socket> {
    let (ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{http}/ws"))?;
    set_timeout(&ws, timeout)?;
    Ok(ws)
}

/// How long a read waits from now on.
pub fn set_timeout(ws: &Socket, timeout: Duration) -> anyhow::Result<()> {
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(timeout))?;
    }
    Ok(())
}

pub fn send(ws: &mut Socket, v: Value) -> anyhow::Result<()> {
    ws.send(Message::text(v.to_string()))?;
    Ok(())
}

/// The next JSON frame, or `None` when none came within the read timeout.
pub fn try_next(ws: &mut Socket) -> anyhow::Result<Option<Value>> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Ok(Some(serde_json::from_str(t.as_str())?)),
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(other) => bail!("a text frame expected: {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The next JSON frame (an error when none came within the read timeout).
pub fn next(ws: &mut Socket) -> anyhow::Result<Value> {
    try_next(ws)?.context("no frame within the read timeout")
}

/// Sends a subscribe frame; the next frame must be its `subscribed` answer.
pub fn subscribe(ws: &mut Socket, frame: Value) -> anyhow::Result<()> {
    send(ws, frame)?;
    let answer = next(ws)?;
    anyhow::ensure!(answer["type"] == "subscribed", "{answer}");
    Ok(())
}
