//! The CommitLog: the one ordered, durable log of entries (the Raft log). It owns the segment
//! files, the append path (index assignment, encoding, segment roll), the writer thread (pwrite +
//! one `fdatasync` per batch = group commit), segment preallocation, reads by log index,
//! `truncate_after` and physical deletion of old segments.
//!
//! What it must never do: acknowledge an append in `sync` mode before `fdatasync` returned;
//! retry a failed fsync (the kernel may have dropped the dirty pages — the log fails instead and
//! must be reopened through recovery); delete a segment on its own clock (the engine decides).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::checkpoint::Checkpoint;
use super::entry::{
    BLANK_LEN, EntryHeader, LogEntry, LogIndex, NewEntry, Term, check_record, decode_entry,
    encode_blank, encode_entry,
};
use super::error::{IoContext, Result, StoreError};
use super::log_index::{IndexRecord, LogIndexMap};
use super::recovery::{RecoveryReport, first_entry_index, recover, segment_at, zero_garbage};
use super::segment::{SEGMENT_HEADER_LEN, Segment, allocate_segment};
use super::storage::Storage;

/// When an append is acknowledged, and what a crash can take back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Acknowledged after `fdatasync`; concurrent appends share one (group commit). Nothing
    /// acknowledged is lost to a power cut.
    Sync,
    /// Acknowledged once written to the OS (survives a process crash); `fdatasync` every
    /// `interval_ms`. A power cut loses at most the last interval of acknowledged entries.
    Async {
        /// Flush interval in milliseconds.
        interval_ms: u64,
    },
}

/// CommitLog settings. Every bound is here, with its default.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Segment size in bytes (default 1 GiB; 4 KiB to 4 GiB - 1). Applies to new segments.
    pub segment_size: u64,
    /// Largest encoded entry accepted (default 16 MiB); capped by what fits a segment.
    pub max_entry_bytes: usize,
    /// Flush mode (default `Sync`).
    pub flush: FlushMode,
    /// Log-index map records per file (default 2^20 = 24 MiB files).
    pub index_records_per_file: u64,
    /// How often the checkpoint advances (default 1000 ms). Recovery re-verifies about two
    /// intervals' worth of the log (from the previous checkpoint's flushed point).
    pub checkpoint_interval_ms: u64,
    /// Index records of the newest entries kept in memory (default 65536).
    pub recent_records: usize,
    /// Bytes appended but not yet handed to the writer before `append` blocks (default 64 MiB).
    pub max_pending_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_size: 1 << 30,
            max_entry_bytes: 16 << 20,
            flush: FlushMode::Sync,
            index_records_per_file: 1 << 20,
            checkpoint_interval_ms: 1000,
            recent_records: 65_536,
            max_pending_bytes: 64 << 20,
        }
    }
}

impl LogConfig {
    /// The entry size limit in force: `max_entry_bytes`, or less if a segment is smaller.
    pub fn entry_limit(&self) -> usize {
        let room = self
            .segment_size
            .saturating_sub(SEGMENT_HEADER_LEN + BLANK_LEN as u64);
        self.max_entry_bytes
            .min(usize::try_from(room).unwrap_or(usize::MAX))
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StoreError::Config(m.into()));
        if self.segment_size > u64::from(u32::MAX) || self.segment_size < 4096 {
            return bad("segment_size must be between 4 KiB and 4 GiB");
        }
        if self.max_entry_bytes < 64 {
            return bad("max_entry_bytes must be at least 64");
        }
        if self.max_pending_bytes < self.entry_limit() {
            return bad("max_pending_bytes must hold at least one entry of the size limit");
        }
        if self.index_records_per_file == 0 || self.recent_records == 0 {
            return bad("index_records_per_file and recent_records must be positive");
        }
        Ok(())
    }
}

/// The durability ticket of one append. Resolves to the entry's index once the append is as
/// durable as the flush mode promises, or to the error that failed the log. Costs no
/// allocation: it compares the log's acknowledged watermark with its index.
#[derive(Debug)]
pub struct AppendTicket {
    /// Index assigned to the entry.
    pub index: LogIndex,
    /// Truncations the log had seen when the entry was appended.
    generation: u64,
    inner: Arc<Inner>,
}

impl AppendTicket {
    /// Acknowledged, and no truncation since the append: decided without the lock.
    fn acked(&self) -> bool {
        self.inner.acked.load(Ordering::Acquire) >= self.index
            && self.inner.truncations.load(Ordering::Acquire) == self.generation
    }

    /// Whether the append is durable now (never blocks; `false` also while a failure or a
    /// truncation that decides it otherwise is pending: [`AppendTicket::wait`] tells).
    pub fn is_durable(&self) -> bool {
        self.acked()
    }

    /// `Some` once decided, checked against state the caller has locked.
    fn decided(&self, st: &State) -> Option<Result<LogIndex>> {
        // A truncation at or below the entry removed it, whatever is at its index now.
        let cuts = st.cuts.get(self.generation as usize..).unwrap_or_default();
        if cuts.iter().any(|cut| *cut < self.index) {
            return Some(Err(StoreError::Truncated { index: self.index }));
        }
        if self.inner.acked.load(Ordering::Acquire) >= self.index {
            return Some(Ok(self.index));
        }
        if let Some(why) = &st.failed {
            return Some(Err(StoreError::Failed(why.clone())));
        }
        st.writer_gone.then_some(Err(StoreError::Closed))
    }

    /// Blocks the thread until durable.
    pub fn wait(self) -> Result<LogIndex> {
        self.wait_ref()
    }

    /// Blocks the thread until durable, keeping the ticket.
    pub fn wait_ref(&self) -> Result<LogIndex> {
        // A batch is acknowledged within microseconds (`async`) or one fdatasync (`sync`,
        // ~0.3 ms here): look again, yielding, for up to `ACK_SPIN` before paying for a sleep
        // and a wake-up — a thread woken on a CPU that went idle during the fdatasync starts
        // ~20 µs later (p50; wake bench), which a blocked reader would wait for.
        let start = Instant::now();
        // On one CPU a spin only takes time from the threads that would make progress.
        static SEVERAL_CPUS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let spin = *SEVERAL_CPUS
            .get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1));
        for look in 1u32.. {
            if self.acked() {
                return Ok(self.index);
            }
            if !spin {
                break;
            }
            // The clock is read once every 32 looks: reading it cost as much as a look.
            if look % 32 == 0 && start.elapsed() >= ACK_SPIN {
                break;
            }
            std::thread::yield_now();
        }
        let mut st = self.inner.lock();
        loop {
            if let Some(r) = self.decided(&st) {
                return r;
            }
            st = self.inner.acks.wait(st);
        }
    }
}

impl Future for AppendTicket {
    type Output = Result<LogIndex>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.acked() {
            return Poll::Ready(Ok(self.index));
        }
        let mut st = self.inner.lock();
        if let Some(r) = self.decided(&st) {
            return Poll::Ready(r);
        }
        // One waker per ticket: a re-poll replaces its own instead of adding another.
        let index = self.index;
        match st
            .wakers
            .iter_mut()
            .find(|(i, w)| *i == index && w.will_wake(cx.waker()))
        {
            Some(slot) => slot.1 = cx.waker().clone(),
            None => st.wakers.push((index, cx.waker().clone())),
        }
        Poll::Pending
    }
}

/// Map records are written to the map file in batches of this many (and at checkpoints).
const MAP_BATCH: usize = 4096;
/// Room a new pending chunk starts with: a busy batch (hundreds of small appends) fits
/// without the chunk being copied as it grows.
const CHUNK_ROOM: usize = 256 * 1024;

/// How many times the writer looks again for appends (yielding in between) before it sleeps.
const SPIN_CHECKS: u32 = 20;

/// How long [`AppendTicket::wait`] looks again for its acknowledgement (yielding in between)
/// before it sleeps: longer than one fdatasync, so the applier is running when it ends. It
/// costs CPU only while an append waits for the disk (a yield lets any other runnable thread
/// of that CPU go first).
const ACK_SPIN: Duration = Duration::from_millis(1);

/// Sub-records one entry may hold: queue entries number them with 16 bits.
pub const MAX_SUB_RECORDS: usize = 1 << 16;

/// File holding the PID of the running store; present at open = unclean shutdown.
pub const ABORT_FILE: &str = "abort";
const LOG_DIR: &str = "commitlog";
const MAP_DIR: &str = "raftindex";

#[derive(Debug)]
enum NextSegment {
    None,
    Allocating,
    Ready(Arc<Segment>),
    Failed(StoreError),
}

/// Work for the allocator thread.
#[derive(Debug, Clone, Copy)]
enum Alloc {
    /// A CommitLog segment starting at this byte offset.
    Segment(u64),
    /// The log-index map file holding this index.
    MapFile(LogIndex),
}

/// Preallocation state of the log-index map files.
#[derive(Debug)]
enum MapAlloc {
    Idle,
    Pending,
    Failed(StoreError),
}

#[derive(Debug)]
struct Chunk {
    seg: Arc<Segment>,
    off: u64,
    data: Vec<u8>,
}

#[derive(Debug)]
struct State {
    first_index: LogIndex,
    next_index: LogIndex,
    last_term: Term,
    tail_seg: Arc<Segment>,
    tail_off: u64,
    pending: Vec<Chunk>,
    /// Map records not yet written to the map file: those of `pending_first..next_index`.
    /// Written in batches of `MAP_BATCH` and at every checkpoint, not per append batch.
    pending_first: LogIndex,
    pending_records: Vec<IndexRecord>,
    /// Bytes in `pending`, bounded by `max_pending_bytes`.
    pending_bytes: usize,
    /// `sync()` asked for an fdatasync now.
    force_flush: bool,
    /// The index each truncation kept up to, in order (tickets of later entries fail).
    cuts: Vec<LogIndex>,
    /// Tasks awaiting tickets (index, waker); woken when the watermark passes the index.
    wakers: Vec<(LogIndex, Waker)>,
    /// The writer thread has exited: tickets not yet acknowledged never will be.
    writer_gone: bool,
    written_index: LogIndex,
    flushed_index: LogIndex,
    checkpoint: Checkpoint,
    writer_waiting: bool,
    writer_busy: bool,
    failed: Option<Arc<str>>,
    shutdown: bool,
    next_segment: NextSegment,
    /// One past the last index the preallocated map files can hold.
    map_ready_until: LogIndex,
    map_alloc: MapAlloc,
    /// Work for the segment allocator thread.
    alloc_tx: Option<mpsc::Sender<Alloc>>,
    /// Work for the map-file allocator thread: its own thread, so a small map file never
    /// waits behind a gigabyte of segment zeros.
    map_alloc_tx: Option<mpsc::Sender<Alloc>>,
    recent: VecDeque<IndexRecord>,
    recent_first: LogIndex,
    /// The last acknowledgement and when it happened.
    acked_at: Option<(LogIndex, Instant)>,
}

impl State {
    fn last_index(&self) -> LogIndex {
        self.next_index - 1
    }
    fn writable(&self) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(StoreError::Failed(why.clone()));
        }
        if self.shutdown {
            return Err(StoreError::Closed);
        }
        Ok(())
    }
    /// Pending bytes for position `off` of the tail segment, appended to the last chunk when
    /// contiguous so the writer issues one `pwrite` per segment per batch.
    fn pending_buf(&mut self) -> &mut Vec<u8> {
        let (seg, off) = (self.tail_seg.clone(), self.tail_off);
        let contiguous = self
            .pending
            .last()
            .is_some_and(|c| Arc::ptr_eq(&c.seg, &seg) && c.off + c.data.len() as u64 == off);
        if !contiguous {
            self.pending.push(Chunk {
                seg,
                off,
                data: Vec::with_capacity(CHUNK_ROOM),
            });
        }
        let last = self.pending.len() - 1;
        &mut self.pending[last].data
    }
    fn request_allocation(&mut self) {
        self.next_segment = NextSegment::Allocating;
        let base = self.tail_seg.end();
        if let Some(tx) = &self.alloc_tx {
            let _ = tx.send(Alloc::Segment(base));
        }
    }
    fn request_map_file(&mut self) {
        self.map_alloc = MapAlloc::Pending;
        let index = self.map_ready_until;
        if let Some(tx) = &self.map_alloc_tx {
            let _ = tx.send(Alloc::MapFile(index));
        }
    }
    /// The record of `index` if it is still in memory (recent cache or not yet in the map).
    fn memory_record(&self, index: LogIndex) -> Option<IndexRecord> {
        self.recent_record(index).or_else(|| {
            let i = index.checked_sub(self.pending_first)?;
            self.pending_records.get(usize::try_from(i).ok()?).copied()
        })
    }
    fn recent_record(&self, index: LogIndex) -> Option<IndexRecord> {
        let i = index.checked_sub(self.recent_first)?;
        self.recent.get(usize::try_from(i).ok()?).copied()
    }
}

/// A condition variable that skips the notify syscall when nobody waits.
#[derive(Debug, Default)]
struct Signal {
    cv: Condvar,
    waiters: AtomicUsize,
}

impl Signal {
    /// Sleeps until notified. Callers check their condition under the lock first, so a
    /// notification sent after a state change under the same lock is never missed.
    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        st
    }

    /// As `wait`, at most for `timeout`.
    fn wait_timeout<'a>(
        &self,
        st: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let st = match self.cv.wait_timeout(st, timeout) {
            Ok((st, _)) => st,
            Err(p) => p.into_inner().0,
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        st
    }

    /// Wakes every waiter, if there is any. Call after changing state under the lock.
    fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.cv.notify_all();
        }
    }
}

#[derive(Debug)]
struct Inner {
    storage: Arc<dyn Storage>,
    root: PathBuf,
    log_dir: PathBuf,
    config: LogConfig,
    map: LogIndexMap,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    state: Mutex<State>,
    /// The writer waits here for work.
    writer_cv: Condvar,
    /// Appenders, readers and truncation wait here for the writer or the allocator.
    progress: Signal,
    /// Blocking ticket waits sleep here: woken only when the acknowledged watermark moves.
    acks: Signal,
    closing: AtomicBool,
    /// Appends up to here are acknowledged (written in `async`, fdatasynced in `sync`).
    acked: AtomicU64,
    /// Truncations so far (`State::cuts` holds where each cut).
    truncations: AtomicU64,
    /// How long each flush's fdatasyncs took.
    fsync_latency: super::latency::Histogram,
}

/// The CommitLog. See the module docs.
#[derive(Debug)]
pub struct CommitLog {
    inner: Arc<Inner>,
    report: RecoveryReport,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl CommitLog {
    /// Opens (or creates) the log under `root`, recovering after any kind of shutdown.
    pub fn open(storage: Arc<dyn Storage>, root: &Path, config: LogConfig) -> Result<Self> {
        config.validate()?;
        let log_dir = root.join(LOG_DIR);
        storage.create_dir_all(&log_dir).at(&log_dir)?;
        let abort = root.join(ABORT_FILE);
        let unclean = storage.exists(&abort);
        let map = LogIndexMap::open(
            storage.clone(),
            &root.join(MAP_DIR),
            config.index_records_per_file,
        )?;
        let rec = recover(
            storage.as_ref(),
            root,
            &log_dir,
            &map,
            config.segment_size,
            unclean,
        )?;

        // Mark the store as running; a clean close removes the marker.
        let marker = storage.open(&abort, true).at(&abort)?;
        marker.set_len(0).at(&abort)?;
        marker
            .write_at(0, std::process::id().to_string().as_bytes())
            .at(&abort)?;
        marker.sync_data().at(&abort)?;
        storage.sync_dir(root).at(root)?;

        let recent_first = rec
            .last_index
            .saturating_sub(config.recent_records as u64 / 2)
            .max(rec.first_index);
        let recent: VecDeque<IndexRecord> = map
            .read_range(recent_first, (rec.last_index + 1 - recent_first) as usize)?
            .into_iter()
            .collect();
        if recent.len() as u64 != rec.last_index + 1 - recent_first {
            return Err(StoreError::Corruption {
                file: root.join(MAP_DIR),
                offset: recent_first,
                reason: "log-index map has holes after recovery".into(),
            });
        }
        map.ensure_covering(rec.last_index + 1, rec.last_index + 1)?;
        let map_ready_until = map.ready_until();
        let (alloc_tx, alloc_rx) = mpsc::channel();
        let (map_alloc_tx, map_alloc_rx) = mpsc::channel();
        let (tail_seg, tail_off) = rec.tail;
        let state = State {
            first_index: rec.first_index,
            next_index: rec.last_index + 1,
            last_term: rec.last_term,
            tail_seg,
            tail_off,
            pending: Vec::new(),
            pending_first: rec.last_index + 1,
            pending_bytes: 0,
            pending_records: Vec::new(),
            wakers: Vec::new(),
            writer_gone: false,
            force_flush: false,
            cuts: Vec::new(),
            written_index: rec.last_index,
            flushed_index: rec.last_index,
            checkpoint: rec.checkpoint,
            writer_waiting: false,
            writer_busy: false,
            failed: None,
            shutdown: false,
            next_segment: match rec.next {
                Some(seg) => NextSegment::Ready(seg),
                None => NextSegment::None,
            },
            map_ready_until,
            map_alloc: MapAlloc::Idle,
            alloc_tx: Some(alloc_tx),
            map_alloc_tx: Some(map_alloc_tx),
            recent,
            recent_first,
            acked_at: None,
        };
        let inner = Arc::new(Inner {
            storage,
            root: root.to_path_buf(),
            log_dir,
            config,
            map,
            segments: RwLock::new(rec.segments),
            state: Mutex::new(state),
            writer_cv: Condvar::new(),
            progress: Signal::default(),
            acks: Signal::default(),
            closing: AtomicBool::new(false),
            acked: AtomicU64::new(rec.last_index),
            truncations: AtomicU64::new(0),
            fsync_latency: super::latency::Histogram::default(),
        });
        {
            let mut st = inner.lock();
            if matches!(st.next_segment, NextSegment::None) {
                st.request_allocation();
            }
        }
        let w = inner.clone();
        let writer = std::thread::Builder::new()
            .name("commitlog-writer".into())
            .spawn(move || {
                w.clone().writer_loop();
                w.writer_exited();
            })
            .map_err(|e| StoreError::io("commitlog-writer thread", e))?;
        let a = inner.clone();
        let allocator = std::thread::Builder::new()
            .name("commitlog-alloc".into())
            .spawn(move || a.allocator_loop(alloc_rx))
            .map_err(|e| StoreError::io("commitlog-alloc thread", e))?;
        let m = inner.clone();
        let map_allocator = std::thread::Builder::new()
            .name("raftindex-alloc".into())
            .spawn(move || m.allocator_loop(map_alloc_rx))
            .map_err(|e| StoreError::io("raftindex-alloc thread", e))?;
        Ok(CommitLog {
            inner,
            report: rec.report,
            threads: Mutex::new(vec![writer, allocator, map_allocator]),
        })
    }

    /// What recovery found when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Appends an entry at the next index. Returns at once; await (or `wait`) the ticket for
    /// durability. Entries are durable in index order.
    pub fn append(&self, entry: &NewEntry) -> Result<AppendTicket> {
        if entry.records.len() > MAX_SUB_RECORDS {
            return Err(StoreError::TooManySubRecords {
                count: entry.records.len(),
                limit: MAX_SUB_RECORDS,
            });
        }
        self.append_with(entry.term, entry.encoded_len(), None, |buf, index| {
            encode_entry(buf, entry, index)
        })
    }

    /// Appends a record exactly as another node's log holds it (a follower writing what its
    /// leader sent): it must verify (CRC, structure), carry the next index and be of `term`.
    /// The bytes go to disk unchanged, so every replica's log is byte-identical.
    pub fn append_raw(&self, raw: &[u8], term: Term) -> Result<AppendTicket> {
        let bad = |why: String| StoreError::BadRecord(why);
        let h = check_record(raw).map_err(|e| bad(e.to_string()))?;
        if h.size as usize != raw.len() {
            return Err(bad(format!(
                "{} bytes for a record of {}",
                raw.len(),
                h.size
            )));
        }
        if h.term != term {
            return Err(bad(format!(
                "a record of term {} sent as term {term}",
                h.term
            )));
        }
        let body = decode_entry(&Bytes::copy_from_slice(raw)).map_err(|e| bad(e.to_string()))?;
        if body.records.len() > MAX_SUB_RECORDS {
            return Err(StoreError::TooManySubRecords {
                count: body.records.len(),
                limit: MAX_SUB_RECORDS,
            });
        }
        self.append_with(h.term, raw.len(), Some(h.index), |buf, _| {
            buf.extend_from_slice(raw);
            h.crc
        })
    }

    /// The append path shared by `append` and `append_raw`: waits for room, then `write`
    /// puts `size` bytes of the record for the next index into the pending buffer and
    /// returns its CRC. `expect_index`: refuse unless the next index is this one.
    fn append_with(
        &self,
        term: Term,
        size: usize,
        expect_index: Option<LogIndex>,
        write: impl FnOnce(&mut Vec<u8>, LogIndex) -> u32,
    ) -> Result<AppendTicket> {
        let limit = self.inner.config.entry_limit();
        if size > limit {
            return Err(StoreError::EntryTooLarge { size, limit });
        }
        let inner = &self.inner;
        let mut st = inner.lock();
        st.writable()?;
        // Every wait below releases the lock and lets other appenders move the tail, so after
        // any wait all conditions are checked again; the entry goes in on a pass that waited
        // for nothing.
        loop {
            st.writable()?;
            // Backpressure: a writer that cannot keep up bounds the memory appends may hold.
            if st.pending_bytes >= inner.config.max_pending_bytes {
                if st.writer_waiting {
                    inner.writer_cv.notify_one();
                }
                st = inner.wait_progress(st);
                continue;
            }
            if st.next_index + inner.config.index_records_per_file / 2 >= st.map_ready_until {
                let must_wait = st.next_index >= st.map_ready_until;
                st = inner.ensure_map_room(st)?;
                if must_wait {
                    continue;
                }
            }
            if st.tail_off + (size + BLANK_LEN) as u64 > st.tail_seg.size {
                if st.tail_off == SEGMENT_HEADER_LEN {
                    // Cannot happen with `entry_limit` and same-size segments; never loop on it.
                    return Err(StoreError::EntryTooLarge { size, limit });
                }
                st = inner.roll(st, size)?;
                continue;
            }
            break;
        }
        // The term is compared with the entry this one will directly follow.
        if term < st.last_term {
            return Err(StoreError::TermRegression {
                term,
                last_term: st.last_term,
            });
        }
        let index = st.next_index;
        if expect_index.is_some_and(|want| want != index) {
            return Err(StoreError::BadRecord(format!(
                "record of index {} offered as index {index}",
                expect_index.unwrap_or_default()
            )));
        }
        let pos = st.tail_seg.base + st.tail_off;
        let crc = write(st.pending_buf(), index);
        st.pending_bytes += size;
        let record = IndexRecord {
            pos,
            term,
            size: size as u32,
            crc,
        };
        st.pending_records.push(record);
        st.recent.push_back(record);
        if st.recent.len() > inner.config.recent_records {
            st.recent.pop_front();
            st.recent_first += 1;
        }
        st.next_index += 1;
        st.last_term = term;
        st.tail_off += size as u64;

        if st.writer_waiting {
            st.writer_waiting = false;
            inner.writer_cv.notify_one();
        }
        Ok(AppendTicket {
            index,
            generation: inner.truncations.load(Ordering::Acquire),
            inner: inner.clone(),
        })
    }

    /// First index held.
    pub fn first_index(&self) -> LogIndex {
        self.inner.lock().first_index
    }
    /// Last index appended (durable or not).
    pub fn last_index(&self) -> LogIndex {
        self.inner.lock().last_index()
    }
    /// Term of the last entry (0 when empty).
    pub fn last_term(&self) -> Term {
        self.inner.lock().last_term
    }
    /// Last index known durable (fdatasynced).
    pub fn flushed_index(&self) -> LogIndex {
        self.inner.lock().flushed_index
    }

    /// Blocks until the acknowledged watermark (fdatasynced in `sync` mode, written in `async`)
    /// differs from `seen` — it moved, or a truncation happened since (`seen.1` counts them) —
    /// or `timeout` passes, or the log fails or closes. Returns `(watermark, truncations)`, the
    /// watermark never past the last index. What a Raft driver reports as persisted.
    pub fn wait_acknowledged(&self, seen: (LogIndex, u64), timeout: Duration) -> (LogIndex, u64) {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.lock();
        loop {
            let acked = self
                .inner
                .acked
                .load(Ordering::Acquire)
                .min(st.last_index());
            let now_seen = (acked, self.inner.truncations.load(Ordering::Acquire));
            let now = Instant::now();
            if now_seen != seen || now >= deadline || st.failed.is_some() || st.writer_gone {
                return now_seen;
            }
            st = self.inner.acks.wait_timeout(st, deadline - now);
        }
    }

    /// How long flushes' fdatasyncs took so far (each flush of one or more segments counts
    /// once).
    pub fn fsync_latency(&self) -> super::latency::HistogramSnapshot {
        self.inner.fsync_latency.snapshot()
    }

    /// The last index acknowledged (written in `async`, synced in `sync`), read without the
    /// lock.
    pub fn acked_index(&self) -> LogIndex {
        self.inner.acked.load(Ordering::Acquire)
    }

    /// The last acknowledgement: the index it reached and when (the instant an `async`
    /// write or a `sync` fdatasync completed). What latency is measured from: a reader woken
    /// for an entry is woken this long after its commit.
    pub fn acknowledged(&self) -> Option<(LogIndex, Instant)> {
        self.inner.lock().acked_at
    }

    /// Whether the next segment is preallocated and ready (appends will not wait for it).
    pub fn next_segment_ready(&self) -> bool {
        matches!(self.inner.lock().next_segment, NextSegment::Ready(_))
    }

    /// Makes every entry appended so far durable now, whatever the flush mode; returns the
    /// index it reached. In `sync` mode this only waits for the batch in flight.
    pub fn sync(&self) -> Result<LogIndex> {
        let inner = &self.inner;
        let mut st = inner.lock();
        let target = st.last_index();
        if st.flushed_index < target {
            st.force_flush = true;
            if st.writer_waiting {
                inner.writer_cv.notify_one();
            }
        }
        while st.flushed_index < target {
            if let Some(why) = &st.failed {
                return Err(StoreError::Failed(why.clone()));
            }
            if st.writer_gone {
                return Err(StoreError::Closed);
            }
            st = inner.wait_progress(st);
        }
        Ok(target)
    }

    /// Term of the entry at `index`; 0 for index 0.
    pub fn term_at(&self, index: LogIndex) -> Result<Term> {
        if index == 0 {
            return Ok(0);
        }
        Ok(self.inner.record(index, false)?.term)
    }

    /// The raw record bytes of `index`, verified (CRC, index, term).
    pub fn read_raw(&self, index: LogIndex) -> Result<Bytes> {
        self.read_located(index).map(|(raw, _, _)| raw)
    }

    /// The verified record of `index` with the file and offset it was read from.
    fn read_located(&self, index: LogIndex) -> Result<(Bytes, PathBuf, u64)> {
        let rec = self.inner.record(index, true)?;
        let seg = segment_at(&self.inner.segments_read(), rec.pos).ok_or_else(|| {
            StoreError::Corruption {
                file: self.inner.log_dir.clone(),
                offset: rec.pos,
                reason: format!("entry {index} points outside every segment"),
            }
        })?;
        let off = rec.pos - seg.base;
        let mut buf = vec![0u8; rec.size as usize];
        seg.file.read_exact_at(off, &mut buf).at(&seg.path)?;
        let corrupt = |reason: String| StoreError::Corruption {
            file: seg.path.clone(),
            offset: off,
            reason,
        };
        let h = check_record(&buf).map_err(|e| corrupt(e.to_string()))?;
        if h.index != index || h.term != rec.term {
            return Err(corrupt(format!(
                "entry {index} found index {} term {}",
                h.index, h.term
            )));
        }
        Ok((Bytes::from(buf), seg.path.clone(), off))
    }

    /// The decoded entries `from..=to`, read in runs: consecutive records of one segment come
    /// in one read of up to 1 MiB (a replay reads thousands of entries; one read each would
    /// cost a system call apiece). Each record is verified as `entry` verifies it.
    pub fn entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<LogEntry>> {
        let mut out = Vec::with_capacity(to.saturating_sub(from).saturating_add(1) as usize);
        self.read_runs(from, to, u64::MAX, |h, raw, corrupt| {
            let index = h.index;
            out.push(decode_entry(raw).map_err(|e| corrupt(format!("entry {index}: {e}")))?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The verified records `from..=to` as stored, with their terms, stopping before the
    /// bytes would pass `max_bytes` (the first record always comes): what a leader sends.
    pub fn raw_entries(
        &self,
        from: LogIndex,
        to: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<(Term, Bytes)>> {
        let mut out = Vec::new();
        self.read_runs(from, to, max_bytes, |h, raw, _| {
            out.push((h.term, raw.clone()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads the records `from..=to` in runs (consecutive records of one segment in one read
    /// of up to 1 MiB), verifies each (CRC, index, term) and hands it to `each` with its header
    /// and a way to name a corruption at its place. Stops before `max_bytes` would be passed
    /// (the first record always comes).
    fn read_runs(
        &self,
        from: LogIndex,
        to: LogIndex,
        max_bytes: u64,
        mut each: impl FnMut(&EntryHeader, &Bytes, &dyn Fn(String) -> StoreError) -> Result<()>,
    ) -> Result<()> {
        const RUN_BYTES: u64 = 1 << 20;
        if from > to {
            return Ok(());
        }
        // No record is shorter than its header: more records than this pass `max_bytes` for
        // sure (the first always comes), so the index map is read no further — a follower far
        // behind costs each batch its own records, not the whole way to `to`.
        let to = to.min(from.saturating_add(max_bytes / super::entry::ENTRY_HEADER_LEN as u64));
        let mut total = 0u64;
        let records = self.inner.records(from, to)?;
        let record = |i: LogIndex| records[(i - from) as usize];
        let mut i = from;
        while i <= to {
            let first = record(i);
            if i > from && total + u64::from(first.size) > max_bytes {
                break;
            }
            let seg = segment_at(&self.inner.segments_read(), first.pos).ok_or_else(|| {
                StoreError::Corruption {
                    file: self.inner.log_dir.clone(),
                    offset: first.pos,
                    reason: format!("entry {i} points outside every segment"),
                }
            })?;
            // The run: records that follow each other byte for byte in this segment.
            let mut run = vec![(i, first)];
            let mut end = first.pos + u64::from(first.size);
            let mut j = i + 1;
            while j <= to && end - first.pos < RUN_BYTES {
                let r = record(j);
                if r.pos != end || r.pos + u64::from(r.size) > seg.end() {
                    break;
                }
                if total + (end - first.pos) + u64::from(r.size) > max_bytes {
                    break;
                }
                end += u64::from(r.size);
                run.push((j, r));
                j += 1;
            }
            total += end - first.pos;
            let off = first.pos - seg.base;
            let mut buf = vec![0u8; (end - first.pos) as usize];
            seg.file.read_exact_at(off, &mut buf).at(&seg.path)?;
            let buf = Bytes::from(buf);
            for (index, rec) in run {
                let at = (rec.pos - first.pos) as usize;
                let raw = buf.slice(at..at + rec.size as usize);
                let corrupt = |reason: String| StoreError::Corruption {
                    file: seg.path.clone(),
                    offset: rec.pos - seg.base,
                    reason,
                };
                let h = check_record(&raw).map_err(|e| corrupt(e.to_string()))?;
                if h.index != index || h.term != rec.term {
                    return Err(corrupt(format!(
                        "entry {index} found index {} term {}",
                        h.index, h.term
                    )));
                }
                each(&h, &raw, &corrupt)?;
            }
            i = j;
        }
        Ok(())
    }

    /// The decoded entry at `index`.
    pub fn entry(&self, index: LogIndex) -> Result<LogEntry> {
        let (raw, file, offset) = self.read_located(index)?;
        decode_entry(&raw).map_err(|e| StoreError::Corruption {
            file,
            offset,
            reason: format!("entry {index}: {e}"),
        })
    }

    /// Removes every entry after `index` (an uncommitted suffix), durably: after this returns,
    /// no crash brings them back. Waits for in-flight writes first.
    pub fn truncate_after(&self, index: LogIndex) -> Result<()> {
        self.inner.truncate_after(index)
    }

    /// Deletes whole segments whose entries all lie below `index`; the segment holding `index`
    /// and the tail segment are kept. Returns the new first index. Called by the engine when a
    /// retention command applies; the store never deletes on its own.
    pub fn delete_before(&self, index: LogIndex) -> Result<LogIndex> {
        self.inner.delete_before(index)
    }

    /// What an image of the log `first_index..=upto` ships, once those entries are written:
    /// each segment holding them — the last one up to the end of `upto`'s record — and the
    /// term of `upto`.
    /// The caller keeps deletions from running while it reads them (`delete_before` removes
    /// files); nothing else rewrites bytes at or below a written entry.
    pub(crate) fn image_segments(&self, upto: LogIndex) -> Result<(Vec<ImageSegment>, Term)> {
        let first = self.first_index();
        let head = self.inner.record(first, true)?;
        let last = self.inner.record(upto, true)?;
        let segments = self.inner.segments_read();
        let outside = |pos: u64| StoreError::Corruption {
            file: self.inner.log_dir.clone(),
            offset: pos,
            reason: "an entry points outside every segment".into(),
        };
        let from = segment_at(&segments, head.pos).ok_or_else(|| outside(head.pos))?;
        let to = segment_at(&segments, last.pos).ok_or_else(|| outside(last.pos))?;
        if head.pos != from.base + SEGMENT_HEADER_LEN {
            return Err(StoreError::Corruption {
                file: from.path.clone(),
                offset: head.pos - from.base,
                reason: format!("first entry {first} does not begin its segment"),
            });
        }
        let files = segments
            .range(from.base..=to.base)
            .map(|(base, seg)| {
                let data = if *base == to.base {
                    last.pos + u64::from(last.size) - base
                } else {
                    seg.size
                };
                ImageSegment {
                    name: super::segment::file_name(*base),
                    path: seg.path.clone(),
                    size: seg.size,
                    data,
                }
            })
            .collect();
        Ok((files, last.term))
    }

    /// Closes cleanly: flushes, writes the checkpoint, removes the abort marker. Appends fail
    /// with `Closed` afterwards.
    pub fn close(&self) -> Result<()> {
        self.shutdown_threads();
        let inner = &self.inner;
        let st = inner.lock();
        if let Some(why) = &st.failed {
            return Err(StoreError::Failed(why.clone()));
        }
        drop(st);
        let abort = inner.root.join(ABORT_FILE);
        if inner.storage.exists(&abort) {
            inner.storage.remove(&abort).at(&abort)?;
            inner.storage.sync_dir(&inner.root).at(&inner.root)?;
        }
        Ok(())
    }

    fn shutdown_threads(&self) {
        self.inner.closing.store(true, Ordering::Relaxed);
        {
            let mut st = self.inner.lock();
            st.shutdown = true;
            st.alloc_tx = None;
            st.map_alloc_tx = None;
            self.inner.writer_cv.notify_all();
            self.inner.notify_progress();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// A segment as an image ships it.
#[derive(Debug)]
pub(crate) struct ImageSegment {
    /// File name under the log directory.
    pub name: String,
    /// The live file.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Bytes to ship from its start (the rest is zeros).
    pub data: u64,
}

impl Drop for CommitLog {
    fn drop(&mut self) {
        // Without `close`, the writer still flushes what it has, but the abort marker stays: the
        // next open treats this as an unclean shutdown (it is the safe reading).
        self.shutdown_threads();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_progress<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.progress.wait(st)
    }

    fn notify_progress(&self) {
        self.progress.notify();
    }

    fn segments_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<Segment>>> {
        self.segments.read().unwrap_or_else(|p| p.into_inner())
    }

    fn segments_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Arc<Segment>>> {
        self.segments.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the tail into the preallocated next segment, blanking the rest of the current one.
    /// A failed allocation is retried once, fresh, before the append fails: appends succeed
    /// again as soon as space is freed.
    fn roll<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        size: usize,
    ) -> Result<MutexGuard<'a, State>> {
        let mut retried = false;
        loop {
            if st.tail_off + (size + BLANK_LEN) as u64 <= st.tail_seg.size {
                return Ok(st); // another appender rolled while we waited
            }
            match std::mem::replace(&mut st.next_segment, NextSegment::None) {
                NextSegment::Ready(seg) => {
                    let remaining = st.tail_seg.size - st.tail_off;
                    encode_blank(st.pending_buf(), remaining as u32);
                    st.pending_bytes += BLANK_LEN;
                    self.segments_write().insert(seg.base, seg.clone());
                    st.tail_seg = seg;
                    st.tail_off = SEGMENT_HEADER_LEN;
                    st.request_allocation();
                    return Ok(st);
                }
                NextSegment::Failed(e) if retried => {
                    st.next_segment = NextSegment::Failed(e.clone());
                    return Err(e);
                }
                NextSegment::Failed(_) | NextSegment::None => {
                    retried = true;
                    st.request_allocation();
                }
                NextSegment::Allocating => st.next_segment = NextSegment::Allocating,
            }
            st = self.wait_progress(st);
            st.writable()?;
        }
    }

    /// Keeps the log-index map preallocated ahead of the appends: asks for the next file when
    /// half of the last one is used, and waits only when the next index has no file yet.
    fn ensure_map_room<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
    ) -> Result<MutexGuard<'a, State>> {
        let mut retried = false;
        loop {
            match std::mem::replace(&mut st.map_alloc, MapAlloc::Idle) {
                MapAlloc::Failed(e) if retried || st.next_index < st.map_ready_until => {
                    st.map_alloc = MapAlloc::Failed(e.clone());
                    if st.next_index < st.map_ready_until {
                        // Not needed yet. The retry happens when the files run out: that
                        // append waits for one fresh attempt and fails only if it fails too.
                        return Ok(st);
                    }
                    return Err(e);
                }
                MapAlloc::Idle | MapAlloc::Failed(_) => {
                    retried = true;
                    st.request_map_file();
                }
                MapAlloc::Pending => st.map_alloc = MapAlloc::Pending,
            }
            if st.next_index < st.map_ready_until {
                return Ok(st);
            }
            st = self.wait_progress(st);
            st.writable()?;
        }
    }

    /// The state, locked, once `from..=to` is a range of the log and, with `written`, its
    /// bytes reached the file up to `to`.
    fn locked_range(
        &self,
        from: LogIndex,
        to: LogIndex,
        written: bool,
    ) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        if from < st.first_index || to > st.last_index() || from > to {
            return Err(StoreError::IndexOutOfRange {
                index: if from < st.first_index { from } else { to },
                first: st.first_index,
                last: st.last_index(),
            });
        }
        while written && st.written_index < to {
            if let Some(why) = &st.failed {
                return Err(StoreError::Failed(why.clone()));
            }
            st = self.wait_progress(st);
        }
        Ok(st)
    }

    /// The records `from..=to`, once all are written: those memory holds (a suffix of the
    /// log) copied under the lock, the older ones from the map file in one read per file.
    fn records(&self, from: LogIndex, to: LogIndex) -> Result<Vec<IndexRecord>> {
        let st = self.locked_range(from, to, true)?;
        let mut in_memory = Vec::new();
        let mut first_in_memory = to + 1;
        while first_in_memory > from {
            match st.memory_record(first_in_memory - 1) {
                Some(r) => in_memory.push(r),
                None => break,
            }
            first_in_memory -= 1;
        }
        drop(st);
        in_memory.reverse();
        if first_in_memory == from {
            return Ok(in_memory);
        }
        // Every record is in memory or in the map file (the writer drops one from memory only
        // after writing it there), so the file holds the rest.
        let count = (first_in_memory - from) as usize;
        let mut out = self.map.read_range(from, count)?;
        if out.len() != count {
            return Err(self.missing_record(from + out.len() as u64));
        }
        out.extend(in_memory);
        Ok(out)
    }

    /// The map record of `index`; with `written`, waits until its bytes reached the file.
    fn record(&self, index: LogIndex, written: bool) -> Result<IndexRecord> {
        let st = self.locked_range(index, index, written)?;
        // Every record is in memory or in the map file: the writer drops a record from memory
        // only after writing it there.
        if let Some(r) = st.memory_record(index) {
            return Ok(r);
        }
        drop(st);
        self.map
            .read(index)?
            .ok_or_else(|| self.missing_record(index))
    }

    /// The corruption of a log index the map should hold and does not.
    fn missing_record(&self, index: LogIndex) -> StoreError {
        StoreError::Corruption {
            file: self.root.join(MAP_DIR),
            offset: index * super::log_index::INDEX_RECORD_LEN,
            reason: format!("no log-index record for {index}"),
        }
    }

    /// Marks the log failed: every waiting ticket gets the error, appends are refused until
    /// reopen.
    fn fail(&self, err: &StoreError) {
        tracing::error!(error = %err, "commitlog failed; refusing appends until reopened");
        let wakers = {
            let mut st = self.lock();
            if st.failed.is_none() {
                st.failed = Some(Arc::from(err.to_string()));
            }
            st.pending.clear();
            // Records of written entries stay: those entries remain readable until reopen.
            let keep = (st.written_index + 1).saturating_sub(st.pending_first) as usize;
            st.pending_records.truncate(keep);
            st.pending_bytes = 0;
            st.writer_busy = false;
            std::mem::take(&mut st.wakers)
        };
        for (_, w) in wakers {
            w.wake();
        }
        self.acks.notify();
        self.notify_progress();
    }

    /// After the writer thread ends: tickets it did not acknowledge never will be.
    fn writer_exited(&self) {
        let wakers = {
            let mut st = self.lock();
            st.writer_gone = true;
            std::mem::take(&mut st.wakers)
        };
        for (_, w) in wakers {
            w.wake();
        }
        self.acks.notify();
        self.notify_progress();
    }

    /// Writes the first `records.len()` pending map records to the map file, then drops them
    /// from memory (readers find every record in memory or in the file, never neither).
    fn write_map_records(&self, records: &[IndexRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let first = self.lock().pending_first;
        self.map.write(first, records)?;
        let mut st = self.lock();
        st.pending_records.drain(..records.len());
        st.pending_first += records.len() as u64;
        Ok(())
    }

    /// Moves the acknowledged watermark to `index` and wakes the tickets it passes.
    fn acknowledge(&self, index: LogIndex) {
        let woken: Vec<Waker> = {
            let mut st = self.lock();
            self.acked.fetch_max(index, Ordering::AcqRel);
            st.acked_at = Some((index, Instant::now()));
            if st.wakers.is_empty() {
                Vec::new()
            } else {
                let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut st.wakers)
                    .into_iter()
                    .partition(|(i, _)| *i <= index);
                st.wakers = wait;
                done.into_iter().map(|(_, w)| w).collect()
            }
        };
        for w in woken {
            w.wake();
        }
        self.acks.notify();
        self.notify_progress();
    }

    fn writer_loop(self: Arc<Self>) {
        let sync_mode = self.config.flush == FlushMode::Sync;
        let flush_every = match self.config.flush {
            FlushMode::Sync => Duration::ZERO,
            FlushMode::Async { interval_ms } => Duration::from_millis(interval_ms),
        };
        let checkpoint_every = Duration::from_millis(self.config.checkpoint_interval_ms);
        let mut last_flush = Instant::now();
        let mut last_checkpoint = Instant::now();
        let mut dirty: Vec<Arc<Segment>> = Vec::new();
        loop {
            let mut st = self.lock();
            let mut idle_checks = 0;
            let shutdown = loop {
                if st.failed.is_some() {
                    if st.shutdown {
                        return;
                    }
                } else {
                    let unflushed = st.written_index > st.flushed_index;
                    let flush_due =
                        (!sync_mode && unflushed && last_flush.elapsed() >= flush_every)
                            || st.force_flush;
                    let cp_due = st.flushed_index > st.checkpoint.flushed_index
                        && last_checkpoint.elapsed() >= checkpoint_every;
                    if !st.pending.is_empty() || flush_due || cp_due || st.shutdown {
                        break st.shutdown;
                    }
                }
                if idle_checks < SPIN_CHECKS {
                    // More appends usually arrive while a batch is acknowledged: look again
                    // before sleeping, so a busy log never pays for a wake-up per batch.
                    idle_checks += 1;
                    drop(st);
                    std::thread::yield_now();
                    st = self.lock();
                    continue;
                }
                st.writer_waiting = true;
                let nap = if sync_mode {
                    checkpoint_every
                } else {
                    flush_every.min(checkpoint_every)
                };
                st = self
                    .writer_cv
                    .wait_timeout(st, nap.max(Duration::from_millis(1)))
                    .map_or_else(|p| p.into_inner().0, |(g, _)| g);
                st.writer_waiting = false;
            };
            let forced = std::mem::replace(&mut st.force_flush, false);
            let chunks = std::mem::take(&mut st.pending);
            st.pending_bytes = 0;
            let map_batch =
                (st.pending_records.len() >= MAP_BATCH).then(|| st.pending_records.clone());
            let target = st.last_index();
            st.writer_busy = true;
            drop(st);

            let step = (|| -> Result<()> {
                // 1. Write the batch: one pwrite per contiguous chunk, then the map records.
                for c in &chunks {
                    c.seg.file.write_at(c.off, &c.data).at(&c.seg.path)?;
                    if !dirty.iter().any(|d| Arc::ptr_eq(d, &c.seg)) {
                        dirty.push(c.seg.clone());
                    }
                }
                if let Some(records) = map_batch {
                    self.write_map_records(&records)?;
                }
                self.lock().written_index = target;
                if sync_mode {
                    self.notify_progress(); // readers wait for written entries
                } else {
                    self.acknowledge(target);
                }
                // 2. fdatasync: every batch in sync mode, on the interval (or at close) in async.
                if sync_mode || shutdown || forced || last_flush.elapsed() >= flush_every {
                    let started = Instant::now();
                    for seg in dirty.drain(..) {
                        seg.file.sync_data().at(&seg.path)?;
                    }
                    self.fsync_latency.record(started.elapsed());
                    last_flush = Instant::now();
                    {
                        let mut st = self.lock();
                        st.flushed_index = st.flushed_index.max(target);
                    }
                    if sync_mode {
                        self.acknowledge(target);
                    } else {
                        self.notify_progress(); // `sync()` waits for the flushed index
                    }
                }
                // 3. Checkpoint: the map first, then the file that says how far both are durable.
                let due = {
                    let st = self.lock();
                    st.flushed_index > st.checkpoint.flushed_index
                        && (shutdown || last_checkpoint.elapsed() >= checkpoint_every)
                };
                if due {
                    let records = self.lock().pending_records.clone();
                    self.write_map_records(&records)?;
                    self.map.sync()?;
                    let cp = {
                        let st = self.lock();
                        Checkpoint {
                            first_index: st.first_index,
                            flushed_index: st.flushed_index,
                            map_flushed_index: st.pending_first - 1,
                            verify_from_index: st.checkpoint.flushed_index,
                        }
                    };
                    cp.store(self.storage.as_ref(), &self.root)?;
                    self.lock().checkpoint = cp;
                    last_checkpoint = Instant::now();
                }
                Ok(())
            })();
            match step {
                Ok(()) => {
                    let mut st = self.lock();
                    st.writer_busy = false;
                    let done = shutdown && st.pending.is_empty();
                    drop(st);
                    self.notify_progress();
                    if done {
                        return;
                    }
                }
                Err(e) => self.fail(&e),
            }
        }
    }

    fn allocator_loop(self: Arc<Self>, rx: mpsc::Receiver<Alloc>) {
        for request in rx {
            match request {
                Alloc::Segment(base) => self.allocate_next_segment(base),
                Alloc::MapFile(index) => {
                    let result = self.map.preallocate(index);
                    let mut st = self.lock();
                    match result {
                        Ok(()) => {
                            st.map_ready_until = self.map.ready_until();
                            st.map_alloc = MapAlloc::Idle;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "log-index file allocation failed; will retry");
                            st.map_alloc = MapAlloc::Failed(e);
                        }
                    }
                }
            }
            self.notify_progress();
        }
    }

    fn allocate_next_segment(&self, base: u64) {
        let cancelled = || self.closing.load(Ordering::Relaxed);
        let result = allocate_segment(
            self.storage.as_ref(),
            &self.log_dir,
            base,
            self.config.segment_size,
            &cancelled,
        );
        let mut st = self.lock();
        let wanted =
            matches!(st.next_segment, NextSegment::Allocating) && st.tail_seg.end() == base;
        match result {
            Ok(seg) if wanted => st.next_segment = NextSegment::Ready(Arc::new(seg)),
            Ok(seg) => {
                // Truncation moved the tail while we worked: this file is not the next one.
                let _ = self.storage.remove(&seg.path);
                let _ = self.storage.sync_dir(&self.log_dir);
            }
            Err(e) if wanted => {
                tracing::warn!(error = %e, "segment allocation failed; will retry on next roll");
                st.next_segment = NextSegment::Failed(e);
            }
            Err(_) => {}
        }
    }

    /// Waits until the writer is idle with nothing pending; the guard is returned still held.
    fn quiesce(&self) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        loop {
            st.writable()?;
            if st.pending.is_empty() && !st.writer_busy {
                return Ok(st);
            }
            if st.writer_waiting {
                self.writer_cv.notify_one();
            }
            st = self.wait_progress(st);
        }
    }

    fn truncate_after(&self, index: LogIndex) -> Result<()> {
        let mut st = self.quiesce()?;
        if index >= st.last_index() {
            return Ok(());
        }
        if index + 1 < st.first_index {
            return Err(StoreError::IndexOutOfRange {
                index,
                first: st.first_index,
                last: st.last_index(),
            });
        }
        let cut = self.record_locked(&st, index + 1)?;
        let new_last_term = if index >= st.first_index {
            self.record_locked(&st, index)?.term
        } else {
            0
        };
        let result = (|| -> Result<()> {
            // 1. Lower the durable points first, so a crash mid-way never finds zeros below them.
            let cp = Checkpoint {
                first_index: st.first_index,
                flushed_index: st.checkpoint.flushed_index.min(index),
                map_flushed_index: st.checkpoint.map_flushed_index.min(index),
                verify_from_index: st.checkpoint.verify_from_index.min(index),
            };
            cp.store(self.storage.as_ref(), &self.root)?;
            st.checkpoint = cp;
            // 2. Drop whole segments after the cut, and a preallocated one that no longer follows.
            let cut_seg = segment_at(&self.segments_read(), cut.pos).ok_or_else(|| {
                StoreError::Corruption {
                    file: self.log_dir.clone(),
                    offset: cut.pos,
                    reason: format!("entry {} points outside every segment", index + 1),
                }
            })?;
            let doomed: Vec<Arc<Segment>> = self
                .segments_read()
                .range(cut_seg.end()..)
                .map(|(_, s)| s.clone())
                .collect();
            if !doomed.is_empty() {
                if let NextSegment::Ready(seg) =
                    std::mem::replace(&mut st.next_segment, NextSegment::None)
                {
                    self.storage.remove(&seg.path).at(&seg.path)?;
                }
                for seg in &doomed {
                    self.segments_write().remove(&seg.base);
                    self.storage.remove(&seg.path).at(&seg.path)?;
                }
                self.storage.sync_dir(&self.log_dir).at(&self.log_dir)?;
            }
            // 3. Zero the cut range in its segment and make the zeros durable.
            let from = cut.pos - cut_seg.base;
            zero_garbage(&cut_seg, from)?;
            cut_seg.file.sync_data().at(&cut_seg.path)?;
            st.tail_seg = cut_seg;
            st.tail_off = from;
            if !doomed.is_empty() || matches!(st.next_segment, NextSegment::None) {
                st.request_allocation();
            }
            Ok(())
        })();
        if let Err(e) = result {
            drop(st);
            self.fail(&e);
            return Err(e);
        }
        st.next_index = index + 1;
        if index + 1 > st.pending_first {
            let keep = (index + 1 - st.pending_first) as usize;
            st.pending_records.truncate(keep);
        } else {
            st.pending_records.clear();
            st.pending_first = index + 1;
        }
        // Tickets of the removed entries fail with `Truncated`; new ones start above `index`.
        st.cuts.push(index);
        self.truncations.fetch_add(1, Ordering::AcqRel);
        self.acked.fetch_min(index, Ordering::AcqRel);
        st.last_term = new_last_term;
        st.written_index = st.written_index.min(index);
        st.flushed_index = st.flushed_index.min(index);
        let keep = (index + 1).saturating_sub(st.recent_first) as usize;
        st.recent.truncate(keep);
        if st.recent.is_empty() {
            st.recent_first = index + 1;
        }
        Ok(())
    }

    fn record_locked(&self, st: &State, index: LogIndex) -> Result<IndexRecord> {
        if let Some(r) = st.memory_record(index) {
            return Ok(r);
        }
        self.map
            .read(index)?
            .ok_or_else(|| self.missing_record(index))
    }

    fn delete_before(&self, index: LogIndex) -> Result<LogIndex> {
        let mut st = self.quiesce()?;
        let index = index.min(st.last_index() + 1);
        let segs: Vec<Arc<Segment>> = self.segments_read().values().cloned().collect();
        // A segment may go when the next segment starts at or below `index`.
        let mut doomed = Vec::new();
        let mut new_first = st.first_index;
        for pair in segs.windows(2) {
            let (seg, next) = (&pair[0], &pair[1]);
            if Arc::ptr_eq(next, &st.tail_seg) && st.tail_off == SEGMENT_HEADER_LEN {
                break; // the tail holds no entry yet: its first index is unknown
            }
            let Some(first_of_next) = first_entry_index(next) else {
                break; // unreadable or damaged: keep everything from here
            };
            if first_of_next > index {
                break;
            }
            doomed.push(seg.clone());
            new_first = first_of_next;
        }
        if doomed.is_empty() {
            return Ok(st.first_index);
        }
        let cp = Checkpoint {
            first_index: new_first,
            ..st.checkpoint
        };
        cp.store(self.storage.as_ref(), &self.root)?;
        st.checkpoint = cp;
        st.first_index = new_first;
        // Map records of deleted entries that were still in memory go with them (their map
        // file is about to be removed).
        if st.pending_first < new_first {
            let drop_n = ((new_first - st.pending_first) as usize).min(st.pending_records.len());
            st.pending_records.drain(..drop_n);
            st.pending_first = new_first;
        }
        if st.recent_first < new_first {
            let drop_n = ((new_first - st.recent_first) as usize).min(st.recent.len());
            st.recent.drain(..drop_n);
            st.recent_first = new_first;
        }
        drop(st);
        for seg in &doomed {
            self.segments_write().remove(&seg.base);
            self.storage.remove(&seg.path).at(&seg.path)?;
        }
        self.storage.sync_dir(&self.log_dir).at(&self.log_dir)?;
        self.map.remove_before(new_first)?;
        Ok(new_first)
    }
}
