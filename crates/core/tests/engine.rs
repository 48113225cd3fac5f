//! The engine's first slice through its public API: the propose → append → commit → apply
//! pipeline, Redis stream semantics for append / range / delete / drop, waiting readers,
//! restarts and power cuts.

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use manifold_core::engine::{
    AppendRequest, Engine, EngineConfig, EngineError, IdSpec, RetainEffect, Trim, TrimTo, Wake,
};
use manifold_core::store::{
    CqConfig, CrashMode, EntryKind, FlushMode, IndexConfig, LogConfig, NodeLimits, SimDisk,
    Storage, StoreConfig, StreamId,
};

fn config() -> EngineConfig {
    // Small files: the simulated disk holds every byte in memory.
    EngineConfig {
        store: StoreConfig {
            log: LogConfig {
                segment_size: 64 * 1024,
                index_records_per_file: 256,
                ..LogConfig::default()
            },
            queues: CqConfig {
                arena_file_slots: 64,
                ..CqConfig::default()
            },
            index: IndexConfig {
                slots: 64,
                entries: 256,
            },
            // Small stream nodes, so approximate trims cut by whole nodes within a short
            // test; no byte limit (the RESP differential test covers it against Redis).
            stream_nodes: NodeLimits {
                max_entries: NODE as u32,
                max_bytes: 0,
            },
            ..StoreConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// Entries per stream node in these tests (`StoreConfig::stream_nodes`).
const NODE: u64 = 4;

fn open(disk: &SimDisk) -> Result<Engine, EngineError> {
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    Engine::open(storage, &PathBuf::from("/data"), config())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime")
}

fn req(key: &str, id: IdSpec, value: &str) -> AppendRequest {
    AppendRequest {
        db: 0,
        key: Bytes::copy_from_slice(key.as_bytes()),
        id,
        fields: vec![(
            Bytes::from_static(b"v"),
            Bytes::copy_from_slice(value.as_bytes()),
        )],
        properties: Vec::new(),
        message_key: Bytes::new(),
        nomkstream: false,
        trim: None,
        retain: RetainEffect::None,
        producer: None,
    }
}

fn id(ms: u64, seq: u64) -> StreamId {
    StreamId::new(ms, seq)
}

fn ids(
    engine: &Engine,
    key: &str,
    start: Bound<StreamId>,
    end: Bound<StreamId>,
    count: Option<usize>,
    reverse: bool,
) -> Vec<StreamId> {
    engine
        .read_range(0, key.as_bytes(), start, end, count, reverse)
        .expect("read")
        .into_iter()
        .map(|m| m.id)
        .collect()
}

#[test]
fn appends_follow_redis_id_rules_and_read_back_in_ranges() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk)?;
    let far = runtime().block_on(async {
        let a = engine
            .append(req("s", IdSpec::Auto, "1"))
            .await?
            .expect("id");
        let b = engine
            .append(req("s", IdSpec::Auto, "2"))
            .await?
            .expect("id");
        assert!(b > a, "auto IDs grow: {a} then {b}");
        let c = engine
            .append(req("s", IdSpec::AutoSeq(b.ms), "3"))
            .await?
            .expect("id");
        assert_eq!(c, id(b.ms, b.seq + 1));
        assert!(matches!(
            engine.append(req("s", IdSpec::Explicit(c), "x")).await,
            Err(EngineError::IdTooSmall { .. })
        ));
        assert!(matches!(
            engine
                .append(req("t", IdSpec::Explicit(id(0, 0)), "x"))
                .await,
            Err(EngineError::IdZero)
        ));
        let far = id(c.ms + 1000, 7);
        assert_eq!(
            engine.append(req("s", IdSpec::Explicit(far), "4")).await?,
            Some(far)
        );
        Ok::<_, EngineError>(far)
    })?;
    assert_eq!(engine.len(0, b"s"), 4);
    assert_eq!(
        engine.len(0, b"t"),
        0,
        "a rejected first append creates nothing"
    );
    let all = ids(
        &engine,
        "s",
        Bound::Unbounded,
        Bound::Unbounded,
        None,
        false,
    );
    assert_eq!(all.len(), 4);
    let mut rev = all.clone();
    rev.reverse();
    assert_eq!(
        ids(&engine, "s", Bound::Unbounded, Bound::Unbounded, None, true),
        rev
    );
    // Exclusive and inclusive bounds, COUNT.
    assert_eq!(
        ids(
            &engine,
            "s",
            Bound::Excluded(all[0]),
            Bound::Included(all[2]),
            None,
            false
        ),
        all[1..=2]
    );
    assert_eq!(
        ids(
            &engine,
            "s",
            Bound::Included(all[1]),
            Bound::Excluded(all[3]),
            Some(1),
            false
        ),
        all[1..2]
    );
    assert_eq!(
        ids(
            &engine,
            "s",
            Bound::Unbounded,
            Bound::Excluded(all[3]),
            Some(2),
            true
        ),
        vec![all[2], all[1]]
    );
    let m = engine.read_range(
        0,
        b"s",
        Bound::Included(all[2]),
        Bound::Included(all[2]),
        None,
        false,
    )?;
    assert_eq!(
        m[0].fields,
        vec![(Bytes::from_static(b"v"), Bytes::from_static(b"3"))]
    );
    let info = engine.stream_info(0, b"s")?.expect("stream");
    assert_eq!(
        (info.length, info.entries_added, info.last_generated_id),
        (4, 4, far)
    );
    assert_eq!(info.first_entry.map(|m| m.id), Some(all[0]));
    Ok(())
}

#[test]
fn a_trim_limit_caps_the_live_entries_removed() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk)?;
    let key = Bytes::from_static(b"lim");
    let rt = runtime();
    let all = rt.block_on(async {
        let mut all = Vec::new();
        for n in 1..=10u64 {
            all.push(
                engine
                    .append(req("lim", IdSpec::Explicit(id(n, 0)), "v"))
                    .await?
                    .expect("id"),
            );
        }
        engine.delete(0, key.clone(), vec![all[2]]).await?;
        Ok::<_, EngineError>(all)
    })?;
    let live = |engine: &Engine| {
        ids(
            engine,
            "lim",
            Bound::Unbounded,
            Bound::Unbounded,
            None,
            false,
        )
    };
    // MAXLEN 2 would remove 7 live entries; LIMIT 3 removes the oldest three live ones (the
    // deleted 3-0 between them goes too).
    let removed = rt.block_on(engine.trim(0, key.clone(), Trim::max_len(2).with_limit(3)))?;
    assert_eq!(removed, 3);
    assert_eq!(live(&engine), all[4..].to_vec());
    // MINID 10-0 would remove five; LIMIT 2 removes two.
    let removed =
        rt.block_on(engine.trim(0, key.clone(), Trim::min_id(id(10, 0)).with_limit(2)))?;
    assert_eq!(removed, 2);
    assert_eq!(live(&engine), all[6..].to_vec());
    // A limit above what the cut needs changes nothing; LIMIT 0 is no limit.
    let removed = rt.block_on(engine.trim(
        0,
        key.clone(),
        Trim::max_len(2).with_limit(manifold_core::engine::APPROX_TRIM_LIMIT),
    ))?;
    assert_eq!(removed, 2);
    let removed = rt.block_on(engine.trim(0, key.clone(), Trim::max_len(0).with_limit(0)))?;
    assert_eq!(removed, 2);
    assert!(live(&engine).is_empty());
    // The limit is in the log: a replay from scratch cuts the same.
    drop(engine);
    let replay = disk.crash(CrashMode::KeepUnsynced);
    let engine = open(&replay)?;
    assert_eq!(engine.len(0, b"lim"), 0);
    Ok(())
}

#[test]
fn mqtt_filters_match_topics_with_the_dollar_rule() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk)?;
    runtime().block_on(async {
        for key in ["sport/tennis/p1", "sport", "$SYS/load", "/lead", "a+b"] {
            engine.append(req(key, IdSpec::Auto, "v")).await?;
        }
        let mut other_db = req("sport/golf", IdSpec::Auto, "v");
        other_db.db = 1;
        engine.append(other_db).await?;
        Ok::<_, EngineError>(())
    })?;
    let matching = |filter: &str| -> Result<Vec<String>, EngineError> {
        let mut keys: Vec<String> = engine
            .topics_matching(filter.as_bytes())?
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        Ok(keys)
    };
    // `a+b` is a Redis key but not an MQTT topic name; db 1 is not MQTT's.
    assert_eq!(matching("#")?, ["/lead", "sport", "sport/tennis/p1"]);
    assert_eq!(matching("sport/#")?, ["sport", "sport/tennis/p1"]);
    assert_eq!(matching("+/tennis/+")?, ["sport/tennis/p1"]);
    assert_eq!(matching("+/+")?, ["/lead"]);
    assert_eq!(matching("$SYS/#")?, ["$SYS/load"]);
    assert!(matching("+/load")?.is_empty());
    assert!(matches!(
        engine.topics_matching(b"sport/#/p1"),
        Err(EngineError::BadTopic(_))
    ));
    Ok(())
}

#[test]
fn find_by_key_returns_live_messages_newest_first() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk)?;
    let keyed = |n: u64, key: &str| {
        let mut r = req("devices", IdSpec::Explicit(id(n, 0)), &n.to_string());
        r.message_key = Bytes::copy_from_slice(key.as_bytes());
        r
    };
    let rt = runtime();
    rt.block_on(async {
        for (n, key) in [(1, "k1"), (2, "k2"), (3, "k1"), (4, "k1"), (5, "k1")] {
            engine.append(keyed(n, key)).await?;
        }
        engine
            .delete(0, Bytes::from_static(b"devices"), vec![id(4, 0)])
            .await?;
        Ok::<_, EngineError>(())
    })?;
    let found = |engine: &Engine, max: usize| -> Result<Vec<StreamId>, EngineError> {
        Ok(engine
            .find_by_key(0, b"devices", b"k1", 0, u64::MAX, max)?
            .into_iter()
            .map(|m| m.id)
            .collect())
    };
    assert_eq!(found(&engine, 10)?, [id(5, 0), id(3, 0), id(1, 0)]);
    assert_eq!(found(&engine, 2)?, [id(5, 0), id(3, 0)]);
    assert!(
        engine
            .find_by_key(0, b"other", b"k1", 0, u64::MAX, 10)?
            .is_empty()
    );
    // Trimmed messages and an older incarnation's are gone from the answer too.
    rt.block_on(engine.trim(0, Bytes::from_static(b"devices"), Trim::max_len(1)))?;
    assert_eq!(found(&engine, 10)?, [id(5, 0)]);
    rt.block_on(async {
        engine.drop_topic(0, Bytes::from_static(b"devices")).await?;
        engine.append(keyed(1, "k1")).await?;
        Ok::<_, EngineError>(())
    })?;
    assert_eq!(found(&engine, 10)?, [id(1, 0)]);
    // The index survives a restart.
    engine.close()?;
    let engine = open(&disk)?;
    assert_eq!(found(&engine, 10)?, [id(1, 0)]);
    Ok(())
}

fn retained_payloads(engine: &Engine, filter: &str) -> Result<Vec<(String, String)>, EngineError> {
    let mut out: Vec<(String, String)> = engine
        .retained(filter.as_bytes())?
        .iter()
        .map(|(key, r)| {
            (
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(&r.fields[0].1).into_owned(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

#[test]
fn retained_messages_are_set_cleared_and_survive_restarts_and_power_cuts() -> Result<(), EngineError>
{
    let disk = SimDisk::new();
    let engine = open(&disk)?;
    let publish = |key: &str, value: &str, retain: RetainEffect| {
        let mut r = req(key, IdSpec::Auto, value);
        r.retain = retain;
        r
    };
    let rt = runtime();
    rt.block_on(async {
        engine
            .append(publish("home/t1", "20", RetainEffect::Set))
            .await?;
        engine
            .append(publish("home/t1", "21", RetainEffect::Set))
            .await?;
        engine
            .append(publish("home/t1", "22", RetainEffect::None))
            .await?;
        engine
            .append(publish("home/t2", "5", RetainEffect::Set))
            .await?;
        engine
            .append(publish("home/t2", "", RetainEffect::Clear))
            .await?;
        engine
            .append(publish("$SYS/up", "1", RetainEffect::Set))
            .await?;
        engine
            .append(publish("gone", "x", RetainEffect::Set))
            .await?;
        engine.drop_topic(0, Bytes::from_static(b"gone")).await?;
        // A rejected append (ID too small) sets nothing.
        let mut late = publish("home/t1", "old", RetainEffect::Set);
        late.id = IdSpec::Explicit(id(1, 0));
        assert!(matches!(
            engine.append(late).await,
            Err(EngineError::IdTooSmall { .. })
        ));
        // XDEL and trims of the stream leave the retained copy alone.
        engine
            .trim(0, Bytes::from_static(b"home/t1"), Trim::max_len(0))
            .await?;
        Ok::<_, EngineError>(())
    })?;
    let want = vec![("home/t1".to_string(), "21".to_string())];
    assert_eq!(retained_payloads(&engine, "home/#")?, want);
    assert_eq!(retained_payloads(&engine, "#")?, want, "# skips $ topics");
    assert_eq!(
        retained_payloads(&engine, "$SYS/+")?,
        [("$SYS/up".to_string(), "1".to_string())]
    );
    assert!(engine.retained_of(0, b"home/t2").is_none());
    assert!(engine.retained_of(0, b"gone").is_none());
    let digest = engine.state_digest();
    // A clean restart loads the snapshot written at close.
    engine.close()?;
    let engine = open(&disk)?;
    assert_eq!(engine.state_digest(), digest);
    assert_eq!(retained_payloads(&engine, "home/#")?, want);
    rt.block_on(engine.append(publish("home/t3", "9", RetainEffect::Set)))?;
    let digest = engine.state_digest();
    // A power cut: the snapshot at the store's checkpoint, then the log after it.
    let disk = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    let engine = open(&disk)?;
    assert_eq!(engine.state_digest(), digest);
    assert_eq!(
        retained_payloads(&engine, "home/t3")?,
        [("home/t3".to_string(), "9".to_string())]
    );
    Ok(())
}

#[test]
fn retained_bytes_are_limited() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let mut config = config();
    config.max_retained_bytes = 100;
    let engine = Engine::open(Arc::new(disk.clone()), &PathBuf::from("/data"), config)?;
    let publish = |key: &str, len: usize, retain: RetainEffect| {
        let mut r = req(key, IdSpec::Auto, &"x".repeat(len));
        r.retain = retain;
        r
    };
    runtime().block_on(async {
        // Each counts key (3) + field name (1) + value.
        engine.append(publish("r/a", 40, RetainEffect::Set)).await?;
        engine.append(publish("r/b", 40, RetainEffect::Set)).await?;
        let refused = engine.append(publish("r/c", 40, RetainEffect::Set)).await;
        assert!(matches!(
            refused,
            Err(EngineError::RetainedLimit { limit: 100 })
        ));
        assert_eq!(
            engine.len(0, b"r/c"),
            0,
            "a refused publish appends nothing"
        );
        // Plain publishes are not retained and not limited; replacing counts the difference.
        engine
            .append(publish("r/c", 40, RetainEffect::None))
            .await?;
        engine.append(publish("r/a", 50, RetainEffect::Set)).await?;
        // Clearing frees its bytes.
        engine
            .append(publish("r/b", 0, RetainEffect::Clear))
            .await?;
        engine.append(publish("r/c", 40, RetainEffect::Set)).await?;
        Ok::<_, EngineError>(())
    })?;
    let mut kept: Vec<usize> = engine
        .retained(b"r/+")?
        .iter()
        .map(|(_, r)| r.fields[0].1.len())
        .collect();
    kept.sort();
    assert_eq!(kept, [40, 50]);
    Ok(())
}

#[test]
fn snapshots_follow_the_store_checkpoint_and_replay_after_them() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let root = PathBuf::from("/data");
    let mut config = config();
    // A snapshot and dispatch checkpoint after every applied batch.
    config.store.dispatch_checkpoint_interval_ms = 0;
    let engine = Engine::open(Arc::new(disk.clone()), &root, config.clone())?;
    let rt = runtime();
    rt.block_on(async {
        for n in 0..200u64 {
            let mut r = req(&format!("s/{}", n % 7), IdSpec::Auto, &n.to_string());
            r.retain = if n % 3 == 0 {
                RetainEffect::Set
            } else {
                RetainEffect::None
            };
            engine.append(r).await?;
        }
        Ok::<_, EngineError>(())
    })?;
    let digest = engine.state_digest();
    // Stopped without a clean close: the applier finishes the snapshot it was writing, nothing
    // more.
    drop(engine);
    let snapshots = root.join(manifold_core::engine::SNAPSHOT_DIR);
    let files = |disk: &SimDisk| -> Vec<String> {
        let mut names: Vec<String> = disk
            .list(&snapshots)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !n.ends_with(".tmp"))
            .collect();
        names.sort();
        names
    };
    let left = files(&disk);
    // What the last checkpoint needs (a snapshot, or a journal and the snapshot it carries
    // forward), and at most one snapshot written after it.
    assert!(
        (1..=3).contains(&left.len()),
        "older files are removed: {left:?}"
    );
    for mode in [CrashMode::KeepUnsynced, CrashMode::DropUnsynced] {
        let after = disk.crash(mode);
        let engine = Engine::open(Arc::new(after.clone()), &root, config.clone())?;
        assert_eq!(engine.state_digest(), digest);
        // Open keeps only what the dispatch point needs (and the engine may have started its
        // next snapshot since).
        let kept = files(&after);
        let journals = kept.iter().filter(|n| n.ends_with(".journal")).count();
        assert!(
            kept.len() <= 2 + journals && journals <= 1,
            "open keeps what it loaded: {kept:?}"
        );
    }
    // Any damaged file the dispatch point needs is refused, never silently replaced by an
    // empty state.
    let opened = disk.crash(CrashMode::KeepUnsynced);
    drop(Engine::open(
        Arc::new(opened.clone()),
        &root,
        config.clone(),
    )?);
    let needed = files(&opened);
    assert!(
        needed.iter().any(|n| n.parse::<u64>().is_ok_and(|i| i > 1)),
        "snapshots were taken while applying: {needed:?}"
    );
    // Damage one needed file at a time (and put the byte back after): the journal, if the
    // checkpoint has one, and the oldest snapshot (the journal's base, or the checkpoint's own
    // snapshot; a newer one was written after the checkpoint and is not needed).
    let mut damage: Vec<String> = needed
        .iter()
        .filter(|n| n.ends_with(".journal"))
        .cloned()
        .collect();
    damage.extend(needed.iter().find(|n| n.parse::<u64>().is_ok()).cloned());
    let mut refused = 0;
    let mut disk = opened;
    for name in &damage {
        let broken = disk.crash(CrashMode::KeepUnsynced);
        let path = snapshots.join(name);
        let f = broken.open(&path, false).expect("file");
        let mut was = [0u8; 1];
        f.read_at(30, &mut was).expect("read");
        f.write_at(30, &[was[0] ^ 0xee]).expect("write");
        drop(f);
        assert!(
            matches!(
                Engine::open(Arc::new(broken.clone()), &root, config.clone()),
                Err(EngineError::Store(
                    manifold_core::store::StoreError::Corruption { .. }
                ))
            ),
            "damaged {name} of {needed:?} must be refused"
        );
        refused += 1;
        disk = broken.crash(CrashMode::KeepUnsynced);
        let f = disk.open(&path, false).expect("file");
        f.write_at(30, &was).expect("restore");
    }
    let engine = Engine::open(Arc::new(disk.crash(CrashMode::KeepUnsynced)), &root, config)?;
    assert_eq!(engine.state_digest(), digest, "restored, it opens again");
    assert!(refused >= 1);
    Ok(())
}

#[test]
fn a_producer_repeat_gets_the_original_answer_and_appends_nothing() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = Arc::new(open(&disk)?);
    let send = |seq: u64, id_spec: IdSpec| {
        let mut r = req("orders", id_spec, &format!("seq {seq}"));
        r.producer = Some((Bytes::from_static(b"gateway-7"), seq));
        r
    };
    let rt = runtime();
    let first = rt.block_on(async {
        let first = engine.append(send(1, IdSpec::Explicit(id(100, 0)))).await?;
        assert_eq!(first, Some(id(100, 0)));
        // The repeat is answered from the table: re-evaluated it would be "ID too small".
        assert_eq!(
            engine.append(send(1, IdSpec::Explicit(id(100, 0)))).await?,
            first
        );
        // A send refused before the log appended nothing and is not remembered: its retry is
        // evaluated afresh.
        let refused = engine.append(send(2, IdSpec::Explicit(id(50, 0)))).await;
        assert!(matches!(refused, Err(EngineError::IdTooSmall { last }) if last == id(100, 0)));
        let again = engine.append(send(2, IdSpec::Explicit(id(50, 0)))).await;
        assert!(matches!(again, Err(EngineError::IdTooSmall { last }) if last == id(100, 0)));
        // Another producer with the same sequence is another message.
        let mut other = req("orders", IdSpec::Auto, "x");
        other.producer = Some((Bytes::from_static(b"gateway-8"), 1));
        assert!(engine.append(other).await?.expect("id") > id(100, 0));
        // Concurrent repeats of one send: one message, one answer for all.
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let engine = engine.clone();
            let r = send(3, IdSpec::Auto);
            tasks.push(tokio::spawn(async move { engine.append(r).await }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.expect("join")?);
        }
        assert!(answers.iter().all(|a| *a == answers[0] && a.is_some()));
        Ok::<_, EngineError>(first)
    })?;
    assert_eq!(engine.len(0, b"orders"), 3);
    // Remembered across a clean restart and a power cut (snapshot, then the log after it).
    let engine = Arc::try_unwrap(engine).expect("one owner");
    engine.close()?;
    let engine = open(&disk)?;
    assert_eq!(rt.block_on(engine.append(send(1, IdSpec::Auto)))?, first);
    let disk = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    let engine = open(&disk)?;
    assert_eq!(rt.block_on(engine.append(send(1, IdSpec::Auto)))?, first);
    assert_eq!(engine.len(0, b"orders"), 3);
    // Only the newest 64 sequences of a producer are remembered.
    rt.block_on(async {
        for seq in 10..(10 + manifold_core::engine::PRODUCER_WINDOW as u64) {
            engine.append(send(seq, IdSpec::Auto)).await?;
        }
        Ok::<_, EngineError>(())
    })?;
    let len = engine.len(0, b"orders");
    let again = rt.block_on(engine.append(send(1, IdSpec::Auto)))?;
    assert!(again > first);
    assert_eq!(engine.len(0, b"orders"), len + 1);
    Ok(())
}

static PRODUCER_CLOCK: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(1_700_000_000_000);

fn producer_clock() -> u64 {
    PRODUCER_CLOCK.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn the_expiry_timer_forgets_idle_producers_through_the_log() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let mut config = config();
    config.clock = producer_clock;
    config.producer_ttl_ms = 60_000;
    config.timer_tick_ms = 5;
    let engine = Engine::open(
        Arc::new(disk.clone()),
        &PathBuf::from("/data"),
        config.clone(),
    )?;
    let send = |producer: &'static str, seq: u64| {
        let mut r = req("orders", IdSpec::Auto, "x");
        r.producer = Some((Bytes::from_static(producer.as_bytes()), seq));
        r
    };
    let rt = runtime();
    let wait_for = |want: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while engine.producer_count() != want {
            assert!(
                std::time::Instant::now() < deadline,
                "the timer did not fire"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let first = rt.block_on(engine.append(send("old", 1)))?;
    PRODUCER_CLOCK.fetch_add(30_000, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(engine.append(send("young", 1)))?;
    assert_eq!(
        rt.block_on(engine.append(send("old", 1)))?,
        first,
        "still remembered"
    );
    // 60 s after its last append "old" is past the TTL; "young" (30 s later) is not.
    PRODUCER_CLOCK.fetch_add(30_001, std::sync::atomic::Ordering::SeqCst);
    wait_for(1);
    let again = rt.block_on(engine.append(send("old", 1)))?;
    assert!(again > first, "a forgotten producer's repeat appends again");
    assert_eq!(engine.len(0, b"orders"), 3);
    // The expiry is a command in the log: a restart (replaying it) agrees.
    let digest = engine.state_digest();
    let disk = disk.crash(CrashMode::KeepUnsynced);
    drop(engine);
    config.timer_tick_ms = 3_600_000;
    let engine = Engine::open(Arc::new(disk), &PathBuf::from("/data"), config)?;
    assert_eq!(engine.state_digest(), digest);
    assert_eq!(engine.producer_count(), 2);
    Ok(())
}

static RETENTION_CLOCK: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(1_700_000_000_000);

fn retention_clock() -> u64 {
    RETENTION_CLOCK.load(std::sync::atomic::Ordering::SeqCst)
}

/// One-hour retention looked for every 5 ms, timers every 5 ms, a checkpoint cycle whenever
/// the applier can, on the clock `tick`.
fn retention_config(tick: fn() -> u64) -> EngineConfig {
    let mut config = config();
    config.clock = tick;
    config.retention_ms = 3_600_000;
    config.retention_check_ms = 5;
    config.timer_tick_ms = 5;
    config.store.dispatch_checkpoint_interval_ms = 0;
    config
}

#[test]
fn retention_removes_old_entries_pending_and_segments_but_keeps_retained() -> Result<(), EngineError>
{
    use manifold_core::engine::{GroupStart, ReadFrom};
    let disk = SimDisk::new();
    let root = PathBuf::from("/data");
    let config = retention_config(retention_clock);
    let engine = Engine::open(Arc::new(disk.clone()), &root, config.clone())?;
    let rt = runtime();
    let big = "x".repeat(200);
    rt.block_on(async {
        for n in 0..600u64 {
            let mut r = req(&format!("old/{}", n % 3), IdSpec::Auto, &big);
            if n == 599 {
                r.retain = RetainEffect::Set;
            }
            engine.append(r).await?;
        }
        engine
            .group_create(
                0,
                Bytes::from_static(b"old/0"),
                Bytes::from_static(b"g"),
                GroupStart::Id(StreamId::default()),
                false,
                None,
            )
            .await?;
        engine
            .read_group(
                0,
                Bytes::from_static(b"g"),
                Bytes::from_static(b"c"),
                vec![(Bytes::from_static(b"old/0"), ReadFrom::New)],
                10,
                false,
            )
            .await?;
        Ok::<_, EngineError>(())
    })?;
    assert_eq!(engine.pending_summary(0, b"old/0", b"g")?.count, 10);
    let first_before = engine.store().log().first_index();
    // Two hours later the old entries are past the one-hour retention.
    RETENTION_CLOCK.fetch_add(7_200_000, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(async {
        for _ in 0..50 {
            engine.append(req("new/1", IdSpec::Auto, "fresh")).await?;
        }
        Ok::<_, EngineError>(())
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.len(0, b"old/0") > 0 || engine.store().log().first_index() == first_before {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for t in ["old/0", "old/1", "old/2"] {
        assert_eq!(engine.len(0, t.as_bytes()), 0, "{t} emptied");
        assert!(
            engine.stream_info(0, t.as_bytes())?.is_some(),
            "streams stay, empty"
        );
    }
    assert_eq!(engine.len(0, b"new/1"), 50);
    assert_eq!(
        engine.pending_summary(0, b"old/0", b"g")?.count,
        0,
        "pending entries went with their messages"
    );
    assert!(
        engine.retained_of(0, b"old/2").is_some(),
        "retained copies are kept"
    );
    assert!(
        engine.store().log().first_index() > first_before,
        "old segments were removed"
    );
    // The same after a power cut (snapshot + journal + log after the checkpoint).
    let digest = engine.state_digest();
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    let engine = Engine::open(Arc::new(after), &root, config)?;
    assert_eq!(engine.state_digest(), digest);
    assert_eq!(engine.len(0, b"old/1"), 0);
    assert_eq!(engine.len(0, b"new/1"), 50);
    Ok(())
}

#[test]
fn reading_by_filter_from_a_log_index_gives_each_message_once_in_log_order()
-> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk)?;
    let rt = runtime();
    let mut ids = Vec::new();
    rt.block_on(async {
        for (n, key) in ["a/1", "b/1", "a/2", "a/1", "$SYS/x", "a/2", "a/1"]
            .iter()
            .enumerate()
        {
            let id = engine
                .append(req(key, IdSpec::Auto, &n.to_string()))
                .await?
                .expect("id");
            ids.push((key.to_string(), id));
        }
        Ok::<_, EngineError>(())
    })?;
    let read = |filters: &[&[u8]],
                after: u64,
                count: usize|
     -> Result<Vec<(String, String, u64)>, EngineError> {
        Ok(engine
            .read_filters(filters, after, count)?
            .into_iter()
            .map(|m| {
                (
                    String::from_utf8_lossy(&m.topic).into_owned(),
                    String::from_utf8_lossy(&m.message.fields[0].1).into_owned(),
                    m.message.log_index,
                )
            })
            .collect())
    };
    // Overlapping filters: each message once, in log order; `#` skips `$` topics.
    let all = read(&[b"a/+", b"a/1", b"#"], 0, 100)?;
    let got: Vec<(&str, &str)> = all
        .iter()
        .map(|(t, v, _)| (t.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("a/1", "0"),
            ("b/1", "1"),
            ("a/2", "2"),
            ("a/1", "3"),
            ("a/2", "5"),
            ("a/1", "6")
        ]
    );
    assert!(all.windows(2).all(|w| w[0].2 < w[1].2), "log order");
    // From a position: only later entries; COUNT pages through with the last log index.
    let first_two = read(&[b"a/#"], 0, 2)?;
    assert_eq!(first_two.len(), 2);
    let rest = read(&[b"a/#"], first_two[1].2, 100)?;
    let values: Vec<&str> = rest.iter().map(|(_, v, _)| v.as_str()).collect();
    assert_eq!(values, ["3", "5", "6"]);
    // Topics created after the position are included; XDEL'd and trimmed messages are not.
    let cursor = all.last().map(|m| m.2).unwrap_or_default();
    rt.block_on(async {
        engine.append(req("a/new", IdSpec::Auto, "7")).await?;
        engine
            .delete(0, Bytes::from_static(b"a/1"), vec![ids[6].1])
            .await?;
        engine
            .trim(0, Bytes::from_static(b"a/2"), Trim::max_len(0))
            .await?;
        Ok::<_, EngineError>(())
    })?;
    let later = read(&[b"a/+"], cursor, 100)?;
    assert_eq!(
        later
            .iter()
            .map(|(t, v, _)| (t.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [("a/new", "7")]
    );
    let from_start = read(&[b"a/+"], 0, 100)?;
    let values: Vec<&str> = from_start.iter().map(|(_, v, _)| v.as_str()).collect();
    assert_eq!(values, ["0", "3", "7"]);
    assert!(matches!(
        engine.read_filters(&[b"a/#/b"], 0, 1),
        Err(EngineError::BadTopic(_))
    ));
    Ok(())
}

#[test]
fn nomkstream_delete_and_drop_answer_as_redis() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk)?;
    runtime().block_on(async {
        let mut r = req("q", IdSpec::Auto, "x");
        r.nomkstream = true;
        assert_eq!(engine.append(r.clone()).await?, None);
        assert!(engine.stream_info(0, b"q")?.is_none());
        let mut made = Vec::new();
        for n in 1..=5 {
            made.push(
                engine
                    .append(req("q", IdSpec::Explicit(id(n, 0)), "x"))
                    .await?
                    .expect("id"),
            );
        }
        assert!(
            engine.append(r).await?.is_some(),
            "NOMKSTREAM appends to an existing stream"
        );
        assert_eq!(
            engine
                .delete(
                    0,
                    Bytes::from_static(b"q"),
                    vec![id(2, 0), id(2, 0), id(9, 9)]
                )
                .await?,
            1
        );
        assert_eq!(engine.len(0, b"q"), 5);
        let info = engine.stream_info(0, b"q")?.expect("stream");
        assert_eq!(
            (info.max_deleted_entry_id, info.entries_added),
            (id(2, 0), 6)
        );
        assert!(engine.drop_topic(0, Bytes::from_static(b"q")).await?);
        assert!(!engine.drop_topic(0, Bytes::from_static(b"q")).await?);
        assert_eq!(engine.len(0, b"q"), 0);
        // A new incarnation starts from scratch: an old ID is fine again.
        assert_eq!(
            engine
                .append(req("q", IdSpec::Explicit(id(1, 0)), "y"))
                .await?,
            Some(id(1, 0))
        );
        Ok::<_, EngineError>(())
    })?;
    assert_eq!(engine.topics(0, b"*"), vec![Bytes::from_static(b"q")]);
    assert!(engine.topics(0, b"z*").is_empty());
    Ok(())
}

#[test]
fn a_waiter_is_woken_by_its_topic_only_and_times_out_otherwise() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = Arc::new(open(&disk)?);
    runtime().block_on(async {
        let after = engine.applied_index();
        let waiter = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let topics = [(0u8, Bytes::from_static(b"a"))];
                engine.wait(&topics, after, Duration::from_secs(10)).await
            })
        };
        while engine.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        engine.append(req("b", IdSpec::Auto, "other")).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(engine.waiting(), 1, "an append elsewhere wakes nobody");
        let id = engine
            .append(req("a", IdSpec::Auto, "mine"))
            .await?
            .expect("id");
        match waiter.await.expect("join") {
            Wake::Entry(entry) => assert_eq!(entry.records[0].id, id),
            other => panic!("expected the entry, got {other:?}"),
        }
        assert_eq!(engine.waiting(), 0);
        // Already changed since the position: no wait at all.
        let topics = [(0u8, Bytes::from_static(b"a"))];
        assert_eq!(
            engine.wait(&topics, after, Duration::from_secs(10)).await,
            Wake::Changed
        );
        let now = engine.applied_index();
        assert_eq!(
            engine.wait(&topics, now, Duration::from_millis(30)).await,
            Wake::Timeout
        );
        Ok::<_, EngineError>(())
    })
}

#[test]
fn a_filter_waiter_is_woken_by_a_matching_topic_only() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = Arc::new(open(&disk)?);
    runtime().block_on(async {
        let after = engine.applied_index();
        let spawn_wait = |filter: &'static str| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .wait_filter(filter.as_bytes(), after, Duration::from_secs(10))
                    .await
            })
        };
        let temps = spawn_wait("sensors/+/temp");
        let loads = spawn_wait("+/load");
        while engine.waiting() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Not a match: another level, another db, and a wildcard first level does not see `$`
        // topics.
        engine
            .append(req("sensors/k/hum/x", IdSpec::Auto, "v"))
            .await?;
        engine.append(req("$SYS/load", IdSpec::Auto, "v")).await?;
        let mut db1 = req("sensors/k/temp", IdSpec::Auto, "v");
        db1.db = 1;
        engine.append(db1).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(engine.waiting(), 2, "no match wakes nobody");
        let id = engine
            .append(req("sensors/k/temp", IdSpec::Auto, "21.5"))
            .await?
            .expect("id");
        match temps.await.expect("join")? {
            Wake::Entry(entry) => assert_eq!(entry.records[0].id, id),
            other => panic!("expected the entry, got {other:?}"),
        }
        assert_eq!(engine.waiting(), 1);
        let id = engine
            .append(req("cpu/load", IdSpec::Auto, "0.3"))
            .await?
            .expect("id");
        match loads.await.expect("join")? {
            Wake::Entry(entry) => assert_eq!(entry.records[0].id, id),
            other => panic!("expected the entry, got {other:?}"),
        }
        assert_eq!(engine.waiting(), 0);
        assert_eq!(
            engine
                .wait_filter(b"sensors/#", after, Duration::from_secs(10))
                .await?,
            Wake::Changed
        );
        let now = engine.applied_index();
        assert_eq!(
            engine
                .wait_filter(b"sensors/#", now, Duration::from_millis(30))
                .await?,
            Wake::Timeout
        );
        assert_eq!(engine.waiting(), 0);
        assert!(matches!(
            engine
                .wait_filter(b"a/#/b", now, Duration::from_millis(30))
                .await,
            Err(EngineError::BadTopic(_))
        ));
        Ok::<_, EngineError>(())
    })
}

#[test]
fn a_waiter_dropped_mid_wait_leaves_no_registration() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = Arc::new(open(&disk)?);
    runtime().block_on(async {
        let after = engine.applied_index();
        let by_topic = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let topics = [(0u8, Bytes::from_static(b"never"))];
                engine.wait(&topics, after, Duration::from_secs(60)).await
            })
        };
        let by_filter = {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .wait_filter(b"never/#", after, Duration::from_secs(60))
                    .await
            })
        };
        while engine.waiting() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The clients go away (the tasks are dropped mid-wait).
        by_topic.abort();
        by_filter.abort();
        assert!(by_topic.await.is_err());
        assert!(by_filter.await.is_err());
        assert_eq!(engine.waiting(), 0, "registrations of dropped waits remain");
        Ok::<_, EngineError>(())
    })
}

#[test]
fn restarts_keep_streams_start_a_new_term_and_commit_a_noop() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk)?;
    let first_term = engine.term();
    let last = runtime().block_on(async {
        let mut last = None;
        for n in 0..50 {
            last = engine
                .append(req("r", IdSpec::Auto, &n.to_string()))
                .await?;
        }
        Ok::<_, EngineError>(last)
    })?;
    engine.close()?;
    let engine = open(&disk)?;
    assert_eq!(engine.term(), first_term + 1);
    assert_eq!(engine.len(0, b"r"), 50);
    let log = engine.store().log();
    let noop = log.entry(log.last_index())?;
    assert_eq!((noop.kind, noop.term), (EntryKind::Noop, first_term + 1));
    let next = runtime().block_on(engine.append(req("r", IdSpec::Auto, "after")))?;
    assert!(next > last, "IDs keep growing across restarts");
    Ok(())
}

/// The wall clock of the async-mode power-cut test: it steps back across the restart.
static STEPPED_CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn stepped_clock() -> u64 {
    STEPPED_CLOCK.load(std::sync::atomic::Ordering::SeqCst)
}

fn async_config() -> EngineConfig {
    let mut config = config();
    // Nothing reaches the disk on its own during the test: a power cut loses every
    // acknowledged entry after open.
    config.store.log.flush = FlushMode::Async {
        interval_ms: 3_600_000,
    };
    config.store.log.checkpoint_interval_ms = 3_600_000;
    config.store.dispatch_checkpoint_interval_ms = 3_600_000;
    config.clock = stepped_clock;
    config
}

#[test]
fn async_mode_never_reuses_an_auto_id_after_a_power_cut() -> Result<(), EngineError> {
    use std::sync::atomic::Ordering::SeqCst;
    let root = PathBuf::from("/data");
    let disk = SimDisk::new();
    STEPPED_CLOCK.store(1_000_000_000, SeqCst);
    let engine = Engine::open(Arc::new(disk.clone()), &root, async_config())?;
    let acked = runtime().block_on(async {
        let mut acked = Vec::new();
        for n in 0..10 {
            acked.push(
                engine
                    .append(req("c", IdSpec::Auto, &n.to_string()))
                    .await?
                    .expect("id"),
            );
        }
        Ok::<_, EngineError>(acked)
    })?;
    assert_eq!(acked[0], id(1_000_000_000, 0));
    // Readers saw them: they are committed in async mode.
    assert_eq!(engine.len(0, b"c"), 10);
    let disk = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    // The wall clock stepped back a second while the node was down.
    STEPPED_CLOCK.store(999_999_000, SeqCst);
    let engine = Engine::open(Arc::new(disk.clone()), &root, async_config())?;
    assert!(
        engine.len(0, b"c") < 10,
        "the power cut lost acknowledged entries"
    );
    let next = runtime()
        .block_on(engine.append(req("c", IdSpec::Auto, "different content")))?
        .expect("id");
    let newest = *acked.iter().max().expect("acked");
    assert!(
        next > newest,
        "auto ID {next} after the restart must be above every ID handed out before it ({newest})"
    );
    // A clean shutdown loses nothing: the clock continues from the log, bound or no bound.
    engine.close()?;
    let engine = Engine::open(Arc::new(disk.clone()), &root, async_config())?;
    let after = runtime()
        .block_on(engine.append(req("c", IdSpec::Auto, "after clean")))?
        .expect("id");
    assert!(after > next);
    // Sync mode acknowledges only durable entries: it keeps no clock bound.
    let sync_disk = SimDisk::new();
    let sync = Engine::open(Arc::new(sync_disk.clone()), &root, config())?;
    runtime().block_on(sync.append(req("s", IdSpec::Auto, "x")))?;
    assert!(!sync_disk.exists(&root.join(manifold_core::engine::CLOCK_BOUND_FILE)));
    Ok(())
}

#[test]
fn acknowledged_appends_survive_a_power_cut() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk)?;
    let acked = runtime().block_on(async {
        let mut acked = Vec::new();
        for n in 0..40 {
            acked.push(
                engine
                    .append(req("p", IdSpec::Auto, &n.to_string()))
                    .await?
                    .expect("id"),
            );
        }
        engine
            .delete(0, Bytes::from_static(b"p"), vec![acked[3]])
            .await?;
        Ok::<_, EngineError>(acked)
    })?;
    let disk = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    let engine = open(&disk)?;
    let got = ids(
        &engine,
        "p",
        Bound::Unbounded,
        Bound::Unbounded,
        None,
        false,
    );
    let want: Vec<StreamId> = acked
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(got, want);
    assert_eq!(engine.len(0, b"p"), 39);
    Ok(())
}

// ---- model-based: random stream commands against an in-memory model of Redis semantics,
// ---- with clean restarts and power cuts in between; replies and state must match.

mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    pub enum Op {
        Append {
            topic: u8,
            spec: u8,
            ms: u64,
            /// 0: plain, 1: retain (set), 2: retain with an empty payload (clear).
            retain: u8,
        },
        Delete {
            topic: u8,
            nth: u8,
        },
        Drop {
            topic: u8,
        },
        Trim {
            topic: u8,
            maxlen: Option<u8>,
            nth: u8,
            limit: u8,
            /// `~`: whole nodes only.
            approx: bool,
        },
        AppendCapped {
            topic: u8,
            maxlen: u8,
            limit: u8,
        },
        /// Sends the newest added append again, same producer sequence.
        Repeat,
        Restart,
        Crash(u64),
    }

    pub fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..3, 0u8..3, 0u64..40, 0u8..3).prop_map(|(topic, spec, ms, retain)| Op::Append { topic, spec, ms, retain }),
            2 => (0u8..3, any::<u8>()).prop_map(|(topic, nth)| Op::Delete { topic, nth }),
            1 => (0u8..3).prop_map(|topic| Op::Drop { topic }),
            1 => (0u8..3, proptest::option::of(0u8..6), any::<u8>(), 0u8..4, any::<bool>()).prop_map(|(topic, maxlen, nth, limit, approx)| Op::Trim { topic, maxlen, nth, limit, approx }),
            1 => (0u8..3, 0u8..6, 0u8..4).prop_map(|(topic, maxlen, limit)| Op::AppendCapped { topic, maxlen, limit }),
            1 => Just(Op::Repeat),
            1 => Just(Op::Restart),
            1 => any::<u64>().prop_map(Op::Crash),
        ]
    }

    /// A stream as Redis 7.0 holds it: entries (ID, deleted, node) in nodes of at most NODE
    /// entries (live and deleted; these tests never reach the node byte limit). An XDEL that
    /// takes a node's last live entry removes the node; a trim emptying one keeps it.
    #[derive(Debug, Default, Clone)]
    struct Stream {
        entries: Vec<(StreamId, bool, u64)>,
        last: StreamId,
        max_deleted: StreamId,
        added: u64,
        /// The tail node and its entries, if it has room (`None`: the next opens one).
        tail: Option<(u64, u64)>,
        next_node: u64,
        /// Nodes an XDEL removed.
        removed: std::collections::BTreeSet<u64>,
    }

    impl Stream {
        fn push(&mut self, id: StreamId) {
            let node = match self.tail {
                Some((node, n)) if n < NODE => {
                    self.tail = Some((node, n + 1));
                    node
                }
                _ => {
                    self.next_node += 1;
                    self.tail = Some((self.next_node, 1));
                    self.next_node
                }
            };
            self.entries.push((id, false, node));
            self.last = id;
            self.added += 1;
        }

        /// XDEL of entry `k`: whether it was live.
        fn delete(&mut self, k: usize) -> bool {
            let (id, was_deleted, node) = self.entries[k];
            self.entries[k].1 = true;
            self.max_deleted = self.max_deleted.max(id);
            if !was_deleted && !self.entries.iter().any(|e| e.2 == node && !e.1) {
                self.removed.insert(node);
                if self.tail.is_some_and(|(t, _)| t == node) {
                    self.tail = None;
                }
            }
            !was_deleted
        }

        fn live_len(&self) -> u64 {
            self.entries.iter().filter(|e| !e.1).count() as u64
        }

        /// XINFO's radix-tree-keys: the nodes left that no XDEL removed.
        fn nodes(&self) -> u64 {
            let mut nodes: Vec<u64> = self.entries.iter().map(|e| e.2).collect();
            nodes.dedup();
            nodes.retain(|n| !self.removed.contains(n));
            nodes.len() as u64
        }

        /// Redis's trim, removing at most `limit` live entries (0: no limit); returns the live
        /// entries removed. `~`: whole nodes, oldest first, until one must stay (Redis's
        /// `streamTrim`).
        fn trim(&mut self, trim: Trim) -> u64 {
            let limit = if trim.limit == 0 {
                u64::MAX
            } else {
                trim.limit
            };
            let removed = if trim.approx {
                let mut removed = 0;
                while let Some(&(_, _, node)) = self.entries.first() {
                    let length = self.live_len();
                    if matches!(trim.to, TrimTo::MaxLen(keep) if length <= keep) {
                        break;
                    }
                    let members = self.entries.iter().take_while(|e| e.2 == node).count();
                    let live = self.entries[..members].iter().filter(|e| !e.1).count() as u64;
                    if removed + live > limit {
                        break;
                    }
                    let whole = match trim.to {
                        TrimTo::MaxLen(keep) => length - live >= keep,
                        TrimTo::MinId(min) => self.entries[members - 1].0 < min,
                    };
                    if !whole {
                        break;
                    }
                    self.entries.drain(..members);
                    removed += live;
                }
                removed
            } else {
                // `=`: Redis's `streamTrim` too removes whole nodes, oldest first, while every
                // live entry of one must go (its deleted entries go with it); in the first node
                // where only some must go, it removes them one by one, and stops there.
                let mut removed = 0;
                while let Some(&(_, _, node)) = self.entries.first() {
                    let members = self.entries.iter().take_while(|e| e.2 == node).count();
                    let live = self.entries[..members].iter().filter(|e| !e.1).count() as u64;
                    let whole = match trim.to {
                        TrimTo::MaxLen(keep) => self.live_len() - live >= keep,
                        TrimTo::MinId(min) => self.entries[members - 1].0 < min,
                    };
                    if whole && removed + live <= limit {
                        self.entries.drain(..members);
                        removed += live;
                        continue;
                    }
                    let (below, mut excess) = match trim.to {
                        TrimTo::MinId(min) => (
                            self.entries[..members]
                                .iter()
                                .take_while(|e| e.0 < min)
                                .count(),
                            limit - removed,
                        ),
                        TrimTo::MaxLen(keep) => (
                            members,
                            self.live_len().saturating_sub(keep).min(limit - removed),
                        ),
                    };
                    // Walk the node's oldest entries up to `below` until `excess` live ones
                    // are gone.
                    let mut cut = 0;
                    while excess > 0 && cut < below {
                        if !self.entries[cut].1 {
                            excess -= 1;
                        }
                        cut += 1;
                    }
                    // Redis 7.0: a trim leaves max-deleted-entry-id alone (only XDEL moves it).
                    removed += self.entries.drain(..cut).filter(|e| !e.1).count() as u64;
                    break;
                }
                removed
            };
            if self.entries.is_empty() {
                self.tail = None;
            }
            removed
        }
    }

    fn name(topic: u8) -> String {
        format!("m{topic}")
    }

    fn check(engine: &Engine, model: &BTreeMap<u8, Stream>) -> Result<(), TestCaseError> {
        for topic in 0..3u8 {
            let key = name(topic);
            let got: Vec<StreamId> = engine
                .read_range(
                    0,
                    key.as_bytes(),
                    Bound::Unbounded,
                    Bound::Unbounded,
                    None,
                    false,
                )
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .into_iter()
                .map(|m| m.id)
                .collect();
            let want: Vec<StreamId> = model
                .get(&topic)
                .map(|s| {
                    s.entries
                        .iter()
                        .filter(|(_, d, _)| !d)
                        .map(|(id, _, _)| *id)
                        .collect()
                })
                .unwrap_or_default();
            prop_assert_eq!(&got, &want, "entries of {}", key);
            prop_assert_eq!(engine.len(0, key.as_bytes()), want.len() as u64);
            let info = engine
                .stream_info(0, key.as_bytes())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            match (info, model.get(&topic)) {
                (Some(i), Some(s)) => {
                    prop_assert_eq!(i.last_generated_id, s.last);
                    prop_assert_eq!(i.max_deleted_entry_id, s.max_deleted);
                    prop_assert_eq!(i.entries_added, s.added);
                    prop_assert_eq!(i.nodes, s.nodes(), "nodes of {}", key);
                }
                (None, None) => {}
                (i, s) => prop_assert!(
                    false,
                    "stream {} exists: engine {:?}, model {:?}",
                    key,
                    i.is_some(),
                    s.is_some()
                ),
            }
        }
        Ok(())
    }

    pub fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let fail = |e: EngineError| TestCaseError::fail(e.to_string());
        let rt = runtime();
        let mut disk = SimDisk::new();
        let mut engine = open(&disk).map_err(fail)?;
        let mut model: BTreeMap<u8, Stream> = BTreeMap::new();
        // Retained payload per topic.
        let mut retained: BTreeMap<u8, String> = BTreeMap::new();
        // The newest added append and its ID (every append carries a producer sequence).
        let mut last_added: Option<(AppendRequest, StreamId)> = None;
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append {
                    topic,
                    spec,
                    ms,
                    retain,
                } => {
                    let s = model.get(&topic).cloned().unwrap_or_default();
                    let spec = match spec {
                        0 => IdSpec::Auto,
                        1 => IdSpec::AutoSeq(ms),
                        _ => IdSpec::Explicit(id(ms, ms % 3)),
                    };
                    let payload = if retain == 2 {
                        String::new()
                    } else {
                        format!("v{step}")
                    };
                    let mut r = req(&name(topic), spec, &payload);
                    r.retain = match retain {
                        1 => RetainEffect::Set,
                        2 => RetainEffect::Clear,
                        _ => RetainEffect::None,
                    };
                    r.producer = Some((Bytes::from_static(b"model"), step as u64));
                    let sent = r.clone();
                    let got = rt.block_on(engine.append(r));
                    match (spec, got) {
                        (IdSpec::Auto, Ok(Some(new))) => prop_assert!(new > s.last),
                        (spec, Ok(Some(new))) => prop_assert_eq!(
                            Some(new),
                            manifold_core::engine::resolve(spec, s.last, 0).ok()
                        ),
                        (spec, Err(e)) => {
                            let expected = manifold_core::engine::resolve(spec, s.last, 0);
                            prop_assert!(
                                expected.is_err(),
                                "engine refused {:?} with {}, model accepts",
                                spec,
                                e
                            );
                            continue;
                        }
                        (_, Ok(None)) => prop_assert!(false, "no ID without NOMKSTREAM"),
                    }
                    let new = engine
                        .stream_info(0, name(topic).as_bytes())
                        .map_err(fail)?
                        .map(|i| i.last_generated_id)
                        .unwrap_or_default();
                    last_added = Some((sent, new));
                    let s = model.entry(topic).or_default();
                    s.push(new);
                    match retain {
                        1 => {
                            retained.insert(topic, payload);
                        }
                        2 => {
                            retained.remove(&topic);
                        }
                        _ => {}
                    }
                }
                Op::AppendCapped {
                    topic,
                    maxlen,
                    limit,
                } => {
                    let trim = Trim::max_len(u64::from(maxlen)).with_limit(u64::from(limit));
                    let mut r = req(&name(topic), IdSpec::Auto, "capped");
                    r.trim = Some(trim);
                    let new = rt.block_on(engine.append(r)).map_err(fail)?.expect("id");
                    let s = model.entry(topic).or_default();
                    prop_assert!(new > s.last);
                    s.push(new);
                    s.trim(trim);
                }
                Op::Trim {
                    topic,
                    maxlen,
                    nth,
                    limit,
                    approx,
                } => {
                    let s = model.entry(topic).or_default().clone();
                    let trim = match maxlen {
                        Some(n) => Trim::max_len(u64::from(n)),
                        None => Trim::min_id(
                            s.entries
                                .get(nth as usize % s.entries.len().max(1))
                                .map_or(id(nth.into(), 0), |e| e.0),
                        ),
                    }
                    .with_limit(u64::from(limit));
                    let trim = if approx { trim.approximate() } else { trim };
                    let removed = rt
                        .block_on(engine.trim(0, Bytes::from(name(topic)), trim))
                        .map_err(fail)?;
                    match model.get_mut(&topic) {
                        Some(s) if !s.entries.is_empty() || s.added > 0 => {
                            prop_assert_eq!(removed, s.trim(trim))
                        }
                        _ => {
                            model.remove(&topic);
                            prop_assert_eq!(removed, 0);
                        }
                    }
                }
                Op::Delete { topic, nth } => {
                    let Some(s) = model.get_mut(&topic) else {
                        continue;
                    };
                    if s.entries.is_empty() {
                        continue;
                    }
                    let k = nth as usize % s.entries.len();
                    let target = s.entries[k].0;
                    let count = rt
                        .block_on(engine.delete(0, Bytes::from(name(topic)), vec![target]))
                        .map_err(fail)?;
                    prop_assert_eq!(count, u64::from(s.delete(k)));
                }
                Op::Drop { topic } => {
                    let existed = rt
                        .block_on(engine.drop_topic(0, Bytes::from(name(topic))))
                        .map_err(fail)?;
                    prop_assert_eq!(existed, model.remove(&topic).is_some());
                    if existed {
                        retained.remove(&topic);
                    }
                }
                Op::Repeat => {
                    // Answered from the dedupe table: the same ID, nothing appended, nothing
                    // retained again.
                    if let Some((sent, id)) = &last_added {
                        let got = rt.block_on(engine.append(sent.clone())).map_err(fail)?;
                        prop_assert_eq!(got, Some(*id));
                    }
                }
                Op::Restart => {
                    engine.close().map_err(fail)?;
                    engine = open(&disk).map_err(fail)?;
                }
                Op::Crash(seed) => {
                    // Every command above was acknowledged: a power cut keeps all of them.
                    let mode = if seed % 2 == 0 {
                        CrashMode::DropUnsynced
                    } else {
                        CrashMode::Random(seed)
                    };
                    let after = disk.crash(mode);
                    drop(engine);
                    disk = after;
                    engine = open(&disk).map_err(fail)?;
                }
            }
            check(&engine, &model)?;
            for topic in 0..3u8 {
                let got = engine
                    .retained_of(0, name(topic).as_bytes())
                    .map(|r| String::from_utf8_lossy(&r.fields[0].1).into_owned());
                prop_assert_eq!(got.as_ref(), retained.get(&topic), "retained of {}", topic);
            }
        }
        Ok(())
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..proptest::prelude::ProptestConfig::default() })]
    #[test]
    fn engine_matches_a_model_of_redis_streams_across_restarts_and_power_cuts(
        ops in proptest::collection::vec(model::op(), 1..40)
    ) {
        model::run(ops)?;
    }
}

#[test]
fn applying_the_same_log_from_scratch_gives_the_same_state() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk)?;
    runtime().block_on(async {
        let group = |key: &'static str| {
            engine.group_create(
                0,
                Bytes::from_static(key.as_bytes()),
                Bytes::from_static(b"g"),
                manifold_core::engine::GroupStart::Id(StreamId::default()),
                true,
                None,
            )
        };
        group("d2").await?;
        group("d3").await?;
        // An MQTT session and a shared filter group follow the same topics.
        let client = Bytes::from_static(b"dev");
        engine
            .session_open(client.clone(), false, 3600, None)
            .await?;
        let everything = manifold_core::engine::SubscribeOptions {
            qos: 1,
            ..Default::default()
        };
        engine
            .session_subscribe(client.clone(), vec![(Bytes::from_static(b"#"), everything)])
            .await?;
        engine
            .filter_group_join(Bytes::from_static(b"fg"), Bytes::from_static(b"#"))
            .await?;
        for n in 0..300u64 {
            if n % 10 == 5 {
                let read = engine.session_pending(b"dev", 7)?;
                let inflight = read
                    .messages
                    .iter()
                    .take(2)
                    .enumerate()
                    .map(|(k, m)| manifold_core::engine::InFlightNew {
                        packet_id: (n * 2 + k as u64) as u16 + 1,
                        log_index: m.message.log_index,
                        sub: m.message.sub,
                        qos: 1,
                        shared: None,
                    })
                    .collect();
                engine
                    .session_deliver(client.clone(), read.upto, inflight)
                    .await?;
                engine
                    .filter_group_read(
                        Bytes::from_static(b"fg"),
                        Bytes::from_static(b"#"),
                        Bytes::from(format!("m{}", n % 2)),
                        3,
                        false,
                    )
                    .await?;
            }
            if n % 4 == 0 {
                // Group reads interleaved with appends: what each delivers is decided at apply.
                let consumer = Bytes::from(format!("c{}", n % 3));
                let mut streams = vec![(
                    Bytes::from_static(b"d3"),
                    manifold_core::engine::ReadFrom::New,
                )];
                if n % 8 == 0 {
                    // Both, or (once d2 is dropped with its group) neither.
                    streams.push((
                        Bytes::from_static(b"d2"),
                        manifold_core::engine::ReadFrom::New,
                    ));
                }
                let _ = engine
                    .read_group(0, Bytes::from_static(b"g"), consumer, streams, 2, false)
                    .await;
            }
            if n % 9 == 0 {
                let pending = engine
                    .pending_summary(0, b"d2", b"g")
                    .ok()
                    .and_then(|s| s.range);
                if let Some((first, _)) = pending {
                    engine
                        .ack(
                            0,
                            Bytes::from_static(b"d2"),
                            Bytes::from_static(b"g"),
                            vec![first],
                        )
                        .await?;
                }
                engine
                    .autoclaim(
                        0,
                        Bytes::from_static(b"d3"),
                        Bytes::from_static(b"g"),
                        Bytes::from_static(b"z"),
                        0,
                        StreamId::default(),
                        3,
                        false,
                    )
                    .await?;
            }
            let key = format!("d{}", n % 5);
            let mut r = req(&key, IdSpec::Auto, &n.to_string());
            if n % 7 == 0 {
                r.trim = Some(Trim::max_len(20));
            }
            r.retain = match n % 13 {
                0 | 5 => RetainEffect::Set,
                9 => RetainEffect::Clear,
                _ => RetainEffect::None,
            };
            let id = engine.append(r).await?.expect("id");
            if n % 11 == 0 {
                engine.delete(0, Bytes::from(key.clone()), vec![id]).await?;
            }
            if n % 97 == 0 {
                engine.drop_topic(0, Bytes::from(key)).await?;
            }
        }
        engine
            .trim(0, Bytes::from_static(b"d1"), Trim::max_len(3))
            .await?;
        Ok::<_, EngineError>(())
    })?;
    let digest = engine.store().state_digest()?;
    let state = engine.state_digest();
    assert!(!engine.retained(b"#")?.is_empty());
    assert!(
        engine
            .consumers_info(0, b"d3", b"g")?
            .is_some_and(|c| c.len() > 3)
    );
    assert!(
        engine
            .session(b"dev")
            .is_some_and(|s| !s.inflight.is_empty())
    );
    assert!(
        engine
            .filter_group(b"fg", b"#")
            .is_some_and(|g| !g.pel.is_empty())
    );
    engine.close()?;
    // The same log, every derived file removed: a fresh replay must derive the same state.
    let engine = open(&without_derived_state(&disk))?;
    assert_eq!(engine.store().state_digest()?, digest);
    assert_eq!(engine.state_digest(), state);
    Ok(())
}

/// The disk as a process crash leaves it, with every file derived from the log removed (queues,
/// topic table, IndexFiles, the dispatch checkpoint, snapshots): opening it replays the whole log.
fn without_derived_state(disk: &SimDisk) -> SimDisk {
    let replay = disk.crash(CrashMode::KeepUnsynced);
    let root = PathBuf::from("/data");
    let topic_dirs = (0..64u32).map(|id| format!("consumequeue/{id:08x}"));
    for dir in ["consumequeue", "consumequeue/arena", "index"]
        .map(String::from)
        .into_iter()
        .chain(topic_dirs)
    {
        let dir = root.join(dir);
        for name in replay.list(&dir).unwrap_or_default() {
            let _ = replay.remove(&dir.join(name));
        }
    }
    let _ = replay.remove(&root.join("dispatch"));
    let snapshots = root.join(manifold_core::engine::SNAPSHOT_DIR);
    for name in replay.list(&snapshots).unwrap_or_default() {
        let _ = replay.remove(&snapshots.join(name));
    }
    replay
}

/// Stream nodes closed by their byte limit, the newest one removed by XDEL (so the next message
/// joins an older node), trims cutting into a node, `~` trims: where the next message goes and
/// what XINFO counts come out the same after a power cut (re-dispatch from the last checkpoint)
/// and after replaying the whole log from scratch.
#[test]
fn stream_nodes_are_the_same_after_a_power_cut_and_a_replay() -> Result<(), EngineError> {
    let small_nodes = || EngineConfig {
        store: StoreConfig {
            stream_nodes: NodeLimits {
                max_entries: 8,
                max_bytes: 256,
            },
            ..config().store
        },
        ..config()
    };
    let open_small = |disk: &SimDisk| {
        let storage: Arc<dyn Storage> = Arc::new(disk.clone());
        Engine::open(storage, &PathBuf::from("/data"), small_nodes())
    };
    let disk = SimDisk::new();
    let engine = open_small(&disk)?;
    let keys = [Bytes::from_static(b"a"), Bytes::from_static(b"b")];
    runtime().block_on(async {
        let mut added: Vec<StreamId> = Vec::new();
        for n in 0..600usize {
            let key = keys[n % 3 / 2].clone();
            let size = [0, 1, 20, 70, 130, 240][n * 7 % 6];
            let r = AppendRequest::new(
                0,
                key.clone(),
                vec![(Bytes::from_static(b"v"), Bytes::from("x".repeat(size)))],
            );
            let id = engine.append(r).await?.expect("id");
            added.push(id);
            if n % 5 == 4 {
                // The newest: a whole node when it was a large one.
                engine.delete(0, key.clone(), vec![id]).await?;
            }
            let trim = match n % 41 {
                7 => Some(Trim::min_id(added[n * 3 / 4])),
                19 => Some(Trim::max_len(25).approximate()),
                29 => Some(Trim::max_len(30)),
                37 => Some(Trim::min_id(added[n / 2]).approximate()),
                _ => None,
            };
            if let Some(trim) = trim {
                engine.trim(0, key.clone(), trim).await?;
            }
        }
        Ok::<_, EngineError>(())
    })?;
    let nodes = |engine: &Engine| -> Result<Vec<u64>, EngineError> {
        keys.iter()
            .map(|k| Ok(engine.stream_info(0, k)?.map_or(0, |i| i.nodes)))
            .collect()
    };
    let digest = engine.store().state_digest()?;
    let counted = nodes(&engine)?;
    assert!(counted.iter().all(|n| *n > 1), "nodes {counted:?}");
    drop(engine);
    let engine = open_small(&disk.crash(CrashMode::DropUnsynced))?;
    assert_eq!(engine.store().state_digest()?, digest, "after a power cut");
    assert_eq!(nodes(&engine)?, counted);
    engine.close()?;
    let engine = open_small(&without_derived_state(&disk))?;
    assert_eq!(
        engine.store().state_digest()?,
        digest,
        "replayed from scratch"
    );
    assert_eq!(nodes(&engine)?, counted);
    Ok(())
}

static IMAGE_CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000_000);

fn image_clock() -> u64 {
    IMAGE_CLOCK.load(std::sync::atomic::Ordering::SeqCst)
}

/// Every message of `keys`, as `(key, id, value)`.
fn contents(engine: &Engine, keys: &[&str]) -> Vec<(String, StreamId, Vec<u8>)> {
    let mut out = Vec::new();
    for key in keys {
        for m in engine
            .read_range(
                0,
                key.as_bytes(),
                Bound::Unbounded,
                Bound::Unbounded,
                None,
                false,
            )
            .expect("read")
        {
            let value = m.fields.first().map(|f| f.1.to_vec()).unwrap_or_default();
            out.push((key.to_string(), m.id, value));
        }
    }
    out
}

/// A node behind retention gets an image of another: its log from the first retained entry,
/// the queues, topic rows and index files of the dispatch checkpoint (topic rows of streams
/// whose entries retention removed included) and the engine snapshot. Installed in a directory
/// that held another life of the node, it opens with the source's state at the image's index,
/// its log byte for byte, and goes on appending. Writes to the source while the image is out
/// change nothing of it.
/// A node whose retention removed its first segments, with streams (one emptied by retention,
/// one dropped), a consumer group with pending entries, XDELs, trims, retained messages and
/// keyed messages; its clock is `clock`.
fn image_source(
    clock: &'static std::sync::atomic::AtomicU64,
    tick: fn() -> u64,
) -> Result<(Engine, EngineConfig, tokio::runtime::Runtime), EngineError> {
    use manifold_core::engine::{GroupStart, ReadFrom};
    let disk = SimDisk::new();
    let root = PathBuf::from("/data");
    let config = retention_config(tick);
    let engine = Engine::open(Arc::new(disk.clone()), &root, config.clone())?;
    let rt = runtime();
    let big = "x".repeat(200);
    rt.block_on(async {
        for n in 0..600u64 {
            engine
                .append(req(&format!("old/{}", n % 2), IdSpec::Auto, &big))
                .await?;
        }
        Ok::<_, EngineError>(())
    })?;
    let first_before = engine.store().log().first_index();
    clock.fetch_add(7_200_000, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(async {
        engine
            .group_create(
                0,
                Bytes::from_static(b"new/1"),
                Bytes::from_static(b"g"),
                GroupStart::Id(StreamId::default()),
                true,
                None,
            )
            .await?;
        for n in 0..300u64 {
            let key = if n % 50 == 49 {
                "gone".to_string()
            } else {
                format!("new/{}", n % 3)
            };
            let mut r = req(&key, IdSpec::Auto, &n.to_string());
            r.message_key = Bytes::from(format!("k{}", n % 10));
            if n % 7 == 0 {
                r.trim = Some(Trim::max_len(40));
            }
            if n % 13 == 0 {
                r.retain = RetainEffect::Set;
            }
            let id = engine.append(r).await?.expect("id");
            if n % 11 == 0 {
                engine.delete(0, Bytes::from(key.clone()), vec![id]).await?;
            }
            if n % 5 == 0 {
                engine
                    .read_group(
                        0,
                        Bytes::from_static(b"g"),
                        Bytes::from(format!("c{}", n % 2)),
                        vec![(Bytes::from_static(b"new/1"), ReadFrom::New)],
                        2,
                        false,
                    )
                    .await?;
            }
        }
        engine.drop_topic(0, Bytes::from_static(b"gone")).await?;
        Ok::<_, EngineError>(())
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.store().log().first_index() == first_before || engine.len(0, b"old/0") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((engine, config, rt))
}

/// The streams [`image_source`] writes.
const IMAGE_KEYS: [&str; 6] = ["old/0", "old/1", "new/0", "new/1", "new/2", "gone"];

#[test]
fn an_image_installed_in_another_directory_opens_with_the_source_state() -> Result<(), EngineError>
{
    let (engine, config, rt) = image_source(&IMAGE_CLOCK, image_clock)?;
    let root = PathBuf::from("/data");
    let keys = IMAGE_KEYS;
    // Quiet: what the image must reproduce.
    let state = engine.state_digest();
    let store = engine.store().state_digest()?;
    let before = contents(&engine, &keys);
    let pending = engine.pending_summary(0, b"new/1", b"g")?;
    assert!(pending.count > 0);
    let by_key = |e: &Engine| -> Vec<StreamId> {
        e.find_by_key(0, b"new/2", b"k5", 0, u64::MAX, 100)
            .expect("find")
            .into_iter()
            .map(|m| m.id)
            .collect()
    };
    let found = by_key(&engine);
    assert!(!found.is_empty());

    let image = engine.export_image()?;
    let m = image.manifest().clone();
    assert!(m.first_index > 1, "retention removed the first segments");
    assert!(m.dispatched >= m.first_index.saturating_sub(1));
    assert_eq!(m.last_index, engine.store().log().last_index());
    for dir in ["commitlog/", "consumequeue/", "index/", "snapshots/"] {
        assert!(
            m.files.iter().any(|f| f.path.starts_with(dir)),
            "the image carries {dir}"
        );
    }
    // The source goes on while the image is out.
    rt.block_on(async {
        for n in 0..200u64 {
            engine
                .append(req("new/1", IdSpec::Auto, &format!("later {n}")))
                .await?;
        }
        Ok::<_, EngineError>(())
    })?;

    // The target held another life of node 2: a stream the image does not have.
    let target = SimDisk::new();
    let mut other = config.clone();
    other.node_id = 2;
    {
        let e = Engine::open(Arc::new(target.clone()), &root, other.clone())?;
        rt.block_on(e.append(req("stale", IdSpec::Auto, "mine")))?;
        e.close()?;
    }
    image.install_into(Arc::new(target.clone()), &root)?;
    drop(image);
    // Staged durably: a power cut before the next open loses none of it.
    let target = target.crash(CrashMode::DropUnsynced);
    let installed = Engine::open(Arc::new(target.clone()), &root, other.clone())?;
    assert_eq!(installed.state_digest(), state, "engine state");
    assert_eq!(installed.store().state_digest()?, store, "topic rows");
    assert_eq!(contents(&installed, &keys), before, "stream contents");
    assert_eq!(installed.len(0, b"stale"), 0, "the old life is gone");
    assert_eq!(by_key(&installed), found, "index files");
    assert!(
        installed.stream_info(0, b"old/0")?.is_some(),
        "empty streams stay"
    );
    assert!(installed.stream_info(0, b"gone")?.is_none());
    assert_eq!(
        installed.pending_summary(0, b"new/1", b"g")?.count,
        pending.count
    );
    let log = installed.store().log();
    assert_eq!(log.first_index(), m.first_index);
    for index in m.first_index..=m.last_index {
        assert_eq!(
            log.read_raw(index)?,
            engine.store().log().read_raw(index)?,
            "entry {index}"
        );
    }
    // It goes on as the node it is.
    let id = rt.block_on(installed.append(req("new/1", IdSpec::Auto, "after")))?;
    assert!(id.is_some());
    assert!(
        !installed
            .store()
            .log()
            .read_raw(m.last_index + 1)?
            .is_empty()
    );
    installed.close()?;
    let reopened = Engine::open(Arc::new(target), &root, other)?;
    assert_eq!(
        reopened.len(0, b"new/1"),
        engine_len_at(&before, "new/1") + 1
    );
    Ok(())
}

fn engine_len_at(contents: &[(String, StreamId, Vec<u8>)], key: &str) -> u64 {
    contents.iter().filter(|c| c.0 == key).count() as u64
}

/// A transfer that never finished (no manifest) leaves the directory as it was and its staged
/// files are removed at the next open.
#[test]
fn an_unfinished_install_changes_nothing() -> Result<(), EngineError> {
    use manifold_core::store::image::{ImageFile, Installer, Manifest};
    let disk = SimDisk::new();
    let root = PathBuf::from("/data");
    let engine = open(&disk)?;
    runtime().block_on(engine.append(req("s", IdSpec::Auto, "kept")))?;
    engine.close()?;
    let manifest = Manifest {
        first_index: 1,
        first_term: 1,
        last_index: 1,
        last_term: 1,
        dispatched: 1,
        files: vec![ImageFile {
            path: "checkpoint".into(),
            len: 64,
            data_len: 64,
        }],
    };
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let mut installer = Installer::begin(storage.clone(), &root, manifest)?;
    installer.write(0, 0, &[7u8; 64])?;
    assert!(installer.write(0, 60, &[7u8; 8]).is_err(), "past the file");
    drop(installer);
    assert!(storage.exists(&root.join("install/checkpoint")));
    let engine = open(&disk.crash(CrashMode::KeepUnsynced))?;
    assert_eq!(engine.len(0, b"s"), 1);
    assert!(!storage.exists(&root.join("install/checkpoint")));
    Ok(())
}

static CUT_CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000_000);

fn cut_clock() -> u64 {
    CUT_CLOCK.load(std::sync::atomic::Ordering::SeqCst)
}

/// A power cut at any point of an install — after any directory sync of the moves, losing
/// every unsynced byte and name — leaves a directory that the next open installs the image in
/// whole: the source's state, nothing of the old life.
#[test]
fn an_install_cut_by_a_power_failure_anywhere_completes_at_the_next_open() -> Result<(), EngineError>
{
    let (engine, config, rt) = image_source(&CUT_CLOCK, cut_clock)?;
    let root = PathBuf::from("/data");
    let state = engine.state_digest();
    let before = contents(&engine, &IMAGE_KEYS);
    let image = engine.export_image()?;
    let mut other = config.clone();
    other.node_id = 2;
    let mut cuts = 0;
    for skip in 0.. {
        let target = SimDisk::new();
        {
            let e = Engine::open(Arc::new(target.clone()), &root, other.clone())?;
            rt.block_on(e.append(req("stale", IdSpec::Auto, "mine")))?;
            e.close()?;
        }
        image.install_into(Arc::new(target.clone()), &root)?;
        target.fail_dir_sync_after(skip);
        let done = manifold_core::store::image::apply_pending(&target, &root).is_ok();
        let target = target.crash(if skip % 2 == 0 {
            CrashMode::DropUnsynced
        } else {
            CrashMode::Random(skip as u64)
        });
        let installed = Engine::open(Arc::new(target), &root, other.clone())?;
        assert_eq!(
            installed.state_digest(),
            state,
            "cut after {skip} directory syncs"
        );
        assert_eq!(contents(&installed, &IMAGE_KEYS), before);
        assert_eq!(installed.len(0, b"stale"), 0);
        drop(installed);
        if done {
            break;
        }
        cuts += 1;
    }
    assert!(
        cuts >= 3,
        "the install has several steps to cut between ({cuts})"
    );
    Ok(())
}

/// Hundreds of appenders at once, as many connections each with one XADD in flight: every
/// append is answered with its own ID (a busy batch's replies go out from a task on the
/// runtime, a quiet one's from the applier), each appender's IDs grow, none is given twice,
/// and the stream holds exactly what was acknowledged. Then the runtime those replies were
/// sent from is gone, and appends from a new one are still answered.
#[test]
fn concurrent_appenders_each_get_their_own_answers_across_runtimes() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = Arc::new(open(&disk)?);
    let round = |engine: &Arc<Engine>, tasks: usize, each: usize| -> Vec<StreamId> {
        runtime().block_on(async {
            let mut handles = Vec::new();
            for t in 0..tasks {
                let engine = engine.clone();
                handles.push(tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0..each {
                        let value = format!("{t}/{i}");
                        let id = engine
                            .append(req("busy", IdSpec::Auto, &value))
                            .await
                            .expect("append")
                            .expect("id");
                        if let Some(last) = mine.last() {
                            assert!(id > *last, "task {t}: {id} after {last}");
                        }
                        mine.push(id);
                    }
                    mine
                }));
            }
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.await.expect("task"));
            }
            all
        })
    };
    let mut ids = round(&engine, 400, 25);
    // The first runtime is gone (with the task its busy batches were answered from).
    ids.extend(round(&engine, 400, 5));
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "an ID was given twice");
    assert_eq!(engine.len(0, b"busy"), n as u64);
    Ok(())
}
