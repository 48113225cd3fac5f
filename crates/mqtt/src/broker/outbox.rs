//! A TCP connection's outgoing bytes, shared by the connection and the topic hubs that write
//! live messages to it (`hub.rs`). Whoever writes finds the queue empty and sends at once (one
//! `send`, no task woken); what the socket does not take is queued in order, and the
//! connection drains the queue as the socket takes it ([`Outbox::flush`]: it is woken by
//! [`Outbox::queued`]). A hub's write is refused once `QUEUE_LIMIT` bytes are queued: the hub
//! then lets that subscriber go back to reading by cursor, which waits for the socket.
//!
//! Owns the bytes on their way out; never looks at them, never reads the socket. Dropping the
//! last handle closes the writing direction (TCP FIN).

use std::io;
use std::sync::{Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

/// Bytes queued at most before a hub's write is refused.
const QUEUE_LIMIT: usize = 256 * 1024;
/// A queue that grew past this is given back when it empties (an idle connection holds none).
const KEEP_CAPACITY: usize = 16 * 1024;

/// The writing half of a connection's socket and its queue.
pub(crate) struct Outbox {
    wr: OwnedWriteHalf,
    state: Mutex<State>,
    /// Bytes were queued by a hub: the connection drains them.
    pub(crate) queued: Notify,
}

struct State {
    /// Bytes the socket has not taken yet, in order.
    queue: BytesMut,
    /// The socket failed.
    dead: bool,
}

impl Outbox {
    pub(crate) fn new(wr: OwnedWriteHalf) -> Outbox {
        Outbox {
            wr,
            state: Mutex::new(State {
                queue: BytesMut::new(),
                dead: false,
            }),
            queued: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A hub's write: `bytes[start..]`, a run of parts ending at `ends` (offsets in `bytes`,
    /// in order), taken a whole part at a time: how many parts were (the first ones), or
    /// `None` when the socket failed. Parts are taken while the queue has room; a part the
    /// socket took some of is taken whole (so a queue may pass its limit by one part).
    pub(crate) fn offer(&self, bytes: &[u8], start: usize, ends: &[usize]) -> Option<usize> {
        let mut st = self.lock();
        if st.dead {
            return None;
        }
        let (mut taken, mut at) = (0, start);
        if st.queue.is_empty() {
            let Ok(sent) = self.try_send(&bytes[start..]) else {
                st.dead = true;
                return None;
            };
            at = start + sent;
            taken = ends.partition_point(|e| *e <= at);
            let begun = taken.checked_sub(1).map_or(start, |k| ends[k]) < at;
            if let Some(end) = ends.get(taken).filter(|_| begun) {
                st.queue.extend_from_slice(&bytes[at..*end]);
                at = *end;
                taken += 1;
            } else {
                at = taken.checked_sub(1).map_or(start, |k| ends[k]);
            }
        }
        while let Some(end) = ends.get(taken) {
            if st.queue.len() + (end - at) > QUEUE_LIMIT {
                break;
            }
            st.queue.extend_from_slice(&bytes[at..*end]);
            at = *end;
            taken += 1;
        }
        if !st.queue.is_empty() {
            self.queued.notify_one();
        }
        Some(taken)
    }

    /// The connection's write: `bytes` behind whatever is queued, then the queue drained.
    pub(crate) async fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        {
            let mut st = self.lock();
            if st.dead {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            if st.queue.is_empty() {
                self.send_or_queue(&mut st, bytes)?;
            } else {
                st.queue.extend_from_slice(bytes);
            }
        }
        self.flush().await
    }

    /// Writes out what is queued now, waiting for the socket to take it. What a hub queues
    /// meanwhile is left for the next call (the connection is told): a subscriber reading
    /// about as fast as a hub writes never keeps its connection here.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        let mut left = self.lock().queue.len();
        loop {
            {
                let mut st = self.lock();
                if st.dead {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                if st.queue.is_empty() && st.queue.capacity() > KEEP_CAPACITY {
                    st.queue = BytesMut::new();
                }
                if left == 0 || st.queue.is_empty() {
                    return Ok(());
                }
                match self.try_send(&st.queue) {
                    Ok(0) => {}
                    Ok(n) => {
                        st.queue.advance(n);
                        left = left.saturating_sub(n);
                        continue;
                    }
                    Err(e) => {
                        st.dead = true;
                        return Err(e);
                    }
                }
            }
            self.wr.writable().await?;
        }
    }

    /// With the queue empty: one `send`, and what the socket did not take queued (the
    /// connection is told).
    fn send_or_queue(&self, st: &mut State, bytes: &[u8]) -> io::Result<()> {
        let sent = self.try_send(bytes).inspect_err(|_| st.dead = true)?;
        if sent < bytes.len() {
            st.queue.extend_from_slice(&bytes[sent..]);
            self.queued.notify_one();
        }
        Ok(())
    }

    /// One `send` without waiting: how many bytes the socket took (0 when it takes none now).
    /// An error is the socket's end.
    fn try_send(&self, bytes: &[u8]) -> io::Result<usize> {
        match self.wr.try_write(bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            done => done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A hub's run of parts on a socket nobody reads: taken whole while the queue has room,
    /// then refused; the reader gets exactly the parts taken, whole and in order.
    #[tokio::test]
    async fn parts_are_taken_whole_while_the_queue_has_room() -> io::Result<()> {
        const PART: usize = 64 * 1024;
        const PARTS: usize = 400; // far more than the socket's buffers and the queue hold
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        let (_rd, wr) = server.into_split();
        let out = std::sync::Arc::new(Outbox::new(wr));
        let bytes: Vec<u8> = (0..PARTS).flat_map(|k| [k as u8; PART]).collect();
        let ends: Vec<usize> = (1..=PARTS).map(|k| k * PART).collect();

        let taken = out.offer(&bytes, 0, &ends).expect("socket open");
        assert!(taken > 0 && taken < PARTS, "{taken} parts taken");
        let more = ends[taken - 1];
        assert_eq!(
            out.offer(&bytes, more, &ends[taken..]),
            Some(0),
            "queue full"
        );

        let flusher = tokio::spawn({
            let out = out.clone();
            async move { out.flush().await }
        });
        let mut got = vec![0u8; taken * PART];
        client.read_exact(&mut got).await?;
        flusher.await.expect("flusher")?;
        assert!(got == bytes[..taken * PART], "the parts taken, in order");
        // Nothing else follows.
        drop(out);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await?;
        assert!(rest.is_empty(), "{} bytes more", rest.len());
        Ok(())
    }
}
