//! Drives checkpoints from the applier thread without making apply wait for the disk. Every
//! `dispatch_checkpoint_interval_ms` it moves through three stages:
//!
//! 1. **Snapshot**: the engine state is cloned (O(1): persistent maps) at the dispatch point
//!    `base` and written by another thread, which then presyncs the queue files written so
//!    far; meanwhile apply records what it applies in the journal.
//! 2. **Commit**: once the snapshot is durable, the applier captures the store's dispatch
//!    checkpoint at the dispatch point `upto` (under the dispatch lock: page-cache writes
//!    only) and hands it, with the journal `base..upto`, to another thread, which writes the
//!    journal, makes the store's checkpoint durable and prunes what it no longer needs.
//! 3. **Idle**, once that is done (log segments retention released are removed first).
//!
//! It owns that stage machine and the [`ExportGate`] that pauses it while an image of the
//! directory is read. It must never let the store's checkpoint name a dispatch point beyond
//! what the snapshot and journal on disk reach: the checkpoint is captured by the applier at
//! the point its journal stops, and its dispatch file is written only after the journal is
//! durable.

use std::sync::{Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::journal::JournalEntry;
use super::{Inner, Result, snapshot};
use crate::store::LogIndex;

/// Image exports against checkpoint cycles: an export waits for the cycle in flight to end,
/// and no cycle starts (so no checkpoint is written and no segment removed) while one is out.
#[derive(Debug, Default)]
pub(super) struct ExportGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Exports out.
    exports: usize,
    /// A checkpoint cycle is in flight.
    cycle: bool,
    /// The engine is closing: no export starts, those out stop at their next read.
    closing: bool,
}

impl ExportGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A cycle may start unless an export is out.
    fn begin_cycle(&self) -> bool {
        let mut g = self.lock();
        g.cycle = g.exports == 0;
        g.cycle
    }

    fn end_cycle(&self) {
        self.lock().cycle = false;
        self.changed.notify_all();
    }

    /// Takes an export out once no cycle is in flight; false if the engine is closing or a
    /// cycle did not end within `wait`.
    pub(super) fn begin_export(&self, wait: Duration) -> bool {
        let mut g = self.wait_until(wait, |g| !g.cycle || g.closing);
        if g.cycle || g.closing {
            return false;
        }
        g.exports += 1;
        true
    }

    /// The state once `done` holds, or once `wait` has passed.
    fn wait_until(
        &self,
        wait: Duration,
        done: impl Fn(&GateState) -> bool,
    ) -> std::sync::MutexGuard<'_, GateState> {
        let deadline = Instant::now() + wait;
        let mut g = self.lock();
        while !done(&g) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        g
    }

    pub(super) fn end_export(&self) {
        let mut g = self.lock();
        g.exports = g.exports.saturating_sub(1);
        drop(g);
        self.changed.notify_all();
    }

    pub(super) fn closing(&self) -> bool {
        self.lock().closing
    }

    /// At close: no export starts any more; waits up to `wait` for those out to stop.
    pub(super) fn close(&self, wait: Duration) {
        self.lock().closing = true;
        self.changed.notify_all();
        let g = self.wait_until(wait, |g| g.exports == 0);
        if g.exports > 0 {
            tracing::warn!(exports = g.exports, "closing with image exports still out");
        }
    }
}

/// Where the checkpoint cycle is.
pub(super) enum Checkpointing {
    /// Nothing in flight; the last cycle ended at `since`.
    Idle { since: Instant },
    /// The snapshot at `base` is being written; apply records the journal after it.
    Snapshot {
        base: LogIndex,
        journal: Vec<JournalEntry>,
        work: Work,
    },
    /// The journal `base..upto` and the store's checkpoint at `upto` are being made durable.
    Commit {
        base: LogIndex,
        upto: LogIndex,
        work: Work,
    },
}

/// A thread doing a stage's disk work, and its answer.
pub(super) struct Work {
    done: mpsc::Receiver<Result<()>>,
    thread: JoinHandle<()>,
}

impl Work {
    fn spawn(name: &str, job: impl FnOnce() -> Result<()> + Send + 'static) -> Option<Work> {
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = tx.send(job());
            });
        match thread {
            Ok(thread) => Some(Work { done, thread }),
            Err(e) => {
                tracing::error!(error = %e, thread = name, "cannot start a checkpoint thread");
                None
            }
        }
    }

    /// The stage's answer if it has finished (the thread joined), else `None`.
    fn finished(&self) -> Option<Result<()>> {
        match self.done.try_recv() {
            Err(mpsc::TryRecvError::Empty) => None,
            Ok(r) => Some(r),
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(super::EngineError::ShuttingDown)),
        }
    }

    fn join(self) {
        let _ = self.thread.join();
    }
}

impl Checkpointing {
    pub(super) fn new() -> Self {
        Checkpointing::Idle {
            since: Instant::now(),
        }
    }

    /// The journal apply must record into: only while a snapshot is being written.
    pub(super) fn journal(&mut self) -> Option<&mut Vec<JournalEntry>> {
        match self {
            Checkpointing::Snapshot { journal, .. } => Some(journal),
            _ => None,
        }
    }

    /// Whether a stage is in flight (the applier then wakes now and then to advance it).
    pub(super) fn busy(&self) -> bool {
        !matches!(self, Checkpointing::Idle { .. })
    }

    /// Waits for the thread in flight, if any (at shutdown; close writes its own checkpoint).
    pub(super) fn join(self) {
        match self {
            Checkpointing::Idle { .. } => {}
            Checkpointing::Snapshot { work, .. } | Checkpointing::Commit { work, .. } => {
                work.join()
            }
        }
    }
}

impl Inner {
    /// Moves the checkpoint cycle on as far as it can go now. Called by the applier between
    /// batches, so the dispatch point does not move while it runs.
    pub(super) fn advance_checkpoint(&self, cp: &mut Checkpointing) {
        let idle = || Checkpointing::Idle {
            since: Instant::now(),
        };
        let current = std::mem::replace(cp, idle());
        let was_busy = current.busy();
        *cp = match current {
            Checkpointing::Idle { since } => {
                let interval =
                    Duration::from_millis(self.config.store.dispatch_checkpoint_interval_ms);
                if since.elapsed() < interval || !self.exports.begin_cycle() {
                    Checkpointing::Idle { since }
                } else {
                    self.start_snapshot().unwrap_or_else(|| {
                        self.exports.end_cycle();
                        idle()
                    })
                }
            }
            Checkpointing::Snapshot {
                base,
                journal,
                work,
            } => match work.finished() {
                None => Checkpointing::Snapshot {
                    base,
                    journal,
                    work,
                },
                Some(written) => {
                    work.join();
                    match written {
                        Ok(()) => self.start_commit(base, journal).unwrap_or_else(idle),
                        Err(e) => {
                            tracing::error!(error = %e, "snapshot failed");
                            idle()
                        }
                    }
                }
            },
            Checkpointing::Commit { base, upto, work } => match work.finished() {
                None => Checkpointing::Commit { base, upto, work },
                Some(committed) => {
                    work.join();
                    match committed {
                        Ok(()) => self.delete_retained(if upto > base { base } else { upto }),
                        Err(e) => tracing::error!(error = %e, "checkpoint failed"),
                    }
                    idle()
                }
            },
        };
        if was_busy && !cp.busy() {
            self.exports.end_cycle();
        }
    }

    /// Stage 1: the state cloned at the dispatch point, written by another thread, which then
    /// syncs the queue files written so far so the store's checkpoint has less left to sync.
    fn start_snapshot(&self) -> Option<Checkpointing> {
        let base = self.store.dispatched_index();
        let state = self.lock_state().clone();
        let (storage, root, store) = (self.storage.clone(), self.root.clone(), self.store.clone());
        let work = Work::spawn("engine-snapshot", move || {
            let bytes = state.encode();
            snapshot::write(storage.as_ref(), &root, base, &bytes)?;
            store.presync()?;
            Ok(())
        })?;
        Some(Checkpointing::Snapshot {
            base,
            journal: Vec::new(),
            work,
        })
    }

    /// Stage 2: the store's checkpoint captured where the journal stops, then the journal,
    /// the checkpoint and the pruning done by another thread, in that order.
    fn start_commit(&self, base: LogIndex, journal: Vec<JournalEntry>) -> Option<Checkpointing> {
        let pending = match self.store.begin_checkpoint() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed");
                return None;
            }
        };
        let upto = pending.dispatched();
        let (storage, root, store) = (self.storage.clone(), self.root.clone(), self.store.clone());
        let work = Work::spawn("engine-checkpoint", move || {
            if upto > base {
                snapshot::write_journal(storage.as_ref(), &root, base, upto, &journal)?;
            }
            store.finish_checkpoint(pending)?;
            snapshot::prune(storage.as_ref(), &root, upto)?;
            Ok(())
        })?;
        Some(Checkpointing::Commit { base, upto, work })
    }
}
