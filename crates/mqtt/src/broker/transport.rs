//! The byte streams an MQTT connection runs on: a plain TCP socket, or any other stream (TLS,
//! the bytes of a WebSocket's binary frames) as a reader and a writer half. Owns only moving
//! bytes; it never looks at them (the codec frames packets, whatever carried them).
//!
//! The connection loop reads without waiting (`try_read_buf`) and waits for readiness apart
//! (`readable`), so a wake-up for new messages costs no read. A TCP socket does both itself;
//! another stream has no readiness of its own, so `readable` reads into a small pending
//! buffer that the next `try_read_buf` hands over (cancel-safe: a read that did not complete
//! took nothing). A TCP socket's writes go through its [`Outbox`], which the topic hubs write
//! live messages to as well.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use super::outbox::Outbox;

/// A stream other than TCP, boxed (TLS, a WebSocket's bytes).
pub type BoxedRead = Box<dyn AsyncRead + Send + Sync + Unpin>;
/// The writing half of such a stream.
pub type BoxedWrite = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// The half a connection reads from.
pub(crate) enum Reader {
    Tcp(OwnedReadHalf),
    Stream {
        io: BoxedRead,
        /// Bytes `readable` read and `try_read_buf` has not handed over yet.
        pending: BytesMut,
        /// The stream ended (handed over as a read of 0 once `pending` is empty).
        eof: bool,
    },
}

/// The half a connection writes to.
pub(crate) enum Writer {
    Tcp(Arc<Outbox>),
    Stream(BoxedWrite),
    /// Shut down.
    Closed,
}

/// Splits a TCP socket.
pub(crate) fn tcp(socket: TcpStream) -> (Reader, Writer) {
    let (rd, wr) = socket.into_split();
    (Reader::Tcp(rd), Writer::Tcp(Arc::new(Outbox::new(wr))))
}

/// Another stream's halves.
pub(crate) fn stream(rd: BoxedRead, wr: BoxedWrite) -> (Reader, Writer) {
    (
        Reader::Stream {
            io: rd,
            pending: BytesMut::new(),
            eof: false,
        },
        Writer::Stream(wr),
    )
}

impl Reader {
    /// Reads what is there without waiting: `Ok(0)` when the stream ended, `WouldBlock` when
    /// nothing is there yet.
    pub(crate) fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Reader::Tcp(rd) => rd.try_read_buf(buf),
            Reader::Stream { pending, eof, .. } => {
                if !pending.is_empty() {
                    let n = pending.len();
                    buf.extend_from_slice(pending);
                    // An idle connection keeps no buffer.
                    *pending = BytesMut::new();
                    Ok(n)
                } else if *eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                }
            }
        }
    }

    /// Waits until `try_read_buf` has something to hand over (bytes or the end). Cancel-safe.
    pub(crate) async fn readable(&mut self) -> io::Result<()> {
        match self {
            Reader::Tcp(rd) => rd.readable().await,
            Reader::Stream { io, pending, eof } => {
                if pending.is_empty() && !*eof {
                    pending.reserve(4096);
                    if io.read_buf(pending).await? == 0 {
                        *eof = true;
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads, waiting for bytes: `Ok(0)` when the stream ended.
    pub(crate) async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                done => return done,
            }
        }
    }
}

impl Writer {
    /// Writes all of `bytes` (and pushes them out of any buffer the stream keeps, as TLS does).
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(out) => out.write_all(bytes).await,
            Writer::Stream(wr) => {
                wr.write_all(bytes).await?;
                wr.flush().await
            }
            Writer::Closed => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// The TCP socket's outbox (hubs write to it), if this is one.
    pub(crate) fn outbox(&self) -> Option<&Arc<Outbox>> {
        match self {
            Writer::Tcp(out) => Some(out),
            _ => None,
        }
    }

    /// Closes the writing direction (TCP FIN, TLS close_notify, WebSocket Close).
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match std::mem::replace(self, Writer::Closed) {
            // The last handle gone closes it (a hub holds none once its subscriber detached).
            Writer::Tcp(out) => {
                drop(out);
                Ok(())
            }
            Writer::Stream(mut wr) => wr.shutdown().await,
            Writer::Closed => Ok(()),
        }
    }
}
