//! The engine as a member of a Raft group — every engine is one: a single node is a group of
//! one without a Raft listener. What `Engine::open` starts (the driver, and a transport when
//! there is a `ClusterConfig`), and the applier that follows the commit index. The Raft
//! driver tells the engine (`Hooks`): append the no-op of a new term (under the proposer lock,
//! so it is ordered with proposals), the commit index moved (the applier applies the committed
//! entries, answering the proposals that are this node's), the role changed (the proposer
//! opens once the new leader's no-op is applied, and closes at once on stepping down, dropping
//! its view of entries that may be truncated), and whether it leads alone (then the applier
//! takes the log's acknowledgement as the commit, which is all the core would count).
//!
//! Never here: deciding what commits (the Raft core), applying anything not committed.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use crate::raft::driver::{Driver, DriverConfig, DriverHandle, Hooks, Status};
use crate::raft::transport::{Transport, TransportConfig};
use crate::raft::{self, Event, HardState, NodeId, Raft, RaftConfig, Role};
use crate::store::{LogEntry, LogIndex, NewEntry, StoreError, Term};

use super::checkpointer::Checkpointing;
use super::{APPLY_BATCH, ApplyInput, EngineError, Inner, Proposal, ReplyTo, Result};

/// This node's place in a Raft group.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Every voter and its Raft address, this node (`EngineConfig::node_id`) included.
    pub voters: Vec<(NodeId, SocketAddr)>,
    /// Where this node's Raft listener binds (default: its own entry in `voters`).
    pub listen: Option<SocketAddr>,
    /// Leader heartbeat interval (default 50 ms).
    pub heartbeat_ms: u64,
    /// Election timeout range (default 300..600 ms).
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// A voter that should lead whenever it is up and caught up (default none).
    pub preferred_leader: Option<NodeId>,
    /// How long a write waits for a leader (an election, a transfer) before `NotLeader`
    /// (default 3,000 ms).
    pub leader_wait_ms: u64,
    /// How long a follower waits to apply a write the leader ran for it before answering
    /// anyway (default 1,000 ms).
    pub forward_apply_wait_ms: u64,
    /// The cluster's shared secret, proven in every node-to-node handshake (default empty:
    /// none). Every member must be given the same.
    pub secret: Vec<u8>,
    /// A disk that acknowledges nothing for this long while entries wait is stalled: a leader
    /// steps down (default 3,000 ms).
    pub stall_ms: u64,
    /// Joining a running group (`--join`): this node starts as a learner that never
    /// campaigns, and waits for the group's leader to send it the log (after `manifold
    /// cluster add`); `voters` then only says where the others are.
    pub join: bool,
}

impl ClusterConfig {
    pub fn new(voters: Vec<(NodeId, SocketAddr)>) -> ClusterConfig {
        ClusterConfig {
            voters,
            listen: None,
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            preferred_leader: None,
            leader_wait_ms: 3000,
            forward_apply_wait_ms: 1000,
            secret: Vec::new(),
            stall_ms: 3000,
            join: false,
        }
    }
}

/// The proposer's side of leadership (cluster mode only).
#[derive(Debug, Clone, Default)]
pub(super) struct LeaderGate {
    /// Proposals are taken (this node leads, its no-op is applied).
    pub writable: bool,
    /// Leading, the no-op of the term is at this index and not applied yet.
    pub noop_at: Option<LogIndex>,
    /// The leader, as far as this node knows.
    pub leader: Option<NodeId>,
    /// Leading, with a leadership transfer under way: no proposals.
    pub paused: bool,
}

/// What the engine holds of its Raft membership.
pub(super) struct ClusterLink {
    pub handle: DriverHandle,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink").finish_non_exhaustive()
    }
}

/// The running Raft parts, stopped by `Engine::close`.
pub(super) struct ClusterParts {
    pub driver: Driver,
    /// None: a single node (no `ClusterConfig`), a group of one without a Raft listener.
    pub transport: Option<Arc<Transport>>,
}

impl std::fmt::Debug for ClusterParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterParts").finish_non_exhaustive()
    }
}

impl ClusterParts {
    pub fn stop(self) {
        self.driver.stop();
        if let Some(Ok(t)) = self.transport.map(Arc::try_unwrap) {
            t.shutdown();
        }
    }
}

/// The engine's side of the driver.
struct EngineHooks(Arc<Inner>);

impl Hooks for EngineHooks {
    fn append_noop(&self, term: Term) -> std::result::Result<LogIndex, StoreError> {
        let mut p = self.0.lock_proposer();
        let entry = NewEntry::noop(term, p.last_ts);
        let index = self.0.store.log().append(&entry)?.index;
        self.0.handed.store(index, Ordering::Release);
        if let Some(g) = p.cluster.as_mut() {
            g.noop_at = Some(index);
        }
        Ok(index)
    }

    fn append_config(
        &self,
        term: Term,
        members: &raft::Membership,
        before: &mut dyn FnMut(LogIndex) -> std::result::Result<(), StoreError>,
    ) -> std::result::Result<LogIndex, StoreError> {
        let mut p = self.0.lock_proposer();
        let entry = raft::membership::config_entry(term, p.last_ts, members);
        let log = self.0.store.log();
        before(log.last_index() + 1)?;
        let index = log.append(&entry)?.index;
        self.0.handed.store(index, Ordering::Release);
        // The founding configuration is a new leader's first entry, in place of the no-op:
        // proposals open once it is applied.
        if let Some(g) = p.cluster.as_mut()
            && !g.writable
            && g.noop_at.is_none()
        {
            g.noop_at = Some(index);
        }
        Ok(index)
    }

    fn committed(&self, index: LogIndex) {
        self.0.commit.fetch_max(index, Ordering::AcqRel);
        // Applied already (a group of one's applier takes entries on the log's
        // acknowledgement): nothing to wake it for.
        if self.0.applied.load(Ordering::Acquire) >= index {
            return;
        }
        let tx = self.0.apply_tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(ApplyInput::Commit);
        }
    }

    fn pause_proposals(&self) -> LogIndex {
        let mut p = self.0.lock_proposer();
        if let Some(g) = p.cluster.as_mut() {
            g.paused = true;
        }
        // Appends happen under the proposer lock: none is half done now.
        self.0.store.log().last_index()
    }

    fn fetch_image(&self, leader: NodeId, diverged: bool) {
        self.0.start_fetch(leader, diverged);
    }

    fn sole_voter(&self, first: Option<LogIndex>) {
        if first.is_some() {
            let term = self.0.lock_proposer().term;
            self.0.sole_term.store(term, Ordering::Release);
        }
        self.0
            .sole_from
            .store(first.unwrap_or(0), Ordering::Release);
    }

    fn resume_proposals(&self) {
        if let Some(g) = self.0.lock_proposer().cluster.as_mut() {
            g.paused = false;
        }
    }

    fn role_changed(&self, status: &Status) {
        let mut p = self.0.lock_proposer();
        p.term = status.term;
        let leading = status.role == Role::Leader;
        if !leading {
            // What the view noted may be truncated: the next leadership starts from applied
            // state.
            p.view.clear();
            p.order.clear();
            p.producers_in_flight.clear();
        }
        if let Some(g) = p.cluster.as_mut() {
            g.writable = false;
            g.paused = false;
            g.leader = status.leader;
            if !leading {
                g.noop_at = None;
            }
        }
    }
}

/// Binds the Raft address, starts the transport and the driver. `applied`: what the engine
/// applied at open (all committed). Without a `cluster`, a single node: a group of one with
/// no Raft listener and no transport (its founding configuration names it with no address).
pub(super) fn start(
    inner: &Arc<Inner>,
    id: NodeId,
    incarnation: u64,
    cluster: Option<&ClusterConfig>,
    applied: LogIndex,
) -> Result<ClusterParts> {
    let storage = inner.storage.clone();
    let root = inner.root.clone();
    let single = ClusterConfig::new(Vec::new());
    let (listener, bootstrap) = match cluster {
        Some(cluster) => {
            let Some(&(_, addr)) = cluster.voters.iter().find(|(v, _)| *v == id) else {
                return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                    "this node's id is not among the cluster's voters",
                )));
            };
            let addr = cluster.listen.unwrap_or(addr);
            let listener = TcpListener::bind(addr)
                .map_err(|e| StoreError::io(format!("raft address {addr}"), e))?;
            let mut bootstrap = raft::Membership::bootstrap(
                &cluster
                    .voters
                    .iter()
                    .map(|(v, a)| (*v, a.to_string()))
                    .collect::<Vec<_>>(),
            );
            if cluster.join
                && let Some(me) = bootstrap.get_mut(id)
            {
                me.role = raft::MemberRole::Learner { promote: false };
            }
            (Some(listener), bootstrap)
        }
        None => (None, raft::Membership::bootstrap(&[(id, String::new())])),
    };
    let cluster = cluster.unwrap_or(&single);
    let hard = HardState::load(storage.as_ref(), &root)?;
    let terms = raft::log_terms(&inner.store)?;
    let cfg = RaftConfig {
        heartbeat_ms: cluster.heartbeat_ms,
        election_min_ms: cluster.election_min_ms,
        election_max_ms: cluster.election_max_ms,
        preferred_leader: cluster.preferred_leader,
        members: bootstrap,
        incarnation,
        seed: super::wall_clock_ms() ^ id,
        ..RaftConfig::new(id, Vec::new())
    };
    let mut core = Raft::new(cfg, hard, terms, applied, 0);
    core.restore_configs(crate::raft::members_file::load(storage.as_ref(), &root)?);
    let peers = crate::raft::driver::peer_addrs(core.membership(), id, &cluster.voters);
    let (channel, deliver) = crate::raft::driver::event_channel();
    let transport = match listener {
        Some(listener) => {
            let transport = Arc::new(
                Transport::start(
                    id,
                    listener,
                    &peers,
                    deliver,
                    TransportConfig {
                        secret: std::sync::Arc::from(cluster.secret.as_slice()),
                        incarnation,
                        ..TransportConfig::default()
                    },
                )
                .map_err(|e| StoreError::io("raft transport", e))?,
            );
            // Followers behind the retained log fetch images of this node.
            let weak = Arc::downgrade(inner);
            transport.on_side_channel(
                raft::handshake::Kind::Image,
                Arc::new(move |from, stream| {
                    if let Some(inner) = weak.upgrade() {
                        inner.serve_image(from, stream);
                    }
                }),
            );
            Some(transport)
        }
        None => None,
    };
    let driver = Driver::start(
        core,
        inner.store.clone(),
        storage,
        root,
        transport.clone(),
        Arc::new(EngineHooks(inner.clone())),
        DriverConfig {
            stall_ms: cluster.stall_ms,
            addresses: cluster.voters.clone(),
            ..DriverConfig::default()
        },
        channel,
    )
    .map_err(|e| StoreError::io("raft driver", e))?;
    let _ = inner.cluster.set(ClusterLink {
        handle: driver.handle(),
    });
    Ok(ClusterParts { driver, transport })
}

impl super::Engine {
    /// This node's id (`--node-id`; 1 by default).
    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// Every member of the group in force (voters and learners, with their Raft addresses
    /// and incarnations); empty for a group of one.
    pub fn cluster_members(&self) -> Vec<raft::Member> {
        self.inner
            .raft_status()
            .map(|s| s.members.members().to_vec())
            .unwrap_or_default()
    }

    /// Asks the group for a membership change: the leader appends it (one voter at a time;
    /// an add of a node already there or a remove of one that is not does nothing), a
    /// follower passes it to the leader. Returns at once; watch [`Engine::raft_status`].
    /// `InvalidArgument` on a single node (no Raft listener: nobody could reach it).
    pub fn change_membership(&self, change: raft::MembershipChange) -> Result<()> {
        let Some(c) = self.inner.cluster.get() else {
            return Err(EngineError::ShuttingDown);
        };
        if self.raft_addr().is_none() {
            return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                "a single node has no Raft listener to grow its group from (restart it with \
                 --peers naming itself)",
            )));
        }
        if let raft::MembershipChange::Add { id, addr, .. } = &change {
            if *id == 0 {
                return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                    "node ids start at 1",
                )));
            }
            if addr.is_empty() || addr.len() > raft::membership::MAX_ADDR {
                return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                    "a new member needs its Raft address (host:port, at most 255 bytes)",
                )));
            }
        }
        c.handle.event(Event::ChangeMembership(change));
        Ok(())
    }

    /// Where this node's Raft listener is bound; none for a single node (started without a
    /// cluster configuration: a group of one that talks to nobody).
    pub fn raft_addr(&self) -> Option<SocketAddr> {
        self.cluster
            .as_ref()
            .and_then(|c| c.transport.as_ref())
            .map(|t| t.local_addr())
    }

    /// Node-to-node traffic so far: messages dropped (a full queue, a peer down), frames
    /// refused by the decoder, connections refused in the handshake. Zeros in a group of one.
    pub fn transport_counts(&self) -> (u64, u64, u64) {
        self.cluster
            .as_ref()
            .and_then(|c| c.transport.as_ref())
            .map_or((0, 0, 0), |t| {
                let s = t.stats();
                (
                    s.dropped.load(Ordering::Relaxed),
                    s.bad_frames.load(Ordering::Relaxed),
                    s.refused.load(Ordering::Relaxed),
                )
            })
    }

    /// The preferred leader, if one is configured.
    pub fn preferred_leader(&self) -> Option<NodeId> {
        self.inner
            .config
            .cluster
            .as_ref()
            .and_then(|c| c.preferred_leader)
    }

    /// Asks for leadership to move to voter `to`: the leader starts a transfer, a follower
    /// passes the request to the leader it knows. Returns at once; watch
    /// [`Engine::raft_status`] for the outcome. `InvalidArgument` in a group of one or for a
    /// node that is not a voter.
    pub fn transfer_leader(&self, to: NodeId) -> Result<()> {
        let Some(c) = self.inner.cluster.get() else {
            return Err(EngineError::ShuttingDown);
        };
        let members = c.handle.status().members;
        if members.voters().count() == 1 {
            return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                "a group of one has no other voter to lead",
            )));
        }
        if !members.is_voter(to) {
            return Err(EngineError::InvalidArgument(std::borrow::Cow::Borrowed(
                "not a voter of this group",
            )));
        }
        c.handle.event(Event::TransferLeader { to });
        Ok(())
    }
}

impl Inner {
    /// Tells the driver the leader appended through `index` in `term`.
    pub(super) fn appended(&self, index: LogIndex, term: Term) {
        if let Some(c) = self.cluster.get() {
            c.handle.appended(index, term);
        }
    }

    /// Waits until this node leads and takes proposals (its no-op applied): a single node's
    /// open. `InvalidArgument` at once if the configuration in force names other voters (a
    /// node without a Raft listener cannot reach them), or if it does not lead within `limit`.
    pub(super) fn wait_leading(&self, limit: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        // A directory that was grown into a group holds the group's configuration: a node
        // with no Raft listener cannot reach the other voters, and must not serve as if alone.
        if let Some(st) = self.raft_status() {
            let voters: Vec<NodeId> = st.members.voters().collect();
            if voters != [self.config.node_id] {
                return Err(EngineError::InvalidArgument(std::borrow::Cow::Owned(
                    format!(
                        "the data directory belongs to a Raft group whose voters are {voters:?}: \
                     start this node with --peers naming them"
                    ),
                )));
            }
        }
        loop {
            {
                let p = self.lock_proposer();
                if p.shut {
                    return Err(EngineError::ShuttingDown);
                }
                if p.cluster.as_ref().is_some_and(|g| g.writable) {
                    return Ok(());
                }
            }
            if started.elapsed() >= limit {
                return Err(EngineError::InvalidArgument(std::borrow::Cow::Owned(
                    format!(
                        "this node did not come to lead its group of one within {} s (is its \
                         disk answering?)",
                        limit.as_secs()
                    ),
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// This node's Raft status. Its commit index is at least what this node applied: leading
    /// alone, the engine applies on the log's acknowledgement before the core counts it.
    pub(super) fn raft_status(&self) -> Option<Status> {
        self.cluster.get().map(|c| {
            let mut st = c.handle.status();
            st.commit = st.commit.max(self.applied.load(Ordering::Acquire));
            st
        })
    }

    /// What the applier may apply through: the driver's commit index or, leading a group of
    /// one, what the log has acknowledged of this leadership's entries and the proposals
    /// already queued (`handed`) — the same index the core will report, a hand-off sooner.
    fn commit_now(&self) -> LogIndex {
        let commit = self.commit.load(Ordering::Acquire);
        // The acknowledgement is read first: an entry it covers was appended before it, so a
        // `sole_voter(None)` made before a configuration entry's append is seen below.
        let acked = self.store.log().acked_index();
        let handed = self.handed.load(Ordering::Acquire);
        let from = self.sole_from.load(Ordering::Acquire);
        if from != 0 && acked >= from {
            commit.max(acked.min(handed))
        } else {
            commit
        }
    }

    /// The applier of a group member: waits for the commit index, applies the committed
    /// entries from the log in batches, and answers the proposals among them that are this
    /// node's (matched by index and term: a proposal whose entry was replaced by another
    /// leader's fails with `NotLeader`).
    pub(super) fn apply_loop_cluster(&self, rx: mpsc::Receiver<ApplyInput>) {
        let mut checkpointing = Checkpointing::new();
        let mut pending: VecDeque<Proposal> = VecDeque::new();
        loop {
            // Leading a group of one, the oldest proposal's acknowledgement is its commit:
            // waited for here, as the single-node applier does, not through the driver.
            let sole_from = self.sole_from.load(Ordering::Acquire);
            let alone_front = (sole_from != 0)
                .then(|| pending.front().and_then(|p| p.entries.last()))
                .flatten();
            let handed = self.handed.load(Ordering::Acquire);
            let ready = |t: &crate::store::AppendTicket| t.is_durable() && handed >= t.index;
            // Acknowledged and marked handed already (between the last look at the commit
            // and here): committed, so applied now — a sleep in the channel would wait for
            // the driver's word, which leading alone comes only every `ALONE_REPORT_EVERY`.
            let committed_alone =
                alone_front.is_some_and(|(t, _)| t.index >= sole_from && ready(t));
            let alone_waiting = alone_front.filter(|(t, _)| !ready(t));
            let next = if committed_alone {
                Ok(ApplyInput::Commit)
            } else if let Some((ticket, _)) = alone_waiting {
                // An error (a truncation: no longer leading) is met again in the driver's
                // commit; the next turn sleeps in the channel.
                let _ = ticket.wait_ref();
                // Its proposer marks it handed just after queueing it (an `async` write can be
                // acknowledged first): a few looks, then the channel for a moment — never a
                // sleep until the next proposal or the driver's word.
                let mut looks = 0;
                while self.handed.load(Ordering::Acquire) < ticket.index && looks < 1000 {
                    std::thread::yield_now();
                    looks += 1;
                }
                if self.handed.load(Ordering::Acquire) < ticket.index {
                    rx.recv_timeout(Duration::from_millis(1))
                } else {
                    Ok(ApplyInput::Commit)
                }
            } else if checkpointing.busy() {
                rx.recv_timeout(Duration::from_millis(20))
            } else {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            };
            match next {
                Ok(ApplyInput::Proposal(p)) => pending.push_back(p),
                Ok(ApplyInput::Commit) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            for input in rx.try_iter() {
                if let ApplyInput::Proposal(p) = input {
                    pending.push_back(p);
                }
            }
            loop {
                let commit = self.commit_now();
                let applied = self.applied.load(Ordering::Acquire);
                if commit <= applied {
                    break;
                }
                // Every proposal with entries up to `commit` was queued before the driver heard
                // of them (`Inner::send`), hence is in the channel now: take them before
                // applying, or an entry of ours would be applied as another node's and its
                // proposal left unanswered.
                for input in rx.try_iter() {
                    if let ApplyInput::Proposal(p) = input {
                        pending.push_back(p);
                    }
                }
                let mut upto = commit.min(applied + APPLY_BATCH as u64);
                // A pipeline of ours that starts in this batch and is committed whole goes in
                // whole (its reply covers all its entries).
                if let Some(last) = pending
                    .front()
                    .and_then(|p| p.entries.last())
                    .map(|(t, _)| t.index)
                    .filter(|l| *l > upto && *l <= commit)
                {
                    upto = last;
                }
                match self.apply_committed(applied + 1, upto, &mut pending, checkpointing.journal())
                {
                    // The rest of a pipeline of ours was not committed as of `commit` — but
                    // the word that it is may have come since and been taken from the channel
                    // above (the hook moves the commit index before it sends): look again
                    // before sleeping, or sleep through it until the next commit.
                    Ok(0) if self.commit_now() > commit => continue,
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "apply failed; the engine stops applying");
                        for p in pending.drain(..) {
                            self.fail(p.reply, e.clone());
                        }
                        self.lock_proposer().shut = true;
                        checkpointing.join();
                        return;
                    }
                }
            }
            self.advance_checkpoint(&mut checkpointing);
        }
        for p in pending.drain(..) {
            self.fail(p.reply, EngineError::ShuttingDown);
        }
        checkpointing.join();
    }

    /// Applies the committed entries `from..=to` (fewer if a pipeline of ours runs past
    /// `to`); how many. This node's own proposals are applied from memory, as proposed (the
    /// log holds the same bytes: same index and term); other entries are read from the log.
    fn apply_committed(
        &self,
        from: LogIndex,
        to: LogIndex,
        pending: &mut VecDeque<Proposal>,
        journal: Option<&mut Vec<super::journal::JournalEntry>>,
    ) -> Result<usize> {
        let log = self.store.log();
        // Leading alone: a proposal of this leadership's term from its first entry on is in
        // the log as proposed (a leader's log only grows within its term), no lookup needed.
        let sole_from = self.sole_from.load(Ordering::Acquire);
        let sole_term = self.sole_term.load(Ordering::Acquire);
        // Sized for the batch up front (a batch under load has hundreds of entries: growing
        // these by doubling cost the applier a realloc every few entries).
        let room = usize::try_from(to.saturating_sub(from) + 1)
            .unwrap_or(usize::MAX)
            .min(MAX_BATCH_ROOM);
        let mut entries: Vec<Arc<LogEntry>> = Vec::with_capacity(room);
        let mut replies: Vec<(Option<ReplyTo>, usize)> =
            Vec::with_capacity(room.min(pending.len() + 1));
        let mut pauses = Vec::with_capacity(room);
        let mut index = from;
        while index <= to {
            // Proposals whose first entry is behind this one were passed over: their entries
            // are gone (another leader's are in their place).
            while pending
                .front()
                .is_some_and(|p| p.entries.first().is_none_or(|(t, _)| t.index < index))
            {
                if let Some(p) = pending.pop_front() {
                    self.fail(p.reply, not_leader(self));
                }
            }
            let front = pending.front().and_then(|p| {
                let (first, _) = p.entries.first()?;
                let (last, e) = p.entries.last()?;
                Some((first.index, last.index, e.term))
            });
            let mut next_ours = to + 1;
            if let Some((first, last, term)) = front {
                if first == index {
                    // Log matching: the log holding this proposal's term at its last index
                    // holds every entry of it as this node appended them.
                    let this_leadership = sole_from != 0 && first >= sole_from && term == sole_term;
                    if last <= to && (this_leadership || log.term_at(last).ok() == Some(term)) {
                        if let Some(mut p) = pending.pop_front() {
                            let n = p.entries.len();
                            for (ticket, e) in p.entries {
                                pauses.push(p.pauses.take());
                                entries.push(Arc::new(LogEntry {
                                    index: ticket.index,
                                    term: e.term,
                                    kind: e.kind,
                                    timestamp_ms: e.timestamp_ms,
                                    command: e.command,
                                    records: e.records,
                                }));
                            }
                            replies.push((Some(p.reply), n));
                        }
                        index = last + 1;
                        continue;
                    }
                    if last > to && log.term_at(index).ok() == Some(term) {
                        // Ours, but its last entries are not in this batch: apply up to it
                        // now, the rest with the next batch.
                        break;
                    }
                    if let Some(p) = pending.pop_front() {
                        self.fail(p.reply, not_leader(self));
                    }
                    continue;
                }
                next_ours = first;
            }
            // Entries that are not this node's proposals, up to the next one that may be.
            let upto = to.min(next_ours.saturating_sub(1));
            for e in log.entries(index, upto)? {
                entries.push(Arc::new(e));
                replies.push((None, 1));
                pauses.push(None);
            }
            index = upto + 1;
        }
        let n = entries.len();
        self.finish_batch(&entries, replies, &pauses, journal)?;
        Ok(n)
    }
}

/// Entries of a commit batch the applier's vectors are sized for at most up front.
const MAX_BATCH_ROOM: usize = 4096;

/// The error a proposal whose entry did not survive gets.
fn not_leader(inner: &Inner) -> EngineError {
    EngineError::NotLeader {
        leader: inner.raft_status().and_then(|s| s.leader),
    }
}
