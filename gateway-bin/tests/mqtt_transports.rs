//! MQTT over its other transports, against a real `manifold serve`: WebSocket at `/mqtt` on the
//! HTTP listener (paho-mqtt's WebSocket transport, and a hand-rolled WebSocket client for the
//! framing rules: a packet split over frames, several packets in one, the subprotocol, text
//! frames) and TLS on `--mqtts-addr` (`mosquitto_pub` / `mosquitto_sub` with `--cafile`, and
//! paho-mqtt with `tls_set`), each meeting clients of plain TCP and RESP on the same log.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::BytesMut;
use common::mqtt::{node, node_with};
use manifold_mqtt::codec::{
    Connect, Packet, Properties, Protocol, Publish, QoS, Subscribe, Subscription, decode, encode,
};

/// paho-mqtt over WebSocket (3.1.1 and 5) with paho over TCP: messages cross both ways, a
/// persistent session over WebSocket gets what it missed, and what a WebSocket client
/// published is in the stream for RESP. ARG: `mqtt_port,http_port`.
const PAHO_WEBSOCKET: &str = r#"
import sys, time, threading
import paho.mqtt.client as mqtt

mqtt_port, http_port = (int(p) for p in sys.argv[1].split(","))
V2 = mqtt.CallbackAPIVersion.VERSION2

def client(cid, ws, protocol=mqtt.MQTTv311, clean=True):
    kw = {"clean_session": clean} if protocol != mqtt.MQTTv5 else {}
    c = mqtt.Client(V2, client_id=cid, protocol=protocol,
                    transport="websockets" if ws else "tcp", **kw)
    if ws:
        c.ws_set_options(path="/mqtt")
    c.got = []
    c.ready = threading.Event()
    c.on_message = lambda c, u, m: c.got.append((m.topic, m.payload, m.qos))
    c.on_connect = lambda c, u, f, rc, p=None: c.ready.set()
    c.on_subscribe = lambda c, u, mid, codes, p=None: c.subscribed.set()
    c.subscribed = threading.Event()
    return c

def start(c, port, **kw):
    c.connect("127.0.0.1", port, **kw)
    c.loop_start()
    assert c.ready.wait(10), "no CONNACK"

def subscribe(c, topic, qos=1):
    c.subscribed.clear()
    c.subscribe(topic, qos)
    assert c.subscribed.wait(10), "no SUBACK"

def wait_for(c, n):
    deadline = time.time() + 10
    while len(c.got) < n and time.time() < deadline:
        time.sleep(0.02)
    return c.got

# A WebSocket subscriber (3.1.1) and one speaking 5.0 get a TCP publisher's messages.
ws311 = client("ws311", True)
start(ws311, http_port)
subscribe(ws311, "ws/in/#")
ws5 = client("ws5", True, mqtt.MQTTv5)
start(ws5, http_port)
subscribe(ws5, "ws/in/+")
tcp = client("tcp-pub", False)
start(tcp, mqtt_port)
for i in range(20):
    tcp.publish("ws/in/a", b"m%d" % i, qos=1).wait_for_publish(10)
want = [("ws/in/a", b"m%d" % i, 1) for i in range(20)]
assert wait_for(ws311, 20) == want, ws311.got
assert wait_for(ws5, 20) == want, ws5.got

# A large message crosses in many WebSocket frames and arrives whole, byte for byte.
big = bytes(range(256)) * 1024
tcp.publish("ws/in/big", big, qos=1).wait_for_publish(10)
assert wait_for(ws311, 21)[-1] == ("ws/in/big", big, 1)

# The other way: a WebSocket publisher, a TCP subscriber.
sub = client("tcp-sub", False)
start(sub, mqtt_port)
subscribe(sub, "ws/out")
for i in range(5):
    ws5.publish("ws/out", b"from ws %d" % i, qos=1).wait_for_publish(10)
assert wait_for(sub, 5) == [("ws/out", b"from ws %d" % i, 1) for i in range(5)], sub.got

# A persistent session over WebSocket: away, then back, it gets what it missed in order.
away = client("ws-away", True, clean=False)
start(away, http_port)
subscribe(away, "ws/missed")
away.disconnect(); away.loop_stop()
for i in range(3):
    tcp.publish("ws/missed", b"while away %d" % i, qos=1).wait_for_publish(10)
back = client("ws-away", True, clean=False)
start(back, http_port)
assert wait_for(back, 3) == [("ws/missed", b"while away %d" % i, 1) for i in range(3)], back.got
for c in (ws311, ws5, tcp, sub, back):
    c.disconnect(); c.loop_stop()
print("OK")
"#;

#[test]
fn paho_over_websocket_meets_tcp_clients_and_resp() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    common::run_python(PAHO_WEBSOCKET, &format!("{},{}", node.mqtt, node.http))?;
    // The WebSocket client's messages are the log's, read over RESP.
    assert_eq!(node.resp(&["XLEN", "ws/out"])?, ":5");
    Ok(())
}

/// A WebSocket client by hand: the opening handshake and RFC 6455 frames (masked, as a
/// client's must be), to check what a library would hide.
struct WsClient {
    socket: TcpStream,
    /// The binary frames' bytes not decoded yet.
    mqtt: BytesMut,
}

impl WsClient {
    /// Opens `/mqtt`, offering `protocol`; the status line and headers of the answer, and the
    /// client if the server switched protocols.
    fn open(port: u16, protocol: Option<&str>) -> anyhow::Result<(String, Option<WsClient>)> {
        let mut socket = TcpStream::connect(("127.0.0.1", port))?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        let offer = protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        write!(
            socket,
            "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{offer}\r\n"
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            ensure!(
                socket.read(&mut byte)? == 1,
                "closed before the headers ended"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let client = head.starts_with("HTTP/1.1 101").then(|| WsClient {
            socket,
            mqtt: BytesMut::new(),
        });
        Ok((head, client))
    }

    fn frame(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mut f = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else {
            ensure!(len < 65536, "a test frame under 64 KiB");
            f.extend([0x80 | 126, (len >> 8) as u8, len as u8]);
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        f.extend(mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.write_all(&f)?;
        Ok(())
    }

    /// Sends `packets` encoded as v5, their bytes cut into frames at `cuts`.
    fn send(&mut self, packets: &[Packet], cuts: &[usize]) -> anyhow::Result<()> {
        let mut bytes = BytesMut::new();
        for p in packets {
            encode(p, Protocol::V5, u32::MAX, &mut bytes)?;
        }
        let mut at = 0;
        for &cut in cuts.iter().chain([bytes.len()].iter()) {
            let cut = cut.min(bytes.len());
            if cut > at {
                self.frame(0x2, &bytes[at..cut])?;
                at = cut;
            }
        }
        Ok(())
    }

    /// The next frame: opcode and payload (a server's frames are not masked).
    fn next_frame(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        self.socket.read_exact(&mut head)?;
        ensure!(head[1] & 0x80 == 0, "a server frame is never masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                self.socket.read_exact(&mut l)?;
                (usize::from(l[0]) << 8) | usize::from(l[1])
            }
            127 => {
                let mut l = [0u8; 8];
                self.socket.read_exact(&mut l)?;
                l.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        self.socket.read_exact(&mut payload)?;
        Ok((head[0] & 0x0f, payload))
    }

    /// The next MQTT packet from the binary frames.
    fn next(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = decode(&mut self.mqtt, Some(Protocol::V5), u32::MAX)? {
                return Ok(p);
            }
            let (opcode, payload) = self.next_frame()?;
            ensure!(
                opcode == 0x2,
                "a binary frame expected, got opcode {opcode}"
            );
            self.mqtt.extend_from_slice(&payload);
        }
    }
}

fn connect(id: &str) -> Packet {
    connect_with_will(id, None)
}

fn connect_with_will(id: &str, will: Option<manifold_mqtt::codec::Will>) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: id.into(),
        will,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

/// MQTT over WebSocket is a byte stream: a CONNECT cut across three frames is one CONNECT, and
/// a SUBSCRIBE and a PUBLISH in one frame are two packets, answered in order.
#[test]
fn websocket_frames_carry_a_byte_stream_not_packets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let (head, ws) = WsClient::open(node.http, Some("mqtt"))?;
    let mut ws = ws.with_context(|| format!("no upgrade: {head}"))?;
    let lower = head.to_ascii_lowercase();
    ensure!(
        lower.contains("sec-websocket-protocol: mqtt\r\n"),
        "the subprotocol chosen is mqtt: {head}"
    );
    ws.send(&[connect("ws-raw")], &[1, 5])?;
    match ws.next()? {
        Packet::ConnAck(c) => ensure!(c.code == 0, "{c:?}"),
        other => anyhow::bail!("CONNACK expected: {other:?}"),
    }
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        subscriptions: vec![Subscription::new("raw/t", QoS::AtLeastOnce)],
        properties: Properties::default(),
    });
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "raw/t".into(),
        packet_id: 2,
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(b"one frame, two packets"),
    });
    ws.send(&[subscribe, publish], &[])?;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(ws.next()?);
    }
    ensure!(
        matches!(&seen[0], Packet::SubAck(s) if s.codes == vec![1]),
        "{seen:?}"
    );
    let acked = seen
        .iter()
        .any(|p| matches!(p, Packet::PubAck(a) if a.packet_id == 2));
    let delivered = seen.iter().any(|p| {
        matches!(p, Packet::Publish(m) if m.topic == "raw/t" && m.payload.as_ref() == b"one frame, two packets")
    });
    ensure!(acked && delivered, "PUBACK and the message: {seen:?}");
    Ok(())
}

/// Without the `mqtt` subprotocol the upgrade is refused (400, as Mosquitto refuses it); a
/// text frame closes the connection with 1003 (MQTT is binary only), and the client's Will
/// goes out as for any lost connection.
#[test]
fn websocket_refuses_a_missing_subprotocol_and_text_frames() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let (head, ws) = WsClient::open(node.http, None)?;
    ensure!(
        head.starts_with("HTTP/1.1 400") && ws.is_none(),
        "refused: {head}"
    );
    let (head, ws) = WsClient::open(node.http, Some("chat, mqttv3.1"))?;
    let ws = ws.with_context(|| format!("mqttv3.1 is accepted too: {head}"))?;
    ensure!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqttv3.1\r\n"),
        "{head}"
    );
    drop(ws);

    let watcher = node.subscribe(&["-t", "will/ws", "-C", "1", "-W", "20"])?;
    std::thread::sleep(Duration::from_millis(500));
    let (head, ws) = WsClient::open(node.http, Some("mqtt"))?;
    let mut ws = ws.with_context(|| format!("no upgrade: {head}"))?;
    let will = manifold_mqtt::codec::Will {
        topic: "will/ws".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    };
    ws.send(&[connect_with_will("ws-text", Some(will))], &[])?;
    ensure!(matches!(ws.next()?, Packet::ConnAck(_)), "CONNACK");
    ws.frame(0x1, b"not MQTT")?;
    let (opcode, payload) = ws.next_frame()?;
    ensure!(opcode == 0x8, "a Close frame, got opcode {opcode}");
    ensure!(
        payload.get(..2) == Some(&[0x03, 0xeb][..]),
        "close code 1003: {payload:?}"
    );
    let out = watcher.wait_with_output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "gone",
        "the Will: {out:?}"
    );
    Ok(())
}

/// A self-signed certificate for 127.0.0.1 / localhost (Debian's `openssl`): (cert, key).
fn certificate(dir: &Path) -> anyhow::Result<(String, String)> {
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext"])
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .args(["-keyout", &key, "-out", &cert])
        .output()
        .context("openssl (Debian package openssl)")?;
    ensure!(out.status.success(), "openssl req: {out:?}");
    Ok((cert, key))
}

/// paho-mqtt over TLS (5.0), verifying the server's certificate. ARG: `port,cafile`.
const PAHO_TLS: &str = r#"
import sys, time, threading
import paho.mqtt.client as mqtt

port, cafile = sys.argv[1].split(",")
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls", protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=cafile)
got, subscribed = [], threading.Event()
c.on_message = lambda c, u, m: got.append((m.topic, m.payload))
c.on_subscribe = lambda *a: subscribed.set()
c.connect("127.0.0.1", int(port))
c.loop_start()
c.subscribe("tls/echo", 1)
assert subscribed.wait(10)
c.publish("tls/echo", b"sealed", qos=1).wait_for_publish(10)
deadline = time.time() + 10
while not got and time.time() < deadline:
    time.sleep(0.02)
assert got == [("tls/echo", b"sealed")], got
c.disconnect(); c.loop_stop()
print("OK")
"#;

/// `--mqtts-addr` serves MQTT over TLS: mosquitto's clients and paho with the CA file, the
/// messages on the same log as plain TCP's; plain MQTT bytes sent to the TLS port get no
/// CONNACK, and the listener goes on serving.
#[test]
fn the_tls_listener_serves_mosquitto_and_paho() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = certificate(dir.path())?;
    let tls_port = common::free_port()?;
    let mqtts = format!("127.0.0.1:{tls_port}");
    let data = dir.path().join("data");
    let node = node_with(
        &data,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--mqtts-addr",
            &mqtts,
        ],
    )?;
    let tls = |tool: &str| {
        let mut c = Command::new(tool);
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port.to_string(),
            "--cafile",
            &cert,
        ]);
        c
    };
    let sub = tls("mosquitto_sub")
        .args(["-t", "tls/#", "-q", "1", "-C", "2", "-W", "20", "-v"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("mosquitto_sub")?;
    std::thread::sleep(Duration::from_millis(700));
    let out = tls("mosquitto_pub")
        .args(["-t", "tls/a", "-m", "over tls", "-q", "1"])
        .output()?;
    ensure!(out.status.success(), "mosquitto_pub over TLS: {out:?}");
    // A plain TCP publisher reaches the TLS subscriber: one log.
    node.publish(&["-t", "tls/b", "-m", "over tcp", "-q", "1"])?;
    let got = sub.wait_with_output()?;
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "tls/a over tls\ntls/b over tcp\n"
    );

    // Plain MQTT to the TLS port: no CONNACK, the connection is closed.
    let mut plain = TcpStream::connect(("127.0.0.1", tls_port))?;
    plain.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut bytes = BytesMut::new();
    encode(&connect("plain"), Protocol::V5, u32::MAX, &mut bytes)?;
    plain.write_all(&bytes)?;
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    ensure!(
        answer.first() != Some(&0x20),
        "no CONNACK to plain MQTT: {answer:?}"
    );

    common::run_python(PAHO_TLS, &format!("{tls_port},{cert}"))?;
    assert_eq!(node.resp(&["XLEN", "tls/echo"])?, ":1");
    Ok(())
}
