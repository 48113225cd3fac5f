//! Three engines in one process as a Raft group on loopback (real stores in temporary
//! directories, real TCP): pipelines of appends from several writers at once on the leader are
//! all answered with the IDs they got, and every node applies the same entries. The applier
//! of a group member matches its proposals to committed entries; a proposal that reached it
//! after the commit covering it was once applied as another node's and never answered.
//! Writes made on a follower are run by the leader (forwarded) and answered as the leader's
//! engine answered them, once the follower applied them too.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use manifold_core::engine::cluster::ClusterConfig;
use manifold_core::engine::groups::GroupError;
use manifold_core::engine::{
    AppendRequest, Engine, EngineConfig, EngineError, GroupStart, GroupTx, IdSpec, ReadFrom, Step,
    TxAnswer, TxOp,
};
use manifold_core::raft::Role;
use manifold_core::store::{RealFs, SimDisk, StreamId};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Three engines on loopback, each serving forwarded writes on `rt`, and the one that leads
/// (once it takes a write).
fn group(
    dirs: &[tempfile::TempDir],
    rt: &tokio::runtime::Runtime,
) -> (Vec<Arc<Engine>>, Arc<Engine>) {
    let voters: Vec<(u64, std::net::SocketAddr)> = (1..=3u64)
        .map(|id| {
            let addr = format!("127.0.0.1:{}", free_port());
            (id, addr.parse().expect("address"))
        })
        .collect();
    let engines: Vec<Arc<Engine>> = (1..=3u64)
        .map(|id| {
            let mut config = EngineConfig {
                node_id: id,
                cluster: Some(ClusterConfig::new(voters.clone())),
                ..EngineConfig::default()
            };
            config.store.log.segment_size = 1 << 20;
            let e = Arc::new(
                Engine::open(Arc::new(RealFs), dirs[(id - 1) as usize].path(), config)
                    .expect("engine opens"),
            );
            e.serve_forwarded(rt.handle().clone());
            e
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let found = engines.iter().find(|e| {
            e.raft_status().is_some_and(|s| s.role == Role::Leader)
                && rt
                    .block_on(e.append(AppendRequest::new(
                        0,
                        Bytes::from_static(b"warm"),
                        vec![(Bytes::from_static(b"f"), Bytes::from_static(b"v"))],
                    )))
                    .is_ok()
        });
        if let Some(e) = found {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no leader took a write");
        std::thread::sleep(Duration::from_millis(20));
    };
    (engines, leader)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn pair(k: &str, v: &str) -> (Bytes, Bytes) {
    (Bytes::from(k.to_string()), Bytes::from(v.to_string()))
}

#[test]
fn pipelines_on_the_leader_are_all_answered_and_replicated() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let rt = runtime();
    let (engines, leader) = group(&dirs, &rt);
    const WRITERS: usize = 4;
    const BATCHES: usize = 40;
    const PER: usize = 50;
    let answered = rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let leader = leader.clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..BATCHES {
                    let reqs = (0..PER)
                        .map(|i| {
                            AppendRequest::new(
                                0,
                                Bytes::from(format!("w{w}")),
                                vec![(Bytes::from_static(b"i"), Bytes::from(i.to_string()))],
                            )
                        })
                        .collect();
                    let out =
                        tokio::time::timeout(Duration::from_secs(10), leader.append_many(reqs))
                            .await
                            .expect("a pipeline is answered");
                    ok += out.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
                }
                ok
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("writer");
        }
        total
    });
    assert_eq!(
        answered,
        WRITERS * BATCHES * PER,
        "every append answered with its ID"
    );
    // Every node applies all of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    for e in &engines {
        loop {
            let len: u64 = (0..WRITERS)
                .map(|w| e.len(0, format!("w{w}").as_bytes()))
                .sum();
            if len == (WRITERS * BATCHES * PER) as u64 {
                break;
            }
            assert!(Instant::now() < deadline, "a node applied {len} entries");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn writes_on_a_follower_are_run_by_the_leader_and_read_back_on_the_follower() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let rt = runtime();
    let (engines, leader) = group(&dirs, &rt);
    let follower = engines
        .iter()
        .find(|e| !Arc::ptr_eq(e, &leader))
        .expect("a follower")
        .clone();
    let key = Bytes::from_static(b"s");
    rt.block_on(async {
        // One append: the leader's ID, readable on the follower once the call returns.
        let id = follower
            .append(AppendRequest::new(0, key.clone(), vec![pair("n", "0")]))
            .await
            .expect("forwarded append")
            .expect("an ID");
        assert_eq!(follower.len(0, b"s"), 1, "read-your-write on the follower");
        assert_eq!(leader.len(0, b"s"), 1);
        // A pipeline: every answer in order, IDs rising.
        let reqs = (1..=50)
            .map(|i| AppendRequest::new(0, key.clone(), vec![pair("n", &i.to_string())]))
            .collect();
        let out = follower.append_many(reqs).await;
        let ids: Vec<StreamId> = out
            .into_iter()
            .map(|r| r.expect("appended").expect("an ID"))
            .collect();
        assert_eq!(ids.len(), 50);
        assert!(ids[0] > id && ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(follower.len(0, b"s"), 51);
        // The leader's errors come back typed.
        let mut low = AppendRequest::new(0, key.clone(), vec![pair("n", "x")]);
        low.id = IdSpec::Explicit(StreamId::new(1, 1));
        match follower.append(low).await {
            Err(EngineError::IdTooSmall { last }) => assert_eq!(last, ids[49]),
            other => panic!("an explicit ID below the top: {other:?}"),
        }
        // Consumer groups through the follower: create, read, ack; a second create is refused.
        let create = || {
            TxOp::Group(GroupTx::Create {
                db: 0,
                key: key.clone(),
                group: Bytes::from_static(b"g"),
                start: GroupStart::Id(StreamId::new(0, 0)),
                mkstream: false,
                entries_read: None,
            })
        };
        assert_eq!(
            follower.run(create()).await.expect("created"),
            TxAnswer::Done
        );
        match follower.run(create()).await {
            Err(EngineError::Group(GroupError::GroupExists)) => {}
            other => panic!("a second XGROUP CREATE: {other:?}"),
        }
        let read = follower
            .read_group(
                0,
                Bytes::from_static(b"g"),
                Bytes::from_static(b"c"),
                vec![(key.clone(), ReadFrom::New)],
                10,
                false,
            )
            .await
            .expect("group read");
        let entries = &read[0].1;
        assert_eq!(entries.len(), 10);
        assert_eq!(entries[0].id, id);
        let acked = follower
            .ack(
                0,
                key.clone(),
                Bytes::from_static(b"g"),
                entries.iter().map(|e| e.id).collect(),
            )
            .await
            .expect("ack");
        assert_eq!(acked, 10);
        assert_eq!(
            leader
                .pending_summary(0, b"s", b"g")
                .expect("summary")
                .count,
            0
        );
        // The same producer sequence twice: appended once, answered with the same ID.
        let mut once = AppendRequest::new(0, key.clone(), vec![pair("n", "once")]);
        once.producer = Some((Bytes::from_static(b"client-1"), 7));
        let a = follower.append(once.clone()).await.expect("first");
        let b = follower.append(once).await.expect("repeat");
        assert_eq!(a, b);
        assert_eq!(follower.len(0, b"s"), 52);
        // A transaction without reads: the leader runs it as one entry.
        let ops = vec![
            TxOp::Append(AppendRequest::new(0, key.clone(), vec![pair("n", "tx1")])),
            TxOp::Append(AppendRequest::new(
                0,
                Bytes::from_static(b"other"),
                vec![pair("n", "tx2")],
            )),
        ];
        let mut exec = follower
            .exec(ops, &[], None)
            .expect("exec")
            .expect("no watch");
        match exec.next().await.expect("answers") {
            Step::Done(answers) => {
                assert_eq!(answers.len(), 2);
                assert!(
                    answers
                        .iter()
                        .all(|a| matches!(a, Ok(TxAnswer::Id(Some(_)))))
                );
            }
            Step::Read(_) => panic!("no read was asked for"),
        }
        assert_eq!(follower.len(0, b"s"), 53);
        assert_eq!(follower.len(0, b"other"), 1);
    });
    assert_eq!(follower.forward_apply_timeouts(), 0);
}

#[test]
fn a_leader_whose_disk_stalls_steps_down_and_the_group_goes_on() {
    let voters: Vec<(u64, std::net::SocketAddr)> = (1..=3u64)
        .map(|id| {
            let addr = format!("127.0.0.1:{}", free_port());
            (id, addr.parse().expect("address"))
        })
        .collect();
    let rt = runtime();
    let disks: Vec<SimDisk> = (0..3).map(|_| SimDisk::new()).collect();
    let engines: Vec<Arc<Engine>> = (1..=3u64)
        .map(|id| {
            let mut cluster = ClusterConfig::new(voters.clone());
            cluster.stall_ms = 500;
            let mut config = EngineConfig {
                node_id: id,
                cluster: Some(cluster),
                ..EngineConfig::default()
            };
            config.store.log.segment_size = 1 << 20;
            let disk = disks[(id - 1) as usize].clone();
            let e = Arc::new(
                Engine::open(Arc::new(disk), std::path::Path::new("/data"), config)
                    .expect("engine opens"),
            );
            e.serve_forwarded(rt.handle().clone());
            e
        })
        .collect();
    let write = |e: &Engine, n: u64| {
        rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(15),
                e.append(AppendRequest::new(
                    0,
                    Bytes::from_static(b"s"),
                    vec![pair("n", &n.to_string())],
                )),
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let l = loop {
        if let Some(i) = engines.iter().position(|e| {
            e.raft_status().is_some_and(|s| s.role == Role::Leader)
                && matches!(write(e, 0), Ok(Ok(Some(_))))
        }) {
            break i;
        }
        assert!(Instant::now() < deadline, "no leader took a write");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Every voter pinned (a place not pinned counts for nothing, and a group that loses a
    // pinned voter before pinning the last one cannot elect): the group is fully formed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engines[l].raft_status().is_some_and(|s| {
        s.members.members().iter().all(|m| m.incarnation != 0) && s.commit >= s.members_index
    }) {
        assert!(Instant::now() < deadline, "not every voter was pinned");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The leader's fsyncs now take 3 s each: it acknowledges nothing. (Its followers' acks
    // alone still make a majority, so writes may even commit meanwhile.)
    disks[l].set_sync_latency(Duration::from_secs(3));
    let stalled_at = Instant::now();
    let other = (l + 1) % 3;
    let _ = write(&engines[l], 1);
    // It steps down once nothing was acknowledged for the bound (500 ms here).
    while engines[l]
        .raft_status()
        .is_some_and(|s| s.role == Role::Leader)
    {
        assert!(
            stalled_at.elapsed() < Duration::from_secs(5),
            "the stalled node still leads"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Another node leads and takes writes (forwarded if `other` follows).
    match write(&engines[other], 2) {
        Ok(Ok(Some(_))) => {}
        other => panic!(
            "a write with the old leader's disk stalled: {other:?}; {:?}",
            engines.iter().map(|e| e.raft_status()).collect::<Vec<_>>()
        ),
    }
    let leads: Vec<usize> = (0..3)
        .filter(|&i| {
            engines[i]
                .raft_status()
                .is_some_and(|s| s.role == Role::Leader)
        })
        .collect();
    assert!(
        !leads.contains(&l),
        "the stalled node leads again: {leads:?}"
    );
    // The disk recovers: the node follows and applies everything.
    disks[l].set_sync_latency(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(20);
    // (Write 1 may or may not have survived the step-down; writes 0 and 2 did.)
    while engines[l].len(0, b"s") < 2 || engines[l].len(0, b"s") != engines[other].len(0, b"s") {
        assert!(
            Instant::now() < deadline,
            "the recovered node never caught up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(engines[l].raft_status().map(|s| s.role), Some(Role::Leader));
}
