//! CONNECT → CONNACK: the protocol version, the client id (assigned when empty), the
//! principal, the session (opened or resumed through a committed command) and the Will.
//! It never reads or writes the socket: the packets it answers are queued on the connection.

use bytes::Bytes;
use manifold_core::engine::{Client, EngineError, SessionError, Will};
use tokio::sync::watch;

use super::Conn;
use crate::broker::message_properties;
use crate::codec::{ConnAck, Connect, Packet, Properties};

impl Conn {
    pub(super) fn connack(&mut self, code: u8, session_present: bool, properties: Properties) {
        self.send(&Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties,
        }));
    }

    /// CONNECT → CONNACK: the client id, the principal, the session. `None`: refused (the
    /// CONNACK saying why is queued).
    pub(super) async fn accept(
        &mut self,
        c: Connect,
        connection: u64,
    ) -> Option<(watch::Receiver<bool>, tokio::sync::oneshot::Sender<()>, u16)> {
        let v5 = self.v5();
        let refuse = |v3: u8, v5c: u8| if v5 { v5c } else { v3 };
        if v5 {
            self.peer_max_packet = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
            self.peer_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
            self.peer_alias_max = c.properties.topic_alias_maximum.unwrap_or(0);
            if c.properties.auth_method.is_some() {
                // No enhanced authentication method is configured.
                self.connack(0x8C, false, Properties::default());
                return None;
            }
        }
        let mut assigned = None;
        let id = if c.client_id.is_empty() {
            if !v5 && !c.clean_start {
                self.connack(2, false, Properties::default()); // identifier rejected
                return None;
            }
            let id = format!(
                "manifold-{:x}-{:x}",
                std::process::id(),
                connection ^ nonce()
            );
            assigned = Some(id.clone());
            id
        } else {
            c.client_id.clone()
        };
        self.id = Bytes::from(id.into_bytes());
        let engine = self.shared.engine.clone();
        let principal = match &c.username {
            Some(user) => {
                engine.authenticate(user.as_bytes(), c.password.as_deref().unwrap_or_default())
            }
            None => engine.anonymous(),
        };
        let principal = match principal {
            Ok(p) => p,
            Err(_) => {
                self.connack(refuse(4, 0x86), false, Properties::default());
                return None;
            }
        };
        let client = Client::new(engine, principal);
        let expiry_s = if v5 {
            c.properties.session_expiry.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            self.shared.config.persistent_session_expiry_s
        };
        let will = c.will.as_ref().map(|w| Will {
            topic: Bytes::from(w.topic.clone().into_bytes()),
            payload: w.payload.clone(),
            properties: message_properties::stored(&self.id, w.qos, w.retain, &w.properties)
                .properties,
            qos: w.qos as u8,
            retain: w.retain,
            delay_s: w.properties.will_delay.unwrap_or(0),
        });
        // A connection already holding this client id here leaves first.
        let (leave, done) = self.shared.take(&self.id, connection).await;
        // The session is this connection's (named in the Open) until another connection, here
        // or on another node, opens it; its commands carry the epoch, so once that happens
        // they change nothing.
        let owner = self.shared.owner(connection);
        let (present, client) = match client
            .session_open_by(self.id.clone(), c.clean_start, expiry_s, will, Some(owner))
            .await
        {
            Ok(opened) => (opened.present, client.with_session_epoch(opened.epoch)),
            Err(e) => {
                let code = match e {
                    EngineError::NoPermission { .. } => refuse(5, 0x87),
                    EngineError::BadTopic(_) => refuse(2, 0x90),
                    EngineError::Session(SessionError::TooManySessions) => refuse(3, 0x97),
                    // No leader to take the session (an election, a partition), or a failure.
                    _ => refuse(3, 0x88),
                };
                self.connack(code, false, Properties::default());
                self.shared.release(&self.id, connection);
                return None;
            }
        };
        let max_keep_alive = self.shared.config.max_keep_alive;
        let keep_alive =
            if max_keep_alive > 0 && (c.keep_alive == 0 || c.keep_alive > max_keep_alive) {
                max_keep_alive
            } else {
                c.keep_alive
            };
        let mut props = Properties::default();
        if v5 {
            props.assigned_client_id = assigned;
            props.receive_maximum = Some(self.shared.config.receive_maximum);
            props.maximum_packet_size = Some(self.shared.config.max_packet_size);
            props.topic_alias_maximum = Some(self.shared.config.topic_alias_maximum);
            props.shared_available = Some(1);
            if keep_alive != c.keep_alive {
                props.server_keep_alive = Some(keep_alive);
            }
        }
        // The broker's own in-flight window bounds what the client allows (3.1.1: all of it).
        self.peer_receive_max = self.peer_receive_max.min(self.shared.config.max_inflight);
        self.connack(0, present && !c.clean_start, props);
        self.client = Some(client);
        self.resend_in_flight();
        Some((leave, done, keep_alive))
    }
}

/// Some bits that differ between runs, for assigned client ids.
fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t.rotate_left(17)
}
