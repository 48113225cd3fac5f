//! A WebSocket connection's outgoing side. Every writer of the connection — the answers to its
//! frames, its subscriptions catching up, the topic hubs writing live messages (`hub.rs`),
//! tungstenite's replies to pings and closes — hands whole frames here. A frame goes straight
//! to the socket (one `send`; a small frame is built on the stack) when nothing is queued
//! before it; what the socket does not take is queued, and the connection's flusher task
//! writes the queue as the socket drains. So a message fanned out to ten thousand clients costs one system call each and no
//! task wake-up.
//!
//! The queue is bounded: a frame that finds `QUEUE_LIMIT` bytes queued is refused (`Full`); the
//! hub then leaves that subscription to read by cursor, and writers that can wait
//! ([`Outbox::send`]) wait for room, and close the connection as too slow after `slow_after`.
//! After a close frame nothing more is written.
//!
//! Owns the bytes on their way out and the frames' encoding (server frames: unmasked); never
//! reads the socket except through [`SocketIo`], which gives tungstenite the reading half.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

/// Bytes queued for a connection at most before frames are refused (one frame larger than this
/// is still taken when the queue is shorter).
const QUEUE_LIMIT: usize = 256 * 1024;
/// Frames up to this size (header included) are built on the stack.
const SMALL_FRAME: usize = 2048;
/// A queue that grew past this is given back when it empties (an idle connection holds none).
const KEEP_CAPACITY: usize = 16 * 1024;

/// Opcodes of the frames a server sends.
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Written, or queued behind earlier frames.
    Taken,
    /// The queue is full: not taken.
    Full,
    /// The connection is closing or gone: not taken, and none will be.
    Closed,
}

/// The connection's writing side (shared by its writers and its flusher).
pub(crate) struct Outbox {
    stream: Arc<TcpStream>,
    state: Mutex<State>,
    /// Wakes the flusher: bytes were queued.
    queued: Notify,
    /// Wakes writers waiting for room.
    room: Notify,
    /// Turns true once nothing more is taken (a close frame is queued or written, or the
    /// socket failed): the connection ends after at most a short wait for what is queued.
    done: watch::Sender<bool>,
}

struct State {
    /// Bytes the socket has not taken yet, in order.
    queue: BytesMut,
    /// A close frame is queued or written: nothing more is taken.
    closing: bool,
    /// The socket failed, or the connection ended.
    dead: bool,
}

impl Outbox {
    /// The writing side of `stream`, and its flusher (to be spawned: it ends when the
    /// connection ends, [`Outbox::end`], or the socket fails).
    pub(crate) fn new(
        stream: Arc<TcpStream>,
    ) -> (Arc<Outbox>, impl Future<Output = ()> + Send + 'static) {
        let outbox = Arc::new(Outbox {
            stream,
            state: Mutex::new(State {
                queue: BytesMut::new(),
                closing: false,
                dead: false,
            }),
            queued: Notify::new(),
            room: Notify::new(),
            done: watch::Sender::new(false),
        });
        let flusher = outbox.clone().flush();
        (outbox, flusher)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A text frame of `parts` (concatenated: valid UTF-8 together), written now or queued;
    /// refused when the queue is full.
    pub(crate) fn try_text(&self, parts: &[&[u8]]) -> Sent {
        // A small frame is built on the stack (one copy, one `send`: cheaper for the kernel
        // than a `writev` of its pieces).
        let mut small = [0u8; SMALL_FRAME];
        match encode_into(&mut small, TEXT, parts) {
            Some(n) => self.offer(&small[..n]),
            None => {
                let mut frame = Vec::new();
                encode_text(&mut frame, parts);
                self.offer(&frame)
            }
        }
    }

    /// Encoded frames, written now or queued; refused when the queue is full.
    fn offer(&self, frames: &[u8]) -> Sent {
        let mut state = self.lock();
        if state.closing || state.dead {
            return Sent::Closed;
        }
        if state.queue.len() >= QUEUE_LIMIT {
            return Sent::Full;
        }
        self.put(&mut state, frames);
        Sent::Taken
    }

    /// A text frame, waiting for room while the queue is full; after `slow_after` without room
    /// the connection is closed with `slow` (code and reason). Whether it was taken.
    pub(crate) async fn send(
        &self,
        parts: &[&[u8]],
        slow_after: Duration,
        slow: (u16, &str),
    ) -> bool {
        self.when_room(slow_after, slow, || self.try_text(parts))
            .await
    }

    /// Frames already encoded ([`encode_text`]), written together (one system call for a whole
    /// batch of messages), waiting for room as [`Outbox::send`] does.
    pub(crate) async fn send_encoded(
        &self,
        frames: &[u8],
        slow_after: Duration,
        slow: (u16, &str),
    ) -> bool {
        self.when_room(slow_after, slow, || self.offer(frames))
            .await
    }

    /// Tries `attempt` until it is taken or refused for good, waiting for room in between;
    /// closes the connection as too slow after `slow_after` without room.
    async fn when_room(
        &self,
        slow_after: Duration,
        slow: (u16, &str),
        mut attempt: impl FnMut() -> Sent,
    ) -> bool {
        let mut deadline = tokio::time::Instant::now() + slow_after;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match attempt() {
                Sent::Taken => return true,
                Sent::Closed => return false,
                Sent::Full => {}
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                self.close(slow.0, slow.1);
                return false;
            }
            // The socket took some: too slow only after `slow_after` without progress.
            deadline = tokio::time::Instant::now() + slow_after;
        }
    }

    /// Queues a close frame (code and reason) after everything queued; nothing is taken after
    /// it.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        let mut state = self.lock();
        if state.closing || state.dead {
            return;
        }
        let code = network_order(code.into());
        // A close frame's payload is at most 125 bytes: it fits.
        let reason = &reason.as_bytes()[..reason.len().min(123)];
        let mut frame = [0u8; 2 + 125];
        if let Some(n) = encode_into(&mut frame, CLOSE, &[&code[6..], reason]) {
            self.put(&mut state, &frame[..n]);
        }
        state.closing = true;
        self.done.send_replace(true);
    }

    /// Bytes tungstenite writes (its replies to pings and closes: whole frames), after what is
    /// queued; after its close frame nothing more is taken. A pong finding the queue full is
    /// dropped (a client that pings and never reads grows nothing).
    fn raw(&self, bytes: &[u8]) {
        let mut state = self.lock();
        if state.closing || state.dead {
            return;
        }
        let close = bytes.first() == Some(&(0x80 | CLOSE));
        if !close && state.queue.len() >= QUEUE_LIMIT {
            return;
        }
        self.put(&mut state, bytes);
        if close {
            state.closing = true;
            self.done.send_replace(true);
        }
    }

    /// Encoded bytes: straight to the socket when nothing is queued, the rest queued.
    fn put(&self, state: &mut State, bytes: &[u8]) {
        if !state.queue.is_empty() {
            state.queue.extend_from_slice(bytes);
            return;
        }
        match self.stream.try_write(bytes) {
            Ok(n) if n == bytes.len() => return,
            Ok(n) => state.queue.extend_from_slice(&bytes[n..]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => state.queue.extend_from_slice(bytes),
            Err(_) => return self.fail(state),
        }
        self.queued.notify_one();
    }

    /// The connection ended: nothing more is written, waiting writers give up.
    pub(crate) fn end(&self) {
        let mut state = self.lock();
        self.fail(&mut state);
    }

    /// Turns true once nothing more is taken (closing, or the socket failed).
    pub(crate) fn done(&self) -> watch::Receiver<bool> {
        self.done.subscribe()
    }

    /// Whether frames are still taken.
    pub(crate) fn open(&self) -> bool {
        let state = self.lock();
        !(state.closing || state.dead)
    }

    /// Waits (at most `limit`) until everything queued is written.
    pub(crate) async fn drained(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let room = self.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                {
                    let state = self.lock();
                    if state.queue.is_empty() || state.dead {
                        return;
                    }
                }
                room.await;
            }
        })
        .await;
    }

    fn fail(&self, state: &mut State) {
        state.dead = true;
        state.queue = BytesMut::new();
        self.done.send_replace(true);
        self.room.notify_waiters();
        self.queued.notify_one();
    }

    /// The flusher: writes the queue as the socket takes it.
    async fn flush(self: Arc<Self>) {
        loop {
            self.queued.notified().await;
            loop {
                {
                    let mut state = self.lock();
                    if state.dead {
                        return;
                    }
                    if state.queue.is_empty() {
                        break;
                    }
                    match self.stream.try_write(&state.queue) {
                        Ok(n) => {
                            state.queue.advance(n);
                            if state.queue.is_empty() && state.queue.capacity() > KEEP_CAPACITY {
                                state.queue = BytesMut::new();
                            }
                            if state.queue.len() < QUEUE_LIMIT {
                                self.room.notify_waiters();
                            }
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return self.fail(&mut state),
                    }
                }
                if self.stream.writable().await.is_err() {
                    return self.end();
                }
            }
            // (Emptied: writers waiting for it to drain look again.)
            self.room.notify_waiters();
        }
    }
}

/// Appends a text frame of `parts` (concatenated: valid UTF-8 together) to `out`.
pub(crate) fn encode_text(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut header = [0u8; 10];
    out.extend_from_slice(frame_header(&mut header, TEXT, len));
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// A frame of `parts` written into `buf`; its length, or `None` when it does not fit.
fn encode_into(buf: &mut [u8], opcode: u8, parts: &[&[u8]]) -> Option<usize> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut header = [0u8; 10];
    let header = frame_header(&mut header, opcode, len);
    if header.len() + len > buf.len() {
        return None;
    }
    let mut at = 0;
    for piece in std::iter::once(header).chain(parts.iter().copied()) {
        buf[at..at + piece.len()].copy_from_slice(piece);
        at += piece.len();
    }
    Some(at)
}

/// A server frame's header (FIN set, no mask) for a payload of `len` bytes.
fn frame_header(buf: &mut [u8; 10], opcode: u8, len: usize) -> &[u8] {
    buf[0] = 0x80 | opcode;
    if len < 126 {
        buf[1] = len as u8;
        &buf[..2]
    } else if let Ok(short) = u16::try_from(len) {
        buf[1] = 126;
        buf[2..4].copy_from_slice(&network_order(short.into())[6..]);
        &buf[..4]
    } else {
        buf[1] = 127;
        buf[2..10].copy_from_slice(&network_order(len as u64));
        &buf[..10]
    }
}

/// A number in network byte order (WebSocket lengths and close codes are big-endian, RFC 6455
/// 5.2: the one place this crate writes one).
#[allow(clippy::big_endian_bytes)]
fn network_order(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// The connection's socket as tungstenite sees it: reads come from the socket, writes (its
/// control replies) go through the outbox.
pub(crate) struct SocketIo {
    pub(crate) outbox: Arc<Outbox>,
}

impl AsyncRead for SocketIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.outbox.stream;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.outbox.raw(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_built_on_the_stack_is_the_frame_built_in_a_vec() {
        let parts: [&[u8]; 2] = [b"{\"type\":\"message\",", b"\"id\":\"1-0\"}"];
        let mut v = Vec::new();
        encode_text(&mut v, &parts);
        let mut buf = [0u8; 64];
        assert_eq!(
            encode_into(&mut buf, TEXT, &parts).map(|n| &buf[..n]),
            Some(&v[..])
        );
        let mut tiny = [0u8; 8];
        assert_eq!(encode_into(&mut tiny, TEXT, &parts), None);
    }

    #[test]
    fn frame_headers_use_the_shortest_length() {
        let mut buf = [0u8; 10];
        assert_eq!(frame_header(&mut buf, TEXT, 5), &[0x81, 5]);
        assert_eq!(frame_header(&mut buf, TEXT, 125), &[0x81, 125]);
        assert_eq!(frame_header(&mut buf, TEXT, 126), &[0x81, 126, 0, 126]);
        assert_eq!(frame_header(&mut buf, CLOSE, 65535), &[0x88, 126, 255, 255]);
        assert_eq!(
            frame_header(&mut buf, TEXT, 65536),
            &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }
}
