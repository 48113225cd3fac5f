//! The engine's typed errors. Each front end maps them to its protocol's own reply (a Redis
//! error string, an MQTT reason code, an HTTP status); the variants say what happened, not how
//! a protocol spells it.

use crate::store::{StoreError, StreamId};

/// Errors of engine operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// An explicit or `ms-*` ID is not above the stream's last ID.
    #[error("the ID specified is equal or smaller than the stream's top item {last}")]
    IdTooSmall {
        /// The stream's last ID.
        last: StreamId,
    },
    /// `0-0` was given as an ID.
    #[error("the ID specified must be greater than 0-0")]
    IdZero,
    /// No ID can follow the stream's last one.
    #[error("the stream has exhausted the last possible ID")]
    IdExhausted,
    /// A message without fields.
    #[error("a message needs at least one field")]
    NoFields,
    /// The database number is out of range.
    #[error("database {0} is out of range (0..=15)")]
    BadDb(u8),
    /// The message is larger than `max_message_bytes`.
    #[error("message of {size} bytes exceeds max_message_bytes {limit}")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// A retained publish would take retained messages past `max_retained_bytes`.
    #[error("retained messages would exceed max_retained_bytes {limit}")]
    RetainedLimit {
        /// Limit.
        limit: u64,
    },
    /// An invalid MQTT topic name or filter.
    #[error("invalid topic: {0}")]
    BadTopic(super::topic_filter::TopicError),
    /// A consumer-group command failed and changed nothing.
    #[error("{0}")]
    Group(#[from] super::groups::GroupError),
    /// An argument out of its range (a QoS above 2, a retain handling above 2).
    #[error("invalid argument: {0}")]
    InvalidArgument(std::borrow::Cow<'static, str>),
    /// An MQTT session command failed and changed nothing.
    #[error("{0}")]
    Session(#[from] super::sessions::SessionError),
    /// The principal may not publish to (`publish`) or subscribe to this key.
    #[error("no permission to {} {key:?}", if *publish { "publish to" } else { "subscribe to" })]
    NoPermission {
        /// The key.
        key: bytes::Bytes,
        /// Whether it was a publish (else a subscribe).
        publish: bool,
    },
    /// Unknown principal or wrong secret (the same error for both).
    #[error("invalid principal or secret")]
    BadCredentials,
    /// XSETID changed nothing (the stream is missing, or the ID or counter is too small).
    #[error("XSETID refused: {0:?}")]
    SetId(crate::store::SetIdRefused),
    /// This node does not take writes now (not the leader, or a new leader whose no-op is
    /// not applied yet): retry on the leader, or here after a moment.
    #[error("not the leader{}", match leader { Some(n) => format!(": node {n} leads"), None => ": no leader elected yet".into() })]
    NotLeader {
        /// The leader, if known.
        leader: Option<u64>,
    },
    /// The engine is shutting down; retry on another node or after restart.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// The store failed; the node must be restarted (recovery decides what survived).
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

/// `Result` with [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
