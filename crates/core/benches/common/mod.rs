//! What the store benchmarks share: where their data goes and the entry they append.
#![allow(dead_code)] // each benchmark uses part of this

use std::path::PathBuf;

use bytes::Bytes;
use manifold_core::store::{EntryKind, NewEntry, RecordOp, StreamId, SubRecord};

/// `$MANIFOLD_BENCH_DIR`, or `target/bench-data`: must be on a real disk (a tmpfs makes
/// fdatasync free and the figures meaningless).
pub fn bench_dir() -> PathBuf {
    let base = std::env::var_os("MANIFOLD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data")
        });
    std::fs::create_dir_all(&base).expect("bench dir");
    base
}

/// One message of `body` bytes on topic `bench`, stream ID `n-0`.
pub fn entry(n: u64, body: usize) -> NewEntry {
    NewEntry {
        term: 1,
        kind: EntryKind::Command,
        timestamp_ms: n,
        command: Bytes::new(),
        records: vec![SubRecord {
            op: RecordOp::Message,
            db: 0,
            topic: Bytes::from_static(b"bench"),
            id: StreamId::new(n, 0),
            message_key: Bytes::new(),
            properties: Vec::new(),
            fields: vec![(
                Bytes::from_static(b"payload"),
                Bytes::from(vec![b'x'; body]),
            )],
        }],
    }
}
