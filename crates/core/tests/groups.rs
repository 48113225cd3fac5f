//! Consumer groups through the engine's public API, against Redis 7.0's documented behaviour:
//! delivery decided at apply, pending lists, claims with idle times from the command clock,
//! lag and entries-read, and group state across restarts and power cuts.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use manifold_core::engine::{
    AppendRequest, Claim, ClaimTime, Engine, EngineConfig, EngineError, GroupEntry, GroupError,
    GroupStart, IdSpec, PendingQuery, ReadFrom, RetainEffect,
};
use manifold_core::store::{CqConfig, CrashMode, LogConfig, SimDisk, StoreConfig, StreamId};

fn config() -> EngineConfig {
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
            ..StoreConfig::default()
        },
        ..EngineConfig::default()
    }
}

fn open_with(disk: &SimDisk, config: EngineConfig) -> Result<Engine, EngineError> {
    Engine::open(Arc::new(disk.clone()), &PathBuf::from("/data"), config)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime")
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn id(ms: u64, seq: u64) -> StreamId {
    StreamId::new(ms, seq)
}

async fn add(engine: &Engine, key: &str, ms: u64) -> Result<StreamId, EngineError> {
    let r = AppendRequest {
        db: 0,
        key: b(key),
        id: IdSpec::Explicit(id(ms, 0)),
        fields: vec![(b("n"), b(&ms.to_string()))],
        properties: Vec::new(),
        message_key: Bytes::new(),
        nomkstream: false,
        trim: None,
        retain: RetainEffect::None,
        producer: None,
    };
    Ok(engine.append(r).await?.expect("id"))
}

/// `(id, field value)` of delivered entries; `None` for a gone message.
fn seen(entries: &[GroupEntry]) -> Vec<(StreamId, Option<String>)> {
    entries
        .iter()
        .map(|e| {
            let v = e
                .message
                .as_ref()
                .map(|m| String::from_utf8_lossy(&m.fields[0].1).into_owned());
            (e.id, v)
        })
        .collect()
}

async fn read(
    engine: &Engine,
    key: &str,
    consumer: &str,
    from: ReadFrom,
    count: u64,
) -> Result<Option<Vec<(StreamId, Option<String>)>>, EngineError> {
    let served = engine
        .read_group(0, b("g"), b(consumer), vec![(b(key), from)], count, false)
        .await?;
    Ok(served.first().map(|(_, e)| seen(e)))
}

fn some(ms: &[u64]) -> Option<Vec<(StreamId, Option<String>)>> {
    Some(
        ms.iter()
            .map(|m| (id(*m, 0), Some(m.to_string())))
            .collect(),
    )
}

#[test]
fn new_entries_go_to_one_consumer_and_history_stays_with_it() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open_with(&disk, config())?;
    runtime().block_on(async {
        for ms in 1..=5 {
            add(&engine, "s", ms).await?;
        }
        engine
            .group_create(0, b("s"), b("g"), GroupStart::Id(id(0, 0)), false, None)
            .await?;
        assert_eq!(
            read(&engine, "s", "a", ReadFrom::New, 2).await?,
            some(&[1, 2])
        );
        assert_eq!(
            read(&engine, "s", "b", ReadFrom::New, 0).await?,
            some(&[3, 4, 5])
        );
        // Nothing new: the stream is not served (Redis's nil), and no consumer is made.
        assert_eq!(read(&engine, "s", "c", ReadFrom::New, 0).await?, None);
        // History: the consumer's own pending entries after the ID, always served.
        assert_eq!(
            read(&engine, "s", "a", ReadFrom::Pending(id(0, 0)), 0).await?,
            some(&[1, 2])
        );
        assert_eq!(
            read(&engine, "s", "a", ReadFrom::Pending(id(1, 0)), 0).await?,
            some(&[2])
        );
        assert_eq!(
            read(&engine, "s", "c", ReadFrom::Pending(id(0, 0)), 0).await?,
            Some(Vec::new())
        );
        assert_eq!(
            engine
                .ack(0, b("s"), b("g"), vec![id(1, 0), id(1, 0), id(9, 0)])
                .await?,
            1
        );
        assert_eq!(engine.ack(0, b("s"), b("g"), vec![id(1, 0)]).await?, 0);
        assert_eq!(engine.ack(0, b("s"), b("nope"), vec![id(2, 0)]).await?, 0);
        let summary = engine.pending_summary(0, b"s", b"g")?;
        assert_eq!(summary.count, 4);
        assert_eq!(summary.range, Some((id(2, 0), id(5, 0))));
        assert_eq!(summary.consumers, vec![(b("a"), 1), (b("b"), 3)]);
        // A history read counts a delivery; a deleted message comes back as (id, nil) and its
        // pending entry stays.
        let all = PendingQuery {
            start: id(0, 0),
            end: id(u64::MAX, u64::MAX),
            count: 10,
            consumer: None,
            min_idle_ms: None,
        };
        let counts: Vec<u64> = engine
            .pending(0, b"s", b"g", &all)?
            .iter()
            .map(|p| p.count)
            .collect();
        assert_eq!(
            counts,
            [3, 1, 1, 1],
            "2 was read three times, the rest once"
        );
        assert_eq!(engine.delete(0, b("s"), vec![id(2, 0)]).await?, 1);
        assert_eq!(
            read(&engine, "s", "a", ReadFrom::Pending(id(0, 0)), 0).await?,
            Some(vec![(id(2, 0), None)])
        );
        assert_eq!(engine.pending_summary(0, b"s", b"g")?.count, 4);
        let consumers = engine.consumers_info(0, b"s", b"g")?.expect("stream");
        let names: Vec<(Bytes, u64)> = consumers
            .iter()
            .map(|c| (c.name.clone(), c.pending))
            .collect();
        assert_eq!(names, vec![(b("a"), 1), (b("b"), 3), (b("c"), 0)]);
        Ok(())
    })
}

#[test]
fn xgroup_answers_as_redis() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open_with(&disk, config())?;
    runtime().block_on(async {
        let create = |key: &'static str, group: &'static str, mkstream: bool| {
            engine.group_create(0, b(key), b(group), GroupStart::Last, mkstream, None)
        };
        assert!(matches!(
            create("none", "g", false).await,
            Err(EngineError::Group(GroupError::NoStream))
        ));
        assert_eq!(engine.len(0, b"none"), 0);
        assert!(
            engine.stream_info(0, b"none")?.is_none(),
            "nothing was created"
        );
        create("made", "g", true).await?;
        let info = engine
            .stream_info(0, b"made")?
            .expect("MKSTREAM made an empty stream");
        assert_eq!((info.length, info.entries_added), (0, 0));
        assert!(matches!(
            create("made", "g", true).await,
            Err(EngineError::Group(GroupError::GroupExists))
        ));
        // The empty stream takes appends; `$` was 0-0, so the group sees them.
        add(&engine, "made", 7).await?;
        assert_eq!(
            read(&engine, "made", "x", ReadFrom::New, 0).await?,
            some(&[7])
        );
        // Consumers.
        assert!(engine.consumer_create(0, b("made"), b("g"), b("y")).await?);
        assert!(!engine.consumer_create(0, b("made"), b("g"), b("y")).await?);
        assert!(matches!(
            engine.consumer_create(0, b("made"), b("h"), b("y")).await,
            Err(EngineError::Group(GroupError::NoGroup))
        ));
        assert!(matches!(
            engine.consumer_create(0, b("none"), b("g"), b("y")).await,
            Err(EngineError::Group(GroupError::NoStream))
        ));
        assert_eq!(
            engine.consumer_delete(0, b("made"), b("g"), b("x")).await?,
            1
        );
        assert_eq!(
            engine.pending_summary(0, b"made", b"g")?.count,
            0,
            "its entries left"
        );
        assert_eq!(
            engine.consumer_delete(0, b("made"), b("g"), b("x")).await?,
            0
        );
        // SETID back to 0: the entry is delivered again.
        engine
            .group_set_id(0, b("made"), b("g"), GroupStart::Id(id(0, 0)), Some(0))
            .await?;
        assert_eq!(
            read(&engine, "made", "y", ReadFrom::New, 0).await?,
            some(&[7])
        );
        assert!(matches!(
            engine
                .group_set_id(0, b("made"), b("h"), GroupStart::Last, None)
                .await,
            Err(EngineError::Group(GroupError::NoGroup))
        ));
        // XREADGROUP over several streams: one missing group fails all, and changes nothing.
        add(&engine, "other", 1).await?;
        add(&engine, "made", 8).await?;
        let both = engine
            .read_group(
                0,
                b("g"),
                b("y"),
                vec![(b("made"), ReadFrom::New), (b("other"), ReadFrom::New)],
                0,
                false,
            )
            .await;
        assert!(matches!(both, Err(EngineError::Group(GroupError::NoGroup))));
        assert_eq!(
            read(&engine, "made", "y", ReadFrom::New, 0).await?,
            some(&[8])
        );
        // DESTROY; DEL takes the groups with the stream.
        assert!(engine.group_destroy(0, b("made"), b("g")).await?);
        assert!(!engine.group_destroy(0, b("made"), b("g")).await?);
        assert!(matches!(
            engine.group_destroy(0, b("none"), b("g")).await,
            Err(EngineError::Group(GroupError::NoStream))
        ));
        create("other", "g", false).await?;
        assert!(engine.drop_topic(0, b("other")).await?);
        add(&engine, "other", 1).await?;
        assert_eq!(engine.groups_info(0, b"other")?, Some(Vec::new()));
        assert!(matches!(
            read(&engine, "other", "y", ReadFrom::New, 0).await,
            Err(EngineError::Group(GroupError::NoGroup))
        ));
        Ok(())
    })
}

#[test]
fn lag_and_entries_read_follow_redis() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open_with(&disk, config())?;
    runtime().block_on(async {
        for ms in 1..=4 {
            add(&engine, "s", ms).await?;
        }
        let info = |engine: &Engine| -> Result<(Option<u64>, Option<i64>), EngineError> {
            let groups = engine.groups_info(0, b"s")?.expect("stream");
            Ok((groups[0].entries_read, groups[0].lag))
        };
        engine
            .group_create(0, b("s"), b("g"), GroupStart::Id(id(0, 0)), false, None)
            .await?;
        // Unknown counter, but the lag is known: nothing deleted, start below the first entry.
        assert_eq!(info(&engine)?, (None, Some(4)));
        read(&engine, "s", "a", ReadFrom::New, 1).await?;
        // The first delivery estimates (the first entry: 1), then counts.
        assert_eq!(info(&engine)?, (Some(1), Some(3)));
        read(&engine, "s", "a", ReadFrom::New, 1).await?;
        assert_eq!(info(&engine)?, (Some(2), Some(2)));
        // A deletion ahead of the group makes the lag unknowable.
        engine.delete(0, b("s"), vec![id(4, 0)]).await?;
        assert_eq!(info(&engine)?, (Some(2), None));
        // Delivering past it loses the counter too (3 is delivered; 4 is a tombstone).
        read(&engine, "s", "a", ReadFrom::New, 0).await?;
        assert_eq!(info(&engine)?, (None, None));
        // Delivering the last entry makes both known again.
        add(&engine, "s", 5).await?;
        assert_eq!(info(&engine)?, (None, None));
        read(&engine, "s", "a", ReadFrom::New, 0).await?;
        assert_eq!(info(&engine)?, (Some(5), Some(0)));
        engine
            .group_set_id(0, b("s"), b("g"), GroupStart::Last, None)
            .await?;
        assert_eq!(info(&engine)?, (None, Some(0)));
        engine
            .group_set_id(0, b("s"), b("g"), GroupStart::Id(id(0, 0)), Some(2))
            .await?;
        assert_eq!(info(&engine)?, (Some(2), None), "a deletion lies ahead");
        // ENTRIESREAD past the entries added: Redis 7.0 reports the negative lag as it is.
        engine
            .group_create(0, b("t"), b("g"), GroupStart::Id(id(0, 0)), true, None)
            .await?;
        add(&engine, "t", 1).await?;
        engine
            .group_set_id(0, b("t"), b("g"), GroupStart::Id(id(1, 0)), Some(2))
            .await?;
        let groups = engine.groups_info(0, b"t")?.expect("stream");
        assert_eq!((groups[0].entries_read, groups[0].lag), (Some(2), Some(-1)));
        Ok(())
    })
}

static CLOCK: AtomicU64 = AtomicU64::new(1_000_000);

fn test_clock() -> u64 {
    CLOCK.load(Ordering::SeqCst)
}

#[test]
fn claims_use_the_command_clock_and_drop_gone_messages() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let mut config = config();
    config.clock = test_clock;
    let engine = open_with(&disk, config)?;
    let tick = |ms: u64| CLOCK.fetch_add(ms, Ordering::SeqCst);
    runtime().block_on(async {
        for ms in 1..=6 {
            add(&engine, "s", ms).await?;
        }
        engine
            .group_create(0, b("s"), b("g"), GroupStart::Id(id(0, 0)), false, None)
            .await?;
        read(&engine, "s", "a", ReadFrom::New, 0).await?;
        tick(100);
        let claim = |ids: Vec<StreamId>, min_idle_ms: u64| Claim {
            consumer: b("b"),
            min_idle_ms,
            ids,
            delivered: None,
            retry_count: None,
            force: false,
            justid: false,
            last_id: None,
        };
        // Not idle long enough: nothing moves.
        let none = engine
            .claim(0, b("s"), b("g"), claim(vec![id(1, 0)], 101))
            .await?;
        assert!(none.is_empty());
        let moved = engine
            .claim(0, b("s"), b("g"), claim(vec![id(1, 0), id(9, 0)], 100))
            .await?;
        assert_eq!(seen(&moved), some(&[1]).expect("one"));
        // JUSTID leaves the delivery count; RETRYCOUNT sets it; IDLE sets the delivery time.
        let mut c = claim(vec![id(2, 0)], 0);
        c.justid = true;
        let just = engine.claim(0, b("s"), b("g"), c).await?;
        assert_eq!(just.len(), 1);
        assert!(just[0].message.is_none(), "JUSTID returns IDs only");
        let mut c = claim(vec![id(3, 0)], 0);
        c.retry_count = Some(7);
        c.delivered = Some(ClaimTime::Idle(500));
        engine.claim(0, b("s"), b("g"), c).await?;
        let lines = engine.pending(
            0,
            b"s",
            b"g",
            &PendingQuery {
                start: id(1, 0),
                end: id(3, 0),
                count: 10,
                consumer: Some(b("b")),
                min_idle_ms: None,
            },
        )?;
        let got: Vec<(StreamId, u64)> = lines.iter().map(|p| (p.id, p.count)).collect();
        assert_eq!(got, [(id(1, 0), 2), (id(2, 0), 1), (id(3, 0), 7)]);
        assert!(
            lines[2].idle_ms >= 500,
            "IDLE 500 set the delivery time back"
        );
        // IDLE filter in XPENDING.
        let idle = engine.pending(
            0,
            b"s",
            b"g",
            &PendingQuery {
                start: id(0, 0),
                end: id(u64::MAX, u64::MAX),
                count: 10,
                consumer: None,
                min_idle_ms: Some(400),
            },
        )?;
        assert_eq!(idle.iter().map(|p| p.id).collect::<Vec<_>>(), [id(3, 0)]);
        // FORCE: an acknowledged entry becomes pending again, delivered twice.
        engine.ack(0, b("s"), b("g"), vec![id(4, 0)]).await?;
        let mut c = claim(vec![id(4, 0)], 1_000_000);
        c.force = true;
        assert_eq!(engine.claim(0, b("s"), b("g"), c).await?.len(), 1);
        let line = engine.pending(
            0,
            b"s",
            b"g",
            &PendingQuery {
                start: id(4, 0),
                end: id(4, 0),
                count: 1,
                consumer: None,
                min_idle_ms: None,
            },
        )?;
        assert_eq!((line[0].consumer.clone(), line[0].count), (b("b"), 2));
        // A claimed message that is gone leaves the pending list instead.
        engine.delete(0, b("s"), vec![id(5, 0)]).await?;
        assert!(
            engine
                .claim(0, b("s"), b("g"), claim(vec![id(5, 0)], 0))
                .await?
                .is_empty()
        );
        assert_eq!(engine.pending_summary(0, b"s", b"g")?.count, 5);
        // LASTID raises the group's last delivered ID.
        let mut c = claim(Vec::new(), 0);
        c.last_id = Some(id(100, 0));
        engine.claim(0, b("s"), b("g"), c).await?;
        let groups = engine.groups_info(0, b"s")?.expect("stream");
        assert_eq!(groups[0].last_delivered_id, id(100, 0));
        Ok(())
    })
}

#[test]
fn autoclaim_scans_with_a_cursor_and_reports_gone_messages() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open_with(&disk, config())?;
    runtime().block_on(async {
        for ms in 1..=10 {
            add(&engine, "s", ms).await?;
        }
        engine
            .group_create(0, b("s"), b("g"), GroupStart::Id(id(0, 0)), false, None)
            .await?;
        read(&engine, "s", "a", ReadFrom::New, 0).await?;
        engine.delete(0, b("s"), vec![id(2, 0)]).await?;
        let auto = |start: StreamId, count: u64| {
            engine.autoclaim(0, b("s"), b("g"), b("b"), 0, start, count, false)
        };
        let first = auto(id(0, 0), 3).await?;
        // The gone entry counts toward COUNT.
        assert_eq!(first.deleted, [id(2, 0)]);
        assert_eq!(seen(&first.entries), some(&[1, 3]).expect("two"));
        assert_eq!(first.next, id(4, 0));
        let rest = auto(first.next, 100).await?;
        assert_eq!(
            seen(&rest.entries),
            some(&[4, 5, 6, 7, 8, 9, 10]).expect("rest")
        );
        assert_eq!(rest.next, id(0, 0), "the scan reached the end");
        let summary = engine.pending_summary(0, b"s", b"g")?;
        assert_eq!(summary.consumers, vec![(b("b"), 9)]);
        // Too recent for a long min-idle: scanned, not claimed; the attempts run out at
        // COUNT × 10.
        let none = engine
            .autoclaim(0, b("s"), b("g"), b("c"), 60_000, id(0, 0), 1, true)
            .await?;
        assert!(none.entries.is_empty());
        assert_eq!(
            none.next,
            id(0, 0),
            "9 entries < 10 attempts: the scan ended"
        );
        Ok(())
    })
}

#[test]
fn concurrent_readers_never_get_the_same_entry() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = Arc::new(open_with(&disk, config())?);
    runtime().block_on(async {
        engine
            .group_create(0, b("jobs"), b("g"), GroupStart::Id(id(0, 0)), true, None)
            .await?;
        let mut readers = Vec::new();
        for r in 0..4 {
            let engine = engine.clone();
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let mut idle = 0;
                while idle < 50 {
                    let served = engine
                        .read_group(
                            0,
                            b("g"),
                            b(&format!("r{r}")),
                            vec![(b("jobs"), ReadFrom::New)],
                            3,
                            false,
                        )
                        .await?;
                    match served.first() {
                        Some((_, entries)) => {
                            idle = 0;
                            got.extend(entries.iter().map(|e| e.id));
                        }
                        None => {
                            idle += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        }
                    }
                }
                Ok::<_, EngineError>(got)
            }));
        }
        for ms in 1..=300 {
            add(&engine, "jobs", ms).await?;
        }
        let mut all = Vec::new();
        for r in readers {
            all.extend(r.await.expect("join")?);
        }
        let unique: BTreeSet<StreamId> = all.iter().copied().collect();
        assert_eq!(all.len(), 300, "each entry delivered exactly once");
        assert_eq!(unique.len(), 300);
        assert_eq!(engine.pending_summary(0, b"jobs", b"g")?.count, 300);
        Ok(())
    })
}

#[test]
fn group_state_survives_restarts_and_power_cuts() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let mut config = config();
    config.store.dispatch_checkpoint_interval_ms = 0;
    let engine = open_with(&disk, config.clone())?;
    let rt = runtime();
    rt.block_on(async {
        for ms in 1..=20 {
            add(&engine, "s", ms).await?;
        }
        engine
            .group_create(0, b("s"), b("g"), GroupStart::Id(id(0, 0)), false, None)
            .await?;
        read(&engine, "s", "a", ReadFrom::New, 5).await?;
        read(&engine, "s", "b", ReadFrom::New, 5).await?;
        engine
            .ack(0, b("s"), b("g"), vec![id(2, 0), id(7, 0)])
            .await?;
        Ok::<_, EngineError>(())
    })?;
    let digest = engine.state_digest();
    let summary = engine.pending_summary(0, b"s", b"g")?;
    engine.close()?;
    let engine = open_with(&disk, config.clone())?;
    assert_eq!(engine.state_digest(), digest);
    assert_eq!(engine.pending_summary(0, b"s", b"g")?, summary);
    rt.block_on(async {
        read(&engine, "s", "c", ReadFrom::New, 3).await?;
        engine.ack(0, b("s"), b("g"), vec![id(1, 0)]).await?;
        Ok::<_, EngineError>(())
    })?;
    let digest = engine.state_digest();
    let summary = engine.pending_summary(0, b"s", b"g")?;
    // Acknowledged commands survive a power cut: snapshot, then the log after it.
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    let engine = open_with(&after, config)?;
    assert_eq!(engine.state_digest(), digest);
    assert_eq!(engine.pending_summary(0, b"s", b"g")?, summary);
    assert_eq!(
        rt.block_on(read(&engine, "s", "a", ReadFrom::New, 1))?,
        some(&[14])
    );
    Ok(())
}

#[test]
fn the_pending_limit_caps_what_a_read_delivers() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let mut config = config();
    config.max_pending_per_group = 3;
    let engine = open_with(&disk, config)?;
    runtime().block_on(async {
        for ms in 1..=5 {
            add(&engine, "s", ms).await?;
        }
        engine
            .group_create(0, b("s"), b("g"), GroupStart::Id(id(0, 0)), false, None)
            .await?;
        assert_eq!(
            read(&engine, "s", "a", ReadFrom::New, 0).await?,
            some(&[1, 2, 3])
        );
        assert!(matches!(
            read(&engine, "s", "a", ReadFrom::New, 0).await,
            Err(EngineError::Group(GroupError::PendingLimit))
        ));
        // NOACK reads take no pending entries and are not limited.
        let noack = engine
            .read_group(0, b("g"), b("a"), vec![(b("s"), ReadFrom::New)], 0, true)
            .await?;
        assert_eq!(noack[0].1.len(), 2);
        engine.ack(0, b("s"), b("g"), vec![id(1, 0)]).await?;
        add(&engine, "s", 6).await?;
        assert_eq!(read(&engine, "s", "a", ReadFrom::New, 0).await?, some(&[6]));
        Ok(())
    })
}
