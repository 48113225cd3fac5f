//! `manifold inspect` groundwork: walks a data directory **read-only** and reports what is
//! there — segments and their entries, CRC verification of every record, per-entry digests
//! `(index, term, crc)` for comparing replicas, the log-index map, topic table, queues and
//! index files — with every problem named by file and offset.
//!
//! It must never write: no recovery, no repair, no directory creation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::checkpoint::Checkpoint;
use super::consume_queue::{ConsumeQueues, CqEntry};
use super::entry::{
    LogIndex, RecordOp, Slot, StreamId, Term, check_record, classify, decode_entry,
};
use super::error::{IoContext, Result};
use super::log_index::{INDEX_RECORD_LEN, IndexRecord};
use super::segment::{SEGMENT_HEADER_LEN, open_segment, parse_file_name};
use super::storage::{Storage, read_all};

/// What inspect looks at beyond the CommitLog.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// Collect a digest per entry (memory: 20 bytes per entry).
    pub digests: bool,
    /// Check this topic `(db, key)` entry by entry: its queue against the log.
    pub topic: Option<(u8, Vec<u8>)>,
}

/// One topic, checked entry by entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicCheck {
    /// Its row in the topic table, if it exists at the last dispatch checkpoint.
    pub topic: Option<super::topics::Topic>,
    /// Messages of the topic found in the log (up to the dispatch point).
    pub log_messages: u64,
    /// Queue entries compared with them.
    pub queue_entries: u64,
}

/// One problem, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File.
    pub file: PathBuf,
    /// Byte offset in the file.
    pub offset: u64,
    /// What does not verify.
    pub reason: String,
}

/// A CommitLog segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// File.
    pub file: PathBuf,
    /// Start position (its name).
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Entries that verified.
    pub entries: u64,
    /// First and last index in it, if any.
    pub indexes: Option<(LogIndex, LogIndex)>,
    /// Bytes used by records (header excluded).
    pub used: u64,
}

/// Per-entry digest for comparing replicas: equal digests mean byte-identical records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryDigest {
    /// Index.
    pub index: LogIndex,
    /// Term.
    pub term: Term,
    /// CRC32C of the record past its CRC field (kind, term, index, timestamp, command, messages).
    pub crc: u32,
}

/// Summary of derived state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DerivedSummary {
    /// Dispatch point of the last dispatch checkpoint.
    pub dispatched: LogIndex,
    /// Live topics in the table at that checkpoint.
    pub live_topics: u64,
    /// Topics whose queue migrated to their own files.
    pub migrated_topics: u64,
    /// Queue entries over all live topics (trimmed ones included).
    pub queue_entries: u64,
    /// Files under `consumequeue/`.
    pub queue_files: u64,
    /// Files under `index/`.
    pub index_files: u64,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InspectReport {
    /// The abort marker is present (unclean shutdown or still running).
    pub unclean: bool,
    /// The checkpoint, if readable.
    pub checkpoint: Option<Checkpoint>,
    /// Segments in order.
    pub segments: Vec<SegmentSummary>,
    /// First and last index that verified.
    pub first_index: Option<LogIndex>,
    /// See `first_index`.
    pub last_index: Option<LogIndex>,
    /// Bytes past the last verified record that are not zeros and lie above the flushed point
    /// (a torn tail the next open will cut): file, offset.
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Digests, when asked for.
    pub digests: Vec<EntryDigest>,
    /// Derived state, when a dispatch checkpoint exists.
    pub derived: Option<DerivedSummary>,
    /// The topic asked for with `InspectOptions::topic`.
    pub topic: Option<TopicCheck>,
    /// Everything that does not verify. Empty means the directory is sound.
    pub problems: Vec<Problem>,
}

/// Walks the data directory `root`.
pub fn inspect(
    storage: Arc<dyn Storage>,
    root: &Path,
    options: InspectOptions,
) -> Result<InspectReport> {
    let mut report = InspectReport {
        unclean: storage.exists(&root.join("abort")),
        ..Default::default()
    };
    match Checkpoint::load(storage.as_ref(), root) {
        Ok(cp) => report.checkpoint = cp,
        Err(e) => report
            .problems
            .push(problem_of(&e, root.join("checkpoint"))),
    }
    let flushed = report.checkpoint.map_or(0, |c| c.flushed_index);
    let log_dir = root.join("commitlog");
    let mut names: Vec<(u64, String)> = match storage.list(&log_dir) {
        Ok(n) => n
            .into_iter()
            .filter_map(|n| parse_file_name(&n).map(|b| (b, n)))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    let mut topic_log: TopicLog = Vec::new();
    let mut expected: Option<LogIndex> = None;
    let mut prev_term = 0;
    let mut ended = false;
    let map = MapReader::open(storage.as_ref(), &root.join("raftindex"));
    for (base, name) in names {
        let path = log_dir.join(&name);
        let seg = match open_segment(storage.as_ref(), &path, base) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(problem_of(&e, path));
                continue;
            }
        };
        let mut summary = SegmentSummary {
            file: path.clone(),
            base,
            size: seg.size,
            entries: 0,
            indexes: None,
            used: 0,
        };
        let mut off = SEGMENT_HEADER_LEN;
        while !ended && off + 8 <= seg.size {
            let mut first8 = [0u8; 8];
            seg.file.read_exact_at(off, &mut first8).at(&path)?;
            let bad = match classify(&first8) {
                Ok(Slot::Empty) => {
                    ended = true;
                    break;
                }
                Ok(Slot::Blank) => break,
                Ok(Slot::Entry(size)) if off + u64::from(size) + 8 > seg.size => {
                    format!("record of {size} bytes runs past the segment end")
                }
                Ok(Slot::Entry(size)) => {
                    let mut buf = vec![0u8; size as usize];
                    seg.file.read_exact_at(off, &mut buf).at(&path)?;
                    match check_record(&buf) {
                        Ok(h) if expected.is_none_or(|e| h.index == e) && h.term >= prev_term => {
                            if let Some((db, key)) = &options.topic {
                                collect_messages(&buf, *db, key, &mut topic_log);
                            }
                            if let Some(problem) = map.check(
                                h.index,
                                IndexRecord {
                                    pos: base + off,
                                    term: h.term,
                                    size,
                                    crc: h.crc,
                                },
                                report.checkpoint,
                            ) {
                                report.problems.push(problem);
                            }
                            report.first_index.get_or_insert(h.index);
                            report.last_index = Some(h.index);
                            if options.digests {
                                report.digests.push(EntryDigest {
                                    index: h.index,
                                    term: h.term,
                                    crc: h.crc,
                                });
                            }
                            summary.entries += 1;
                            summary.used += u64::from(size);
                            summary.indexes =
                                Some((summary.indexes.map_or(h.index, |(f, _)| f), h.index));
                            expected = Some(h.index + 1);
                            prev_term = h.term;
                            off += u64::from(size);
                            continue;
                        }
                        Ok(h) => format!(
                            "entry index {} term {} where {:?} term >= {prev_term} belongs",
                            h.index, h.term, expected
                        ),
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if expected.is_some_and(|e| e > flushed) {
                report.torn_tail = Some((path.clone(), off));
            } else {
                report.problems.push(Problem {
                    file: path.clone(),
                    offset: off,
                    reason: bad,
                });
            }
            ended = true;
        }
        report.segments.push(summary);
    }
    if let Some(cp) = report
        .checkpoint
        .filter(|c| c.flushed_index > report.last_index.unwrap_or(0))
    {
        report.problems.push(Problem {
            file: root.join("checkpoint"),
            offset: 16,
            reason: format!(
                "checkpoint says {} is flushed but the log verifies only to {:?}",
                cp.flushed_index, report.last_index
            ),
        });
    }
    report.derived = derived(storage.as_ref(), root, &mut report.problems);
    if let Some((db, key)) = &options.topic {
        report.topic = Some(check_topic(
            storage,
            root,
            *db,
            key,
            &topic_log,
            &mut report.problems,
        )?);
    }
    Ok(report)
}

/// `(index, sub-record, id)` of messages of one topic in log order; `None` marks a drop.
type TopicLog = Vec<(LogIndex, u16, Option<StreamId>)>;

/// First index of the log as its checkpoint records it (retention moves it).
fn log_first_index(storage: &dyn Storage, root: &Path) -> Option<LogIndex> {
    Checkpoint::load(storage, root)
        .ok()
        .flatten()
        .map(|c| c.first_index)
}

fn collect_messages(record: &[u8], db: u8, key: &[u8], out: &mut TopicLog) {
    let Ok(entry) = decode_entry(&Bytes::copy_from_slice(record)) else {
        return;
    };
    for (j, r) in entry.records.iter().enumerate() {
        if r.db == db && r.topic == key {
            match r.op {
                RecordOp::Message => out.push((entry.index, j as u16, Some(r.id))),
                RecordOp::Drop => out.push((entry.index, j as u16, None)),
                RecordOp::Delete
                | RecordOp::Trim
                | RecordOp::TrimToLen
                | RecordOp::Create
                | RecordOp::RetainFrom
                | RecordOp::SetId => {}
            }
        }
    }
}

/// Compares the topic's queue with the log's messages of its current incarnation, up to the
/// dispatch point: same entries, same order, same positions.
fn check_topic(
    storage: Arc<dyn Storage>,
    root: &Path,
    db: u8,
    key: &[u8],
    log: &TopicLog,
    problems: &mut Vec<Problem>,
) -> Result<TopicCheck> {
    let mut check = TopicCheck {
        topic: None,
        log_messages: 0,
        queue_entries: 0,
    };
    let dispatch = root.join("dispatch");
    let Ok(bytes) = read_all(storage.as_ref(), &dispatch) else {
        return Ok(check);
    };
    let Ok((dispatched, mark, queues)) = super::message_store::inspect_dispatch(&bytes, &dispatch)
    else {
        return Ok(check);
    };
    let cq_dir = root.join("consumequeue");
    let Ok(rows) = super::topics::read_rows(storage.as_ref(), &cq_dir, mark) else {
        return Ok(check);
    };
    let latest: std::collections::BTreeMap<u32, &super::topics::Topic> =
        rows.iter().map(|t| (t.id, t)).collect();
    let Some(topic) = latest
        .values()
        .find(|t| !t.dropped && t.db == db && t.key == key)
        .map(|t| (*t).clone())
    else {
        return Ok(check);
    };
    // The log's messages of this incarnation that the dispatcher adds (IDs only grow; a drop,
    // even earlier in the creating entry, starts over).
    let mut expected = Vec::new();
    let mut last = StreamId::default();
    for (index, sub, id) in log
        .iter()
        .filter(|(i, _, _)| *i >= topic.incarnation && *i <= dispatched)
    {
        match id {
            None => {
                expected.clear();
                last = StreamId::default();
            }
            Some(id) if *id > last => {
                expected.push((*index, *sub, *id));
                last = *id;
            }
            Some(_) => {}
        }
    }
    // Old segments deleted by retention take the first messages with them: then only what
    // the log still holds is compared, aligned at the end.
    let log_first = log_first_index(storage.as_ref(), root);
    let whole = log_first.is_none_or(|f| f <= topic.incarnation);
    let cqs = ConsumeQueues::open_existing(storage, &cq_dir, queues)?;
    let from = topic.first_live.min(topic.len);
    let entries = match cqs.read(&topic, from, topic.len - from) {
        Ok(e) => e,
        Err(e) => {
            problems.push(problem_of(&e, cqs.topic_dir(topic.id)));
            Vec::new()
        }
    };
    let (compared, want): (Vec<&CqEntry>, &[(LogIndex, u16, StreamId)]) = if whole {
        (
            entries.iter().collect(),
            expected.get(from as usize..).unwrap_or_default(),
        )
    } else {
        let first = log_first.unwrap_or(0);
        let held: Vec<&CqEntry> = entries.iter().filter(|e| e.log_index >= first).collect();
        let skip = expected.len().saturating_sub(held.len());
        (held, expected.get(skip..).unwrap_or_default())
    };
    for (n, (e, w)) in compared.iter().zip(want).enumerate() {
        if (e.log_index, e.sub, e.id) != *w {
            problems.push(Problem {
                file: cqs.topic_dir(topic.id),
                offset: (from + n as u64) * super::consume_queue::CQ_ENTRY_LEN,
                reason: format!(
                    "queue entry {} is ({}, {}, {}) but the log says ({}, {}, {})",
                    from + n as u64,
                    e.log_index,
                    e.sub,
                    e.id,
                    w.0,
                    w.1,
                    w.2
                ),
            });
            break;
        }
    }
    if whole && expected.len() as u64 != topic.len {
        problems.push(Problem {
            file: cq_dir.join(format!("topics-{:08}", mark.generation)),
            offset: 0,
            reason: format!(
                "topic row says {} queue entries, the log has {} messages up to {dispatched}",
                topic.len,
                expected.len()
            ),
        });
    }
    check.log_messages = expected.len() as u64;
    check.queue_entries = entries.len() as u64;
    check.topic = Some(topic);
    Ok(check)
}

fn problem_of(e: &super::error::StoreError, fallback: PathBuf) -> Problem {
    match e {
        super::error::StoreError::Corruption {
            file,
            offset,
            reason,
        } => Problem {
            file: file.clone(),
            offset: *offset,
            reason: reason.clone(),
        },
        other => Problem {
            file: fallback,
            offset: 0,
            reason: other.to_string(),
        },
    }
}

/// Reads log-index map records without opening the map for writing.
struct MapReader {
    dir: PathBuf,
    /// Map files by the byte offset of their first record, opened once.
    files: Vec<(u64, PathBuf, Arc<dyn super::storage::StorageFile>)>,
}

impl MapReader {
    fn open(storage: &dyn Storage, dir: &Path) -> Self {
        let mut files: Vec<_> = storage
            .list(dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| parse_file_name(&n).map(|s| (s, dir.join(n))))
            .filter_map(|(s, p)| storage.open(&p, false).ok().map(|f| (s, p, f)))
            .collect();
        files.sort_by_key(|(s, _, _)| *s);
        MapReader {
            dir: dir.to_path_buf(),
            files,
        }
    }

    /// Compares the map's record of `index` with what the scan found, for records the
    /// checkpoint declares synced.
    fn check(
        &self,
        index: LogIndex,
        found: IndexRecord,
        cp: Option<Checkpoint>,
    ) -> Option<Problem> {
        let synced = cp.is_some_and(|c| index <= c.map_flushed_index.min(c.flushed_index));
        if !synced {
            return None;
        }
        let at = index * INDEX_RECORD_LEN;
        let i = self.files.partition_point(|(s, _, _)| *s <= at);
        let Some((start, path, file)) = i.checked_sub(1).and_then(|i| self.files.get(i)) else {
            return Some(Problem {
                file: self.dir.clone(),
                offset: at,
                reason: format!("no map file for {index}"),
            });
        };
        let mut b = [0u8; INDEX_RECORD_LEN as usize];
        if file.read_exact_at(at - start, &mut b).is_err() {
            return Some(Problem {
                file: path.clone(),
                offset: at - start,
                reason: format!("no map record for {index}"),
            });
        }
        let rec = IndexRecord::decode(&b);
        (rec != Some(found)).then(|| Problem {
            file: path.clone(),
            offset: at - start,
            reason: format!(
                "map record {rec:?} does not match the log's {found:?} for index {index}"
            ),
        })
    }
}

fn derived(
    storage: &dyn Storage,
    root: &Path,
    problems: &mut Vec<Problem>,
) -> Option<DerivedSummary> {
    let path = root.join("dispatch");
    if !storage.exists(&path) {
        return None;
    }
    let bytes = match read_all(storage, &path) {
        Ok(b) => b,
        Err(e) => {
            problems.push(Problem {
                file: path,
                offset: 0,
                reason: e.to_string(),
            });
            return None;
        }
    };
    let view = match super::message_store::inspect_dispatch(&bytes, &path).map(|(d, m, _)| (d, m)) {
        Ok(v) => v,
        Err(e) => {
            problems.push(problem_of(&e, path));
            return None;
        }
    };
    let mut summary = DerivedSummary {
        dispatched: view.0,
        ..Default::default()
    };
    let cq_dir = root.join("consumequeue");
    let count = |dir: &Path| storage.list(dir).map_or(0, |v| v.len() as u64);
    summary.queue_files = count(&cq_dir.join("arena"));
    match super::topics::read_rows(storage, &cq_dir, view.1) {
        Ok(rows) => {
            // A later row of an id supersedes an earlier one.
            let latest: std::collections::BTreeMap<u32, &super::topics::Topic> =
                rows.iter().map(|t| (t.id, t)).collect();
            for t in latest.values().filter(|t| !t.dropped) {
                summary.live_topics += 1;
                summary.queue_entries += t.len;
                if t.migrated {
                    summary.migrated_topics += 1;
                    summary.queue_files += count(&cq_dir.join(format!("{:08x}", t.id)));
                }
            }
        }
        Err(e) => problems.push(problem_of(&e, cq_dir.clone())),
    }
    summary.index_files = count(&root.join("index"));
    Some(summary)
}
