//! Three engines in one process as a Raft group on loopback (real stores in temporary
//! directories, real TCP): pipelines of appends from several writers at once on the leader are
//! all answered with the IDs they got, and every node applies the same entries. The applier
//! of a group member matches its proposals to committed entries; a proposal that reached it
//! after the commit covering it was once applied as another node's and never answered.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use manifold_core::engine::cluster::ClusterConfig;
use manifold_core::engine::{AppendRequest, Engine, EngineConfig};
use manifold_core::raft::Role;
use manifold_core::store::RealFs;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn pipelines_on_the_leader_are_all_answered_and_replicated() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
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
            Arc::new(
                Engine::open(Arc::new(RealFs), dirs[(id - 1) as usize].path(), config)
                    .expect("engine opens"),
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The leader, once it takes writes.
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
