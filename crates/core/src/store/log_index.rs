//! The log-index map (`raftindex/`): one fixed-size record per log index — CommitLog position,
//! term, size, CRC — so term-at-index, read-from-index and truncate-at-index are O(1) without
//! scanning the CommitLog. Files hold `per_file` records each and are named by the byte offset of
//! their first record (`first_index * 24`, 20 digits). Records are written lazily and synced only
//! at checkpoints; recovery rewrites every record past the checkpoint from the CommitLog, so this
//! map never decides what the log holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::entry::{LogIndex, Term};
use super::error::{IoContext, Result, StoreError};
use super::le;
use super::segment::{file_name, parse_file_name};
use super::storage::{Storage, StorageFile};

/// Size of one map record.
pub const INDEX_RECORD_LEN: u64 = 24;

/// Where an entry lives in the CommitLog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRecord {
    /// Absolute CommitLog position of the record.
    pub pos: u64,
    /// Term of the entry.
    pub term: Term,
    /// Record size in bytes.
    pub size: u32,
    /// The record's CRC32C (also the per-entry digest compared across replicas).
    pub crc: u32,
}

impl IndexRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pos.to_le_bytes());
        out.extend_from_slice(&self.term.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
    }
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let long = |at: usize| le::u64_at(b, at);
        let word = |at: usize| le::u32_at(b, at);
        let r = IndexRecord {
            pos: long(0),
            term: long(8),
            size: word(16),
            crc: word(20),
        };
        (r.size != 0).then_some(r)
    }
}

#[derive(Debug, Default)]
struct Files {
    open: BTreeMap<LogIndex, Arc<dyn StorageFile>>,
    dirty: BTreeMap<LogIndex, Arc<dyn StorageFile>>,
}

/// The map. Thread-safe; writes come from the CommitLog's writer thread only.
#[derive(Debug)]
pub struct LogIndexMap {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    per_file: u64,
    files: Mutex<Files>,
}

impl LogIndexMap {
    /// Opens the map in `dir` (created if missing).
    pub fn open(storage: Arc<dyn Storage>, dir: &Path, per_file: u64) -> Result<Self> {
        storage.create_dir_all(dir).at(dir)?;
        let mut files = Files::default();
        for name in storage.list(dir).at(dir)? {
            if name.ends_with(".tmp") {
                let path = dir.join(&name);
                storage.remove(&path).at(&path)?;
                continue;
            }
            let Some(offset) = parse_file_name(&name) else {
                continue;
            };
            if offset % (per_file * INDEX_RECORD_LEN) != 0 {
                return Err(StoreError::Config(format!(
                    "raftindex file {name} does not match {per_file} records per file"
                )));
            }
            let path = dir.join(&name);
            files.open.insert(
                offset / INDEX_RECORD_LEN,
                storage.open(&path, false).at(&path)?,
            );
        }
        // Names of map files left by a crashed process become durable here.
        storage.sync_dir(dir).at(dir)?;
        Ok(LogIndexMap {
            storage,
            dir: dir.to_path_buf(),
            per_file,
            files: Mutex::new(files),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file_start(&self, index: LogIndex) -> LogIndex {
        index - index % self.per_file
    }

    fn path_of(&self, start: LogIndex) -> PathBuf {
        self.dir.join(file_name(start * INDEX_RECORD_LEN))
    }

    fn file(&self, files: &Files, start: LogIndex) -> Option<Arc<dyn StorageFile>> {
        files.open.get(&start).cloned()
    }

    /// One past the last index the preallocated files can hold.
    pub fn ready_until(&self) -> LogIndex {
        self.lock()
            .open
            .keys()
            .next_back()
            .map_or(0, |s| s + self.per_file)
    }

    /// Preallocates the file holding `index` by writing zeros (so writing records later never
    /// needs new disk blocks), under a `.tmp` name until synced. No-op if it exists.
    pub fn preallocate(&self, index: LogIndex) -> Result<()> {
        let start = self.file_start(index);
        if self.lock().open.contains_key(&start) {
            return Ok(());
        }
        let path = self.path_of(start);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let result = (|| -> std::io::Result<Arc<dyn StorageFile>> {
            let f = self.storage.open(&tmp, true)?;
            f.set_len(0)?;
            let total = self.per_file * INDEX_RECORD_LEN;
            let zeros = vec![0u8; total.min(1 << 20) as usize];
            let mut off = 0;
            while off < total {
                let n = (total - off).min(zeros.len() as u64);
                f.write_at(off, &zeros[..n as usize])?;
                off += n;
            }
            f.sync_data()?;
            self.storage.rename(&tmp, &path)?;
            self.storage.sync_dir(&self.dir)?;
            Ok(f)
        })();
        match result {
            Ok(f) => {
                self.lock().open.insert(start, f);
                Ok(())
            }
            Err(e) => {
                let _ = self.storage.remove(&tmp);
                if e.kind() == std::io::ErrorKind::StorageFull {
                    Err(StoreError::NoSpace { path })
                } else {
                    Err(StoreError::io(path, e))
                }
            }
        }
    }

    /// Preallocates every missing file holding an index in `from..=to`.
    pub fn ensure_covering(&self, from: LogIndex, to: LogIndex) -> Result<()> {
        let mut start = self.file_start(from);
        while start <= to {
            self.preallocate(start)?;
            start += self.per_file;
        }
        Ok(())
    }

    /// Writes records for `first, first+1, ...`.
    pub fn write(&self, first: LogIndex, records: &[IndexRecord]) -> Result<()> {
        let mut files = self.lock();
        let mut buf = Vec::with_capacity(records.len() * INDEX_RECORD_LEN as usize);
        let mut i = 0usize;
        while i < records.len() {
            let index = first + i as u64;
            let start = self.file_start(index);
            let room = (start + self.per_file - index) as usize;
            let n = room.min(records.len() - i);
            buf.clear();
            for r in &records[i..i + n] {
                r.encode(&mut buf);
            }
            let f = self
                .file(&files, start)
                .ok_or_else(|| StoreError::Corruption {
                    file: self.path_of(start),
                    offset: 0,
                    reason: format!("log-index file for {index} was never allocated"),
                })?;
            f.write_at((index - start) * INDEX_RECORD_LEN, &buf)
                .at_with(|| self.path_of(start))?;
            files.dirty.insert(start, f);
            i += n;
        }
        Ok(())
    }

    /// Reads the record of `index`; `None` if never written.
    pub fn read(&self, index: LogIndex) -> Result<Option<IndexRecord>> {
        Ok(self.read_range(index, 1)?.into_iter().next())
    }

    /// Reads up to `count` consecutive records from `first`, stopping at the first unwritten one.
    pub fn read_range(&self, first: LogIndex, count: usize) -> Result<Vec<IndexRecord>> {
        let mut out = Vec::with_capacity(count);
        let mut index = first;
        while out.len() < count {
            let start = self.file_start(index);
            let Some(f) = self.file(&self.lock(), start) else {
                break;
            };
            let n = ((start + self.per_file - index) as usize).min(count - out.len());
            let mut buf = vec![0u8; n * INDEX_RECORD_LEN as usize];
            f.read_exact_at((index - start) * INDEX_RECORD_LEN, &mut buf)
                .at_with(|| self.path_of(start))?;
            for chunk in buf.chunks_exact(INDEX_RECORD_LEN as usize) {
                match IndexRecord::decode(chunk) {
                    Some(r) => out.push(r),
                    None => return Ok(out),
                }
            }
            index += n as u64;
        }
        Ok(out)
    }

    /// Makes every record written so far durable.
    pub fn sync(&self) -> Result<()> {
        let dirty = std::mem::take(&mut self.lock().dirty);
        for (start, f) in dirty {
            f.sync_data().at_with(|| self.path_of(start))?;
        }
        Ok(())
    }

    /// Removes the files whose records all lie below `first_kept`.
    pub fn remove_before(&self, first_kept: LogIndex) -> Result<()> {
        let mut files = self.lock();
        let doomed: Vec<LogIndex> = files
            .open
            .keys()
            .copied()
            .filter(|s| s + self.per_file <= first_kept)
            .collect();
        for start in &doomed {
            files.open.remove(start);
            files.dirty.remove(start);
            let path = self.path_of(*start);
            self.storage.remove(&path).at(&path)?;
        }
        if !doomed.is_empty() {
            self.storage.sync_dir(&self.dir).at(&self.dir)?;
        }
        Ok(())
    }
}
