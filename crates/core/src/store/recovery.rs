//! Opening a CommitLog directory after any shutdown, clean or not: verify segment headers,
//! scan from the checkpoint (not from the start, so the time is independent of the log's size),
//! verify every record's CRC, index and term, cut a torn tail, zero the garbage behind it, and
//! rewrite the log-index map past the checkpoint.
//!
//! The line this module must never cross: bad bytes at or below the checkpoint's flushed index
//! are corruption, reported with file and offset, never truncated away.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::checkpoint::Checkpoint;
use super::entry::{BLANK_LEN, LogIndex, Slot, Term, check_record, classify};
use super::error::{IoContext, Result, StoreError};
use super::log_index::{IndexRecord, LogIndexMap};
use super::segment::{
    SEGMENT_HEADER_LEN, Segment, SegmentReader, allocate_segment, open_segment, parse_file_name,
};
use super::storage::Storage;

/// What recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The abort marker was present: the previous run did not shut down cleanly.
    pub unclean_shutdown: bool,
    /// First index the scan verified (entries before it were trusted from the checkpoint).
    pub scan_from: LogIndex,
    /// Entries verified by the scan.
    pub scanned_entries: u64,
    /// Bytes of torn or stale tail that were zeroed.
    pub zeroed_bytes: u64,
    /// Segments removed because they lay past the recovered end.
    pub removed_segments: usize,
    /// First index held.
    pub first_index: LogIndex,
    /// Last index held.
    pub last_index: LogIndex,
}

/// The recovered log, ready for the writer.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub segments: BTreeMap<u64, Arc<Segment>>,
    /// Segment and in-file offset where the next record goes.
    pub tail: (Arc<Segment>, u64),
    /// The preallocated next segment, if one was found intact.
    pub next: Option<Arc<Segment>>,
    pub first_index: LogIndex,
    pub last_index: LogIndex,
    pub last_term: Term,
    pub checkpoint: Checkpoint,
    pub report: RecoveryReport,
}

/// Records are rewritten into the map in batches of this many.
const MAP_BATCH: usize = 65_536;
/// Granularity of the zero scan behind the recovered end.
const ZERO_BLOCK: u64 = 64 * 1024;

pub(crate) fn recover(
    storage: &dyn Storage,
    root: &Path,
    log_dir: &Path,
    map: &LogIndexMap,
    segment_size: u64,
    unclean_shutdown: bool,
) -> Result<Recovered> {
    let mut segments = BTreeMap::new();
    for name in storage.list(log_dir).at(log_dir)? {
        if name.ends_with(".tmp") {
            // An allocation that never completed: never held a record.
            let path = log_dir.join(&name);
            storage.remove(&path).at(&path)?;
            continue;
        }
        let Some(base) = parse_file_name(&name) else {
            continue;
        };
        let seg = open_segment(storage, &log_dir.join(&name), base)?;
        segments.insert(base, Arc::new(seg));
    }
    // Segments after a gap can only be left-overs of a truncation or deletion whose removal did not reach
    // the disk: they lie past the end. If the scan needs one, it reports the missing segment.
    let mut run_end = None;
    let mut stray = Vec::new();
    for seg in segments.values() {
        match run_end {
            Some(end) if end != seg.base => stray.push(seg.clone()),
            _ => run_end = Some(seg.end()),
        }
    }

    let checkpoint = Checkpoint::load(storage, root)?;
    let Some(first) = segments.values().next().cloned() else {
        if checkpoint.is_some_and(|c| c.flushed_index > 0) {
            return Err(StoreError::Corruption {
                file: log_dir.to_path_buf(),
                offset: 0,
                reason: "checkpoint records flushed entries but no segment exists".into(),
            });
        }
        return fresh(storage, root, log_dir, map, segment_size, unclean_shutdown);
    };
    let cp = checkpoint.ok_or_else(|| StoreError::Corruption {
        file: root.join(super::checkpoint::CHECKPOINT_FILE),
        offset: 0,
        reason: "segments exist but the checkpoint is missing".into(),
    })?;

    // Where the scan starts: after an entry both the log and the map synced one checkpoint ago,
    // so the scan re-verifies what the last checkpoint declared flushed.
    let trusted = cp
        .verify_from_index
        .min(cp.flushed_index)
        .min(cp.map_flushed_index);
    // Segments wholly below the first index are left-overs of a `delete_before` whose removals
    // did not all happen (the checkpoint is written first): finish the deletion.
    let first = first_segment(&segments, cp.first_index)?.unwrap_or(first);
    let leftovers: Vec<Arc<Segment>> = segments
        .range(..first.base)
        .map(|(_, s)| s.clone())
        .collect();
    for s in &leftovers {
        segments.remove(&s.base);
        storage.remove(&s.path).at(&s.path)?;
    }
    if !leftovers.is_empty() {
        storage.sync_dir(log_dir).at(log_dir)?;
    }
    let (mut seg, mut off, mut expected, mut prev_term) = if trusted < cp.first_index {
        (first, SEGMENT_HEADER_LEN, cp.first_index, 0)
    } else {
        let rec = map.read(trusted)?.ok_or_else(|| StoreError::Corruption {
            file: root.join("raftindex"),
            offset: trusted * super::log_index::INDEX_RECORD_LEN,
            reason: format!("no map record for checkpointed index {trusted}"),
        })?;
        let seg = segment_at(&segments, rec.pos).ok_or_else(|| StoreError::Corruption {
            file: log_dir.to_path_buf(),
            offset: rec.pos,
            reason: format!("checkpointed index {trusted} points outside every segment"),
        })?;
        let at = rec.pos - seg.base;
        let mut buf = vec![0u8; rec.size as usize];
        let head = seg
            .file
            .read_exact_at(at, &mut buf)
            .map_err(|e| e.to_string())
            .and_then(|()| check_record(&buf).map_err(|e| e.to_string()));
        match head {
            Ok(h) if h.index == trusted && h.term == rec.term => {}
            other => {
                return Err(StoreError::Corruption {
                    file: seg.path.clone(),
                    offset: at,
                    reason: format!("checkpointed entry {trusted} does not verify: {other:?}"),
                });
            }
        }
        (seg, at + rec.size as u64, trusted + 1, rec.term)
    };
    let scan_from = expected;

    // Every segment the scan crosses is synced before the checkpoint calls its entries flushed.
    let mut visited = vec![seg.clone()];
    let mut batch: Vec<IndexRecord> = Vec::new();
    let mut batch_first = expected;
    let mut scanned = 0u64;
    let mut reader = SegmentReader::new(seg.clone());
    loop {
        if !Arc::ptr_eq(reader.segment(), &seg) {
            reader = SegmentReader::new(seg.clone());
        }
        let slot = match reader.read(off, 8) {
            Ok(b) => {
                let mut first8 = [0u8; 8];
                first8.copy_from_slice(b);
                classify(&first8).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("unreadable record header: {e}")),
        };
        let bad = match slot {
            Ok(Slot::Empty) if expected <= cp.flushed_index => {
                format!("zeros where flushed entry {expected} belongs")
            }
            Ok(Slot::Empty) => break,
            Ok(Slot::Blank) => match segments.get(&seg.end()) {
                Some(next) => {
                    seg = next.clone();
                    visited.push(seg.clone());
                    off = SEGMENT_HEADER_LEN;
                    continue;
                }
                None if expected <= cp.flushed_index => {
                    format!(
                        "segment {} is missing but entry {expected} was flushed",
                        seg.end()
                    )
                }
                None => break,
            },
            Ok(Slot::Entry(size)) if off + size as u64 + BLANK_LEN as u64 > seg.size => {
                format!("record of {size} bytes runs past the segment end")
            }
            Ok(Slot::Entry(size)) => {
                let checked = reader
                    .read(off, size as usize)
                    .map_err(|e| e.to_string())
                    .and_then(|buf| check_record(buf).map_err(|e| e.to_string()));
                match checked {
                    Ok(h) if h.index == expected && h.term >= prev_term => {
                        batch.push(IndexRecord {
                            pos: seg.base + off,
                            term: h.term,
                            size,
                            crc: h.crc,
                        });
                        if batch.len() >= MAP_BATCH {
                            map.ensure_covering(batch_first, expected)?;
                            map.write(batch_first, &batch)?;
                            batch_first += batch.len() as u64;
                            batch.clear();
                        }
                        expected += 1;
                        prev_term = h.term;
                        off += size as u64;
                        scanned += 1;
                        continue;
                    }
                    Ok(h) => format!(
                        "entry index {} term {} where index {expected} term >= {prev_term} belongs",
                        h.index, h.term
                    ),
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if expected <= cp.flushed_index {
            return Err(StoreError::Corruption {
                file: seg.path.clone(),
                offset: off,
                reason: bad,
            });
        }
        // A torn tail past the flushed point: the end of the log.
        tracing::warn!(file = %seg.path.display(), offset = off, reason = %bad, "cutting torn tail");
        break;
    }
    // Files for every scanned record plus the next append.
    map.ensure_covering(batch_first, expected)?;
    map.write(batch_first, &batch)?;
    let last_index = expected - 1;

    // Zero what lies behind the end (torn bytes, unsynced records that lost their prefix) so
    // a later append can never line up with stale bytes.
    let zeroed = zero_garbage(&seg, off)?;
    for s in &visited {
        s.file.sync_data().at(&s.path)?;
    }

    // Segments after the tail: keep the next one only if nothing was ever written to it.
    let mut next = None;
    let mut removed = 0;
    let later: Vec<Arc<Segment>> = segments
        .range(seg.end()..)
        .map(|(_, s)| s.clone())
        .collect();
    for s in later {
        let stray = stray.iter().any(|x| Arc::ptr_eq(x, &s));
        segments.remove(&s.base);
        let fits = s.size == segment_size; // a segment made under an older size is not reused
        if !stray && fits && next.is_none() && s.base == seg.end() && zero_garbage_probe(&s)? {
            next = Some(s);
        } else {
            storage.remove(&s.path).at(&s.path)?;
            removed += 1;
        }
    }
    // Always: a segment renamed into place by a process that crashed before syncing the
    // directory exists now, but its name is not durable until this sync.
    storage.sync_dir(log_dir).at(log_dir)?;

    map.sync()?;
    let checkpoint = Checkpoint {
        first_index: cp.first_index,
        flushed_index: last_index,
        map_flushed_index: last_index,
        verify_from_index: trusted.max(cp.first_index - 1),
    };
    checkpoint.store(storage, root)?;
    let report = RecoveryReport {
        unclean_shutdown,
        scan_from,
        scanned_entries: scanned,
        zeroed_bytes: zeroed,
        removed_segments: removed,
        first_index: cp.first_index,
        last_index,
    };
    Ok(Recovered {
        segments,
        tail: (seg, off),
        next,
        first_index: cp.first_index,
        last_index,
        last_term: if last_index >= cp.first_index {
            prev_term
        } else {
            0
        },
        checkpoint,
        report,
    })
}

fn fresh(
    storage: &dyn Storage,
    root: &Path,
    log_dir: &Path,
    map: &LogIndexMap,
    segment_size: u64,
    unclean_shutdown: bool,
) -> Result<Recovered> {
    let checkpoint = Checkpoint {
        first_index: 1,
        flushed_index: 0,
        map_flushed_index: 0,
        verify_from_index: 0,
    };
    checkpoint.store(storage, root)?;
    let seg = Arc::new(allocate_segment(
        storage,
        log_dir,
        0,
        segment_size,
        &|| false,
    )?);
    map.ensure_covering(1, 1)?;
    let mut segments = BTreeMap::new();
    segments.insert(0, seg.clone());
    Ok(Recovered {
        segments,
        tail: (seg, SEGMENT_HEADER_LEN),
        next: None,
        first_index: 1,
        last_index: 0,
        last_term: 0,
        checkpoint,
        report: RecoveryReport {
            unclean_shutdown,
            scan_from: 1,
            scanned_entries: 0,
            zeroed_bytes: 0,
            removed_segments: 0,
            first_index: 1,
            last_index: 0,
        },
    })
}

/// The segment holding absolute position `pos`.
pub(crate) fn segment_at(segments: &BTreeMap<u64, Arc<Segment>>, pos: u64) -> Option<Arc<Segment>> {
    segments
        .range(..=pos)
        .next_back()
        .map(|(_, s)| s.clone())
        .filter(|s| pos < s.end())
}

/// Zeros from `off` up to the first all-zero block; returns the bytes zeroed.
pub(crate) fn zero_garbage(seg: &Segment, off: u64) -> Result<u64> {
    let mut at = off;
    let mut zeroed = 0;
    let mut buf = vec![0u8; ZERO_BLOCK as usize];
    while at < seg.size {
        let n = ZERO_BLOCK.min(seg.size - at) as usize;
        seg.file.read_exact_at(at, &mut buf[..n]).at(&seg.path)?;
        if buf[..n].iter().all(|b| *b == 0) {
            break;
        }
        buf[..n].fill(0);
        seg.file.write_at(at, &buf[..n]).at(&seg.path)?;
        zeroed += n as u64;
        at += n as u64;
    }
    Ok(zeroed)
}

/// The segment holding `first_index`: the last one whose first entry is at or below it.
/// `None` if no segment starts with a readable entry (an empty log).
fn first_segment(
    segments: &BTreeMap<u64, Arc<Segment>>,
    first_index: LogIndex,
) -> Result<Option<Arc<Segment>>> {
    let mut found = None;
    for seg in segments.values() {
        match first_entry_index(seg) {
            Some(index) if index <= first_index => found = Some(seg.clone()),
            _ => break,
        }
    }
    Ok(found)
}

/// Index of a segment's first entry, trusted only if its whole first record verifies: a torn
/// or flipped header must never make the store delete live segments.
pub(crate) fn first_entry_index(seg: &Segment) -> Option<LogIndex> {
    let mut first8 = [0u8; 8];
    seg.file
        .read_exact_at(SEGMENT_HEADER_LEN, &mut first8)
        .ok()?;
    let Ok(Slot::Entry(size)) = classify(&first8) else {
        return None;
    };
    if SEGMENT_HEADER_LEN + u64::from(size) > seg.size {
        return None;
    }
    let mut record = vec![0u8; size as usize];
    seg.file
        .read_exact_at(SEGMENT_HEADER_LEN, &mut record)
        .ok()?;
    check_record(&record).ok().map(|h| h.index)
}

/// Whether a segment's first block after the header is all zeros (never written to).
fn zero_garbage_probe(seg: &Segment) -> Result<bool> {
    let n = ZERO_BLOCK.min(seg.size - SEGMENT_HEADER_LEN) as usize;
    let mut buf = vec![0u8; n];
    seg.file
        .read_exact_at(SEGMENT_HEADER_LEN, &mut buf)
        .at(&seg.path)?;
    Ok(buf.iter().all(|b| *b == 0))
}
