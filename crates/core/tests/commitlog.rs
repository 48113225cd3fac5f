//! CommitLog behaviour through its public API, on the simulated disk (crash cases) and on the
//! real filesystem (reopen).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use manifold_core::store::RecordOp;
use manifold_core::store::{
    CommitLog, CrashMode, EntryKind, FlushMode, LogConfig, NewEntry, RealFs, SimDisk, Storage,
    StoreError, StreamId, SubRecord,
};

fn small_config() -> LogConfig {
    LogConfig {
        segment_size: 4096,
        max_entry_bytes: 2048,
        index_records_per_file: 16,
        recent_records: 8,
        checkpoint_interval_ms: 0,
        ..LogConfig::default()
    }
}

fn entry(term: u64, n: u64) -> NewEntry {
    NewEntry {
        term,
        kind: EntryKind::Command,
        timestamp_ms: 1_700_000_000_000 + n,
        command: Bytes::from(format!("cmd-{n}")),
        records: vec![SubRecord {
            op: RecordOp::Message,
            db: (n % 16) as u8,
            topic: Bytes::from(format!("topic-{}", n % 3)),
            id: StreamId::new(n, 0),
            message_key: Bytes::from_static(b"k"),
            properties: vec![],
            fields: vec![(
                Bytes::from_static(b"payload"),
                Bytes::from(vec![n as u8; (n % 200) as usize]),
            )],
        }],
    }
}

fn root() -> PathBuf {
    PathBuf::from("/data")
}

fn open(disk: &SimDisk) -> Result<CommitLog, StoreError> {
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    CommitLog::open(storage, &root(), small_config())
}

fn append_all(log: &CommitLog, from: u64, to: u64, term: u64) -> Result<(), StoreError> {
    for n in from..=to {
        let ticket = log.append(&entry(term, n))?;
        assert_eq!(ticket.index, n);
        assert_eq!(ticket.wait()?, n);
    }
    Ok(())
}

fn assert_entries(log: &CommitLog, from: u64, to: u64, term: u64) -> Result<(), StoreError> {
    for n in from..=to {
        let e = log.entry(n)?;
        let want = entry(term, n);
        assert_eq!(
            (e.index, e.term, &e.command, &e.records),
            (n, term, &want.command, &want.records)
        );
    }
    Ok(())
}

#[test]
fn appends_roll_segments_and_survive_reopen() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = open(&disk)?;
    append_all(&log, 1, 200, 1)?; // ~40 segments of 4 KiB
    assert_entries(&log, 1, 200, 1)?;
    assert_eq!(log.term_at(0)?, 0);
    assert_eq!(log.term_at(200)?, 1);
    log.close()?;
    let log = open(&disk)?;
    let report = log.recovery_report().clone();
    assert!(!report.unclean_shutdown);
    assert_eq!(report.last_index, 200);
    assert_entries(&log, 1, 200, 1)?;
    append_all(&log, 201, 210, 2)?;
    assert_eq!(log.last_term(), 2);
    Ok(())
}

#[test]
fn synced_appends_survive_a_power_cut() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = open(&disk)?;
    append_all(&log, 1, 120, 1)?;
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(log);
    let log = open(&after)?;
    assert!(log.recovery_report().unclean_shutdown);
    assert_eq!(log.last_index(), 120);
    assert_entries(&log, 1, 120, 1)?;
    Ok(())
}

#[test]
fn truncate_after_is_durable_and_appends_continue() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = open(&disk)?;
    append_all(&log, 1, 100, 1)?;
    log.truncate_after(37)?;
    assert_eq!(log.last_index(), 37);
    assert!(matches!(
        log.entry(38),
        Err(StoreError::IndexOutOfRange { .. })
    ));
    append_all(&log, 38, 60, 2)?;
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(log);
    let log = open(&after)?;
    assert_eq!(log.last_index(), 60);
    assert_entries(&log, 1, 37, 1)?;
    assert_entries(&log, 38, 60, 2)?;
    // Truncating everything leaves an empty log that starts over at 1.
    log.truncate_after(0)?;
    assert_eq!(log.last_index(), 0);
    append_all(&log, 1, 3, 3)?;
    Ok(())
}

#[test]
fn truncated_entries_never_come_back_even_without_new_appends() -> Result<(), StoreError> {
    for seed in 0..20 {
        let disk = SimDisk::new();
        let log = open(&disk)?;
        append_all(&log, 1, 50, 1)?;
        log.truncate_after(20)?;
        let after = disk.crash(CrashMode::Random(seed));
        drop(log);
        let log = open(&after)?;
        assert_eq!(log.last_index(), 20, "seed {seed}");
    }
    Ok(())
}

#[test]
fn fsync_failure_fails_the_log_until_reopened() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = open(&disk)?;
    append_all(&log, 1, 5, 1)?;
    while !log.next_segment_ready() {
        std::thread::sleep(std::time::Duration::from_millis(1)); // the allocator is idle
    }
    disk.fail_next_syncs(1);
    // The failing fdatasync may be the one of entry 6's batch, or of the checkpoint still
    // being written for entry 5's: either way the log fails, and 6 is not acknowledged.
    let sixth = log.append(&entry(1, 6)).and_then(|t| t.wait());
    assert!(matches!(sixth, Err(StoreError::Failed(_))), "{sixth:?}");
    assert!(matches!(
        log.append(&entry(1, 7)),
        Err(StoreError::Failed(_))
    ));
    // Reads of what was written keep working.
    assert_entries(&log, 1, 5, 1)?;
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(log);
    let log = open(&after)?;
    assert_eq!(log.last_index(), 5);
    append_all(&log, 6, 8, 1)?;
    Ok(())
}

#[test]
fn enospc_on_allocation_fails_appends_cleanly_and_is_retried() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = open(&disk)?;
    append_all(&log, 1, 3, 1)?;
    // Wait for the preallocated next segment, then leave no room for another.
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Room for metadata rewrites (the checkpoint's temp file) but not for a 4 KiB segment.
    disk.set_capacity(Some(disk.used_bytes() + 1024));
    let mut n = 4;
    let err = loop {
        match log.append(&entry(1, n)) {
            Ok(t) => {
                t.wait()?;
                n += 1;
            }
            Err(e) => break e,
        }
        assert!(n < 1000, "never ran out of space");
    };
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
    assert_entries(&log, 1, n - 1, 1)?;
    disk.set_capacity(None);
    // The failure triggered a new allocation; the next roll waits for it.
    append_all(&log, n, n + 30, 1)?;
    assert_entries(&log, 1, n + 30, 1)?;
    Ok(())
}

#[test]
fn delete_before_removes_whole_old_segments_only() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = open(&disk)?;
    append_all(&log, 1, 200, 1)?;
    let first = log.delete_before(100)?;
    assert!(first > 1 && first <= 100, "first {first}");
    assert!(matches!(
        log.entry(first - 1),
        Err(StoreError::IndexOutOfRange { .. })
    ));
    assert_entries(&log, first, 200, 1)?;
    log.close()?;
    let log = open(&disk)?;
    assert_eq!(log.first_index(), first);
    assert_entries(&log, first, 200, 1)?;
    Ok(())
}

#[test]
fn async_mode_acknowledges_before_fsync_and_recovers() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let config = LogConfig {
        flush: FlushMode::Async {
            interval_ms: 10_000,
        },
        ..small_config()
    };
    let log = CommitLog::open(storage, &root(), config.clone())?;
    append_all(&log, 1, 50, 1)?;
    assert!(log.flushed_index() < 50, "async must not fsync every batch");
    // A process crash (not a power cut) keeps what reached the OS.
    let after = disk.crash(CrashMode::Random(7));
    drop(log);
    let storage: Arc<dyn Storage> = Arc::new(after);
    let log = CommitLog::open(storage, &root(), config)?;
    let last = log.last_index();
    assert_entries(&log, 1, last, 1)?;
    Ok(())
}

#[test]
fn real_filesystem_round_trip() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::io("tempdir", e))?;
    let path: &Path = dir.path();
    let config = LogConfig {
        segment_size: 64 * 1024,
        max_entry_bytes: 4096,
        ..LogConfig::default()
    };
    let log = CommitLog::open(Arc::new(RealFs), path, config.clone())?;
    append_all(&log, 1, 500, 4)?;
    log.close()?;
    let log = CommitLog::open(Arc::new(RealFs), path, config)?;
    assert_eq!(log.last_index(), 500);
    assert_entries(&log, 1, 500, 4)?;
    Ok(())
}

#[test]
fn tickets_resolve_as_futures_inside_a_runtime() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = Arc::new(open(&disk)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .map_err(|e| StoreError::io("runtime", e))?;
    rt.block_on(async {
        // 64 tasks, each with several appends in flight at once.
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut tickets = Vec::new();
                for n in 0..5 {
                    tickets.push(log.append(&entry(1, t * 5 + n))?);
                }
                let mut done = Vec::new();
                for ticket in tickets {
                    done.push(ticket.await?);
                }
                Ok::<_, StoreError>(done)
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(
                task.await
                    .map_err(|e| StoreError::io("join", std::io::Error::other(e)))??,
            );
        }
        all.sort_unstable();
        assert_eq!(all, (1..=320).collect::<Vec<u64>>());
        Ok::<_, StoreError>(())
    })?;
    assert!(log.flushed_index() >= 320);
    Ok(())
}

#[test]
fn a_ticket_of_a_truncated_entry_fails_even_if_its_index_is_reused() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = open(&disk)?;
    append_all(&log, 1, 5, 1)?;
    let tickets: Vec<_> = (6..=9)
        .map(|n| log.append(&entry(1, n)))
        .collect::<Result<_, _>>()?;
    log.truncate_after(7)?;
    append_all(&log, 8, 12, 2)?; // index 8 and 9 now hold other entries, durably
    let results: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
    assert!(matches!(results[0], Ok(6)) && matches!(results[1], Ok(7)));
    assert!(matches!(
        results[2],
        Err(StoreError::Truncated { index: 8 })
    ));
    assert!(matches!(
        results[3],
        Err(StoreError::Truncated { index: 9 })
    ));
    Ok(())
}

#[test]
fn delete_before_drops_map_records_still_in_memory() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    // No checkpoint for a minute: map records of the whole run stay in memory.
    let config = LogConfig {
        checkpoint_interval_ms: 60_000,
        ..small_config()
    };
    let log = CommitLog::open(storage, &root(), config)?;
    append_all(&log, 1, 200, 1)?;
    let first = log.delete_before(150)?;
    append_all(&log, 201, 260, 1)?;
    assert_entries(&log, first, 260, 1)?;
    log.close()?;
    let log = open(&disk)?;
    assert_entries(&log, first, 260, 1)?;
    Ok(())
}

#[test]
fn entries_read_in_runs_equal_entries_read_one_by_one() -> Result<(), StoreError> {
    let disk = SimDisk::new();
    let log = open(&disk)?;
    // 4 KiB segments: the range spans many of them, and records of old and recent map files.
    append_all(&log, 1, 120, 1)?;
    let one_by_one = (1..=120)
        .map(|i| log.entry(i))
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(log.entries(1, 120)?, one_by_one);
    assert_eq!(log.entries(37, 38)?, one_by_one[36..38].to_vec());
    assert!(log.entries(5, 4)?.is_empty());
    assert!(matches!(
        log.entries(100, 121),
        Err(StoreError::IndexOutOfRange { .. })
    ));
    Ok(())
}

/// Whether a node needs an image of another (`Manifest::needed_by`): only when the source's log
/// cannot catch it up — its log ends before the image's first entry or holds another term
/// there — and never an image behind what it applied.
#[test]
fn a_node_needs_an_image_only_when_the_sources_log_cannot_catch_it_up() -> Result<(), StoreError> {
    use manifold_core::store::image::Manifest;
    let disk = SimDisk::new();
    let log = open(&disk)?;
    append_all(&log, 1, 10, 1)?;
    append_all(&log, 11, 60, 2)?;
    let image = |first_index, first_term, dispatched| Manifest {
        first_index,
        first_term,
        last_index: 90,
        last_term: 3,
        dispatched,
        files: Vec::new(),
    };
    // The source's log starts past this one's end: needed.
    assert!(image(70, 3, 80).needed_by(&log, 40));
    // It starts within this log with the same term there: the log catches it up.
    assert!(!image(30, 2, 80).needed_by(&log, 40));
    assert!(!image(60, 2, 80).needed_by(&log, 40));
    // Another term there: entries before it the source does not have — needed.
    assert!(image(30, 3, 80).needed_by(&log, 40));
    // An image behind what this node applied is never taken.
    assert!(!image(70, 3, 35).needed_by(&log, 40));
    // This log starts past the image's first entry (cut below its commit): caught up from the
    // source's log.
    log.delete_before(50)?;
    assert!(log.first_index() > 30, "first index {}", log.first_index());
    assert!(!image(30, 2, 80).needed_by(&log, 55));
    Ok(())
}
