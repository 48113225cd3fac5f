//! Filter groups (MQTT shared subscriptions with wildcards) through the engine's public API:
//! racing consumers never get the same message, only messages after the join and matching the
//! filter are handed out, acknowledgements, a leaving consumer's messages claimed by another,
//! and the group across a power cut.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use manifold_core::engine::{AppendRequest, Engine, EngineConfig, EngineError, GroupError};
use manifold_core::store::{CrashMode, SimDisk};

fn config() -> EngineConfig {
    support::small_config()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn publish(key: &str, value: u64) -> AppendRequest {
    AppendRequest::new(0, b(key), vec![(b("payload"), b(&value.to_string()))])
}

#[test]
fn shared_subscribers_split_the_matching_messages_and_take_over_a_leavers()
-> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = Arc::new(Engine::open(
        Arc::new(disk.clone()),
        &PathBuf::from("/data"),
        config(),
    )?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let (g, f) = (b("workers"), b("sensors/+"));
    rt.block_on(async {
        engine.append(publish("sensors/early", 0)).await?;
        assert!(matches!(
            engine
                .filter_group_read(g.clone(), f.clone(), b("x"), 10, false)
                .await,
            Err(EngineError::Group(GroupError::NoGroup))
        ));
        assert!(engine.filter_group_join(g.clone(), f.clone()).await?);
        assert!(
            !engine.filter_group_join(g.clone(), f.clone()).await?,
            "joining again"
        );
        let mut readers = Vec::new();
        for r in 0..3 {
            let (engine, g, f) = (engine.clone(), g.clone(), f.clone());
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let mut idle = 0;
                while idle < 40 {
                    let d = engine
                        .filter_group_read(g.clone(), f.clone(), b(&format!("c{r}")), 5, false)
                        .await?;
                    if d.is_empty() {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    } else {
                        idle = 0;
                        got.extend(d.into_iter().map(|m| (m.position, m.topic)));
                    }
                }
                Ok::<_, EngineError>(got)
            }));
        }
        for n in 1..=300u64 {
            let key = match n % 4 {
                0 => "other/1",
                k => ["sensors/a", "sensors/b", "sensors/c"][k as usize - 1],
            };
            engine.append(publish(key, n)).await?;
        }
        let mut all = Vec::new();
        for r in readers {
            all.extend(r.await.expect("join")?);
        }
        let unique: BTreeSet<_> = all.iter().map(|(p, _)| *p).collect();
        assert_eq!(all.len(), 225, "every matching message once: {}", all.len());
        assert_eq!(unique.len(), 225);
        assert!(
            all.iter()
                .all(|(_, t)| t.starts_with(b"sensors/") && t.as_ref() != b"sensors/early")
        );
        let group = engine.filter_group(&g, &f).expect("group");
        assert_eq!(group.pel.len(), 225);
        // Acknowledge c0's, release c1's and let c2 take them over.
        let c0: Vec<_> = group
            .consumers
            .get(&b("c0"))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        assert_eq!(
            engine
                .filter_group_ack(g.clone(), f.clone(), c0.clone())
                .await?,
            c0.len() as u64
        );
        let released = engine
            .filter_group_leave(g.clone(), f.clone(), b("c1"))
            .await?;
        let taken = engine
            .filter_group_claim(g.clone(), f.clone(), b("c2"), 3_600_000, 1000)
            .await?;
        assert_eq!(
            taken.len() as u64,
            released,
            "released messages are claimable at once"
        );
        assert!(taken.iter().all(|d| d.message.is_some()));
        Ok::<_, EngineError>(())
    })?;
    let digest = engine.state_digest();
    let group = engine.filter_group(&g, &f).expect("group");
    assert!(group.consumers.get(&b("c1")).is_none());
    // A power cut: the group as it was.
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    let engine = Engine::open(Arc::new(after), &PathBuf::from("/data"), config())?;
    assert_eq!(engine.state_digest(), digest);
    assert_eq!(engine.filter_group(&g, &f), Some(group));
    rt.block_on(async {
        engine.append(publish("sensors/z", 999)).await?;
        let d = engine
            .filter_group_read(g.clone(), f.clone(), b("c9"), 10, false)
            .await?;
        assert_eq!(d.len(), 1);
        assert!(engine.filter_group_destroy(g.clone(), f.clone()).await?);
        assert!(engine.filter_group(&g, &f).is_none());
        Ok::<_, EngineError>(())
    })
}
