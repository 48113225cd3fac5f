//! The store: RocketMQ-style CommitLog (which is also the Raft log) with its log-index map,
//! checkpoint and crash recovery, all file IO behind the [`Storage`] trait.
//!
//! Layout of a data directory (every byte: `docs/storage-format.md`):
//! `commitlog/<20-digit offset>` segments, `raftindex/<20-digit offset>` log-index map files,
//! `checkpoint`, and `abort` while the store is open.

pub mod checkpoint;
pub mod commitlog;
pub mod consume_queue;
pub mod entry;
pub mod error;
pub mod file_cache;
pub mod image;
pub mod index_file;
pub mod inspect;
pub mod latency;
mod le;
pub mod log_index;
pub mod message_store;
mod node_walk;
pub mod recent;
pub mod recovery;
pub mod segment;
pub mod simdisk;
pub mod storage;
pub mod stream_node;
pub mod topics;

pub use commitlog::{AppendTicket, CommitLog, FlushMode, LogConfig};
pub use consume_queue::{CqConfig, CqEntry};
pub use entry::{EntryKind, LogEntry, LogIndex, NewEntry, RecordOp, StreamId, SubRecord, Term};
pub use error::{Result, StoreError};
pub use index_file::{IndexConfig, IndexHit};
pub use inspect::{InspectOptions, InspectReport, inspect};
pub use message_store::{
    MessageStore, Outcome, PendingCheckpoint, SETID_ADDED_PROPERTY, SETID_MAXDEL_PROPERTY,
    SetIdRefused, StoreConfig, StoredMessage, TRIM_LIMIT_PROPERTY, TRIM_NODE_PROPERTY,
};
pub use recovery::RecoveryReport;
pub use simdisk::{CrashMode, SimDisk};
pub use storage::{RealFs, Storage, StorageFile};
pub use stream_node::{NodeLimits, TailNode};
pub use topics::{Topic, TopicId};
