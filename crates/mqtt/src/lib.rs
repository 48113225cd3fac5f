//! Manifold's MQTT front end: the codec ([`codec`]) — the framer, the decoders and encoders of
//! every MQTT 3.1.1 and 5.0 packet, strict per the specifications — and the broker
//! ([`broker`]): connections, sessions, publishing and delivery, on the engine.

pub mod broker;
pub mod codec;

pub use broker::{Broker, BrokerConfig, BrokerStats};
