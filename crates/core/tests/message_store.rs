//! The message store: ConsumeQueues, topic table and IndexFile built by the dispatcher, on the
//! simulated disk. The crash test compares the derived state after any crash with a
//! derivation from scratch of the recovered log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use manifold_core::store::{
    CqConfig, CrashMode, EntryKind, IndexConfig, LogConfig, MessageStore, NewEntry,
    PendingCheckpoint, RecordOp, SETID_ADDED_PROPERTY, SETID_MAXDEL_PROPERTY, SimDisk, Storage,
    StoreConfig, StoreError, StreamId, SubRecord,
};
use proptest::prelude::*;

fn config() -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_size: 16 * 1024,
            max_entry_bytes: 8 * 1024,
            index_records_per_file: 64,
            recent_records: 32,
            checkpoint_interval_ms: 5,
            ..LogConfig::default()
        },
        queues: CqConfig {
            slot_entries: 4,
            arena_file_slots: 8,
            first_file_entries: 8,
            max_file_entries: 32,
            max_open_files: 1, // early syncs of crowded dirty files happen
        },
        index: IndexConfig {
            slots: 7,
            entries: 40,
        },
        dispatch_checkpoint_interval_ms: 0,
        ..StoreConfig::default()
    }
}

fn open(disk: &SimDisk) -> Result<MessageStore, StoreError> {
    open_with(disk, config())
}

fn open_with(disk: &SimDisk, config: StoreConfig) -> Result<MessageStore, StoreError> {
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    MessageStore::open(storage, &PathBuf::from("/data"), config)
}

/// Derived state checkpointed only when the test says so.
fn open_manual(disk: &SimDisk) -> Result<MessageStore, StoreError> {
    open_with(
        disk,
        StoreConfig {
            dispatch_checkpoint_interval_ms: 3_600_000,
            ..config()
        },
    )
}

fn record(op: RecordOp, topic: &str, id: StreamId, key: &str) -> SubRecord {
    SubRecord {
        op,
        db: 0,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        id,
        message_key: Bytes::copy_from_slice(key.as_bytes()),
        properties: Vec::new(),
        fields: if op == RecordOp::Message {
            vec![(
                Bytes::from_static(b"payload"),
                Bytes::from(format!("{topic}@{id}")),
            )]
        } else {
            Vec::new()
        },
    }
}

fn append(store: &MessageStore, ts: u64, records: Vec<SubRecord>) -> Result<u64, StoreError> {
    let e = NewEntry {
        term: 1,
        kind: EntryKind::Command,
        timestamp_ms: ts,
        command: Bytes::new(),
        records,
    };
    store.log().append(&e)?.wait()
}

fn ids(store: &MessageStore, topic: &str) -> Result<Vec<StreamId>, StoreError> {
    let Some(t) = store.topic(0, topic.as_bytes()) else {
        return Ok(Vec::new());
    };
    Ok(store
        .read_queue(&t, 0, u64::MAX)?
        .into_iter()
        .map(|(_, e)| e.id)
        .collect())
}

#[test]
fn dispatch_builds_queues_that_read_back_the_messages() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    for i in 1..=100u64 {
        let topic = format!("t{}", i % 3);
        append(
            &store,
            i,
            vec![record(RecordOp::Message, &topic, StreamId::new(i, 0), "")],
        )?;
    }
    // Nothing is visible before the dispatch point moves.
    assert!(store.topic(0, b"t0").is_none());
    store.dispatch_to(50)?;
    assert_eq!(ids(&store, "t1")?.len(), 17);
    store.dispatch_to(100)?;
    let t1 = ids(&store, "t1")?;
    assert_eq!(
        t1,
        (1..=100)
            .filter(|i| i % 3 == 1)
            .map(|i| StreamId::new(i, 0))
            .collect::<Vec<_>>()
    );
    let topic = store.topic(0, b"t2").expect("t2 exists");
    assert!(topic.migrated, "33 entries outgrow a 4-entry slot");
    for (n, e) in store.read_queue(&topic, 0, u64::MAX)? {
        let m = store.message(&topic, &e)?;
        assert_eq!(m.record.fields[0].1, Bytes::from(format!("t2@{}", e.id)));
        assert_eq!(store.seek(&topic, e.id)?, n);
        // Between two IDs, seek lands on the next one.
        assert_eq!(store.seek(&topic, StreamId::new(e.id.ms - 1, 5))?, n);
    }
    assert_eq!(store.seek(&topic, StreamId::new(1000, 0))?, topic.len);
    assert!(store.open_queue_handles() <= 1 + 4, "handle cache bounded");
    Ok(())
}

#[test]
fn xdel_trim_and_drop_are_derived_from_the_log() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    for i in 1..=40u64 {
        append(
            &store,
            i,
            vec![record(RecordOp::Message, "s", StreamId::new(i, 0), "")],
        )?;
    }
    append(
        &store,
        41,
        vec![record(RecordOp::Delete, "s", StreamId::new(7, 0), "")],
    )?;
    append(
        &store,
        42,
        vec![record(RecordOp::Trim, "s", StreamId::new(20, 0), "")],
    )?;
    store.dispatch_to(u64::MAX)?;
    let want: Vec<StreamId> = (20..=40).map(|i| StreamId::new(i, 0)).collect();
    assert_eq!(ids(&store, "s")?, want);
    // Drop then re-create in one entry: a new incarnation with only the new message.
    let incarnation = store.topic(0, b"s").map(|t| t.incarnation);
    let idx = append(
        &store,
        43,
        vec![
            record(RecordOp::Drop, "s", StreamId::default(), ""),
            record(RecordOp::Message, "s", StreamId::new(1, 1), ""),
        ],
    )?;
    store.dispatch_to(u64::MAX)?;
    let t = store.topic(0, b"s").expect("re-created");
    assert_eq!(t.incarnation, idx);
    assert_ne!(Some(t.incarnation), incarnation);
    assert_eq!(ids(&store, "s")?, vec![StreamId::new(1, 1)]);
    // After a power cut, re-dispatch derives the same.
    let disk = disk.crash(CrashMode::DropUnsynced);
    drop(store);
    let store = open(&disk)?;
    store.dispatch_to(u64::MAX)?;
    assert_eq!(ids(&store, "s")?, vec![StreamId::new(1, 1)]);
    Ok(())
}

#[test]
fn find_by_key_returns_newest_first_within_the_time_range() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    for i in 1..=120u64 {
        let key = format!("k{}", i % 5);
        append(
            &store,
            1000 + i,
            vec![record(
                RecordOp::Message,
                "dev/1",
                StreamId::new(i, 0),
                &key,
            )],
        )?;
    }
    store.dispatch_to(u64::MAX)?;
    let hits = store.find_by_key(0, b"dev/1", b"k3", 0, u64::MAX, 100)?;
    let want: Vec<u64> = (1..=120u64)
        .rev()
        .filter(|i| i % 5 == 3)
        .map(|i| 1000 + i)
        .collect();
    assert_eq!(
        hits.iter().map(|h| h.timestamp_ms).collect::<Vec<_>>(),
        want
    );
    let ranged = store.find_by_key(0, b"dev/1", b"k3", 1050, 1080, 100)?;
    assert!(
        ranged
            .iter()
            .all(|h| (1050..=1080).contains(&h.timestamp_ms))
    );
    assert_eq!(ranged.len(), 6);
    assert!(
        store
            .find_by_key(0, b"dev/2", b"k3", 0, u64::MAX, 10)?
            .is_empty()
    );
    assert_eq!(
        store.find_by_key(0, b"dev/1", b"k3", 0, u64::MAX, 3)?.len(),
        3
    );
    Ok(())
}

// ---- crash model: derived state after any crash == derivation from scratch of the log ----

#[derive(Debug, Clone)]
enum Op {
    Publish {
        topic: u8,
        count: u8,
        keyed: bool,
    },
    Delete {
        topic: u8,
        nth: u8,
    },
    Trim {
        topic: u8,
        nth: u8,
    },
    TrimToLen {
        topic: u8,
        keep: u8,
    },
    Drop {
        topic: u8,
    },
    /// XGROUP CREATE MKSTREAM: the topic exists (empty) afterwards.
    Create {
        topic: u8,
    },
    /// Retention: every topic loses the entries of log entries below `last index + 1 - back`.
    RetainFrom {
        back: u8,
    },
    /// XSETID to `last + delta - 2` (below, at or above the last ID), maybe with a counter and
    /// a max deleted ID.
    SetId {
        topic: u8,
        delta: u8,
        added: Option<u8>,
        max_deleted: bool,
    },
    Dispatch,
    Checkpoint,
    /// The first half of a checkpoint (captured at the dispatch point); the ops that follow
    /// go on (publishing, dispatching) until `FinishCheckpoint` or a crash abandons it.
    BeginCheckpoint,
    FinishCheckpoint,
    /// A power cut while a begun checkpoint is being made durable: the `n`-th sync fails.
    CrashDuringFinish(u8, u64),
    Crash(u64),
    /// A power cut in the middle of a checkpoint: the disk full when the topic rows are
    /// written, so nothing after them (the syncs, the dispatch file) happens.
    CrashMidCheckpoint,
    /// A power cut after a checkpoint wrote its XDEL flags (and the intent naming them) but
    /// before the dispatch file: the `n`-th sync after the intent fails, then the power goes.
    CrashAfterDeleteFlags(u8, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 1u8..12, any::<bool>()).prop_map(|(topic, count, keyed)| Op::Publish { topic, count, keyed }),
        1 => (0u8..4, any::<u8>()).prop_map(|(topic, nth)| Op::Delete { topic, nth }),
        1 => (0u8..4, any::<u8>()).prop_map(|(topic, nth)| Op::Trim { topic, nth }),
        1 => (0u8..4, 0u8..12).prop_map(|(topic, keep)| Op::TrimToLen { topic, keep }),
        1 => (0u8..4).prop_map(|topic| Op::Drop { topic }),
        1 => (0u8..4).prop_map(|topic| Op::Create { topic }),
        1 => (0u8..12).prop_map(|back| Op::RetainFrom { back }),
        1 => (0u8..4, 0u8..5, proptest::option::of(0u8..20), any::<bool>())
            .prop_map(|(topic, delta, added, max_deleted)| Op::SetId { topic, delta, added, max_deleted }),
        2 => Just(Op::Dispatch),
        1 => Just(Op::Checkpoint),
        2 => Just(Op::BeginCheckpoint),
        1 => Just(Op::FinishCheckpoint),
        1 => (1u8..6, any::<u64>()).prop_map(|(n, seed)| Op::CrashDuringFinish(n, seed)),
        2 => any::<u64>().prop_map(Op::Crash),
        1 => Just(Op::CrashMidCheckpoint),
        2 => (1u8..4, any::<u64>()).prop_map(|(n, seed)| Op::CrashAfterDeleteFlags(n, seed)),
    ]
}

/// Expected live IDs per topic, derived from the log alone.
fn derive(store: &MessageStore, upto: u64) -> Result<BTreeMap<String, Vec<StreamId>>, StoreError> {
    let mut topics: BTreeMap<String, Vec<(StreamId, bool)>> = BTreeMap::new();
    let mut born: BTreeMap<(String, StreamId), u64> = BTreeMap::new();
    // Last IDs XSETID set (above the last entry, or on an emptied stream).
    let mut set_last: BTreeMap<String, StreamId> = BTreeMap::new();
    for i in store.log().first_index()..=upto {
        for r in store.log().entry(i)?.records {
            let name = String::from_utf8_lossy(&r.topic).into_owned();
            match r.op {
                RecordOp::Message => {
                    // Stream IDs only grow: a message at or below the last ID is not added.
                    let q = topics.entry(name.clone()).or_default();
                    let last = set_last
                        .remove(&name)
                        .unwrap_or_else(|| q.last().map_or(StreamId::default(), |(id, _)| *id));
                    if r.id > last {
                        q.push((r.id, false));
                        born.insert((name, r.id), i);
                    } else {
                        set_last.insert(name, last);
                    }
                }
                RecordOp::SetId => {
                    if let Some(q) = topics.get(&name)
                        && set_id_accepted(q, &r)
                    {
                        set_last.insert(name, r.id);
                    }
                }
                RecordOp::RetainFrom => {
                    for (name, q) in topics.iter_mut() {
                        q.retain(|(id, _)| {
                            born.get(&(name.clone(), *id))
                                .is_some_and(|b| *b >= r.id.ms)
                        });
                    }
                }
                RecordOp::Delete => {
                    if let Some(q) = topics.get_mut(&name) {
                        q.iter_mut()
                            .filter(|(id, _)| *id == r.id)
                            .for_each(|e| e.1 = true);
                    }
                }
                RecordOp::Trim => {
                    if let Some(q) = topics.get_mut(&name) {
                        q.retain(|(id, _)| *id >= r.id);
                    }
                }
                RecordOp::TrimToLen => {
                    if let Some(q) = topics.get_mut(&name) {
                        trim_to_len(q, r.id.ms);
                    }
                }
                RecordOp::Drop => {
                    topics.remove(&name);
                    set_last.remove(&name);
                }
                RecordOp::Create => {
                    topics.entry(name).or_default();
                }
            }
        }
    }
    // Every existing topic, empty ones included (trimmed to nothing, or created empty).
    Ok(topics
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.into_iter()
                    .filter(|(_, d)| !d)
                    .map(|(id, _)| id)
                    .collect(),
            )
        })
        .collect())
}

/// XINFO's max-deleted-entry-id per live topic, derived from the log alone.
fn derive_max_deleted(
    store: &MessageStore,
    upto: u64,
) -> Result<BTreeMap<String, StreamId>, StoreError> {
    // Per topic: every entry added (in order, with its deleted flag) and the max deleted ID,
    // for the current incarnation.
    let mut topics: BTreeMap<String, (Vec<(StreamId, bool)>, StreamId)> = BTreeMap::new();
    let mut born: BTreeMap<(String, StreamId), u64> = BTreeMap::new();
    let mut set_last: BTreeMap<String, StreamId> = BTreeMap::new();
    for i in store.log().first_index()..=upto {
        for r in store.log().entry(i)?.records {
            let name = String::from_utf8_lossy(&r.topic).into_owned();
            match r.op {
                RecordOp::Message => {
                    let (q, _) = topics.entry(name.clone()).or_default();
                    let last = set_last
                        .remove(&name)
                        .unwrap_or_else(|| q.last().map_or(StreamId::default(), |(id, _)| *id));
                    if r.id > last {
                        q.push((r.id, false));
                        born.insert((name, r.id), i);
                    } else {
                        set_last.insert(name, last);
                    }
                }
                // Retention leaves the max deleted ID alone, as trims do.
                RecordOp::RetainFrom => {
                    for (name, (q, _)) in topics.iter_mut() {
                        q.retain(|(id, _)| {
                            born.get(&(name.clone(), *id))
                                .is_some_and(|b| *b >= r.id.ms)
                        });
                    }
                }
                RecordOp::Delete => {
                    if let Some((q, max)) = topics.get_mut(&name)
                        && let Some(e) = q.iter_mut().find(|(id, _)| *id == r.id)
                    {
                        e.1 = true;
                        *max = (*max).max(r.id);
                    }
                }
                // Trims leave the max deleted ID alone (Redis 7.0: only XDEL moves it).
                RecordOp::Trim => {
                    if let Some((q, _)) = topics.get_mut(&name) {
                        q.retain(|(id, _)| *id >= r.id);
                    }
                }
                RecordOp::TrimToLen => {
                    if let Some((q, _)) = topics.get_mut(&name) {
                        trim_to_len(q, r.id.ms);
                    }
                }
                RecordOp::Drop => {
                    topics.remove(&name);
                    set_last.remove(&name);
                }
                RecordOp::Create => {
                    topics.entry(name).or_default();
                }
                RecordOp::SetId => {
                    if let Some((q, max)) = topics.get_mut(&name)
                        && set_id_accepted(q, &r)
                    {
                        set_last.insert(name, r.id);
                        if let Some(m) = set_id_max_deleted(&r) {
                            *max = m;
                        }
                    }
                }
            }
        }
    }
    Ok(topics.into_iter().map(|(k, (_, max))| (k, max)).collect())
}

/// Whether Redis takes an XSETID on the stream `q` (entries with deleted flags): with entries,
/// not below the last live one and a counter not below the length.
fn set_id_accepted(q: &[(StreamId, bool)], r: &SubRecord) -> bool {
    let live: Vec<StreamId> = q.iter().filter(|(_, d)| !d).map(|(id, _)| *id).collect();
    let added = r
        .properties
        .iter()
        .find(|(n, _)| n.as_ref() == SETID_ADDED_PROPERTY)
        .and_then(|(_, v)| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_le_bytes);
    live.is_empty()
        || (live.last().is_none_or(|l| r.id >= *l) && added.is_none_or(|a| a >= live.len() as u64))
}

/// The max deleted ID an XSETID sets, if it carries a non-zero one.
fn set_id_max_deleted(r: &SubRecord) -> Option<StreamId> {
    let (_, v) = r
        .properties
        .iter()
        .find(|(n, _)| n.as_ref() == SETID_MAXDEL_PROPERTY)?;
    let v = <[u8; 16]>::try_from(v.as_ref()).ok()?;
    let id = StreamId::new(
        u64::from_le_bytes(v[..8].try_into().ok()?),
        u64::from_le_bytes(v[8..].try_into().ok()?),
    );
    (id != StreamId::default()).then_some(id)
}

/// MAXLEN: removes the oldest entries until `keep` live ones remain (deleted ones after the
/// last removed live entry stay); returns the last removed ID.
fn trim_to_len(q: &mut Vec<(StreamId, bool)>, keep: u64) -> Option<StreamId> {
    let live = q.iter().filter(|(_, d)| !d).count() as u64;
    let mut excess = live.saturating_sub(keep);
    let mut cut = 0;
    while excess > 0 && cut < q.len() {
        if !q[cut].1 {
            excess -= 1;
        }
        cut += 1;
    }
    let last = cut.checked_sub(1).map(|k| q[k].0);
    q.drain(..cut);
    last
}

/// Positions of every message of `topic` with key "key", newest first: what the index must find.
fn keyed(store: &MessageStore, topic: &str, upto: u64) -> Result<Vec<(u64, u16)>, StoreError> {
    let mut out = Vec::new();
    for i in store.log().first_index()..=upto {
        for (j, r) in store.log().entry(i)?.records.iter().enumerate() {
            if r.op == RecordOp::Message && r.topic == topic.as_bytes() && r.message_key == "key" {
                out.push((i, j as u16));
            }
        }
    }
    out.reverse();
    Ok(out)
}

fn actual(store: &MessageStore) -> Result<BTreeMap<String, Vec<StreamId>>, StoreError> {
    let mut out = BTreeMap::new();
    for t in store.topics() {
        let name = String::from_utf8_lossy(&t.key).into_owned();
        let live = ids(store, &name)?;
        assert_eq!(t.live_len(), live.len() as u64, "XLEN counter of {name}");
        out.insert(name, live);
    }
    Ok(out)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fail = |e: StoreError| TestCaseError::fail(e.to_string());
    let mut disk = SimDisk::new();
    let mut store = open_manual(&disk).map_err(fail)?;
    let mut next_id = 1u64;
    let mut published: BTreeMap<u8, Vec<StreamId>> = BTreeMap::new();
    // A checkpoint begun and not yet finished.
    let mut pending: Option<PendingCheckpoint> = None;
    for op in ops {
        // One checkpoint at a time: any other that starts finishes the begun one first; a
        // crash abandons it.
        match &op {
            Op::Checkpoint
            | Op::BeginCheckpoint
            | Op::FinishCheckpoint
            | Op::CrashAfterDeleteFlags(..)
            | Op::CrashMidCheckpoint => {
                if let Some(p) = pending.take() {
                    store.finish_checkpoint(p).map_err(fail)?;
                }
            }
            Op::Crash(_) => pending = None,
            _ => {}
        }
        match op.clone() {
            Op::Publish {
                topic,
                count,
                keyed,
            } => {
                let name = format!("topic/{topic}");
                let records = (0..count)
                    .map(|_| {
                        next_id += 1;
                        let id = StreamId::new(next_id, 0);
                        published.entry(topic).or_default().push(id);
                        record(RecordOp::Message, &name, id, if keyed { "key" } else { "" })
                    })
                    .collect();
                append(&store, next_id, records).map_err(fail)?;
            }
            Op::TrimToLen { topic, keep } => {
                let keep = StreamId::new(u64::from(keep), 0);
                append(
                    &store,
                    next_id,
                    vec![record(
                        RecordOp::TrimToLen,
                        &format!("topic/{topic}"),
                        keep,
                        "",
                    )],
                )
                .map_err(fail)?;
            }
            Op::Delete { topic, nth } | Op::Trim { topic, nth } => {
                let Some(list) = published.get(&topic).filter(|l| !l.is_empty()) else {
                    continue;
                };
                let id = list[nth as usize % list.len()];
                let op = if matches!(op, Op::Delete { .. }) {
                    RecordOp::Delete
                } else {
                    RecordOp::Trim
                };
                append(
                    &store,
                    next_id,
                    vec![record(op, &format!("topic/{topic}"), id, "")],
                )
                .map_err(fail)?;
            }
            Op::Drop { topic } => {
                published.remove(&topic);
                append(
                    &store,
                    next_id,
                    vec![record(
                        RecordOp::Drop,
                        &format!("topic/{topic}"),
                        StreamId::default(),
                        "",
                    )],
                )
                .map_err(fail)?;
            }
            Op::Create { topic } => {
                append(
                    &store,
                    next_id,
                    vec![record(
                        RecordOp::Create,
                        &format!("topic/{topic}"),
                        StreamId::default(),
                        "",
                    )],
                )
                .map_err(fail)?;
            }
            Op::RetainFrom { back } => {
                let index = (store.log().last_index() + 1).saturating_sub(u64::from(back));
                append(
                    &store,
                    next_id,
                    vec![record(
                        RecordOp::RetainFrom,
                        "",
                        StreamId::new(index, 0),
                        "",
                    )],
                )
                .map_err(fail)?;
            }
            Op::SetId {
                topic,
                delta,
                added,
                max_deleted,
            } => {
                let last = published
                    .get(&topic)
                    .and_then(|l| l.last().copied())
                    .unwrap_or_default();
                let id = StreamId::new((last.ms + u64::from(delta)).saturating_sub(2), 0);
                let mut r = record(RecordOp::SetId, &format!("topic/{topic}"), id, "");
                if let Some(a) = added {
                    r.properties.push((
                        Bytes::from_static(SETID_ADDED_PROPERTY),
                        Bytes::copy_from_slice(&u64::from(a).to_le_bytes()),
                    ));
                }
                if max_deleted {
                    let m = StreamId::new(id.ms / 2, 1);
                    let mut v = m.ms.to_le_bytes().to_vec();
                    v.extend_from_slice(&m.seq.to_le_bytes());
                    r.properties
                        .push((Bytes::from_static(SETID_MAXDEL_PROPERTY), Bytes::from(v)));
                }
                append(&store, next_id, vec![r]).map_err(fail)?;
                // Later publishes must stay above whatever it set.
                next_id = next_id.max(id.ms + 1);
            }
            Op::Dispatch => {
                store.dispatch_to(store.log().last_index()).map_err(fail)?;
            }
            Op::Checkpoint => store.checkpoint().map_err(fail)?,
            Op::BeginCheckpoint => pending = Some(store.begin_checkpoint().map_err(fail)?),
            Op::FinishCheckpoint => {}
            Op::CrashDuringFinish(n, seed) => {
                if let Some(p) = pending.take() {
                    disk.fail_sync_after(u32::from(n));
                    let _ = store.finish_checkpoint(p);
                }
                let after = disk.crash(CrashMode::Random(seed));
                drop(store);
                disk = after;
                store = open_manual(&disk).map_err(fail)?;
            }
            Op::CrashAfterDeleteFlags(n, seed) => {
                disk.fail_sync_after(u32::from(n));
                let _ = store.checkpoint();
                let after = disk.crash(CrashMode::Random(seed));
                drop(store);
                disk = after;
                store = open_manual(&disk).map_err(fail)?;
            }
            Op::CrashMidCheckpoint => {
                // No room for the topic rows: the checkpoint stops there.
                disk.set_capacity(Some(disk.used_bytes()));
                let _ = store.checkpoint();
                let after = disk.crash(CrashMode::DropUnsynced);
                drop(store);
                disk = after;
                disk.set_capacity(None);
                store = open_manual(&disk).map_err(fail)?;
            }
            Op::Crash(seed) => {
                let mode = match seed % 3 {
                    0 => CrashMode::DropUnsynced,
                    1 => CrashMode::KeepUnsynced,
                    _ => CrashMode::Random(seed),
                };
                let after = disk.crash(mode);
                drop(store);
                disk = after;
                store = open_manual(&disk).map_err(fail)?;
            }
        }
        if matches!(
            op,
            Op::Dispatch
                | Op::Crash(_)
                | Op::CrashMidCheckpoint
                | Op::CrashAfterDeleteFlags(..)
                | Op::CrashDuringFinish(..)
        ) {
            // Whatever happened, once dispatched to the log's end the queues equal the log.
            let last = store.dispatch_to(store.log().last_index()).map_err(fail)?;
            prop_assert_eq!(
                actual(&store).map_err(fail)?,
                derive(&store, last).map_err(fail)?
            );
            let max_deleted = derive_max_deleted(&store, last).map_err(fail)?;
            for t in store.topics() {
                let name = String::from_utf8_lossy(&t.key).into_owned();
                prop_assert_eq!(
                    Some(&t.max_deleted_id),
                    max_deleted.get(&name),
                    "max deleted of {}",
                    name
                );
            }
            for topic in 0..4u8 {
                let name = format!("topic/{topic}");
                let hits = store
                    .find_by_key(0, name.as_bytes(), b"key", 0, u64::MAX, 10_000)
                    .map_err(fail)?;
                let got: Vec<(u64, u16)> = hits.iter().map(|h| (h.log_index, h.sub)).collect();
                prop_assert_eq!(
                    got,
                    keyed(&store, &name, last).map_err(fail)?,
                    "index of {}",
                    name
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn derived_state_after_any_crash_equals_the_log(ops in proptest::collection::vec(op(), 1..30)) {
        run(ops)?;
    }
}

#[test]
fn dispatch_next_says_what_each_sub_record_did() -> Result<(), StoreError> {
    use manifold_core::store::Outcome;
    let disk = SimDisk::new();
    let store = open(&disk)?;
    let next = |records: Vec<SubRecord>| -> Result<Vec<Outcome>, StoreError> {
        let e = NewEntry {
            term: 1,
            kind: EntryKind::Command,
            timestamp_ms: 1,
            command: Bytes::new(),
            records,
        };
        let index = store.log().append(&e)?.wait()?;
        store.dispatch_next(&store.log().entry(index)?)
    };
    let msg = |ms| record(RecordOp::Message, "s", StreamId::new(ms, 0), "");
    assert_eq!(
        next(vec![msg(1), msg(2), msg(3), msg(2)])?,
        vec![
            Outcome::Added,
            Outcome::Added,
            Outcome::Added,
            Outcome::Rejected {
                last: StreamId::new(3, 0)
            }
        ]
    );
    let del = |ms| record(RecordOp::Delete, "s", StreamId::new(ms, 0), "");
    assert_eq!(
        next(vec![del(2), del(2), del(9)])?,
        vec![
            Outcome::Deleted(true),
            Outcome::Deleted(false),
            Outcome::Deleted(false)
        ]
    );
    let t = store.topic(0, b"s").expect("topic");
    assert_eq!((t.live_len(), t.max_deleted_id), (2, StreamId::new(2, 0)));
    // Trimming below 3 removes 1 live entry (2 was already deleted).
    assert_eq!(
        next(vec![record(RecordOp::Trim, "s", StreamId::new(3, 0), "")])?,
        vec![Outcome::Trimmed(1)]
    );
    assert_eq!(ids(&store, "s")?, vec![StreamId::new(3, 0)]);
    let t = store.topic(0, b"s").expect("topic");
    assert_eq!(t.max_deleted_id, StreamId::new(2, 0));
    assert_eq!(
        next(vec![
            record(RecordOp::Drop, "s", StreamId::default(), ""),
            record(RecordOp::Drop, "s", StreamId::default(), "")
        ])?,
        vec![Outcome::Dropped(true), Outcome::Dropped(false)]
    );
    Ok(())
}

/// A transaction's entry dispatched in parts ends as the whole entry dispatched at once, and a
/// process killed between parts (the entry in the log, half dispatched, no checkpoint of it)
/// re-dispatches to the same state: each topic skips what it already applied.
#[test]
fn an_entry_dispatched_in_parts_is_the_entry_dispatched_whole() -> Result<(), StoreError> {
    let records = whole_records();
    let whole = {
        let disk = SimDisk::new();
        let store = open_manual(&disk)?;
        let index = append(&store, 1, records.clone())?;
        let outcomes = store.dispatch_next(&store.log().entry(index)?)?;
        (
            outcomes,
            ids(&store, "a")?,
            ids(&store, "b")?,
            store.state_digest()?,
        )
    };
    let disk = SimDisk::new();
    let store = open_manual(&disk)?;
    let index = append(&store, 1, records)?;
    let entry = store.log().entry(index)?;
    let mut outcomes = store.dispatch_part(&entry, 0..2, false)?;
    assert_eq!(
        store.dispatched_index(),
        index - 1,
        "half an entry is not dispatched"
    );
    // A part must be the log's next entry's, and the last part must end at its last record.
    assert!(store.dispatch_part(&entry, 2..4, true).is_err());
    outcomes.extend(store.dispatch_part(&entry, 2..4, false)?);
    outcomes.extend(store.dispatch_part(&entry, 4..4, false)?);
    outcomes.extend(store.dispatch_part(&entry, 4..6, true)?);
    assert_eq!(store.dispatched_index(), index);
    assert_eq!(
        (
            outcomes,
            ids(&store, "a")?,
            ids(&store, "b")?,
            store.state_digest()?
        ),
        whole
    );
    // Killed between parts: the reopened store dispatches the entry again, whole.
    let disk = SimDisk::new();
    let store = open_manual(&disk)?;
    let index = append(&store, 1, whole_records())?;
    store.dispatch_part(&store.log().entry(index)?, 0..3, false)?;
    let after = disk.crash(CrashMode::KeepUnsynced);
    drop(store);
    let store = open_manual(&after)?;
    assert_eq!(store.dispatched_index(), index - 1);
    store.dispatch_to(index)?;
    assert_eq!(
        (ids(&store, "a")?, ids(&store, "b")?, store.state_digest()?),
        (whole.1, whole.2, whole.3)
    );
    Ok(())
}

/// Messages to two topics, an XDEL, a DEL and new messages after it: one transaction.
fn whole_records() -> Vec<SubRecord> {
    let msg = |t: &str, ms| record(RecordOp::Message, t, StreamId::new(ms, 0), "k");
    vec![
        msg("a", 1),
        msg("b", 1),
        record(RecordOp::Delete, "a", StreamId::new(1, 0), ""),
        record(RecordOp::Drop, "b", StreamId::default(), ""),
        msg("b", 2),
        msg("a", 2),
    ]
}

#[test]
fn a_message_at_or_below_the_last_id_is_not_added() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    append(
        &store,
        1,
        vec![record(RecordOp::Message, "s", StreamId::new(0, 0), "")],
    )?;
    store.dispatch_to(u64::MAX)?;
    assert!(store.topic(0, b"s").is_none(), "0-0 creates no stream");
    for (ts, id) in [
        (2, StreamId::new(5, 1)),
        (3, StreamId::new(5, 1)),
        (4, StreamId::new(4, 9)),
        (5, StreamId::new(5, 2)),
    ] {
        append(&store, ts, vec![record(RecordOp::Message, "s", id, "")])?;
    }
    store.dispatch_to(u64::MAX)?;
    assert_eq!(
        ids(&store, "s")?,
        vec![StreamId::new(5, 1), StreamId::new(5, 2)]
    );
    Ok(())
}

#[test]
fn a_trimmed_topic_whose_old_files_are_gone_still_seeks_and_deletes() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    for i in 1..=300u64 {
        append(
            &store,
            i,
            vec![record(RecordOp::Message, "big", StreamId::new(i, 0), "")],
        )?;
    }
    append(
        &store,
        301,
        vec![record(RecordOp::Trim, "big", StreamId::new(250, 0), "")],
    )?;
    store.dispatch_to(u64::MAX)?;
    store.checkpoint()?; // removes the files wholly below the trim point
    let dir = PathBuf::from("/data/consumequeue").join(format!(
        "{:08x}",
        store.topic(0, b"big").map_or(0, |t| t.id)
    ));
    let files = disk.list(&dir).map_err(|e| StoreError::io(&dir, e))?;
    assert!(files.len() < 5, "old queue files removed: {files:?}");
    drop(store);
    let store = open(&disk)?;
    store.dispatch_to(u64::MAX)?;
    append(
        &store,
        302,
        vec![record(RecordOp::Delete, "big", StreamId::new(260, 0), "")],
    )?;
    store.dispatch_to(u64::MAX)?;
    let want: Vec<StreamId> = (250..=300)
        .filter(|i| *i != 260)
        .map(|i| StreamId::new(i, 0))
        .collect();
    assert_eq!(ids(&store, "big")?, want);
    let t = store.topic(0, b"big").expect("topic");
    assert_eq!(store.seek(&t, StreamId::new(1, 0))?, t.first_live);
    assert_eq!(store.seek(&t, StreamId::new(270, 0))?, t.first_live + 20);
    Ok(())
}

#[test]
fn a_dropped_topics_files_are_removed_after_the_checkpoint() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    for i in 1..=50u64 {
        append(
            &store,
            i,
            vec![record(RecordOp::Message, "gone", StreamId::new(i, 0), "")],
        )?;
    }
    store.dispatch_to(u64::MAX)?;
    let id = store.topic(0, b"gone").map(|t| t.id).expect("topic");
    append(
        &store,
        51,
        vec![record(RecordOp::Drop, "gone", StreamId::default(), "")],
    )?;
    store.dispatch_to(u64::MAX)?;
    store.checkpoint()?;
    let dir = PathBuf::from("/data/consumequeue").join(format!("{id:08x}"));
    assert_eq!(
        disk.list(&dir).map_err(|e| StoreError::io(&dir, e))?,
        Vec::<String>::new()
    );
    assert!(store.topic(0, b"gone").is_none());
    Ok(())
}

#[test]
fn async_dispatch_checkpoints_only_what_the_log_made_durable() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let async_config = StoreConfig {
        log: LogConfig {
            flush: manifold_core::store::FlushMode::Async {
                interval_ms: 3_600_000,
            },
            ..config().log
        },
        ..config()
    };
    let store = open_with(&disk, async_config.clone())?;
    for i in 1..=20u64 {
        append(
            &store,
            i,
            vec![record(RecordOp::Message, "a", StreamId::new(i, 0), "")],
        )?;
    }
    store.dispatch_to(u64::MAX)?; // checkpoints (interval 0): must fdatasync the log first
    let disk = disk.crash(CrashMode::DropUnsynced);
    drop(store);
    let store = open_with(&disk, async_config)?;
    store.dispatch_to(u64::MAX)?;
    assert_eq!(ids(&store, "a")?.len(), 20);
    Ok(())
}

#[test]
fn reopening_with_another_queue_layout_is_refused() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    append(
        &store,
        1,
        vec![record(RecordOp::Message, "a", StreamId::new(1, 0), "")],
    )?;
    store.dispatch_to(u64::MAX)?;
    store.close()?;
    let mut other = config();
    other.queues.slot_entries = 8;
    assert!(matches!(
        open_with(&disk, other),
        Err(StoreError::Config(_))
    ));
    assert!(open(&disk).is_ok());
    Ok(())
}

#[test]
fn an_entry_cannot_hold_more_sub_records_than_queues_can_number() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    let records = vec![record(RecordOp::Delete, "a", StreamId::new(1, 0), ""); 65_537];
    let e = NewEntry {
        term: 1,
        kind: EntryKind::Command,
        timestamp_ms: 1,
        command: Bytes::new(),
        records,
    };
    assert!(matches!(
        store.log().append(&e),
        Err(StoreError::TooManySubRecords { .. })
    ));
    Ok(())
}

#[test]
fn a_queue_entry_read_against_another_topic_is_corruption() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    append(
        &store,
        1,
        vec![record(RecordOp::Message, "a", StreamId::new(1, 0), "")],
    )?;
    append(
        &store,
        2,
        vec![record(RecordOp::Message, "b", StreamId::new(1, 0), "")],
    )?;
    store.dispatch_to(u64::MAX)?;
    let (a, b) = (
        store.topic(0, b"a").expect("a"),
        store.topic(0, b"b").expect("b"),
    );
    let (_, entry_of_a) = store.read_queue(&a, 0, 1)?[0];
    assert!(store.message(&a, &entry_of_a).is_ok());
    // Same stream ID, other topic: never returned as b's message.
    assert!(matches!(
        store.message(&b, &entry_of_a),
        Err(StoreError::Corruption { .. })
    ));
    Ok(())
}

#[test]
fn stray_topic_table_generations_are_removed_at_open() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    append(
        &store,
        1,
        vec![record(RecordOp::Message, "a", StreamId::new(1, 0), "")],
    )?;
    store.dispatch_to(u64::MAX)?;
    store.close()?;
    let stray = PathBuf::from("/data/consumequeue/topics-00000099");
    let f = disk
        .open(&stray, true)
        .map_err(|e| StoreError::io(&stray, e))?;
    f.write_at(0, b"left by a crash")
        .map_err(|e| StoreError::io(&stray, e))?;
    f.sync_data().map_err(|e| StoreError::io(&stray, e))?;
    disk.sync_dir(&PathBuf::from("/data/consumequeue"))
        .map_err(|e| StoreError::io(&stray, e))?;
    let store = open(&disk)?;
    assert!(!disk.exists(&stray));
    assert_eq!(ids(&store, "a")?, vec![StreamId::new(1, 0)]);
    Ok(())
}

#[test]
fn dispatch_next_refuses_an_entry_that_is_not_the_logs_next_and_keeps_working()
-> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    let e = NewEntry {
        term: 1,
        kind: EntryKind::Command,
        timestamp_ms: 1,
        command: Bytes::new(),
        records: vec![record(RecordOp::Message, "a", StreamId::new(1, 0), "")],
    };
    let index = store.log().append(&e)?.wait()?;
    let mut entry = store.log().entry(index)?;
    // Not the next index, or not the log's term: refused, and the store is not failed.
    entry.index += 1;
    assert!(matches!(
        store.dispatch_next(&entry),
        Err(StoreError::IndexOutOfRange { .. })
    ));
    entry.index -= 1;
    entry.term += 1;
    assert!(matches!(
        store.dispatch_next(&entry),
        Err(StoreError::Corruption { .. })
    ));
    entry.term -= 1;
    assert_eq!(
        store.dispatch_next(&entry)?,
        vec![manifold_core::store::Outcome::Added]
    );
    assert_eq!(ids(&store, "a")?, vec![StreamId::new(1, 0)]);
    Ok(())
}

/// A batch is checked as each of its entries would be: one entry anywhere in it whose term is
/// not the log's refuses the whole batch (terms are looked up per run of one term, first and
/// last; a run's middle is the log's by the log's terms never decreasing).
#[test]
fn dispatch_batch_refuses_a_batch_with_any_entry_not_the_logs() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let store = open(&disk)?;
    let mut entries = Vec::new();
    for k in 0..4u64 {
        let e = NewEntry {
            term: 1 + k / 3, // terms 1, 1, 1, 2
            kind: EntryKind::Command,
            timestamp_ms: 1,
            command: Bytes::new(),
            records: vec![record(RecordOp::Message, "a", StreamId::new(1, k), "")],
        };
        let index = store.log().append(&e)?.wait()?;
        entries.push(store.log().entry(index)?);
    }
    for wrong in 0..4 {
        let mut batch = entries.clone();
        batch[wrong].term += 1;
        assert!(
            matches!(
                store.dispatch_batch(&batch),
                Err(StoreError::Corruption { .. })
            ),
            "entry {wrong} of the batch is not the log's"
        );
        assert_eq!(
            ids(&store, "a")?,
            vec![],
            "a refused batch dispatches nothing"
        );
    }
    // Every entry claiming term 1: one run, whose last entry the log holds in term 2.
    let mut batch = entries.clone();
    batch[3].term = 1;
    assert!(matches!(
        store.dispatch_batch(&batch),
        Err(StoreError::Corruption { .. })
    ));
    let outcomes = store.dispatch_batch(&entries)?;
    assert_eq!(outcomes.len(), 4);
    assert_eq!(ids(&store, "a")?.len(), 4);
    Ok(())
}

/// An XDEL's flag written by a checkpoint finished after the topic migrated out of its arena
/// slot: the flag must reach the entry where it is now (written first to the captured place,
/// the arena, it was lost and XLEN disagreed with the queue).
#[test]
fn a_delete_flag_follows_a_migration_between_capture_and_finish() {
    run(vec![
        Op::Publish {
            topic: 2,
            count: 1,
            keyed: false,
        },
        Op::Delete { topic: 2, nth: 0 },
        Op::CrashDuringFinish(1, 0),
        Op::Publish {
            topic: 2,
            count: 4,
            keyed: false,
        },
        Op::BeginCheckpoint,
        Op::Dispatch,
        Op::Checkpoint,
        Op::Dispatch,
    ])
    .expect("the flag reaches the migrated entry");
}

/// The same interleaving followed by a power cut: open goes by the checkpoint's table, which
/// still places the topic in its arena slot, and migrates it again from there, so the flag
/// must reach the arena slot as well (written only where the entry was at finish, the XDEL
/// was lost: the entry came back after the power cut).
#[test]
fn a_delete_flag_survives_a_power_cut_after_a_migration_between_capture_and_finish() {
    run(vec![
        Op::Publish {
            topic: 2,
            count: 2,
            keyed: false,
        },
        Op::Delete { topic: 2, nth: 0 },
        Op::Dispatch,
        Op::BeginCheckpoint,
        Op::Publish {
            topic: 2,
            count: 4,
            keyed: false,
        },
        Op::Dispatch,
        Op::FinishCheckpoint,
        Op::Crash(0),
    ])
    .expect("the deleted entry stays deleted");
}

/// A reader racing the checkpoint that writes an XDEL's flag and forgets the pending deletion
/// never sees the deleted entry (it looked at the file before the flag and at the pending
/// deletions after they were forgotten, and saw it live).
#[test]
fn a_reader_never_sees_a_deleted_entry_while_a_checkpoint_writes_its_flag() -> Result<(), StoreError>
{
    let disk = SimDisk::new();
    let store = open_manual(&disk)?;
    let mut ts = 0u64;
    for round in 0..300u64 {
        let topic = format!("t{}", round % 8);
        let (a, b) = (
            StreamId::new(2 * round + 1, 0),
            StreamId::new(2 * round + 2, 0),
        );
        ts += 1;
        append(
            &store,
            ts,
            vec![
                record(RecordOp::Message, &topic, a, ""),
                record(RecordOp::Message, &topic, b, ""),
            ],
        )?;
        ts += 1;
        append(&store, ts, vec![record(RecordOp::Delete, &topic, a, "")])?;
        store.dispatch_to(store.log().last_index())?;
        std::thread::scope(|s| -> Result<(), StoreError> {
            let checkpoint = s.spawn(|| store.checkpoint());
            while !checkpoint.is_finished() {
                assert!(
                    !ids(&store, &topic)?.contains(&a),
                    "{a} read after its XDEL"
                );
            }
            checkpoint.join().expect("the checkpoint thread ends")
        })?;
    }
    Ok(())
}
