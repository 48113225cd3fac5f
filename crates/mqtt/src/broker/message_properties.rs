//! How a PUBLISH's (or a Will's) QoS and MQTT 5 properties are kept with its message in the
//! log, and how they come back on the way out (docs/protocol-mapping.md, "MQTT"). A stored
//! message's properties are a list of name/value byte pairs shared by every protocol:
//!
//! | name | holds |
//! |---|---|
//! | `mqtt.qos` | the QoS it was published with, `0`–`2` |
//! | `mqtt.client` | the client id that published it (No Local; the engine's `PUBLISHER_PROPERTY`) |
//! | `mqtt.retain` | `1` when it was published with the retain flag (Retain As Published) |
//! | `content-type` | Content Type (the same name HTTP uses) |
//! | `mqtt.payload-format` | Payload Format Indicator, `0` or `1` |
//! | `mqtt.expiry` | Message Expiry Interval, seconds, decimal; counted from the store timestamp |
//! | `mqtt.response-topic` | Response Topic |
//! | `mqtt.correlation-data` | Correlation Data, bytes as sent |
//! | anything else | a User Property, in order; one named `content-type` or `mqtt.…` is kept as `mqtt.user.` + its name |
//!
//! The first user property `key` is also the message key the IndexFile finds it by. This module
//! only converts; it never decides whether a message is delivered except by its expiry.

use bytes::Bytes;
use manifold_core::engine::PUBLISHER_PROPERTY;

use crate::codec::{Properties, QoS};

/// The QoS a message was published with over MQTT.
pub const QOS: &[u8] = b"mqtt.qos";
const RETAIN: &[u8] = b"mqtt.retain";
const CONTENT_TYPE: &[u8] = b"content-type";
const PAYLOAD_FORMAT: &[u8] = b"mqtt.payload-format";
const EXPIRY: &[u8] = b"mqtt.expiry";
const RESPONSE_TOPIC: &[u8] = b"mqtt.response-topic";
const CORRELATION_DATA: &[u8] = b"mqtt.correlation-data";
/// The prefix of a user property whose own name would read as one of the names above.
const USER_PREFIX: &[u8] = b"mqtt.user.";
/// The user property that is also the message key.
const KEY: &str = "key";

/// What a message is stored with besides its fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Its properties, as the table above.
    pub properties: Vec<(Bytes, Bytes)>,
    /// The message key (empty: none).
    pub message_key: Bytes,
}

/// The stored form of a message client `publisher` published at `qos`, with the retain flag
/// `retain` and properties `p` (a 3.1.1 PUBLISH has none: pass `Properties::default()`). The
/// Topic Alias and Subscription Identifiers are not the message's.
pub fn stored(publisher: &Bytes, qos: QoS, retain: bool, p: &Properties) -> Stored {
    let mut properties = vec![
        (Bytes::from_static(QOS), digit(qos as u8)),
        (Bytes::from_static(PUBLISHER_PROPERTY), publisher.clone()),
    ];
    let mut put = |name: &'static [u8], value: Bytes| {
        properties.push((Bytes::from_static(name), value));
    };
    if retain {
        put(RETAIN, digit(1));
    }
    if let Some(t) = &p.content_type {
        put(CONTENT_TYPE, Bytes::copy_from_slice(t.as_bytes()));
    }
    if let Some(f) = p.payload_format {
        put(PAYLOAD_FORMAT, digit(f));
    }
    if let Some(e) = p.message_expiry {
        put(EXPIRY, Bytes::from(e.to_string()));
    }
    if let Some(t) = &p.response_topic {
        put(RESPONSE_TOPIC, Bytes::copy_from_slice(t.as_bytes()));
    }
    if let Some(c) = &p.correlation_data {
        put(CORRELATION_DATA, c.clone());
    }
    let mut message_key = Bytes::new();
    for (name, value) in &p.user {
        if name == KEY && message_key.is_empty() {
            message_key = Bytes::copy_from_slice(value.as_bytes());
        }
        let name = name.as_bytes();
        let stored_name = if name == CONTENT_TYPE || name.starts_with(b"mqtt.") {
            Bytes::from([USER_PREFIX, name].concat())
        } else {
            Bytes::copy_from_slice(name)
        };
        properties.push((stored_name, Bytes::copy_from_slice(value.as_bytes())));
    }
    Stored {
        properties,
        message_key,
    }
}

fn digit(d: u8) -> Bytes {
    Bytes::from(vec![b'0' + d.min(9)])
}

/// The QoS a message was published with over MQTT; 2 for messages from other protocols (they
/// go at the subscription's QoS).
pub fn published_qos(properties: &[(Bytes, Bytes)]) -> u8 {
    properties
        .iter()
        .find(|(k, _)| k.as_ref() == QOS)
        .and_then(|(_, v)| v.first())
        .map_or(2, |b| b.saturating_sub(b'0').min(2))
}

/// Whether a message was published with the retain flag.
pub fn published_retained(properties: &[(Bytes, Bytes)]) -> bool {
    properties.iter().any(|(k, _)| k.as_ref() == RETAIN)
}

/// The message's expiry, if it has one: the store time plus the interval, in ms since the
/// epoch.
fn expires_at_ms(properties: &[(Bytes, Bytes)], timestamp_ms: u64) -> Option<u64> {
    let (_, v) = properties.iter().find(|(k, _)| k.as_ref() == EXPIRY)?;
    let seconds: u64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    Some(timestamp_ms.saturating_add(seconds.saturating_mul(1000)))
}

/// Whether a message stored at `timestamp_ms` has expired at `now_ms` (no subscriber gets it
/// then, in either version).
pub fn expired(properties: &[(Bytes, Bytes)], timestamp_ms: u64, now_ms: u64) -> bool {
    expires_at_ms(properties, timestamp_ms).is_some_and(|at| now_ms >= at)
}

/// The MQTT 5 properties a message goes out with: the stored ones, its expiry as what remains
/// of it (at least 1 s: one already in flight is sent again), every other property as a User
/// Property. Empty for 3.1.1 (`v5` false).
pub fn outgoing(
    properties: &[(Bytes, Bytes)],
    timestamp_ms: u64,
    now_ms: u64,
    v5: bool,
) -> Properties {
    let mut out = Properties::default();
    if !v5 {
        return out;
    }
    let text = |v: &Bytes| String::from_utf8_lossy(v).into_owned();
    for (name, value) in properties {
        match name.as_ref() {
            QOS | RETAIN | PUBLISHER_PROPERTY => {}
            CONTENT_TYPE => out.content_type = Some(text(value)),
            PAYLOAD_FORMAT => {
                out.payload_format = value.first().map(|b| b.saturating_sub(b'0').min(1))
            }
            EXPIRY => {
                if let Some(at) = expires_at_ms(properties, timestamp_ms) {
                    let left_s = at.saturating_sub(now_ms).div_ceil(1000).max(1);
                    out.message_expiry = Some(u32::try_from(left_s).unwrap_or(u32::MAX));
                }
            }
            RESPONSE_TOPIC => out.response_topic = Some(text(value)),
            CORRELATION_DATA => out.correlation_data = Some(value.clone()),
            n => {
                let n = n.strip_prefix(USER_PREFIX).unwrap_or(n);
                out.user
                    .push((String::from_utf8_lossy(n).into_owned(), text(value)));
            }
        }
    }
    out
}

/// Now, in ms since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Properties {
        Properties {
            content_type: Some("application/json".into()),
            payload_format: Some(1),
            message_expiry: Some(60),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user: vec![
                ("key".into(), "device-7".into()),
                ("mqtt.qos".into(), "spoof".into()),
                ("content-type".into(), "user's".into()),
                ("a".into(), "1".into()),
                ("a".into(), "2".into()),
            ],
            ..Properties::default()
        }
    }

    #[test]
    fn every_message_property_comes_back_as_it_was_sent() {
        let s = stored(&Bytes::from_static(b"c1"), QoS::AtLeastOnce, true, &full());
        assert_eq!(s.message_key, &b"device-7"[..]);
        assert_eq!(published_qos(&s.properties), 1);
        assert!(published_retained(&s.properties));
        let back = outgoing(&s.properties, 1_000_000, 1_000_000, true);
        let mut want = full();
        want.message_expiry = Some(60);
        assert_eq!(back, want);
        assert_eq!(outgoing(&s.properties, 0, 0, false), Properties::default());
    }

    #[test]
    fn the_expiry_counts_down_from_the_store_time_and_ends_delivery() {
        let s = stored(&Bytes::new(), QoS::AtMostOnce, false, &full());
        assert!(!published_retained(&s.properties));
        let at = 5_000_000;
        assert!(!expired(&s.properties, at, at + 59_999));
        assert!(expired(&s.properties, at, at + 60_000));
        assert_eq!(
            outgoing(&s.properties, at, at + 20_500, true).message_expiry,
            Some(40)
        );
        assert_eq!(
            outgoing(&s.properties, at, at + 90_000, true).message_expiry,
            Some(1)
        );
        let none = stored(
            &Bytes::new(),
            QoS::AtMostOnce,
            false,
            &Properties::default(),
        );
        assert!(!expired(&none.properties, 0, u64::MAX));
        assert_eq!(
            outgoing(&none.properties, 0, 0, true),
            Properties::default()
        );
    }

    #[test]
    fn other_protocols_properties_are_user_properties_and_their_qos_is_the_subscriptions() {
        let props = vec![(Bytes::from_static(b"origin"), Bytes::from_static(b"http"))];
        assert_eq!(published_qos(&props), 2);
        assert_eq!(
            outgoing(&props, 0, 0, true).user,
            vec![("origin".to_string(), "http".to_string())]
        );
    }
}
