//! One MQTT 3.1.1 client connection for the load generator, speaking through Manifold's codec:
//! packets are queued into an output buffer and written by `flush`, so a burst of PUBLISH
//! packets goes out in few writes. It keeps no session state of its own: the scenarios do.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use manifold_mqtt::codec::{
    Ack, Connect, Packet, Properties, Protocol, Publish, QoS, Subscribe, Subscription, decode,
    encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A connected client.
pub struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    out: BytesMut,
}

impl Conn {
    /// TCP connect, CONNECT, CONNACK; whether the broker had a session.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        clean: bool,
        keep_alive: u16,
    ) -> anyhow::Result<(Conn, bool)> {
        let socket = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        socket.set_nodelay(true)?;
        let (rd, wr) = socket.into_split();
        let mut c = Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::with_capacity(64 * 1024),
        };
        c.queue(&Packet::Connect(Box::new(Connect {
            protocol: Protocol::V311,
            clean_start: clean,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })))?;
        c.flush().await?;
        match tokio::time::timeout(Duration::from_secs(30), c.next()).await?? {
            Packet::ConnAck(a) if a.code == 0 => Ok((c, a.session_present)),
            other => bail!("CONNACK expected: {other:?}"),
        }
    }

    /// SUBSCRIBE to one filter and wait for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription::new(filter, qos)],
            properties: Properties::default(),
        }))?;
        self.flush().await?;
        loop {
            match self.next().await? {
                Packet::SubAck(s) if s.codes.iter().all(|c| *c < 0x80) => return Ok(()),
                Packet::SubAck(s) => bail!("subscription refused: {:?}", s.codes),
                _ => {}
            }
        }
    }

    /// Queues a PUBLISH.
    pub fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        packet_id: u16,
        payload: Bytes,
    ) -> anyhow::Result<()> {
        self.queue(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            properties: Properties::default(),
            payload,
        }))
    }

    /// Queues a PUBACK.
    pub fn puback(&mut self, packet_id: u16) -> anyhow::Result<()> {
        self.queue(&Packet::PubAck(Ack::new(packet_id)))
    }

    pub fn queue(&mut self, p: &Packet) -> anyhow::Result<()> {
        encode(p, Protocol::V311, u32::MAX, &mut self.out)?;
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.wr.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// A packet already read, if any (no IO).
    pub fn buffered(&mut self) -> anyhow::Result<Option<Packet>> {
        Ok(decode(&mut self.buf, Some(Protocol::V311), u32::MAX)?)
    }

    /// The next packet, reading as needed.
    pub async fn next(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = self.buffered()? {
                return Ok(p);
            }
            self.buf.reserve(64 * 1024);
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// DISCONNECT, then close.
    pub async fn disconnect(mut self) -> anyhow::Result<()> {
        self.queue(&Packet::Disconnect(Default::default()))?;
        self.flush().await?;
        self.wr.shutdown().await?;
        Ok(())
    }
}
