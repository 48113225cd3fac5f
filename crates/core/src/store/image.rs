//! Store images: everything another data directory needs to hold this store's log from its
//! first index and its derived state at the dispatch checkpoint — read from a live store for a
//! follower the retained log no longer reaches — and their installation in that directory:
//! staged under `install/`, declared whole by `install/manifest`, then moved into place by
//! [`apply_pending`] before the store opens.
//!
//! It owns the manifest (its bytes and the paths it may name), reading an image's files and
//! the staging and install steps. It must never ship a byte past the image's last log entry,
//! nor touch a directory's own files before a whole image is durable beside them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::entry::{LogIndex, Term};
use super::error::{IoContext, Result, StoreError};
use super::le;
use super::storage::{Storage, StorageFile, read_all, write_atomic};

/// Staging directory under the data directory.
pub const INSTALL_DIR: &str = "install";
/// Written last into the staging directory: the image there is whole.
const MANIFEST_FILE: &str = "manifest";
/// Written once the directory's own files are gone: the moves may begin.
const CLEARED_FILE: &str = "cleared";
const MAGIC: u32 = u32::from_le_bytes(*b"MFIM");
const VERSION: u32 = 1;
/// At most this many files in one image.
pub const MAX_FILES: usize = 1 << 20;
/// At most this many bytes in one file's path.
const MAX_PATH: usize = 255;
/// At most this many path components.
const MAX_DEPTH: usize = 3;
/// No file of a store comes near this.
const MAX_FILE_LEN: u64 = 1 << 40;

/// What a data directory holds of its store and engine, and so what an install replaces: the
/// top-level names an image may carry, plus those it never carries but must not survive it.
const CARRIED: &[&str] = &[
    "commitlog",
    "consumequeue",
    "index",
    "snapshots",
    "checkpoint",
    "dispatch",
    "members",
];
const CLEARED_TOO: &[&str] = &["raftindex", "dispatch.deletes"];

/// One file of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Path under the data directory, `/`-separated, one of [`CARRIED`] first.
    pub path: String,
    /// The file's length once installed.
    pub len: u64,
    /// Bytes shipped from its start; the rest of the file is zeros.
    pub data_len: u64,
}

/// What an image holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// First log index the image holds (its first segment begins with it).
    pub first_index: LogIndex,
    /// Term of `first_index`: a node whose log holds that entry with this term holds every
    /// entry before it as the image's source does, and needs no image.
    pub first_term: Term,
    /// Last log index it holds: a committed entry, at or past `dispatched`.
    pub last_index: LogIndex,
    /// Term of `last_index`.
    pub last_term: Term,
    /// The dispatch point its derived state and engine state are at.
    pub dispatched: LogIndex,
    /// Its files.
    pub files: Vec<ImageFile>,
}

impl Manifest {
    /// The wire and file form.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48 + self.files.len() * 40);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&VERSION.to_le_bytes());
        for v in [
            self.first_index,
            self.first_term,
            self.last_index,
            self.last_term,
            self.dispatched,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        for f in &self.files {
            b.extend_from_slice(&(f.path.len() as u16).to_le_bytes());
            b.extend_from_slice(f.path.as_bytes());
            b.extend_from_slice(&f.len.to_le_bytes());
            b.extend_from_slice(&f.data_len.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a manifest (from a peer or the staging directory): `None` unless
    /// every byte verifies and every path is one an image may carry.
    pub fn decode(b: &[u8]) -> Option<Manifest> {
        let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
        if body.len() < 52
            || crc32c::crc32c(body).to_le_bytes() != crc
            || le::u32_at(body, 0) != MAGIC
            || le::u32_at(body, 4) != VERSION
        {
            return None;
        }
        let mut m = Manifest {
            first_index: le::u64_at(body, 8),
            first_term: le::u64_at(body, 16),
            last_index: le::u64_at(body, 24),
            last_term: le::u64_at(body, 32),
            dispatched: le::u64_at(body, 40),
            files: Vec::new(),
        };
        let count = le::u32_at(body, 48) as usize;
        if count > MAX_FILES
            || m.first_index == 0
            || m.last_index < m.first_index
            || m.last_term < m.first_term
            || m.dispatched > m.last_index
        {
            return None;
        }
        let mut at = 52;
        for _ in 0..count {
            let len = u16::from_le_bytes(body.get(at..at + 2)?.try_into().ok()?) as usize;
            let path = std::str::from_utf8(body.get(at + 2..at + 2 + len)?).ok()?;
            let nums = body.get(at + 2 + len..at + 18 + len)?;
            let file = ImageFile {
                path: path.to_string(),
                len: le::u64_at(nums, 0),
                data_len: le::u64_at(nums, 8),
            };
            if !valid_path(&file.path) || file.data_len > file.len || file.len > MAX_FILE_LEN {
                return None;
            }
            m.files.push(file);
            at += 18 + len;
        }
        (at == body.len()).then_some(m)
    }

    /// Whether a node whose log is `log` and that applied through `applied` needs this image:
    /// its log cannot be caught up from the source's — it ends before the image's first entry,
    /// or holds another term there (entries before it that the source does not have) — and the
    /// image is not behind what it applied. A log that starts past the image's first entry
    /// holds only committed entries below its own start: the source's log catches it up.
    pub fn needed_by(&self, log: &super::CommitLog, applied: LogIndex) -> bool {
        let catches_up = self.first_index < log.first_index()
            || (self.first_index <= log.last_index()
                && log.term_at(self.first_index).ok() == Some(self.first_term));
        !catches_up && self.dispatched >= applied
    }

    /// Bytes the files carry (what a transfer moves, zero runs included).
    pub fn data_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.data_len).sum()
    }
}

/// Whether `path` may name a file of an image: relative, at most three plain components
/// (letters, digits, `.`, `_`, `-`; never `.` or `..`), the first one a name an image carries.
pub fn valid_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    path.len() <= MAX_PATH
        && parts.len() <= MAX_DEPTH
        && CARRIED.contains(&parts[0])
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        })
}

/// Where an image file's bytes come from.
#[derive(Debug)]
enum Source {
    /// A file of the live directory, opened when first read.
    Disk(PathBuf),
    /// Bytes made for the image (the checkpoint it opens with, the dispatch file as read).
    Bytes(Vec<u8>),
}

/// An image of a live directory, read file by file. Its files stay as they were only while the
/// one who made it keeps the directory's checkpoints and deletions paused.
#[derive(Debug)]
pub struct StoreImage {
    storage: Arc<dyn Storage>,
    manifest: Manifest,
    sources: Vec<Source>,
    /// The file read last, kept open for the next chunk.
    open: Mutex<Option<(usize, Arc<dyn StorageFile>)>>,
}

impl StoreImage {
    /// An image of nothing (a placeholder while one is made).
    pub(crate) fn empty(storage: Arc<dyn Storage>) -> Self {
        Self::new(storage, Manifest::default())
    }

    pub(crate) fn new(storage: Arc<dyn Storage>, manifest: Manifest) -> Self {
        StoreImage {
            storage,
            manifest,
            sources: Vec::new(),
            open: Mutex::new(None),
        }
    }

    /// What it holds.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Adds the first `data_len` bytes of the live file at `from`, installed at `path` with
    /// length `len`.
    pub fn push_file(&mut self, path: String, from: PathBuf, len: u64, data_len: u64) {
        self.manifest.files.push(ImageFile {
            path,
            len,
            data_len,
        });
        self.sources.push(Source::Disk(from));
    }

    /// Adds a file made of `bytes`.
    pub fn push_bytes(&mut self, path: String, bytes: Vec<u8>) {
        let len = bytes.len() as u64;
        self.manifest.files.push(ImageFile {
            path,
            len,
            data_len: len,
        });
        self.sources.push(Source::Bytes(bytes));
    }

    /// Reads file `file` from `offset` into `buf`: the bytes read, fewer only at its data end.
    pub fn read(&self, file: usize, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (Some(f), Some(source)) = (self.manifest.files.get(file), self.sources.get(file))
        else {
            return Err(StoreError::Config(format!("image has no file {file}")));
        };
        let n = f.data_len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        match source {
            Source::Bytes(bytes) => {
                let start = offset as usize;
                buf.copy_from_slice(&bytes[start..start + n]);
            }
            Source::Disk(path) => {
                let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
                let handle = match open.as_ref() {
                    Some((at, h)) if *at == file => h.clone(),
                    _ => {
                        let h = self.storage.open(path, false).at(path)?;
                        *open = Some((file, h.clone()));
                        h
                    }
                };
                handle.read_exact_at(offset, buf).at(path)?;
            }
        }
        Ok(n)
    }
}

/// An image being written into a directory's staging area, file by file, chunk by chunk (in
/// any order). Nothing of the directory's own changes until [`Installer::finish`] has made it
/// whole and durable and [`apply_pending`] runs.
#[derive(Debug)]
pub struct Installer {
    storage: Arc<dyn Storage>,
    staging: PathBuf,
    manifest: Manifest,
    files: Vec<Arc<dyn StorageFile>>,
}

impl Installer {
    /// Clears any earlier staging and creates every file of `manifest` at its length.
    pub fn begin(storage: Arc<dyn Storage>, root: &Path, manifest: Manifest) -> Result<Self> {
        let staging = root.join(INSTALL_DIR);
        remove_tree(storage.as_ref(), &staging)?;
        let mut files = Vec::with_capacity(manifest.files.len());
        for f in &manifest.files {
            if !valid_path(&f.path) {
                return Err(StoreError::Config(format!(
                    "an image may not hold {:?}",
                    f.path
                )));
            }
            let path = staging.join(&f.path);
            if let Some(dir) = path.parent() {
                storage.create_dir_all(dir).at(dir)?;
            }
            let file = storage.open(&path, true).at(&path)?;
            file.set_len(f.len).at(&path)?;
            files.push(file);
        }
        Ok(Installer {
            storage,
            staging,
            manifest,
            files,
        })
    }

    /// What is being installed.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Writes `bytes` of file `file` at `offset` (runs of zeros are left as holes).
    pub fn write(&mut self, file: usize, offset: u64, bytes: &[u8]) -> Result<()> {
        let (Some(f), Some(handle)) = (self.manifest.files.get(file), self.files.get(file)) else {
            return Err(StoreError::Config(format!("image has no file {file}")));
        };
        let end = offset.checked_add(bytes.len() as u64);
        if end.is_none_or(|end| end > f.data_len) {
            return Err(StoreError::Config(format!(
                "chunk at {offset} of {} runs past its {} bytes",
                f.path, f.data_len
            )));
        }
        if bytes.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let path = || self.staging.join(&f.path);
        handle.write_at(offset, bytes).at_with(path)
    }

    /// Makes every staged file and its name durable, then writes the manifest that declares
    /// the image whole.
    pub fn finish(self) -> Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for (f, handle) in self.manifest.files.iter().zip(&self.files) {
            let path = self.staging.join(&f.path);
            handle.sync_data().at(&path)?;
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| d.starts_with(&self.staging)) {
                dirs.insert(d.to_path_buf());
                dir = d.parent();
            }
        }
        for d in dirs.iter().rev() {
            self.storage.sync_dir(d).at(d)?;
        }
        let path = self.staging.join(MANIFEST_FILE);
        write_atomic(self.storage.as_ref(), &path, &self.manifest.encode()).at(path)
    }
}

/// Completes an install a previous run staged, before anything of the directory is opened:
/// the directory's own store and engine files go, then the staged ones move into place. Redone
/// from where it stopped after a crash; a staging area without its manifest (a transfer that
/// never finished) is removed. Returns the manifest installed, if any.
pub fn apply_pending(storage: &dyn Storage, root: &Path) -> Result<Option<Manifest>> {
    let staging = root.join(INSTALL_DIR);
    let manifest_path = staging.join(MANIFEST_FILE);
    if !storage.exists(&manifest_path) {
        remove_tree(storage, &staging)?;
        return Ok(None);
    }
    let bytes = read_all(storage, &manifest_path).at(&manifest_path)?;
    let manifest = Manifest::decode(&bytes).ok_or_else(|| StoreError::Corruption {
        file: manifest_path.clone(),
        offset: 0,
        reason: "install manifest does not verify".into(),
    })?;
    let cleared = staging.join(CLEARED_FILE);
    if !storage.exists(&cleared) {
        // The members file goes only when the image brings its own.
        let carried = manifest
            .files
            .iter()
            .filter_map(|f| f.path.split('/').next());
        let mut doomed: Vec<&str> = CARRIED
            .iter()
            .copied()
            .filter(|n| *n != "members")
            .chain(CLEARED_TOO.iter().copied())
            .chain(carried)
            .collect();
        doomed.sort_unstable();
        doomed.dedup();
        for name in doomed {
            let path = root.join(name);
            remove_tree(storage, &path)?;
            if storage.exists(&path) {
                storage.remove(&path).at(&path)?;
            }
        }
        storage.sync_dir(root).at(root)?;
        write_atomic(storage, &cleared, &[]).at(&cleared)?;
    }
    let mut touched = std::collections::BTreeSet::new();
    for f in &manifest.files {
        let from = staging.join(&f.path);
        let to = root.join(&f.path);
        if !storage.exists(&from) {
            continue; // moved before a crash
        }
        if let Some(dir) = to.parent() {
            storage.create_dir_all(dir).at(dir)?;
            touched.insert(dir.to_path_buf());
        }
        storage.rename(&from, &to).at(&from)?;
    }
    for d in &touched {
        storage.sync_dir(d).at(d)?;
    }
    storage.remove(&manifest_path).at(&manifest_path)?;
    storage.sync_dir(&staging).at(&staging)?;
    remove_tree(storage, &staging)?;
    storage.sync_dir(root).at(root)?;
    tracing::info!(
        first_index = manifest.first_index,
        last_index = manifest.last_index,
        dispatched = manifest.dispatched,
        files = manifest.files.len(),
        "installed a store image"
    );
    Ok(Some(manifest))
}

/// What a directory's staging area holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Staged {
    /// No staging area.
    #[default]
    Nothing,
    /// A transfer that never finished (no manifest): removed at the next open.
    Unfinished,
    /// A whole image, installed at the next open.
    Image(Manifest),
}

/// Reads what `install/` holds, without changing anything; `Corruption` for a manifest that
/// does not verify (the next open would refuse it too).
pub fn staged(storage: &dyn Storage, root: &Path) -> Result<Staged> {
    let staging = root.join(INSTALL_DIR);
    let path = staging.join(MANIFEST_FILE);
    if !storage.exists(&path) {
        let files = storage
            .list(&staging)
            .map(|f| !f.is_empty())
            .unwrap_or(false);
        let dirs = storage
            .list_dirs(&staging)
            .map(|d| !d.is_empty())
            .unwrap_or(false);
        return Ok(if files || dirs {
            Staged::Unfinished
        } else {
            Staged::Nothing
        });
    }
    let bytes = read_all(storage, &path).at(&path)?;
    Manifest::decode(&bytes)
        .map(Staged::Image)
        .ok_or_else(|| StoreError::Corruption {
            file: path,
            offset: 0,
            reason: "install manifest does not verify".into(),
        })
}

/// Removes `dir` and everything under it, each directory's removals made durable before the
/// directory goes (a power cut must not bring a file back into a directory that survives);
/// nothing if it does not exist.
pub(crate) fn remove_tree(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let Ok(files) = storage.list(dir) else {
        return Ok(());
    };
    let removed = !files.is_empty();
    for name in files {
        let path = dir.join(name);
        storage.remove(&path).at(&path)?;
    }
    if removed {
        storage.sync_dir(dir).at(dir)?;
    }
    for name in storage.list_dirs(dir).at(dir)? {
        remove_tree(storage, &dir.join(name))?;
    }
    storage.remove_dir(dir).at(dir)
}

/// A manifest for tests: a log segment shipped in part, a file shipping nothing, a whole one.
#[cfg(test)]
pub(crate) fn test_manifest() -> Manifest {
    Manifest {
        first_index: 5,
        first_term: 1,
        last_index: 9,
        last_term: 2,
        dispatched: 8,
        files: vec![
            ImageFile {
                path: "commitlog/00000000000000000000".into(),
                len: 4096,
                data_len: 300,
            },
            ImageFile {
                path: "index/00000000000000000001".into(),
                len: 100,
                data_len: 0,
            },
            ImageFile {
                path: "dispatch".into(),
                len: 4,
                data_len: 4,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        test_manifest()
    }

    #[test]
    fn a_manifest_round_trips_and_any_damage_is_refused() {
        let m = manifest();
        let b = m.encode();
        assert_eq!(Manifest::decode(&b), Some(m));
        for at in 0..b.len() {
            let mut bad = b.clone();
            bad[at] ^= 0x40;
            assert_eq!(Manifest::decode(&bad), None, "byte {at} flipped");
        }
        for cut in 0..b.len() {
            assert_eq!(Manifest::decode(&b[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn what_is_staged_is_read_without_changing_it() {
        let disk = crate::store::SimDisk::new();
        let storage: Arc<dyn Storage> = Arc::new(disk.clone());
        let root = PathBuf::from("/d");
        storage.create_dir_all(&root).expect("dir");
        assert_eq!(staged(&disk, &root).ok(), Some(Staged::Nothing));
        let mut installer = Installer::begin(storage.clone(), &root, manifest()).expect("begin");
        installer.write(0, 0, &[1; 100]).expect("write");
        assert_eq!(staged(&disk, &root).ok(), Some(Staged::Unfinished));
        installer.finish().expect("finish");
        assert_eq!(staged(&disk, &root).ok(), Some(Staged::Image(manifest())));
        let path = root.join("install/manifest");
        let file = disk.open(&path, false).expect("open");
        file.write_at(9, &[0xff]).expect("damage");
        assert!(staged(&disk, &root).is_err());
    }

    #[test]
    fn only_paths_an_image_carries_are_valid() {
        for ok in [
            "checkpoint",
            "commitlog/00000000000000000000",
            "consumequeue/arena/00000000000000000000",
            "consumequeue/topics-00000003",
            "snapshots/00000000000000000012.journal",
        ] {
            assert!(valid_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "identity",
            "hardstate",
            "install/manifest",
            "commitlog/../identity",
            "commitlog/./x",
            "commitlog//x",
            "consumequeue/a/b/c",
            "index/x y",
            "index/\u{e9}",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
        let mut m = manifest();
        m.files[0].path = "hardstate".into();
        assert_eq!(Manifest::decode(&m.encode()), None);
    }
}
