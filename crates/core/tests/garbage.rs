//! Bad bytes on disk never panic the store: any byte of any file of a data directory may be
//! flipped or overwritten, and opening, recovering, dispatching and inspecting it returns a
//! clear error or a consistent store — never a panic, never an entry that fails to verify.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use manifold_core::store::inspect::InspectOptions;
use manifold_core::store::{
    CqConfig, CrashMode, EntryKind, IndexConfig, LogConfig, MessageStore, NewEntry, RecordOp,
    SimDisk, Storage, StoreConfig, StoreError, StreamId, SubRecord, inspect,
};
use proptest::prelude::*;

fn config() -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_size: 8 * 1024,
            index_records_per_file: 32,
            checkpoint_interval_ms: 0,
            ..LogConfig::default()
        },
        queues: CqConfig {
            slot_entries: 4,
            arena_file_slots: 8,
            first_file_entries: 8,
            max_file_entries: 32,
            max_open_files: 4,
        },
        index: IndexConfig {
            slots: 7,
            entries: 40,
        },
        dispatch_checkpoint_interval_ms: 0,
        ..StoreConfig::default()
    }
}

fn root() -> PathBuf {
    PathBuf::from("/data")
}

/// A small store with messages, keys, a trim and a delete, closed cleanly.
fn build() -> Result<SimDisk, StoreError> {
    let disk = SimDisk::new();
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let store = MessageStore::open(storage, &root(), config())?;
    for i in 1..=60u64 {
        let op = match i {
            50 => RecordOp::Trim,
            55 => RecordOp::Delete,
            _ => RecordOp::Message,
        };
        let e = NewEntry {
            term: 1 + i / 20,
            kind: EntryKind::Command,
            timestamp_ms: i,
            command: Bytes::from(vec![7; (i % 5) as usize]),
            records: vec![SubRecord {
                op,
                db: 0,
                topic: Bytes::from(format!("t{}", i % 3)),
                id: StreamId::new(if op == RecordOp::Message { i } else { i - 20 }, 0),
                message_key: Bytes::from(format!("k{}", i % 4)),
                properties: vec![(Bytes::from_static(b"ct"), Bytes::from_static(b"x"))],
                fields: vec![(
                    Bytes::from_static(b"payload"),
                    Bytes::from(vec![i as u8; 30]),
                )],
            }],
        };
        store.log().append(&e)?.wait()?;
        store.dispatch_to(i)?;
    }
    store.close()?;
    Ok(disk)
}

fn all_files(disk: &SimDisk, dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(names) = disk.list(dir) {
        out.extend(names.into_iter().map(|n| dir.join(n)));
    }
}

/// Every file of the data directory, in a stable order.
fn files(disk: &SimDisk) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in [
        "",
        "commitlog",
        "raftindex",
        "consumequeue",
        "consumequeue/arena",
        "index",
    ] {
        all_files(disk, &root().join(sub), &mut out);
    }
    for id in 0..4u32 {
        all_files(
            disk,
            &root().join("consumequeue").join(format!("{id:08x}")),
            &mut out,
        );
    }
    out
}

/// Opens, dispatches, reads every queue and inspects; any error is fine, a panic is not, and
/// whatever is read back must verify.
fn exercise(disk: &SimDisk) {
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let _ = inspect(
        storage.clone(),
        &root(),
        InspectOptions {
            digests: true,
            ..InspectOptions::default()
        },
    );
    let Ok(store) = MessageStore::open(storage, &root(), config()) else {
        return;
    };
    let last = store.log().last_index();
    if store.dispatch_to(last).is_err() {
        return;
    }
    for t in store.topics() {
        let Ok(entries) = store.read_queue(&t, 0, u64::MAX) else {
            continue;
        };
        for (_, e) in entries {
            if let Ok(m) = store.message(&t, &e) {
                assert_eq!(m.record.id, e.id, "a queue entry points at another message");
            }
        }
        let _ = store.seek(&t, StreamId::new(30, 0));
    }
    let _ = store.find_by_key(0, b"t1", b"k1", 0, u64::MAX, 100);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn any_damaged_byte_gives_an_error_or_a_consistent_store(
        file in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        bytes in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let disk = build().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let files = files(&disk);
        let path = files[file.index(files.len())].clone();
        let len = disk.durable_contents(&path).map_or(0, |c| c.len());
        if len > 0 {
            let f = disk.open(&path, false).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let _ = f.write_at(at.index(len) as u64, &bytes);
            let _ = f.sync_data();
        }
        let disk = disk.crash(CrashMode::DropUnsynced);
        exercise(&disk);
    }
}

#[test]
fn a_truncated_file_gives_an_error_or_a_consistent_store() -> Result<(), StoreError> {
    let disk = build()?;
    for path in files(&disk) {
        for cut in [0u64, 1, 7, 63, 64, 100] {
            let disk = build()?;
            // The next segment is preallocated by a background thread: a build may not have
            // it yet.
            let Ok(f) = disk.open(&path, false) else {
                continue;
            };
            let len = f.size().map_err(|e| StoreError::io(&path, e))?;
            if cut < len {
                f.set_len(cut).map_err(|e| StoreError::io(&path, e))?;
                f.sync_data().map_err(|e| StoreError::io(&path, e))?;
            }
            exercise(&disk.crash(CrashMode::DropUnsynced));
        }
    }
    Ok(())
}
