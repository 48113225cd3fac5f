//! Raft over the real store and the real engine state machine: 3-node groups whose logs are
//! real `MessageStore`s on simulated disks and whose state is the engine's (`engine::replica`:
//! the applier's own apply, the engine's snapshots), driven by the Raft core through the
//! driver's half (`raft::appends`, `raft::persist`, `raft::log_terms`, the hard-state file), on
//! a simulated network that drops, delays, duplicates and partitions, with power cuts that lose
//! every unsynced byte. Leaders propose retention (`RetainFrom`, as the engine's timer does) and
//! nodes remove their logs below the retention point they applied and their dispatch
//! checkpoints, so a node that was down or cut off may need what its leader no longer holds: it is offered an
//! image and installs it — the leader's image (store and engine snapshot, as
//! `Engine::export_image` makes it) staged on its disk (`Installer`), sometimes cut by a power
//! failure before the restart that installs it (`image::apply_pending`).
//!
//! Clients propose engine commands, as the engine's proposer writes them, on whichever node
//! leads once its term's no-op is applied (as the proposer opens): appends with a producer
//! sequence (retried on later leaders with a new ID and the same sequence, answered from the
//! replicated producer table when it already holds the answer — the dedupe forwarding and
//! MQTT QoS 2 rely on), consumer-group creates, reads (`Deliver`, new and history), acks,
//! autoclaims and destroys, XDEL, MAXLEN trims and retention, MQTT session commands (opens
//! with Wills, subscriptions, deliveries with packets in flight, completions, QoS 2 steps,
//! closes, expiry), filter-group commands (MQTT shared subscriptions: joins, deliveries, acks,
//! claims, leaves, destroys) and retained PUBLISHes. Many fail at apply (no such
//! group, an ID gone): deterministically, on every node alike.
//!
//! Membership (in one seed in two): a fourth node starts as `--join` starts one, a learner in
//! its own view; leaders are asked to add a node outside the configuration while there are
//! three voters (it joins as a learner and is promoted once caught up) and to remove one of
//! four voters (the leader too, which hands over), so nodes leave and come back with the
//! directory they left with. Lost disks (in one seed in three): a node comes back empty — log,
//! votes, members, state, identity — as a new incarnation of its directory, which counts for
//! nothing until the leader hands it its place back; one at a time, once the committed
//! configuration pins every member's current directory. Every message carries its sender's
//! incarnation, read from the directory's identity file as `Engine::open` does.
//!
//! Each node's clock (what its core is given) runs at its own rate, up to 10 % apart, and
//! starts from 0 at each restart, as a process's monotonic clock does. Power cuts hit one node, or
//! now and then two or all of them at once; the disk goes before the
//! dying store is dropped, so nothing it does on the way out lands. Two fsync models: `sync`
//! (an entry counts durable once synced) and `async` (once written, as `--flush async`
//! acknowledges; syncs far apart), where a majority's power cut may lose committed entries.
//!
//! Checked throughout: one leader per term; every index committed anywhere holds the same
//! record (byte for byte) everywhere it is committed and still held — in `async`, unless the
//! group lost it, which is counted and the group's history goes on from the new record; every
//! node's answer for an index is the same (also when a restart or an image makes it apply
//! again); equal digests of store and engine state at equal applied indexes. At the end,
//! healed (clients propose for another second, then stop): one leader, every member of its
//! configuration commits and applies the same last index to the same state
//! (a node that applied lost entries installed an image: never a divergence), and every
//! acknowledged append still in a node's log is there exactly once (`async`: at most once).
//! A seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use manifold_core::engine::filter_groups::{FilterGroupCommand, FilterGroupOp};
use manifold_core::engine::replica::{Replica, command};
use manifold_core::engine::session_command::{SessionCommand, SessionOp};
use manifold_core::engine::{
    Deduped, EngineConfig, GroupCommand, GroupOp, GroupStart, InFlightNew, ReadFrom,
    SubscribeOptions, Trim, Will,
};
use manifold_core::raft::hard_state::{Identity, load_identity, save_identity};
use manifold_core::raft::{
    self, Action, Event, HardState, LogTerms, MembershipChange, Message, NodeId, Raft, RaftConfig,
    Role,
};
use manifold_core::store::image::Installer;
use manifold_core::store::{
    CqConfig, CrashMode, EntryKind, FlushMode, IndexConfig, LogConfig, LogIndex, MessageStore,
    NewEntry, RecordOp, SimDisk, Storage, StoreConfig, StreamId, SubRecord, Term,
};

/// The voters a group is founded with (`--peers 1,2,3`).
const BOOT: [NodeId; 3] = [1, 2, 3];
/// In seeds with membership changes, a fourth node started as `--join` does (a learner in its
/// own view) that the leader is asked to add; voters are removed again once there are four.
const SPARE: NodeId = 4;
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
        // Small files (the defaults preallocate tens of MiB, which the simulated disk holds in
        // memory and copies at every power cut): more of them, and rollovers, exercised.
        queues: CqConfig {
            arena_file_slots: 64,
            first_file_entries: 16,
            max_file_entries: 256,
            ..CqConfig::default()
        },
        index: IndexConfig {
            slots: 256,
            entries: 1024,
        },
        ..StoreConfig::default()
    }
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        store: store_config(),
        ..EngineConfig::default()
    }
}

/// When a node's log counts an entry durable (the `--flush` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    /// Once synced (`sync`): nothing acknowledged is ever lost.
    Sync,
    /// Once written (`async`): a power cut loses what was not synced yet, so a group may lose
    /// committed entries when a majority loses them — a loss, reported, never a divergence:
    /// nodes that applied a lost entry install an image of the group's history.
    Async,
}

/// Producers (clients with a sequence each) writing appends.
const PRODUCERS: u64 = 16;
/// A producer retries a write only while fewer than this many newer ones were sent (the
/// producer table remembers the newest `PRODUCER_WINDOW`, 64, sequences).
const RETRY_WINDOW: u64 = 32;

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
    /// Its data directory's incarnation (the identity file's): what its messages carry.
    incarnation: u64,
    /// The incarnation a new directory gets (the real node draws a random one).
    fresh: u64,
    replica: Option<Replica>,
    raft: Option<Raft>,
    /// The no-op of the term it leads: proposals open once it is applied.
    noop: Option<(Term, LogIndex)>,
    /// Its monotonic clock (what its Raft core is given): from 0 at each start, at `rate`
    /// per mille of the simulation's time — clocks drift apart by up to 10 %.
    rate: u64,
    /// The simulation's time when it last started.
    started: u64,
    /// Appended (by persist or proposal) but not yet synced.
    dirty: bool,
    /// Time it comes back after a crash.
    down_until: Option<u64>,
}

impl Node {
    /// Its clock at simulation time `now`.
    fn clock(&self, now: u64) -> u64 {
        (now - self.started) * self.rate / 1000
    }

    fn store(&self) -> &MessageStore {
        self.replica().store()
    }

    fn replica(&self) -> &Replica {
        self.replica.as_ref().expect("node is up")
    }
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    /// `(deliver at, sequence, from, to, message, the sender's incarnation)`.
    net: Vec<(u64, u64, NodeId, NodeId, Message, u64)>,
    seq: u64,
    /// Links cut (from, to): one-way unless both directions are in.
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: bool,
    /// Term → the leader elected in it.
    leaders: BTreeMap<Term, NodeId>,
    /// Index → the record committed there (raw bytes), by whoever committed it first.
    committed: BTreeMap<LogIndex, Bytes>,
    /// Applied index → digest of store and engine state, by whoever applied there first.
    digests: BTreeMap<LogIndex, u64>,
    /// Index → what applying it answered, by whoever applied it first.
    replies: BTreeMap<LogIndex, String>,
    next_payload: u64,
    /// The next stream ID's milliseconds (every append gets a new, higher one).
    next_ms: u64,
    /// Appends proposed: (node, term, index, payload).
    proposals: Vec<(NodeId, Term, LogIndex, u64)>,
    /// Writes not acknowledged yet: payload → (producer, sequence).
    unanswered: BTreeMap<u64, (u64, u64)>,
    /// Each producer's last sequence.
    sequences: BTreeMap<u64, u64>,
    /// Payloads acknowledged to their client: committed by their leader in its term, or
    /// answered from the producer table on a retry.
    acked: BTreeSet<u64>,
    /// Retries answered from the producer table.
    deduped: u64,
    /// A digest of everything that happened, to show a seed replays exactly.
    trace: u64,
    /// Images installed.
    images: u64,
    /// Of them, installed because the node's committed entries were not the group's.
    diverged: u64,
    /// The seed (restarts mix it with the time).
    seed: u64,
    model: Model,
    /// Committed entries lost (async): a later commit put another record at their index.
    losses: u64,
    /// Whether leaders are asked to add the spare and remove voters.
    changes: bool,
    /// Whether a node may lose its disk (back empty, as a new incarnation).
    wipes: bool,
    /// Disks lost.
    wiped: u64,
    /// After the chaos, clients propose until then.
    healed_proposals_until: u64,
}

/// Opens node `id` on `disk` as `Engine::open` does: the directory's identity (created with
/// incarnation `fresh` when it has none), the store and state, the hard state, the log's terms
/// and the members file. Returns the incarnation too.
fn open_node(disk: &SimDisk, id: NodeId, fresh: u64, seed: u64, now: u64) -> (Replica, Raft, u64) {
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    storage.create_dir_all(&root()).expect("directory");
    let incarnation = match load_identity(storage.as_ref(), &root()).expect("identity") {
        Some(identity) => {
            assert_eq!(identity.node, id, "the directory is node {id}'s");
            identity.incarnation
        }
        None => {
            let identity = Identity {
                node: id,
                incarnation: fresh,
            };
            save_identity(storage.as_ref(), &root(), identity).expect("identity saved");
            fresh
        }
    };
    // An image staged before the node went down replaces its store and state first.
    let replica = Replica::open(storage.clone(), &root(), &engine_config()).expect("opens");
    let hard = HardState::load(storage.as_ref(), &root()).expect("hard state loads");
    let terms: LogTerms = raft::log_terms(replica.store()).expect("terms rebuilt");
    // Everything applied was committed: a restart knows at least that much.
    let commit = replica.applied();
    let mut cfg = RaftConfig {
        seed,
        incarnation,
        ..RaftConfig::new(id, BOOT.to_vec())
    };
    if !BOOT.contains(&id) {
        cfg.members.put(raft::Member {
            id,
            incarnation: 0,
            role: raft::MemberRole::Learner { promote: false },
            addr: String::new(),
        });
    }
    let mut raft = Raft::new(cfg, hard, terms, commit, now);
    raft.restore_configs(raft::members_file::load(storage.as_ref(), &root()).expect("members"));
    (replica, raft, incarnation)
}

impl Sim {
    fn new(seed: u64, model: Model) -> Sim {
        let mut rng = Rng(raft::Rng::new(seed));
        let changes = seed % 2 == 1;
        let wipes = seed.is_multiple_of(3);
        let ids = if changes {
            1..=SPARE
        } else {
            1..=BOOT.len() as NodeId
        };
        let nodes = ids
            .map(|id| {
                let disk = SimDisk::new();
                let fresh = rng.next().max(1);
                let (replica, raft, incarnation) = open_node(&disk, id, fresh, seed, 0);
                Node {
                    id,
                    disk,
                    incarnation,
                    fresh,
                    replica: Some(replica),
                    raft: Some(raft),
                    noop: None,
                    rate: 900 + rng.below(201),
                    started: 0,
                    dirty: false,
                    down_until: None,
                }
            })
            .collect();
        Sim {
            rng,
            now: 0,
            nodes,
            net: Vec::new(),
            seq: 0,
            cut: BTreeSet::new(),
            faults: true,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            digests: BTreeMap::new(),
            replies: BTreeMap::new(),
            next_payload: 1,
            next_ms: 1,
            proposals: Vec::new(),
            unanswered: BTreeMap::new(),
            sequences: BTreeMap::new(),
            acked: BTreeSet::new(),
            deduped: 0,
            trace: seed,
            images: 0,
            diverged: 0,
            seed,
            model,
            losses: 0,
            changes,
            wipes,
            wiped: 0,
            healed_proposals_until: 0,
        }
    }

    fn note(&mut self, x: u64) {
        self.trace = (self.trace ^ x).wrapping_mul(0x100_0000_01b3);
    }

    fn step(&mut self, n: usize, event: Event) {
        let now = self.nodes[n].clock(self.now);
        let Some(raft) = self.nodes[n].raft.as_mut() else {
            return;
        };
        raft.step(now, event);
        let actions = raft.take_actions();
        for a in actions {
            self.carry_out(n, a);
        }
    }

    /// In `async`, an entry written is acknowledged at once (the log's acknowledged watermark
    /// moves with the write, before any fsync).
    fn written(&mut self, n: usize) {
        if self.model == Model::Sync {
            return;
        }
        let log = self.nodes[n].store().log();
        let index = log.last_index();
        if index == 0 {
            return;
        }
        let term = log.term_at(index).expect("term");
        self.step(n, Event::Persisted { index, term });
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
        let inc = self.nodes[(from - 1) as usize].incarnation;
        let copy = (self.faults && self.rng.chance(10_000)).then(|| msg.clone());
        self.net
            .push((self.now + delay, self.seq, from, to, msg, inc));
        if let Some(m) = copy {
            self.seq += 1;
            let later = self.now + delay + self.rng.below(20);
            self.net.push((later, self.seq, from, to, m, inc));
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
                self.written(n);
            }
            Action::AppendNoop { term } => {
                let store = self.nodes[n].store();
                let ticket = store
                    .log()
                    .append(&NewEntry::noop(term, self.now))
                    .expect("no-op appended");
                self.nodes[n].dirty = true;
                self.nodes[n].noop = Some((term, ticket.index));
                self.step(
                    n,
                    Event::Appended {
                        last_index: ticket.index,
                        term,
                    },
                );
                self.written(n);
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
                // The founding configuration is a new leader's first entry, in place of the
                // no-op: proposals open once it is applied (as `engine::cluster` does).
                if self.nodes[n].noop.is_none_or(|(t, _)| t != term) {
                    self.nodes[n].noop = Some((term, ticket.index));
                }
                self.step(
                    n,
                    Event::ConfigAppended {
                        index: ticket.index,
                        term,
                        members,
                    },
                );
                self.written(n);
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
                    // log still holds: retention cut below its dispatch checkpoint) — in
                    // `sync`; in `async` a majority may have lost some of it.
                    let store = self.nodes[n].store();
                    let first = match self.model {
                        Model::Sync => store.log().first_index(),
                        Model::Async => LogIndex::MAX,
                    };
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
        let replica = self.nodes[n].replica();
        let store = replica.store();
        let from = self.committed.keys().next_back().map_or(1, |i| i + 1);
        for i in from.min(replica.applied() + 1)..=index {
            let raw = store.log().read_raw(i).expect("committed entry readable");
            let seen = self.committed.entry(i).or_insert_with(|| raw.clone());
            if *seen == raw {
                continue;
            }
            assert_eq!(
                self.model,
                Model::Async,
                "seed {}: node {id} committed another record at {i}",
                self.seed
            );
            // The group lost what it had committed from here: its history goes on from this
            // record. Nodes that applied the lost one must not build on it (their answers and
            // digests past here are compared with this history's).
            self.losses += 1;
            self.committed.split_off(&i);
            self.replies.split_off(&i);
            self.digests.split_off(&i);
            self.committed.insert(i, raw);
        }
        let applied = replica.apply_to(index);
        let applied = applied
            .unwrap_or_else(|e| panic!("seed {}: node {id}: apply to {index}: {e}", self.seed));
        for (i, reply) in applied {
            let seen = self.replies.entry(i).or_insert_with(|| reply.clone());
            assert_eq!(
                *seen, reply,
                "seed {}: node {id}: the answer at {i}",
                self.seed
            );
        }
        let at = replica.applied();
        let digest = replica.digest().expect("digest");
        let seen = *self.digests.entry(at).or_insert(digest);
        assert_eq!(
            seen, digest,
            "seed {}: node {id}: state digest at {at}",
            self.seed
        );
        // Acknowledged: this node's own proposals of its current term, now committed.
        if let Some(raft) = self.nodes[n].raft.as_ref()
            && raft.role() == Role::Leader
        {
            let term = raft.term();
            let mine: Vec<u64> = self
                .proposals
                .iter()
                .filter(|(p, t, i, _)| *p == id && *t == term && *i <= index)
                .map(|p| p.3)
                .collect();
            for payload in mine {
                self.unanswered.remove(&payload);
                self.acked.insert(payload);
            }
        }
        self.note(index);
    }

    /// Follower `n` fetches an image of `leader` (what it dispatched, all committed), stages it
    /// on its own disk and restarts on it — unless it would not help, as the real node decides.
    /// Sometimes the power fails between the staging and the restart.
    fn fetch_image(&mut self, n: usize, leader: NodeId, diverged: bool) {
        let l = (leader - 1) as usize;
        let (Some(from), Some(to)) = (
            self.nodes[l].replica.as_ref(),
            self.nodes[n].replica.as_ref(),
        ) else {
            return;
        };
        // No dispatch checkpoint yet: no image (the offer comes again).
        let Ok(mut image) = from.image() else {
            return;
        };
        let m = image.manifest().clone();
        if !diverged && !m.needed_by(to.store().log(), to.applied()) {
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
        self.diverged += u64::from(diverged);
        self.note(5000 + m.last_index);
        // The restart that installs it, or a power cut first (the next open installs it).
        let node = &mut self.nodes[n];
        node.raft = None;
        node.replica = None;
        node.dirty = false;
        if self.rng.chance(300_000) {
            node.disk = node.disk.crash(CrashMode::Random(self.rng.next()));
        }
        let id = node.id;
        self.net.retain(|msg| msg.3 != id);
        let seed = self.seed;
        self.restart(n, seed);
    }

    /// Retention: node `n` removes the log below the retention point it applied (as the
    /// engine does once a `RetainFrom` is applied: no topic holds an entry there any more) and
    /// below its last dispatch checkpoint (the store never goes further); its core forgets
    /// those entries.
    fn compact(&mut self, n: usize) {
        let Some(replica) = self.nodes[n].replica.as_ref() else {
            return;
        };
        let store = replica.store();
        let before = store.log().first_index();
        let retained_from = replica.with_state(|s| s.retained_from);
        let upto = retained_from.min(store.dispatched_index().saturating_sub(self.rng.below(30)));
        let first = store.delete_before(upto).expect("retention");
        if first > before {
            self.note(7000 + first);
            self.step(n, Event::LogCompacted { first_index: first });
        }
    }

    /// A client's command on node `n`, if it leads and its term's no-op is applied (the
    /// engine's proposer opens then: everything of earlier terms is applied, so the producer
    /// table holds every answer a retry could need).
    fn propose(&mut self, n: usize) {
        let Some(term) = self.nodes[n].raft.as_ref().and_then(|r| r.can_propose()) else {
            return;
        };
        let id = self.nodes[n].id;
        let applied = self.nodes[n].replica().applied();
        if !self.nodes[n]
            .noop
            .is_some_and(|(t, i)| t == term && applied >= i)
        {
            return;
        }
        let (command, records, payload) = if self.rng.below(100) < 55 {
            match self.append(n, term) {
                Some((command, record, payload)) => (command, vec![record], Some(payload)),
                None => return,
            }
        } else if self.rng.chance(250_000) {
            (self.session_command(n), Vec::new(), None)
        } else if self.rng.chance(200_000) {
            (self.filter_group_command(n), Vec::new(), None)
        } else {
            let (command, records) = self.stream_command(n);
            (command, records, None)
        };
        let entry = NewEntry {
            term,
            kind: EntryKind::Command,
            timestamp_ms: self.now,
            command,
            records,
        };
        let ticket = self.nodes[n]
            .store()
            .log()
            .append(&entry)
            .expect("proposal appended");
        self.nodes[n].dirty = true;
        if let Some(payload) = payload {
            self.proposals.push((id, term, ticket.index, payload));
        }
        self.step(
            n,
            Event::Appended {
                last_index: ticket.index,
                term,
            },
        );
        self.written(n);
    }

    /// An append on leader `n`: a new write, or (mostly, when there is one) a retry — new ID,
    /// same producer sequence — of one not answered yet and not in flight on this leader
    /// (the proposer would wait for that one), answered from the producer table instead when
    /// it holds the answer.
    fn append(&mut self, n: usize, term: Term) -> Option<(Bytes, SubRecord, u64)> {
        let (id, applied) = (self.nodes[n].id, self.nodes[n].replica().applied());
        let in_flight = |proposals: &[(NodeId, Term, LogIndex, u64)], payload: u64| {
            proposals
                .iter()
                .any(|&(p, t, i, x)| p == id && t == term && x == payload && i > applied)
        };
        let retry = if self.rng.chance(800_000) {
            let open: Vec<(u64, (u64, u64))> = self
                .unanswered
                .iter()
                .filter(|(k, (p, seq))| {
                    seq + RETRY_WINDOW > self.sequences[p] && !in_flight(&self.proposals, **k)
                })
                .map(|(k, v)| (*k, *v))
                .collect();
            (!open.is_empty()).then(|| open[self.rng.below(open.len() as u64) as usize])
        } else {
            None
        };
        let (payload, (producer, seq)) = retry.unwrap_or_else(|| {
            let payload = self.next_payload;
            self.next_payload += 1;
            let producer = payload % PRODUCERS;
            let seq = self.sequences.entry(producer).or_default();
            *seq += 1;
            self.unanswered.insert(payload, (producer, *seq));
            (payload, (producer, *seq))
        });
        let name = Bytes::from(format!("producer-{producer}"));
        let replica = self.nodes[n].replica();
        match replica.with_state(|s| s.deduped(&name, seq)) {
            Some(Deduped::Added(_)) => {
                self.unanswered.remove(&payload);
                self.acked.insert(payload);
                self.deduped += 1;
                return None;
            }
            Some(Deduped::Rejected(_)) => {
                self.unanswered.remove(&payload);
                return None;
            }
            None => {}
        }
        if in_flight(&self.proposals, payload) {
            return None;
        }
        let ms = self.next_ms;
        self.next_ms += 1;
        let record = SubRecord {
            op: RecordOp::Message,
            db: 0,
            topic: Bytes::from(format!("t{}", payload % 3)),
            id: StreamId::new(ms, 0),
            message_key: Bytes::new(),
            properties: Vec::new(),
            fields: vec![
                (Bytes::from_static(b"p"), Bytes::from(payload.to_string())),
                (
                    Bytes::from_static(b"x"),
                    Bytes::from(vec![b'x'; (payload % 200) as usize]),
                ),
            ],
        };
        // Now and then an MQTT retained PUBLISH: its message becomes the topic's retained one.
        let producer = (name, seq);
        let command = if self.rng.chance(100_000) {
            command::append_retained(Some(&producer))
        } else {
            command::append(Some(&producer))
        };
        Some((command, record, payload))
    }

    /// An MQTT session command on leader `n`, for one of four clients: opens (clean or not,
    /// with a Will now and then), subscriptions, deliveries with packets in flight, completions
    /// of what it has in flight, QoS 2 steps, closes, and the expiry timer.
    fn session_command(&mut self, n: usize) -> Bytes {
        let client = Bytes::from(format!("m{}", self.rng.below(4)));
        let filter =
            Bytes::from_static([&b"t0"[..], b"t+", b"#", b"t1"][self.rng.below(4) as usize]);
        let replica = self.nodes[n].replica();
        let applied = replica.applied();
        let in_flight: Vec<u16> = replica.with_state(|s| {
            s.sessions
                .by_client
                .get(&client)
                .map(|c| c.inflight.keys().take(3).copied().collect())
                .unwrap_or_default()
        });
        let packet_id = in_flight.first().copied().unwrap_or(1);
        let op = match self.rng.below(100) {
            0..15 => SessionOp::Open {
                clean_start: self.rng.chance(300_000),
                expiry_s: if self.rng.chance(500_000) { 0 } else { 1 },
                will: self.rng.chance(300_000).then(|| Will {
                    topic: Bytes::from_static(b"t2"),
                    payload: Bytes::from_static(b"gone"),
                    ..Will::default()
                }),
                owner: None,
            },
            15..33 => SessionOp::Subscribe(vec![(
                filter,
                SubscribeOptions {
                    qos: self.rng.below(3) as u8,
                    ..SubscribeOptions::default()
                },
            )]),
            33..40 => SessionOp::Unsubscribe(vec![filter]),
            40..65 => SessionOp::Deliver {
                upto: applied,
                inflight: (0..self.rng.below(3))
                    .map(|k| InFlightNew {
                        packet_id: 1 + self.rng.below(20) as u16,
                        log_index: applied.saturating_sub(k),
                        sub: 0,
                        qos: 1 + self.rng.below(2) as u8,
                        shared: None,
                    })
                    .collect(),
            },
            65..78 => SessionOp::Complete(in_flight),
            78..84 => SessionOp::Received(packet_id),
            84..88 => SessionOp::Released(packet_id),
            88..96 => SessionOp::Close {
                expiry_s: None,
                publish_will: self.rng.chance(500_000),
            },
            _ => return command::expire_sessions(self.now),
        };
        command::session(&SessionCommand {
            client,
            op,
            epoch: None,
        })
    }

    /// A filter-group command (MQTT `$share/sg/FILTER`) on leader `n`: joins, deliveries of
    /// messages among the newest entries (as a reader finds them), acks and claims of what is
    /// pending, leaves and destroys.
    fn filter_group_command(&mut self, n: usize) -> Bytes {
        let filter = Bytes::from_static([&b"t+"[..], b"#", b"t0"][self.rng.below(3) as usize]);
        let group = Bytes::from_static(b"sg");
        let consumer = Bytes::from(format!("m{}", self.rng.below(3)));
        let replica = self.nodes[n].replica();
        let log = replica.store().log();
        let applied = replica.applied();
        let from = applied.saturating_sub(8).max(log.first_index());
        let mut found: Vec<((LogIndex, u16), Bytes)> = Vec::new();
        if from <= applied {
            for e in log.entries(from, applied).expect("log readable") {
                for (k, r) in e.records.iter().enumerate() {
                    if r.op == RecordOp::Message && (filter.as_ref() != b"t0" || r.topic == "t0") {
                        found.push(((e.index, k as u16), r.topic.clone()));
                    }
                }
            }
        }
        let pending: Vec<(LogIndex, u16)> = replica.with_state(|s| {
            s.filter_groups
                .by_key
                .get(&(group.clone(), filter.clone()))
                .map(|g| g.pel.keys().take(3).copied().collect())
                .unwrap_or_default()
        });
        let op = match self.rng.below(100) {
            0..20 => FilterGroupOp::Join,
            20..55 => FilterGroupOp::Deliver {
                consumer,
                positions: found,
                noack: self.rng.chance(100_000),
            },
            55..75 => FilterGroupOp::Ack(pending),
            75..87 => FilterGroupOp::Claim {
                consumer,
                min_idle_ms: self.rng.below(50),
                count: 3,
            },
            87..95 => FilterGroupOp::Leave(consumer),
            _ => FilterGroupOp::Destroy,
        };
        command::filter_group(&FilterGroupCommand { group, filter, op })
    }

    /// A consumer-group command, an XDEL or a MAXLEN trim on one of the streams, on leader
    /// `n`. An XDEL names one of the newest IDs; an ack, what the group has pending there (as
    /// a consumer acks what it read), and sometimes an ID it does not.
    fn stream_command(&mut self, n: usize) -> (Bytes, Vec<SubRecord>) {
        let key = Bytes::from(format!("t{}", self.rng.below(3)));
        let group = Bytes::from(format!("g{}", self.rng.below(2)));
        let consumer = Bytes::from(format!("c{}", self.rng.below(3)));
        let recent = StreamId::new(self.next_ms.saturating_sub(1 + self.rng.below(40)), 0);
        let pending: Vec<StreamId> = self.nodes[n].replica().with_state(|s| {
            s.groups
                .streams
                .get(&(0, key.clone()))
                .and_then(|g| g.get(&group))
                .map(|g| g.pel.keys().take(4).copied().collect())
                .unwrap_or_default()
        });
        let zero = StreamId::new(0, 0);
        let op = match self.rng.below(100) {
            0..30 => GroupOp::Deliver {
                consumer,
                from: if self.rng.chance(200_000) {
                    ReadFrom::Pending(zero)
                } else {
                    ReadFrom::New
                },
                count: 1 + self.rng.below(10),
                noack: self.rng.chance(100_000),
            },
            30..55 => GroupOp::Ack {
                ids: pending.into_iter().chain([recent]).collect(),
            },
            55..68 => GroupOp::Create {
                start: if self.rng.chance(500_000) {
                    GroupStart::Last
                } else {
                    GroupStart::Id(zero)
                },
                entries_read: None,
            },
            68..76 => GroupOp::AutoClaim {
                consumer,
                min_idle_ms: self.rng.below(50),
                start: zero,
                count: 5,
                justid: false,
            },
            76..80 => GroupOp::Destroy,
            80..84 => GroupOp::CreateConsumer { consumer },
            84..90 => return command::delete(0, &key, &[recent]),
            // Retention, as the leader's timer proposes it: up to a little before what it
            // applied (never the newest entry).
            90..94 => {
                let applied = self.nodes[n].replica().applied();
                return command::retain_from(applied.saturating_sub(self.rng.below(40)).max(1));
            }
            _ => return command::trim(0, &key, Trim::max_len(20 + self.rng.below(20))),
        };
        let c = GroupCommand {
            db: 0,
            key,
            group,
            op,
        };
        (command::group(&[c]), Vec::new())
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
        // The power goes first: what the dying store does as it is dropped (its log writer
        // flushes on the way out) must not reach the disk — its old handles fail from here.
        let disk = node.disk.crash(CrashMode::DropUnsynced);
        node.replica = None; // dropped without close: the abort path
        node.disk = disk;
        node.dirty = false;
        node.down_until = Some(self.now + down);
        let id = node.id;
        self.net.retain(|m| m.3 != id);
        self.note(1000 + id);
    }

    fn restart(&mut self, n: usize, seed: u64) {
        let node = &mut self.nodes[n];
        // A new process: its monotonic clock starts again.
        node.started = self.now;
        let (replica, raft, incarnation) =
            open_node(&node.disk, node.id, node.fresh, seed ^ self.now, 0);
        node.incarnation = incarnation;
        node.replica = Some(replica);
        node.raft = Some(raft);
        node.noop = None;
        node.down_until = None;
    }

    /// One simulated millisecond.
    fn tick(&mut self, seed: u64) {
        self.now += 1;
        // Deliver what is due, in order.
        self.net.sort_by_key(|m| (m.0, m.1));
        let due = self.net.partition_point(|m| m.0 <= self.now);
        let batch: Vec<_> = self.net.drain(..due).collect();
        for (_, _, from, to, msg, incarnation) in batch {
            let n = (to - 1) as usize;
            if self.nodes[n].raft.is_some() {
                self.note(from * 7 + to);
                self.step(
                    n,
                    Event::Message {
                        from,
                        incarnation,
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
            if self.nodes[n].clock(self.now) >= raft.next_deadline() {
                self.step(n, Event::Tick);
            }
            // `async` syncs on a timer, far less often than `sync` waits for the disk.
            let sync_chance = match self.model {
                Model::Sync => 400_000,
                Model::Async => 30_000,
            };
            if self.nodes[n].dirty && self.rng.chance(sync_chance) {
                self.sync(n);
            }
            if (self.faults || self.now < self.healed_proposals_until) && self.rng.chance(150_000) {
                self.propose(n);
            }
            if self.rng.chance(2_000) && self.nodes[n].replica.is_some() {
                self.nodes[n].replica().checkpoint().expect("checkpoint");
            }
            if self.faults && self.rng.chance(1_000) {
                self.compact(n);
            }
            if self.faults && self.rng.chance(300) {
                let to = self.rng.below(self.nodes.len() as u64) + 1;
                self.step(n, Event::TransferLeader { to });
            }
            if self.faults && self.changes && self.rng.chance(300) {
                self.change_members(n);
            }
        }
        if !self.faults {
            return;
        }
        // Faults: a power cut of one node (never more than one down) or, rarely, of two or
        // all of them at once (in `async` a majority's cut may lose committed entries), a lost
        // disk, a partition or a heal.
        let count = self.nodes.len();
        if self.rng.chance(800) && self.nodes.iter().all(|n| n.raft.is_some()) {
            let n = self.rng.below(count as u64) as usize;
            self.crash(n);
            if self.rng.chance(150_000) {
                let all = self.rng.chance(500_000);
                let other = (n + 1 + self.rng.below(count as u64 - 1) as usize) % count;
                for o in 0..count {
                    if o != n && (all || o == other) {
                        self.crash(o);
                    }
                }
            }
        }
        if self.wipes && self.rng.chance(1_000) {
            self.wipe();
        }
        if self.rng.chance(1_000) {
            let a = self.rng.below(count as u64) + 1;
            let b = self.rng.below(count as u64) + 1;
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

    /// Leader `n` is asked for a membership change, as `manifold cluster add|remove` asks it:
    /// a node outside the configuration (the spare, or a voter removed earlier, its directory
    /// as it left it) is added — a learner, promoted once caught up — while there are three
    /// voters; one of four voters (the leader too) is removed.
    fn change_members(&mut self, n: usize) {
        let Some(raft) = self.nodes[n].raft.as_ref() else {
            return;
        };
        if raft.role() != Role::Leader {
            return;
        }
        let config = raft.membership().clone();
        let outside: Vec<NodeId> = self
            .nodes
            .iter()
            .map(|x| x.id)
            .filter(|id| config.get(*id).is_none())
            .collect();
        let voters: Vec<NodeId> = config.voters().collect();
        let change = if !outside.is_empty() && voters.len() <= 3 {
            MembershipChange::Add {
                id: outside[self.rng.below(outside.len() as u64) as usize],
                addr: String::new(),
                learner: false,
            }
        } else if voters.len() > 3 {
            MembershipChange::Remove {
                id: voters[self.rng.below(voters.len() as u64) as usize],
            }
        } else {
            return;
        };
        self.note(match change {
            MembershipChange::Add { id, .. } => 11_000 + id,
            MembershipChange::Remove { id } => 12_000 + id,
        });
        self.step(n, Event::ChangeMembership(change));
    }

    /// The configuration last committed, as far as the simulation saw commits.
    fn committed_config(&self) -> Option<raft::Membership> {
        self.committed
            .values()
            .rev()
            .find_map(|raw| raft::membership::config_of(raw))
    }

    /// A node loses its disk (in half the cases, the follower furthest ahead as the leader
    /// goes down): it comes back empty — log, votes, members file, state — as a
    /// new incarnation of its directory, which counts for nothing until a committed change
    /// names it. As in the core's simulation, one at a time: only once the committed
    /// configuration pins every member to the directory it has now (a majority of lost
    /// disks loses data whatever the protocol does; so does a disk lost before the group
    /// pinned its founders), and only once every node durably holds an entry (two empty logs
    /// cannot tell themselves from a group being founded).
    fn wipe(&mut self) {
        if !self.nodes.iter().all(|n| n.raft.is_some()) {
            return;
        }
        let Some(config) = self.committed_config() else {
            return;
        };
        let pinned = config.members().iter().all(|m| {
            self.nodes
                .iter()
                .any(|n| n.id == m.id && n.incarnation == m.incarnation)
        });
        if !pinned
            || self
                .nodes
                .iter()
                .any(|n| n.store().log().flushed_index() == 0)
        {
            return;
        }
        // Now and then the worst case: the follower holding most of the leader's log loses
        // its disk as the leader goes down — what was committed may be on the leader alone,
        // and the wiped node must not help a node behind take over.
        let leader = self
            .nodes
            .iter()
            .position(|n| n.raft.as_ref().is_some_and(|r| r.role() == Role::Leader));
        let ahead = (0..self.nodes.len())
            .filter(|&i| Some(i) != leader)
            .max_by_key(|&i| self.nodes[i].store().log().last_index());
        let n = match (leader, ahead) {
            (Some(l), Some(a)) if self.rng.chance(500_000) => {
                self.crash(l);
                a
            }
            _ => self.rng.below(self.nodes.len() as u64) as usize,
        };
        let fresh = self.rng.next().max(1);
        self.crash(n);
        let node = &mut self.nodes[n];
        node.disk = SimDisk::new();
        node.fresh = fresh;
        let id = node.id;
        self.wiped += 1;
        self.note(13_000 + id);
    }

    /// Heals everything and lets the group settle: clients go on proposing for a second
    /// (chaos may have left no leader for long: a place not pinned when the group was founded
    /// counts for nothing until a leader pins it), then stop.
    fn settle(&mut self, seed: u64) {
        self.faults = false;
        self.healed_proposals_until = self.now + 1_000;
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

/// What a seed did.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// A digest of everything that happened (a seed replays exactly).
    trace: u64,
    images: u64,
    /// Images installed over committed entries that were not the group's (`async` only).
    diverged: u64,
    /// Retries the producer table answered.
    deduped: u64,
    /// Committed entries lost (`async` only).
    losses: u64,
    /// Acknowledged appends missing at the end (`async` only).
    lost: u64,
    /// Disks lost.
    wiped: u64,
    /// Committed configurations whose voters differ from the last one's.
    voter_changes: u64,
    /// Committed configurations that pinned a member to another directory than the last one
    /// did (a lost disk's place handed to its new directory).
    repins: u64,
}

/// Runs one seed in one model.
fn run(seed: u64, ms: u64, model: Model) -> Outcome {
    let mut sim = Sim::new(seed, model);
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
    // The members of the leader's configuration (a node removed hears from no one).
    let leader = &sim.nodes[(leaders[0] - 1) as usize];
    let config = leader.raft.as_ref().expect("up").membership().clone();
    let members: Vec<&Node> = sim
        .nodes
        .iter()
        .filter(|n| config.get(n.id).is_some())
        .collect();
    let commits: Vec<LogIndex> = members
        .iter()
        .filter_map(|n| n.raft.as_ref())
        .map(|r| r.commit_index())
        .collect();
    let logs: Vec<(LogIndex, LogIndex)> = members
        .iter()
        .map(|n| (n.store().log().first_index(), n.store().log().last_index()))
        .collect();
    assert!(
        commits.windows(2).all(|w| w[0] == w[1]),
        "seed {seed}: commit indexes {commits:?}, logs (first, last) {logs:?}"
    );
    // Every member applied all of it, to the same state.
    let states: Vec<(LogIndex, u64)> = members
        .iter()
        .map(|n| (n.replica().applied(), n.replica().digest().expect("digest")))
        .collect();
    assert!(
        states.windows(2).all(|w| w[0] == w[1]) && states[0].0 == commits[0],
        "seed {seed} ({model:?}): applied and digests {states:?}, commit {}",
        commits[0]
    );
    // Every acknowledged append is in every log exactly once (`async`: at most once), as far
    // as the log still holds it (the state digests compared the rest): a retry answered by
    // the producer table added nothing.
    let mut lost = BTreeSet::new();
    for node in &members {
        let store = node.store();
        let (first, last) = (store.log().first_index(), store.log().last_index());
        let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
        for e in store.log().entries(first, last).expect("log readable") {
            for r in e.records.iter().filter(|r| r.op == RecordOp::Message) {
                let payload = r
                    .fields
                    .first()
                    .and_then(|(_, v)| std::str::from_utf8(v).ok());
                if let Some(p) = payload.and_then(|p| p.parse().ok()) {
                    *seen.entry(p).or_default() += 1;
                }
            }
        }
        // Held: every proposal of it is in the log's range (one below it may be a copy).
        let held = sim.acked.iter().filter(|&&payload| {
            sim.proposals
                .iter()
                .filter(|p| p.3 == payload)
                .all(|p| p.2 >= first)
        });
        for payload in held {
            let copies = seen.get(payload).copied().unwrap_or(0);
            if copies == 0 && model == Model::Async {
                lost.insert(*payload);
                continue;
            }
            assert_eq!(
                copies, 1,
                "seed {seed} ({model:?}): node {}: acknowledged append {payload}",
                node.id
            );
        }
    }
    assert!(
        !sim.acked.is_empty(),
        "seed {seed}: nothing was acknowledged (leaders by term {:?}, {} entries committed, {} \
         appends proposed, commit {commits:?})",
        sim.leaders,
        sim.committed.len(),
        sim.proposals.len()
    );
    let (mut voter_changes, mut repins) = (0, 0);
    let configs: Vec<raft::Membership> = sim
        .committed
        .values()
        .filter_map(|raw| raft::membership::config_of(raw))
        .collect();
    for w in configs.windows(2) {
        let voters = |c: &raft::Membership| c.voters().collect::<Vec<_>>();
        voter_changes += u64::from(voters(&w[0]) != voters(&w[1]));
        repins += w[1]
            .members()
            .iter()
            .filter(|m| {
                w[0].get(m.id)
                    .is_some_and(|o| o.incarnation != 0 && o.incarnation != m.incarnation)
            })
            .count() as u64;
    }
    for node in &mut sim.nodes {
        node.replica.take().expect("up").close().expect("closes");
    }
    Outcome {
        trace: sim.trace,
        images: sim.images,
        diverged: sim.diverged,
        deduped: sim.deduped,
        losses: sim.losses,
        lost: lost.len() as u64,
        wiped: sim.wiped,
        voter_changes,
        repins,
    }
}

/// `RAFT_STORE_SEED=N` replays seed `N` alone (in each model).
#[test]
fn one_seed() {
    if let Some(seed) = std::env::var("RAFT_STORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        for model in [Model::Sync, Model::Async] {
            eprintln!("{model:?}: {:?}", run(seed, 6_000, model));
        }
    }
}

/// `RAFT_STORE_SEEDS=N` runs N seeds in each model (default 100).
fn seeds() -> u64 {
    std::env::var("RAFT_STORE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

/// Seeds known to make a group lose committed entries in `async` and a node install an image
/// over entries that were not the group's: run by default with the first `seeds()`. (Found
/// with `RAFT_STORE_SEEDS=300`, which prints such seeds; a change to the simulation may move
/// them.)
const ASYNC_LOSS_SEEDS: [u64; 3] = [119, 266, 427];

fn many_seeds(model: Model, extra: &[u64]) -> Vec<Outcome> {
    let mut seeds_run: Vec<u64> = (0..seeds()).collect();
    seeds_run.extend(extra.iter().filter(|s| **s >= seeds()));
    let outcomes: Vec<Outcome> = seeds_run
        .iter()
        .map(|&seed| run(seed, 6_000, model))
        .collect();
    for (seed, o) in seeds_run.iter().zip(&outcomes) {
        if o.diverged > 0 {
            eprintln!("{model:?}, seed {seed}: {o:?}");
        }
    }
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    eprintln!(
        "{model:?}, {} seeds: {} images installed ({} over entries not the group's), {} retries \
         answered by the producer table, {} committed entries lost, {} acknowledged appends \
         lost, {} voter changes committed, {} disks lost, {} places handed to a new directory",
        seeds_run.len(),
        sum(|o| o.images),
        sum(|o| o.diverged),
        sum(|o| o.deduped),
        sum(|o| o.losses),
        sum(|o| o.lost),
        sum(|o| o.voter_changes),
        sum(|o| o.wiped),
        sum(|o| o.repins),
    );
    assert!(sum(|o| o.images) > 0, "no node ever needed an image");
    assert!(sum(|o| o.voter_changes) > 0, "no voter change committed");
    assert!(sum(|o| o.repins) > 0, "no lost disk's place was handed on");
    assert!(
        sum(|o| o.deduped) > 0,
        "no retry was answered by the producer table"
    );
    outcomes
}

#[test]
fn replicated_store_and_engine_state_agree_through_partitions_drops_and_power_cuts() {
    many_seeds(Model::Sync, &[]);
}

/// Acknowledged before the disk: committed entries may be lost, the nodes never diverge.
#[test]
fn in_async_mode_a_group_may_lose_writes_but_never_diverges() {
    let outcomes = many_seeds(Model::Async, &ASYNC_LOSS_SEEDS);
    assert!(
        outcomes.iter().any(|o| o.diverged > 0),
        "no node installed an image over entries not the group's: pick new ASYNC_LOSS_SEEDS"
    );
}

#[test]
fn a_seed_replays_exactly() {
    for model in [Model::Sync, Model::Async] {
        assert_eq!(run(7, 2_000, model), run(7, 2_000, model));
    }
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
