//! Manifold's MQTT front end. So far: the codec ([`codec`]) — the framer, the decoders and
//! encoders of every MQTT 3.1.1 and 5.0 packet, strict per the specifications. The broker
//! (sessions, subscriptions, delivery on the engine) is built on it in later slices.

pub mod codec;
