//! `inspect`: a read-only walk of a data directory that verifies every record and reports
//! problems with file and offset, and digests that compare replicas.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use manifold_core::store::inspect::InspectOptions;
use manifold_core::store::{
    CqConfig, CrashMode, EntryKind, IndexConfig, LogConfig, MessageStore, NewEntry, RecordOp,
    SimDisk, Storage, StoreConfig, StoreError, StreamId, SubRecord, inspect,
};

fn config() -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_size: 8 * 1024,
            index_records_per_file: 64,
            checkpoint_interval_ms: 60_000,
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

fn fill(disk: &SimDisk, n: u64, odd_one: Option<u64>) -> Result<(), StoreError> {
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let store = MessageStore::open(storage, &root(), config())?;
    for i in 1..=n {
        let payload = if Some(i) == odd_one {
            "different".to_string()
        } else {
            format!("m{i}")
        };
        let e = NewEntry {
            term: 1,
            kind: EntryKind::Command,
            timestamp_ms: i,
            command: Bytes::new(),
            records: vec![SubRecord {
                op: RecordOp::Message,
                db: 0,
                topic: Bytes::from(format!("t{}", i % 4)),
                id: StreamId::new(i, 0),
                message_key: Bytes::new(),
                properties: Vec::new(),
                fields: vec![(Bytes::from_static(b"payload"), Bytes::from(payload))],
            }],
        };
        store.log().append(&e)?.wait()?;
    }
    store.dispatch_to(n)?;
    store.close()
}

fn run(disk: &SimDisk) -> Result<manifold_core::store::InspectReport, StoreError> {
    inspect(
        Arc::new(disk.clone()),
        &root(),
        InspectOptions {
            digests: true,
            ..InspectOptions::default()
        },
    )
}

#[test]
fn a_sound_directory_has_no_problems_and_a_full_summary() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    fill(&disk, 150, None)?;
    let used = disk.used_bytes();
    let report = run(&disk)?;
    assert_eq!(report.problems, vec![]);
    assert!(!report.unclean);
    assert_eq!(
        (report.first_index, report.last_index),
        (Some(1), Some(150))
    );
    assert!(report.segments.len() > 2);
    assert_eq!(report.segments.iter().map(|s| s.entries).sum::<u64>(), 150);
    assert_eq!(report.digests.len(), 150);
    let derived = report.derived.expect("dispatch checkpoint");
    assert_eq!(
        (
            derived.dispatched,
            derived.live_topics,
            derived.queue_entries
        ),
        (150, 4, 150)
    );
    assert_eq!(derived.migrated_topics, 4);
    assert!(derived.queue_files > 4);
    assert_eq!(disk.used_bytes(), used, "inspect writes nothing");
    Ok(())
}

#[test]
fn digests_compare_replicas_entry_by_entry() -> Result<(), StoreError> {
    let (a, b, c) = (SimDisk::new(), SimDisk::new(), SimDisk::new());
    fill(&a, 60, None)?;
    fill(&b, 60, None)?;
    fill(&c, 60, Some(42))?;
    let (a, b, c) = (run(&a)?.digests, run(&b)?.digests, run(&c)?.digests);
    assert_eq!(a, b);
    let differing: Vec<u64> = a
        .iter()
        .zip(&c)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.index)
        .collect();
    assert_eq!(differing, vec![42]);
    Ok(())
}

#[test]
fn corruption_is_reported_with_file_and_offset_and_a_torn_tail_is_not_a_problem()
-> Result<(), StoreError> {
    let disk = SimDisk::new();
    fill(&disk, 30, None)?;
    let seg = root().join("commitlog").join("00000000000000000000");
    let f = disk
        .open(&seg, false)
        .map_err(|e| StoreError::io(&seg, e))?;
    // Corrupt the second record's body.
    let mut size = [0u8; 4];
    f.read_exact_at(64, &mut size)
        .map_err(|e| StoreError::io(&seg, e))?;
    let second = 64 + u64::from(u32::from_le_bytes(size));
    f.write_at(second + 50, b"\xde\xad")
        .map_err(|e| StoreError::io(&seg, e))?;
    f.sync_data().map_err(|e| StoreError::io(&seg, e))?;
    let report = run(&disk)?;
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems); // the record, and the checkpoint's claim
    assert_eq!(
        (report.problems[0].file.clone(), report.problems[0].offset),
        (seg, second)
    );
    assert_eq!(report.last_index, Some(1));

    // Garbage past the flushed point is a torn tail the next open cuts, not corruption.
    let disk = SimDisk::new();
    fill(&disk, 5, None)?;
    let disk = disk.crash(CrashMode::DropUnsynced);
    let seg = root().join("commitlog").join("00000000000000000000");
    let end = 64 + run(&disk)?.segments[0].used;
    let f = disk
        .open(&seg, false)
        .map_err(|e| StoreError::io(&seg, e))?;
    f.write_at(end, &[0xab; 40])
        .map_err(|e| StoreError::io(&seg, e))?;
    let report = run(&disk)?;
    assert_eq!(report.problems, vec![]);
    assert_eq!(report.torn_tail, Some((seg, end)));
    Ok(())
}

#[test]
fn a_topic_is_checked_entry_by_entry_against_the_log() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    fill(&disk, 100, None)?;
    let options = InspectOptions {
        digests: false,
        topic: Some((0, b"t1".to_vec())),
    };
    let report = inspect(Arc::new(disk.clone()), &root(), options.clone())?;
    assert_eq!(report.problems, vec![]);
    let check = report.topic.expect("topic checked");
    assert_eq!((check.log_messages, check.queue_entries), (25, 25));
    let topic = check.topic.expect("row");
    // Damage one queue entry of the topic (its own files: it outgrew its arena slot).
    let dir = root()
        .join("consumequeue")
        .join(format!("{:08x}", topic.id));
    let first = disk
        .list(&dir)
        .map_err(|e| StoreError::io(&dir, e))?
        .into_iter()
        .next()
        .expect("a file");
    let f = disk
        .open(&dir.join(&first), false)
        .map_err(|e| StoreError::io(&dir, e))?;
    f.write_at(32 * 3 + 8, &[0xee])
        .map_err(|e| StoreError::io(&dir, e))?; // entry 3's stream ID
    f.sync_data().map_err(|e| StoreError::io(&dir, e))?;
    let report = inspect(Arc::new(disk.clone()), &root(), options)?;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].offset, 32 * 3);
    Ok(())
}

fn message(topic: &str, ms: u64, op: RecordOp) -> SubRecord {
    SubRecord {
        op,
        db: 0,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        id: StreamId::new(ms, 0),
        message_key: Bytes::new(),
        properties: Vec::new(),
        fields: vec![(Bytes::from_static(b"payload"), Bytes::from(vec![b'x'; 40]))],
    }
}

fn append(store: &MessageStore, records: Vec<SubRecord>) -> Result<u64, StoreError> {
    let e = NewEntry {
        term: 1,
        kind: EntryKind::Command,
        timestamp_ms: 1,
        command: Bytes::new(),
        records,
    };
    store.log().append(&e)?.wait()
}

#[test]
fn a_topic_dropped_and_recreated_in_one_entry_checks_clean() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let store = MessageStore::open(storage, &root(), config())?;
    append(
        &store,
        vec![
            message("q", 1, RecordOp::Message),
            message("q", 2, RecordOp::Message),
        ],
    )?;
    append(
        &store,
        vec![
            message("q", 3, RecordOp::Message),
            message("q", 0, RecordOp::Drop),
            message("q", 1, RecordOp::Message),
        ],
    )?;
    store.dispatch_to(u64::MAX)?;
    store.close()?;
    let options = InspectOptions {
        digests: false,
        topic: Some((0, b"q".to_vec())),
    };
    let report = inspect(Arc::new(disk), &root(), options)?;
    assert_eq!(report.problems, vec![]);
    let check = report.topic.expect("checked");
    assert_eq!((check.log_messages, check.queue_entries), (1, 1));
    Ok(())
}

#[test]
fn a_topic_whose_first_messages_left_with_old_segments_checks_clean() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let store = MessageStore::open(storage, &root(), config())?;
    for ms in 1..=150 {
        append(&store, vec![message("r", ms, RecordOp::Message)])?;
    }
    // Retention as the engine will do it: trim the stream, checkpoint, then drop old segments.
    append(&store, vec![message("r", 100, RecordOp::Trim)])?;
    store.dispatch_to(u64::MAX)?;
    store.checkpoint()?;
    let first = store.delete_before(90)?;
    assert!(first > 1, "old segments went");
    store.close()?;
    let options = InspectOptions {
        digests: false,
        topic: Some((0, b"r".to_vec())),
    };
    let report = inspect(Arc::new(disk), &root(), options)?;
    assert_eq!(report.problems, vec![]);
    assert_eq!(
        report.topic.and_then(|c| c.topic).map(|t| t.live_len()),
        Some(51)
    );
    Ok(())
}
