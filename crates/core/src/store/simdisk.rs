//! A simulated disk for crash tests: it keeps synced and unsynced bytes apart and, on a
//! simulated power cut, keeps only what a real disk is allowed to keep.
//!
//! Model (stricter than ext4 in its default mode, never looser):
//! - File data written with `write_at`/`set_len` is volatile until `sync_data` of that file.
//! - A file's *name* (creation, rename, removal) is volatile until `sync_dir` of its directory.
//!   Directories themselves are durable once created.
//! - At a crash each file keeps its synced contents plus a random *prefix* of its unsynced
//!   operations, and the first operation not kept may be torn: a prefix of its 512-byte sectors
//!   reaches the disk, the rest does not.
//! - After [`SimDisk::crash`] every handle of the old generation (the disk handle and its open
//!   files) fails with an error, so a "dead" process cannot touch the recovered disk.
//!
//! Faults: failing `sync_data` calls (EIO) and a capacity limit (ENOSPC). This module never
//! touches the real filesystem.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::storage::{Storage, StorageFile};

/// Sector size used to tear writes.
pub const SECTOR: u64 = 512;

/// What a simulated power cut keeps of unsynced data.
#[derive(Debug, Clone, Copy)]
pub enum CrashMode {
    /// Every unsynced byte and name change is lost.
    DropUnsynced,
    /// A process crash, not a power cut: the OS keeps every write and name change.
    KeepUnsynced,
    /// A seeded random prefix of each file's unsynced writes survives, the next one torn at
    /// sector granularity; each unsynced name change survives with probability 1/2.
    Random(u64),
}

type FileId = u64;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct SimFileData {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<Op>,
}

fn apply(buf: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[start..end].copy_from_slice(data);
        }
        Op::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

#[derive(Debug, Default)]
struct SimState {
    generation: u64,
    names: BTreeMap<PathBuf, FileId>,
    durable_names: BTreeMap<PathBuf, FileId>,
    dirs: std::collections::BTreeSet<PathBuf>,
    files: HashMap<FileId, SimFileData>,
    next_id: FileId,
    failing_syncs: u32,
    /// Syncs to let through before `failing_syncs` start failing.
    syncs_before_failing: u32,
    /// `sync_dir` calls to let through before one fails (`None`: none fails).
    dir_syncs_before_failing: Option<u32>,
    /// Renames since the last crash `(from, to, file)`: a random crash keeps each one whole
    /// or not at all, as a journaling filesystem does.
    renames: Vec<(PathBuf, PathBuf, FileId)>,
    capacity: Option<u64>,
    sync_latency: std::time::Duration,
}

/// Handle on the simulated disk. Clones share the disk; a crash retires every old handle.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
    generation: u64,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk")
            .field("generation", &self.generation)
            .finish()
    }
}

struct SimFile {
    disk: SimDisk,
    id: FileId,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimFile({})", self.id)
    }
}

/// A tiny deterministic generator (splitmix64); tests need reproducible crashes, not quality.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

fn stale() -> io::Error {
    io::Error::other("simulated disk: handle from before a simulated crash")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl Default for SimDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        SimDisk {
            state: Arc::new(Mutex::new(SimState::default())),
            generation: 0,
        }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let guard = self
            .state
            .lock()
            .map_err(|_| io::Error::other("simulated disk poisoned"))?;
        if guard.generation != self.generation {
            return Err(stale());
        }
        Ok(guard)
    }

    /// The next `n` calls to `sync_data` fail with EIO and make nothing durable.
    pub fn fail_next_syncs(&self, n: u32) {
        if let Ok(mut s) = self.lock() {
            s.failing_syncs = n;
        }
    }

    /// Makes every `sync_data` take this long before its data becomes durable, like a slow
    /// disk: a crash during the wait loses the data, which catches acknowledgements sent early.
    pub fn set_sync_latency(&self, latency: std::time::Duration) {
        if let Ok(mut s) = self.lock() {
            s.sync_latency = latency;
        }
    }

    /// Lets `skip` more `sync_data` calls succeed, then fails the next one (EIO): a crash in
    /// the middle of a multi-file protocol.
    pub fn fail_sync_after(&self, skip: u32) {
        if let Ok(mut s) = self.lock() {
            s.syncs_before_failing = skip;
            s.failing_syncs = 1;
        }
    }

    /// Lets `skip` more `sync_dir` calls succeed, then fails the next one (EIO, nothing made
    /// durable): a crash between the renames of a multi-file protocol.
    pub fn fail_dir_sync_after(&self, skip: u32) {
        if let Ok(mut s) = self.lock() {
            s.dir_syncs_before_failing = Some(skip);
        }
    }

    /// Limits the total size of all files; growing past it fails with ENOSPC.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        if let Ok(mut s) = self.lock() {
            s.capacity = bytes;
        }
    }

    /// Bytes held by the files that currently have a name.
    pub fn used_bytes(&self) -> u64 {
        self.lock().map(|s| used(&s)).unwrap_or(0)
    }

    /// Simulates a power cut and returns the handle of the disk as it comes back up.
    /// Every handle of the old generation fails from now on.
    pub fn crash(&self, mode: CrashMode) -> SimDisk {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let s = &mut *guard;
        let mut rng = SplitMix(match mode {
            CrashMode::DropUnsynced | CrashMode::KeepUnsynced => 0,
            CrashMode::Random(seed) => seed,
        });
        let keep_all = matches!(mode, CrashMode::KeepUnsynced);
        let random = matches!(mode, CrashMode::Random(_));
        // Names: each unsynced change independently survives or not.
        let mut names = if keep_all {
            s.names.clone()
        } else {
            s.durable_names.clone()
        };
        if random {
            // A rename whose source name is durable and whose new name is not lands whole or
            // not at all: never both names lost.
            let mut decided = std::collections::BTreeSet::new();
            for (from, to, id) in &s.renames {
                let whole = s.names.get(to) == Some(id)
                    && !s.names.contains_key(from)
                    && s.durable_names.get(from) == Some(id)
                    && s.durable_names.get(to) != Some(id);
                if !whole || decided.contains(from) || decided.contains(to) {
                    continue;
                }
                if rng.below(2) == 0 {
                    names.insert(to.clone(), *id);
                    names.remove(from);
                } else {
                    names.insert(from.clone(), *id);
                    match s.durable_names.get(to) {
                        Some(old) => names.insert(to.clone(), *old),
                        None => names.remove(to),
                    };
                }
                decided.insert(from.clone());
                decided.insert(to.clone());
            }
            let all: Vec<PathBuf> = s
                .names
                .keys()
                .chain(s.durable_names.keys())
                .filter(|p| !decided.contains(*p))
                .cloned()
                .collect();
            for path in all {
                let now = s.names.get(&path).copied();
                let then = s.durable_names.get(&path).copied();
                if now != then && rng.below(2) == 0 {
                    match now {
                        Some(id) => names.insert(path, id),
                        None => names.remove(&path),
                    };
                }
            }
        }
        // Contents: synced bytes plus a prefix of the unsynced operations, the next one torn.
        let mut files = HashMap::new();
        let reachable: Vec<FileId> = if keep_all {
            s.names
                .values()
                .chain(s.durable_names.values())
                .copied()
                .collect()
        } else {
            names.values().copied().collect()
        };
        for id in &reachable {
            if files.contains_key(id) {
                continue;
            }
            let Some(f) = s.files.get(id) else { continue };
            if keep_all {
                // A process crash: written bytes stay in the page cache, still not durable.
                let kept = SimFileData {
                    durable: f.durable.clone(),
                    current: f.current.clone(),
                    unsynced: f.unsynced.clone(),
                };
                files.insert(*id, kept);
                continue;
            }
            let mut data = f.durable.clone();
            if random && !f.unsynced.is_empty() {
                let keep = rng.below(f.unsynced.len() as u64 + 1) as usize;
                for op in &f.unsynced[..keep] {
                    apply(&mut data, op);
                }
                if let Some(Op::Write {
                    offset,
                    data: bytes,
                }) = f.unsynced.get(keep)
                {
                    // Tear at sector boundaries: the first k sectors touched by the write land.
                    let end = offset + bytes.len() as u64;
                    let mut cut = *offset;
                    let sectors = (end.div_ceil(SECTOR)).saturating_sub(offset / SECTOR);
                    let k = rng.below(sectors + 1);
                    if k > 0 {
                        cut = ((offset / SECTOR + k) * SECTOR).min(end);
                    }
                    if cut > *offset {
                        let torn = Op::Write {
                            offset: *offset,
                            data: bytes[..(cut - offset) as usize].to_vec(),
                        };
                        apply(&mut data, &torn);
                    }
                }
            }
            files.insert(
                *id,
                SimFileData {
                    durable: data.clone(),
                    current: data,
                    unsynced: Vec::new(),
                },
            );
        }
        s.generation += 1;
        if !keep_all {
            // (After a process crash, name changes stay as they were, durable or not.)
            s.names = names.clone();
            s.durable_names = names;
        }
        s.files = files;
        s.failing_syncs = 0;
        s.syncs_before_failing = 0;
        s.dir_syncs_before_failing = None;
        s.renames.clear();
        s.sync_latency = std::time::Duration::ZERO;
        SimDisk {
            state: self.state.clone(),
            generation: s.generation,
        }
    }

    /// Synced contents of a file, for tests that corrupt or inspect bytes directly.
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock().ok()?;
        let id = s.names.get(path)?;
        s.files.get(id).map(|f| f.durable.clone())
    }

    fn with_file<R>(
        &self,
        id: FileId,
        f: impl FnOnce(&mut SimState, FileId) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut s = self.lock()?;
        if !s.files.contains_key(&id) {
            return Err(io::Error::other("simulated file vanished"));
        }
        f(&mut s, id)
    }
}

/// Space in use: the files reachable by a name (a removed or replaced file frees its space).
fn used(s: &SimState) -> u64 {
    let ids: std::collections::BTreeSet<FileId> = s.names.values().copied().collect();
    ids.iter()
        .filter_map(|id| s.files.get(id))
        .map(|f| f.current.len() as u64)
        .sum()
}

fn grow_check(s: &mut SimState, id: FileId, new_len: u64) -> io::Result<()> {
    let cur = s.files.get(&id).map_or(0, |f| f.current.len() as u64);
    match s.capacity {
        Some(cap) if new_len > cur && used(s) + (new_len - cur) > cap => {
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        }
        _ => Ok(()),
    }
}

impl StorageFile for SimFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.disk.with_file(self.id, |s, id| {
            let cur = s.files.get(&id).map_or(0, |f| f.current.len() as u64);
            grow_check(s, id, cur.max(offset + buf.len() as u64))?;
            let f = s.files.get_mut(&id).ok_or_else(stale)?;
            let op = Op::Write {
                offset,
                data: buf.to_vec(),
            };
            apply(&mut f.current, &op);
            f.unsynced.push(op);
            Ok(())
        })
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.disk.with_file(self.id, |s, id| {
            let f = s.files.get(&id).ok_or_else(stale)?;
            let len = f.current.len() as u64;
            if offset >= len {
                return Ok(0);
            }
            let n = buf.len().min((len - offset) as usize);
            buf[..n].copy_from_slice(&f.current[offset as usize..offset as usize + n]);
            Ok(n)
        })
    }
    fn sync_data(&self) -> io::Result<()> {
        let latency = self.disk.lock()?.sync_latency;
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        self.disk.with_file(self.id, |s, id| {
            if s.failing_syncs > 0 && s.syncs_before_failing > 0 {
                s.syncs_before_failing -= 1;
            } else if s.failing_syncs > 0 {
                s.failing_syncs -= 1;
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
            let f = s.files.get_mut(&id).ok_or_else(stale)?;
            f.durable = f.current.clone();
            f.unsynced.clear();
            Ok(())
        })
    }
    fn size(&self) -> io::Result<u64> {
        self.disk.with_file(self.id, |s, id| {
            Ok(s.files.get(&id).map_or(0, |f| f.current.len() as u64))
        })
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.disk.with_file(self.id, |s, id| {
            grow_check(s, id, len)?;
            let f = s.files.get_mut(&id).ok_or_else(stale)?;
            let op = Op::SetLen(len);
            apply(&mut f.current, &op);
            f.unsynced.push(op);
            Ok(())
        })
    }
}

impl Storage for SimDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.lock()?;
        let id = match s.names.get(path) {
            Some(id) => *id,
            None if create => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !parent.as_os_str().is_empty() && !s.dirs.contains(parent) {
                    return Err(not_found(parent));
                }
                let id = s.next_id;
                s.next_id += 1;
                s.files.insert(id, SimFileData::default());
                s.names.insert(path.to_path_buf(), id);
                id
            }
            None => return Err(not_found(path)),
        };
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            id,
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock()?;
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        s.renames.push((from.to_path_buf(), to.to_path_buf(), id));
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock()?;
        s.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock()?;
        let mut cur = Some(dir);
        while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
            s.dirs.insert(d.to_path_buf());
            cur = d.parent();
        }
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock()?;
        let s = &mut *s;
        match s.dir_syncs_before_failing {
            Some(0) => {
                s.dir_syncs_before_failing = None;
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
            Some(n) => s.dir_syncs_before_failing = Some(n - 1),
            None => {}
        }
        s.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, id) in &s.names {
            if p.parent() == Some(dir) {
                s.durable_names.insert(p.clone(), *id);
            }
        }
        // A rename durable under its new name and no longer under its old one is settled.
        let durable = &s.durable_names;
        s.renames
            .retain(|(from, to, id)| durable.get(to) != Some(id) || durable.get(from) == Some(id));
        Ok(())
    }
    fn exists(&self, path: &Path) -> bool {
        self.lock()
            .map(|s| s.names.contains_key(path))
            .unwrap_or(false)
    }
    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.dirs
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let occupied = s.names.keys().any(|p| p.starts_with(dir))
            || s.dirs.iter().any(|p| p != dir && p.starts_with(dir));
        if occupied {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                format!("{} is not empty", dir.display()),
            ));
        }
        s.dirs.remove(dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn unsynced_bytes_and_names_are_dropped() -> io::Result<()> {
        let disk = SimDisk::new();
        disk.create_dir_all(&p("/d"))?;
        let f = disk.open(&p("/d/a"), true)?;
        f.write_at(0, b"hello")?;
        f.sync_data()?;
        // Data synced, but the name is not: the file vanishes.
        let after = disk.crash(CrashMode::DropUnsynced);
        assert!(!after.exists(&p("/d/a")));
        let f = after.open(&p("/d/a"), true)?;
        f.write_at(0, b"hello")?;
        f.sync_data()?;
        after.sync_dir(&p("/d"))?;
        f.write_at(5, b" world")?;
        let again = after.crash(CrashMode::DropUnsynced);
        assert_eq!(
            again.durable_contents(&p("/d/a")).as_deref(),
            Some(&b"hello"[..])
        );
        // Old handles are dead.
        assert!(f.write_at(0, b"x").is_err());
        assert!(after.open(&p("/d/a"), false).is_err());
        Ok(())
    }

    #[test]
    fn random_crash_keeps_a_sector_prefix_of_the_torn_write() -> io::Result<()> {
        for seed in 0..200 {
            let disk = SimDisk::new();
            disk.create_dir_all(&p("/d"))?;
            let f = disk.open(&p("/d/a"), true)?;
            f.sync_data()?;
            disk.sync_dir(&p("/d"))?;
            f.write_at(0, &[1u8; 2000])?;
            let after = disk.crash(CrashMode::Random(seed));
            let data = after.durable_contents(&p("/d/a")).unwrap_or_default();
            assert!(data.iter().all(|b| *b == 1), "only written bytes appear");
            assert!(
                data.is_empty() || data.len() == 2000 || data.len().is_multiple_of(512),
                "torn at sector granularity, got {}",
                data.len()
            );
        }
        Ok(())
    }

    #[test]
    fn failed_sync_makes_nothing_durable_and_capacity_gives_enospc() -> io::Result<()> {
        let disk = SimDisk::new();
        disk.create_dir_all(&p("/d"))?;
        let f = disk.open(&p("/d/a"), true)?;
        disk.sync_dir(&p("/d"))?;
        f.write_at(0, b"abc")?;
        disk.fail_next_syncs(1);
        assert!(f.sync_data().is_err());
        disk.set_capacity(Some(10));
        let err = f.write_at(0, &[0; 11]).err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::StorageFull));
        let after = disk.crash(CrashMode::DropUnsynced);
        assert_eq!(
            after.durable_contents(&p("/d/a")).as_deref(),
            Some(&b""[..])
        );
        Ok(())
    }
}
