//! Shared helpers for Manifold's multi-process tests.

use bytes::Bytes;
use manifold_core::store::{EntryKind, NewEntry, RecordOp, StreamId, SubRecord};

/// The entry the SIGKILL test's child appends at index `n`: its content is a function of `n`
/// so the parent can check every surviving entry byte for byte.
pub fn kill_test_entry(n: u64) -> NewEntry {
    NewEntry {
        term: 1,
        kind: EntryKind::Command,
        timestamp_ms: n,
        command: Bytes::from(n.to_le_bytes().to_vec()),
        records: vec![SubRecord {
            op: RecordOp::Message,
            db: 0,
            topic: Bytes::from(format!("device/{}", n % 17)),
            id: StreamId::new(n, 0),
            message_key: Bytes::new(),
            properties: Vec::new(),
            fields: vec![(
                Bytes::from_static(b"payload"),
                Bytes::from(vec![(n % 251) as u8; 100]),
            )],
        }],
    }
}
