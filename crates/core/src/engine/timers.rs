//! Timers: deadlines that live in the engine state, and the commands the leader proposes when
//! one passes. The timer thread (leader only; a single node is always the leader) looks at the
//! state every `timer_tick_ms`, and proposes a command for each due deadline; applying the
//! command is what changes state, identically on every node. A new leader re-derives every
//! deadline from the state it applied.
//!
//! Today: producer dedupe expiry (a producer unused for `producer_ttl_ms` is forgotten),
//! MQTT session expiry (a disconnected session past its expiry interval ends), MQTT Wills
//! (published after their delay when a connection ended without a normal DISCONNECT) and
//! retention (log entries older than `retention_ms` go, checked every `retention_check_ms`).
//! This module decides *when*; it never changes state itself.

/// A timer's command, carried in an entry with the Timer tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerCommand {
    /// Forget the producers whose newest append was stamped before this time (ms).
    ExpireProducers {
        /// The cut-off.
        before_ms: u64,
    },
    /// Retention: every topic loses the entries of log entries below `index` (the entry also
    /// carries a RetainFrom sub-record for the store), and pending entries whose message is
    /// gone leave their groups.
    RetainFrom {
        /// The first log index kept.
        index: u64,
    },
    /// End every disconnected session whose expiry passed by this time (ms).
    ExpireSessions {
        /// Now, as the leader saw it.
        now_ms: u64,
    },
    /// Publish this client's Will: the entry carries the Will's message (a Message
    /// sub-record); applied, the session's Will is cleared (and, with its retain flag, the
    /// message becomes the topic's retained message).
    PublishWill {
        /// MQTT client id.
        client: bytes::Bytes,
    },
}

impl TimerCommand {
    /// The command bytes after the version and tag: kind u8, then its fields.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TimerCommand::ExpireProducers { before_ms } => {
                out.push(1);
                out.extend_from_slice(&before_ms.to_le_bytes());
            }
            TimerCommand::RetainFrom { index } => {
                out.push(2);
                out.extend_from_slice(&index.to_le_bytes());
            }
            TimerCommand::ExpireSessions { now_ms } => {
                out.push(3);
                out.extend_from_slice(&now_ms.to_le_bytes());
            }
            TimerCommand::PublishWill { client } => {
                out.push(4);
                out.extend_from_slice(client);
            }
        }
    }

    /// Decodes what `encode` wrote; `None` for anything else (applied as nothing).
    pub fn decode(b: &[u8]) -> Option<Self> {
        match b {
            [1, rest @ ..] if rest.len() == 8 => Some(TimerCommand::ExpireProducers {
                before_ms: u64::from_le_bytes(rest.try_into().ok()?),
            }),
            [2, rest @ ..] if rest.len() == 8 => Some(TimerCommand::RetainFrom {
                index: u64::from_le_bytes(rest.try_into().ok()?),
            }),
            [3, rest @ ..] if rest.len() == 8 => Some(TimerCommand::ExpireSessions {
                now_ms: u64::from_le_bytes(rest.try_into().ok()?),
            }),
            [4, client @ ..] => Some(TimerCommand::PublishWill {
                client: bytes::Bytes::copy_from_slice(client),
            }),
            _ => None,
        }
    }
}

/// What is due at `now_ms`, given the oldest producer's last use and the TTL, and the
/// earliest session expiry deadline.
pub fn due(
    now_ms: u64,
    oldest_producer_ms: Option<u64>,
    producer_ttl_ms: u64,
    session_deadline_ms: Option<u64>,
) -> Vec<TimerCommand> {
    let mut out = Vec::new();
    if session_deadline_ms.is_some_and(|d| d <= now_ms) {
        out.push(TimerCommand::ExpireSessions { now_ms });
    }
    let before_ms = now_ms.saturating_sub(producer_ttl_ms);
    // Strictly before, as the command forgets: an equal time is not due yet.
    if oldest_producer_ms.is_some_and(|oldest| oldest < before_ms) {
        out.push(TimerCommand::ExpireProducers { before_ms });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_deadlines_are_exact() {
        let c = TimerCommand::ExpireProducers { before_ms: 77 };
        let mut b = Vec::new();
        c.encode(&mut b);
        assert_eq!(TimerCommand::decode(&b), Some(c));
        assert_eq!(TimerCommand::decode(&b[..5]), None);
        assert_eq!(TimerCommand::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert!(due(2_000, Some(1_000), 1_000, None).is_empty());
        assert_eq!(
            due(2_001, Some(1_000), 1_000, None),
            [TimerCommand::ExpireProducers { before_ms: 1_001 }]
        );
        assert!(due(5_000, None, 1_000, Some(5_001)).is_empty());
        assert_eq!(
            due(5_000, None, 1_000, Some(5_000)),
            [TimerCommand::ExpireSessions { now_ms: 5_000 }]
        );
        for r in [
            TimerCommand::RetainFrom { index: 9 },
            TimerCommand::PublishWill {
                client: bytes::Bytes::from_static(b"dev-1"),
            },
        ] {
            let mut b = Vec::new();
            r.encode(&mut b);
            assert_eq!(TimerCommand::decode(&b), Some(r));
        }
    }
}
