//! Recovery on the simulated disk: every torn-tail shape is cut, corruption before the flushed
//! point is refused with file and offset, and a model-based run of appends, truncations and
//! power cuts never loses a synced entry nor shows a torn one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use manifold_core::store::RecordOp;
use manifold_core::store::entry::encode_entry;
use manifold_core::store::{
    CommitLog, CrashMode, EntryKind, LogConfig, NewEntry, SimDisk, Storage, StoreError, StreamId,
    SubRecord,
};
use proptest::prelude::*;

const SEGMENT: u64 = 64 * 1024;
const HEADER: u64 = 64;

fn config(checkpoint_interval_ms: u64) -> LogConfig {
    LogConfig {
        segment_size: SEGMENT,
        max_entry_bytes: 8 * 1024,
        index_records_per_file: 64,
        recent_records: 16,
        checkpoint_interval_ms,
        ..LogConfig::default()
    }
}

fn entry(term: u64, n: u64, body: usize) -> NewEntry {
    NewEntry {
        term,
        kind: EntryKind::Command,
        timestamp_ms: n,
        command: Bytes::from(vec![b'c'; n as usize % 7]),
        records: (0..(n % 3))
            .map(|i| SubRecord {
                op: RecordOp::Message,
                db: 0,
                topic: Bytes::from(format!("t{i}")),
                id: StreamId::new(n, i),
                message_key: Bytes::new(),
                properties: vec![(Bytes::from_static(b"ct"), Bytes::from_static(b"text/plain"))],
                fields: vec![(
                    Bytes::from_static(b"payload"),
                    Bytes::from(vec![n as u8; body]),
                )],
            })
            .collect(),
    }
}

fn root() -> PathBuf {
    PathBuf::from("/data")
}

fn segment0() -> PathBuf {
    root().join("commitlog").join("00000000000000000000")
}

fn open(disk: &SimDisk, cfg: LogConfig) -> Result<CommitLog, StoreError> {
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    CommitLog::open(storage, &root(), cfg)
}

/// Appends `n` entries (term 1) and returns the position where the next record would go.
fn fill(log: &CommitLog, n: u64) -> Result<u64, StoreError> {
    let mut pos = HEADER;
    for i in 1..=n {
        let e = entry(1, i, 40);
        pos += e.encoded_len() as u64;
        log.append(&e)?.wait()?;
    }
    Ok(pos)
}

fn write_synced(disk: &SimDisk, path: &Path, at: u64, bytes: &[u8]) {
    let f = disk.open(path, false).expect("segment exists");
    f.write_at(at, bytes).expect("write");
    f.sync_data().expect("sync");
}

fn encoded(term: u64, index: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_entry(&mut buf, &entry(term, index, 40), index);
    buf
}

/// Each torn-tail shape, placed right after the last synced entry.
fn torn_shapes() -> Vec<(&'static str, Vec<u8>)> {
    let next = encoded(1, 11);
    let mut bad_crc = next.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    let mut valid_then_torn = encoded(1, 11);
    valid_then_torn.extend_from_slice(&encoded(1, 12)[..30]);
    let mut huge = next.clone();
    huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    vec![
        ("partial size field", next[..3].to_vec()),
        ("header without body", next[..48].to_vec()),
        ("body cut mid-way", next[..next.len() - 5].to_vec()),
        ("crc mismatch", bad_crc),
        ("index gap", encoded(1, 13)),
        ("term going backwards", encoded(0, 11)),
        ("size past segment end", huge),
        (
            "garbage",
            (0..200u32).map(|i| (i * 37 + 11) as u8).collect(),
        ),
        ("valid entry then torn one", valid_then_torn),
    ]
}

#[test]
fn every_torn_tail_shape_is_cut_and_zeroed() -> Result<(), StoreError> {
    for (name, bytes) in torn_shapes() {
        let disk = SimDisk::new();
        let log = open(&disk, config(0))?;
        let tail = fill(&log, 10)?;
        let disk = disk.crash(CrashMode::DropUnsynced);
        drop(log);
        write_synced(&disk, &segment0(), tail, &bytes);

        let log = open(&disk, config(0))?;
        let want_last = if name == "valid entry then torn one" {
            11
        } else {
            10
        };
        assert_eq!(log.last_index(), want_last, "{name}");
        for i in 1..=want_last {
            assert_eq!(log.entry(i)?.index, i, "{name}");
        }
        // Nothing of the torn bytes is left behind the end, durably.
        let data = disk.durable_contents(&segment0()).unwrap_or_default();
        let end = if want_last == 11 {
            tail + encoded(1, 11).len() as u64
        } else {
            tail
        };
        assert!(
            data[end as usize..].iter().all(|b| *b == 0),
            "{name}: garbage left"
        );
        // And the log goes on.
        log.append(&entry(2, want_last + 1, 10))?.wait()?;
        log.close()?;
        let log = open(&disk, config(0))?;
        assert_eq!(log.last_index(), want_last + 1, "{name}");
        assert_eq!(log.term_at(want_last + 1)?, 2, "{name}");
    }
    Ok(())
}

#[test]
fn corruption_before_the_flushed_point_is_refused_with_file_and_offset() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    // A long checkpoint interval: the only checkpoint is the one written at close, so the
    // next open verifies every entry it declares flushed.
    let log = open(&disk, config(60_000))?;
    fill(&log, 30)?;
    log.close()?;
    let offset_of_25 = HEADER
        + (1..25)
            .map(|i| entry(1, i, 40).encoded_len() as u64)
            .sum::<u64>();
    write_synced(&disk, &segment0(), offset_of_25 + 60, b"\xff\xfe");
    match open(&disk, config(60_000)) {
        Err(StoreError::Corruption {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, segment0());
            assert_eq!(offset, offset_of_25, "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Reads through an open log report it too, never return the bad bytes.
    Ok(())
}

#[test]
fn a_read_of_a_corrupted_entry_reports_file_and_offset() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = open(&disk, config(0))?;
    fill(&log, 5)?;
    let offset_of_2 = HEADER + entry(1, 1, 40).encoded_len() as u64;
    write_synced(&disk, &segment0(), offset_of_2 + 50, b"\x00\x01\x02");
    match log.entry(2) {
        Err(StoreError::Corruption { file, offset, .. }) => {
            assert_eq!((file, offset), (segment0(), offset_of_2));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    Ok(())
}

#[test]
fn an_interrupted_delete_before_is_finished_not_mistaken_for_a_torn_tail() -> Result<(), StoreError>
{
    let disk = SimDisk::new();
    let cfg = LogConfig {
        segment_size: 4096,
        ..config(60_000)
    };
    let log = open(&disk, cfg.clone())?;
    for i in 1..=200 {
        log.append(&entry(1, i, 40))?.wait()?;
    }
    let old = disk.durable_contents(&segment0()).expect("segment 0");
    let first = log.delete_before(150)?;
    assert!(first > 1);
    // A crash between the checkpoint and the removals: the old segment is still there.
    let disk = disk.crash(CrashMode::DropUnsynced);
    drop(log);
    write_synced_new(&disk, &segment0(), &old);
    let log = open(&disk, cfg)?;
    assert_eq!((log.first_index(), log.last_index()), (first, 200));
    for i in first..=200 {
        assert_eq!(log.entry(i)?.index, i);
    }
    assert!(!disk.exists(&segment0()), "left-over segment removed");
    Ok(())
}

#[test]
fn recovery_syncs_every_segment_it_declares_flushed() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let cfg = LogConfig {
        segment_size: 4096,
        flush: manifold_core::store::FlushMode::Async {
            interval_ms: 60_000,
        },
        ..config(60_000)
    };
    let log = open(&disk, cfg.clone())?;
    for i in 1..=100 {
        log.append(&entry(1, i, 40))?.wait()?; // ~8 segments, none synced
    }
    // The process dies (the OS keeps its writes); recovery keeps all 100 entries...
    let disk = disk.crash(CrashMode::KeepUnsynced);
    drop(log);
    let log = open(&disk, cfg.clone())?;
    assert_eq!(log.last_index(), 100);
    // ...and a power cut right after must not lose what recovery called flushed.
    let disk = disk.crash(CrashMode::DropUnsynced);
    drop(log);
    let log = open(&disk, cfg)?;
    assert_eq!(log.last_index(), 100);
    Ok(())
}

#[test]
fn terms_never_go_backwards() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = open(&disk, config(0))?;
    log.append(&entry(3, 1, 1))?.wait()?;
    assert!(matches!(
        log.append(&entry(2, 2, 1)),
        Err(StoreError::TermRegression { .. })
    ));
    log.append(&entry(3, 2, 1))?.wait()?;
    Ok(())
}

fn write_synced_new(disk: &SimDisk, path: &Path, bytes: &[u8]) {
    let f = disk.open(path, true).expect("create");
    f.write_at(0, bytes).expect("write");
    f.sync_data().expect("sync");
    disk.sync_dir(path.parent().expect("parent"))
        .expect("sync dir");
}

#[derive(Debug, Clone)]
enum Op {
    /// Append and wait for durability.
    Append { count: u64, body: usize },
    /// Append without waiting: may or may not survive a crash, but only as a whole prefix.
    AppendNoWait { count: u64, body: usize },
    /// Truncate after this fraction (per mille) of the log.
    Truncate(u64),
    /// Power cut.
    Crash(u64),
    /// Clean close and reopen.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..20, 0usize..900).prop_map(|(count, body)| Op::Append { count, body }),
        2 => (1u64..20, 0usize..900).prop_map(|(count, body)| Op::AppendNoWait { count, body }),
        1 => (0u64..1000).prop_map(Op::Truncate),
        2 => any::<u64>().prop_map(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

/// The model: every entry the log should hold, and how many of them are known durable.
struct Model {
    entries: Vec<NewEntry>,
    durable: usize,
}

fn check(log: &CommitLog, model: &Model) -> Result<(), TestCaseError> {
    let last = log.last_index() as usize;
    prop_assert!(
        last >= model.durable,
        "lost synced entries: last {last} < {}",
        model.durable
    );
    prop_assert!(last <= model.entries.len(), "entries appeared from nowhere");
    for (i, want) in model.entries[..last].iter().enumerate() {
        let got = log
            .entry(i as u64 + 1)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = NewEntry {
            term: got.term,
            kind: got.kind,
            timestamp_ms: got.timestamp_ms,
            command: got.command,
            records: got.records,
        };
        prop_assert_eq!(&got, want, "entry {} differs", i + 1);
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fail = |e: StoreError| TestCaseError::fail(e.to_string());
    let cfg = LogConfig {
        segment_size: 8192,
        max_entry_bytes: 4096,
        ..config(5)
    };
    let mut disk = SimDisk::new();
    // A slow fsync widens the window in which an early acknowledgement would be caught.
    let latency = std::time::Duration::from_micros(300);
    disk.set_sync_latency(latency);
    let mut log = open(&disk, cfg.clone()).map_err(fail)?;
    let mut model = Model {
        entries: Vec::new(),
        durable: 0,
    };
    let mut term = 1;
    for op in ops {
        match op {
            Op::Append { count, body } | Op::AppendNoWait { count, body } => {
                let wait = matches!(op, Op::Append { .. });
                let mut tickets = Vec::new();
                for _ in 0..count {
                    let e = entry(term, model.entries.len() as u64 + 1, body);
                    tickets.push(log.append(&e).map_err(fail)?);
                    model.entries.push(e);
                }
                if wait {
                    for t in tickets {
                        t.wait().map_err(fail)?;
                    }
                    model.durable = model.entries.len();
                }
            }
            Op::Truncate(per_mille) => {
                let keep = model.entries.len() * per_mille as usize / 1000;
                log.truncate_after(keep as u64).map_err(fail)?;
                model.entries.truncate(keep);
                model.durable = model.durable.min(keep);
                term += 1; // a new leader's entries replace the suffix
            }
            Op::Crash(seed) => {
                let mode = match seed % 4 {
                    0 => CrashMode::DropUnsynced,
                    1 => CrashMode::KeepUnsynced,
                    _ => CrashMode::Random(seed),
                };
                let after = disk.crash(mode);
                drop(log);
                disk = after;
                disk.set_sync_latency(latency);
                log = open(&disk, cfg.clone()).map_err(fail)?;
                check(&log, &model)?;
                model.entries.truncate(log.last_index() as usize);
                model.durable = model.entries.len();
            }
            Op::Reopen => {
                log.close().map_err(fail)?;
                log = open(&disk, cfg.clone()).map_err(fail)?;
                prop_assert_eq!(log.last_index() as usize, model.entries.len());
                model.durable = model.entries.len();
            }
        }
        check(&log, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn synced_entries_survive_and_torn_ones_never_show(ops in proptest::collection::vec(op(), 1..25)) {
        run(ops)?;
    }
}
