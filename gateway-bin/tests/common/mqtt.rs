//! MQTT test helpers: a `manifold serve` node with MQTT and RESP listeners, killed when dropped
//! (or SIGKILLed and restarted on the same directory and ports), driven by Debian's
//! `mosquitto_pub` / `mosquitto_sub` or by raw RESP; and a raw MQTT 5 client speaking through
//! the codec, for flows no command-line client exposes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};

use super::{free_port, serve};

/// A node with its MQTT, RESP and HTTP ports, killed when dropped.
pub struct Node {
    child: Child,
    pub mqtt: u16,
    pub resp: u16,
    pub http: u16,
    dir: std::path::PathBuf,
    /// More `serve` flags, kept for a restart.
    extra: Vec<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(
    dir: &std::path::Path,
    mqtt: u16,
    resp: u16,
    http: u16,
    extra: Vec<String>,
) -> anyhow::Result<Node> {
    let mut args: Vec<String> = [
        "--data-dir",
        &dir.display().to_string(),
        "--mqtt-addr",
        &format!("127.0.0.1:{mqtt}"),
        "--resp-addr",
        &format!("127.0.0.1:{resp}"),
        "--http-addr",
        &format!("127.0.0.1:{http}"),
        "--segment-size",
        "1048576",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    Ok(Node {
        child: serve(&args)?,
        mqtt,
        resp,
        http,
        dir: dir.to_path_buf(),
        extra,
    })
}

pub fn node(dir: &std::path::Path) -> anyhow::Result<Node> {
    node_with(dir, &[])
}

/// A node started with more `serve` flags.
pub fn node_with(dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Node> {
    let extra = extra.iter().map(|s| s.to_string()).collect();
    start(dir, free_port()?, free_port()?, free_port()?, extra)
}

impl Node {
    /// SIGTERM (a clean shutdown), then waits for the process; whether it exited 0.
    pub fn terminate(&mut self) -> anyhow::Result<bool> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM");
        Ok(self.child.wait()?.success())
    }

    /// SIGKILL, then the same directory and ports again.
    pub fn kill_and_restart(mut self) -> anyhow::Result<Node> {
        self.child.kill()?;
        self.child.wait()?;
        let (dir, mqtt, resp, http) = (self.dir.clone(), self.mqtt, self.resp, self.http);
        let extra = std::mem::take(&mut self.extra);
        std::mem::forget(self);
        start(&dir, mqtt, resp, http, extra)
    }

    /// `GET path` on the HTTP listener: the response's body.
    pub fn http_get(&self, path: &str) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let (_, body) = response
            .split_once("\r\n\r\n")
            .context("an HTTP response")?;
        Ok(body.to_string())
    }

    pub fn publish(&self, args: &[&str]) -> anyhow::Result<()> {
        mosquitto_pub(self.mqtt, args)
    }

    /// `mosquitto_sub ARGS` in the background; its output once it exits.
    pub fn subscribe(&self, args: &[&str]) -> anyhow::Result<Child> {
        mosquitto_sub(self.mqtt, args)
    }

    /// One RESP command over raw TCP; the reply's first line.
    pub fn resp(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.resp))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string())
    }
}

/// `mosquitto_pub ARGS` to the broker on `port`, to its end.
pub fn mosquitto_pub(port: u16, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .context("mosquitto_pub (Debian package mosquitto-clients)")?;
    ensure!(
        out.status.success(),
        "mosquitto_pub {args:?} (port {port}): {out:?}"
    );
    Ok(())
}

/// `mosquitto_sub ARGS` on the broker on `port`, in the background.
pub fn mosquitto_sub(port: u16, args: &[&str]) -> anyhow::Result<Child> {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("mosquitto_sub (Debian package mosquitto-clients)")
}

/// A raw MQTT 5 connection speaking through the codec, for flows no command-line client
/// exposes (a resend after a lost connection).
pub struct Raw {
    socket: TcpStream,
    buf: bytes::BytesMut,
}

impl Raw {
    pub fn connect(port: u16, id: &str) -> anyhow::Result<(Raw, bool)> {
        Raw::connect_with_will(port, id, None)
    }

    pub fn connect_with_will(
        port: u16,
        id: &str,
        will: Option<manifold_mqtt::codec::Will>,
    ) -> anyhow::Result<(Raw, bool)> {
        let properties = manifold_mqtt::codec::Properties {
            session_expiry: Some(3600),
            ..Default::default()
        };
        Raw::connect_with(port, id, will, properties)
    }

    /// CONNECT (Clean Start 0) with these properties; the session present flag of CONNACK 0.
    pub fn connect_with(
        port: u16,
        id: &str,
        will: Option<manifold_mqtt::codec::Will>,
        properties: manifold_mqtt::codec::Properties,
    ) -> anyhow::Result<(Raw, bool)> {
        Raw::connect_keep_alive(port, id, will, properties, 60)
    }

    /// As `connect_with`, with a Keep Alive of `keep_alive` seconds.
    pub fn connect_keep_alive(
        port: u16,
        id: &str,
        will: Option<manifold_mqtt::codec::Will>,
        properties: manifold_mqtt::codec::Properties,
        keep_alive: u16,
    ) -> anyhow::Result<(Raw, bool)> {
        use manifold_mqtt::codec::{Connect, Packet, Protocol};
        let socket = TcpStream::connect(("127.0.0.1", port))?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut raw = Raw {
            socket,
            buf: bytes::BytesMut::new(),
        };
        raw.send(&Packet::Connect(Box::new(Connect {
            protocol: Protocol::V5,
            clean_start: false,
            keep_alive,
            client_id: id.into(),
            will,
            username: None,
            password: None,
            properties,
        })))?;
        match raw.next()? {
            Packet::ConnAck(c) if c.code == 0 => Ok((raw, c.session_present)),
            other => anyhow::bail!("CONNACK expected: {other:?}"),
        }
    }

    pub fn send(&mut self, p: &manifold_mqtt::codec::Packet) -> anyhow::Result<()> {
        let mut out = bytes::BytesMut::new();
        manifold_mqtt::codec::encode(p, manifold_mqtt::codec::Protocol::V5, u32::MAX, &mut out)?;
        self.socket.write_all(&out)?;
        Ok(())
    }

    /// A subscriber of `filter` (a shared subscription too) at QoS 1 whose session ends with
    /// its connection, taking `window` messages at a time (Receive Maximum).
    pub fn windowed_subscriber(
        port: u16,
        id: &str,
        filter: &str,
        window: u16,
    ) -> anyhow::Result<Raw> {
        use manifold_mqtt::codec::{Properties, QoS};
        let properties = Properties {
            session_expiry: Some(0),
            receive_maximum: Some(window),
            ..Properties::default()
        };
        let (mut raw, _) = Raw::connect_with(port, id, None, properties)?;
        raw.subscribe(1, filter, QoS::AtLeastOnce)?;
        Ok(raw)
    }

    /// SUBSCRIBE to `filter` at `qos`, and its SUBACK granting that QoS.
    pub fn subscribe(
        &mut self,
        packet_id: u16,
        filter: &str,
        qos: manifold_mqtt::codec::QoS,
    ) -> anyhow::Result<()> {
        use manifold_mqtt::codec::{Packet, Properties, Subscribe, Subscription};
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            subscriptions: vec![Subscription::new(filter, qos)],
            properties: Properties::default(),
        }))?;
        match self.next()? {
            Packet::SubAck(s) => ensure!(s.codes == vec![qos as u8], "{s:?}"),
            other => anyhow::bail!("SUBACK expected: {other:?}"),
        }
        Ok(())
    }

    /// The next packet within `wait`; `None` if none came (the broker stays quiet).
    pub fn next_within(
        &mut self,
        wait: Duration,
    ) -> anyhow::Result<Option<manifold_mqtt::codec::Packet>> {
        use manifold_mqtt::codec::{Protocol, decode};
        if let Some(p) = decode(&mut self.buf, Some(Protocol::V5), u32::MAX)? {
            return Ok(Some(p));
        }
        self.socket.set_read_timeout(Some(wait))?;
        let mut chunk = [0u8; 4096];
        let read = self.socket.read(&mut chunk);
        self.socket
            .set_read_timeout(Some(Duration::from_secs(10)))?;
        match read {
            Ok(0) => anyhow::bail!("the broker closed the connection"),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.next().map(Some)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn next(&mut self) -> anyhow::Result<manifold_mqtt::codec::Packet> {
        use manifold_mqtt::codec::{Protocol, decode};
        loop {
            if let Some(p) = decode(&mut self.buf, Some(Protocol::V5), u32::MAX)? {
                return Ok(p);
            }
            let mut chunk = [0u8; 4096];
            let n = self.socket.read(&mut chunk)?;
            ensure!(n > 0, "the broker closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
