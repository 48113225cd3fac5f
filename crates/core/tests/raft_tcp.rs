//! Three Raft nodes over real TCP on loopback, each with its own store in a temporary
//! directory, driven by the real driver (`raft::driver`) and transport: a leader is elected,
//! proposals replicate and commit everywhere byte for byte; the leader is stopped (its
//! threads and connections gone, its store closed as a crash would leave it) and a new one
//! takes over within a second; the old node restarts from its directory and catches up.
//! Nothing acknowledged is lost or doubled.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use manifold_core::raft::driver::{Driver, DriverConfig, DriverHandle, Hooks, Status};
use manifold_core::raft::transport::{Transport, TransportConfig};
use manifold_core::raft::{self, Event, HardState, NodeId, Raft, RaftConfig, Role};
use manifold_core::store::{
    EntryKind, LogIndex, MessageStore, NewEntry, RealFs, RecordOp, Storage, StoreConfig,
    StoreError, StreamId, SubRecord, Term,
};

/// What the test's node does for its driver: the proposal gate (open only while leader), the
/// no-op, and the commit index with a way to wait for it.
struct Node {
    store: Arc<MessageStore>,
    /// `Some(term)` while this node leads `term`: proposals append under this lock.
    gate: Mutex<Option<Term>>,
    commit: Mutex<LogIndex>,
    committed: Condvar,
    /// What the driver said, in order, of configurations appended and of this node being
    /// its group's only voter.
    calls: Mutex<Vec<Call>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    /// A Config entry at this index with these voters.
    Config(LogIndex, Vec<NodeId>),
    SoleVoter(Option<LogIndex>),
}

impl Node {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Hooks for Node {
    fn append_noop(&self, term: Term) -> Result<LogIndex, StoreError> {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.store.log().append(&NewEntry::noop(term, 0))?.index)
    }
    fn append_config(
        &self,
        term: Term,
        members: &raft::Membership,
        before: &mut dyn FnMut(LogIndex) -> Result<(), StoreError>,
    ) -> Result<LogIndex, StoreError> {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let log = self.store.log();
        before(log.last_index() + 1)?;
        let index = log
            .append(&raft::membership::config_entry(term, 0, members))?
            .index;
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Call::Config(index, members.voters().collect()));
        Ok(index)
    }
    fn sole_voter(&self, first: Option<LogIndex>) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Call::SoleVoter(first));
    }
    fn committed(&self, index: LogIndex) {
        if let Err(e) = self.store.dispatch_to(index) {
            panic!("dispatch to {index}: {e}");
        }
        *self.commit.lock().unwrap_or_else(|p| p.into_inner()) = index;
        self.committed.notify_all();
    }
    fn role_changed(&self, status: &Status) {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) =
            (status.role == Role::Leader).then_some(status.term);
    }
    fn pause_proposals(&self) -> LogIndex {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        *gate = None;
        self.store.log().last_index()
    }
    fn resume_proposals(&self) {}
    fn fetch_image(&self, _leader: raft::NodeId, _diverged: bool) {}
}

struct Running {
    node: Arc<Node>,
    driver: Driver,
    handle: DriverHandle,
    transport: Arc<Transport>,
}

fn config(id: NodeId, peers: &[(NodeId, SocketAddr)]) -> RaftConfig {
    RaftConfig {
        members: raft::Membership::bootstrap(
            &peers
                .iter()
                .map(|(p, a)| (*p, a.to_string()))
                .collect::<Vec<_>>(),
        ),
        ..RaftConfig::new(id, vec![1, 2, 3])
    }
}

fn start(id: NodeId, dir: &Path, listener: TcpListener, peers: &[(NodeId, SocketAddr)]) -> Running {
    start_with(id, dir, listener, peers, false)
}

/// `join`: this node starts as a learner waiting to be added (`serve --join`).
fn start_with(
    id: NodeId,
    dir: &Path,
    listener: TcpListener,
    peers: &[(NodeId, SocketAddr)],
    join: bool,
) -> Running {
    let storage: Arc<dyn Storage> = Arc::new(RealFs);
    let store = Arc::new(
        MessageStore::open(storage.clone(), dir, StoreConfig::default()).expect("store opens"),
    );
    let hard = HardState::load(storage.as_ref(), dir).expect("hard state");
    let terms = raft::log_terms(&store).expect("terms");
    let mut cfg = config(id, peers);
    if join && let Some(me) = cfg.members.get_mut(id) {
        me.role = raft::MemberRole::Learner { promote: false };
    }
    let mut core = Raft::new(cfg, hard, terms, store.dispatched_index(), 0);
    core.restore_configs(raft::members_file::load(storage.as_ref(), dir).expect("members"));
    let node = Arc::new(Node {
        store: store.clone(),
        gate: Mutex::new(None),
        commit: Mutex::new(store.dispatched_index()),
        committed: Condvar::new(),
        calls: Mutex::new(Vec::new()),
    });
    let (channel, deliver) = raft::driver::event_channel();
    let transport = Arc::new(
        Transport::start(id, listener, peers, deliver, TransportConfig::default())
            .expect("transport starts"),
    );
    let driver = Driver::start(
        core,
        store,
        storage,
        dir.to_path_buf(),
        Some(transport.clone()),
        node.clone(),
        DriverConfig::default(),
        channel,
    )
    .expect("driver starts");
    let handle = driver.handle();
    Running {
        node,
        driver,
        handle,
        transport,
    }
}

impl Running {
    /// Proposes payload `n` if this node leads; `(index, term)` of its entry.
    fn propose(&self, n: u64) -> Option<(LogIndex, Term)> {
        let gate = self.node.gate.lock().unwrap_or_else(|p| p.into_inner());
        let term = (*gate)?;
        let entry = NewEntry {
            term,
            kind: EntryKind::Command,
            timestamp_ms: n,
            command: Bytes::new(),
            records: vec![SubRecord {
                op: RecordOp::Message,
                db: 0,
                topic: Bytes::from_static(b"t"),
                id: StreamId::new(n, 0),
                message_key: Bytes::new(),
                properties: Vec::new(),
                fields: vec![(Bytes::from_static(b"n"), Bytes::from(n.to_string()))],
            }],
        };
        let index = self.node.store.log().append(&entry).ok()?.index;
        drop(gate);
        self.handle.event(Event::Appended {
            last_index: index,
            term,
        });
        Some((index, term))
    }

    /// Waits until `index` commits here (false at the timeout).
    fn wait_commit(&self, index: LogIndex, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut c = self.node.commit.lock().unwrap_or_else(|p| p.into_inner());
        while *c < index {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            c = match self.node.committed.wait_timeout(c, deadline - now) {
                Ok((c, _)) => c,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    fn stop(self) {
        self.driver.stop();
        if let Ok(t) = Arc::try_unwrap(self.transport) {
            t.shutdown();
        }
    }
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    addrs: Vec<(NodeId, SocketAddr)>,
    nodes: BTreeMap<NodeId, Running>,
}

impl Cluster {
    fn start() -> Cluster {
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addrs: Vec<(NodeId, SocketAddr)> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (i as NodeId + 1, l.local_addr().expect("addr")))
            .collect();
        let dirs: Vec<tempfile::TempDir> =
            (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
        let mut nodes = BTreeMap::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let id = i as NodeId + 1;
            nodes.insert(id, start(id, dirs[i].path(), l, &addrs));
        }
        Cluster { dirs, addrs, nodes }
    }

    fn dir(&self, id: NodeId) -> PathBuf {
        self.dirs[(id - 1) as usize].path().to_path_buf()
    }

    /// The one leader all running nodes agree on, waiting up to `timeout`.
    fn leader(&self, timeout: Duration) -> Option<NodeId> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let leaders: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.handle.status().role == Role::Leader)
                .map(|(id, _)| *id)
                .collect();
            if let [one] = leaders[..]
                && self
                    .nodes
                    .get(&one)
                    .is_some_and(|n| n.node.gate.lock().map(|g| g.is_some()).unwrap_or(false))
            {
                return Some(one);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Proposes payloads `from..to` through whoever leads, each waited for until committed
    /// on the leader; returns those acknowledged. A write is tried again, as a client would,
    /// only when it is certainly not in the log: no leader took it, or the index it was
    /// appended at committed with another term's entry (an election on a stalled machine).
    /// One whose fate is unknown after 5 s is not acknowledged and not tried again.
    fn write(&self, range: std::ops::Range<u64>) -> Vec<u64> {
        let mut acked = Vec::new();
        for n in range {
            for attempt in 1..=5 {
                let Some(leader) = self.leader(Duration::from_secs(3)) else {
                    eprintln!("write {n}: no leader (attempt {attempt})");
                    continue;
                };
                let node = &self.nodes[&leader];
                let Some((index, term)) = node.propose(n) else {
                    eprintln!("write {n}: node {leader} no longer leads (attempt {attempt})");
                    continue;
                };
                let committed = node.wait_commit(index, Duration::from_secs(5));
                let kept = node.node.store.log().term_at(index).ok() == Some(term);
                let st =
                    || -> Vec<Status> { self.nodes.values().map(|n| n.handle.status()).collect() };
                if committed && kept {
                    acked.push(n);
                } else if committed {
                    eprintln!(
                        "write {n} at {index} term {term} lost to an election: {:?}",
                        st()
                    );
                    continue;
                } else {
                    eprintln!(
                        "write {n} at {index} term {term} not acknowledged: {:?}",
                        st()
                    );
                }
                break;
            }
        }
        acked
    }
}

/// Payloads in `store`'s log, in order.
fn payloads(store: &MessageStore) -> Vec<u64> {
    let last = store.log().last_index();
    store
        .log()
        .entries(1, last)
        .expect("log reads")
        .iter()
        .flat_map(|e| e.records.iter().map(|r| r.id.ms))
        .collect()
}

#[test]
fn three_nodes_over_tcp_elect_replicate_fail_over_and_catch_up() {
    // The drivers' role changes and warnings are printed if the test fails.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .with_env_filter("info")
        .try_init();
    let mut c = Cluster::start();
    let first = c
        .leader(Duration::from_secs(5))
        .expect("a leader is elected");
    let acked = c.write(1..201);
    assert_eq!(acked.len(), 200, "a healthy group acknowledges every write");
    // Every node commits everything and holds the same bytes.
    let last = c.nodes[&first].node.store.log().last_index();
    for n in c.nodes.values() {
        assert!(n.wait_commit(last, Duration::from_secs(5)));
    }
    for i in 1..=last {
        let raws: Vec<Bytes> = c
            .nodes
            .values()
            .map(|n| n.node.store.log().read_raw(i).expect("entry"))
            .collect();
        assert!(raws.windows(2).all(|w| w[0] == w[1]), "entry {i} differs");
    }

    // The leader stops: a new one leads within a second.
    let stopped_at = Instant::now();
    c.nodes.remove(&first).expect("leader running").stop();
    let second = c.leader(Duration::from_secs(5)).expect("a new leader");
    let failover = stopped_at.elapsed();
    assert_ne!(second, first);
    eprintln!("failover: {failover:?}");
    assert!(
        failover < Duration::from_secs(1),
        "failover took {failover:?}"
    );
    let more = c.write(201..301);
    assert_eq!(more.len(), 100, "two of three acknowledge every write");

    // The old leader restarts from its directory and catches up.
    let listener = TcpListener::bind(c.addrs[(first - 1) as usize].1).expect("rebind");
    let dir = c.dir(first);
    let restarted = start(first, &dir, listener, &c.addrs);
    c.nodes.insert(first, restarted);
    let leader = c.leader(Duration::from_secs(5)).expect("a leader");
    let last = c.nodes[&leader].node.store.log().last_index();
    for (id, n) in &c.nodes {
        assert!(
            n.wait_commit(last, Duration::from_secs(5)),
            "node {id} catches up"
        );
    }
    let expected: Vec<u64> = acked.iter().chain(&more).copied().collect();
    for (id, n) in &c.nodes {
        assert_eq!(
            payloads(&n.node.store),
            expected,
            "node {id}: every write once, in order"
        );
        assert!(
            !n.node
                .calls()
                .iter()
                .any(|c| matches!(c, Call::SoleVoter(Some(_)))),
            "node {id} of three is never told its acknowledgement commits"
        );
    }
    for (_, n) in std::mem::take(&mut c.nodes) {
        n.stop();
    }
}

/// A group of one commits what its log acknowledges, and the driver says so to the node above
/// (which then applies on the acknowledgement); it stops saying so before the configuration
/// that makes a second node a voter is appended — an entry after it needs that node too.
#[test]
fn a_group_of_one_is_told_it_commits_alone_until_a_second_voter_is_appended() {
    let (l1, l2) = (
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        TcpListener::bind("127.0.0.1:0").expect("bind"),
    );
    let addrs = vec![
        (1, l1.local_addr().expect("addr")),
        (2, l2.local_addr().expect("addr")),
    ];
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut c = Cluster {
        dirs: Vec::new(),
        addrs: addrs.clone(),
        nodes: BTreeMap::new(),
    };
    c.nodes.insert(1, start(1, d1.path(), l1, &addrs[..1]));
    assert_eq!(
        c.leader(Duration::from_secs(5)),
        Some(1),
        "a group of one leads"
    );
    assert_eq!(c.write(1..21).len(), 20);
    // Its founding configuration (itself) is its first entry, and from there it commits alone
    // (before, campaigning, it was told it does not).
    let calls = c.nodes[&1].node.calls();
    assert!(
        calls.ends_with(&[Call::Config(1, vec![1]), Call::SoleVoter(Some(1))])
            && calls[..calls.len() - 2]
                .iter()
                .all(|c| *c == Call::SoleVoter(None)),
        "{calls:?}"
    );

    // Node 2 joins: added as a learner (still one voter), caught up, then promoted.
    c.nodes
        .insert(2, start_with(2, d2.path(), l2, &addrs, true));
    c.nodes[&1]
        .handle
        .event(Event::ChangeMembership(raft::MembershipChange::Add {
            id: 2,
            addr: addrs[1].1.to_string(),
            learner: false,
        }));
    let deadline = Instant::now() + Duration::from_secs(10);
    let promoted = loop {
        let calls = c.nodes[&1].node.calls();
        if let Some(at) = calls
            .iter()
            .position(|c| matches!(c, Call::Config(_, v) if v.len() == 2))
        {
            break calls[..=at].to_vec();
        }
        assert!(Instant::now() < deadline, "node 2 promoted: {calls:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    // While node 2 was a learner the group still had one voter; the promotion's entry was
    // appended only after the driver withdrew the word.
    let n = promoted.len();
    assert!(
        matches!(promoted[n - 2], Call::SoleVoter(None)),
        "told before the second voter's configuration: {promoted:?}"
    );
    assert!(
        promoted[..n - 2]
            .iter()
            .any(|c| matches!(c, Call::Config(_, v) if v == &[1])),
        "node 2 was first a learner: {promoted:?}"
    );
    // Two voters now: writes commit on both.
    let more = c.write(21..41);
    assert_eq!(more.len(), 20);
    let last = c.nodes[&1].node.store.log().last_index();
    assert!(c.nodes[&2].wait_commit(last, Duration::from_secs(5)));
    assert!(
        !c.nodes[&1].node.calls()[n..]
            .iter()
            .any(|c| matches!(c, Call::SoleVoter(Some(_)))),
        "two voters: never alone again"
    );
    for (_, n) in std::mem::take(&mut c.nodes) {
        n.stop();
    }
}
