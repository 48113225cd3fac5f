//! The engine's first slice through its public API: the propose → append → commit → apply
//! pipeline, Redis stream semantics for append / range / delete / drop, waiting readers,
//! restarts and power cuts.

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use manifold_core::engine::{AppendRequest, Engine, EngineConfig, EngineError, IdSpec, Wake};
use manifold_core::store::{
    CrashMode, EntryKind, LogConfig, SimDisk, Storage, StoreConfig, StreamId,
};

fn config() -> EngineConfig {
    EngineConfig {
        store: StoreConfig {
            log: LogConfig {
                segment_size: 64 * 1024,
                index_records_per_file: 256,
                ..LogConfig::default()
            },
            ..StoreConfig::default()
        },
        ..EngineConfig::default()
    }
}

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
