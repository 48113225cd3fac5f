//! The Raft driver: one thread (`raft-driver`) that owns a node's core and carries its actions
//! out — the hard state to disk before anything after it, messages to the transport, appends
//! read from the store, a follower's entries into the store — and feeds it events: messages
//! from the transport, the leader's own appends, the log's acknowledged watermark (a watcher
//! thread, `raft-persisted`), ticks at the core's deadline. What the node above must do (append
//! the no-op under its proposal lock, apply what commits, hear role changes) goes through
//! `Hooks`. It never decides anything the core decides, and never applies an entry.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{LogIndex, MessageStore, Storage, StoreError, Term};

use super::members_file;
use super::membership::{ConfigAt, Membership};
use super::message::{Action, Event, NodeId, Role};
use super::node::Raft;
use super::replica_log;
use super::transport::Transport;

/// What the node above the driver does for it.
pub trait Hooks: Send + Sync + 'static {
    /// Appends a no-op of `term` as the next entry (under the node's proposal lock, so it is
    /// ordered with proposals); returns its index.
    fn append_noop(&self, term: Term) -> Result<LogIndex, StoreError>;
    /// Appends the Config entry of `members` in `term` as the next entry (under the proposal
    /// lock), calling `before` with its index first (the driver writes the `members` file
    /// there: it must be durable before the entry is); returns its index.
    fn append_config(
        &self,
        term: Term,
        members: &Membership,
        before: &mut dyn FnMut(LogIndex) -> Result<(), StoreError>,
    ) -> Result<LogIndex, StoreError>;
    /// Entries up to `index` are committed: apply them.
    fn committed(&self, index: LogIndex);
    /// The node's role, term or leader changed.
    fn role_changed(&self, status: &Status);
    /// A transfer starts: append no more proposals (none may be half-appended when this
    /// returns); returns the log's last index.
    fn pause_proposals(&self) -> LogIndex;
    /// The transfer was abandoned: take proposals again.
    fn resume_proposals(&self);
    /// Fetch an image of `leader` and install it, unless a fetch is under way: the leader
    /// offers one (this node is behind its retained log), or this node's committed entries
    /// are not the leader's (`diverged`: it must install one whatever it holds).
    fn fetch_image(&self, leader: NodeId, diverged: bool);
    /// `Some(first)`: this node leads, and the configuration in force has it as its only
    /// voter, from entry `first` (its leadership's first entry) on — each entry from there is
    /// committed the moment this node's log acknowledges it, which is all the core would
    /// count, so the node above may apply on the acknowledgement without waiting for
    /// `committed` (which still follows). `None`: no longer; called before a configuration
    /// with other voters is appended, and when the node stops leading.
    fn sole_voter(&self, first: Option<LogIndex>) {
        let _ = first;
    }
}

/// A node's Raft status as the driver last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit: LogIndex,
    pub last_index: LogIndex,
    /// Leader: each follower's match index.
    pub peers: Vec<(NodeId, LogIndex)>,
    /// Leader: how long each follower has not answered (ms; as of the last batch of events,
    /// heartbeats included).
    pub silent_ms: Vec<(NodeId, u64)>,
    /// Leader: a transfer under way to this voter.
    pub transferring: Option<NodeId>,
    /// Whether this node's disk is healthy (no failed or stalled fsync).
    pub healthy: bool,
    /// Leader: followers whose last heartbeat answer said their disk is not.
    pub unhealthy_peers: Vec<NodeId>,
    /// Leader: followers that need entries the log no longer holds (retention cut them);
    /// only a snapshot install (not built yet) can catch them up.
    pub behind_log: Vec<NodeId>,
    /// The configuration in force (voters and learners, their addresses and incarnations).
    pub members: Membership,
    /// The index of the Config entry that carries it (0: the bootstrap configuration).
    pub members_index: LogIndex,
    /// Whether this node's directory may hold a voter's place in it.
    pub voter: bool,
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Bytes of records per append message (default 1 MiB; an entry larger goes alone).
    pub append_bytes: u64,
    /// A disk that acknowledges nothing for this long while entries wait for it is stalled
    /// (default 3,000 ms): the node steps down if it leads and neither campaigns nor votes
    /// until the disk catches up again.
    pub stall_ms: u64,
    /// This node's own view of its peers' Raft addresses (`--peers`): used for those nodes
    /// instead of the addresses the configuration carries (a proxy, a NAT, another network
    /// between these two nodes). Members not listed are reached at the configuration's.
    pub addresses: Vec<(NodeId, std::net::SocketAddr)>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            append_bytes: 1 << 20,
            stall_ms: 3000,
            addresses: Vec::new(),
        }
    }
}

/// The channel a driver takes its events from, with the transport's `Deliver` feeding the
/// messages it receives into it: create both, start the transport with the `Deliver`, then
/// the driver with the channel.
#[allow(clippy::type_complexity)]
pub fn event_channel() -> (
    (Sender<Option<Event>>, mpsc::Receiver<Option<Event>>),
    super::transport::Deliver,
) {
    let (tx, rx) = mpsc::channel();
    let feed = tx.clone();
    let deliver: super::transport::Deliver = Arc::new(move |from, incarnation, msg| {
        let _ = feed.send(Some(Event::Message {
            from,
            incarnation,
            msg,
        }));
    });
    ((tx, rx), deliver)
}

/// A running driver.
pub struct Driver {
    tx: Sender<Option<Event>>,
    status: Arc<Mutex<Status>>,
    appended: Arc<Mutex<Option<(LogIndex, Term)>>>,
    alone: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Sends events to a running driver (the transport's deliveries, the leader's appends).
#[derive(Clone)]
pub struct DriverHandle {
    tx: Sender<Option<Event>>,
    status: Arc<Mutex<Status>>,
    appended: Arc<Mutex<Option<(LogIndex, Term)>>>,
    alone: Arc<AtomicBool>,
}

impl DriverHandle {
    pub fn event(&self, event: Event) {
        let _ = self.tx.send(Some(event));
    }

    /// The leader appended through `last_index` in `term` (called in log order). Coalesced:
    /// the driver takes the latest at its next turn, and one `Appended` wakes it unless one
    /// is already on its way — or the node leads alone (`Hooks::sole_voter`), where nobody
    /// waits for it: the next acknowledgement the watcher reports brings it along.
    pub fn appended(&self, last_index: LogIndex, term: Term) {
        let mut slot = self.appended.lock().unwrap_or_else(|p| p.into_inner());
        let first = slot.replace((last_index, term)).is_none();
        drop(slot);
        if first && !self.alone.load(Ordering::Acquire) {
            let _ = self.tx.send(Some(Event::Appended { last_index, term }));
        }
    }
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What the driver thread holds.
struct Runner {
    core: Raft,
    store: Arc<MessageStore>,
    storage: Arc<dyn Storage>,
    root: PathBuf,
    /// None: a group of one without a Raft listener (a single node), which sends nothing.
    transport: Option<Arc<Transport>>,
    hooks: Arc<dyn Hooks>,
    status: Arc<Mutex<Status>>,
    config: DriverConfig,
    epoch: Instant,
    tx: Sender<Option<Event>>,
    /// The latest of the leader's coalesced appends (`DriverHandle::appended`).
    appended: Arc<Mutex<Option<(LogIndex, Term)>>>,
    /// Leading alone (what `Hooks::sole_voter` was last told): nobody waits for the core's
    /// commit, so appends and acknowledgements reach it in coalesced turns.
    alone: Arc<AtomicBool>,
}

impl Driver {
    /// Starts the driver thread and the persisted-watermark watcher, reading events from
    /// `channel` — made with `event_channel()`, whose `Deliver` the transport was started with.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        core: Raft,
        store: Arc<MessageStore>,
        storage: Arc<dyn Storage>,
        root: PathBuf,
        transport: Option<Arc<Transport>>,
        hooks: Arc<dyn Hooks>,
        config: DriverConfig,
        channel: (Sender<Option<Event>>, mpsc::Receiver<Option<Event>>),
    ) -> std::io::Result<Driver> {
        let (tx, rx) = channel;
        let status = Arc::new(Mutex::new(status_of(&core)));
        let appended = Arc::new(Mutex::new(None));
        let alone = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (store, tx, stop, alone) = (store.clone(), tx.clone(), stop.clone(), alone.clone());
            let from = core.persisted_index();
            let stall = Duration::from_millis(config.stall_ms.max(1));
            threads.push(
                std::thread::Builder::new()
                    .name("raft-persisted".into())
                    .spawn(move || watch_persisted(&store, from, stall, &tx, &stop, &alone))?,
            );
        }
        let runner = Runner {
            core,
            store,
            storage,
            root,
            transport,
            hooks,
            status: status.clone(),
            config,
            epoch: Instant::now(),
            tx: tx.clone(),
            appended: appended.clone(),
            alone: alone.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("raft-driver".into())
                .spawn(move || runner.run(rx))?,
        );
        Ok(Driver {
            tx,
            status,
            appended,
            alone,
            stop,
            threads,
        })
    }

    pub fn handle(&self) -> DriverHandle {
        DriverHandle {
            tx: self.tx.clone(),
            status: self.status.clone(),
            appended: self.appended.clone(),
            alone: self.alone.clone(),
        }
    }

    /// Stops both threads.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.tx.send(None);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn status_of(core: &Raft) -> Status {
    let peers = core
        .peer_ids()
        .into_iter()
        .filter_map(|p| core.match_index(p).map(|m| (p, m)))
        .collect();
    let silent_ms = core
        .peer_ids()
        .into_iter()
        .filter_map(|p| core.peer_silent_ms(p).map(|s| (p, s)))
        .collect();
    Status {
        id: core.id(),
        role: core.role(),
        term: core.term(),
        leader: core.leader(),
        commit: core.commit_index(),
        last_index: core.last_index(),
        peers,
        silent_ms,
        transferring: core.transferring_to(),
        healthy: core.healthy(),
        unhealthy_peers: core
            .peer_ids()
            .into_iter()
            .filter(|p| core.peer_healthy(*p) == Some(false))
            .collect(),
        behind_log: core
            .peer_ids()
            .into_iter()
            .filter(|p| core.peer_needs_snapshot(*p) == Some(true))
            .collect(),
        members: core.membership().clone(),
        members_index: core.configs().last().map_or(0, |c| c.index),
        voter: core.is_voter(),
    }
}

/// The Raft addresses of `members` other than `me`: this node's own view (`local`) where it
/// has one, else the configuration's, where it parses or resolves.
pub fn peer_addrs(
    members: &Membership,
    me: NodeId,
    local: &[(NodeId, std::net::SocketAddr)],
) -> Vec<(NodeId, std::net::SocketAddr)> {
    use std::net::ToSocketAddrs;
    members
        .members()
        .iter()
        .filter(|m| m.id != me)
        .filter_map(|m| {
            let mine = local.iter().find(|(id, _)| *id == m.id).map(|(_, a)| *a);
            let addr = mine.or_else(|| {
                m.addr
                    .parse()
                    .ok()
                    .or_else(|| m.addr.to_socket_addrs().ok().and_then(|mut a| a.next()))
            });
            if addr.is_none() {
                tracing::warn!(node = m.id, addr = %m.addr, "a member's address does not resolve");
            }
            addr.map(|a| (m.id, a))
        })
        .collect()
}

/// Reports the log's acknowledged watermark to the driver whenever it moves or a truncation
/// happened (the entries below it may then be new ones: reported again with their term); and
/// a stalled disk — entries waiting while nothing was acknowledged for `stall` — as
/// `StorageFailed`, then `StorageRecovered` once it acknowledges again.
fn watch_persisted(
    store: &MessageStore,
    from: LogIndex,
    stall: Duration,
    tx: &Sender<Option<Event>>,
    stop: &AtomicBool,
    alone: &AtomicBool,
) {
    let mut seen = (from, 0);
    let mut first = true;
    // Since when entries have waited with no acknowledgement; whether reported stalled.
    let mut waiting_since: Option<Instant> = None;
    let mut stalled = false;
    while !stop.load(Ordering::SeqCst) {
        let log = store.log();
        let now = log.wait_acknowledged(seen, Duration::from_millis(50));
        let behind = log.last_index() > now.0;
        if now != seen || !behind {
            waiting_since = behind.then(Instant::now);
            if stalled {
                stalled = false;
                tracing::info!("the disk acknowledges again");
                if tx.send(Some(Event::StorageRecovered)).is_err() {
                    return;
                }
            }
        } else if waiting_since.get_or_insert_with(Instant::now).elapsed() >= stall && !stalled {
            stalled = true;
            tracing::error!(
                waited_ms = stall.as_millis() as u64,
                "the disk acknowledged nothing while entries waited: stepping down"
            );
            if tx.send(Some(Event::StorageFailed)).is_err() {
                return;
            }
        }
        if now == seen && !first {
            continue;
        }
        first = false;
        seen = now;
        let Ok(term) = log.term_at(now.0) else {
            continue;
        };
        if tx
            .send(Some(Event::Persisted { index: now.0, term }))
            .is_err()
        {
            return;
        }
        // Leading alone, the engine applies on the log's acknowledgement itself: the core
        // hears of it in turns of at most one per `ALONE_REPORT_EVERY`, not one per write.
        if alone.load(Ordering::Acquire) {
            std::thread::sleep(ALONE_REPORT_EVERY);
        }
    }
}

/// How often the watcher reports the acknowledged watermark at most while the node leads
/// alone: the core's commit index (status, a learner being caught up) lags by at most this
/// much; the engine never waits for it.
const ALONE_REPORT_EVERY: Duration = Duration::from_millis(5);

impl Runner {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn run(mut self, rx: mpsc::Receiver<Option<Event>>) {
        loop {
            let now = self.now();
            let wait = self.core.next_deadline().saturating_sub(now);
            let event = match rx.recv_timeout(Duration::from_millis(wait.max(1))) {
                Ok(Some(e)) => e,
                Ok(None) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => Event::Tick,
            };
            self.step(event);
            // Whatever else is waiting goes in before the actions are carried out, so
            // replies and appends batch; then timers due by now.
            let mut more = 0;
            while more < 256 {
                match rx.try_recv() {
                    Ok(Some(e)) => self.step(e),
                    Ok(None) => return,
                    Err(_) => break,
                }
                more += 1;
            }
            if self.now() >= self.core.next_deadline() {
                self.step(Event::Tick);
            }
            self.publish_status();
        }
    }

    fn step(&mut self, event: Event) {
        let now = self.now();
        // The leader's appends coalesced since the last turn (`DriverHandle::appended`) go in
        // first: an acknowledgement reported now may cover them.
        let latest = self
            .appended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((last_index, term)) = latest {
            self.core.step(now, Event::Appended { last_index, term });
        }
        self.core.step(now, event);
        let actions = self.core.take_actions();
        for a in actions {
            if let Err(e) = self.carry_out(a) {
                tracing::error!(error = %e, "raft action failed; the node stops taking part");
                self.core.step(now, Event::StorageFailed);
                for a in self.core.take_actions() {
                    if let Action::RoleChanged { role, term, leader } = a {
                        let _ = self.announce(role, term, leader);
                    }
                }
                break;
            }
        }
    }

    /// What the node above reads of the core (`DriverHandle::status`): once per batch of
    /// events, not per event (it clones the membership).
    fn publish_status(&self) {
        let status = status_of(&self.core);
        let mut slot = self.status.lock().unwrap_or_else(|p| p.into_inner());
        for p in status
            .behind_log
            .iter()
            .filter(|p| !slot.behind_log.contains(p))
        {
            tracing::warn!(
                peer = p,
                first_index = self.core.log_terms().base_index() + 1,
                "a follower needs entries retention removed: it is offered an image of this node"
            );
        }
        *slot = status;
    }

    /// Tells the node above of a role change at once: before any later action (a follower's
    /// `Persist` must not meet a proposal still being appended).
    fn announce(&self, role: Role, term: Term, leader: Option<NodeId>) -> Result<(), StoreError> {
        tracing::info!(?role, term, ?leader, "raft role");
        // A new leader's log is what its core knows: entries appended in an earlier
        // leadership whose `Appended` never counted (never sent, never committed) go before
        // the no-op follows.
        if role == Role::Leader && self.store.log().last_index() > self.core.last_index() {
            self.store.truncate_after(self.core.last_index())?;
        }
        if role != Role::Leader {
            self.sole_voter(None);
        }
        let status = Status {
            role,
            term,
            leader,
            ..status_of(&self.core)
        };
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status.clone();
        self.hooks.role_changed(&status);
        Ok(())
    }

    /// Tells the node above whether it leads alone (`Hooks::sole_voter`), and the watcher and
    /// the handle whether to coalesce.
    fn sole_voter(&self, first: Option<LogIndex>) {
        self.alone.store(first.is_some(), Ordering::Release);
        self.hooks.sole_voter(first);
    }

    /// The configuration in force changed: the transport sends to its members.
    fn members_changed(&self, configs: &[ConfigAt]) {
        let Some(last) = configs.last() else { return };
        tracing::info!(members = %last.members, index = last.index, "raft membership");
        let peers = peer_addrs(&last.members, self.core.id(), &self.config.addresses);
        if let Some(t) = &self.transport
            && let Err(e) = t.set_peers(&peers)
        {
            tracing::error!(error = %e, "could not start lanes to new members");
        }
    }

    fn carry_out(&mut self, action: Action) -> Result<(), StoreError> {
        match action {
            Action::SaveHardState(h) => h.store(self.storage.as_ref(), &self.root)?,
            Action::Send { to, msg } => {
                if let Some(t) = &self.transport {
                    t.send(to, msg);
                }
            }
            Action::SendEntries { to, header, last } => {
                match replica_log::appends(&self.store, header, last, self.config.append_bytes) {
                    Ok(messages) => {
                        if let Some(t) = &self.transport {
                            for m in messages {
                                t.send(to, m);
                            }
                        }
                    }
                    // Retention removed them since the core decided (it hears of it with
                    // `LogCompacted`): nothing to send, and no reason to stop taking part.
                    Err(StoreError::IndexOutOfRange { .. }) => {
                        tracing::debug!(
                            peer = to,
                            from = header.prev_index + 1,
                            "entries gone to retention"
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            Action::Persist {
                truncate_after,
                first_index,
                entries,
            } => {
                replica_log::persist(&self.store, truncate_after, first_index, &entries)?;
            }
            Action::AppendNoop { term } => {
                let index = self.hooks.append_noop(term)?;
                if self.core.leads_alone() {
                    self.sole_voter(Some(index));
                }
                // Handled on the next turn, after this batch of actions.
                let _ = self.tx.send(Some(Event::Appended {
                    last_index: index,
                    term,
                }));
            }
            Action::Commit(index) => self.hooks.committed(index),
            Action::PauseProposals => {
                let last_index = self.hooks.pause_proposals();
                let term = self.core.term();
                // Handled on the next turn, like `Appended`.
                let _ = self
                    .tx
                    .send(Some(Event::ProposalsPaused { last_index, term }));
            }
            Action::ResumeProposals => self.hooks.resume_proposals(),
            Action::FetchImage { leader, diverged } => self.hooks.fetch_image(leader, diverged),
            Action::SaveMembers(configs) => {
                members_file::save(self.storage.as_ref(), &self.root, &configs)?;
                self.members_changed(&configs);
            }
            Action::AppendConfig {
                term,
                mut configs,
                members,
            } => {
                let (storage, root) = (self.storage.clone(), self.root.clone());
                let mut before = |index: LogIndex| {
                    configs.push(ConfigAt {
                        index,
                        term,
                        members: members.clone(),
                    });
                    members_file::save(storage.as_ref(), &root, &configs)
                };
                // Entries after a configuration with other voters need their votes: the
                // node above stops taking acknowledged entries as committed before it exists.
                let alone = self.core.alone_in(&members);
                if !alone {
                    self.sole_voter(None);
                }
                let index = self.hooks.append_config(term, &members, &mut before)?;
                if alone && self.core.role() == Role::Leader {
                    self.sole_voter(Some(index));
                }
                self.members_changed(&configs);
                // Handled on the next turn, like `Appended`.
                let _ = self.tx.send(Some(Event::ConfigAppended {
                    index,
                    term,
                    members,
                }));
            }
            Action::RoleChanged { role, term, leader } => self.announce(role, term, leader)?,
        }
        Ok(())
    }
}
