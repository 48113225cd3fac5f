//! The store's typed errors. Each says what the caller should do: `Corruption` and `Failed`
//! need an operator or a reopen through recovery; `NoSpace` clears when space is freed;
//! `IndexOutOfRange` is a caller bug or a race with truncation.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::entry::LogIndex;

/// Errors returned by the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An IO call failed.
    #[error("io error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Bytes before the flushed point do not verify. Never repaired silently.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption {
        /// File holding the bad bytes.
        file: PathBuf,
        /// Byte offset in that file.
        offset: u64,
        /// What failed to verify.
        reason: String,
    },
    /// Allocating the next segment or log-index file ran out of disk space. Appends fail
    /// until space is freed (allocation is retried); reads keep working.
    #[error("no space left allocating {path}: appends fail until space is freed; reads work")]
    NoSpace {
        /// The file being allocated.
        path: PathBuf,
    },
    /// An entry holds more sub-records than queue entries can number.
    #[error("entry has {count} sub-records; at most {limit}")]
    TooManySubRecords {
        /// Sub-records offered.
        count: usize,
        /// Limit.
        limit: usize,
    },
    /// An entry's term is below the last entry's: Raft terms never go backwards in a log.
    #[error("entry term {term} is below the log's last term {last_term}")]
    TermRegression {
        /// Term offered.
        term: super::entry::Term,
        /// Term of the last entry.
        last_term: super::entry::Term,
    },
    /// An fsync or write failed: the log refuses appends until reopened through recovery.
    #[error("log failed, reopen to recover: {0}")]
    Failed(Arc<str>),
    /// The entry does not fit the configured limits.
    #[error("entry of {size} bytes exceeds the limit of {limit} bytes")]
    EntryTooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The index is not in the log.
    #[error("log index {index} not in the log (first {first}, last {last})")]
    IndexOutOfRange {
        /// Requested.
        index: LogIndex,
        /// First index held.
        first: LogIndex,
        /// Last index held.
        last: LogIndex,
    },
    /// The entry was removed by `truncate_after` before its ticket was awaited.
    #[error("entry {index} was truncated away")]
    Truncated {
        /// Its index.
        index: LogIndex,
    },
    /// A replicated record offered to `append_raw` is not the valid record of the next index.
    #[error("replicated record refused: {0}")]
    BadRecord(String),
    /// The configuration is unusable.
    #[error("invalid store config: {0}")]
    Config(String),
    /// The log was closed.
    #[error("log closed")]
    Closed,
}

impl StoreError {
    /// Wraps an IO error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Adds a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
    /// As [`IoContext::at`], with the path made only on error (for paths that are built).
    fn at_with<P: Into<PathBuf>>(self, path: impl FnOnce() -> P) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| StoreError::io(path, e))
    }
    fn at_with<P: Into<PathBuf>>(self, path: impl FnOnce() -> P) -> Result<T> {
        self.map_err(|e| StoreError::io(path(), e))
    }
}
