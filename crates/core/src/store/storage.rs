//! The one door to the disk: every byte the store reads or writes goes through [`Storage`]
//! and [`StorageFile`], so a test can swap the real filesystem for the simulated disk
//! (`simdisk.rs`) and say exactly which bytes a power cut keeps.
//!
//! This module must stay small and policy-free: no buffering, no retries, no caching.
//! A failed `sync_data` is reported, never retried here (the caller decides it is fatal).

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file opened through [`Storage`]. Offsets are absolute; there is no cursor.
pub trait StorageFile: Send + Sync + Debug {
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// `fdatasync`: the file's data (and the size, if it changed) is durable when this returns.
    fn sync_data(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(offset, buf)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
            }
            offset += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

/// Directory-level operations. Names returned by [`Storage::list`] are plain file names.
pub trait Storage: Send + Sync + Debug {
    /// Opens a file for reading and writing; creates it when `create` is true.
    /// A created file's name is durable only after [`Storage::sync_dir`] of its directory.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Renames atomically; durable after `sync_dir` of the directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file; durable after `sync_dir` of the directory.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Names of the files (not directories) in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `dir` and its missing parents, making the new entries durable.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// `fsync` of a directory: creations, renames and removals in it become durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> bool;
    /// Names of the directories in `dir`, sorted.
    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Removes an empty directory; durable after `sync_dir` of its parent.
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Writes a small metadata file atomically: temp file, `fdatasync`, rename, `fsync` of the
/// directory. After a crash the file holds either the old or the new contents, never a mix.
pub fn write_atomic(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = storage.open(&tmp, true)?;
    file.set_len(0)?;
    file.write_at(0, bytes)?;
    file.sync_data()?;
    drop(file);
    storage.rename(&tmp, path)?;
    storage.sync_dir(dir)
}

/// Reads a whole (small) file.
pub fn read_all(storage: &dyn Storage, path: &Path) -> io::Result<Vec<u8>> {
    let file = storage.open(path, false)?;
    let len = usize::try_from(file.size()?).map_err(io::Error::other)?;
    let mut buf = vec![0; len];
    file.read_exact_at(0, &mut buf)?;
    Ok(buf)
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

impl StorageFile for RealFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

/// The names in `dir` of the entries whose type `keep` accepts, sorted.
fn names_in(dir: &Path, keep: impl Fn(&std::fs::FileType) -> bool) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if keep(&entry.file_type()?) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

impl Storage for RealFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(path)?;
        Ok(Arc::new(RealFile(file)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        names_in(dir, |t| t.is_file())
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Create top-down, fsyncing each parent whose entry we added.
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur {
            if d.as_os_str().is_empty() || d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            cur = d.parent();
        }
        for d in missing.iter().rev() {
            match std::fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.sync_dir(parent)?;
            }
        }
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        names_in(dir, |t| t.is_dir())
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir(dir)
    }
}
