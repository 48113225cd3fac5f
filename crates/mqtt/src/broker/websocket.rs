//! MQTT over WebSocket: the route `/mqtt` for the HTTP listener (subprotocol `mqtt`, as
//! browsers' MQTT.js and paho's WebSocket transport ask for; `mqttv3.1` too). MQTT bytes ride
//! in binary frames, any number of packets or part of one per frame (MQTT 5.0 §6); the
//! connection behind it is the same as on TCP. Owns only the frames ↔ bytes pump; it never
//! reads a packet.
//!
//! A request without the `mqtt` subprotocol is refused (400), as Mosquitto and EMQX refuse it.
//! A text frame closes the connection (close code 1003: MQTT is binary only).

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Broker, transport};

/// The subprotocols accepted, the first one the client offers wins.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Bytes in flight between the frames and the connection, each way.
const PIPE_BYTES: usize = 64 * 1024;

/// How long one direction may go on once the other has ended (a Close answered, the last
/// packets written).
const LINGER: Duration = Duration::from_secs(5);

/// The `/mqtt` route, for the HTTP listener's router.
pub fn routes(broker: Broker) -> axum::Router {
    axum::Router::new()
        .route("/mqtt", any(upgrade))
        .with_state(broker)
}

async fn upgrade(State(broker): State<Broker>, ws: WebSocketUpgrade) -> Response {
    let ws = ws.protocols(SUBPROTOCOLS);
    if ws.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "MQTT over WebSocket needs the subprotocol mqtt (Sec-WebSocket-Protocol: mqtt)\n",
        )
            .into_response();
    }
    // A frame may carry a whole packet: as large as the broker takes, and some room.
    let max = broker.shared.config.max_packet_size as usize + 64 * 1024;
    // A small read buffer to start with (tungstenite's 128 KiB default is zero-filled at the
    // first read: resident for every connection); a larger frame grows it.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4096)
        .on_upgrade(move |socket| broker.websocket(socket))
}

impl Broker {
    /// Runs an MQTT connection on an upgraded WebSocket until either side ends it.
    async fn websocket(self, socket: WebSocket) {
        // Counted with the broker's connections: shutdown waits for it.
        let _running = self.tasks.token();
        let (broker_side, pump_side) = tokio::io::duplex(PIPE_BYTES);
        let (rd, wr) = tokio::io::split(broker_side);
        let (rd, wr) = transport::stream(Box::new(rd), Box::new(wr));
        if !self.connection(rd, wr) {
            return;
        }
        let (mut from_broker, mut to_broker) = tokio::io::split(pump_side);
        let (mut frames_out, mut frames_in) = socket.split();
        let close_with = Arc::new(AtomicU16::new(close_code::NORMAL));
        let inbound = async {
            while let Some(Ok(message)) = frames_in.next().await {
                match message {
                    Message::Binary(bytes) => {
                        if to_broker.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    Message::Text(_) => {
                        close_with.store(close_code::UNSUPPORTED, Ordering::Relaxed);
                        break;
                    }
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => {} // answered by the WebSocket
                }
            }
            // The connection reads the end of its stream (a lost connection, unless its
            // DISCONNECT came first).
            let _ = to_broker.shutdown().await;
        };
        let outbound = async {
            let mut buf = BytesMut::new();
            loop {
                buf.reserve(16 * 1024);
                match from_broker.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let frame = Message::Binary(buf.split().freeze());
                        if frames_out.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let frame = CloseFrame {
                code: close_with.load(Ordering::Relaxed),
                reason: "".into(),
            };
            let _ = frames_out.send(Message::Close(Some(frame))).await;
        };
        tokio::pin!(inbound, outbound);
        tokio::select! {
            () = &mut inbound => {
                let _ = tokio::time::timeout(LINGER, &mut outbound).await;
            }
            () = &mut outbound => {
                let _ = tokio::time::timeout(LINGER, &mut inbound).await;
            }
        }
    }
}
