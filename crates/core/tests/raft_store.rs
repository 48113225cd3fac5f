//! Raft over the real store: 3-node groups whose logs are real `MessageStore`s on simulated
//! disks, driven by the Raft core through the driver's half (`raft::appends`, `raft::persist`,
//! `raft::log_terms`, the hard-state file), on a simulated network that drops, delays,
//! duplicates and partitions, with power cuts that lose every unsynced byte. Nodes cut their
//! logs below their dispatch checkpoints (retention), so a node that was down or cut off may
//! need what its leader no longer holds: it is offered an image and installs it — the leader's
//! store image (`MessageStore::image`) staged on its disk (`Installer`), sometimes cut by a
//! power failure before the restart that installs it (`image::apply_pending`). Checked
//! throughout: one leader per term; every index committed anywhere holds the same record
//! (byte for byte) everywhere it is committed and still held; equal store digests at equal
//! dispatch points. At the end, healed: one leader, every node commits the same last index,
//! and every acknowledged proposal still in a node's log is there exactly once. A seed replays
//! exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use manifold_core::raft::{
    self, Action, Event, HardState, LogTerms, Message, NodeId, Raft, RaftConfig, Role,
};
use manifold_core::store::image::{Installer, apply_pending};
use manifold_core::store::{
    CrashMode, EntryKind, FlushMode, LogConfig, LogIndex, MessageStore, NewEntry, RecordOp,
    SimDisk, Storage, StoreConfig, StreamId, SubRecord, Term,
};

const IDS: [NodeId; 3] = [1, 2, 3];
/// Bytes of records per append request: small, so ranges split into several appends.
const APPEND_BYTES: u64 = 600;

fn root() -> PathBuf {
    PathBuf::from("/data")
}

fn store_config() -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_size: 16 * 1024,
            index_records_per_file: 256,
            // Synced only when the simulation says so; no timer of its own.
            flush: FlushMode::Async {
                interval_ms: 3_600_000,
            },
            checkpoint_interval_ms: 3_600_000,
            ..LogConfig::default()
        },
        dispatch_checkpoint_interval_ms: 3_600_000,
        ..StoreConfig::default()
    }
}

/// The simulation's only randomness: the Raft core's own seeded generator (SplitMix64).
struct Rng(raft::Rng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `p` in 1/1,000,000ths.
    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

struct Node {
    id: NodeId,
    disk: SimDisk,
    store: Option<MessageStore>,
    raft: Option<Raft>,
    /// Appended (by persist or proposal) but not yet synced.
    dirty: bool,
    /// Time it comes back after a crash.
    down_until: Option<u64>,
}

impl Node {
    fn store(&self) -> &MessageStore {
        self.store.as_ref().expect("node is up")
    }
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    /// `(deliver at, sequence, from, to, message)`.
    net: Vec<(u64, u64, NodeId, NodeId, Message)>,
    seq: u64,
    /// Links cut (from, to): one-way unless both directions are in.
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: bool,
    /// Term → the leader elected in it.
    leaders: BTreeMap<Term, NodeId>,
    /// Index → the record committed there (raw bytes), by whoever committed it first.
    committed: BTreeMap<LogIndex, Bytes>,
    /// Dispatch point → store digest, by whoever dispatched there first.
    digests: BTreeMap<LogIndex, u32>,
    next_payload: u64,
    /// Proposals: payload id → (node, term, index).
    proposals: BTreeMap<u64, (NodeId, Term, LogIndex)>,
    /// Payload ids acknowledged to their client (committed by their leader in their term).
    acked: BTreeSet<u64>,
    /// A digest of everything that happened, to show a seed replays exactly.
    trace: u64,
    /// Images installed.
    images: u64,
    /// The seed (restarts mix it with the time).
    seed: u64,
}

fn open_node(disk: &SimDisk, id: NodeId, seed: u64, now: u64) -> (MessageStore, Raft) {
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    // An image staged before the node went down replaces its store first.
    apply_pending(storage.as_ref(), &root()).expect("staged image installs");
    let store = MessageStore::open(storage.clone(), &root(), store_config()).expect("store opens");
    let hard = HardState::load(storage.as_ref(), &root()).expect("hard state loads");
    let terms: LogTerms = raft::log_terms(&store).expect("terms rebuilt");
    // Everything dispatched was committed: a restart knows at least that much.
    let commit = store.dispatched_index();
    let cfg = RaftConfig {
        seed,
        ..RaftConfig::new(id, IDS.to_vec())
    };
    let mut raft = Raft::new(cfg, hard, terms, commit, now);
    raft.restore_configs(raft::members_file::load(storage.as_ref(), &root()).expect("members"));
    (store, raft)
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let nodes = IDS
            .iter()
            .map(|&id| {
                let disk = SimDisk::new();
                let (store, raft) = open_node(&disk, id, seed, 0);
                Node {
                    id,
                    disk,
                    store: Some(store),
                    raft: Some(raft),
                    dirty: false,
                    down_until: None,
                }
            })
            .collect();
        Sim {
            rng: Rng(raft::Rng::new(seed)),
            now: 0,
            nodes,
            net: Vec::new(),
            seq: 0,
            cut: BTreeSet::new(),
            faults: true,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            digests: BTreeMap::new(),
            next_payload: 1,
            proposals: BTreeMap::new(),
            acked: BTreeSet::new(),
            trace: seed,
            images: 0,
            seed,
        }
    }

    fn note(&mut self, x: u64) {
        self.trace = (self.trace ^ x).wrapping_mul(0x100_0000_01b3);
    }

    fn step(&mut self, n: usize, event: Event) {
        let now = self.now;
        let Some(raft) = self.nodes[n].raft.as_mut() else {
            return;
        };
        raft.step(now, event);
        let actions = raft.take_actions();
        for a in actions {
            self.carry_out(n, a);
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Message) {
        if self.cut.contains(&(from, to)) {
            return;
        }
        if self.faults && self.rng.chance(20_000) {
            return; // dropped
        }
        let delay = if self.faults && self.rng.chance(10_000) {
            50 + self.rng.below(150)
        } else {
            1 + self.rng.below(if self.faults { 8 } else { 2 })
        };
        self.seq += 1;
        let copy = (self.faults && self.rng.chance(10_000)).then(|| msg.clone());
        self.net.push((self.now + delay, self.seq, from, to, msg));
        if let Some(m) = copy {
            self.seq += 1;
            let later = self.now + delay + self.rng.below(20);
            self.net.push((later, self.seq, from, to, m));
        }
    }

    fn carry_out(&mut self, n: usize, action: Action) {
        let id = self.nodes[n].id;
        match action {
            Action::SaveHardState(h) => {
                h.store(&self.nodes[n].disk, &root())
                    .expect("hard state written");
            }
            Action::Send { to, msg } => self.send(id, to, msg),
            Action::SendEntries { to, header, last } => {
                let msgs = raft::appends(self.nodes[n].store(), header, last, APPEND_BYTES)
                    .expect("entries read");
                for m in msgs {
                    self.send(id, to, m);
                }
            }
            Action::Persist {
                truncate_after,
                first_index,
                entries,
            } => {
                raft::persist(self.nodes[n].store(), truncate_after, first_index, &entries)
                    .expect("entries written");
                self.nodes[n].dirty = true;
            }
            Action::AppendNoop { term } => {
                let store = self.nodes[n].store();
                let ticket = store
                    .log()
                    .append(&NewEntry::noop(term, self.now))
                    .expect("no-op appended");
                self.nodes[n].dirty = true;
                self.step(
                    n,
                    Event::Appended {
                        last_index: ticket.index,
                        term,
                    },
                );
            }
            Action::Commit(index) => self.commit(n, index),
            Action::PauseProposals => {
                let last_index = self.nodes[n].store().log().last_index();
                let term = self.nodes[n].raft.as_ref().map_or(0, |r| r.term());
                self.step(n, Event::ProposalsPaused { last_index, term });
            }
            Action::ResumeProposals => {}
            Action::SaveMembers(configs) => {
                raft::members_file::save(&self.nodes[n].disk, &root(), &configs)
                    .expect("members written");
            }
            Action::AppendConfig {
                term,
                mut configs,
                members,
            } => {
                let index = self.nodes[n].store().log().last_index() + 1;
                configs.push(raft::ConfigAt {
                    index,
                    term,
                    members: members.clone(),
                });
                raft::members_file::save(&self.nodes[n].disk, &root(), &configs)
                    .expect("members written");
                let entry = raft::membership::config_entry(term, self.now, &members);
                let ticket = self.nodes[n]
                    .store()
                    .log()
                    .append(&entry)
                    .expect("config appended");
                self.nodes[n].dirty = true;
                self.step(
                    n,
                    Event::ConfigAppended {
                        index: ticket.index,
                        term,
                        members,
                    },
                );
            }
            Action::FetchImage { leader, diverged } => self.fetch_image(n, leader, diverged),
            Action::RoleChanged { role, term, leader } => {
                if role == Role::Leader {
                    let before = self.leaders.insert(term, id);
                    assert!(
                        before.is_none_or(|b| b == id),
                        "two leaders in term {term}: {before:?} and {id}"
                    );
                    // Leader completeness: it holds everything committed so far (that its
                    // log still holds: retention cut below its dispatch checkpoint).
                    let store = self.nodes[n].store();
                    let first = store.log().first_index();
                    for (index, raw) in self.committed.range(first..) {
                        let mine = store.log().read_raw(*index).expect("committed entry held");
                        assert_eq!(&mine, raw, "leader {id} of term {term} differs at {index}");
                    }
                }
                self.note(term * 16 + leader.unwrap_or(0));
            }
        }
    }

    fn commit(&mut self, n: usize, index: LogIndex) {
        let id = self.nodes[n].id;
        let store = self.nodes[n].store();
        let from = self.committed.keys().next_back().map_or(1, |i| i + 1);
        for i in from.min(store.dispatched_index() + 1)..=index {
            let raw = store.log().read_raw(i).expect("committed entry readable");
            let seen = self.committed.entry(i).or_insert_with(|| raw.clone());
            assert_eq!(*seen, raw, "node {id} committed another record at {i}");
        }
        let at = store.dispatch_to(index).expect("dispatched");
        let digest = store.state_digest().expect("digest");
        let seen = *self.digests.entry(at).or_insert(digest);
        assert_eq!(seen, digest, "node {id}: store digest at {at}");
        // Acknowledged: this node's own proposals of its current term, now committed.
        if let Some(raft) = self.nodes[n].raft.as_ref()
            && raft.role() == Role::Leader
        {
            let term = raft.term();
            let mine: Vec<u64> = self
                .proposals
                .iter()
                .filter(|(_, (p, t, i))| *p == id && *t == term && *i <= index)
                .map(|(k, _)| *k)
                .collect();
            self.acked.extend(mine);
        }
        self.note(index);
    }

    /// Follower `n` fetches an image of `leader` (what it dispatched, all committed), stages it
    /// on its own disk and restarts on it — unless it would not help, as the real node decides.
    /// Sometimes the power fails between the staging and the restart.
    fn fetch_image(&mut self, n: usize, leader: NodeId, diverged: bool) {
        let l = (leader - 1) as usize;
        let (Some(from), Some(to)) = (self.nodes[l].store.as_ref(), self.nodes[n].store.as_ref())
        else {
            return;
        };
        // No dispatch checkpoint yet: no image (the offer comes again).
        let Ok(mut image) = from.image(from.dispatched_index()) else {
            return;
        };
        let m = image.manifest().clone();
        if !diverged && !m.needed_by(to.log(), to.dispatched_index()) {
            return;
        }
        let configs: Vec<raft::ConfigAt> = raft::members_file::load(&self.nodes[l].disk, &root())
            .expect("members")
            .into_iter()
            .filter(|c| c.index <= m.last_index)
            .collect();
        image.push_bytes("members".into(), raft::members_file::encode(&configs));
        let storage: Arc<dyn Storage> = Arc::new(self.nodes[n].disk.clone());
        let mut staged =
            Installer::begin(storage, &root(), image.manifest().clone()).expect("staging");
        let mut buf = vec![0u8; 4096];
        for (k, f) in image.manifest().files.iter().enumerate() {
            let mut at = 0;
            while at < f.data_len {
                let got = image.read(k, at, &mut buf).expect("image read");
                staged.write(k, at, &buf[..got]).expect("staged");
                at += got as u64;
            }
        }
        staged.finish().expect("image staged");
        drop(image);
        self.images += 1;
        self.note(5000 + m.last_index);
        // The restart that installs it, or a power cut first (the next open installs it).
        let node = &mut self.nodes[n];
        node.raft = None;
        node.store = None;
        node.dirty = false;
        if self.rng.chance(300_000) {
            node.disk = node.disk.crash(CrashMode::Random(self.rng.next()));
        }
        let id = node.id;
        self.net.retain(|msg| msg.3 != id);
        let seed = self.seed;
        self.restart(n, seed);
    }

    /// Retention: node `n` cuts its log below its last dispatch checkpoint (the store never
    /// goes further) and its core forgets those entries.
    fn compact(&mut self, n: usize) {
        let Some(store) = self.nodes[n].store.as_ref() else {
            return;
        };
        let before = store.log().first_index();
        let upto = store.dispatched_index().saturating_sub(self.rng.below(30));
        let first = store.delete_before(upto).expect("retention");
        if first > before {
            self.note(7000 + first);
            self.step(n, Event::LogCompacted { first_index: first });
        }
    }

    fn propose(&mut self, n: usize) {
        let Some(term) = self.nodes[n].raft.as_ref().and_then(|r| r.can_propose()) else {
            return;
        };
        let payload = self.next_payload;
        self.next_payload += 1;
        let entry = NewEntry {
            term,
            kind: EntryKind::Command,
            timestamp_ms: self.now,
            command: Bytes::new(),
            records: vec![SubRecord {
                op: RecordOp::Message,
                db: 0,
                topic: Bytes::from(format!("t{}", payload % 3)),
                id: StreamId::new(payload, 0),
                message_key: Bytes::new(),
                properties: Vec::new(),
                fields: vec![(
                    Bytes::from_static(b"f"),
                    Bytes::from(vec![b'x'; (payload % 200) as usize]),
                )],
            }],
        };
        let ticket = self.nodes[n]
            .store()
            .log()
            .append(&entry)
            .expect("proposal appended");
        self.nodes[n].dirty = true;
        self.proposals
            .insert(payload, (self.nodes[n].id, term, ticket.index));
        self.step(
            n,
            Event::Appended {
                last_index: ticket.index,
                term,
            },
        );
    }

    /// The node's log made durable: its core hears how far.
    fn sync(&mut self, n: usize) {
        let store = self.nodes[n].store();
        let index = store.log().sync().expect("synced");
        let term = store.log().term_at(index).expect("term");
        self.nodes[n].dirty = false;
        self.step(n, Event::Persisted { index, term });
    }

    fn crash(&mut self, n: usize) {
        // Now and then down long enough for the others' retention to pass it by.
        let down = if self.rng.chance(250_000) {
            2_000 + self.rng.below(2_000)
        } else {
            100 + self.rng.below(900)
        };
        let node = &mut self.nodes[n];
        node.raft = None;
        node.store = None; // dropped without close: the abort path
        node.disk = node.disk.crash(CrashMode::DropUnsynced);
        node.dirty = false;
        node.down_until = Some(self.now + down);
        let id = node.id;
        self.net.retain(|m| m.3 != id);
        self.note(1000 + id);
    }

    fn restart(&mut self, n: usize, seed: u64) {
        let node = &mut self.nodes[n];
        let (store, raft) = open_node(&node.disk, node.id, seed ^ self.now, self.now);
        node.store = Some(store);
        node.raft = Some(raft);
        node.down_until = None;
    }

    /// One simulated millisecond.
    fn tick(&mut self, seed: u64) {
        self.now += 1;
        // Deliver what is due, in order.
        self.net.sort_by_key(|m| (m.0, m.1));
        let due = self.net.partition_point(|m| m.0 <= self.now);
        let batch: Vec<_> = self.net.drain(..due).collect();
        for (_, _, from, to, msg) in batch {
            let n = (to - 1) as usize;
            if self.nodes[n].raft.is_some() {
                self.note(from * 7 + to);
                self.step(
                    n,
                    Event::Message {
                        from,
                        incarnation: 1,
                        msg,
                    },
                );
            }
        }
        for n in 0..self.nodes.len() {
            if self.nodes[n].down_until.is_some_and(|t| self.now >= t) {
                self.restart(n, seed);
            }
            let Some(raft) = self.nodes[n].raft.as_ref() else {
                continue;
            };
            if self.now >= raft.next_deadline() {
                self.step(n, Event::Tick);
            }
            if self.nodes[n].dirty && self.rng.chance(400_000) {
                self.sync(n);
            }
            if self.faults && self.rng.chance(150_000) {
                self.propose(n);
            }
            if self.rng.chance(2_000) && self.nodes[n].store.is_some() {
                self.nodes[n].store().checkpoint().expect("checkpoint");
            }
            if self.faults && self.rng.chance(1_000) {
                self.compact(n);
            }
            if self.faults && self.rng.chance(300) {
                let to = IDS[self.rng.below(3) as usize];
                self.step(n, Event::TransferLeader { to });
            }
        }
        if !self.faults {
            return;
        }
        // Faults: a power cut (never more than one node down), a partition or a heal.
        if self.rng.chance(800) && self.nodes.iter().all(|n| n.raft.is_some()) {
            let n = self.rng.below(3) as usize;
            self.crash(n);
        }
        if self.rng.chance(1_000) {
            let a = IDS[self.rng.below(3) as usize];
            let b = IDS[self.rng.below(3) as usize];
            if a != b {
                self.cut.insert((a, b));
                if self.rng.chance(500_000) {
                    self.cut.insert((b, a));
                }
            }
        }
        if self.rng.chance(1_500) {
            self.cut.clear();
        }
    }

    /// Heals everything and lets the group settle.
    fn settle(&mut self, seed: u64) {
        self.faults = false;
        self.cut.clear();
        for n in 0..self.nodes.len() {
            if self.nodes[n].down_until.is_some() {
                self.restart(n, seed);
            }
        }
        for _ in 0..3_000 {
            self.tick(seed);
            for n in 0..self.nodes.len() {
                if self.nodes[n].dirty {
                    self.sync(n);
                }
            }
        }
    }
}

/// Runs one seed; returns the trace digest and the images installed.
fn run(seed: u64, ms: u64) -> (u64, u64) {
    let mut sim = Sim::new(seed);
    for _ in 0..ms {
        sim.tick(seed);
    }
    sim.settle(seed);
    // One leader, everyone up to date.
    let leaders: Vec<NodeId> = sim
        .nodes
        .iter()
        .filter_map(|n| n.raft.as_ref())
        .filter(|r| r.role() == Role::Leader)
        .map(|r| r.id())
        .collect();
    assert_eq!(leaders.len(), 1, "seed {seed}: leaders {leaders:?}");
    let commits: Vec<LogIndex> = sim
        .nodes
        .iter()
        .filter_map(|n| n.raft.as_ref())
        .map(|r| r.commit_index())
        .collect();
    let logs: Vec<(LogIndex, LogIndex)> = sim
        .nodes
        .iter()
        .map(|n| (n.store().log().first_index(), n.store().log().last_index()))
        .collect();
    assert!(
        commits.windows(2).all(|w| w[0] == w[1]),
        "seed {seed}: commit indexes {commits:?}, logs (first, last) {logs:?}"
    );
    // Every acknowledged proposal is in every log exactly once, as far as the log still
    // holds it (the store digests compared the rest).
    for node in &sim.nodes {
        let store = node.store();
        let (first, last) = (store.log().first_index(), store.log().last_index());
        let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
        for e in store.log().entries(first, last).expect("log readable") {
            for r in &e.records {
                *seen.entry(r.id.ms).or_default() += 1;
            }
        }
        let held = sim
            .acked
            .iter()
            .filter(|id| sim.proposals.get(id).is_some_and(|p| p.2 >= first));
        for id in held {
            assert_eq!(
                seen.get(id),
                Some(&1),
                "seed {seed}: node {}: acknowledged proposal {id}",
                node.id
            );
        }
    }
    assert!(
        !sim.acked.is_empty(),
        "seed {seed}: nothing was acknowledged"
    );
    for node in &sim.nodes {
        node.store().close().expect("closes");
    }
    (sim.trace, sim.images)
}

/// `RAFT_STORE_SEED=N` replays seed `N` alone.
#[test]
fn one_seed() {
    if let Some(seed) = std::env::var("RAFT_STORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed, 6_000);
    }
}

fn seeds() -> u64 {
    std::env::var("RAFT_STORE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

#[test]
fn replicated_stores_agree_through_partitions_drops_and_power_cuts() {
    let mut images = 0;
    for seed in 0..seeds() {
        images += run(seed, 6_000).1;
    }
    eprintln!("{} seeds: {images} images installed", seeds());
    assert!(images > 0, "no node ever needed an image");
}

#[test]
fn a_seed_replays_exactly() {
    assert_eq!(run(7, 2_000), run(7, 2_000));
}

/// The hard-state file round-trips on the simulated disk (what a restart loads).
#[test]
fn the_hard_state_file_round_trips() {
    let disk = SimDisk::new();
    let h = HardState {
        term: 9,
        voted_for: 2,
    };
    disk.create_dir_all(Path::new("/data")).expect("directory");
    h.store(&disk, Path::new("/data")).expect("stored");
    assert_eq!(
        HardState::load(&disk, Path::new("/data")).expect("loaded"),
        h
    );
}
