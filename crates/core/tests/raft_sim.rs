//! A deterministic randomized simulation of 3- and 5-node clusters of the sans-IO Raft core
//! (`manifold_core::raft`), driven the way `raft::driver` drives it.
//!
//! Each node is a `Raft` plus what its driver owns: a durable hard state, a log (the store)
//! whose prefix is durable — the rest waits for a simulated fsync before `Persisted` is
//! reported — and a state machine (the payloads applied, in order). One seeded SplitMix64
//! decides everything, so a seed replays exactly:
//! - the network: drops, delays (1–20 ms, sometimes 100–400 ms or even 0.5–2 s: stale
//!   messages of the same term), duplicates, the reordering all that causes, symmetric and
//!   one-way partitions, an isolated leader, healing;
//! - the nodes: crashes (the unsynced log suffix and all volatile state lost) and restarts
//!   from the durable hard state and log, knowing as committed what the state machine applied,
//!   or nothing, or with the state machine rebuilt; storage failures; leadership transfers;
//!   lost disks (in one seed in three: a node back with nothing — log, vote, members, state
//!   machine — as a new incarnation, one at a time, once the group pinned every directory it
//!   has); the leader's own Config entries (the founding one, pins, a lost disk's place
//!   handed to its new directory), reported at once or on a later turn like its appends;
//! - the driver: appends split into several requests, fsyncs that complete in order after a
//!   random delay (or at once), reported once, twice, in two steps or not at all when a later
//!   one covers them; the leader's `Appended` stepped at once or on a later turn (as
//!   `raft::driver` does), its store then holding entries the core does not know yet, which a
//!   `Persist` or a new leadership drops (as `replica_log::persist` and the driver do);
//! - clients: proposals to whichever node takes them (`can_propose`), 1–3 entries at a time.
//!
//! After the chaos everything heals (all nodes up, a reliable FIFO network), proposals go on a
//! little, then stop; on the idle cluster a follower may lose the leader's messages for a
//! while just as the last proposal commits, and one may crash and restart.
//!
//! Checked after every step (the run stops at the first failure, with its seed):
//! 1. election safety: at most one leader per term; a node follows only that term's leader;
//!    a vote never changes within a term, the term never falls, no vote or campaign while the
//!    storage is failed;
//! 2. log matching: any two logs holding an entry with the same index and term are identical
//!    up to it (durable and unsynced entries alike);
//! 3. leader completeness: a node becoming leader holds every entry committed so far;
//! 4. state-machine safety: a `Commit` covers entries equal to those any node committed at
//!    the same indexes, never goes backwards or past the node's log, and a committed entry is
//!    never truncated;
//! 5. the core agrees with its driver: its log is the store's (or a prefix of it, its own
//!    appends not reported yet), its hard state was saved, it never counts more durable than
//!    the store made durable, it announced every commit, only a leader sends entries and only
//!    a follower persists them, and a `Tick` at the deadline moves the deadline on;
//! 6. liveness: the healed, idle cluster converges — one leader every node follows, every
//!    node's log the leader's, durable, known durable by its core, committed and applied — and
//!    every acknowledged proposal (committed by its leader while still leading its term) is
//!    applied on every node exactly once.
//!
//! `RAFT_SIM_SEEDS=N` runs N seeds in each fsync model (default 300, so 600 in all);
//! `RAFT_SIM_SEED=S` replays seed S alone (in each model) and prints its trace.
//!
//! Two scripted scenarios at the end check two behaviours directly, each on a minimal cluster:
//! a follower restarted on an idle cluster learns the commit from heartbeats, and a leader
//! counts its own entries durable when `Persisted` reaches the core before `Appended`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use manifold_core::raft::{
    self, Action, AppendHeader, ConfigAt, Entry, Event, HardState, LogTerms, Message, NodeId, Raft,
    RaftConfig, Role, membership,
};

/// The simulation's only source of randomness: the Raft core's own seeded generator.
struct Rng(raft::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(raft::Rng::new(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A value in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// A value in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

/// Mixes `v` into the hash `h` (prefix hashes of logs, the run's fingerprint).
fn mix(h: u64, v: u64) -> u64 {
    let mut z = (h ^ v).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn entry_hash(e: &Entry) -> u64 {
    // FNV-1a over the payload, then the term.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in e.data.iter() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h, e.term)
}

/// When the store reports `Persisted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fsync {
    /// After a random delay; fsyncs complete in the order they were issued.
    Delayed,
    /// As soon as the `Persist` (or local append) is carried out.
    Immediate,
}

/// When the leader's driver reports its own appends (`Appended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Appended {
    /// Right after the append, before anything else is stepped.
    AtOnce,
    /// On a later turn, as `raft::driver` does (the node above appends, then sends the event
    /// through the driver's channel): other events may come first, the node may even have
    /// stepped down. The store then holds entries the core does not know yet, which a
    /// `Persist` or a new leadership drops (as `replica_log::persist` and the driver do).
    Later,
}

/// What a restarted node knows committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// What its state machine applied (the engine's snapshot covers it).
    Applied,
    /// Nothing: the state machine skips entries it already applied.
    Zero,
    /// Nothing, and the state machine is rebuilt from scratch.
    Rebuild,
}

/// What a seed decides about the run.
#[derive(Debug, Clone, Copy)]
struct Params {
    nodes: usize,
    fsync: Fsync,
    appended: Appended,
    /// Per-message fault rates (per mille) while the chaos lasts.
    drop_pm: u64,
    dup_pm: u64,
    slow_pm: u64,
    /// How often the driver splits a `SendEntries` into several appends.
    split_pm: u64,
    max_append_entries: u64,
    max_inflight: usize,
    /// Mean gap between client proposals and between faults (ms).
    propose_gap: u64,
    fault_gap: u64,
    /// How long the faults go on before everything heals (ms).
    chaos_ms: u64,
    /// Whether a node may lose its disk (one at a time, once the group pinned every
    /// directory it has).
    wipes: bool,
    /// Whether the leader is asked for membership changes: one spare node (id `nodes + 1`,
    /// started with `--join`) is added, members removed (the leader too), removed ones added
    /// back, never below three voters.
    changes: bool,
}

impl Params {
    fn pick(seed: u64, fsync: Fsync) -> Params {
        let mut r = Rng::new(seed ^ 0x5eed_5eed_5eed_5eed);
        // Entries per append and appends in flight: never both tiny, or a backlog of
        // proposals drains too slowly to converge in time (that is flow control, not Raft).
        let (max_append_entries, max_inflight) =
            r.pick(&[(1, 8), (3, 2), (16, 1), (4, 4), (16, 8), (1024, 64)]);
        Params {
            nodes: if seed.is_multiple_of(2) { 3 } else { 5 },
            fsync,
            appended: if seed % 4 < 2 {
                Appended::AtOnce
            } else {
                Appended::Later
            },
            drop_pm: r.pick(&[0, 10, 50, 150]),
            dup_pm: r.pick(&[0, 10, 50]),
            slow_pm: r.pick(&[0, 5, 30]),
            split_pm: r.pick(&[0, 300, 800]),
            max_append_entries,
            max_inflight,
            propose_gap: r.pick(&[5, 20, 60]),
            fault_gap: r.pick(&[30, 80, 250, 700]),
            chaos_ms: r.pick(&[2000, 3000, 8000]),
            // A lost disk comes back as a new incarnation, which counts for nothing until a
            // committed change names it.
            wipes: seed.is_multiple_of(3),
            changes: seed % 5 == 1,
        }
    }
}

/// After the chaos: proposals go on this long on a healed cluster, then stop.
const HEALED_PROPOSALS_MS: u64 = 500;
/// After the proposals stop: when a follower of the idle cluster may crash and restart.
const IDLE_CRASH_MS: u64 = 1500;
/// How long a healed, quiet cluster gets to converge (from the idle crash).
const CONVERGE_MS: u64 = 20_000;

/// A scheduled happening.
enum What {
    Deliver {
        from: usize,
        /// The sender's directory when it sent.
        incarnation: u64,
        to: usize,
        msg: Message,
    },
    /// The store's fsync of the log through `index` (entry of `term`) completes.
    Fsync {
        node: usize,
        inc: u32,
        index: u64,
        term: u64,
    },
    Tick {
        node: usize,
        inc: u32,
    },
    /// The leader's driver reports its own append (`Appended` or `ConfigAppended`) on a
    /// later turn (`Appended::Later`).
    Reported {
        node: usize,
        inc: u32,
        event: Event,
    },
    RandomTick,
    Propose,
    Fault,
    Restart {
        node: usize,
    },
    StorageRecovered {
        node: usize,
        inc: u32,
    },
    /// Heal everything: the end of the chaos.
    Heal,
    /// Just as the proposals stop, the leader's messages to one follower are lost for a while.
    IdleCut,
    /// The cut heals.
    IdleMend,
    /// A follower of the healed, idle cluster crashes (and restarts soon after).
    IdleCrash,
    /// Whether the healed cluster has converged yet.
    Converged,
}

struct Scheduled {
    at: u64,
    seq: u64,
    what: What,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest, and in scheduling order within a millisecond.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A client proposal waiting for its leader's commit.
struct Proposal {
    inc: u32,
    term: u64,
    index: u64,
    payload: Bytes,
}

/// One node: the core (absent while crashed) and what its driver owns.
struct Node {
    id: NodeId,
    raft: Option<Raft>,
    /// Incarnation: bumped at each crash, so the old one's timers and fsyncs are dropped.
    inc: u32,
    /// Entry `i + 1` at `log[i]`; `log[..durable]` survives a crash.
    log: Vec<Entry>,
    /// `hashes[i]`: hash of `log[..i]`.
    hashes: Vec<u64>,
    durable: usize,
    /// Durable.
    hard: HardState,
    /// The state machine: payloads applied, in index order (the engine's, kept over a crash
    /// unless a restart rebuilds it).
    applied: Vec<Bytes>,
    /// The last commit announced in this incarnation.
    commit: u64,
    /// When the pending `Tick` is scheduled (`u64::MAX`: none).
    tick_at: u64,
    /// When the last fsync issued completes (fsyncs complete in order).
    fsync_at: u64,
    /// When the last `Appended` is reported (in order).
    appended_at: u64,
    /// Fsyncs issued and not yet completed.
    fsyncs: u32,
    storage_failed: bool,
    /// Its data directory: 1 at first, a new number after each lost disk.
    dir: u64,
    /// The `members` file (durable).
    configs: Vec<ConfigAt>,
    /// The log changed since log matching was last checked against the others.
    dirty: bool,
    pending: Vec<Proposal>,
}

impl Node {
    fn push(&mut self, e: Entry) {
        let h = mix(self.hashes[self.log.len()], entry_hash(&e));
        self.log.push(e);
        self.hashes.push(h);
        self.dirty = true;
    }

    fn truncate(&mut self, len: usize) {
        self.log.truncate(len);
        self.hashes.truncate(len + 1);
        self.durable = self.durable.min(len);
    }

    fn term_at(&self, index: usize) -> u64 {
        if index == 0 {
            0
        } else {
            self.log[index - 1].term
        }
    }
}

/// What a seed's run ended with.
struct Outcome {
    fingerprint: u64,
    leaders: usize,
    committed: usize,
    acknowledged: usize,
    crashes: usize,
    wipes: usize,
    /// Config entries the leaders appended (founding, pins, promotions, adds, removes).
    configs: usize,
}

struct Sim {
    seed: u64,
    p: Params,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<Node>,
    /// `blocked[from][to]`: messages on that link are lost.
    blocked: Vec<Vec<bool>>,
    /// The chaos is over: no drops, duplicates, slow messages or reordering.
    reliable: bool,
    /// `link_at[from][to]`: when the last message on that link arrives (FIFO once reliable).
    link_at: Vec<Vec<u64>>,
    /// The leader of each term (election safety).
    leaders: BTreeMap<u64, NodeId>,
    /// The longest prefix any node committed, and its prefix hashes.
    committed: Vec<Entry>,
    committed_hashes: Vec<u64>,
    acknowledged: Vec<Bytes>,
    next_payload: u64,
    crashes: usize,
    wipes: usize,
    configs: usize,
    fingerprint: u64,
    /// The events of the run, when tracing.
    trace: Option<Vec<String>>,
    /// When the chaos ends, when proposals stop, when the cluster must have converged.
    chaos_end: u64,
    quiet: u64,
    converge_by: u64,
}

impl Sim {
    fn new(seed: u64, fsync: Fsync, tracing: bool) -> Sim {
        Sim::with(seed, Params::pick(seed, fsync), tracing)
    }

    /// A cluster on a reliable network, with nothing scheduled but what its nodes do: for
    /// scripted scenarios.
    fn calm(nodes: usize, fsync: Fsync, appended: Appended) -> Sim {
        let p = Params {
            nodes,
            fsync,
            appended,
            drop_pm: 0,
            dup_pm: 0,
            slow_pm: 0,
            split_pm: 0,
            max_append_entries: 1024,
            max_inflight: 64,
            propose_gap: 0,
            fault_gap: 0,
            chaos_ms: 0,
            wipes: false,
            changes: false,
        };
        let mut sim = Sim::with(1, p, false);
        sim.reliable = true;
        sim
    }

    fn with(seed: u64, p: Params, tracing: bool) -> Sim {
        let total = p.nodes + usize::from(p.changes);
        let nodes = (0..total)
            .map(|i| Node {
                id: i as NodeId + 1,
                raft: None,
                inc: 0,
                log: Vec::new(),
                hashes: vec![0],
                durable: 0,
                hard: HardState::default(),
                applied: Vec::new(),
                commit: 0,
                tick_at: u64::MAX,
                fsync_at: 0,
                appended_at: 0,
                fsyncs: 0,
                storage_failed: false,
                dir: 1,
                configs: Vec::new(),
                dirty: false,
                pending: Vec::new(),
            })
            .collect();
        Sim {
            seed,
            p,
            rng: Rng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ p.fsync as u64),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            blocked: vec![vec![false; total]; total],
            reliable: false,
            link_at: vec![vec![0; total]; total],
            leaders: BTreeMap::new(),
            committed: Vec::new(),
            committed_hashes: vec![0],
            acknowledged: Vec::new(),
            next_payload: 0,
            crashes: 0,
            wipes: 0,
            configs: 0,
            fingerprint: seed,
            trace: tracing.then(Vec::new),
            chaos_end: u64::MAX,
            quiet: u64::MAX,
            converge_by: u64::MAX,
        }
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(format!("{:>6} {}", self.now, line()));
        }
    }

    fn at(&mut self, at: u64, what: What) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            what,
        });
    }

    fn fail<T>(&self, what: String) -> Result<T, String> {
        Err(format!("at {} ms: {what}", self.now))
    }

    fn index_of(&self, id: NodeId) -> Result<usize, String> {
        match (id as usize).checked_sub(1) {
            Some(i) if i < self.nodes.len() => Ok(i),
            _ => self.fail(format!("no node {id}")),
        }
    }

    /// The bootstrap voters (the spare, if any, is not one).
    fn voters(&self) -> Vec<NodeId> {
        (1..=self.p.nodes as NodeId).collect()
    }

    /// Starts every node from an empty log.
    fn boot(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.start(i, Restart::Applied)?;
        }
        Ok(())
    }

    /// Runs the seed: chaos, healing, proposals, the idle disturbances, then waits for the
    /// cluster to converge (or the first broken invariant).
    fn run(&mut self) -> Result<Outcome, String> {
        self.boot()?;
        let gap = self.p.propose_gap;
        let first = self.rng.range(1, 2 * gap);
        self.at(first, What::Propose);
        let gap = self.p.fault_gap;
        let first = self.rng.range(1, 2 * gap);
        self.at(first, What::Fault);
        let first = self.rng.range(1, 100);
        self.at(first, What::RandomTick);
        self.chaos_end = self.p.chaos_ms;
        self.at(self.chaos_end, What::Heal);
        self.quiet = self.chaos_end + HEALED_PROPOSALS_MS;
        let cut = self.quiet + self.rng.range(0, 40);
        self.at(cut, What::IdleCut);
        let idle_crash = self.quiet + IDLE_CRASH_MS;
        self.at(idle_crash, What::IdleCrash);
        self.converge_by = idle_crash + CONVERGE_MS;
        self.at(idle_crash + 500, What::Converged);
        match self.run_until(u64::MAX)? {
            Some(outcome) => Ok(outcome),
            None => self.fail("the event queue ran dry".to_string()),
        }
    }

    /// Handles everything scheduled up to `end`; stops early once the cluster converged.
    fn run_until(&mut self, end: u64) -> Result<Option<Outcome>, String> {
        while self.queue.peek().is_some_and(|s| s.at <= end) {
            let Some(s) = self.queue.pop() else { break };
            self.now = s.at;
            if let Some(outcome) = self.handle(s)? {
                return Ok(Some(outcome));
            }
        }
        if end != u64::MAX {
            self.now = self.now.max(end);
        }
        Ok(None)
    }

    fn handle(&mut self, s: Scheduled) -> Result<Option<Outcome>, String> {
        match s.what {
            What::Deliver {
                from,
                incarnation,
                to,
                msg,
            } => {
                if self.nodes[to].raft.is_some() {
                    let from = self.nodes[from].id;
                    self.trace(|| format!("{from}->{}: {msg:?}", to + 1));
                    self.step(
                        to,
                        Event::Message {
                            from,
                            incarnation,
                            msg,
                        },
                    )?;
                }
            }
            What::Fsync {
                node,
                inc,
                index,
                term,
            } => self.fsync_done(node, inc, index, term)?,
            What::Tick { node, inc } => {
                let n = &self.nodes[node];
                if n.inc == inc && n.tick_at == s.at && n.raft.is_some() {
                    self.nodes[node].tick_at = u64::MAX;
                    self.step(node, Event::Tick)?;
                    let due = self.nodes[node].raft.as_ref().map(Raft::next_deadline);
                    if due.is_some_and(|d| d <= self.now) {
                        return self.fail(format!(
                            "node {} is due again at {due:?} right after a tick: a driver \
                             sleeping until next_deadline() would spin",
                            node + 1
                        ));
                    }
                }
            }
            What::Reported { node, inc, event } => {
                if self.nodes[node].inc == inc && self.nodes[node].raft.is_some() {
                    self.step(node, event)?;
                }
            }
            What::RandomTick => {
                if self.now < self.chaos_end {
                    let i = self.rng.below(self.nodes.len() as u64) as usize;
                    if self.nodes[i].raft.is_some() {
                        self.step(i, Event::Tick)?;
                    }
                    let next = self.now + self.rng.range(1, 200);
                    self.at(next, What::RandomTick);
                }
            }
            What::Propose => {
                if self.now < self.quiet {
                    self.propose()?;
                    let next = self.now + self.rng.range(1, 2 * self.p.propose_gap);
                    self.at(next, What::Propose);
                }
            }
            What::Fault => {
                if self.now < self.chaos_end {
                    self.fault()?;
                    let next = self.now + self.rng.range(1, 2 * self.p.fault_gap);
                    self.at(next, What::Fault);
                }
            }
            What::Restart { node } => {
                if self.nodes[node].raft.is_none() {
                    let mode = self
                        .rng
                        .pick(&[Restart::Applied, Restart::Zero, Restart::Rebuild]);
                    self.start(node, mode)?;
                }
            }
            What::StorageRecovered { node, inc } => {
                let n = &self.nodes[node];
                if n.inc == inc && n.storage_failed && n.raft.is_some() {
                    self.nodes[node].storage_failed = false;
                    self.trace(|| format!("node {} storage recovered", node + 1));
                    self.step(node, Event::StorageRecovered)?;
                }
            }
            What::Heal => self.heal_all()?,
            What::IdleCut => {
                let followers = self.followers();
                if let (Some(l), true) = (self.leader(), self.rng.chance(500))
                    && !followers.is_empty()
                {
                    let f = self.rng.pick(&followers);
                    self.blocked[l][f] = true;
                    self.trace(|| format!("idle: {} -> {} cut", l + 1, f + 1));
                    let mend = self.now + self.rng.range(400, 1200);
                    self.at(mend, What::IdleMend);
                }
            }
            What::IdleMend => {
                for row in &mut self.blocked {
                    row.fill(false);
                }
                self.trace(|| "idle: cut mended".to_string());
            }
            What::IdleCrash => {
                let followers = self.followers();
                if self.rng.chance(500) && !followers.is_empty() {
                    let i = self.rng.pick(&followers);
                    self.crash(i);
                    let back = self.now + self.rng.range(20, 300);
                    self.at(back, What::Restart { node: i });
                }
            }
            What::Converged => {
                if let Some(outcome) = self.converged()? {
                    return Ok(Some(outcome));
                }
                if self.now >= self.converge_by {
                    return self.fail(format!(
                        "no convergence {CONVERGE_MS} ms after the idle disturbances: {}",
                        self.describe()
                    ));
                }
                let next = self.now + 100;
                self.at(next, What::Converged);
            }
        }
        Ok(None)
    }

    /// Starts node `i` from its durable state (a restart after a crash, or the first start).
    fn start(&mut self, i: usize, mode: Restart) -> Result<(), String> {
        let voters = self.voters();
        let n = &mut self.nodes[i];
        let mut terms = LogTerms::new(0, 0);
        for e in &n.log {
            if !terms.append(e.term, 1) {
                return Err(format!("node {}: durable log terms fall", n.id));
            }
        }
        let commit = match mode {
            Restart::Applied => n.applied.len() as u64,
            Restart::Zero => 0,
            Restart::Rebuild => {
                n.applied.clear();
                0
            }
        };
        let cfg = RaftConfig {
            max_append_entries: self.p.max_append_entries,
            max_inflight: self.p.max_inflight,
            seed: self.seed ^ (u64::from(n.inc) << 32),
            incarnation: n.dir,
            ..RaftConfig::new(n.id, voters.clone())
        };
        // The spare starts as `--join` does: a learner in its own bootstrap view.
        let mut cfg = cfg;
        if !voters.contains(&n.id) {
            cfg.members.put(raft::Member {
                id: n.id,
                incarnation: 0,
                role: raft::MemberRole::Learner { promote: false },
                addr: String::new(),
            });
        }
        let mut raft = Raft::new(cfg, n.hard, terms, commit, self.now);
        raft.restore_configs(n.configs.clone());
        n.commit = raft.commit_index();
        n.raft = Some(raft);
        n.durable = n.log.len();
        n.fsync_at = self.now;
        n.dirty = true;
        let (id, len, hard) = (n.id, n.log.len(), n.hard);
        self.trace(|| format!("node {id} starts: log {len}, {hard:?}, commit {commit}"));
        self.check_node(i)?;
        self.schedule_tick(i);
        Ok(())
    }

    /// Node `i` crashes: its volatile state and the log's unsynced suffix are lost.
    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.raft = None;
        n.inc += 1;
        let durable = n.durable;
        n.truncate(durable);
        n.tick_at = u64::MAX;
        n.fsyncs = 0;
        n.storage_failed = false;
        n.pending.clear();
        self.crashes += 1;
        self.trace(|| format!("node {} crashes, keeping log ..={durable}", i + 1));
    }

    fn schedule_tick(&mut self, i: usize) {
        let Some(raft) = &self.nodes[i].raft else {
            return;
        };
        let due = raft.next_deadline().max(self.now);
        if due < self.nodes[i].tick_at && due != u64::MAX {
            self.nodes[i].tick_at = due;
            let inc = self.nodes[i].inc;
            self.at(due, What::Tick { node: i, inc });
        }
    }

    /// Steps `event` on node `i` and carries out what it asks, and what that leads to locally
    /// (an append's `Appended`, an immediate `Persisted`), in order.
    fn step(&mut self, i: usize, event: Event) -> Result<(), String> {
        self.step_all(i, VecDeque::from([event]))
    }

    fn step_all(&mut self, i: usize, mut local: VecDeque<Event>) -> Result<(), String> {
        while let Some(event) = local.pop_front() {
            let now = self.now;
            let Some(raft) = self.nodes[i].raft.as_mut() else {
                return self.fail(format!("node {} stepped while down", i + 1));
            };
            raft.step(now, event);
            for action in raft.take_actions() {
                self.carry_out(i, action, &mut local)?;
            }
        }
        self.check_node(i)?;
        self.schedule_tick(i);
        Ok(())
    }

    fn carry_out(
        &mut self,
        i: usize,
        action: Action,
        local: &mut VecDeque<Event>,
    ) -> Result<(), String> {
        let id = self.nodes[i].id;
        if self.trace.is_some() {
            let line = match &action {
                Action::Persist {
                    truncate_after,
                    first_index,
                    entries,
                } => format!(
                    "node {id}: Persist truncate_after {truncate_after:?} at {first_index} terms {:?}",
                    entries.iter().map(|e| e.term).collect::<Vec<_>>()
                ),
                a => format!("node {id}: {a:?}"),
            };
            self.trace(|| line);
        }
        match action {
            Action::SaveHardState(h) => {
                self.fingerprint = mix(mix(self.fingerprint, id), h.term);
                let old = self.nodes[i].hard;
                if h.term < old.term {
                    return self.fail(format!("node {id}: term falls from {old:?} to {h:?}"));
                }
                if h.term == old.term && old.voted_for != 0 && h.voted_for != old.voted_for {
                    return self.fail(format!(
                        "node {id}: vote changed within term {}: {old:?} -> {h:?}",
                        h.term
                    ));
                }
                if self.nodes[i].storage_failed && h.voted_for != 0 && h != old {
                    return self.fail(format!("node {id}: votes with its storage failed: {h:?}"));
                }
                self.nodes[i].hard = h;
            }
            Action::Send { to, msg } => {
                let to = self.index_of(to)?;
                self.send(i, to, msg);
            }
            Action::SendEntries { to, header, last } => {
                if self.role_of(i) != Some(Role::Leader) {
                    return self.fail(format!("node {id}: SendEntries while not leading"));
                }
                let to = self.index_of(to)?;
                self.send_entries(i, to, header, last)?;
            }
            Action::Persist {
                truncate_after,
                first_index,
                entries,
            } => {
                self.fingerprint = mix(mix(self.fingerprint, first_index), entries.len() as u64);
                if self.role_of(i) == Some(Role::Leader) {
                    return self.fail(format!("node {id}: Persist while leading"));
                }
                // Entries past what the core knows (this node's own, appended as leader, their
                // `Appended` not stepped yet) go too, as in `replica_log::persist`.
                let keep = truncate_after.unwrap_or(first_index.saturating_sub(1));
                if truncate_after.is_some() || self.nodes[i].log.len() as u64 > keep {
                    let t = keep as usize;
                    let n = &self.nodes[i];
                    if t >= n.log.len() {
                        return self.fail(format!(
                            "node {id}: truncates after {t} but its log ends at {}",
                            n.log.len()
                        ));
                    }
                    if (t as u64) < n.commit {
                        return self.fail(format!(
                            "node {id}: truncates after {t} below its commit {}",
                            n.commit
                        ));
                    }
                    if t < self.committed.len() && n.hashes[t + 1] == self.committed_hashes[t + 1] {
                        return self.fail(format!(
                            "node {id}: truncates committed entry {} (log ends at {})",
                            t + 1,
                            n.log.len()
                        ));
                    }
                    self.nodes[i].truncate(t);
                }
                let n = &mut self.nodes[i];
                if first_index as usize != n.log.len() + 1 || entries.is_empty() {
                    let len = n.log.len();
                    return self.fail(format!(
                        "node {id}: Persist of {} entries at {first_index} after a log of {len}",
                        entries.len()
                    ));
                }
                for e in entries {
                    if e.term < n.term_at(n.log.len()) {
                        return Err(format!("node {id}: Persist makes terms fall"));
                    }
                    n.push(e);
                }
                self.written(i, local);
            }
            Action::AppendNoop { term } => {
                let n = &mut self.nodes[i];
                let leading = n
                    .raft
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader && r.term() == term);
                if !leading || term < n.term_at(n.log.len()) {
                    return self.fail(format!("node {id}: AppendNoop({term}) while not leading"));
                }
                n.push(Entry {
                    term,
                    data: Bytes::from(format!("noop{term}")),
                });
                self.leader_appended(i, term, local);
            }
            Action::Commit(c) => self.commit(i, c)?,
            // Proposals go only where `can_propose` says, which a transfer already stops: the
            // log's end is what the node holds.
            Action::PauseProposals => {
                let n = &self.nodes[i];
                let term = n.raft.as_ref().map_or(0, Raft::term);
                local.push_back(Event::ProposalsPaused {
                    last_index: n.log.len() as u64,
                    term,
                });
            }
            Action::ResumeProposals => {}
            Action::SaveMembers(configs) => self.nodes[i].configs = configs,
            Action::AppendConfig {
                term,
                mut configs,
                members,
            } => {
                let n = &mut self.nodes[i];
                let leading = n
                    .raft
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader && r.term() == term);
                if !leading {
                    return self.fail(format!("node {id}: AppendConfig({term}) while not leading"));
                }
                let index = n.log.len() as u64 + 1;
                self.configs += 1;
                configs.push(ConfigAt {
                    index,
                    term,
                    members: members.clone(),
                });
                n.configs = configs;
                let mut record = Vec::new();
                manifold_core::store::entry::encode_entry(
                    &mut record,
                    &membership::config_entry(term, 0, &members),
                    index,
                );
                n.push(Entry {
                    term,
                    data: Bytes::from(record),
                });
                let event = Event::ConfigAppended {
                    index,
                    term,
                    members,
                };
                self.report_own(i, event, local);
                self.written(i, local);
            }
            // Nothing here compacts a log: no image is ever offered.
            Action::FetchImage { .. } => {}
            Action::RoleChanged { role, term, leader } => {
                self.fingerprint = mix(mix(self.fingerprint, id), term * 4 + role as u64);
                self.role_changed(i, role, term, leader)?;
            }
        }
        Ok(())
    }

    /// The leader appended its own entries: report `Appended` (at once or on a later turn),
    /// and make them durable.
    fn leader_appended(&mut self, i: usize, term: u64, local: &mut VecDeque<Event>) {
        let last_index = self.nodes[i].log.len() as u64;
        self.report_own(i, Event::Appended { last_index, term }, local);
        self.written(i, local);
    }

    /// The driver reports the leader's own append to its core: at once, or on a later turn
    /// (in order with its other reports), as `Params::appended` says.
    fn report_own(&mut self, i: usize, event: Event, local: &mut VecDeque<Event>) {
        match self.p.appended {
            Appended::AtOnce => local.push_back(event),
            Appended::Later => {
                let n = &mut self.nodes[i];
                let at = n.appended_at.max(self.now + self.rng.range(0, 10));
                n.appended_at = at;
                let (node, inc) = (i, n.inc);
                self.at(at, What::Reported { node, inc, event });
            }
        }
    }

    /// The log's tail was just written: make it durable now or after a simulated fsync.
    fn written(&mut self, i: usize, local: &mut VecDeque<Event>) {
        let n = &mut self.nodes[i];
        let index = n.log.len() as u64;
        let term = n.term_at(n.log.len());
        match self.p.fsync {
            Fsync::Immediate => {
                n.durable = n.log.len();
                local.push_back(Event::Persisted { index, term });
            }
            Fsync::Delayed => {
                let mut delay = self.rng.range(1, 15);
                if self.rng.chance(30) {
                    delay += self.rng.range(50, 200);
                }
                let at = n.fsync_at.max(self.now + delay);
                n.fsync_at = at;
                n.fsyncs += 1;
                let (node, inc) = (i, n.inc);
                self.at(
                    at,
                    What::Fsync {
                        node,
                        inc,
                        index,
                        term,
                    },
                );
            }
        }
    }

    /// An fsync completed. The driver reports it as a real one may: once; or not at all when
    /// a later fsync is already under way (it covers this one); or in two steps (a prefix
    /// first); or twice.
    fn fsync_done(&mut self, i: usize, inc: u32, index: u64, term: u64) -> Result<(), String> {
        let n = &mut self.nodes[i];
        if n.inc != inc || n.raft.is_none() {
            return Ok(());
        }
        n.fsyncs -= 1;
        let at = index as usize;
        let before = n.durable;
        // Still the entry written (else the write was truncated and the report is stale: the
        // core must ignore it, and it is passed on to check that).
        if at <= n.log.len() && n.term_at(at) == term {
            n.durable = n.durable.max(at);
        }
        let later = n.fsyncs > 0;
        let partial = (before + 1 < n.durable).then(|| {
            let j = before + 1 + self.rng.below((n.durable - before - 1) as u64) as usize;
            (j as u64, n.term_at(j))
        });
        match self.rng.below(20) {
            0 | 1 if later => Ok(()),
            2 | 3 if partial.is_some() => {
                if let Some((index, term)) = partial {
                    self.step(i, Event::Persisted { index, term })?;
                }
                self.step(i, Event::Persisted { index, term })
            }
            4 => {
                self.step(i, Event::Persisted { index, term })?;
                self.step(i, Event::Persisted { index, term })
            }
            _ => self.step(i, Event::Persisted { index, term }),
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Message) {
        self.fingerprint = mix(mix(self.fingerprint, (from * 8 + to) as u64), msg.term());
        if self.blocked[from][to] {
            return;
        }
        if !self.reliable && self.rng.chance(self.p.drop_pm) {
            return;
        }
        let copies = if !self.reliable && self.rng.chance(self.p.dup_pm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if !self.reliable && self.rng.chance(self.p.slow_pm) {
                // Now and then very late: a stale message from long ago in the same term.
                if self.rng.chance(200) {
                    self.rng.range(500, 2000)
                } else {
                    self.rng.range(100, 400)
                }
            } else {
                self.rng.range(1, 20)
            };
            let mut at = self.now + delay;
            if self.reliable {
                at = at.max(self.link_at[from][to]);
                self.link_at[from][to] = at;
            }
            let msg = msg.clone();
            let incarnation = self.nodes[from].dir;
            self.at(
                at,
                What::Deliver {
                    from,
                    incarnation,
                    to,
                    msg,
                },
            );
        }
    }

    /// Reads `header.prev_index + 1 ..= last` from the log and sends it, in one append or
    /// split into several (each with its own correct `prev_index` / `prev_term`).
    fn send_entries(
        &mut self,
        from: usize,
        to: usize,
        header: AppendHeader,
        last: u64,
    ) -> Result<(), String> {
        let n = &self.nodes[from];
        let (prev, last) = (header.prev_index as usize, last as usize);
        if prev > last || last > n.log.len() || n.term_at(prev) != header.prev_term {
            return self.fail(format!(
                "node {}: SendEntries {header:?} ..={last} does not fit its log of {} (term {} at {prev})",
                n.id,
                n.log.len(),
                if prev <= n.log.len() { n.term_at(prev) } else { 0 }
            ));
        }
        let mut start = prev;
        loop {
            let end = if last > start + 1 && self.rng.chance(self.p.split_pm) {
                start + 1 + self.rng.below((last - start - 1) as u64) as usize
            } else {
                last
            };
            let n = &self.nodes[from];
            let msg = Message::Append {
                header: AppendHeader {
                    prev_index: start as u64,
                    prev_term: n.term_at(start),
                    ..header
                },
                entries: n.log[start..end].to_vec(),
            };
            self.send(from, to, msg);
            start = end;
            if start >= last {
                return Ok(());
            }
        }
    }

    fn commit(&mut self, i: usize, c: u64) -> Result<(), String> {
        let n = &self.nodes[i];
        let id = n.id;
        self.fingerprint = mix(mix(self.fingerprint, id), c);
        let upto = c as usize;
        if c <= n.commit {
            return self.fail(format!("node {id}: Commit({c}) after Commit({})", n.commit));
        }
        if upto > n.log.len() {
            return self.fail(format!(
                "node {id}: Commit({c}) past its log of {}",
                n.log.len()
            ));
        }
        let known = upto.min(self.committed.len());
        if n.hashes[known] != self.committed_hashes[known] {
            let at = (1..=known)
                .find(|k| n.hashes[*k] != self.committed_hashes[*k])
                .unwrap_or(known);
            return self.fail(format!(
                "state-machine safety: node {id} commits {:?} at {at}, already committed as {:?}",
                n.log[at - 1],
                self.committed[at - 1]
            ));
        }
        for k in self.committed.len()..upto {
            self.committed.push(n.log[k].clone());
            self.committed_hashes.push(n.hashes[k + 1]);
        }
        let n = &mut self.nodes[i];
        n.commit = c;
        while n.applied.len() < upto {
            let e = &n.log[n.applied.len()];
            n.applied.push(e.data.clone());
        }
        // Proposals this node took, now committed by it while still leading their term.
        let leading = n
            .raft
            .as_ref()
            .and_then(|r| (r.role() == Role::Leader).then_some(r.term()));
        if let Some(term) = leading {
            let inc = n.inc;
            let mut k = 0;
            while k < n.pending.len() {
                let p = &n.pending[k];
                if p.inc == inc && p.term == term && p.index <= c {
                    let p = n.pending.swap_remove(k);
                    if n.log[p.index as usize - 1].data != p.payload {
                        return Err(format!(
                            "node {id}: proposal {:?} at {} lost from its own log",
                            p.payload, p.index
                        ));
                    }
                    self.acknowledged.push(p.payload);
                } else {
                    k += 1;
                }
            }
        }
        Ok(())
    }

    fn role_changed(
        &mut self,
        i: usize,
        role: Role,
        term: u64,
        leader: Option<NodeId>,
    ) -> Result<(), String> {
        let id = self.nodes[i].id;
        match role {
            Role::Leader => {
                if leader != Some(id) {
                    return self.fail(format!("node {id} leads term {term} for {leader:?}"));
                }
                if let Some(other) = self.leaders.insert(term, id)
                    && other != id
                {
                    return self.fail(format!(
                        "election safety: nodes {other} and {id} both lead term {term}"
                    ));
                }
                // As `raft::driver` does: entries of an earlier leadership whose `Appended` the
                // core ignored go before the no-op follows.
                let known = self.nodes[i].raft.as_ref().map_or(0, Raft::last_index) as usize;
                if self.nodes[i].log.len() > known {
                    if known < self.committed.len()
                        && self.nodes[i].hashes[known + 1] == self.committed_hashes[known + 1]
                    {
                        return self.fail(format!(
                            "node {id}: drops committed entry {} on leading",
                            known + 1
                        ));
                    }
                    self.nodes[i].truncate(known);
                    self.nodes[i].dirty = true;
                }
                let n = &self.nodes[i];
                let k = self.committed.len();
                if n.log.len() < k || n.hashes[k] != self.committed_hashes[k] {
                    let at = (1..=k.min(n.log.len()))
                        .find(|j| n.hashes[*j] != self.committed_hashes[*j])
                        .unwrap_or(n.log.len() + 1);
                    return self.fail(format!(
                        "leader completeness: node {id} leads term {term} without committed \
                         entry {at} (log of {}, {k} committed)",
                        n.log.len()
                    ));
                }
            }
            Role::Follower => {
                if let Some(l) = leader
                    && self.leaders.get(&term) != Some(&l)
                {
                    return self.fail(format!(
                        "node {id} follows {l} in term {term}, led by {:?}",
                        self.leaders.get(&term)
                    ));
                }
            }
            Role::PreCandidate | Role::Candidate => {
                if self.nodes[i].storage_failed {
                    return self.fail(format!(
                        "node {id} campaigns ({role:?}) with its storage failed"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The core agrees with its store, and log matching holds against every other node.
    fn check_node(&mut self, i: usize) -> Result<(), String> {
        let n = &self.nodes[i];
        let Some(raft) = &n.raft else {
            return Ok(());
        };
        let id = n.id;
        let len = n.log.len();
        // The core's log is the store's, or (its own appends not reported yet) a prefix of it.
        let last = raft.last_index() as usize;
        let prefix = last <= len && raft.last_term() == n.term_at(last);
        if !prefix || (last < len && self.p.appended == Appended::AtOnce) {
            return self.fail(format!(
                "node {id}: the core's log ends at {last} (term {}), the store's at {len} (term {})",
                raft.last_term(),
                n.term_at(len)
            ));
        }
        if last > 0 {
            let k = 1 + self.rng.below(last as u64) as usize;
            if raft.log_terms().term_at(k as u64) != Some(n.term_at(k)) {
                return self.fail(format!(
                    "node {id}: the core has term {:?} at {k}, the store {}",
                    raft.log_terms().term_at(k as u64),
                    n.term_at(k)
                ));
            }
        }
        if raft.persisted_index() > n.durable as u64 {
            return self.fail(format!(
                "node {id}: the core believes the log durable through {}, the store made it \
                 durable through {}",
                raft.persisted_index(),
                n.durable
            ));
        }
        if raft.hard_state() != n.hard {
            return self.fail(format!(
                "node {id}: the core's hard state {:?} was not saved (saved: {:?})",
                raft.hard_state(),
                n.hard
            ));
        }
        if raft.commit_index() != n.commit {
            return self.fail(format!(
                "node {id}: the core's commit {} was announced as {}",
                raft.commit_index(),
                n.commit
            ));
        }
        if raft.role() == Role::Leader && self.leaders.get(&raft.term()) != Some(&id) {
            return self.fail(format!(
                "node {id} leads term {} unannounced (leader {:?})",
                raft.term(),
                self.leaders.get(&raft.term())
            ));
        }
        if n.dirty {
            for j in 0..self.nodes.len() {
                if j != i {
                    self.check_matching(i, j)?;
                }
            }
            self.nodes[i].dirty = false;
        }
        Ok(())
    }

    /// Log matching: the highest index both logs hold with the same term has the same prefix.
    fn check_matching(&self, a: usize, b: usize) -> Result<(), String> {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        let mut k = x.log.len().min(y.log.len());
        while k > 0 && x.log[k - 1].term != y.log[k - 1].term {
            k -= 1;
        }
        if x.hashes[k] != y.hashes[k] {
            let at = (1..=k).find(|j| x.hashes[*j] != y.hashes[*j]).unwrap_or(k);
            return self.fail(format!(
                "log matching: nodes {} and {} both hold term {} at {k} but differ at {at}: \
                 {:?} vs {:?}",
                x.id,
                y.id,
                x.log[k - 1].term,
                x.log[at - 1],
                y.log[at - 1]
            ));
        }
        Ok(())
    }

    /// A client proposal to a node that takes one now (1–3 entries in one append).
    fn propose(&mut self) -> Result<(), String> {
        let takers: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i]
                    .raft
                    .as_ref()
                    .is_some_and(|r| r.can_propose().is_some())
            })
            .collect();
        if takers.is_empty() {
            return Ok(());
        }
        let i = self.rng.pick(&takers);
        let count = self.rng.range(1, 3);
        let n = &mut self.nodes[i];
        let Some(term) = n.raft.as_ref().and_then(Raft::can_propose) else {
            return Ok(());
        };
        for _ in 0..count {
            self.next_payload += 1;
            let payload = Bytes::from(format!("p{}", self.next_payload));
            n.push(Entry {
                term,
                data: payload.clone(),
            });
            n.pending.push(Proposal {
                inc: n.inc,
                term,
                index: n.log.len() as u64,
                payload,
            });
        }
        let last_index = n.log.len() as u64;
        self.trace(|| format!("node {} takes proposals ..={last_index}", i + 1));
        let mut local = VecDeque::new();
        self.leader_appended(i, term, &mut local);
        self.step_all(i, local)
    }

    /// Whether the last configuration committed (on the longest committed prefix) pins every
    /// voter to the directory it has now.
    fn all_reinstated(&self) -> bool {
        let Some(config) = self
            .committed
            .iter()
            .rev()
            .find_map(|e| membership::config_of(&e.data))
        else {
            return false;
        };
        config.members().iter().all(|m| {
            self.nodes
                .iter()
                .any(|n| n.id == m.id && m.incarnation == n.dir)
        })
    }

    fn role_of(&self, i: usize) -> Option<Role> {
        self.nodes[i].raft.as_ref().map(Raft::role)
    }

    fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].raft.is_some())
            .collect()
    }

    /// The live nodes but the leader.
    fn followers(&self) -> Vec<usize> {
        let leader = self.leader();
        self.up()
            .into_iter()
            .filter(|i| Some(*i) != leader)
            .collect()
    }

    /// The live node leading the highest term, if any.
    fn leader(&self) -> Option<usize> {
        self.up()
            .into_iter()
            .filter(|i| self.nodes[*i].raft.as_ref().map(Raft::role) == Some(Role::Leader))
            .max_by_key(|i| self.nodes[*i].raft.as_ref().map_or(0, Raft::term))
    }

    fn fault(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        let roll = self.rng.below(100);
        match roll {
            0..=17 => {
                let up = self.up();
                if !up.is_empty() {
                    // The leader more often than not: that is where the interesting crashes are.
                    let i = match self.leader() {
                        Some(l) if self.rng.chance(500) => l,
                        _ => self.rng.pick(&up),
                    };
                    self.crash(i);
                    let back = self.now + self.rng.range(20, 1500);
                    self.at(back, What::Restart { node: i });
                }
            }
            18..=31 => {
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500)).collect();
                for a in 0..n {
                    for b in 0..n {
                        self.blocked[a][b] = side[a] != side[b];
                    }
                }
                self.trace(|| format!("partition {side:?}"));
            }
            32..=41 => {
                let a = self.rng.below(n as u64) as usize;
                let b = self.rng.below(n as u64) as usize;
                self.blocked[a][b] = a != b;
                self.trace(|| format!("one-way partition {} -> {}", a + 1, b + 1));
            }
            42..=47 => {
                if let Some(l) = self.leader() {
                    for o in 0..n {
                        self.blocked[l][o] = o != l;
                        self.blocked[o][l] = o != l;
                    }
                    self.trace(|| format!("leader {} isolated", l + 1));
                }
            }
            48..=67 => {
                for row in &mut self.blocked {
                    row.fill(false);
                }
                self.trace(|| "network healed".to_string());
            }
            68..=84 => {
                if let Some(l) = self.leader() {
                    let to = self.rng.range(1, n as u64);
                    self.trace(|| format!("transfer from {} to {to}", l + 1));
                    self.step(l, Event::TransferLeader { to })?;
                }
            }
            92..=94 if self.p.changes => {
                if let Some(l) = self.leader()
                    && let Some(config) =
                        self.nodes[l].raft.as_ref().map(|r| r.membership().clone())
                {
                    let outside: Vec<NodeId> = self
                        .nodes
                        .iter()
                        .map(|n| n.id)
                        .filter(|id| config.get(*id).is_none())
                        .collect();
                    let voters = config.voters().count();
                    let change = if !outside.is_empty() && (voters <= 3 || self.rng.chance(500)) {
                        raft::MembershipChange::Add {
                            id: self.rng.pick(&outside),
                            addr: String::new(),
                            learner: false,
                        }
                    } else if voters > 3 {
                        let ids: Vec<NodeId> = config.voters().collect();
                        raft::MembershipChange::Remove {
                            id: self.rng.pick(&ids),
                        }
                    } else {
                        return Ok(());
                    };
                    self.trace(|| format!("node {} asked: {change:?}", l + 1));
                    self.step(l, Event::ChangeMembership(change))?;
                }
            }
            90..=91 if self.p.wipes && self.all_reinstated() => {
                // A disk lost: the node comes back empty (log, vote, members, state machine)
                // as a new incarnation, which counts for nothing until a committed change names
                // it. One at a time: only once the committed configuration names every voter's
                // directory as it is now (a majority of lost disks loses data whatever the
                // protocol does; so does a disk lost before the group pinned its bootstrap
                // voters, when the lost copy's acknowledgements may have counted). And only
                // once every other node durably holds an entry: two empty logs — a lost disk
                // and a node that never received anything — cannot tell themselves from a
                // group being founded (the node that never received anything was as good as
                // down: the lost disk is a second fault).
                let up: Vec<usize> = self
                    .up()
                    .into_iter()
                    .filter(|&i| {
                        self.nodes
                            .iter()
                            .enumerate()
                            .all(|(j, n)| j == i || n.durable > 0)
                    })
                    .collect();
                if !up.is_empty() {
                    let i = self.rng.pick(&up);
                    self.crash(i);
                    let n = &mut self.nodes[i];
                    n.truncate(0);
                    n.durable = 0;
                    n.hard = HardState::default();
                    n.applied.clear();
                    n.configs.clear();
                    self.wipes += 1;
                    n.dir = 100 + self.wipes as u64;
                    self.trace(|| format!("node {} loses its disk", i + 1));
                    let back = self.now + self.rng.range(20, 1500);
                    self.at(back, What::Restart { node: i });
                }
            }
            85..=89 => {
                let up = self.up();
                if !up.is_empty() {
                    let i = self.rng.pick(&up);
                    if !self.nodes[i].storage_failed {
                        self.nodes[i].storage_failed = true;
                        self.trace(|| format!("node {} storage fails", i + 1));
                        self.step(i, Event::StorageFailed)?;
                        let inc = self.nodes[i].inc;
                        let back = self.now + self.rng.range(50, 600);
                        self.at(back, What::StorageRecovered { node: i, inc });
                    }
                }
            }
            _ => {
                let down: Vec<usize> = (0..n).filter(|i| self.nodes[*i].raft.is_none()).collect();
                if !down.is_empty() {
                    let i = self.rng.pick(&down);
                    let mode = self
                        .rng
                        .pick(&[Restart::Applied, Restart::Zero, Restart::Rebuild]);
                    self.start(i, mode)?;
                }
            }
        }
        Ok(())
    }

    /// The end of the chaos: every node up and healthy, the network whole and reliable.
    fn heal_all(&mut self) -> Result<(), String> {
        self.trace(|| "everything heals".to_string());
        self.reliable = true;
        for row in &mut self.blocked {
            row.fill(false);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].raft.is_none() {
                let mode = self
                    .rng
                    .pick(&[Restart::Applied, Restart::Zero, Restart::Rebuild]);
                self.start(i, mode)?;
            } else if self.nodes[i].storage_failed {
                self.nodes[i].storage_failed = false;
                self.step(i, Event::StorageRecovered)?;
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            match &n.raft {
                Some(r) => {
                    let _ = write!(
                        s,
                        "[node {}: {:?} term {} leader {:?} log {} (term {}) persisted {} commit {}{}] ",
                        n.id,
                        r.role(),
                        r.term(),
                        r.leader(),
                        r.last_index(),
                        r.last_term(),
                        r.persisted_index(),
                        r.commit_index(),
                        if self.p.changes || self.p.wipes {
                            format!(
                                ", members {} at {}",
                                r.membership(),
                                r.configs().last().map_or(0, |c| c.index)
                            )
                        } else {
                            String::new()
                        }
                    );
                }
                None => {
                    let _ = write!(s, "[node {}: down] ", n.id);
                }
            }
        }
        s
    }

    /// The healed cluster has one leader every node follows, and every node committed and
    /// applied the leader's whole log: then every acknowledged proposal is applied once.
    fn converged(&self) -> Result<Option<Outcome>, String> {
        let Some(l) = self.leader() else {
            return Ok(None);
        };
        let Some(lr) = &self.nodes[l].raft else {
            return Ok(None);
        };
        let ln = &self.nodes[l];
        // The members of the leader's configuration (a removed node hears from no one).
        let members: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| lr.membership().get(n.id).is_some())
            .collect();
        for n in members.iter().copied() {
            let Some(r) = &n.raft else { return Ok(None) };
            if r.term() != lr.term()
                || r.leader() != Some(ln.id)
                || r.commit_index() != lr.last_index()
                || r.last_index() != n.log.len() as u64
                || r.persisted_index() != r.last_index()
                || n.log.len() != ln.log.len()
                || n.hashes.last() != ln.hashes.last()
                || n.applied.len() != n.log.len()
            {
                return Ok(None);
            }
        }
        for n in members.iter().copied() {
            let mut counts: HashMap<&Bytes, usize> = HashMap::new();
            for p in &n.applied {
                *counts.entry(p).or_default() += 1;
            }
            if let Some((p, c)) = counts.iter().find(|(_, c)| **c > 1) {
                return self.fail(format!("node {} applied {p:?} {c} times", n.id));
            }
            if let Some(p) = self.acknowledged.iter().find(|p| !counts.contains_key(p)) {
                return self.fail(format!(
                    "acknowledged proposal {p:?} never applied on node {}",
                    n.id
                ));
            }
        }
        Ok(Some(Outcome {
            fingerprint: self.fingerprint,
            leaders: self.leaders.len(),
            committed: self.committed.len(),
            acknowledged: self.acknowledged.len(),
            crashes: self.crashes,
            wipes: self.wipes,
            configs: self.configs,
        }))
    }
}

/// Runs one seed; a failure comes with the parameters and, when tracing, the trace.
fn run_seed(seed: u64, fsync: Fsync, tracing: bool) -> Result<Outcome, String> {
    let mut sim = Sim::new(seed, fsync, tracing);
    let result = sim.run();
    if let Some(trace) = &sim.trace {
        for line in trace {
            println!("{line}");
        }
    }
    result.map_err(|e| format!("seed {seed} ({:?}): {e}", sim.p))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn run_seeds(fsync: Fsync) {
    if let Some(seed) = env_u64("RAFT_SIM_SEED") {
        match run_seed(seed, fsync, true) {
            Ok(o) => println!(
                "seed {seed}: {} leaders, {} committed, {} acknowledged, {} crashes, {} wipes",
                o.leaders, o.committed, o.acknowledged, o.crashes, o.wipes
            ),
            Err(e) => panic!("{e}"),
        }
        return;
    }
    let seeds = env_u64("RAFT_SIM_SEEDS").unwrap_or(300);
    let mut failures = Vec::new();
    let (mut committed, mut acknowledged, mut crashes, mut wipes, mut configs) = (0, 0, 0, 0, 0);
    for seed in 0..seeds {
        match run_seed(seed, fsync, false) {
            Ok(o) => {
                committed += o.committed;
                acknowledged += o.acknowledged;
                crashes += o.crashes;
                wipes += o.wipes;
                configs += o.configs;
            }
            Err(e) => failures.push((seed, e)),
        }
    }
    println!(
        "{fsync:?} fsync: {} of {seeds} seeds pass ({committed} entries committed, \
         {acknowledged} proposals acknowledged, {crashes} crashes, {wipes} lost disks, \
         {configs} configurations appended)",
        seeds as usize - failures.len()
    );
    if failures.is_empty() {
        return;
    }
    let details: Vec<&str> = failures.iter().take(10).map(|(_, e)| e.as_str()).collect();
    panic!(
        "{fsync:?} fsync: {} of {seeds} seeds fail (replay one with RAFT_SIM_SEED=<seed>); \
         first failures:\n{}",
        failures.len(),
        details.join("\n")
    );
}

#[test]
fn clusters_stay_safe_and_live_with_delayed_fsync() {
    run_seeds(Fsync::Delayed);
}

#[test]
fn clusters_stay_safe_and_live_with_immediate_fsync() {
    run_seeds(Fsync::Immediate);
}

#[test]
fn a_seed_replays_exactly() {
    for fsync in [Fsync::Delayed, Fsync::Immediate] {
        for seed in [3, 8] {
            let a = run_seed(seed, fsync, false).map(|o| o.fingerprint);
            let b = run_seed(seed, fsync, false).map(|o| o.fingerprint);
            assert_eq!(a, b, "seed {seed} ({fsync:?}) replays differently");
        }
    }
}

/// The core's commit index on node `i` and its last index.
fn commit_and_last(sim: &Sim, i: usize) -> (u64, u64) {
    sim.nodes[i]
        .raft
        .as_ref()
        .map_or((0, 0), |r| (r.commit_index(), r.last_index()))
}

/// Runs a scripted scenario, failing the test with the simulation's error.
fn scripted(f: impl FnOnce(&mut Sim) -> Result<(), String>, sim: &mut Sim) {
    if let Err(e) = f(sim) {
        panic!("{e}\n{}", sim.describe());
    }
}

/// A 3-node cluster commits everything, goes idle, and a follower restarts knowing nothing
/// committed (`commit` 0: a state machine rebuilt from the log). The leader has nothing new
/// to append, so only its heartbeats can tell the follower the commit: they carry
/// min(commit, the follower's match index), and the follower, which holds the leader's whole
/// log durably, must commit up to it within a few heartbeats. (A follower that times out,
/// pre-votes and hears its leader again is in the same position.)
#[test]
fn a_follower_restarted_on_an_idle_cluster_learns_the_commit() {
    let mut sim = Sim::calm(3, Fsync::Delayed, Appended::AtOnce);
    scripted(
        |sim| {
            sim.boot()?;
            sim.run_until(2_000)?;
            sim.propose()?;
            sim.run_until(3_000)?;
            let leader = sim.leader().ok_or("no leader after 3 s")?;
            let (commit, last) = commit_and_last(sim, leader);
            if commit != last || (0..3).any(|i| commit_and_last(sim, i).0 != commit) {
                return Err(format!(
                    "not all committed through {last} before the restart"
                ));
            }
            let f = (leader + 1) % 3;
            sim.crash(f);
            sim.start(f, Restart::Rebuild)?;
            sim.run_until(8_000)?;
            let (f_commit, _) = commit_and_last(sim, f);
            if f_commit != last {
                return Err(format!(
                    "node {} restarted at 3 s with its whole log durable; 5 s of heartbeats \
                     from an idle leader later its commit is {f_commit}, the leader's {last}",
                    f + 1
                ));
            }
            Ok(())
        },
        &mut sim,
    );
}

/// A 3-node cluster whose leader's driver reports `Appended` on a later turn (as
/// `raft::driver` does) and whose store is durable at once, so each `Persisted` reaches the
/// core before the `Appended` for its entries. The core must keep that report until the
/// `Appended` arrives and then count its own entries durable: with one follower down, a
/// proposal the leader and the other follower both hold durably must commit.
#[test]
fn a_leader_counts_its_own_durable_entries_when_persisted_comes_first() {
    let mut sim = Sim::calm(3, Fsync::Immediate, Appended::Later);
    scripted(
        |sim| {
            sim.boot()?;
            sim.run_until(2_000)?;
            let leader = sim.leader().ok_or("no leader after 2 s")?;
            sim.crash((leader + 1) % 3);
            sim.propose()?;
            sim.run_until(5_000)?;
            let (commit, last) = commit_and_last(sim, leader);
            if commit != last {
                let persisted = sim.nodes[leader]
                    .raft
                    .as_ref()
                    .map_or(0, Raft::persisted_index);
                return Err(format!(
                    "the leader's store is durable through {last} (each `Persisted` stepped \
                     before its `Appended`), its core counts {persisted}; 3 s after the \
                     proposal its commit is {commit} of {last}"
                ));
            }
            Ok(())
        },
        &mut sim,
    );
}
