//! The engine's replicated state machine without its threads: a store and the engine state,
//! recovered from a data directory the way `Engine::open` recovers one (the snapshot, or the
//! journal carrying one forward, at the store's dispatch point), applying committed entries
//! in log order with the applier's own function (`apply_entries`), checkpointed the way the
//! engine checkpoints (the state's snapshot first, then the store's dispatch checkpoint).
//! [`Replica`] is for the deterministic simulation and for tools that step the state machine
//! entry by entry; `Engine::open` shares its recovery and checkpoint steps.
//!
//! Never here: proposing, deciding what commits, a clock, or threads of its own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::state::{EngineState, Limits};
use super::{
    APPLY_BATCH, EngineConfig, Result, apply_entries, batch, entry_command, journal, snapshot,
};
use crate::engine::snapshot::SNAPSHOT_DIR;
use crate::store::image::StoreImage;
use crate::store::{LogIndex, MessageStore, Outcome, Storage, StoreError};

/// The engine state at the store's dispatch point, from the snapshot there or the journal
/// that carries an older snapshot to it (empty when there is neither: nothing was
/// dispatched); also how many journal entries were replayed.
pub(super) fn recover_state(
    storage: &dyn Storage,
    root: &Path,
    store: &MessageStore,
    limits: Limits,
) -> Result<(EngineState, usize)> {
    let checkpointed = store.dispatched_index();
    let mut journaled = 0;
    let state = match snapshot::load(storage, root, checkpointed)? {
        None => EngineState::default(),
        Some(loaded) => {
            // A snapshot carried forward by its journal: the log entries after it, applied
            // with what they read from the store back then.
            let mut state = loaded.state;
            journaled = loaded.journal.len();
            // The journal covers base+1 ..= the dispatch point, entry by entry; the log
            // entries are read in runs alongside it.
            let mut entries = Vec::new().into_iter();
            let mut next = loaded.base + 1;
            for je in loaded.journal {
                let entry = match entries.next() {
                    Some(e) => e,
                    None => {
                        let upto = checkpointed.min(next + APPLY_BATCH as u64 - 1);
                        entries = store.log().entries(next, upto)?.into_iter();
                        next = upto + 1;
                        entries.next().ok_or_else(|| StoreError::Corruption {
                            file: root.join(SNAPSHOT_DIR),
                            offset: je.index,
                            reason: "the journal runs past the dispatch point".into(),
                        })?
                    }
                };
                if entry.index != je.index {
                    return Err(StoreError::Corruption {
                        file: root.join(SNAPSHOT_DIR),
                        offset: je.index,
                        reason: format!(
                            "journal entry {} read as log entry {}",
                            je.index, entry.index
                        ),
                    }
                    .into());
                }
                let replay = journal::Replayer::new(je.index, je.reads);
                match batch::parts(&entry) {
                    None => {
                        state.apply(
                            &entry,
                            &entry_command(&entry),
                            &je.outcomes,
                            &replay,
                            limits,
                        )?;
                    }
                    Some(parts) => {
                        let outcomes = &je.outcomes;
                        batch::apply(
                            &entry,
                            &parts,
                            &[],
                            &mut |range, _| {
                                outcomes.get(range).map(<[Outcome]>::to_vec).ok_or_else(|| {
                                    StoreError::Corruption {
                                        file: root.join(SNAPSHOT_DIR),
                                        offset: je.index,
                                        reason: "journal outcomes do not cover the entry".into(),
                                    }
                                })
                            },
                            &mut |sub, command, outcomes| {
                                state.apply(sub, command, outcomes, &replay, limits)
                            },
                            &mut |_| {},
                        )?;
                    }
                }
                if !replay.finished() {
                    return Err(StoreError::Corruption {
                        file: root.join(SNAPSHOT_DIR),
                        offset: je.index,
                        reason: format!(
                            "the apply journal has answers entry {} did not ask for",
                            je.index
                        ),
                    }
                    .into());
                }
            }
            state
        }
    };
    Ok((state, journaled))
}

/// The state's snapshot at the store's dispatch point, then the store's dispatch checkpoint
/// at the same index, then the snapshots and journals it no longer needs removed; returns the
/// index. The dispatch point must not move meanwhile (the applier calls it, or nothing
/// applies).
pub(super) fn checkpoint_state(
    storage: &dyn Storage,
    root: &Path,
    store: &MessageStore,
    state: &Mutex<EngineState>,
) -> Result<LogIndex> {
    let index = store.dispatched_index();
    let bytes = state.lock().unwrap_or_else(|p| p.into_inner()).encode();
    snapshot::write(storage, root, index, &bytes)?;
    store.checkpoint()?;
    snapshot::prune(storage, root, index)?;
    Ok(index)
}

/// Adds the snapshot and journal files of `root` to `image` (what the store's dispatch
/// checkpoint in it needs; no directory: no snapshot yet, the state at that point is empty).
pub(super) fn push_snapshot_files(
    storage: &dyn Storage,
    root: &Path,
    image: &mut StoreImage,
) -> Result<()> {
    use crate::store::error::IoContext;
    let dir = root.join(SNAPSHOT_DIR);
    for name in storage.list(&dir).unwrap_or_default() {
        if name.ends_with(".tmp") {
            continue;
        }
        let path = dir.join(&name);
        let len = storage.open(&path, false).at(&path)?.size().at(&path)?;
        image.push_file(format!("{SNAPSHOT_DIR}/{name}"), path, len, len);
    }
    Ok(())
}

/// One node's state machine, stepped by its caller: open, apply what commits, checkpoint,
/// close or drop (a crash).
pub struct Replica {
    storage: Arc<dyn Storage>,
    root: PathBuf,
    store: MessageStore,
    state: Mutex<EngineState>,
    limits: Limits,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("root", &self.root)
            .field("applied", &self.applied())
            .finish()
    }
}

impl Replica {
    /// Opens the data directory `root` as `Engine::open` does up to its state: an image staged
    /// there is installed, the store recovered, the engine state loaded at the store's
    /// dispatch point. Nothing after it is applied: what commits is the caller's to say.
    pub fn open(storage: Arc<dyn Storage>, root: &Path, config: &EngineConfig) -> Result<Replica> {
        let mut store_config = config.store.clone();
        // The state's snapshot goes with every dispatch checkpoint: only `checkpoint` writes one.
        store_config.dispatch_checkpoint_interval_ms = u64::MAX;
        crate::store::image::apply_pending(storage.as_ref(), root)?;
        let store = MessageStore::open(storage.clone(), root, store_config)?;
        let limits = config.limits();
        let (state, _) = recover_state(storage.as_ref(), root, &store, limits)?;
        snapshot::prune(storage.as_ref(), root, store.dispatched_index())?;
        Ok(Replica {
            storage,
            root: root.to_path_buf(),
            store,
            state: Mutex::new(state),
            limits,
        })
    }

    /// The store underneath.
    pub fn store(&self) -> &MessageStore {
        &self.store
    }

    /// The last entry applied (the store's dispatch point).
    pub fn applied(&self) -> LogIndex {
        self.store.dispatched_index()
    }

    /// Applies the entries after `applied()` up to `commit`; for each, its index and what
    /// applying it answered (the store's outcomes and what the state made of them, rendered:
    /// every node must render the same for the same index).
    pub fn apply_to(&self, commit: LogIndex) -> Result<Vec<(LogIndex, String)>> {
        let mut out = Vec::new();
        let mut next = self.applied() + 1;
        while next <= commit {
            let upto = commit.min(next + APPLY_BATCH as u64 - 1);
            let entries = self.store.log().entries(next, upto)?;
            let applied =
                apply_entries(&self.store, &self.state, &entries, self.limits, None, &[])?;
            for (e, a) in entries.iter().zip(applied) {
                out.push((e.index, format!("{a:?}")));
            }
            next = upto + 1;
        }
        Ok(out)
    }

    /// Reads the engine state as applied so far.
    pub fn with_state<R>(&self, read: impl FnOnce(&EngineState) -> R) -> R {
        read(&self.lock())
    }

    /// A digest of everything applied: the store's derived state and the engine state's
    /// encoding (byte-identical on two nodes that applied the same log).
    pub fn digest(&self) -> Result<u64> {
        let store = self.store.state_digest()?;
        let state = crc32c::crc32c(&self.lock().encode());
        Ok((u64::from(store) << 32) | u64::from(state))
    }

    /// Makes everything applied durable: the state's snapshot, then the store's checkpoint.
    pub fn checkpoint(&self) -> Result<LogIndex> {
        checkpoint_state(self.storage.as_ref(), &self.root, &self.store, &self.state)
    }

    /// An image of what is applied, as `Engine::export_image` makes one (without the group's
    /// configurations: the caller adds them).
    pub fn image(&self) -> Result<StoreImage> {
        let mut image = self.store.image(self.applied())?;
        push_snapshot_files(self.storage.as_ref(), &self.root, &mut image)?;
        Ok(image)
    }

    /// A clean close: checkpointed, the store closed.
    pub fn close(self) -> Result<()> {
        self.checkpoint()?;
        Ok(self.store.close()?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Log commands as the proposer writes them, for clients of a [`Replica`] that make their own
/// entries (the simulation): each an entry's command bytes and sub-records.
pub mod command {
    use bytes::Bytes;

    use super::super::{
        COMMAND_VERSION, CommandTag, Trim, command_with_producer, filter_groups, group_command,
        session_command,
    };
    use crate::engine::filter_groups::FilterGroupCommand;
    use crate::engine::group_command::GroupCommand;
    use crate::engine::session_command::SessionCommand;
    use crate::store::{LogIndex, RecordOp, StreamId, SubRecord};

    /// An append's (XADD's) command, with its producer sequence if any; its sub-record is the
    /// message.
    pub fn append(producer: Option<&(Bytes, u64)>) -> Bytes {
        command_with_producer(CommandTag::Append, producer)
    }

    /// XDEL of `ids` from stream `key`.
    pub fn delete(db: u8, key: &Bytes, ids: &[StreamId]) -> (Bytes, Vec<SubRecord>) {
        let records = ids
            .iter()
            .map(|id| SubRecord {
                op: RecordOp::Delete,
                db,
                topic: key.clone(),
                id: *id,
                ..SubRecord::default()
            })
            .collect();
        let command = Bytes::from_static(&[COMMAND_VERSION, CommandTag::Delete as u8]);
        (command, records)
    }

    /// XTRIM of stream `key`.
    pub fn trim(db: u8, key: &Bytes, trim: Trim) -> (Bytes, Vec<SubRecord>) {
        let command = Bytes::from_static(&[COMMAND_VERSION, CommandTag::Trim as u8]);
        (command, vec![trim.record(db, key)])
    }

    /// Retention (the leader's timer): every topic's entries of log entries below `index` go,
    /// and with them pending entries whose message is gone; the log below it may then be
    /// removed.
    pub fn retain_from(index: LogIndex) -> (Bytes, Vec<SubRecord>) {
        super::super::timer_entry(&super::super::TimerCommand::RetainFrom { index })
    }

    /// The session-expiry timer: sessions whose expiry passed by `now_ms` end.
    pub fn expire_sessions(now_ms: u64) -> Bytes {
        super::super::timer_entry(&super::super::TimerCommand::ExpireSessions { now_ms }).0
    }

    /// An MQTT session command.
    pub fn session(c: &SessionCommand) -> Bytes {
        let mut bytes = vec![COMMAND_VERSION, CommandTag::Session as u8];
        session_command::encode(c, &mut bytes);
        Bytes::from(bytes)
    }

    /// An append whose message becomes its topic's retained message (an MQTT retained
    /// PUBLISH).
    pub fn append_retained(producer: Option<&(Bytes, u64)>) -> Bytes {
        command_with_producer(CommandTag::AppendRetain, producer)
    }

    /// A filter-group command (MQTT shared subscriptions on a filter).
    pub fn filter_group(c: &FilterGroupCommand) -> Bytes {
        let mut bytes = vec![COMMAND_VERSION, CommandTag::FilterGroup as u8];
        filter_groups::encode_command(c, &mut bytes);
        Bytes::from(bytes)
    }

    /// Consumer-group commands (no sub-records: a group on a stream that does not exist fails).
    pub fn group(commands: &[GroupCommand]) -> Bytes {
        let mut bytes = vec![COMMAND_VERSION, CommandTag::Group as u8];
        group_command::encode(commands, &mut bytes);
        Bytes::from(bytes)
    }
}
