//! A bounded cache of open file handles for the many small files of the ConsumeQueue and the
//! IndexFile (an MQTT deployment has a topic per device: far more files than descriptors).
//! It also remembers which files were written since the last sync, holding their handles until
//! `sync_dirty` so eviction never loses a pending fdatasync.
//!
//! Files are named by a small key (`FileKey`); a path is built only when a file is opened.
//! It must never decide what a file contains; callers pass the size a new file is created with.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashMap;

use super::error::{IoContext, Result, StoreError};
use super::storage::{Storage, StorageFile};

/// Names a cached file cheaply: the hot path hashes the key, never a path.
pub trait FileKey: Clone + Eq + Hash + Debug + Send + Sync {
    /// The file's path.
    fn path(&self) -> PathBuf;
}

#[derive(Debug)]
struct Inner<K> {
    open: HashMap<K, (Arc<dyn StorageFile>, u64)>,
    lru: BTreeMap<u64, K>,
    tick: u64,
    dirty: HashMap<K, Arc<dyn StorageFile>>,
    new_names: BTreeSet<PathBuf>,
}

/// The cache. Thread-safe.
#[derive(Debug)]
pub struct FileCache<K: FileKey> {
    storage: Arc<dyn Storage>,
    capacity: usize,
    inner: Mutex<Inner<K>>,
}

impl<K: FileKey> FileCache<K> {
    /// A cache holding at most `capacity` open handles (plus dirty ones awaiting sync).
    pub fn new(storage: Arc<dyn Storage>, capacity: usize) -> Self {
        let inner = Inner {
            open: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            dirty: HashMap::new(),
            new_names: BTreeSet::new(),
        };
        FileCache {
            storage,
            capacity: capacity.max(1),
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle of `key`. When the file does not exist: `None` if `create_len` is `None`,
    /// otherwise the file (and its directory) is created with that length (sparse zeros).
    pub fn get(&self, key: &K, create_len: Option<u64>) -> Result<Option<Arc<dyn StorageFile>>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((handle, last)) = inner.open.get_mut(key) {
            let handle = handle.clone();
            let old = std::mem::replace(last, tick);
            inner.lru.remove(&old);
            inner.lru.insert(tick, key.clone());
            return Ok(Some(handle));
        }
        if let Some(handle) = inner.dirty.get(key).cloned() {
            self.insert(&mut inner, key, handle.clone(), tick);
            return Ok(Some(handle));
        }
        let path = key.path();
        let handle = if self.storage.exists(&path) {
            // A file found on disk may have been created by a process that crashed before
            // syncing its directory or its length: before writing to it, both are made whole
            // and synced again (reads need neither).
            let handle = self.storage.open(&path, false).at(&path)?;
            if let Some(len) = create_len {
                inner.new_names.insert(path.clone());
                if handle.size().is_ok_and(|s| s < len) {
                    handle.set_len(len).at(&path)?;
                    inner.dirty.insert(key.clone(), handle.clone());
                }
            }
            handle
        } else if let Some(len) = create_len {
            if let Some(dir) = path.parent() {
                self.storage.create_dir_all(dir).at(dir)?;
            }
            let handle = self.storage.open(&path, true).at(&path)?;
            handle.set_len(len).at(&path)?;
            inner.new_names.insert(path);
            inner.dirty.insert(key.clone(), handle.clone());
            handle
        } else {
            return Ok(None);
        };
        self.insert(&mut inner, key, handle.clone(), tick);
        Ok(Some(handle))
    }

    /// The handle of `key`, created with `len` if missing, marked written: the next
    /// `sync_dirty` syncs it.
    pub fn get_for_write(&self, key: &K, len: u64) -> Result<Arc<dyn StorageFile>> {
        let handle = self.get(key, Some(len))?.ok_or(StoreError::Closed)?;
        self.mark_dirty(key, &handle)?;
        Ok(handle)
    }

    fn insert(&self, inner: &mut Inner<K>, key: &K, handle: Arc<dyn StorageFile>, tick: u64) {
        inner.open.insert(key.clone(), (handle, tick));
        inner.lru.insert(tick, key.clone());
        while inner.open.len() > self.capacity {
            let Some((_, victim)) = inner.lru.pop_first() else {
                break;
            };
            inner.open.remove(&victim);
        }
    }

    /// Records that `key` is (being) written and must be synced by the next `sync_dirty`.
    pub fn mark_dirty(&self, key: &K, handle: &Arc<dyn StorageFile>) -> Result<()> {
        let mut inner = self.lock();
        if !inner.dirty.contains_key(key) {
            inner.dirty.insert(key.clone(), handle.clone());
        }
        Ok(())
    }

    /// Dirty handles stay open until synced: past four times the capacity they are synced
    /// now (syncing early is always safe), so open files stay bounded between checkpoints.
    /// Call after the writes, never between marking a file and writing it.
    pub fn sync_if_crowded(&self) -> Result<()> {
        let over = self.lock().dirty.len() > self.capacity * 4;
        if over {
            self.sync_dirty()?;
        }
        Ok(())
    }

    /// fdatasyncs the files written since the last `sync_dirty` **without** taking them off
    /// the dirty set: safe while writes go on (a file marked and not yet written stays marked,
    /// so the next `sync_dirty` still syncs it), and it leaves that call less to write.
    pub fn presync_dirty(&self) -> Result<usize> {
        let dirty: Vec<(K, Arc<dyn StorageFile>)> = self
            .lock()
            .dirty
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        for (key, handle) in &dirty {
            handle.sync_data().at_with(|| key.path())?;
        }
        Ok(dirty.len())
    }

    /// fdatasyncs every file written since the last call, then fsyncs the directories of
    /// files created or first opened for writing since. Returns the number of files synced.
    pub fn sync_dirty(&self) -> Result<usize> {
        self.take_dirty().sync(self.storage.as_ref())
    }

    /// Takes the files written since the last `sync_dirty`/`take_dirty` off the dirty set, to
    /// be synced later by [`Unsynced::sync`], possibly on another thread. Only correct when no
    /// write is between marking and writing a file (the caller holds what serialises writers):
    /// a file marked and not yet written would be synced too early and forgotten.
    pub fn take_dirty(&self) -> Unsynced<K> {
        let mut inner = self.lock();
        Unsynced {
            files: std::mem::take(&mut inner.dirty).into_iter().collect(),
            new_names: std::mem::take(&mut inner.new_names),
        }
    }

    /// Drops the handle of a file about to be removed.
    pub fn forget(&self, key: &K) {
        let mut inner = self.lock();
        if let Some((_, tick)) = inner.open.remove(key) {
            inner.lru.remove(&tick);
        }
        inner.dirty.remove(key);
    }

    /// Open handles held (bounded by the capacity) plus dirty ones awaiting sync.
    pub fn open_handles(&self) -> usize {
        let inner = self.lock();
        inner.open.len()
            + inner
                .dirty
                .keys()
                .filter(|k| !inner.open.contains_key(*k))
                .count()
    }
}

/// Files written and not yet synced, taken off a cache's dirty set (`FileCache::take_dirty`).
/// Holding the handles keeps evicted files syncable.
#[derive(Debug)]
pub struct Unsynced<K> {
    files: Vec<(K, Arc<dyn StorageFile>)>,
    new_names: BTreeSet<PathBuf>,
}

impl<K: FileKey> Unsynced<K> {
    /// fdatasyncs the files, then fsyncs the directories of the newly created ones. Returns
    /// the number of files synced.
    pub fn sync(&self, storage: &dyn Storage) -> Result<usize> {
        for (key, handle) in &self.files {
            handle.sync_data().at_with(|| key.path())?;
        }
        let dirs: BTreeSet<&Path> = self.new_names.iter().filter_map(|p| p.parent()).collect();
        for dir in dirs {
            storage.sync_dir(dir).at(dir)?;
        }
        Ok(self.files.len())
    }
}
